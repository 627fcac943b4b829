"""Device codes of the OAuth 2.0 Device Authorization Grant on PostgreSQL (see
:class:`gateway.store.devicerole.DeviceGrants`).

A poll locks its grant's row (``SELECT ... FOR UPDATE``) for its transaction, so of two polls on two
replicas the second sees what the first wrote: a token is claimed once. Writes are never retried on a lost
connection (a retry could not tell "done by us" from "by another").
"""

from __future__ import annotations

import aiopg
import psycopg2.errors

from gateway.store.devicerole import (
    DEVICE_GRANT_FIELDS,
    DEVICE_TIME_FIELDS,
    DeviceGrant,
    PollOutcome,
    PollResult,
    UserCodeTaken,
    check_new_device_grant,
    check_poll,
    device_grant_from_row,
    is_code_hash,
    poll_verdict,
)
from gateway.store.pgpool import PooledStore
from gateway.store.pgsql import ACTIVE, insert_audit

_COLUMNS = ", ".join(f"extract(epoch from {name})::float8" if name in DEVICE_TIME_FIELDS else name
                     for name in DEVICE_GRANT_FIELDS)
_SELECT = f"SELECT {_COLUMNS} FROM device_grants"  # noqa: S608
_APPROVER_ACTIVE = (f"SELECT 1 FROM sessions WHERE token_hash = %(approver)s AND kind = 'browser' AND {ACTIVE}")  # noqa: S608
_POLL = (f"SELECT {_COLUMNS}, expires_at <= to_timestamp(%(now)s),"  # noqa: S608
         " last_polled_at IS NOT NULL AND to_timestamp(%(now)s) < last_polled_at + make_interval(secs => interval_s),"
         " approver_hash FROM device_grants WHERE device_hash = %(device_hash)s FOR UPDATE")
_INSERT = ("INSERT INTO device_grants (device_hash, user_code_hash, client_id, client_addr, created_at, expires_at,"
           " interval_s) VALUES (%(device_hash)s, %(user_code_hash)s, %(client_id)s, %(client_addr)s,"
           " to_timestamp(%(now)s), to_timestamp(%(expires_at)s), %(interval)s)")
_DECIDE = ("UPDATE device_grants SET status = %(status)s, user_id = %(user_id)s, approver_hash = %(session_hash)s,"
           " decided_at = to_timestamp(%(now)s) WHERE user_code_hash = %(user_code_hash)s AND status = 'pending'"
           " AND expires_at > to_timestamp(%(now)s) AND EXISTS (SELECT 1 FROM users WHERE id = %(user_id)s)"
           " RETURNING device_hash")


class DeviceTables(PooledStore):
    """The :class:`gateway.store.devicerole.DeviceGrants` role on the pool."""

    async def issue_device_grant(self, *, device_hash: str, user_code_hash: str, client_id: str, client_addr: str,
                                 now: float, expires_at: float, interval: float) -> DeviceGrant:
        """Insert a pending grant (see the protocol)."""
        check_new_device_grant(device_hash, user_code_hash, client_id, client_addr, now, expires_at, interval)
        params = {"device_hash": device_hash, "user_code_hash": user_code_hash, "client_id": client_id,
                  "client_addr": client_addr, "now": now, "expires_at": expires_at, "interval": interval}

        async def work(cur: aiopg.Cursor) -> DeviceGrant:
            await cur.execute(_INSERT, params)
            await cur.execute(_SELECT + " WHERE device_hash = %s", (device_hash,))
            return device_grant_from_row(await cur.fetchone())

        try:
            return await self._run(work, transaction=True)
        except psycopg2.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "device_grants_user_code_hash_key":
                raise UserCodeTaken() from None
            raise ValueError("a grant with this device code hash already exists") from None

    async def find_device_grant(self, user_code_hash: str, *, now: float) -> DeviceGrant | None:
        """The unexpired grant holding this user code (see the protocol)."""
        if not is_code_hash(user_code_hash):
            return None

        async def work(cur: aiopg.Cursor) -> DeviceGrant | None:
            await cur.execute(_SELECT + " WHERE user_code_hash = %s AND expires_at > to_timestamp(%s)",
                              (user_code_hash, now))
            row = await cur.fetchone()
            return None if row is None else device_grant_from_row(row)

        return await self._run(work, retry=True)

    async def decide_device_grant(self, user_code_hash: str, *, approve: bool, user_id: int, session_hash: str,
                                  actor: str, now: float) -> DeviceGrant | None:
        """Decide the pending grant and audit it in one transaction (see the protocol)."""
        if not (is_code_hash(user_code_hash) and is_code_hash(session_hash)):
            return None
        params = {"status": "approved" if approve else "denied", "user_id": user_id, "session_hash": session_hash,
                  "now": now, "user_code_hash": user_code_hash}

        async def work(cur: aiopg.Cursor) -> DeviceGrant | None:
            await cur.execute(_DECIDE, params)
            decided = await cur.fetchone()
            if decided is None:
                return None
            await cur.execute(_SELECT + " WHERE device_hash = %s", (str(decided[0]),))
            grant = device_grant_from_row(await cur.fetchone())
            await cur.execute("SELECT upstream || ':' || subject FROM users WHERE id = %s", (user_id,))
            key = await cur.fetchone()
            await insert_audit(cur, now, "device_approve" if approve else "device_deny", user_id,
                               "" if key is None else str(key[0]), actor,
                               {"client_id": grant.client_id, "client_addr": grant.client_addr,
                                "grant": grant.grant_id})
            return grant

        return await self._run(work, transaction=True)

    async def poll_device_grant(self, device_hash: str, *, client_id: str, now: float,
                                slow_down_step: float) -> PollResult:
        """Judge and record one poll with the grant's row locked (see the protocol)."""
        check_poll(now, slow_down_step)
        if not is_code_hash(device_hash):
            return PollResult(PollOutcome.UNKNOWN, None)

        async def work(cur: aiopg.Cursor) -> PollResult:
            # times compared here, as stored (microseconds), not as floats read back
            await cur.execute(_POLL, {"device_hash": device_hash, "now": now})
            row = await cur.fetchone()
            grant = None if row is None else device_grant_from_row(row[:-3])
            verdict = poll_verdict(grant, client_id, row is not None and bool(row[-3]))
            if verdict is not None or grant is None:
                return PollResult(verdict or PollOutcome.UNKNOWN, grant)
            if grant.status == "approved":
                approver = row[-1]
                await cur.execute(_APPROVER_ACTIVE, {"approver": approver, "now": now})
                alive = approver is not None and await cur.fetchone() is not None
                outcome = PollOutcome.CLAIMED if alive else PollOutcome.APPROVER_GONE
                await cur.execute("UPDATE device_grants SET status = %s, last_polled_at = to_timestamp(%s)"
                                  " WHERE device_hash = %s", ("claimed" if alive else "denied", now, device_hash))
            else:
                outcome = PollOutcome.SLOW_DOWN if row[-2] else PollOutcome.PENDING
                step = slow_down_step if outcome is PollOutcome.SLOW_DOWN else 0.0
                await cur.execute("UPDATE device_grants SET last_polled_at = to_timestamp(%s),"
                                  " interval_s = interval_s + %s WHERE device_hash = %s", (now, step, device_hash))
            await cur.execute(_SELECT + " WHERE device_hash = %s", (device_hash,))
            return PollResult(outcome, device_grant_from_row(await cur.fetchone()))

        return await self._run(work, transaction=True)

    async def purge_device_grants(self, *, before: float) -> int:
        """Delete the grants that expired before ``before``."""
        async def work(cur: aiopg.Cursor) -> int:
            await cur.execute("DELETE FROM device_grants WHERE expires_at < to_timestamp(%s)", (before,))
            return int(cur.rowcount)

        return await self._run(work)
