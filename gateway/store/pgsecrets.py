"""Sealed session secrets on PostgreSQL (:class:`gateway.store.base.SessionSecrets`), a row per session and purpose."""

from __future__ import annotations

from collections.abc import Mapping

import aiopg
import psycopg2.errors

from gateway.errors import NotFound
from gateway.models import Revocation
from gateway.store.pgfeed import log_revocations
from gateway.store.pgpool import PooledStore
from gateway.store.pgsql import ACTIVE
from gateway.store.secretschecks import check_session_secret, is_session_secret_key
from gateway.store.sessionsecrets import SessionSecretPurpose

_KEEP = ("INSERT INTO session_secrets (token_hash, purpose, sealed) VALUES (%s, %s, %s)"
         " ON CONFLICT (token_hash, purpose) DO UPDATE SET sealed = excluded.sealed")
_READ = "SELECT sealed FROM session_secrets WHERE token_hash = %s AND purpose = %s"
_TAKE = "DELETE FROM session_secrets WHERE token_hash = %s AND purpose = %s RETURNING sealed"
_ACTIVE_S = ("s.revoked_at IS NULL AND s.expires_at > to_timestamp(%(now)s)"
             " AND (s.idle_expires_at IS NULL OR s.idle_expires_at > to_timestamp(%(now)s))")
_CLAIM = ("UPDATE session_secrets k SET claimed_until = to_timestamp(%(until)s) FROM sessions s"  # noqa: S608
          " WHERE k.token_hash = %(token_hash)s AND k.purpose = %(purpose)s AND s.token_hash = k.token_hash"
          f" AND {_ACTIVE_S}"
          " AND (k.claimed_until IS NULL OR k.claimed_until <= to_timestamp(%(now)s)) RETURNING k.sealed")
_RENEW = ("UPDATE sessions SET expires_at = to_timestamp(%(expires_at)s), renewed_at = to_timestamp(%(now)s)"  # noqa: S608
          f" WHERE token_hash = %(token_hash)s AND {ACTIVE} RETURNING user_id")
_REPLACE = ("INSERT INTO session_secrets (token_hash, purpose, sealed) VALUES (%s, %s, %s)"
            " ON CONFLICT (token_hash, purpose) DO UPDATE SET sealed = excluded.sealed")
_HOLD = "UPDATE session_secrets SET claimed_until = to_timestamp(%s) WHERE token_hash = %s"


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

    async def claim_session_secret(self, token_hash: str, purpose: SessionSecretPurpose, *, now: float,
                                   lease: float) -> str | None:
        """Claim the sealed value for ``lease`` seconds (one statement: one claimant wins), or None."""
        if not is_session_secret_key(token_hash, purpose):
            return None

        async def work(cur: aiopg.Cursor) -> str | None:
            await cur.execute(_CLAIM, {"token_hash": token_hash, "purpose": purpose, "now": now,
                                       "until": now + max(0.0, lease)})
            row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self._run(work)

    async def renew_session(self, token_hash: str, *, now: float, expires_at: float,
                            secrets: Mapping[SessionSecretPurpose, str], next_claim_at: float) -> bool:
        """Move the expiry, replace the secrets and broadcast the user's re-read, in one transaction."""
        for purpose, sealed in secrets.items():
            check_session_secret(token_hash, purpose, sealed)

        async def work(cur: aiopg.Cursor) -> bool:
            await cur.execute(_RENEW, {"token_hash": token_hash, "now": now, "expires_at": expires_at})
            row = await cur.fetchone()
            if row is None:
                return False
            for purpose, sealed in secrets.items():
                await cur.execute(_REPLACE, (token_hash, purpose, sealed))
            await cur.execute(_HOLD, (next_claim_at, token_hash))
            await log_revocations(cur, [Revocation(user_id=int(row[0]))], keep=self._retention)
            return True

        return await self._run(work, transaction=True)

    async def _read(self, sql: str, token_hash: str, purpose: str, *, retry: bool) -> str | None:
        if not is_session_secret_key(token_hash, purpose):
            return None

        async def work(cur: aiopg.Cursor) -> str | None:
            await cur.execute(sql, (token_hash, purpose))
            row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self._run(work, retry=retry)
