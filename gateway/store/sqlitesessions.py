"""Sessions on SQLite: creating, looking up, touching, revoking and listing them."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from gateway.errors import NotFound
from gateway.models import ActiveSession, Revocation, SessionKind, SessionRecord
from gateway.store.base import LogoutTokenReused, ProviderLogout
from gateway.store.checks import USER_AGENT_MAX, check_new_session, check_provider_logout, is_token_hash
from gateway.store.logouts import audit_rows, revoking_condition
from gateway.store.rows import active_session_from_row, session_from_row
from gateway.store.sqliteconn import ConnectedStore
from gateway.store.sqlitesql import (
    ACTIVE,
    COUNT_ACTIVE,
    REVOKE_USER_SESSIONS,
    SESSION_COLUMNS,
    SESSION_COLUMNS_S,
    USER_COLUMNS_U,
    audit_user_key,
    insert_audit,
    log_revocation,
    one,
)

_SELECT_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM sessions"  # noqa: S608


_LOOKUP_SESSION = (f"SELECT {SESSION_COLUMNS_S}, {USER_COLUMNS_U} FROM sessions s"  # noqa: S608
                   " JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?")


_INSERT_SESSION = (f"INSERT INTO sessions ({SESSION_COLUMNS})"  # noqa: S608
                   f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, NULL) RETURNING {SESSION_COLUMNS}")


# A claim is new, or replaces one that expired and was not pruned yet; a live claim is a replay.
_CLAIM_JTI = ("INSERT INTO logout_tokens (token_id_hash, expires_at) VALUES (?, ?)"
                       " ON CONFLICT (token_id_hash) DO UPDATE SET expires_at = excluded.expires_at"
                       " WHERE logout_tokens.expires_at <= ? RETURNING 1")
_PRUNE_JTIS = ("DELETE FROM logout_tokens WHERE token_id_hash IN (SELECT token_id_hash FROM logout_tokens"
                        " WHERE expires_at <= ? ORDER BY expires_at LIMIT 100)")


class SessionTables(ConnectedStore):
    """The :class:`gateway.store.base.SessionLookups` and :class:`gateway.store.base.Sessions` roles on the file."""

    async def create_session(self, *, token_hash: str, user_id: int, kind: SessionKind, now: float,
                             expires_at: float, idle_timeout: float, client_addr: str = "",
                             user_agent: str = "", mfa: bool = False, provider_session: str = "") -> SessionRecord:
        """Insert a new session (and the provider session it began in, if any) and return it.

        Raises ValueError for a malformed hash, kind or idle timeout, or a hash already in use, and
        NotFound when the user does not exist (e.g. deleted meanwhile).
        """
        check_new_session(token_hash, kind, expires_at, idle_timeout, provider_session)
        idle_expires_at = now + idle_timeout if idle_timeout > 0 else None
        try:
            async with self._use(write=True) as conn:
                rows = await conn.execute_fetchall(
                    _INSERT_SESSION,
                    (token_hash, user_id, kind, now, expires_at, idle_timeout, now, idle_expires_at,
                     client_addr, user_agent[:USER_AGENT_MAX], bool(mfa)),
                )
                if provider_session:
                    await conn.execute("INSERT INTO provider_sessions (token_hash, provider_session) VALUES (?, ?)",
                                       (token_hash, provider_session))
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"No user with id {user_id}.") from None
            raise ValueError("a session with this token hash already exists") from None
        return session_from_row(one(rows))

    async def lookup_session(self, token_hash: str) -> ActiveSession | None:
        """The session and its user in one primary-key join, whatever its state; None when unknown."""
        if not is_token_hash(token_hash):
            return None
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(_LOOKUP_SESSION, (token_hash,)))
        if not rows:
            return None
        return active_session_from_row(tuple(rows[0]))

    async def touch_sessions(self, touches: Mapping[str, tuple[float, float]]) -> None:
        """Batched uses (``hash -> (first, last)``) in one transaction; see the protocol."""
        if not touches:
            return
        async with self._use(write=True) as conn:
            await conn.executemany(
                "UPDATE sessions SET last_seen_at = max(last_seen_at, ?),"
                " idle_expires_at = CASE WHEN idle_timeout > 0 THEN max(last_seen_at, ?) + idle_timeout END"
                " WHERE token_hash = ? AND revoked_at IS NULL"
                " AND (idle_expires_at IS NULL OR idle_expires_at > ?)",
                [(last, last, h, first) for h, (first, last) in touches.items()],
            )

    async def revoke_session(self, token_hash: str, *, actor: str, reason: str) -> bool:
        """Revoke one session, audit and broadcast it; True only if it was not revoked before."""
        now = time.time()
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(
                "UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL"
                " RETURNING user_id", (now, token_hash)))
            if not rows:
                return False
            user_id = int(rows[0][0])
            await insert_audit(conn, now, "revoke", user_id, await audit_user_key(conn, user_id), actor,
                              {"reason": reason, "session": token_hash[:12]})
            await log_revocation(conn, now, Revocation(token_hash=token_hash))
        return True

    async def revoke_user_sessions(self, user_id: int, *, actor: str, reason: str) -> int:
        """Revoke every active session of the user, audit and broadcast it; return how many."""
        now = time.time()
        async with self._use(write=True) as conn:
            rows = await conn.execute_fetchall(REVOKE_USER_SESSIONS, (now, user_id, now, now))
            count = len(list(rows))
            await insert_audit(conn, now, "revoke", user_id, await audit_user_key(conn, user_id), actor,
                              {"reason": reason, "sessions": str(count)})
            await log_revocation(conn, now, Revocation(user_id=user_id))
        return count

    async def revoke_provider_sessions(self, logout: ProviderLogout, *, actor: str, reason: str,
                                       now: float) -> list[str]:
        """Claim the logout token and revoke the browser sessions it names, in one transaction (see the protocol)."""
        check_provider_logout(logout, now)
        condition, params = revoking_condition(logout, lambda name: ":" + name)
        async with self._use(write=True) as conn:
            await conn.execute(_PRUNE_JTIS, (now,))
            if not list(await conn.execute_fetchall(_CLAIM_JTI,
                                                    (logout.token_id, logout.token_expires_at, now))):
                raise LogoutTokenReused()
            rows = list(await conn.execute_fetchall(
                "UPDATE sessions SET revoked_at = :now WHERE revoked_at IS NULL AND expires_at > :now"  # noqa: S608
                f" AND (idle_expires_at IS NULL OR idle_expires_at > :now) AND {condition}"
                " RETURNING token_hash, user_id", {**params, "now": now}))
            users = [int(row[1]) for row in rows]
            keys = {user_id: await audit_user_key(conn, user_id) for user_id in set(users)}
            for user_id, user_key, detail in audit_rows(logout, users, keys, reason):
                await insert_audit(conn, now, "revoke", user_id, user_key, actor, detail)
            for row in rows:
                await log_revocation(conn, now, Revocation(token_hash=str(row[0])))
        return [str(row[0]) for row in rows]

    async def list_sessions(self, user_id: int, *, include_inactive: bool = False,
                            now: float | None = None) -> list[SessionRecord]:
        """The user's sessions, newest first; only those active at ``now`` unless ``include_inactive``."""
        at = time.time() if now is None else now
        sql = _SELECT_SESSIONS + " WHERE user_id = ?"
        params: tuple[Any, ...] = (user_id,)
        if not include_inactive:
            sql += " AND " + ACTIVE
            params += (at, at)
        async with self._use() as conn:
            rows = await conn.execute_fetchall(sql + " ORDER BY created_at DESC, token_hash", params)
        return [session_from_row(r) for r in rows]

    async def count_active_sessions(self, now: float) -> int:
        """How many sessions are neither revoked, expired nor idle-expired at ``now``."""
        async with self._use() as conn:
            rows = await conn.execute_fetchall(COUNT_ACTIVE, (now, now))
        return int(one(rows)[0])
