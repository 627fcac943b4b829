"""Device codes of the OAuth 2.0 Device Authorization Grant on SQLite (see
:class:`gateway.store.devicerole.DeviceGrants`).

Every change runs in one IMMEDIATE transaction, which SQLite serialises across processes: a poll reads and
writes its grant with no other writer in between, so a token is claimed once.
"""

from __future__ import annotations

import sqlite3

import aiosqlite

from gateway.store.devicerole import (
    DEVICE_GRANT_FIELDS,
    DeviceGrant,
    PollOutcome,
    PollResult,
    UserCodeTaken,
    check_new_device_grant,
    check_poll,
    device_grant_from_row,
    is_code_hash,
    poll_verdict,
    too_soon,
)
from gateway.store.sqliteconn import ConnectedStore
from gateway.store.sqlitesql import ACTIVE, audit_user_key, insert_audit, one

_SELECT = f"SELECT {', '.join(DEVICE_GRANT_FIELDS)} FROM device_grants"  # noqa: S608
_APPROVER_ACTIVE = f"SELECT 1 FROM sessions WHERE token_hash = ? AND kind = 'browser' AND {ACTIVE}"  # noqa: S608


class DeviceTables(ConnectedStore):
    """The :class:`gateway.store.devicerole.DeviceGrants` role on the file."""

    async def issue_device_grant(self, *, device_hash: str, user_code_hash: str, client_id: str, client_addr: str,
                                 now: float, expires_at: float, interval: float) -> DeviceGrant:
        """Insert a pending grant (see the protocol)."""
        check_new_device_grant(device_hash, user_code_hash, client_id, client_addr, now, expires_at, interval)
        try:
            async with self._use(write=True) as conn:
                if list(await conn.execute_fetchall("SELECT 1 FROM device_grants WHERE user_code_hash = ?",
                                                    (user_code_hash,))):
                    raise UserCodeTaken()
                await conn.execute(
                    "INSERT INTO device_grants (device_hash, user_code_hash, client_id, client_addr, created_at,"
                    " expires_at, interval_s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (device_hash, user_code_hash, client_id, client_addr, now, expires_at, interval))
                row = one(await conn.execute_fetchall(_SELECT + " WHERE device_hash = ?", (device_hash,)))
        except sqlite3.IntegrityError:
            raise ValueError("a grant with this device code hash already exists") from None
        return device_grant_from_row(row)

    async def find_device_grant(self, user_code_hash: str, *, now: float) -> DeviceGrant | None:
        """The unexpired grant holding this user code (see the protocol)."""
        if not is_code_hash(user_code_hash):
            return None
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(_SELECT + " WHERE user_code_hash = ? AND expires_at > ?",
                                                    (user_code_hash, now)))
        return device_grant_from_row(tuple(rows[0])) if rows else None

    async def decide_device_grant(self, user_code_hash: str, *, approve: bool, user_id: int, session_hash: str,
                                  actor: str, now: float) -> DeviceGrant | None:
        """Decide the pending grant and audit it in one write transaction (see the protocol)."""
        if not (is_code_hash(user_code_hash) and is_code_hash(session_hash)):
            return None
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(
                "UPDATE device_grants SET status = ?, user_id = ?, approver_hash = ?, decided_at = ?"
                " WHERE user_code_hash = ? AND status = 'pending' AND expires_at > ?"
                " AND EXISTS (SELECT 1 FROM users WHERE id = ?) RETURNING device_hash",
                ("approved" if approve else "denied", user_id, session_hash, now, user_code_hash, now, user_id)))
            if not rows:
                return None
            grant = device_grant_from_row(one(await conn.execute_fetchall(_SELECT + " WHERE device_hash = ?",
                                                                          (str(rows[0][0]),))))
            await insert_audit(conn, now, "device_approve" if approve else "device_deny", user_id,
                               await audit_user_key(conn, user_id), actor,
                               {"client_id": grant.client_id, "client_addr": grant.client_addr,
                                "grant": grant.grant_id})
        return grant

    async def poll_device_grant(self, device_hash: str, *, client_id: str, now: float,
                                slow_down_step: float) -> PollResult:
        """Judge and record one poll in one write transaction (see the protocol)."""
        check_poll(now, slow_down_step)
        if not is_code_hash(device_hash):
            return PollResult(PollOutcome.UNKNOWN, None)
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(_SELECT + " WHERE device_hash = ?", (device_hash,)))
            grant = device_grant_from_row(tuple(rows[0])) if rows else None
            verdict = poll_verdict(grant, client_id, grant is not None and now >= grant.expires_at)
            if verdict is not None or grant is None:
                return PollResult(verdict or PollOutcome.UNKNOWN, grant)
            if grant.status == "approved":
                return await _claim(conn, grant, now)
            outcome = PollOutcome.SLOW_DOWN if too_soon(grant, now) else PollOutcome.PENDING
            step = slow_down_step if outcome is PollOutcome.SLOW_DOWN else 0.0
            await conn.execute("UPDATE device_grants SET last_polled_at = ?, interval_s = interval_s + ?"
                               " WHERE device_hash = ?", (now, step, device_hash))
            row = one(await conn.execute_fetchall(_SELECT + " WHERE device_hash = ?", (device_hash,)))
        return PollResult(outcome, device_grant_from_row(row))

    async def purge_device_grants(self, *, before: float) -> int:
        """Delete the grants that expired before ``before``."""
        async with self._use(write=True) as conn:
            cursor = await conn.execute("DELETE FROM device_grants WHERE expires_at < ?", (before,))
            return int(cursor.rowcount)


async def _claim(conn: aiosqlite.Connection, grant: DeviceGrant, now: float) -> PollResult:
    """Claim the approved ``grant`` (inside the caller's write transaction), or deny it when its approver's
    browser session has ended."""
    rows = list(await conn.execute_fetchall("SELECT approver_hash FROM device_grants WHERE device_hash = ?",
                                            (grant.device_hash,)))
    approver = rows[0][0] if rows else None
    alive = approver is not None and bool(list(await conn.execute_fetchall(_APPROVER_ACTIVE, (approver, now, now))))
    status, outcome = ("claimed", PollOutcome.CLAIMED) if alive else ("denied", PollOutcome.APPROVER_GONE)
    await conn.execute("UPDATE device_grants SET status = ?, last_polled_at = ? WHERE device_hash = ?",
                       (status, now, grant.device_hash))
    row = one(await conn.execute_fetchall(_SELECT + " WHERE device_hash = ?", (grant.device_hash,)))
    return PollResult(outcome, device_grant_from_row(row))
