"""``POST /backchannel-logout/<upstream>``: an OIDC provider ends sessions server to server (Back-Channel Logout 1.0).

The provider POSTs ``logout_token=<JWT>`` form-encoded (section 2.5). The upstream verifies the token (its
signature by the provider's keys, ``iss``, ``aud``, ``iat``, ``exp``, ``jti``, the logout event, ``sub`` or
``sid``, no ``nonce``); the gateway then, in one database transaction, claims the token's ``jti`` (a replay
revokes nothing) and revokes the browser sessions it names: those begun in the provider session ``sid``,
or every browser session of the user ``sub``, or (both given) those matching both. API tokens are not
revoked: they were not issued by the provider's sign-in. The revocations go through the revocation log, so
every replica evicts them within about a second; this replica evicts them at once.

Answers (section 2.8): 200 with ``Cache-Control: no-store``, also when no session matched; 400
``invalid_request`` for a malformed request, a token that fails verification or a replayed one (the
reason given is generic: the details are logged, not handed to whoever forged the token); 404 for an
unknown upstream or one that cannot send back-channel logouts (GitHub, vouch); 413 for a body over
:data:`MAX_BODY_BYTES`; 503 with ``Retry-After`` when the provider's keys or the database cannot be
reached, so the provider tries again. It is a server-to-server endpoint: no cookie is read, and the
sign-out page's same-origin and CSRF checks do not apply (the signed token is the credential).

Each call logs one line (never the token) and counts ``gateway_backchannel_logouts_total{upstream,outcome}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeGuard
from urllib.parse import parse_qsl

import structlog
from aiohttp import web

from gateway.cache import SessionCache
from gateway.errors import BadRequest, GatewayError, NotFound, PayloadTooLarge, StoreUnavailable
from gateway.login import LoginService
from gateway.metrics import Metrics
from gateway.sessions import logout_token_key, provider_session_key
from gateway.store.base import LogoutTokenReused, ProviderLogout, ProviderLogouts
from upstreams.base import BackChannelLogout, FailureReason, LogoutNotice, ProviderError

log = structlog.get_logger("gateway.backchannel")

MAX_BODY_BYTES = 32 * 1024
"""Largest request body accepted; a logout token is a few hundred bytes to a few kilobytes."""

RETRY_AFTER = "5"
"""Seconds a provider is asked to wait before sending a logout again after a 503."""

REVOKE_REASON = "backchannel_logout"
"""The ``reason`` of the audit rows a back-channel logout writes."""

_FORM = "application/x-www-form-urlencoded"
_MAX_FIELDS = 16


class InvalidLogoutRequest(BadRequest):
    """The logout request is not valid."""

    code = "invalid_request"


class LogoutUnavailable(GatewayError):
    """The logout cannot be processed right now. Please try again shortly."""

    status = 503
    code = "temporarily_unavailable"
    title = "Temporarily unavailable"


def sends_logouts(provider: object) -> TypeGuard[BackChannelLogout]:
    """True when ``provider`` can verify back-channel logout tokens (OIDC upstreams and their presets)."""
    return callable(getattr(provider, "verify_logout_token", None))


class BackChannelLogoutEndpoint:
    """The endpoint: parse the request, verify the token by its upstream, end the sessions, answer."""

    def __init__(self, login: LoginService, store: ProviderLogouts, cache: SessionCache, metrics: Metrics,
                 clock: Callable[[], float]) -> None:
        """``login`` holds the configured upstreams (filled at start-up); ``cache`` is this replica's
        session cache, evicted at once (other replicas learn through the revocation feed)."""
        self._login = login
        self._store = store
        self._cache = cache
        self._metrics = metrics
        self._clock = clock

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one back-channel logout; failures are raised as GatewayErrors (rendered by the guard).

        Every answer carries ``Cache-Control: no-store`` (section 2.8). A failure's one log line is the
        guard's ``request refused``, carrying ``upstream``, ``outcome`` and the detailed ``cause`` bound
        here; a success logs ``back-channel logout``.
        """
        try:
            return await self._answer(request)
        except GatewayError as exc:
            exc.headers.setdefault("Cache-Control", "no-store")
            raise

    async def _answer(self, request: web.Request) -> web.Response:
        """:meth:`handle` without the header every answer carries."""
        name = request.match_info["upstream"]
        provider = self._login.providers.get(name)
        if provider is None or not sends_logouts(provider):
            self._refuse("", "not_found", f"no back-channel logout for upstream {name[:64]!r}")
            raise NotFound("There is no back-channel logout endpoint for this upstream.")
        token = await self._logout_token(request, name)
        try:
            notice = await provider.verify_logout_token(token)
        except ProviderError as exc:
            if exc.reason is FailureReason.UNAVAILABLE:
                self._refuse(name, "unavailable", exc.message)
                raise LogoutUnavailable(headers={"Retry-After": RETRY_AFTER}) from None
            self._refuse(name, "invalid", exc.message)
            raise InvalidLogoutRequest("The logout token could not be verified.") from None
        revoked = await self._end_sessions(name, notice)
        for token_hash in revoked:
            self._cache.evict(token_hash)
        outcome = "revoked" if revoked else "no_session"
        self._metrics.backchannel_logouts.labels(name, outcome).inc()
        names = "+".join(claim for claim, value in (("sid", notice.session_id), ("sub", notice.subject)) if value)
        log.info("back-channel logout", upstream=name, outcome=outcome, revoked=len(revoked), names=names)
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    async def _logout_token(self, request: web.Request, name: str) -> str:
        """The one ``logout_token`` of a form-encoded body of at most :data:`MAX_BODY_BYTES`."""
        if request.content_type != _FORM:
            self._refuse(name, "bad_request", f"content type {request.content_type[:64]!r}")
            raise InvalidLogoutRequest(f"The body must be {_FORM} with a logout_token.")
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            self._refuse(name, "too_large", f"body of {length} bytes")
            raise PayloadTooLarge(f"The body must not exceed {MAX_BODY_BYTES} bytes.")
        body = await request.read()
        try:
            fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=_MAX_FIELDS)
        except ValueError:  # not UTF-8 (UnicodeDecodeError is a ValueError), or too many fields
            self._refuse(name, "bad_request", "body is not a small UTF-8 form")
            raise InvalidLogoutRequest("The body is not a valid form.") from None
        tokens = [value for key, value in fields if key == "logout_token"]
        if len(tokens) != 1 or not tokens[0]:
            self._refuse(name, "bad_request", f"{len(tokens)} logout_token fields")
            raise InvalidLogoutRequest("The body must carry exactly one logout_token.")
        return tokens[0]

    async def _end_sessions(self, name: str, notice: LogoutNotice) -> list[str]:
        """Claim the token's ``jti`` and revoke the sessions it names (one transaction); the hashes revoked."""
        now = self._clock()
        logout = ProviderLogout(
            upstream=name, subject=notice.subject,
            provider_session=provider_session_key(name, notice.session_id) if notice.session_id else "",
            token_id=logout_token_key(name, notice.token_id), token_expires_at=notice.expires_at)
        try:
            return await self._store.revoke_provider_sessions(logout, actor=f"upstream:{name}",
                                                              reason=REVOKE_REASON, now=now)
        except LogoutTokenReused:
            self._refuse(name, "replayed", "the logout token's jti was used before")
            raise InvalidLogoutRequest("This logout token was already used.") from None
        except StoreUnavailable as exc:
            self._refuse(name, "unavailable", exc.message)
            raise LogoutUnavailable(headers={"Retry-After": RETRY_AFTER}) from None
        except ValueError as exc:  # a sub no user can have (over 1024 characters, or a NUL): refused
            self._refuse(name, "invalid", str(exc))
            raise InvalidLogoutRequest("The logout token could not be verified.") from None

    def _refuse(self, name: str, outcome: str, detail: str) -> None:
        """Count a refused call and bind what the guard's one log line about it should say.

        ``name`` is empty for an upstream that is not configured, so a stranger cannot mint label values.
        """
        self._metrics.backchannel_logouts.labels(name, outcome).inc()
        structlog.contextvars.bind_contextvars(upstream=name, outcome=outcome, cause=detail[:300])
