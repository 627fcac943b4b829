"""``/login``, ``/callback/<name>``, ``/logout``, ``/auth/userinfo``, ``/`` and the dev sign-in form.

Thin adapters over :class:`gateway.login.LoginService`: parse, call, render. Every page carries
``Referrer-Policy: no-referrer``; errors are raised as GatewayErrors and rendered by ``ErrorMapper.guard``
(HTML for browsers, JSON for API clients).

Signing out. ``GET /logout`` never signs anyone out: a link, an ``<img src=".../logout">`` or a
prefetch from any site can make a browser send a GET with its cookie. It shows a page that asks, whose
button POSTs to ``/logout``. A POST signs out only when it comes from one of our own pages:

- Same origin. ``Sec-Fetch-Site``, when sent, must be ``same-origin``, and ``Origin``, when sent, must be
  one of ours: an origin a sign-in may return to (``public_url``'s, and ``login.redirect_hosts``' over
  https, or over http too when ``public_url`` is http), because a proxy may serve ``/logout`` on the
  protected app's own host (``deploy/nginx/protect-app.conf``). ``Origin: null`` counts as no evidence
  either way: a browser sends exactly that for a same-origin form post from a page with
  ``Referrer-Policy: no-referrer``, which ours are.
- A session-bound token. A cookie-authenticated POST must carry ``csrf_token`` =
  HMAC-SHA256(key = the session token, message = "gateway sign-out v1"), hex. Only the holder of the
  session token, or a page that can read one of ours, can know it: the cookie is HttpOnly, our pages are
  no-store and unreadable from other origins (no CORS), and a database dump (token hashes only) does not
  give it. It needs no server-side state and no secret shared across replicas, changes with every
  sign-in, and reveals nothing about the token it is derived from. ``GET /logout`` hands it to JSON
  clients too.
- ``Authorization: Bearer`` is not something a browser attaches by itself, so a bearer POST (an API
  client revoking its own token) needs no token, and leaves any cookie alone.

Signing out everywhere. The form's second button sends ``scope=everywhere``: every session of the user,
browser sessions and API tokens on every device, is revoked (same checks as above; JSON clients post the
field too). Only a browser session active now may ask. A bearer token may not (403): like GitHub, whose
tokens cannot end their owner's web sessions, a leaked token must not become a way to sign its owner out
everywhere (over and over); the owner, or an admin with ``gateway sessions revoke``, ends the token instead.

A refused POST is a 403 with a log line and revokes nothing. A POST without a session just sends the
browser on (or answers JSON), like a GET without one shows "you are signed out".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlencode

import structlog
from aiohttp import hdrs, web

from gateway import pages
from gateway.access import effective_roles
from gateway.cookies import (
    clear_attempt_cookie,
    clear_session_cookie,
    set_attempt_cookie,
    set_device_cookie,
    set_session_cookie,
)
from gateway.core import Checker, Decision, Outcome
from gateway.credentials import Credential, CredentialSource, find_credential
from gateway.csrf import cross_site_problem, session_bound_token, token_problem
from gateway.errors import BadRequest, Forbidden, NotFound, TooManyRequests, Unauthenticated
from gateway.facts import TrustedProxies, client_address
from gateway.handlers.forms import posted_fields
from gateway.http_errors import wants_json
from gateway.login import DEVICE_LIFETIME, LoginService
from gateway.models import ActiveSession
from gateway.ratelimit import RateLimiter
from gateway.settings import CookieSettings
from gateway.signout import SignOut

log = structlog.get_logger("gateway.login")

_SIGNED_IN = (Outcome.ALLOW, Outcome.FORBIDDEN)
"""A session the policy refuses somewhere is still a signed-in session."""


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location, **pages.PAGE_HEADERS})


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=pages.PAGE_HEADERS)


class LoginHandlers:
    """The browser-facing endpoints of the login dance."""

    def __init__(self, service: LoginService, sign_out: SignOut, checker: Checker, proxies: TrustedProxies,
                 limiter: RateLimiter, *, cookie: CookieSettings, attempt_ttl: float, session_lifetime: float,
                 accept_jwt: bool, default_role: str) -> None:
        """``cookie``: the session cookie's attributes; ``attempt_ttl`` and ``session_lifetime``: how long
        the attempt and session cookies live; ``accept_jwt``: whether a bearer JWT may stand for a session
        (``check.jwt_upstreams``); ``default_role``: the role of a user who holds none."""
        self._service = service
        self._sign_out = sign_out
        self._checker = checker
        self._cookie = cookie
        self._attempt_ttl = attempt_ttl
        self._session_lifetime = session_lifetime
        self._accept_jwt = accept_jwt
        self._default_role = default_role
        self._proxies = proxies
        self._limiter = limiter

    def _client(self, request: web.Request) -> str:
        return client_address(request.headers, request.remote or "", self._proxies)[:64]

    async def _guard(self, request: web.Request) -> str:
        """Rate limit and lockout for /login and /callback; returns the client address.

        The lockout is the address's, or, for a browser with a live device cookie, its device's own.
        """
        client = self._client(request)
        wait = self._limiter.take(client)
        if wait > 0:
            log.warning("login rate limited", client=client, path=request.path)
            raise TooManyRequests(headers={"Retry-After": str(int(wait) + 1)})
        await self._service.check_lockout(client, request.cookies.get(self._service.device_cookie_name))
        return client

    async def _current(self, request: web.Request) -> tuple[Credential | None, ActiveSession | None]:
        """The browser's session cookie credential, and its session when valid now."""
        credential = find_credential(request.headers.getall(hdrs.COOKIE, ()), (), self._cookie.name)
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
        set_attempt_cookie(response, self._cookie, started.cookie_name, started.cookie_value,
                           self._attempt_ttl)
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
        set_session_cookie(response, self._cookie, finished.token, self._session_lifetime)
        clear_attempt_cookie(response, self._cookie, finished.attempt_cookie)
        set_device_cookie(response, self._cookie, self._service.device_cookie_name, finished.device_id,
                          DEVICE_LIFETIME)
        return response

    async def confirm_logout(self, request: web.Request) -> web.Response:
        """``GET /logout?rd=<target>``: ask before signing out; never revokes anything (see the module docstring).

        With a session cookie: the confirmation page, whose button POSTs the token and the validated
        target (JSON clients get ``{"status": "signed_in", "csrf_token": ...}``). Without one: the "you are
        signed out" page (JSON: ``{"status": "signed_out"}``). Sets no cookie.
        """
        target = self._service.safe_target(request.query.get("rd"))
        credential, decision = await self._cookie_session(request)
        # A session that could not be checked just now (database down) may well be alive: offer to end it.
        if credential is None or decision.outcome not in (*_SIGNED_IN, Outcome.UNAVAILABLE):
            if wants_json(request):
                return web.json_response({"status": "signed_out", "location": target}, headers=_NO_STORE)
            return _html(pages.signed_out_page(target))
        csrf_token = sign_out_token(credential.token)
        if wants_json(request):
            return web.json_response({"status": "signed_in", "csrf_token": csrf_token, "location": target},
                                     headers=_NO_STORE)
        user = decision.active.user if decision.active else None
        return self._sign_out_html(pages.sign_out_page(request.host[:255], user.email if user else "",
                                                       user.name if user else "", csrf_token, target))

    async def logout(self, request: web.Request) -> web.Response:
        """``POST /logout[?rd=<target>]``: revoke everywhere, clear the cookie, maybe end the upstream session.

        Refused (403, nothing revoked) unless same-origin and, for a cookie, carrying the session's token
        (see the module docstring). Answers JSON (``{"status": "signed_out", "location": ...}``) to API
        clients, else 303 to the validated ``rd`` (a form field, or the query), perhaps by way of the
        upstream's end-session page. Without a session it only does that. With the form field
        ``scope=everywhere`` every session of the user ends too (JSON adds ``"scope": "everywhere"``); that
        needs a browser session active now (401 otherwise) and is refused to a bearer token (403).
        """
        fields = await self._sign_out_fields(request)
        target = self._service.safe_target(fields.get("rd") or request.query.get("rd"))
        found = find_credential(request.headers.getall(hdrs.COOKIE, ()),
                                request.headers.getall(hdrs.AUTHORIZATION, ()), self._cookie.name)
        credential = found if isinstance(found, Credential) else None
        bearer = credential is not None and credential.source is CredentialSource.BEARER
        everywhere = _everywhere(fields.get(_SCOPE_FIELD, ""))
        refusal = self._cross_site(request)
        if refusal is None and credential is not None and not bearer:
            refusal = _token_problem(credential.token, fields.get(pages.SIGN_OUT_FIELD, ""))
        if refusal is not None:
            self._refuse_logout(request, refusal, target)
        if everywhere and bearer:
            # A leaked API token must not be able to end its owner's browser sessions (see the docstring).
            log.warning("logout refused", reason="scope=everywhere with a bearer token",
                        client=self._client(request), user_agent=request.headers.get(hdrs.USER_AGENT, "")[:200])
            raise Forbidden("An API token can sign out only itself. To sign out everywhere, use the Sign out "
                            "everywhere button of the sign-out page in your browser.")
        sign_out = self._sign_out.logout_everywhere if everywhere else self._sign_out.logout
        location = await sign_out(credential.token if credential else None, target, self._client(request))
        if wants_json(request):
            answer = {"status": "signed_out", **({"scope": "everywhere"} if everywhere else {}), "location": location}
            response = web.json_response(answer, headers=_NO_STORE)
        else:
            response = web.Response(status=303, headers={"Location": location, **pages.PAGE_HEADERS})
        if not bearer:
            clear_session_cookie(response, self._cookie)
        return response

    async def _cookie_session(self, request: web.Request) -> tuple[Credential | None, Decision]:
        """The browser's session cookie credential (None without one) and what the checker says of it now."""
        found = find_credential(request.headers.getall(hdrs.COOKIE, ()), (), self._cookie.name)
        if not isinstance(found, Credential):
            return None, Decision(Outcome.MISSING)
        return found, await self._checker.decide(found, None)

    async def _sign_out_fields(self, request: web.Request) -> Mapping[str, str]:
        """``rd`` and the token from a POSTed form (urlencoded or multipart); nothing from other bodies."""
        return await posted_fields(request, ("rd", pages.SIGN_OUT_FIELD, _SCOPE_FIELD), max_bytes=_MAX_SIGN_OUT_BODY,
                                   too_large="A sign-out form is a few hundred bytes; this request is far larger.")

    def _cross_site(self, request: web.Request) -> str | None:
        """Why this request cannot come from one of our own pages (fetch metadata, ``Origin``), or None."""
        return cross_site_problem(request.headers.getall("Sec-Fetch-Site", ()), request.headers.getall(hdrs.ORIGIN, ()),
                                  self._service.redirects)

    def _refuse_logout(self, request: web.Request, reason: str, target: str) -> None:
        """Log a refused sign-out and raise the 403 that tells the person how to sign out for real."""
        log.warning("logout refused", reason=reason, client=self._client(request),
                    user_agent=request.headers.get(hdrs.USER_AGENT, "")[:200])
        raise Forbidden("This sign-out request did not come from this site's own sign-out page (or that page "
                        "is out of date), so nothing was changed. Use the button to sign out.",
                        link=(f"/logout?{urlencode({'rd': target})}", "Sign out"))

    def _sign_out_html(self, text: str) -> web.Response:
        """A page holding the sign-out form (its CSP lets the sign-out's redirects through)."""
        return web.Response(text=text, content_type="text/html",
                            headers=pages.sign_out_page_headers(allow_http=self._service.redirects.allow_http))

    async def userinfo(self, request: web.Request) -> web.Response:
        """``GET /auth/userinfo``: the current identity as JSON; 401 without a session."""
        credential = find_credential(request.headers.getall(hdrs.COOKIE, ()),
                                     request.headers.getall(hdrs.AUTHORIZATION, ()), self._cookie.name,
                                     accept_jwt=self._accept_jwt)
        decision = await self._checker.decide(credential, None)
        if decision.active is None or decision.outcome not in _SIGNED_IN:
            raise Unauthenticated("Sign in to see who you are.", link=("/login", "Sign in"))
        user, session = decision.active.user, decision.active.session
        body = {"user_id": str(user.id), "email": user.email, "name": user.name, "username": user.username,
                "upstream": user.upstream, "subject": user.subject,
                "roles": list(effective_roles(user, self._default_role)),
                "groups": list(user.groups),
                "session": {"kind": session.kind, "expires_at": int(session.expires_at),
                            "idle_expires_at": int(session.idle_expires_at) if session.idle_expires_at else None,
                            "mfa": session.mfa}}
        return web.Response(text=json.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def home(self, request: web.Request) -> web.Response:
        """``GET /``: who is signed in, with a sign-out button; or straight to sign-in."""
        credential, active = await self._current(request)
        if credential is None or active is None:
            return _redirect("/login")
        user = active.user
        return self._sign_out_html(pages.home_page(user.email, user.name,
                                                   effective_roles(user, self._default_role),
                                                   sign_out_token(credential.token)))


# ---- signing out (see the module docstring) ---------------------------------------------------------------

_SIGN_OUT_CONTEXT = b"gateway sign-out v1"
"""What the sign-out token MACs: names its one purpose, so the value means nothing anywhere else."""

_MAX_SIGN_OUT_BODY = 4096

_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

_SCOPE_FIELD = "scope"
"""The sign-out form's field saying what to end: ``everywhere`` (every session of the user), else this one."""


def _everywhere(scope: str) -> bool:
    """True for ``scope=everywhere``; False for none or ``session``; BadRequest for anything else (a typo must
    not quietly end less than was asked)."""
    if scope in ("", "session"):
        return False
    if scope == "everywhere":
        return True
    raise BadRequest("scope is 'everywhere' (every session of yours) or 'session' (this one, the default).")


def sign_out_token(session_token: str) -> str:
    """The token the sign-out form carries for the session whose (cookie) token is ``session_token``."""
    return session_bound_token(session_token, _SIGN_OUT_CONTEXT)


def _token_problem(session_token: str, sent: str) -> str | None:
    """Why ``sent`` is not the sign-out token of ``session_token``'s session, or None when it is."""
    return token_problem(session_token, sent, _SIGN_OUT_CONTEXT)
