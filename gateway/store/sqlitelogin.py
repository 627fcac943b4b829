"""Login state on SQLite: logins in progress, failure counters and locks, remembered devices."""

from __future__ import annotations

import sqlite3

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
from gateway.store.rows import DEVICE_FIELDS, LOGIN_ATTEMPT_FIELDS, device_from_row, login_attempt_from_row
from gateway.store.sqliteconn import ConnectedStore
from gateway.store.sqlitesql import one

PRUNE_BATCH = 100
"""Most expired login attempts or stale failure counters one call deletes on the side."""


_LOGIN_ATTEMPT_COLUMNS = ", ".join(LOGIN_ATTEMPT_FIELDS)


_INSERT_LOGIN_ATTEMPT = (f"INSERT INTO login_attempts ({_LOGIN_ATTEMPT_COLUMNS})"  # noqa: S608
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


_CONSUME_LOGIN_ATTEMPT = ("DELETE FROM login_attempts WHERE attempt_hash = ?"  # noqa: S608
                          f" RETURNING {_LOGIN_ATTEMPT_COLUMNS}")


_PRUNE_LOGIN_ATTEMPTS = (
    "DELETE FROM login_attempts WHERE attempt_hash IN"
    " (SELECT attempt_hash FROM login_attempts WHERE expires_at < :now ORDER BY expires_at LIMIT :batch)"
)


# One statement, so concurrent failures (other connections, other processes) are never lost. In DO
# UPDATE, bare column names are the row as it was; a window older than :window restarts at :now.
_RESTARTS = "login_failures.window_started_at < :now - :window"


_COUNT_FAILURE = (
    "INSERT INTO login_failures (client_addr, failures, window_started_at, locked_until)"  # noqa: S608
    " VALUES (:addr, 1, :now, CASE WHEN 1 >= :threshold THEN :now + :lock_for END)"
    " ON CONFLICT (client_addr) DO UPDATE SET"
    f" failures = CASE WHEN {_RESTARTS} THEN 1 ELSE login_failures.failures + 1 END,"
    f" window_started_at = CASE WHEN {_RESTARTS} THEN :now ELSE login_failures.window_started_at END,"
    f" locked_until = CASE WHEN (CASE WHEN {_RESTARTS} THEN 1 ELSE login_failures.failures + 1 END)"
    " >= :threshold THEN max(coalesce(login_failures.locked_until, :now + :lock_for), :now + :lock_for)"
    " ELSE login_failures.locked_until END"
    " RETURNING failures, locked_until"
)


# Counters whose window has passed and which hold no lock mean nothing any more: the next failure
# would restart them anyway.
_PRUNE_LOGIN_FAILURES = (
    "DELETE FROM login_failures WHERE client_addr IN (SELECT client_addr FROM login_failures"
    " WHERE window_started_at < :now - :window AND (locked_until IS NULL OR locked_until <= :now)"
    " ORDER BY window_started_at LIMIT :batch)"
)


_DEVICE_COLUMNS = ", ".join(DEVICE_FIELDS)


# A device already recorded for another user is left alone (and RETURNING then gives no row).
_REMEMBER_DEVICE = (
    f"INSERT INTO login_devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?)"  # noqa: S608
    " ON CONFLICT (device_hash) DO UPDATE SET expires_at = max(login_devices.expires_at, excluded.expires_at)"
    " WHERE login_devices.user_id = excluded.user_id RETURNING user_id"
)


_PRUNE_DEVICES = (
    "DELETE FROM login_devices WHERE device_hash IN"
    " (SELECT device_hash FROM login_devices WHERE expires_at <= :now ORDER BY expires_at LIMIT :batch)"
)


class LoginTables(ConnectedStore):
    """The :class:`gateway.store.base.LoginState` role on the file."""

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
        try:
            async with self._use(write=True) as conn:
                await conn.execute(_PRUNE_LOGIN_ATTEMPTS, {"now": now, "batch": PRUNE_BATCH})
                await conn.execute(_INSERT_LOGIN_ATTEMPT,
                                   (attempt_hash, upstream, state, nonce, code_verifier, return_to,
                                    client_addr, now, expires_at))
        except sqlite3.IntegrityError:
            raise ValueError("a login attempt with this hash already exists") from None

    async def consume_login_attempt(self, attempt_hash: str, *, now: float) -> LoginAttempt | None:
        """Delete the attempt and return it (one DELETE ... RETURNING); None if unknown or expired."""
        if not is_token_hash(attempt_hash):
            return None
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(_CONSUME_LOGIN_ATTEMPT, (attempt_hash,)))
        if not rows:
            return None
        attempt = login_attempt_from_row(rows[0])
        return attempt if now < attempt.expires_at else None

    async def record_login_failure(self, client_addr: str, *, now: float, window: float, threshold: int,
                                   lock_for: float) -> float | None:
        """Count the failure in one upsert; return the lock's end when the window's count reaches
        ``threshold``. Also deletes up to :data:`PRUNE_BATCH` counters that no longer mean anything.
        """
        check_login_failure(client_addr, now, window, threshold, lock_for)
        params = {"addr": client_addr, "now": now, "window": window, "threshold": threshold,
                  "lock_for": lock_for}
        async with self._use(write=True) as conn:
            failures, locked = one(await conn.execute_fetchall(_COUNT_FAILURE, params))
            await conn.execute(_PRUNE_LOGIN_FAILURES, {"now": now, "window": window, "batch": PRUNE_BATCH})
        return float(locked) if int(failures) >= threshold and locked is not None else None

    async def locked_until(self, client_addr: str, *, now: float) -> float | None:
        """The end of the lock on ``client_addr`` if it is still locked at ``now``, else None."""
        if not is_client_addr(client_addr):
            return None
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(
                "SELECT locked_until FROM login_failures WHERE client_addr = ? AND locked_until > ?",
                (client_addr, now)))
        return float(rows[0][0]) if rows else None

    async def clear_login_failures(self, client_addr: str) -> None:
        """Delete the address's failure counter and lock, if any."""
        if not is_client_addr(client_addr):
            return
        async with self._use(write=True) as conn:
            await conn.execute("DELETE FROM login_failures WHERE client_addr = ?", (client_addr,))

    # -- login devices -------------------------------------------------------------------------

    async def remember_device(self, device_hash: str, *, user_id: int, now: float, expires_at: float) -> None:
        """Insert the device or extend it (same user only), first deleting up to :data:`PRUNE_BATCH`
        expired devices."""
        check_new_device(device_hash, now, expires_at)
        try:
            async with self._use(write=True) as conn:
                await conn.execute(_PRUNE_DEVICES, {"now": now, "batch": PRUNE_BATCH})
                rows = list(await conn.execute_fetchall(_REMEMBER_DEVICE, (device_hash, user_id, now, expires_at)))
                if not rows:
                    raise ValueError("this device is recorded for another user")
        except sqlite3.IntegrityError:
            raise NotFound(f"No user with id {user_id}.") from None

    async def find_device(self, device_hash: str, *, now: float) -> Device | None:
        """The live device with this hash, or None."""
        if not is_token_hash(device_hash):
            return None
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(
                f"SELECT {_DEVICE_COLUMNS} FROM login_devices WHERE device_hash = ? AND expires_at > ?",  # noqa: S608
                (device_hash, now)))
        return device_from_row(rows[0]) if rows else None
