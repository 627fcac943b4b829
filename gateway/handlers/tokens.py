"""``/tokens`` (HTML) and ``/auth/tokens`` (JSON): people mint, list and revoke their own API tokens.

Thin adapters over :class:`gateway.apitokens.ApiTokenService`. Who may do what:

- Listing needs any valid session of the user (an API client may read its own token's expiry).
- Minting and revoking need a **browser session**, sent as the session cookie. A bearer credential (an
  API token, or an upstream's JWT) is refused with 403: a leaked token must not be able to mint more
  tokens, or to revoke the ones its owner uses.
- Every minting or revoking request passes the sign-out page's CSRF checks (:mod:`gateway.csrf`): it
  comes from one of our own origins (``Sec-Fetch-Site``, ``Origin``), and it carries the session-bound
  token for this purpose, in the form field ``csrf_token`` (our page's forms) or the ``X-CSRF-Token``
  header (JSON clients get it from ``GET /auth/tokens``). A refusal is a 403 with one log line.

JSON contracts: ``GET /auth/tokens`` answers ``{"tokens": [...], "csrf_token": ... (browser sessions
only), "max_lifetime": s, "default_lifetime": s, "limit": n}``; ``POST /auth/tokens`` with
``{"name": ..., "expires_in": seconds}`` answers 201 ``{"token", "id", "name", "created_at",
"expires_at"}`` (the token's only appearance); ``DELETE /auth/tokens/{id}`` answers 200 with the revoked
token's listing. Bad input is a 400 ``invalid_request``; the limit a 409 ``too_many_tokens``; an id the
user holds no unrevoked token for (another user's included) a 404. Times are Unix seconds. Every answer
is ``Cache-Control: no-store``. The token is never logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import hdrs, web

from gateway import pages
from gateway.admin import iso_time
from gateway.apitokens import ApiTokenService, InvalidTokenRequest, last_used, token_state
from gateway.core import Checker
from gateway.credentials import Credential
from gateway.csrf import session_bound_token
from gateway.errors import Forbidden, Unauthenticated
from gateway.facts import TrustedProxies
from gateway.handlers.forms import posted_fields, refuse_longer
from gateway.handlers.selfservice import Requesters
from gateway.metrics import Metrics
from gateway.models import ActiveSession, User
from gateway.redirects import RedirectPolicy
from gateway.store.tokensrole import ApiToken

log = structlog.get_logger("gateway.tokens")

CSRF_HEADER = "X-CSRF-Token"
"""The header a JSON client sends the CSRF token in (the form field is :data:`gateway.pages.SIGN_OUT_FIELD`)."""

_PURPOSE = b"gateway api tokens v1"
"""What this CSRF token MACs: its own purpose, so the sign-out token is no use here, nor this one there."""

_MAX_BODY = 4096
_TOO_LARGE = "A token request is a few hundred bytes; this one is far larger."
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers=_NO_STORE)


def _listing(api_token: ApiToken, now: float) -> dict[str, Any]:
    """A token as the JSON list shows it: never the token, never its full hash."""
    session, used = api_token.session, last_used(api_token)
    return {"id": api_token.token_id, "name": api_token.name, "created_at": int(session.created_at),
            "expires_at": int(session.expires_at), "last_used_at": None if used is None else int(used),
            "state": token_state(api_token, now)}


class ApiTokenHandlers:
    """The page and the JSON endpoints."""

    def __init__(self, service: ApiTokenService, checker: Checker, proxies: TrustedProxies, redirects: RedirectPolicy,
                 metrics: Metrics, *, cookie_name: str, clock: Callable[[], float]) -> None:
        """``redirects`` says which origins are ours (those a sign-in may return to)."""
        self._service = service
        self._who = Requesters(checker, proxies, redirects, cookie_name=cookie_name)
        self._metrics = metrics
        self._clock = clock

    # ---- JSON ---------------------------------------------------------------------------------------------

    async def list_json(self, request: web.Request) -> web.Response:
        """``GET /auth/tokens``."""
        credential, active = await self._signed_in(request)
        now = self._clock()
        body: dict[str, Any] = {"tokens": [_listing(t, now) for t in await self._service.list(active.user)],
                                "max_lifetime": int(self._service.max_lifetime),
                                "default_lifetime": int(self._service.default_lifetime),
                                "limit": self._service.per_user}
        if self._who.is_browser(credential, active):
            body["csrf_token"] = session_bound_token(credential.token, _PURPOSE)
        return _json(body)

    async def mint_json(self, request: web.Request) -> web.Response:
        """``POST /auth/tokens`` with ``{"name": ..., "expires_in": seconds}``."""
        user = await self._may_change(request, "mint", request.headers.get(CSRF_HEADER, ""))
        fields = await self._json_body(request)
        name, lifetime = self._clean(fields.get("name"), fields.get("expires_in"))
        minted = await self._service.mint(user, name, lifetime, client=self._who.client(request))
        session = minted.api_token.session
        return _json({"token": minted.token, "id": minted.api_token.token_id, "name": minted.api_token.name,
                      "created_at": int(session.created_at), "expires_at": int(session.expires_at)}, 201)

    async def revoke_json(self, request: web.Request) -> web.Response:
        """``DELETE /auth/tokens/{id}``."""
        user = await self._may_change(request, "revoke", request.headers.get(CSRF_HEADER, ""))
        revoked = await self._service.revoke(user, request.match_info["id"], client=self._who.client(request))
        return _json(_listing(revoked, self._clock()))

    # ---- HTML ---------------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        """``GET /tokens``: the list and the form; a browser without a session is sent to sign in."""
        credential, active = await self._who.browser_session(request)
        if credential is None or active is None:
            return web.Response(status=302, headers={"Location": "/login?rd=%2Ftokens", **pages.PAGE_HEADERS})
        return await self._render(credential, active.user)

    async def mint_form(self, request: web.Request) -> web.Response:
        """``POST /tokens`` (the page's form): mint, then show the page with the new token, this once."""
        fields = await self._form(request)
        user = await self._may_change(request, "mint", fields.get(pages.SIGN_OUT_FIELD, ""))
        name, lifetime = self._clean(fields.get("name"), fields.get("expires_in"))
        minted = await self._service.mint(user, name, lifetime, client=self._who.client(request))
        credential = self._who.cookie_credential(request)
        assert credential is not None  # _may_change admitted only a cookie session
        return await self._render(credential, user, new_token=(minted.api_token.name, minted.token))

    async def revoke_form(self, request: web.Request) -> web.Response:
        """``POST /tokens/{id}/revoke`` (a revoke button): revoke, then back to the page."""
        fields = await self._form(request)
        user = await self._may_change(request, "revoke", fields.get(pages.SIGN_OUT_FIELD, ""))
        await self._service.revoke(user, request.match_info["id"], client=self._who.client(request))
        return web.Response(status=303, headers={"Location": "/tokens", **pages.PAGE_HEADERS})

    async def _render(self, credential: Credential, user: User,
                      new_token: tuple[str, str] | None = None) -> web.Response:
        now = self._clock()
        rows = [pages.ApiTokenRow(t.token_id, t.name, iso_time(t.session.created_at), iso_time(t.session.expires_at),
                                  "" if (used := last_used(t)) is None else iso_time(used), token_state(t, now))
                for t in await self._service.list(user)]
        lifetimes = [(int(s), f"{s / 86400:g} days" if s >= 86400 else f"{s / 3600:g} hours")
                     for s in self._service.lifetime_choices()]
        text = pages.api_tokens_page(user.email, user.name, rows, session_bound_token(credential.token, _PURPOSE),
                                     lifetimes, int(self._service.default_lifetime), self._service.per_user,
                                     new_token)
        return web.Response(text=text, content_type="text/html", headers=pages.PAGE_HEADERS)

    # ---- who may ------------------------------------------------------------------------------------------

    async def _signed_in(self, request: web.Request) -> tuple[Credential, ActiveSession]:
        """The request's credential (bearer first, else the cookie) and its live session; 401 without one."""
        credential, active = await self._who.any_session(request)
        if credential is None or active is None:
            raise Unauthenticated("Sign in to manage your API tokens.", link=("/login?rd=%2Ftokens", "Sign in"))
        return credential, active

    async def _may_change(self, request: web.Request, action: str, sent_token: str) -> User:
        """The user, when this request may mint or revoke: a browser session by cookie, same origin, and
        the session's CSRF token. Otherwise 401 (no session) or 403 (logged, counted, nothing changed)."""
        credential, active = await self._signed_in(request)
        if not self._who.is_browser(credential, active):
            self._refuse(request, action, "not a browser session (an API token or a bearer JWT)",
                         "API tokens can be created and revoked only from a signed-in browser, not with a token.")
        refusal = self._who.forgery_problem(request, credential, sent_token, _PURPOSE)
        if refusal is not None:
            self._refuse(request, action, refusal, "This request did not come from this site's API tokens page (or "
                         "that page is out of date), so nothing was changed. Reload the page and try again.")
        return active.user

    def _refuse(self, request: web.Request, action: str, reason: str, message: str) -> None:
        self._metrics.api_tokens.labels(action, "forbidden").inc()
        log.warning("api token request refused", action=action, reason=reason, client=self._who.client(request),
                    user_agent=request.headers.get(hdrs.USER_AGENT, "")[:200])
        raise Forbidden(message, link=("/tokens", "Your API tokens"))

    # ---- input --------------------------------------------------------------------------------------------

    def _clean(self, name: object, lifetime: object) -> tuple[str, float]:
        try:
            return self._service.clean_name(name), self._service.clean_lifetime(lifetime)
        except InvalidTokenRequest:
            self._metrics.api_tokens.labels("mint", "invalid").inc()
            raise

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        """The request's JSON object; InvalidTokenRequest for anything else."""
        refuse_longer(request, _MAX_BODY, _TOO_LARGE)
        if request.content_type != "application/json":
            raise InvalidTokenRequest("Send the request as JSON (Content-Type: application/json).")
        raw = await request.read()  # its length was checked above (and chunked bodies are refused)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidTokenRequest("The body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise InvalidTokenRequest('The body must be a JSON object: {"name": ..., "expires_in": seconds}.')
        return body

    async def _form(self, request: web.Request) -> dict[str, str]:
        """The posted form's text fields (urlencoded or multipart); nothing from other bodies."""
        return await posted_fields(request, ("name", "expires_in", pages.SIGN_OUT_FIELD), max_bytes=_MAX_BODY,
                                   too_large=_TOO_LARGE)
