"""API tokens people mint for themselves, on PostgreSQL (see :class:`gateway.store.base.ApiTokens`)."""

from __future__ import annotations

import aiopg
import psycopg2.errors

from gateway.errors import NotFound
from gateway.models import Revocation
from gateway.store.apitokens import api_token_from_row, check_new_api_token, is_token_id
from gateway.store.pgfeed import log_revocations
from gateway.store.pgpool import PooledStore
from gateway.store.pgsql import ACTIVE, SESSION_COLUMNS_S, insert_audit
from gateway.store.tokensrole import ApiToken, TooManyApiTokens

_SELECT = (f"SELECT {SESSION_COLUMNS_S}, n.name FROM sessions s"  # noqa: S608
           " LEFT JOIN api_token_names n ON n.token_hash = s.token_hash")
_COUNT_ACTIVE = f"SELECT count(*) FROM sessions WHERE user_id = %(user_id)s AND kind = 'api' AND {ACTIVE}"  # noqa: S608
_INSERT = ("INSERT INTO sessions (token_hash, user_id, kind, created_at, expires_at, idle_timeout, last_seen_at)"
           " VALUES (%(token_hash)s, %(user_id)s, 'api', to_timestamp(%(now)s), to_timestamp(%(expires_at)s), 0,"
           " to_timestamp(%(now)s))")


class TokenTables(PooledStore):
    """The :class:`gateway.store.base.ApiTokens` role on the pool."""

    async def create_api_token(self, *, token_hash: str, user_id: int, name: str, now: float, expires_at: float,
                               max_active: int) -> ApiToken:
        """Lock the user's row (serialising their mints), count, insert the session and its name (see the protocol)."""
        check_new_api_token(token_hash, name, now, expires_at, max_active)
        params = {"token_hash": token_hash, "user_id": user_id, "name": name, "now": now, "expires_at": expires_at}

        async def work(cur: aiopg.Cursor) -> ApiToken:
            await cur.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,))
            if await cur.fetchone() is None:
                raise NotFound(f"No user with id {user_id}.")
            await cur.execute(_COUNT_ACTIVE, params)
            if int((await cur.fetchone())[0]) >= max_active:
                raise TooManyApiTokens()
            await cur.execute(_INSERT, params)
            await cur.execute("INSERT INTO api_token_names (token_hash, name) VALUES (%(token_hash)s, %(name)s)",
                              params)
            await cur.execute(_SELECT + " WHERE s.token_hash = %s", (token_hash,))
            return api_token_from_row(await cur.fetchone())

        try:
            return await self._run(work, transaction=True)
        except psycopg2.errors.UniqueViolation:
            raise ValueError("a session with this token hash already exists") from None

    async def list_api_tokens(self, user_id: int, *, since: float) -> list[ApiToken]:
        """The user's API tokens alive at ``since`` or later, newest first."""
        async def work(cur: aiopg.Cursor) -> list[ApiToken]:
            await cur.execute(_SELECT + " WHERE s.user_id = %s AND s.kind = 'api'"
                              " AND least(s.expires_at, coalesce(s.revoked_at, s.expires_at)) >= to_timestamp(%s)"
                              " ORDER BY s.created_at DESC, s.token_hash", (user_id, since))
            return [api_token_from_row(row) for row in await cur.fetchall()]

        return await self._run(work, retry=True)

    async def revoke_api_token(self, user_id: int, token_id: str, *, actor: str, reason: str,
                               now: float) -> ApiToken | None:
        """Revoke the one unrevoked API token of the user that ``token_id`` names (see the protocol)."""
        if not is_token_id(token_id):
            return None

        async def work(cur: aiopg.Cursor) -> ApiToken | None:
            await cur.execute("SELECT token_hash FROM sessions WHERE user_id = %s AND kind = 'api'"
                              " AND revoked_at IS NULL AND left(token_hash, %s) = %s LIMIT 2 FOR UPDATE",
                              (user_id, len(token_id), token_id))
            rows = await cur.fetchall()
            if len(rows) != 1:
                return None
            token_hash = str(rows[0][0])
            await cur.execute("UPDATE sessions SET revoked_at = to_timestamp(%s) WHERE token_hash = %s",
                              (now, token_hash))
            await cur.execute("SELECT upstream || ':' || subject FROM users WHERE id = %s", (user_id,))
            key = await cur.fetchone()
            await insert_audit(cur, now, "revoke", user_id, "" if key is None else str(key[0]), actor,
                               {"reason": reason, "session": token_hash[:12]})
            await log_revocations(cur, [Revocation(token_hash=token_hash)], keep=self._retention)
            await cur.execute(_SELECT + " WHERE s.token_hash = %s", (token_hash,))
            return api_token_from_row(await cur.fetchone())

        return await self._run(work, transaction=True)
