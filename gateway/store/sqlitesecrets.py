"""Sealed session secrets on SQLite (:class:`gateway.store.base.SessionSecrets`), a row per session and purpose."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from gateway.errors import NotFound
from gateway.models import Revocation
from gateway.store.secretschecks import check_session_secret, is_session_secret_key
from gateway.store.sessionsecrets import SessionSecretPurpose
from gateway.store.sqliteconn import ConnectedStore
from gateway.store.sqlitesql import ACTIVE, log_revocation

_KEEP = ("INSERT INTO session_secrets (token_hash, purpose, sealed) VALUES (?, ?, ?)"
         " ON CONFLICT (token_hash, purpose) DO UPDATE SET sealed = excluded.sealed")
_READ = "SELECT sealed FROM session_secrets WHERE token_hash = ? AND purpose = ?"
_TAKE = "DELETE FROM session_secrets WHERE token_hash = ? AND purpose = ? RETURNING sealed"
_CLAIM = ("UPDATE session_secrets SET claimed_until = ? WHERE token_hash = ? AND purpose = ?"  # noqa: S608
          " AND (claimed_until IS NULL OR claimed_until <= ?)"
          f" AND EXISTS (SELECT 1 FROM sessions WHERE token_hash = session_secrets.token_hash AND {ACTIVE})"
          " RETURNING sealed")
_RENEW = f"UPDATE sessions SET expires_at = ?, renewed_at = ? WHERE token_hash = ? AND {ACTIVE} RETURNING user_id"  # noqa: S608
_REPLACE = ("INSERT INTO session_secrets (token_hash, purpose, sealed) VALUES (?, ?, ?)"
            " ON CONFLICT (token_hash, purpose) DO UPDATE SET sealed = excluded.sealed")
_HOLD = "UPDATE session_secrets SET claimed_until = ? WHERE token_hash = ?"


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

    async def claim_session_secret(self, token_hash: str, purpose: SessionSecretPurpose, *, now: float,
                                   lease: float) -> str | None:
        """Claim the sealed value for ``lease`` seconds (one write transaction: one claimant wins), or None."""
        if not is_session_secret_key(token_hash, purpose):
            return None
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(
                _CLAIM, (now + max(0.0, lease), token_hash, purpose, now, now, now)))
        return str(rows[0][0]) if rows else None

    async def renew_session(self, token_hash: str, *, now: float, expires_at: float,
                            secrets: Mapping[SessionSecretPurpose, str], next_claim_at: float) -> bool:
        """Move the expiry, replace the secrets and broadcast the user's re-read, in one transaction."""
        for purpose, sealed in secrets.items():
            check_session_secret(token_hash, purpose, sealed)
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(_RENEW, (expires_at, now, token_hash, now, now)))
            if not rows:
                return False
            for purpose, sealed in secrets.items():
                await conn.execute(_REPLACE, (token_hash, purpose, sealed))
            await conn.execute(_HOLD, (next_claim_at, token_hash))
            await log_revocation(conn, now, Revocation(user_id=int(rows[0][0])))
        return True
