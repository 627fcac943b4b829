"""Users and blocks on PostgreSQL: enrolment, unenrolment, and the identities kept from enrolling again."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiopg

from gateway.models import Revocation, User
from gateway.store.base import Block, BlockKey, BlockOutcome
from gateway.store.checks import block_emails, check_block_key
from gateway.store.pgfeed import log_revocations
from gateway.store.pgpool import PooledStore
from gateway.store.pgsql import COUNT_ACTIVE, REVOKE_USER_SESSIONS, SELECT_USERS, USER_COLUMNS_U, columns, insert_audit
from gateway.store.rows import BLOCK_FIELDS, block_audit, block_from_row, encode_names, user_from_row

_UPSERT_USER = (
    "INSERT INTO users AS u (upstream, subject, email, name, username, groups, roles, created_at,"  # noqa: S608
    " updated_at, last_login_at) VALUES (%(upstream)s, %(subject)s, %(email)s, %(name)s, %(username)s,"
    " %(groups)s::jsonb, %(roles)s::jsonb, to_timestamp(%(now)s), to_timestamp(%(now)s),"
    " to_timestamp(%(login_at)s))"
    " ON CONFLICT (upstream, subject) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name,"
    " username = EXCLUDED.username, groups = EXCLUDED.groups, roles = EXCLUDED.roles,"
    " updated_at = EXCLUDED.updated_at, last_login_at = coalesce(EXCLUDED.last_login_at, u.last_login_at)"
    f" RETURNING {USER_COLUMNS_U}"
)


_INSERT_BLOCK = (
    "INSERT INTO blocked_subjects (upstream, subject, email, created_at, actor, reason) VALUES (%(upstream)s,"
    " %(subject)s, %(email)s, to_timestamp(%(now)s), %(actor)s, %(reason)s) ON CONFLICT DO NOTHING RETURNING 1"
)


_SELECT_BLOCKS = f"SELECT {columns(BLOCK_FIELDS)} FROM blocked_subjects"  # noqa: S608


_IS_BLOCKED = (
    "SELECT EXISTS (SELECT 1 FROM blocked_subjects WHERE (upstream = %s AND subject = %s AND email = '')"
    " OR (upstream = '' AND subject = '' AND email = ANY(%s::text[])))"
)


# The rows of the users a block matches are locked first: a session being created for one of them
# (its foreign key check takes a share lock on the user row) then commits before the revocation runs,
# or waits for the block to commit, after which the sign-in sees the block.
_LOCK_USERS_BY_KEY = "SELECT id, upstream, subject FROM users WHERE upstream = %s AND subject = %s FOR UPDATE"


_LOCK_USERS_BY_EMAIL = ("SELECT id, upstream, subject FROM users WHERE lower(email) = lower(%s)"
                        " ORDER BY id FOR UPDATE")


class UserTables(PooledStore):
    """The :class:`gateway.store.base.Users` role on the pool."""

    # -- users ---------------------------------------------------------------------------------

    async def upsert_user(self, upstream: str, subject: str, *, email: str, name: str = "",
                          username: str = "", groups: Sequence[str] = (), roles: Sequence[str] = (),
                          login_at: float | None = None) -> User:
        """Create or refresh the user keyed by ``(upstream, subject)`` in one atomic upsert.

        ``created_at`` keeps its first value; ``last_login_at`` changes only when ``login_at`` is given.
        """
        now = time.time()
        params = {"upstream": upstream, "subject": subject, "email": email.strip(), "name": name,
                  "username": username, "groups": encode_names(groups), "roles": encode_names(roles),
                  "now": now, "login_at": login_at}

        async def work(cur: aiopg.Cursor) -> User:
            await cur.execute(_UPSERT_USER, params)
            return user_from_row(await cur.fetchone())

        return await self._run(work)

    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or None."""
        async def work(cur: aiopg.Cursor) -> User | None:
            await cur.execute(SELECT_USERS + " WHERE id = %s", (user_id,))
            row = await cur.fetchone()
            return None if row is None else user_from_row(row)

        return await self._run(work, retry=True)

    async def get_user_by_key(self, upstream: str, subject: str) -> User | None:
        """The user keyed by ``(upstream, subject)``, or None."""
        async def work(cur: aiopg.Cursor) -> User | None:
            await cur.execute(SELECT_USERS + " WHERE upstream = %s AND subject = %s", (upstream, subject))
            row = await cur.fetchone()
            return None if row is None else user_from_row(row)

        return await self._run(work, retry=True)

    async def find_users_by_email(self, email: str) -> list[User]:
        """Users whose email equals ``email`` ignoring case and surrounding space, oldest first."""
        wanted = email.strip()
        if not wanted:
            return []
        return await self._users(SELECT_USERS + " WHERE lower(email) = lower(%s) ORDER BY id", (wanted,))

    async def list_users(self) -> list[User]:
        """Every user, oldest first."""
        return await self._users(SELECT_USERS + " ORDER BY id", ())

    async def _users(self, sql: str, params: tuple[Any, ...]) -> list[User]:
        async def work(cur: aiopg.Cursor) -> list[User]:
            await cur.execute(sql, params)
            return [user_from_row(row) for row in await cur.fetchall()]

        return await self._run(work, retry=True)

    async def delete_user(self, user_id: int, *, actor: str, block: bool = False, reason: str = "") -> bool:
        """Delete the user and (by cascade) their sessions and devices, audit and broadcast it; with
        ``block``, block their identity in the same transaction. False if unknown."""
        now = time.time()

        async def work(cur: aiopg.Cursor) -> bool:
            await cur.execute("SELECT upstream, subject FROM users WHERE id = %s FOR UPDATE", (user_id,))
            row = await cur.fetchone()
            if row is None:
                return False
            key = BlockKey.for_identity(str(row[0]), str(row[1]))
            if block:
                check_block_key(key, reason)
            user_key = str(key)
            await cur.execute(COUNT_ACTIVE + " AND user_id = %(user_id)s", {"user_id": user_id, "now": now})
            active = int((await cur.fetchone())[0])
            if active:
                await insert_audit(cur, now, "revoke", user_id, user_key, actor,
                             {"reason": "user_delete", "sessions": str(active)})
            await cur.execute("DELETE FROM users WHERE id = %s", (user_id,))
            detail = {"sessions": str(active)} | ({"blocked": "true"} if block else {})
            await insert_audit(cur, now, "user_delete", user_id, user_key, actor, detail)
            if block and await _insert_block(cur, key, now, actor, reason):
                _, block_detail = block_audit(key, reason, active)
                await insert_audit(cur, now, "user_block", user_id, user_key, actor, block_detail)
            await log_revocations(cur, [Revocation(user_id=user_id)], keep=self._retention)
            return True

        return await self._run(work, transaction=True)

    # -- blocks --------------------------------------------------------------------------------

    async def block_subject(self, key: BlockKey, *, actor: str, reason: str = "") -> BlockOutcome:
        """Lock the matched users, insert the block and revoke their active sessions in one transaction."""
        check_block_key(key, reason)
        now = time.time()

        async def work(cur: aiopg.Cursor) -> BlockOutcome:
            if key.is_email:
                await cur.execute(_LOCK_USERS_BY_EMAIL, (key.email,))
            else:
                await cur.execute(_LOCK_USERS_BY_KEY, (key.upstream, key.subject))
            matched = list(await cur.fetchall())
            created = await _insert_block(cur, key, now, actor, reason)
            revoked = 0
            for row in matched:
                user_id = int(row[0])
                await cur.execute(REVOKE_USER_SESSIONS, {"now": now, "user_id": user_id})
                count = int(cur.rowcount)
                if count:
                    await insert_audit(cur, now, "revoke", user_id, f"{row[1]}:{row[2]}", actor,
                                 {"reason": "user_block", "sessions": str(count)})
                revoked += count
            if created:
                audited = int(matched[0][0]) if matched and not key.is_email else None
                user_key, detail = block_audit(key, reason, revoked)
                await insert_audit(cur, now, "user_block", audited, user_key, actor, detail)
            # Always: the users' cached sessions include bearer JWTs, which have no row to revoke.
            await log_revocations(cur, [Revocation(user_id=int(row[0])) for row in matched], keep=self._retention)
            return BlockOutcome(created, revoked)

        return await self._run(work, transaction=True)

    async def unblock_subject(self, key: BlockKey, *, actor: str) -> bool:
        """Delete the block and audit it in one transaction; False when there was none."""
        check_block_key(key)
        now = time.time()

        async def work(cur: aiopg.Cursor) -> bool:
            await cur.execute("DELETE FROM blocked_subjects WHERE upstream = %s AND subject = %s AND email = %s"
                              " RETURNING 1", (key.upstream, key.subject, key.email))
            if await cur.fetchone() is None:
                return False
            user_id = None
            if not key.is_email:
                await cur.execute("SELECT id FROM users WHERE upstream = %s AND subject = %s",
                                  (key.upstream, key.subject))
                row = await cur.fetchone()
                user_id = None if row is None else int(row[0])
            user_key, _ = block_audit(key, "", 0)
            await insert_audit(cur, now, "user_unblock", user_id, user_key, actor,
                         {"email": key.email} if key.is_email else {})
            return True

        return await self._run(work, transaction=True)

    async def is_blocked(self, upstream: str, subject: str, *, emails: Sequence[str] = ()) -> bool:
        """One indexed query over the identity key and the normalised emails."""
        params = (upstream, subject, block_emails(emails))

        async def work(cur: aiopg.Cursor) -> bool:
            await cur.execute(_IS_BLOCKED, params)
            return bool((await cur.fetchone())[0])

        return await self._run(work, retry=True)

    async def list_blocked_subjects(self) -> list[Block]:
        """Every block, oldest first."""
        async def work(cur: aiopg.Cursor) -> list[Block]:
            await cur.execute(_SELECT_BLOCKS + " ORDER BY created_at, upstream, subject, email")
            return [block_from_row(row) for row in await cur.fetchall()]

        return await self._run(work, retry=True)


async def _insert_block(cur: aiopg.Cursor, key: BlockKey, now: float, actor: str, reason: str) -> bool:
    """Insert the block unless it exists; True when it is new."""
    await cur.execute(_INSERT_BLOCK, {"upstream": key.upstream, "subject": key.subject, "email": key.email,
                                      "now": now, "actor": actor, "reason": reason})
    return await cur.fetchone() is not None
