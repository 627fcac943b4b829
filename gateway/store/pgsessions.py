"""Sessions on PostgreSQL: creating, touching, revoking and listing them (lookups are batched in pglookups)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import aiopg
import psycopg2
import psycopg2.errors

from gateway.errors import NotFound
from gateway.models import Revocation, SessionKind, SessionRecord
from gateway.store.base import LogoutTokenReused, ProviderLogout
from gateway.store.checks import USER_AGENT_MAX, check_new_session, check_provider_logout
from gateway.store.logouts import audit_rows, revoking_condition
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


# A claim is new, or replaces one that expired and was not pruned yet; a live claim is a replay (a claim
# racing it on another connection waits for that one's transaction, then sees it).
_CLAIM_JTI = ("INSERT INTO logout_tokens (token_id_hash, expires_at) VALUES (%s, to_timestamp(%s))"
                       " ON CONFLICT (token_id_hash) DO UPDATE SET expires_at = excluded.expires_at"
                       " WHERE logout_tokens.expires_at <= to_timestamp(%s) RETURNING 1")
_PRUNE_JTIS = ("DELETE FROM logout_tokens WHERE token_id_hash IN (SELECT token_id_hash FROM logout_tokens"
                        " WHERE expires_at <= to_timestamp(%s) ORDER BY expires_at LIMIT 100"
                        " FOR UPDATE SKIP LOCKED)")


class SessionTables(PooledStore):
    """The :class:`gateway.store.base.Sessions` role on the pool, and the writes of
    :class:`gateway.store.base.SessionLookups` (its lookups are batched by the store itself)."""

    async def create_session(self, *, token_hash: str, user_id: int, kind: SessionKind, now: float,
                             expires_at: float, idle_timeout: float, client_addr: str = "",
                             user_agent: str = "", mfa: bool = False, provider_session: str = "") -> SessionRecord:
        """Insert a new session (and the provider session it began in, if any) and return it.

        Raises ValueError for a malformed hash, kind or idle timeout, or a hash already in use, and
        NotFound when the user does not exist (e.g. deleted meanwhile).
        """
        check_new_session(token_hash, kind, expires_at, idle_timeout, provider_session)
        params = {"token_hash": token_hash, "user_id": user_id, "kind": kind, "now": now,
                  "expires_at": expires_at, "idle_timeout": idle_timeout,
                  "idle_expires_at": now + idle_timeout if idle_timeout > 0 else None,
                  "client_addr": client_addr, "user_agent": user_agent[:USER_AGENT_MAX], "mfa": bool(mfa)}

        async def work(cur: aiopg.Cursor) -> SessionRecord:
            await cur.execute(_INSERT_SESSION, params)
            record = session_from_row(await cur.fetchone())
            if provider_session:
                await cur.execute("INSERT INTO provider_sessions (token_hash, provider_session) VALUES (%s, %s)",
                                  (token_hash, provider_session))
            return record

        try:
            return await self._run(work, transaction=bool(provider_session))
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

    async def revoke_provider_sessions(self, logout: ProviderLogout, *, actor: str, reason: str,
                                       now: float) -> list[str]:
        """Claim the logout token and revoke the browser sessions it names, in one transaction (see the protocol)."""
        check_provider_logout(logout, now)
        condition, params = revoking_condition(logout, lambda name: f"%({name})s")
        revoke = ("UPDATE sessions SET revoked_at = to_timestamp(%(now)s)"  # noqa: S608
                  f" WHERE {ACTIVE} AND {condition}"
                  " RETURNING token_hash, user_id,"
                  " (SELECT upstream || ':' || subject FROM users WHERE users.id = sessions.user_id)")

        async def work(cur: aiopg.Cursor) -> list[str]:
            await cur.execute(_PRUNE_JTIS, (now,))
            await cur.execute(_CLAIM_JTI, (logout.token_id, logout.token_expires_at, now))
            if await cur.fetchone() is None:
                raise LogoutTokenReused()
            await cur.execute(revoke, {**params, "now": now})
            rows = await cur.fetchall()
            keys = {int(row[1]): str(row[2] or "") for row in rows}
            for user_id, user_key, detail in audit_rows(logout, [int(row[1]) for row in rows], keys, reason):
                await insert_audit(cur, now, "revoke", user_id, user_key, actor, detail)
            if rows:
                await log_revocations(cur, [Revocation(token_hash=str(row[0])) for row in rows],
                                      keep=self._retention)
            return [str(row[0]) for row in rows]

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
