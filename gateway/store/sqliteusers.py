"""Users and blocks on SQLite: enrolment, unenrolment, and the identities kept from enrolling again."""

from __future__ import annotations

import time
from collections.abc import Sequence

import aiosqlite

from gateway.models import Revocation, User
from gateway.store.base import Block, BlockKey, BlockOutcome
from gateway.store.checks import block_emails, check_block_key
from gateway.store.rows import BLOCK_FIELDS, block_audit, block_from_row, encode_names, user_from_row
from gateway.store.sqliteconn import ConnectedStore
from gateway.store.sqlitesql import (
    COUNT_ACTIVE,
    REVOKE_USER_SESSIONS,
    SELECT_USERS,
    USER_COLUMNS,
    insert_audit,
    log_revocation,
    one,
)

_UPSERT_USER = (
    "INSERT INTO users (upstream, subject, email, name, username, groups, roles, created_at, updated_at,"  # noqa: S608
    " last_login_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (upstream, subject) DO UPDATE SET email = excluded.email, name = excluded.name,"
    " username = excluded.username, groups = excluded.groups, roles = excluded.roles,"
    " updated_at = excluded.updated_at, last_login_at = coalesce(excluded.last_login_at, users.last_login_at)"
    f" RETURNING {USER_COLUMNS}"
)


_INSERT_BLOCK = ("INSERT INTO blocked_subjects (upstream, subject, email, created_at, actor, reason)"
                 " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1")


_SELECT_BLOCKS = f"SELECT {', '.join(BLOCK_FIELDS)} FROM blocked_subjects"  # noqa: S608


_IS_BLOCKED = "SELECT 1 FROM blocked_subjects WHERE (upstream = ? AND subject = ? AND email = '')"


class UserTables(ConnectedStore):
    """The :class:`gateway.store.base.Users` role on the file."""

    # -- users ---------------------------------------------------------------------------------

    async def upsert_user(self, upstream: str, subject: str, *, email: str, name: str = "",
                          username: str = "", groups: Sequence[str] = (), roles: Sequence[str] = (),
                          login_at: float | None = None) -> User:
        """Create or refresh the user keyed by ``(upstream, subject)`` in one atomic upsert.

        ``created_at`` keeps its first value; ``last_login_at`` changes only when ``login_at`` is given.
        """
        now = time.time()
        async with self._use(write=True) as conn:
            rows = await conn.execute_fetchall(
                _UPSERT_USER,
                (upstream, subject, email.strip(), name, username, encode_names(groups), encode_names(roles),
                 now, now, login_at),
            )
        return user_from_row(one(rows))

    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or None."""
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(SELECT_USERS + " WHERE id = ?", (user_id,)))
        return user_from_row(rows[0]) if rows else None

    async def get_user_by_key(self, upstream: str, subject: str) -> User | None:
        """The user keyed by ``(upstream, subject)``, or None."""
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(SELECT_USERS + " WHERE upstream = ? AND subject = ?",
                                                    (upstream, subject)))
        return user_from_row(rows[0]) if rows else None

    async def find_users_by_email(self, email: str) -> list[User]:
        """Users whose email equals ``email`` ignoring case and surrounding space, oldest first."""
        wanted = email.strip()
        if not wanted:
            return []
        async with self._use() as conn:
            rows = await conn.execute_fetchall(
                SELECT_USERS + " WHERE lower(email) = lower(?) ORDER BY id", (wanted,))
        return [user_from_row(r) for r in rows]

    async def list_users(self) -> list[User]:
        """Every user, oldest first."""
        async with self._use() as conn:
            rows = await conn.execute_fetchall(SELECT_USERS + " ORDER BY id")
        return [user_from_row(r) for r in rows]

    async def delete_user(self, user_id: int, *, actor: str, block: bool = False, reason: str = "") -> bool:
        """Delete the user and (by cascade) their sessions and devices, audit and broadcast it; with
        ``block``, block their identity in the same transaction. False if unknown."""
        now = time.time()
        async with self._use(write=True) as conn:
            found = list(await conn.execute_fetchall("SELECT upstream, subject FROM users WHERE id = ?",
                                                     (user_id,)))
            if not found:
                return False
            key = BlockKey.for_identity(str(found[0][0]), str(found[0][1]))
            if block:
                check_block_key(key, reason)
            user_key = str(key)
            active = one(await conn.execute_fetchall(COUNT_ACTIVE + " AND user_id = ?",
                                                      (now, now, user_id)))[0]
            if active:
                await insert_audit(conn, now, "revoke", user_id, user_key, actor,
                                  {"reason": "user_delete", "sessions": str(active)})
            await conn.execute("DELETE FROM users WHERE id = ?", (user_id,))
            detail = {"sessions": str(active)} | ({"blocked": "true"} if block else {})
            await insert_audit(conn, now, "user_delete", user_id, user_key, actor, detail)
            if block and await _insert_block(conn, key, now, actor, reason):
                _, block_detail = block_audit(key, reason, int(active))
                await insert_audit(conn, now, "user_block", user_id, user_key, actor, block_detail)
            await log_revocation(conn, now, Revocation(user_id=user_id))
        return True

    # -- blocks --------------------------------------------------------------------------------

    async def block_subject(self, key: BlockKey, *, actor: str, reason: str = "") -> BlockOutcome:
        """Insert the block and revoke every matched user's active sessions in one IMMEDIATE transaction."""
        check_block_key(key, reason)
        now = time.time()
        async with self._use(write=True) as conn:
            created = await _insert_block(conn, key, now, actor, reason)
            if key.is_email:
                matched = await conn.execute_fetchall(
                    "SELECT id, upstream, subject FROM users WHERE lower(email) = lower(?) ORDER BY id",
                    (key.email,))
            else:
                matched = await conn.execute_fetchall(
                    "SELECT id, upstream, subject FROM users WHERE upstream = ? AND subject = ?",
                    (key.upstream, key.subject))
            user_ids = [int(row[0]) for row in matched]
            revoked = 0
            for row in matched:
                user_id = int(row[0])
                count = len(list(await conn.execute_fetchall(REVOKE_USER_SESSIONS, (now, user_id, now, now))))
                if count:
                    await insert_audit(conn, now, "revoke", user_id, f"{row[1]}:{row[2]}", actor,
                                      {"reason": "user_block", "sessions": str(count)})
                # Always: the user's cached sessions include bearer JWTs, which have no row to revoke.
                await log_revocation(conn, now, Revocation(user_id=user_id))
                revoked += count
            if created:
                audited = user_ids[0] if user_ids and not key.is_email else None
                user_key, detail = block_audit(key, reason, revoked)
                await insert_audit(conn, now, "user_block", audited, user_key, actor, detail)
        return BlockOutcome(created, revoked)

    async def unblock_subject(self, key: BlockKey, *, actor: str) -> bool:
        """Delete the block and audit it; False when there was none."""
        check_block_key(key)
        now = time.time()
        async with self._use(write=True) as conn:
            deleted = list(await conn.execute_fetchall(
                "DELETE FROM blocked_subjects WHERE upstream = ? AND subject = ? AND email = ? RETURNING 1",
                (key.upstream, key.subject, key.email)))
            if not deleted:
                return False
            user_id = None
            if not key.is_email:
                found = list(await conn.execute_fetchall(
                    "SELECT id FROM users WHERE upstream = ? AND subject = ?", (key.upstream, key.subject)))
                user_id = int(found[0][0]) if found else None
            user_key, _ = block_audit(key, "", 0)
            await insert_audit(conn, now, "user_unblock", user_id, user_key, actor,
                              {"email": key.email} if key.is_email else {})
        return True

    async def is_blocked(self, upstream: str, subject: str, *, emails: Sequence[str] = ()) -> bool:
        """One indexed query over the identity key and the normalised emails."""
        wanted = block_emails(emails)
        sql = _IS_BLOCKED
        if wanted:
            sql += f" OR (upstream = '' AND subject = '' AND email IN ({', '.join('?' * len(wanted))}))"
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(sql + " LIMIT 1", (upstream, subject, *wanted)))
        return bool(rows)

    async def list_blocked_subjects(self) -> list[Block]:
        """Every block, oldest first."""
        async with self._use() as conn:
            rows = await conn.execute_fetchall(_SELECT_BLOCKS + " ORDER BY created_at, upstream, subject, email")
        return [block_from_row(r) for r in rows]


async def _insert_block(conn: aiosqlite.Connection, key: BlockKey, now: float, actor: str,
                        reason: str) -> bool:
    """Insert the block unless it exists; True when it is new."""
    rows = await conn.execute_fetchall(_INSERT_BLOCK, (key.upstream, key.subject, key.email, now, actor,
                                                       reason))
    return bool(list(rows))
