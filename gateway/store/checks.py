"""What the store accepts: limits of stored fields and the checks both backends run before writing."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from gateway.store.base import BlockKey, ProviderLogout, normalise_email

SESSION_KINDS = frozenset({"browser", "api"})
"""The values ``SessionRecord.kind`` may take (mirrored by a CHECK constraint in both schemas)."""


USER_AGENT_MAX = 512
"""User-Agent strings are cut to this many characters before they are stored."""


LOGIN_ATTEMPT_LIMITS: Mapping[str, int] = MappingProxyType({
    "upstream": 128,
    "state": 512,
    "nonce": 512,
    "code_verifier": 256,  # RFC 7636 allows 43 to 128 characters
    "return_to": 2048,
    "client_addr": 256,
})
"""Longest value, in characters, of each text field of a login attempt (mirrored by CHECKs in both schemas)."""


CLIENT_ADDR_MAX = 256
"""Longest client address a login-failure counter accepts (mirrored by a CHECK in both schemas)."""


BLOCK_LIMITS: Mapping[str, int] = MappingProxyType({
    "upstream": 256,
    "subject": 1024,
    "email": 512,
    "reason": 512,
})
"""Longest value, in characters, of each text field of a block (mirrored by CHECKs in both schemas)."""


_TOKEN_HASH_RE = re.compile(r"[0-9a-f]{64}")


def is_token_hash(value: str) -> bool:
    """True when ``value`` is a SHA-256 hex digest in lower case, the only form sessions are keyed by."""
    return len(value) == 64 and _TOKEN_HASH_RE.fullmatch(value) is not None


def check_new_session(token_hash: str, kind: str, expires_at: float, idle_timeout: float,
                      provider_session: str = "") -> None:
    """Reject a session that no schema would accept, with a ValueError naming the field."""
    if not is_token_hash(token_hash):
        raise ValueError("token_hash must be 64 lower-case hex characters (SHA-256 of the token)")
    if provider_session and not is_token_hash(provider_session):
        raise ValueError("provider_session must be empty or 64 lower-case hex characters (SHA-256)")
    if kind not in SESSION_KINDS:
        raise ValueError(f"kind must be one of {sorted(SESSION_KINDS)}, got {kind!r}")
    if not idle_timeout >= 0:
        raise ValueError("idle_timeout must be 0 (none) or positive")
    if math.isnan(expires_at):
        raise ValueError("expires_at must be a number")


PROVIDER_LOGOUT_LIMITS: Mapping[str, int] = MappingProxyType({"upstream": 128, "subject": 1024})
"""Longest ``upstream`` and ``subject`` a back-channel logout may name (longer ones match no user anyway)."""


def check_provider_logout(logout: ProviderLogout, now: float) -> None:
    """Reject a back-channel logout no schema would accept, with a ValueError naming the problem."""
    for name, limit in PROVIDER_LOGOUT_LIMITS.items():
        value = getattr(logout, name)
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string")
        if len(value) > limit or "\x00" in value:
            raise ValueError(f"{name} must be at most {limit} characters without NUL")
    if not logout.upstream:
        raise ValueError("upstream must not be empty")
    if not (logout.subject or logout.provider_session):
        raise ValueError("a back-channel logout names a subject, a provider session or both")
    if logout.provider_session and not is_token_hash(logout.provider_session):
        raise ValueError("provider_session must be empty or 64 lower-case hex characters (SHA-256)")
    if not is_token_hash(logout.token_id):
        raise ValueError("token_id must be 64 lower-case hex characters (SHA-256)")
    if not (math.isfinite(logout.token_expires_at) and math.isfinite(now)):
        raise ValueError("token_expires_at and now must be finite numbers")


def check_new_login_attempt(attempt_hash: str, fields: Mapping[str, str], now: float,
                            expires_at: float) -> None:
    """Reject a login attempt that no schema would accept, with a ValueError naming the field.

    ``fields`` maps the text fields of :data:`LOGIN_ATTEMPT_LIMITS` to their values.
    """
    if not is_token_hash(attempt_hash):
        raise ValueError("attempt_hash must be 64 lower-case hex characters (SHA-256 of the cookie value)")
    for name, limit in LOGIN_ATTEMPT_LIMITS.items():
        value = fields[name]
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string")
        if len(value) > limit:
            raise ValueError(f"{name} is longer than {limit} characters")
        if "\x00" in value:
            raise ValueError(f"{name} must not contain NUL characters")
    if not (math.isfinite(now) and math.isfinite(expires_at)):
        raise ValueError("now and expires_at must be finite numbers")


def check_login_failure(client_addr: str, now: float, window: float, threshold: int, lock_for: float) -> None:
    """Reject arguments of ``record_login_failure`` that make no sense, with a ValueError."""
    check_client_addr(client_addr)
    if not math.isfinite(now):
        raise ValueError("now must be a finite number")
    if not (math.isfinite(window) and window >= 0):
        raise ValueError("window must be 0 or a positive number of seconds")
    if not (math.isfinite(lock_for) and lock_for > 0):
        raise ValueError("lock_for must be a positive number of seconds")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError("threshold must be a positive integer")


def check_client_addr(client_addr: str) -> None:
    """Reject a client address that cannot key a login-failure counter (empty, too long, NUL)."""
    if not isinstance(client_addr, str):
        raise TypeError("client_addr must be a string")
    if not client_addr or len(client_addr) > CLIENT_ADDR_MAX or "\x00" in client_addr:
        raise ValueError(f"client_addr must be 1 to {CLIENT_ADDR_MAX} characters without NUL")


def is_client_addr(client_addr: str) -> bool:
    """True when ``client_addr`` could key a login-failure counter (so lookups of others find nothing)."""
    try:
        check_client_addr(client_addr)
    except (TypeError, ValueError):
        return False
    return True


def check_block_key(key: BlockKey, reason: str = "") -> None:
    """Reject a block key (and reason) no schema would accept, with a ValueError naming the problem.

    Exactly one form: ``upstream`` and ``subject`` both set and no ``email``, or only ``email`` (which
    must already be normalised, as :meth:`BlockKey.for_email` leaves it).
    """
    fields = {"upstream": key.upstream, "subject": key.subject, "email": key.email, "reason": reason}
    for name, value in fields.items():
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string")
        if len(value) > BLOCK_LIMITS[name]:
            raise ValueError(f"{name} is longer than {BLOCK_LIMITS[name]} characters")
        if "\x00" in value:
            raise ValueError(f"{name} must not contain NUL characters")
    if key.email:
        if key.upstream or key.subject:
            raise ValueError("a block is on an identity (upstream and subject) or on an email, not both")
        if key.email != normalise_email(key.email):
            raise ValueError("an email block must hold the email trimmed and lower-cased")
    elif not (key.upstream and key.subject):
        raise ValueError("a block needs both an upstream and a subject, or an email")


def block_emails(emails: Sequence[str]) -> list[str]:
    """The distinct, non-empty normalised forms of ``emails``, as :meth:`Store.is_blocked` compares them."""
    if isinstance(emails, str):
        raise TypeError("emails must be a sequence of strings, not a string")
    return list(dict.fromkeys(e for e in map(normalise_email, emails) if e))


def check_new_device(device_hash: str, now: float, expires_at: float) -> None:
    """Reject arguments of ``remember_device`` that make no sense, with a ValueError."""
    if not is_token_hash(device_hash):
        raise ValueError("device_hash must be 64 lower-case hex characters (SHA-256 of the cookie value)")
    if not (math.isfinite(now) and math.isfinite(expires_at)):
        raise ValueError("now and expires_at must be finite numbers")
