"""Login state on PostgreSQL: logins in progress, failure counters and locks, remembered devices."""

from __future__ import annotations

import aiopg
import psycopg2
import psycopg2.errors

from gateway.errors import NotFound
from gateway.models import LoginAttempt
from gateway.store.base import Device
from gateway.store.checks import (
    check_login_failure,
    check_new_device,
    check_new_login_attempt,
    is_client_addr,
    is_token_hash,
)
from gateway.store.pgpool import PooledStore
from gateway.store.pgsql import columns
from gateway.store.rows import DEVICE_FIELDS, LOGIN_ATTEMPT_FIELDS, device_from_row, login_attempt_from_row

PRUNE_BATCH = 100
"""Most expired login attempts or stale failure counters one call deletes on the side."""


_INSERT_LOGIN_ATTEMPT = (
    "INSERT INTO login_attempts (attempt_hash, upstream, state, nonce, code_verifier, return_to,"
    " client_addr, created_at, expires_at) VALUES (%(attempt_hash)s, %(upstream)s, %(state)s, %(nonce)s,"
    " %(code_verifier)s, %(return_to)s, %(client_addr)s, to_timestamp(%(now)s),"
    " to_timestamp(%(expires_at)s))"
)


# Row locks are taken in one DELETE; several consumers of one attempt queue on its lock and only the
# first finds the row.
_CONSUME_LOGIN_ATTEMPT = ("DELETE FROM login_attempts WHERE attempt_hash = %s"  # noqa: S608
                          f" RETURNING {columns(LOGIN_ATTEMPT_FIELDS)}")


# SKIP LOCKED: replicas pruning at once (or racing a consume) never wait for, or deadlock on, each other.
_PRUNE_LOGIN_ATTEMPTS = (
    "DELETE FROM login_attempts WHERE attempt_hash IN (SELECT attempt_hash FROM login_attempts"
    " WHERE expires_at < to_timestamp(%(now)s) ORDER BY expires_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)


# One statement, so concurrent failures (any replica) are never lost: ON CONFLICT takes the row lock and
# re-reads the row. In DO UPDATE, ``f.`` is the row as it was; a window older than %(window)s restarts.
_RESTARTS = "f.window_started_at < to_timestamp(%(now)s - %(window)s)"


_COUNT_FAILURE = (
    "INSERT INTO login_failures AS f (client_addr, failures, window_started_at, locked_until)"  # noqa: S608
    " VALUES (%(addr)s, 1, to_timestamp(%(now)s),"
    " CASE WHEN 1 >= %(threshold)s THEN to_timestamp(%(now)s + %(lock_for)s) END)"
    " ON CONFLICT (client_addr) DO UPDATE SET"
    f" failures = CASE WHEN {_RESTARTS} THEN 1 ELSE f.failures + 1 END,"
    f" window_started_at = CASE WHEN {_RESTARTS} THEN to_timestamp(%(now)s) ELSE f.window_started_at END,"
    f" locked_until = CASE WHEN (CASE WHEN {_RESTARTS} THEN 1 ELSE f.failures + 1 END) >= %(threshold)s"
    " THEN greatest(f.locked_until, to_timestamp(%(now)s + %(lock_for)s)) ELSE f.locked_until END"
    " RETURNING f.failures, extract(epoch from f.locked_until)::float8"
)


# Counters whose window has passed and which hold no lock mean nothing any more: the next failure
# would restart them anyway.
_PRUNE_LOGIN_FAILURES = (
    "DELETE FROM login_failures WHERE client_addr IN (SELECT client_addr FROM login_failures"
    " WHERE window_started_at < to_timestamp(%(now)s - %(window)s)"
    " AND (locked_until IS NULL OR locked_until <= to_timestamp(%(now)s))"
    " ORDER BY window_started_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)


# A device already recorded for another user is left alone (and RETURNING then gives no row).
_REMEMBER_DEVICE = (
    "INSERT INTO login_devices AS d (device_hash, user_id, created_at, expires_at) VALUES (%(hash)s,"
    " %(user_id)s, to_timestamp(%(now)s), to_timestamp(%(expires_at)s)) ON CONFLICT (device_hash)"
    " DO UPDATE SET expires_at = greatest(d.expires_at, EXCLUDED.expires_at) WHERE d.user_id = EXCLUDED.user_id"
    " RETURNING d.user_id"
)


_PRUNE_DEVICES = (
    "DELETE FROM login_devices WHERE device_hash IN (SELECT device_hash FROM login_devices"
    " WHERE expires_at <= to_timestamp(%(now)s) ORDER BY expires_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)


_FIND_DEVICE = (f"SELECT {columns(DEVICE_FIELDS)} FROM login_devices"  # noqa: S608
                " WHERE device_hash = %s AND expires_at > to_timestamp(%s)")


class LoginTables(PooledStore):
    """The :class:`gateway.store.base.LoginState` role on the pool."""

    # -- login attempts and failures -----------------------------------------------------------

    async def create_login_attempt(self, *, attempt_hash: str, upstream: str, state: str, nonce: str,
                                   code_verifier: str, return_to: str, client_addr: str, now: float,
                                   expires_at: float) -> None:
        """Insert the attempt, first deleting up to :data:`PRUNE_BATCH` attempts expired before ``now``.

        Raises ValueError for a malformed hash or value, or a hash already in use.
        """
        fields = {"upstream": upstream, "state": state, "nonce": nonce, "code_verifier": code_verifier,
                  "return_to": return_to, "client_addr": client_addr}
        check_new_login_attempt(attempt_hash, fields, now, expires_at)
        params = {"attempt_hash": attempt_hash, "now": now, "expires_at": expires_at, **fields}

        async def work(cur: aiopg.Cursor) -> None:
            # two autocommit statements: the prune needs no atomicity with the insert
            await cur.execute(_PRUNE_LOGIN_ATTEMPTS, {"now": now, "batch": PRUNE_BATCH})
            await cur.execute(_INSERT_LOGIN_ATTEMPT, params)

        try:
            await self._run(work)
        except psycopg2.errors.UniqueViolation:
            raise ValueError("a login attempt with this hash already exists") from None

    async def consume_login_attempt(self, attempt_hash: str, *, now: float) -> LoginAttempt | None:
        """Delete the attempt and return it (one DELETE ... RETURNING); None if unknown or expired.

        Never retried on a lost connection: a retry could not tell "consumed by us" from "by another".
        """
        if not is_token_hash(attempt_hash):
            return None

        async def work(cur: aiopg.Cursor) -> LoginAttempt | None:
            await cur.execute(_CONSUME_LOGIN_ATTEMPT, (attempt_hash,))
            row = await cur.fetchone()
            return None if row is None else login_attempt_from_row(row)

        attempt = await self._run(work)
        return attempt if attempt is not None and now < attempt.expires_at else None

    async def record_login_failure(self, client_addr: str, *, now: float, window: float, threshold: int,
                                   lock_for: float) -> float | None:
        """Count the failure in one upsert; return the lock's end when the window's count reaches
        ``threshold``. Also deletes up to :data:`PRUNE_BATCH` counters that no longer mean anything.
        """
        check_login_failure(client_addr, now, window, threshold, lock_for)
        params = {"addr": client_addr, "now": now, "window": window, "threshold": threshold,
                  "lock_for": lock_for}

        async def work(cur: aiopg.Cursor) -> tuple[int, float | None]:
            await cur.execute(_COUNT_FAILURE, params)
            failures, locked = await cur.fetchone()
            await cur.execute(_PRUNE_LOGIN_FAILURES, {"now": now, "window": window, "batch": PRUNE_BATCH})
            return int(failures), None if locked is None else float(locked)

        failures, locked = await self._run(work)
        return locked if failures >= threshold else None

    async def locked_until(self, client_addr: str, *, now: float) -> float | None:
        """The end of the lock on ``client_addr`` if it is still locked at ``now``, else None."""
        if not is_client_addr(client_addr):
            return None

        async def work(cur: aiopg.Cursor) -> float | None:
            await cur.execute("SELECT extract(epoch from locked_until)::float8 FROM login_failures"
                              " WHERE client_addr = %s AND locked_until > to_timestamp(%s)", (client_addr, now))
            row = await cur.fetchone()
            return None if row is None else float(row[0])

        return await self._run(work, retry=True)

    async def clear_login_failures(self, client_addr: str) -> None:
        """Delete the address's failure counter and lock, if any."""
        if not is_client_addr(client_addr):
            return

        async def work(cur: aiopg.Cursor) -> None:
            await cur.execute("DELETE FROM login_failures WHERE client_addr = %s", (client_addr,))

        await self._run(work)

    # -- login devices -------------------------------------------------------------------------

    async def remember_device(self, device_hash: str, *, user_id: int, now: float, expires_at: float) -> None:
        """Insert the device or extend it (same user only), first deleting up to :data:`PRUNE_BATCH`
        expired devices."""
        check_new_device(device_hash, now, expires_at)
        params = {"hash": device_hash, "user_id": user_id, "now": now, "expires_at": expires_at}

        async def work(cur: aiopg.Cursor) -> bool:
            # two autocommit statements: the prune needs no atomicity with the upsert
            await cur.execute(_PRUNE_DEVICES, {"now": now, "batch": PRUNE_BATCH})
            await cur.execute(_REMEMBER_DEVICE, params)
            return await cur.fetchone() is not None

        try:
            recorded = await self._run(work)
        except psycopg2.errors.ForeignKeyViolation:
            raise NotFound(f"No user with id {user_id}.") from None
        if not recorded:
            raise ValueError("this device is recorded for another user")

    async def find_device(self, device_hash: str, *, now: float) -> Device | None:
        """The live device with this hash, or None."""
        if not is_token_hash(device_hash):
            return None

        async def work(cur: aiopg.Cursor) -> Device | None:
            await cur.execute(_FIND_DEVICE, (device_hash, now))
            row = await cur.fetchone()
            return None if row is None else device_from_row(row)

        return await self._run(work, retry=True)
