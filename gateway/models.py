"""Plain records shared by the store, the cache and the check core; times are Unix epoch seconds.

Every record is immutable. The three a session lookup builds (``User``, ``SessionRecord``,
``ActiveSession``) are named tuples rather than frozen dataclasses: one lookup builds all three for
every cache miss, and a frozen dataclass sets each field through ``object.__setattr__``, which made
building them cost about 5 µs a miss against under 1 µs for a tuple. Treat them as records, not as
sequences: read fields by name, never by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

SessionKind = Literal["browser", "api"]


class User(NamedTuple):
    """An enrolled user; ``(upstream, subject)`` is the stable key, ``id`` the gateway's own number."""

    id: int
    upstream: str
    subject: str
    email: str
    name: str
    username: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    created_at: float
    updated_at: float
    last_login_at: float | None


class SessionRecord(NamedTuple):
    """One session row. ``token_hash`` is SHA-256 hex of the token; the token itself is never stored.

    ``idle_timeout`` is 0 for sessions without one (API tokens); then ``idle_expires_at`` is None.
    ``mfa`` is True when the login that created the session used a second factor. ``renewed_at`` is when
    the upstream last vouched for the session again with a refresh (``session.refresh``), which moved
    ``expires_at``; None for a session never renewed.
    """

    token_hash: str
    user_id: int
    kind: SessionKind
    created_at: float
    expires_at: float
    idle_timeout: float
    last_seen_at: float
    idle_expires_at: float | None
    revoked_at: float | None
    client_addr: str
    user_agent: str
    mfa: bool = False
    renewed_at: float | None = None

    def is_active(self, now: float) -> bool:
        """True when not revoked, not past its absolute expiry and not past its idle deadline."""
        if self.revoked_at is not None or now >= self.expires_at:
            return False
        return self.idle_expires_at is None or now < self.idle_expires_at


class ActiveSession(NamedTuple):
    """What a session lookup returns: the session row joined with its user."""

    session: SessionRecord
    user: User


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """A login in progress, kept server-side between the redirect to the upstream and its callback.

    ``attempt_hash`` is SHA-256 hex of the browser-binding cookie value (the cookie itself is never
    stored); ``state``, ``nonce`` and ``code_verifier`` are the OIDC/PKCE values sent with the redirect;
    ``return_to`` is where the browser goes after the login. Single use: consuming it deletes it.
    """

    attempt_hash: str
    upstream: str
    state: str
    nonce: str
    code_verifier: str
    return_to: str
    client_addr: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Revocation:
    """A revocation broadcast to every gateway process: one session (``token_hash``), every session of one
    user (``user_id``), or, with neither set, every session of everyone (:attr:`everything`).

    What a receiver does is forget cached sessions, nothing more: the database already holds the truth. So
    a ``user_id`` revocation also serves to make every process re-read a user whose roles changed.
    """

    token_hash: str | None = None
    user_id: int | None = None

    @property
    def everything(self) -> bool:
        """True for the revocation of every session of everyone (``gateway sessions revoke-all``)."""
        return self.token_hash is None and self.user_id is None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of the append-only audit log. ``user_key`` is ``upstream:subject`` and outlives the user."""

    id: int
    at: float
    event: str
    user_id: int | None
    user_key: str
    actor: str
    detail: dict[str, str] = field(default_factory=dict)
