"""Session lifecycle: start a session for a user (mint a token, store only its hash) with the right limits."""

from __future__ import annotations

import hashlib

from gateway import tokens
from gateway.models import SessionKind, SessionRecord
from gateway.sealing import sealing_problems
from gateway.settings import SessionSettings
from gateway.store.base import Sessions


async def start_session(store: Sessions, settings: SessionSettings, *, user_id: int, kind: SessionKind,
                        now: float, lifetime: float | None = None, client_addr: str = "",
                        user_agent: str = "", mfa: bool = False,
                        provider_session: str = "") -> tuple[str, SessionRecord]:
    """Create a session and return ``(token, record)``; the token exists only in this return value.

    Browser sessions get ``session.lifetime`` and the idle timeout; API tokens get ``lifetime`` (default
    ``session.api_token_lifetime``) and no idle timeout. ``mfa`` records that the login used a second factor;
    ``provider_session`` (:func:`provider_session_key`, or empty) the provider session the login began in.
    """
    idle_timeout: float
    if kind == "browser":
        ttl: float = settings.lifetime if lifetime is None else lifetime
        idle_timeout = settings.idle_timeout
    else:
        ttl = settings.api_token_lifetime if lifetime is None else lifetime
        idle_timeout = 0.0
    token = tokens.mint_token()
    record = await store.create_session(token_hash=tokens.hash_token(token), user_id=user_id, kind=kind,
                                        now=now, expires_at=now + ttl, idle_timeout=idle_timeout,
                                        client_addr=client_addr, user_agent=user_agent[:512], mfa=mfa,
                                        provider_session=provider_session)
    return token, record


def provider_session_key(upstream: str, session_id: str) -> str:
    """How a provider session (an ID token's or a logout token's ``sid``) at ``upstream`` is stored and
    looked up: SHA-256 hex of ``upstream``, NUL, ``session_id``. The sid itself is never stored, and the
    same sid at two upstreams gives two keys."""
    return _scoped_hash(upstream, session_id)


def logout_token_key(upstream: str, token_id: str) -> str:
    """How a logout token's ``jti`` from ``upstream`` is remembered as used: SHA-256 hex of ``upstream``, NUL,
    ``jti`` (two upstreams may pick the same ids)."""
    return _scoped_hash(upstream, token_id)


def _scoped_hash(upstream: str, value: str) -> str:
    # surrogatepass: a JSON claim may hold a lone surrogate, which must hash, not fail
    return hashlib.sha256(f"{upstream}\0{value}".encode("utf-8", "surrogatepass")).hexdigest()


def session_problems(session: SessionSettings) -> list[str]:
    """Problems with ``[session]``: positive lifetimes, an idle timeout longer than the grain at which
    last use is recorded (else a session in use would look idle), and sealing keys that are keys."""
    problems: list[str] = []
    if session.lifetime <= 0:
        problems.append("session.lifetime: must be positive")
    if session.api_token_lifetime <= 0:
        problems.append("session.api_token_lifetime: must be positive")
    if session.last_seen_grain <= 0:
        problems.append("session.last_seen_grain: must be positive")
    if 0 < session.idle_timeout <= session.last_seen_grain:
        problems.append("session.idle_timeout: must be longer than session.last_seen_grain (or 0 for none)")
    problems.extend(sealing_problems(session.sealing_key, session.sealing_key_previous))
    if session.refresh:
        if not session.sealing_key:
            problems.append("session.refresh: needs session.sealing_key (the refresh token is kept encrypted)")
        if not 0 < session.refresh_interval < session.lifetime:
            problems.append("session.refresh_interval: must be positive and shorter than session.lifetime")
    return problems
