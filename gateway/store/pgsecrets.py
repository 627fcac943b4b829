"""Sealed session secrets on PostgreSQL (:class:`gateway.store.base.SessionSecrets`), a row per session and purpose."""

from __future__ import annotations

import aiopg
import psycopg2.errors

from gateway.errors import NotFound
from gateway.store.pgpool import PooledStore
from gateway.store.secretschecks import check_session_secret, is_session_secret_key
from gateway.store.sessionsecrets import SessionSecretPurpose

_KEEP = ("INSERT INTO session_secrets (token_hash, purpose, sealed) VALUES (%s, %s, %s)"
         " ON CONFLICT (token_hash, purpose) DO UPDATE SET sealed = excluded.sealed")
_READ = "SELECT sealed FROM session_secrets WHERE token_hash = %s AND purpose = %s"
_TAKE = "DELETE FROM session_secrets WHERE token_hash = %s AND purpose = %s RETURNING sealed"


class SecretTables(PooledStore):
    """The :class:`gateway.store.base.SessionSecrets` role on the pool. Rows go with their session (ON
    DELETE CASCADE)."""

    async def keep_session_secret(self, token_hash: str, purpose: SessionSecretPurpose, sealed: str) -> None:
        """Keep (or replace) the sealed value; ValueError for bad values, NotFound for an unknown session."""
        check_session_secret(token_hash, purpose, sealed)

        async def work(cur: aiopg.Cursor) -> None:
            await cur.execute(_KEEP, (token_hash, purpose, sealed))

        try:
            await self._run(work)
        except psycopg2.errors.ForeignKeyViolation:
            raise NotFound("No session with this token hash.") from None

    async def session_secret(self, token_hash: str, purpose: SessionSecretPurpose) -> str | None:
        """The sealed value kept, or None."""
        return await self._read(_READ, token_hash, purpose, retry=True)

    async def take_session_secret(self, token_hash: str, purpose: SessionSecretPurpose) -> str | None:
        """Delete the sealed value kept and return it (one statement: concurrent takes get it once), or None."""
        return await self._read(_TAKE, token_hash, purpose, retry=False)

    async def _read(self, sql: str, token_hash: str, purpose: str, *, retry: bool) -> str | None:
        if not is_session_secret_key(token_hash, purpose):
            return None

        async def work(cur: aiopg.Cursor) -> str | None:
            await cur.execute(sql, (token_hash, purpose))
            row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self._run(work, retry=retry)
