"""Rows as the backends select them, and the records built from them; JSON columns encoded and decoded."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from gateway.models import ActiveSession, AuditEvent, LoginAttempt, Revocation, SessionKind, SessionRecord, User
from gateway.store.base import Block, BlockKey, Device, LoggedRevocation
from gateway.store.checks import SESSION_KINDS

USER_FIELDS = ("id", "upstream", "subject", "email", "name", "username", "groups", "roles", "created_at",
               "updated_at", "last_login_at")
"""Column order of every user row the backends select (times as epoch seconds)."""


SESSION_FIELDS = ("token_hash", "user_id", "kind", "created_at", "expires_at", "idle_timeout",
                  "last_seen_at", "idle_expires_at", "revoked_at", "client_addr", "user_agent", "mfa", "renewed_at")
"""Column order of every session row the backends select (times as epoch seconds)."""


LOGIN_ATTEMPT_FIELDS = ("attempt_hash", "upstream", "state", "nonce", "code_verifier", "return_to",
                        "client_addr", "created_at", "expires_at")
"""Column order of every login-attempt row the backends select (times as epoch seconds)."""


BLOCK_FIELDS = ("upstream", "subject", "email", "created_at", "actor", "reason")
"""Column order of every block row the backends select (times as epoch seconds)."""


DEVICE_FIELDS = ("device_hash", "user_id", "created_at", "expires_at")
"""Column order of every device row the backends select (times as epoch seconds)."""


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
    renewed_at = row[12]
    return SessionRecord(str(row[0]), int(row[1]), cast(SessionKind, kind), float(row[3]), float(row[4]),
                         float(row[5]), float(row[6]), None if idle_expires_at is None else float(idle_expires_at),
                         None if revoked_at is None else float(revoked_at), str(row[9]), str(row[10]),
                         bool(row[11]), None if renewed_at is None else float(renewed_at))


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


def block_from_row(row: Sequence[Any]) -> Block:
    """A :class:`Block` from a row laid out as :data:`BLOCK_FIELDS`."""
    return Block(BlockKey(str(row[0]), str(row[1]), str(row[2])), float(row[3]), str(row[4]), str(row[5]))


def device_from_row(row: Sequence[Any]) -> Device:
    """A :class:`Device` from a row laid out as :data:`DEVICE_FIELDS`."""
    return Device(str(row[0]), int(row[1]), float(row[2]), float(row[3]))


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


def block_audit(key: BlockKey, reason: str, sessions: int) -> tuple[str, dict[str, str]]:
    """The ``user_key`` and ``detail`` of a ``user_block`` audit row (an email block has no user key)."""
    detail = {"reason": reason, "sessions": str(sessions)}
    if key.is_email:
        return "", {**detail, "email": key.email}
    return str(key), detail


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
