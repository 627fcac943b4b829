"""API tokens people mint for themselves, on SQLite (see :class:`gateway.store.base.ApiTokens`)."""

from __future__ import annotations

import sqlite3

from gateway.errors import NotFound
from gateway.models import Revocation
from gateway.store.apitokens import api_token_from_row, check_new_api_token, is_token_id
from gateway.store.sqliteconn import ConnectedStore
from gateway.store.sqlitesql import ACTIVE, SESSION_COLUMNS_S, audit_user_key, insert_audit, log_revocation, one
from gateway.store.tokensrole import ApiToken, TooManyApiTokens

_SELECT = (f"SELECT {SESSION_COLUMNS_S}, n.name FROM sessions s"  # noqa: S608
           " LEFT JOIN api_token_names n ON n.token_hash = s.token_hash")
_COUNT_ACTIVE = f"SELECT count(*) FROM sessions WHERE user_id = ? AND kind = 'api' AND {ACTIVE}"  # noqa: S608


class TokenTables(ConnectedStore):
    """The :class:`gateway.store.base.ApiTokens` role on the file."""

    async def create_api_token(self, *, token_hash: str, user_id: int, name: str, now: float, expires_at: float,
                               max_active: int) -> ApiToken:
        """Count and insert the session and its name in one write transaction (see the protocol)."""
        check_new_api_token(token_hash, name, now, expires_at, max_active)
        try:
            async with self._use(write=True) as conn:
                if not list(await conn.execute_fetchall("SELECT 1 FROM users WHERE id = ?", (user_id,))):
                    raise NotFound(f"No user with id {user_id}.")
                if int(one(await conn.execute_fetchall(_COUNT_ACTIVE, (user_id, now, now)))[0]) >= max_active:
                    raise TooManyApiTokens()
                await conn.execute(
                    "INSERT INTO sessions (token_hash, user_id, kind, created_at, expires_at, idle_timeout,"
                    " last_seen_at) VALUES (?, ?, 'api', ?, ?, 0, ?)", (token_hash, user_id, now, expires_at, now))
                await conn.execute("INSERT INTO api_token_names (token_hash, name) VALUES (?, ?)", (token_hash, name))
                row = one(await conn.execute_fetchall(_SELECT + " WHERE s.token_hash = ?", (token_hash,)))
        except sqlite3.IntegrityError:
            raise ValueError("a session with this token hash already exists") from None
        return api_token_from_row(row)

    async def list_api_tokens(self, user_id: int, *, since: float) -> list[ApiToken]:
        """The user's API tokens alive at ``since`` or later, newest first."""
        async with self._use() as conn:
            rows = await conn.execute_fetchall(
                _SELECT + " WHERE s.user_id = ? AND s.kind = 'api'"
                " AND min(s.expires_at, coalesce(s.revoked_at, s.expires_at)) >= ?"
                " ORDER BY s.created_at DESC, s.token_hash", (user_id, since))
        return [api_token_from_row(tuple(row)) for row in rows]

    async def revoke_api_token(self, user_id: int, token_id: str, *, actor: str, reason: str,
                               now: float) -> ApiToken | None:
        """Revoke the one unrevoked API token of the user that ``token_id`` names (see the protocol)."""
        if not is_token_id(token_id):
            return None
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(
                "SELECT token_hash FROM sessions WHERE user_id = ? AND kind = 'api' AND revoked_at IS NULL"
                " AND substr(token_hash, 1, ?) = ? LIMIT 2", (user_id, len(token_id), token_id)))
            if len(rows) != 1:
                return None
            token_hash = str(rows[0][0])
            await conn.execute("UPDATE sessions SET revoked_at = ? WHERE token_hash = ?", (now, token_hash))
            await insert_audit(conn, now, "revoke", user_id, await audit_user_key(conn, user_id), actor,
                               {"reason": reason, "session": token_hash[:12]})
            await log_revocation(conn, now, Revocation(token_hash=token_hash))
            row = one(await conn.execute_fetchall(_SELECT + " WHERE s.token_hash = ?", (token_hash,)))
        return api_token_from_row(row)
