"""The store's :class:`DeviceGrants` role (OAuth 2.0 Device Authorization Grant, RFC 8628), its records and the
checks both backends share; :mod:`gateway.store.base` composes the role into ``Store``.

A grant is one device code a CLI asked for: ``pending`` until the person it belongs to approves or denies
it in a browser, then ``approved`` (or ``denied``), and ``claimed`` once the CLI has been handed its token.
Only SHA-256 hex hashes of the device code and of the user code reach the store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol

DEVICE_CLIENT_ID_MAX = 64
"""Longest ``client_id`` a CLI may name itself with, in characters (the schema's CHECK)."""

DeviceGrantStatus = Literal["pending", "approved", "denied", "claimed"]
"""Where a grant is in its life: waiting for its person, decided either way, or its token handed out."""

DEVICE_CLIENT_ADDR_MAX = 256
"""Longest requesting address a grant records, in characters (the schema's CHECK)."""

_PRINTABLE_RE = re.compile(r"[\x20-\x7e]+")
_HASH_RE = re.compile(r"[0-9a-f]{64}")


class PollOutcome(StrEnum):
    """What one poll of a device code found (:meth:`DeviceGrants.poll_device_grant`)."""

    PENDING = "pending"
    """Not decided yet; the poll was recorded."""
    SLOW_DOWN = "slow_down"
    """Not decided yet, and the poll came sooner than the interval after the previous one: the interval grew."""
    CLAIMED = "claimed"
    """Approved, and this poll claimed it: the caller (and no one else, ever) hands out the token now."""
    DENIED = "denied"
    """The person said no."""
    EXPIRED = "expired"
    """The code expired before its token was claimed."""
    UNKNOWN = "unknown"
    """No such device code (or a malformed one)."""
    WRONG_CLIENT = "wrong_client"
    """The code was issued to another ``client_id``; nothing was recorded."""
    USED = "used"
    """Its token was claimed already."""
    APPROVER_GONE = "approver_gone"
    """Approved, but the browser session that approved it has ended since (signed out, revoked, the user
    blocked or removed): the grant is denied now, and no token is handed out."""


@dataclass(frozen=True, slots=True)
class DeviceGrant:
    """One device code as stored. Times are Unix seconds; ``interval`` is the current poll interval (seconds).

    ``user_id`` is who approved or denied it (None while pending); ``last_polled_at`` None until the first poll.
    """

    device_hash: str
    user_code_hash: str
    client_id: str
    client_addr: str
    created_at: float
    expires_at: float
    interval: float
    last_polled_at: float | None
    status: DeviceGrantStatus
    user_id: int | None
    decided_at: float | None

    @property
    def grant_id(self) -> str:
        """The first 8 hex characters of the device code's hash: how logs and audit rows name a grant."""
        return self.device_hash[:8]


DEVICE_GRANT_FIELDS = ("device_hash", "user_code_hash", "client_id", "client_addr", "created_at", "expires_at",
                       "interval_s", "last_polled_at", "status", "user_id", "decided_at")
"""The columns of ``device_grants`` in :class:`DeviceGrant` order (``interval_s``: ``interval`` is reserved)."""

DEVICE_TIME_FIELDS = frozenset({"created_at", "expires_at", "last_polled_at", "decided_at"})
"""The columns PostgreSQL keeps as timestamptz."""


@dataclass(frozen=True, slots=True)
class PollResult:
    """A poll's outcome, and the grant as the poll left it (None for :attr:`PollOutcome.UNKNOWN`)."""

    outcome: PollOutcome
    grant: DeviceGrant | None


class UserCodeTaken(Exception):
    """Another grant holds this user code's hash; nothing was stored (pick another code)."""


def is_client_id(value: str) -> bool:
    """True for a ``client_id`` a grant may carry: 1 to :data:`DEVICE_CLIENT_ID_MAX` printable ASCII characters."""
    return len(value) <= DEVICE_CLIENT_ID_MAX and _PRINTABLE_RE.fullmatch(value) is not None


def is_code_hash(value: str) -> bool:
    """True for a SHA-256 hex digest as the store keeps codes: 64 lower-case hex digits."""
    return _HASH_RE.fullmatch(value) is not None


def check_new_device_grant(device_hash: str, user_code_hash: str, client_id: str, client_addr: str, now: float,
                           expires_at: float, interval: float) -> None:
    """Reject a grant no schema would accept (see :meth:`DeviceGrants.issue_device_grant`), with a ValueError."""
    if not (is_code_hash(device_hash) and is_code_hash(user_code_hash)):
        raise ValueError("device and user code hashes are 64 lower-case hex digits")
    if device_hash == user_code_hash:
        raise ValueError("the device code and the user code must differ")
    if not is_client_id(client_id):
        raise ValueError(f"a client_id is 1 to {DEVICE_CLIENT_ID_MAX} printable ASCII characters")
    if len(client_addr) > DEVICE_CLIENT_ADDR_MAX or "\x00" in client_addr:
        raise ValueError(f"a client address is at most {DEVICE_CLIENT_ADDR_MAX} characters, without NUL")
    if not all(math.isfinite(t) for t in (now, expires_at, interval)):
        raise ValueError("times must be finite")
    if not expires_at > now:
        raise ValueError("a grant must expire after it is issued")
    if not interval >= 1:
        raise ValueError("the poll interval is at least 1 second")


def check_poll(now: float, slow_down_step: float) -> None:
    """Reject a poll no grant could be polled with (see :meth:`DeviceGrants.poll_device_grant`)."""
    if not (math.isfinite(now) and math.isfinite(slow_down_step)) or slow_down_step < 0:
        raise ValueError("times must be finite and the slow-down step non-negative")


def device_grant_from_row(row: Sequence[Any]) -> DeviceGrant:
    """A :class:`DeviceGrant` from a row laid out as :data:`DEVICE_GRANT_FIELDS`."""
    (device_hash, user_code_hash, client_id, client_addr, created_at, expires_at, interval, last_polled_at,
     status, user_id, decided_at) = row
    if status not in ("pending", "approved", "denied", "claimed"):
        raise ValueError(f"unknown device grant status {status!r}")
    return DeviceGrant(str(device_hash), str(user_code_hash), str(client_id), str(client_addr), float(created_at),
                       float(expires_at), float(interval), None if last_polled_at is None else float(last_polled_at),
                       status, None if user_id is None else int(user_id),
                       None if decided_at is None else float(decided_at))


def poll_verdict(grant: DeviceGrant | None, client_id: str, expired: bool) -> PollOutcome | None:
    """What a poll of ``grant`` (locked by the caller) by ``client_id`` means, when the answer needs no change;
    None when the grant is pending or approved (the caller decides: slow down or record, claim or refuse).
    ``expired`` says whether the poll comes at or after ``expires_at``, as the database compares times. The
    order is the protocol's: unknown, wrong client, used, expired, denied."""
    if grant is None:
        return PollOutcome.UNKNOWN
    if grant.client_id != client_id:
        return PollOutcome.WRONG_CLIENT
    if grant.status == "claimed":
        return PollOutcome.USED
    if expired:
        return PollOutcome.EXPIRED
    if grant.status == "denied":
        return PollOutcome.DENIED
    return None


def too_soon(grant: DeviceGrant, now: float) -> bool:
    """True when a poll of the pending ``grant`` at ``now`` comes sooner than its interval after the last one."""
    return grant.last_polled_at is not None and now - grant.last_polled_at < grant.interval


class DeviceGrants(Protocol):
    """Device codes CLIs poll with while their person approves them in a browser (RFC 8628)."""

    async def issue_device_grant(self, *, device_hash: str, user_code_hash: str, client_id: str, client_addr: str,
                                 now: float, expires_at: float, interval: float) -> DeviceGrant:
        """Store a ``pending`` grant and return it.

        Raises UserCodeTaken when another grant (of any state, until purged) holds ``user_code_hash``;
        ValueError for a malformed hash, a device hash already in use, a ``client_id`` that is not 1 to
        :data:`DEVICE_CLIENT_ID_MAX` printable ASCII characters, a ``client_addr`` over 256 characters or
        holding NUL, non-finite times, ``expires_at <= now`` or an interval under 1 second.
        """

    async def find_device_grant(self, user_code_hash: str, *, now: float) -> DeviceGrant | None:
        """The grant holding this user code, in any state, when ``now < expires_at``; else None (also for a
        malformed hash)."""

    async def decide_device_grant(self, user_code_hash: str, *, approve: bool, user_id: int, session_hash: str,
                                  actor: str, now: float) -> DeviceGrant | None:
        """Approve (or deny) the pending, unexpired grant holding this user code for ``user_id``, signed in with
        the browser session ``session_hash``, and audit it (``device_approve`` or ``device_deny``, with the
        client id, the requesting address and the grant id) in the same transaction; return it as decided.

        Atomic: of concurrent decisions on one grant (any processes) exactly one takes effect. None, and
        nothing changed, when no such grant is pending at ``now`` (unknown, expired, decided already) or a
        hash is malformed.
        """

    async def poll_device_grant(self, device_hash: str, *, client_id: str, now: float,
                                slow_down_step: float) -> PollResult:
        """One poll by the CLI holding the device code, judged and recorded in one transaction (RFC 8628 §3.5).

        In this order: UNKNOWN (no such grant, or a malformed hash), WRONG_CLIENT (issued to another
        ``client_id``; nothing recorded), USED (claimed already), EXPIRED (``now >= expires_at``), DENIED.
        A pending grant polled sooner than its interval after the previous poll is SLOW_DOWN: its interval
        grows by ``slow_down_step`` and is kept; otherwise PENDING. Either way ``last_polled_at`` becomes
        ``now``. An approved grant is claimed (CLAIMED, status ``claimed``) when the browser session that
        approved it is still active at ``now``, else it is denied (APPROVER_GONE). Of concurrent polls of one
        approved grant (any processes), exactly one is CLAIMED; the others are USED.
        """

    async def purge_device_grants(self, *, before: float) -> int:
        """Delete the grants that expired before ``before`` (Unix seconds), whatever their state; how many."""
