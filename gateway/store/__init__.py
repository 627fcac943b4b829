"""The session store: the ``Store`` protocol, a factory choosing the backend by URL, and shared helpers."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from types import MappingProxyType
from typing import Any, cast

from gateway.models import ActiveSession, AuditEvent, LoginAttempt, Revocation, SessionKind, SessionRecord, User
from gateway.settings import Settings
from gateway.store.base import (
    Block,
    BlockKey,
    BlockOutcome,
    Device,
    LoggedRevocation,
    RevocationHandler,
    Store,
    WatchStateHandler,
    normalise_email,
)

__all__ = ["Block", "BlockKey", "BlockOutcome", "Device", "LoggedRevocation", "RevocationHandler", "Store",
           "WatchStateHandler", "make_store", "open_store", "revocation_retention"]

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

REVOCATION_RETENTION_FLOOR = 600.0
"""Logged revocations are kept at least this many seconds, whatever the cache settings."""

REVOCATION_RETENTION_MARGIN = 60.0
"""Kept this much longer than a cache may serve a session, for clocks that disagree and slow readers."""

REVOCATION_REPLAY = 5.0
"""A watcher starting up also applies the revocations logged this many seconds before it began (clocks
of the gateway and the database may disagree that much), not only those logged after."""

REVOCATION_BATCH = 1000
"""Most logged revocations one catch-up read asks for; a watcher reads again until it has them all."""


def revocation_retention(settings: Settings) -> float:
    """Seconds a logged revocation is kept: longer than any cache may serve a session it revokes.

    A cached session is fresh for at most ``cache.ttl`` and then served stale for at most
    ``cache.stale_if_error`` (while the database cannot be reached), so a revocation older than the sum
    can no longer concern a cached entry. A watcher that was away longer than this catches up on what is
    left, which is everything that can still matter.
    """
    cache = settings.cache
    longest = max(float(cache.ttl), float(cache.degraded_ttl)) + float(cache.stale_if_error)
    return max(REVOCATION_RETENTION_FLOOR, longest + REVOCATION_RETENTION_MARGIN)


_TOKEN_HASH_RE = re.compile(r"[0-9a-f]{64}")
_VERSION_RE = re.compile(r"\d{4}_[a-z0-9_]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}")


def _sqlite_store(settings: Settings) -> Store:
    # imported on demand so a deployment only loads the driver it uses
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(settings)


def _postgres_store(settings: Settings) -> Store:
    from gateway.store.postgres import PostgresStore

    return PostgresStore(settings)


_BACKENDS: Mapping[str, Callable[[Settings], Store]] = MappingProxyType({
    "sqlite": _sqlite_store,
    "postgresql": _postgres_store,
    "postgres": _postgres_store,
})


def make_store(settings: Settings) -> Store:
    """Build the store for ``settings.database_url`` by its scheme, without connecting.

    Call ``await store.open()`` before use and ``await store.close()`` at shutdown. Raises ValueError
    for an unsupported scheme (the message never repeats the URL, which may hold a password).
    """
    scheme, colon, _ = settings.database_url.partition(":")
    factory = _BACKENDS.get(scheme.lower()) if colon else None
    if factory is None:
        shown = f" {scheme!r}" if colon and _SCHEME_RE.fullmatch(scheme) else ""
        raise ValueError(f"database_url: unsupported scheme{shown} (expected one of "
                         f"{', '.join(sorted(_BACKENDS))})")
    return factory(settings)


async def open_store(settings: Settings) -> Store:
    """:func:`make_store` then ``open()``; succeeds even when the database is down (calls raise later)."""
    store = make_store(settings)
    await store.open()
    return store


def is_token_hash(value: str) -> bool:
    """True when ``value`` is a SHA-256 hex digest in lower case, the only form sessions are keyed by."""
    return len(value) == 64 and _TOKEN_HASH_RE.fullmatch(value) is not None


def check_new_session(token_hash: str, kind: str, expires_at: float, idle_timeout: float) -> None:
    """Reject a session that no schema would accept, with a ValueError naming the field."""
    if not is_token_hash(token_hash):
        raise ValueError("token_hash must be 64 lower-case hex characters (SHA-256 of the token)")
    if kind not in SESSION_KINDS:
        raise ValueError(f"kind must be one of {sorted(SESSION_KINDS)}, got {kind!r}")
    if not idle_timeout >= 0:
        raise ValueError("idle_timeout must be 0 (none) or positive")
    if math.isnan(expires_at):
        raise ValueError("expires_at must be a number")


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


def encode_detail(detail: Mapping[str, str] | None) -> str:
    """Audit ``detail`` as compact JSON text with sorted keys."""
    return json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"))


def decode_detail(raw: Any) -> dict[str, str]:
    """Audit ``detail`` back from JSON text (SQLite) or an already decoded object (Postgres jsonb)."""
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def decode_names(raw: Any) -> tuple[str, ...]:
    """A JSON array of group or role names (text or decoded) as a tuple of strings."""
    value = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    if not isinstance(value, list):
        return ()
    return tuple(map(str, value))


def encode_names(names: Sequence[str]) -> str:
    """Group or role names as a JSON array of strings, order kept, duplicates dropped.

    Raises TypeError for a bare string, which would otherwise be split into characters.
    """
    if isinstance(names, str):
        raise TypeError("groups and roles must be a sequence of strings, not a string")
    return json.dumps(list(dict.fromkeys(str(name) for name in names)))


def migration_scripts(dialect: str) -> list[tuple[str, str]]:
    """The packaged migrations for ``dialect`` (``sqlite`` or ``postgres``) as (version, SQL), in order.

    The version is the file name without ``.sql`` (``0001_initial``); files are applied by name order.
    """
    folder = resources.files("gateway.store").joinpath("migrations").joinpath(dialect)
    scripts: list[tuple[str, str]] = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        version = name[: -len(".sql")]
        if not _VERSION_RE.fullmatch(version):
            raise RuntimeError(f"migration file {name!r} must be named NNNN_description.sql")
        scripts.append((version, entry.read_text(encoding="utf-8")))
    scripts.sort()
    return scripts


USER_FIELDS = ("id", "upstream", "subject", "email", "name", "username", "groups", "roles", "created_at",
               "updated_at", "last_login_at")
"""Column order of every user row the backends select (times as epoch seconds)."""

SESSION_FIELDS = ("token_hash", "user_id", "kind", "created_at", "expires_at", "idle_timeout",
                  "last_seen_at", "idle_expires_at", "revoked_at", "client_addr", "user_agent", "mfa")
"""Column order of every session row the backends select (times as epoch seconds)."""

LOGIN_ATTEMPT_FIELDS = ("attempt_hash", "upstream", "state", "nonce", "code_verifier", "return_to",
                        "client_addr", "created_at", "expires_at")
"""Column order of every login-attempt row the backends select (times as epoch seconds)."""


# The three below run once per looked-up session on the check path: arguments are positional, in field order.

def user_from_row(row: Sequence[Any]) -> User:
    """A :class:`User` from a row laid out as :data:`USER_FIELDS`."""
    last_login_at = row[10]
    return User(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5]),
                decode_names(row[6]), decode_names(row[7]), float(row[8]), float(row[9]),
                None if last_login_at is None else float(last_login_at))


def session_from_row(row: Sequence[Any]) -> SessionRecord:
    """A :class:`SessionRecord` from a row laid out as :data:`SESSION_FIELDS`."""
    kind = row[2]
    if kind not in SESSION_KINDS:  # the schema's CHECK makes this unreachable
        raise ValueError(f"unknown session kind {kind!r}")
    idle_expires_at = row[7]
    revoked_at = row[8]
    return SessionRecord(str(row[0]), int(row[1]), cast(SessionKind, kind), float(row[3]), float(row[4]),
                         float(row[5]), float(row[6]), None if idle_expires_at is None else float(idle_expires_at),
                         None if revoked_at is None else float(revoked_at), str(row[9]), str(row[10]),
                         bool(row[11]))


_SESSION_WIDTH = len(SESSION_FIELDS)


def active_session_from_row(row: Sequence[Any]) -> ActiveSession:
    """An :class:`ActiveSession` from a lookup row: :data:`SESSION_FIELDS`, then :data:`USER_FIELDS`."""
    return ActiveSession(session_from_row(row[:_SESSION_WIDTH]), user_from_row(row[_SESSION_WIDTH:]))


def login_attempt_from_row(row: Sequence[Any]) -> LoginAttempt:
    """A :class:`LoginAttempt` from a row laid out as :data:`LOGIN_ATTEMPT_FIELDS`."""
    return LoginAttempt(
        attempt_hash=str(row[0]), upstream=str(row[1]), state=str(row[2]), nonce=str(row[3]),
        code_verifier=str(row[4]), return_to=str(row[5]), client_addr=str(row[6]),
        created_at=float(row[7]), expires_at=float(row[8]),
    )


BLOCK_FIELDS = ("upstream", "subject", "email", "created_at", "actor", "reason")
"""Column order of every block row the backends select (times as epoch seconds)."""

DEVICE_FIELDS = ("device_hash", "user_id", "created_at", "expires_at")
"""Column order of every device row the backends select (times as epoch seconds)."""


def block_from_row(row: Sequence[Any]) -> Block:
    """A :class:`Block` from a row laid out as :data:`BLOCK_FIELDS`."""
    return Block(BlockKey(str(row[0]), str(row[1]), str(row[2])), float(row[3]), str(row[4]), str(row[5]))


def device_from_row(row: Sequence[Any]) -> Device:
    """A :class:`Device` from a row laid out as :data:`DEVICE_FIELDS`."""
    return Device(str(row[0]), int(row[1]), float(row[2]), float(row[3]))


def block_audit(key: BlockKey, reason: str, sessions: int) -> tuple[str, dict[str, str]]:
    """The ``user_key`` and ``detail`` of a ``user_block`` audit row (an email block has no user key)."""
    detail = {"reason": reason, "sessions": str(sessions)}
    if key.is_email:
        return "", {**detail, "email": key.email}
    return str(key), detail


def logged_revocation_from_row(row: Sequence[Any]) -> LoggedRevocation:
    """A :class:`LoggedRevocation` from a row ``(seq, at, token_hash, user_id)``."""
    token_hash, user_id = row[2], row[3]
    return LoggedRevocation(int(row[0]), float(row[1]),
                            Revocation(token_hash=None if token_hash is None else str(token_hash),
                                       user_id=None if user_id is None else int(user_id)))


def audit_from_row(row: Sequence[Any]) -> AuditEvent:
    """An :class:`AuditEvent` from a row ``(id, at, event, user_id, user_key, actor, detail)``."""
    return AuditEvent(id=int(row[0]), at=float(row[1]), event=str(row[2]),
                      user_id=None if row[3] is None else int(row[3]), user_key=str(row[4]),
                      actor=str(row[5]), detail=decode_detail(row[6]))
