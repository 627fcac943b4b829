"""Sealed session secrets on SQLite (:class:`gateway.store.base.SessionSecrets`), a row per session and purpose."""

from __future__ import annotations

import sqlite3

from gateway.errors import NotFound
from gateway.store.secretschecks import check_session_secret, is_session_secret_key
from gateway.store.sessionsecrets import SessionSecretPurpose
from gateway.store.sqliteconn import ConnectedStore

_KEEP = ("INSERT INTO session_secrets (token_hash, purpose, sealed) VALUES (?, ?, ?)"
         " ON CONFLICT (token_hash, purpose) DO UPDATE SET sealed = excluded.sealed")
_READ = "SELECT sealed FROM session_secrets WHERE token_hash = ? AND purpose = ?"
_TAKE = "DELETE FROM session_secrets WHERE token_hash = ? AND purpose = ? RETURNING sealed"


class SecretTables(ConnectedStore):
    """The :class:`gateway.store.base.SessionSecrets` role on the file. Rows go with their session (ON
    DELETE CASCADE; the connection enables foreign keys)."""

    async def keep_session_secret(self, token_hash: str, purpose: SessionSecretPurpose, sealed: str) -> None:
        """Keep (or replace) the sealed value; ValueError for bad values, NotFound for an unknown session."""
        check_session_secret(token_hash, purpose, sealed)
        try:
            async with self._use(write=True) as conn:
                await conn.execute(_KEEP, (token_hash, purpose, sealed))
        except sqlite3.IntegrityError:
            # the only constraint the checks above leave to the schema is the session's foreign key
            raise NotFound("No session with this token hash.") from None

    async def session_secret(self, token_hash: str, purpose: SessionSecretPurpose) -> str | None:
        """The sealed value kept, or None."""
        if not is_session_secret_key(token_hash, purpose):
            return None
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(_READ, (token_hash, purpose)))
        return str(rows[0][0]) if rows else None

    async def take_session_secret(self, token_hash: str, purpose: SessionSecretPurpose) -> str | None:
        """Delete the sealed value kept and return it (one write transaction: concurrent takes get it once)."""
        if not is_session_secret_key(token_hash, purpose):
            return None
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(_TAKE, (token_hash, purpose)))
        return str(rows[0][0]) if rows else None
