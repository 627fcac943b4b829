"""``/login``, ``/callback/<name>``, ``/logout``, ``/auth/userinfo``, ``/`` and the dev sign-in form.

Thin adapters over :class:`gateway.login.LoginService`: parse, call, render. Every page carries
``Referrer-Policy: no-referrer``; errors are raised as GatewayErrors and rendered by ``ErrorMapper.guard``
(HTML for browsers, JSON for API clients).
"""

from __future__ import annotations

import json

import structlog
from aiohttp import hdrs, web

from gateway import pages
from gateway.cookies import clear_attempt_cookie, clear_session_cookie, set_attempt_cookie, set_session_cookie
from gateway.core import Checker, Outcome
from gateway.credentials import Credential, find_credential
from gateway.errors import NotFound, TooManyRequests, Unauthenticated
from gateway.facts import TrustedProxies, client_address
from gateway.hasura import effective_roles
from gateway.http_errors import wants_json
from gateway.login import LoginService
from gateway.models import ActiveSession
from gateway.ratelimit import RateLimiter
from gateway.settings import Settings

log = structlog.get_logger("gateway.login")

_SIGNED_IN = (Outcome.ALLOW, Outcome.FORBIDDEN)
"""A session the policy refuses somewhere is still a signed-in session."""


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, **pages.PAGE_HEADERS})


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=pages.PAGE_HEADERS)


class LoginHandlers:
    """The browser-facing endpoints of the login dance."""

    def __init__(self, service: LoginService, checker: Checker, settings: Settings, proxies: TrustedProxies,
                 limiter: RateLimiter) -> None:
        self._service = service
        self._checker = checker
        self._settings = settings
        self._proxies = proxies
        self._limiter = limiter

    def _client(self, request: web.Request) -> str:
        return client_address(request.headers, request.remote or "", self._proxies)[:64]

    async def _guard(self, request: web.Request) -> str:
        """Rate limit and lockout for /login and /callback; returns the client address."""
        client = self._client(request)
        wait = self._limiter.take(client)
        if wait > 0:
            log.warning("login rate limited", client=client, path=request.path)
            raise TooManyRequests(headers={"Retry-After": str(int(wait) + 1)})
        await self._service.check_lockout(client)
        return client

    async def _current(self, request: web.Request) -> tuple[Credential | None, ActiveSession | None]:
        """The browser's session cookie credential, and its session when valid now."""
        credential = find_credential(request.headers.getall(hdrs.COOKIE, ()), (), self._settings.cookie.name)
        if not isinstance(credential, Credential):
            return None, None
        decision = await self._checker.decide(credential, None)
        return credential, decision.active if decision.outcome in _SIGNED_IN else None

    async def login(self, request: web.Request) -> web.Response:
        """``GET /login?rd=<target>[&upstream=<name>]``."""
        client = await self._guard(request)
        target = self._service.safe_target(request.query.get("rd"))
        _, active = await self._current(request)
        if active is not None:
            return _redirect(target)
        name = request.query.get("upstream")
        if name is None and len(self._service.providers) > 1:
            return _html(pages.sign_in_page(self._service.choices(), target))
        if not self._service.providers:
            raise NotFound("No sign-in provider is configured.")
        started = await self._service.start(name, target, client)
        response = _redirect(started.location)
        set_attempt_cookie(response, self._settings.cookie, started.cookie_name, started.cookie_value,
                           self._settings.login.attempt_ttl)
        return response

    async def dev_form(self, request: web.Request) -> web.Response:
        """``GET /login/dev/<name>?state=...``: the development sign-in form."""
        name = request.match_info["name"]
        provider = self._service.providers.get(name)
        if provider is None or provider.type_name != "dev":
            raise NotFound("There is no such sign-in provider.")
        state = request.query.get("state", "")[:128]
        return _html(pages.dev_form_page(f"/callback/{name}", state, provider.display_name))

    async def callback(self, request: web.Request) -> web.Response:
        """``GET /callback/<name>`` (or ``/callback`` with exactly one upstream)."""
        client = await self._guard(request)
        name = request.match_info.get("name")
        if name is None:
            name, _ = self._service.provider(None)
        previous, _ = await self._current(request)
        finished = await self._service.finish(
            name, dict(request.query), dict(request.cookies), client=client,
            user_agent=request.headers.get(hdrs.USER_AGENT, ""),
            previous_token=previous.token if previous else None)
        response = _redirect(finished.return_to)
        set_session_cookie(response, self._settings.cookie, finished.token, self._settings.session.lifetime)
        clear_attempt_cookie(response, self._settings.cookie, finished.attempt_cookie)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """``GET|POST /logout?rd=<target>``: revoke everywhere, clear the cookie, maybe end the upstream session."""
        target = self._service.safe_target(request.query.get("rd"))
        credential, _ = await self._current(request)
        location = await self._service.logout(credential.token if credential else None, target,
                                              self._client(request))
        if wants_json(request) and request.method == hdrs.METH_POST:
            response: web.Response = web.json_response({"status": "signed_out", "location": location})
        else:
            response = _redirect(location)
        clear_session_cookie(response, self._settings.cookie)
        return response

    async def userinfo(self, request: web.Request) -> web.Response:
        """``GET /auth/userinfo``: the current identity as JSON; 401 without a session."""
        credential = find_credential(request.headers.getall(hdrs.COOKIE, ()),
                                     request.headers.getall(hdrs.AUTHORIZATION, ()), self._settings.cookie.name,
                                     accept_jwt=bool(self._settings.check.jwt_upstreams))
        decision = await self._checker.decide(credential, None)
        if decision.active is None or decision.outcome not in _SIGNED_IN:
            raise Unauthenticated("Sign in to see who you are.", link=("/login", "Sign in"))
        user, session = decision.active.user, decision.active.session
        body = {"user_id": str(user.id), "email": user.email, "name": user.name, "username": user.username,
                "upstream": user.upstream, "subject": user.subject,
                "roles": list(effective_roles(user, self._settings.hasura.default_role)),
                "groups": list(user.groups),
                "session": {"kind": session.kind, "expires_at": int(session.expires_at),
                            "idle_expires_at": int(session.idle_expires_at) if session.idle_expires_at else None,
                            "mfa": session.mfa}}
        return web.Response(text=json.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def home(self, request: web.Request) -> web.Response:
        """``GET /``: who is signed in, with a sign-out button; or straight to sign-in."""
        _, active = await self._current(request)
        if active is None:
            return _redirect("/login")
        user = active.user
        return _html(pages.home_page(user.email, user.name, effective_roles(user, self._settings.hasura.default_role)))
