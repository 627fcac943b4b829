"""Sessions on PostgreSQL: creating, touching, revoking and listing them (lookups are batched in pglookups)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiopg
import psycopg2
import psycopg2.errors

from gateway.errors import NotFound
from gateway.models import Revocation, SessionKind, SessionRecord
from gateway.store.checks import USER_AGENT_MAX, check_new_session
from gateway.store.pgfeed import log_revocations
from gateway.store.pgpool import PooledStore
from gateway.store.pgsql import ACTIVE, COUNT_ACTIVE, REVOKE_USER_SESSIONS, SESSION_COLUMNS, insert_audit
from gateway.store.rows import session_from_row

_SELECT_SESSIONS = f"SELECT {SESSION_COLUMNS} FROM sessions"  # noqa: S608


_INSERT_SESSION = (
    "INSERT INTO sessions (token_hash, user_id, kind, created_at, expires_at, idle_timeout,"  # noqa: S608
    " last_seen_at, idle_expires_at, client_addr, user_agent, mfa) VALUES (%(token_hash)s, %(user_id)s,"
    " %(kind)s, to_timestamp(%(now)s), to_timestamp(%(expires_at)s), %(idle_timeout)s,"
    " to_timestamp(%(now)s), to_timestamp(%(idle_expires_at)s), %(client_addr)s, %(user_agent)s,"
    " %(mfa)s)"
    f" RETURNING {SESSION_COLUMNS}"
)


class SessionTables(PooledStore):
    """The :class:`gateway.store.base.Sessions` role on the pool, and the writes of
    :class:`gateway.store.base.SessionLookups` (its lookups are batched by the store itself)."""

    async def create_session(self, *, token_hash: str, user_id: int, kind: SessionKind, now: float,
                             expires_at: float, idle_timeout: float, client_addr: str = "",
                             user_agent: str = "", mfa: bool = False) -> SessionRecord:
        """Insert a new session and return it.

        Raises ValueError for a malformed hash, kind or idle timeout, or a hash already in use, and
        NotFound when the user does not exist (e.g. deleted meanwhile).
        """
        check_new_session(token_hash, kind, expires_at, idle_timeout)
        params = {"token_hash": token_hash, "user_id": user_id, "kind": kind, "now": now,
                  "expires_at": expires_at, "idle_timeout": idle_timeout,
                  "idle_expires_at": now + idle_timeout if idle_timeout > 0 else None,
                  "client_addr": client_addr, "user_agent": user_agent[:USER_AGENT_MAX], "mfa": bool(mfa)}

        async def work(cur: aiopg.Cursor) -> SessionRecord:
            await cur.execute(_INSERT_SESSION, params)
            return session_from_row(await cur.fetchone())

        try:
            return await self._run(work)
        except psycopg2.errors.ForeignKeyViolation:
            raise NotFound(f"No user with id {user_id}.") from None
        except psycopg2.errors.UniqueViolation:
            raise ValueError("a session with this token hash already exists") from None

    async def touch_sessions(self, touches: Mapping[str, tuple[float, float]]) -> None:
        """Batched uses (``hash -> (first, last)``) in one statement (``unnest``); see the protocol."""
        if not touches:
            return
        hashes = list(touches)
        firsts = [touches[h][0] for h in hashes]
        times = [touches[h][1] for h in hashes]

        async def work(cur: aiopg.Cursor) -> None:
            await cur.execute(
                "UPDATE sessions s SET last_seen_at = greatest(s.last_seen_at, to_timestamp(t.ts)),"
                " idle_expires_at = CASE WHEN s.idle_timeout > 0 THEN greatest(s.last_seen_at,"
                " to_timestamp(t.ts)) + s.idle_timeout * interval '1 second' END"
                " FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS t(h, first_ts, ts)"
                " WHERE s.token_hash = t.h AND s.revoked_at IS NULL"
                " AND (s.idle_expires_at IS NULL OR s.idle_expires_at > to_timestamp(t.first_ts))",
                (hashes, firsts, times))

        await self._run(work)

    async def revoke_session(self, token_hash: str, *, actor: str, reason: str) -> bool:
        """Revoke one session, audit and broadcast it; True only if it was not revoked before."""
        now = time.time()

        async def work(cur: aiopg.Cursor) -> bool:
            await cur.execute(
                "UPDATE sessions s SET revoked_at = to_timestamp(%s) FROM users u"
                " WHERE s.token_hash = %s AND s.revoked_at IS NULL AND u.id = s.user_id"
                " RETURNING s.user_id, u.upstream, u.subject", (now, token_hash))
            row = await cur.fetchone()
            if row is None:
                return False
            await insert_audit(cur, now, "revoke", int(row[0]), f"{row[1]}:{row[2]}", actor,
                         {"reason": reason, "session": token_hash[:12]})
            await log_revocations(cur, [Revocation(token_hash=token_hash)], keep=self._retention)
            return True

        return await self._run(work, transaction=True)

    async def revoke_user_sessions(self, user_id: int, *, actor: str, reason: str) -> int:
        """Revoke every active session of the user, audit and broadcast it; return how many."""
        now = time.time()

        async def work(cur: aiopg.Cursor) -> int:
            await cur.execute(REVOKE_USER_SESSIONS, {"now": now, "user_id": user_id})
            count = int(cur.rowcount)
            await cur.execute("SELECT upstream || ':' || subject FROM users WHERE id = %s", (user_id,))
            row = await cur.fetchone()
            await insert_audit(cur, now, "revoke", user_id, "" if row is None else str(row[0]), actor,
                         {"reason": reason, "sessions": str(count)})
            await log_revocations(cur, [Revocation(user_id=user_id)], keep=self._retention)
            return count

        return await self._run(work, transaction=True)

    async def list_sessions(self, user_id: int, *, include_inactive: bool = False,
                            now: float | None = None) -> list[SessionRecord]:
        """The user's sessions, newest first; only those active at ``now`` unless ``include_inactive``."""
        params = {"user_id": user_id, "now": time.time() if now is None else now}
        sql = _SELECT_SESSIONS + " WHERE user_id = %(user_id)s"
        if not include_inactive:
            sql += " AND " + ACTIVE
        sql += " ORDER BY created_at DESC, token_hash"

        async def work(cur: aiopg.Cursor) -> list[SessionRecord]:
            await cur.execute(sql, params)
            return [session_from_row(row) for row in await cur.fetchall()]

        return await self._run(work, retry=True)

    async def count_active_sessions(self, now: float) -> int:
        """How many sessions are neither revoked, expired nor idle-expired at ``now``."""
        async def work(cur: aiopg.Cursor) -> int:
            await cur.execute(COUNT_ACTIVE, {"now": now})
            return int((await cur.fetchone())[0])

        return await self._run(work, retry=True)
