"""A fake GitHub: the OAuth web flow (with PKCE) and the REST endpoints a login reads, as a real aiohttp app.

It answers in GitHub's own shapes, including the awkward ones: the token endpoint's *200 with an
``error``* body, form-encoded token answers unless ``Accept: application/json`` is sent, ``Bad
credentials`` 401s, rate-limit 403s with ``x-ratelimit-*`` / ``retry-after`` headers and ``Link``
pagination. ``api_prefix="/api/v3"`` makes it GitHub Enterprise Server; serving one fake on two servers
gives github.com's split between ``github.com`` and ``api.github.com``.

Knobs are plain attributes: ``users``, ``failures`` (endpoint -> failure mode), ``deny``,
``token_error``, ``granted_scopes``, ``max_per_page``, ``next_link_base``, ``slow_seconds``. Every
request is recorded for assertions.

Which user is signed in at the fake: the ``fake_github_user`` cookie (a login), else ``default_login``.

By default it is an OAuth App (tokens never expire, no refresh token). ``expiring_tokens = True`` makes it
a GitHub App with expiring user tokens: the code exchange also returns ``expires_in``, ``refresh_token``
and ``refresh_token_expires_in``, and the same token URL takes ``grant_type=refresh_token``, always
rotating (the used refresh token is spent; using it again, an unknown, revoked
(:meth:`FakeGitHub.revoke_refresh_tokens`) or expired (``refresh_token_ttl``) one is answered, GitHub
style, as HTTP 200 with ``{"error": "bad_refresh_token"}``). ``refresh_calls`` counts refresh requests;
``failures["token"]`` and ``token_error`` apply to them too. A refresh reads ``users`` as they are now, so
removing an org from a :class:`FakeUser` between sign-in and refresh is "the user left the org".
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from yarl import URL

from upstreams.base import Callback, LoginSecrets, Provider

SIGNED_IN_COOKIE = "fake_github_user"
DOCS = "https://docs.github.com/rest"
FAILURES = ("500", "502", "slow", "not_json", "401", "403", "rate_limit", "secondary_rate_limit", "429",
            "wrong_shape", "redirect")
"""Failure modes for ``FakeGitHub.failures[endpoint]``; endpoints: token, user, emails, orgs, teams."""


@dataclass
class FakeEmail:
    """One row of ``/user/emails``."""

    email: str
    primary: bool = False
    verified: bool = True
    visibility: str | None = None


@dataclass
class FakeUser:
    """A GitHub account. ``email`` is the *public* email ``/user`` shows (None when private)."""

    id: int
    login: str
    name: str | None = None
    email: str | None = None
    emails: list[FakeEmail] = field(default_factory=list)
    orgs: list[str] = field(default_factory=list)
    teams: list[str] = field(default_factory=list)
    """``org/team-slug`` names."""


@dataclass
class Grant:
    """An authorization code GitHub issued and what it was issued for."""

    user_id: int
    redirect_uri: str
    scope: str
    code_challenge: str
    code_challenge_method: str
    used: bool = False


@dataclass
class RefreshGrant:
    """A GitHub App user refresh token: whose it is, when it was issued, whether it is spent or revoked."""

    user_id: int
    scope: str
    issued_at: float
    spent: bool = False
    revoked: bool = False


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)


class FakeGitHub:
    """GitHub's OAuth and REST endpoints over one mutable in-memory state."""

    def __init__(self, *, client_id: str = "fake-client-id",
                 client_secret: str = "fake-client-secret",  # noqa: S107 - a fake's own test secret
                 api_prefix: str = "", require_pkce: bool = True) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.api_prefix = api_prefix.rstrip("/")
        self.require_pkce = require_pkce
        self.users: dict[int, FakeUser] = {}
        self.default_login: str | None = None
        self.deny = False
        """Authorize answers ``error=access_denied`` (the user clicked Cancel)."""
        self.token_error: str | None = None
        """Token endpoint answers 200 with this ``error`` whatever it is sent."""
        self.granted_scopes: list[str] | None = None
        """Scopes the token endpoint reports granted (default: those requested)."""
        self.failures: dict[str, str] = {}
        self.slow_seconds = 5.0
        self.max_per_page = 100
        self.next_link_base: str | None = None
        """When set, pagination links point at this origin instead of the fake's own."""
        self.codes: dict[str, Grant] = {}
        self.tokens: dict[str, int] = {}
        self.requests: list[Recorded] = []
        self.expiring_tokens = False
        """Behave as a GitHub App with expiring user tokens: issue refresh tokens and honour them."""
        self.refresh_token_ttl: float | None = None
        """Seconds a refresh token can be redeemed after it was issued (None: until spent or revoked)."""
        self.refresh_tokens: dict[str, RefreshGrant] = {}
        """Every refresh token issued (live, spent or revoked)."""
        self.refresh_calls = 0
        """Token requests with ``grant_type=refresh_token`` received, whatever they were answered."""

    # ---- state ----------------------------------------------------------------------------------------

    def add_user(self, user: FakeUser, *, default: bool = False) -> FakeUser:
        self.users[user.id] = user
        if default or self.default_login is None:
            self.default_login = user.login
        return user

    def user_by_login(self, login: str) -> FakeUser | None:
        return next((u for u in self.users.values() if u.login.lower() == login.lower()), None)

    def recorded(self, path_suffix: str) -> list[Recorded]:
        """Requests whose path ends with ``path_suffix``."""
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def secrets_issued(self) -> list[str]:
        """Every code and token handed out, plus the client secret: none may appear in an error message."""
        return [*self.codes, *self.tokens, *self.refresh_tokens, self.client_secret]

    def revoke_refresh_tokens(self, user_id: int | None = None) -> int:
        """Revoke the refresh tokens of ``user_id`` (None: everyone's), as revoking the app's authorisation
        does; returns how many live ones were revoked."""
        revoked = 0
        for grant in self.refresh_tokens.values():
            if (user_id is None or grant.user_id == user_id) and not grant.revoked:
                revoked += not grant.spent
                grant.revoked = True
        return revoked

    def live_refresh_tokens(self, user_id: int | None = None) -> list[str]:
        """Refresh tokens that would be honoured now."""
        return [token for token, grant in self.refresh_tokens.items()
                if (user_id is None or grant.user_id == user_id) and self._refreshable(grant)]

    # ---- app ------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/login/oauth/authorize", self.authorize)
        app.router.add_post("/login/oauth/access_token", self.access_token)
        api = self.api_prefix
        app.router.add_get(f"{api}/user", self.user)
        app.router.add_get(f"{api}/user/emails", self.emails)
        app.router.add_get(f"{api}/user/orgs", self.orgs)
        app.router.add_get(f"{api}/user/teams", self.teams)
        return app

    async def _record(self, request: web.Request) -> Recorded:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)} \
            if request.method == "POST" else {}
        entry = Recorded(request.method, request.path, dict(request.query), dict(request.headers), form)
        self.requests.append(entry)
        return entry

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        """The consent page, collapsed: the signed-in user approves (or ``deny``) at once."""
        entry = await self._record(request)
        q = entry.query
        if q.get("client_id") != self.client_id:
            return web.Response(status=404, text="Not Found")
        redirect_uri = q.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://")):
            return web.Response(status=400, text="redirect_uri_mismatch")
        challenge, method = q.get("code_challenge", ""), q.get("code_challenge_method", "")
        if (challenge or self.require_pkce) and (method != "S256" or len(challenge) != 43):
            return web.Response(status=400, text="invalid code_challenge / code_challenge_method (S256 only)")
        login = request.cookies.get(SIGNED_IN_COOKIE) or self.default_login
        user = self.user_by_login(login) if login else None
        if user is None:
            return web.Response(status=401, text="sign in to GitHub first")
        back = URL(redirect_uri)
        if self.deny:
            params = {"error": "access_denied",
                      "error_description": "The user has denied your application access.",
                      "error_uri": "https://docs.github.com/apps/managing-oauth-apps/"
                                   "troubleshooting-authorization-request-errors/#access-denied"}
        else:
            code = secrets.token_hex(10)
            self.codes[code] = Grant(user.id, redirect_uri, q.get("scope", ""), challenge, method)
            params = {"code": code}
        if "state" in q:
            params["state"] = q["state"]
        raise web.HTTPFound(back.update_query(params))

    async def access_token(self, request: web.Request) -> web.StreamResponse:
        """Code for token. GitHub answers errors with status 200 and an ``error`` field."""
        entry = await self._record(request)
        if entry.form.get("grant_type") == "refresh_token":
            self.refresh_calls += 1
        failure = await self._failure("token")
        if failure is not None:
            return failure
        form = entry.form
        wants_json = "application/json" in request.headers.get("Accept", "")
        grant = self.codes.get(form.get("code", ""))
        if self.token_error is not None:
            return self._token_answer(wants_json, _token_error(self.token_error))
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return self._token_answer(wants_json, _token_error("incorrect_client_credentials"))
        if form.get("grant_type") == "refresh_token":
            return self._token_answer(wants_json, self._refresh(form))
        if grant is None or grant.used:
            return self._token_answer(wants_json, _token_error("bad_verification_code"))
        if form.get("redirect_uri") and form["redirect_uri"] != grant.redirect_uri:
            return self._token_answer(wants_json, _token_error("redirect_uri_mismatch"))
        if grant.code_challenge and s256(form.get("code_verifier", "")) != grant.code_challenge:
            # GitHub does not document its PKCE failure answer; it is an error on the code either way.
            return self._token_answer(wants_json, _token_error("bad_verification_code"))
        grant.used = True
        scopes = self.granted_scopes if self.granted_scopes is not None else grant.scope.split()
        return self._token_answer(wants_json, self._issue(grant.user_id, ",".join(scopes)))

    def _issue(self, user_id: int, scope: str) -> dict[str, Any]:
        """A token answer: an OAuth App's, or with ``expiring_tokens`` a GitHub App's (``ghu_``/``ghr_``)."""
        if not self.expiring_tokens:
            token = "gho_" + secrets.token_urlsafe(27)
            self.tokens[token] = user_id
            return {"access_token": token, "token_type": "bearer", "scope": scope}
        token = "ghu_" + secrets.token_urlsafe(27)
        self.tokens[token] = user_id
        refresh_token = "ghr_" + secrets.token_urlsafe(56)
        self.refresh_tokens[refresh_token] = RefreshGrant(user_id, scope, time.time())
        return {"access_token": token, "token_type": "bearer", "scope": scope, "expires_in": 28800,
                "refresh_token": refresh_token, "refresh_token_expires_in": 15811200}

    def _refreshable(self, grant: RefreshGrant) -> bool:
        ttl = self.refresh_token_ttl
        return not grant.spent and not grant.revoked and (ttl is None or time.time() < grant.issued_at + ttl)

    def _refresh(self, form: dict[str, str]) -> dict[str, Any]:
        """The refresh grant as GitHub answers it: a fresh token pair, the used refresh token spent."""
        grant = self.refresh_tokens.get(form.get("refresh_token", ""))
        if grant is None or not self._refreshable(grant) or grant.user_id not in self.users:
            return _token_error("bad_refresh_token")
        grant.spent = True
        return self._issue(grant.user_id, grant.scope)

    @staticmethod
    def _token_answer(wants_json: bool, body: dict[str, Any]) -> web.Response:
        if wants_json:
            return web.json_response(body)
        return web.Response(text=urlencode(body), content_type="application/x-www-form-urlencoded")

    async def user(self, request: web.Request) -> web.StreamResponse:
        user, failure = await self._api_user(request, "user")
        if user is None:
            return failure
        return web.json_response({
            "login": user.login, "id": user.id, "node_id": f"U_{user.id}", "type": "User", "site_admin": False,
            "avatar_url": f"https://avatars.githubusercontent.com/u/{user.id}?v=4",
            "html_url": f"https://github.com/{user.login}", "name": user.name, "company": None,
            "email": user.email, "bio": None, "public_repos": 3, "followers": 0, "following": 0,
            "created_at": "2011-01-25T18:44:36Z", "updated_at": "2024-01-01T00:00:00Z",
        })

    async def emails(self, request: web.Request) -> web.StreamResponse:
        user, failure = await self._api_user(request, "emails")
        if user is None:
            return failure
        rows = [{"email": e.email, "primary": e.primary, "verified": e.verified, "visibility": e.visibility}
                for e in user.emails]
        return self._page(request, rows)

    async def orgs(self, request: web.Request) -> web.StreamResponse:
        user, failure = await self._api_user(request, "orgs")
        if user is None:
            return failure
        rows = [{"login": org, "id": _stable_id(org), "node_id": f"O_{_stable_id(org)}",
                 "url": f"https://api.github.com/orgs/{org}", "description": None} for org in user.orgs]
        return self._page(request, rows)

    async def teams(self, request: web.Request) -> web.StreamResponse:
        user, failure = await self._api_user(request, "teams")
        if user is None:
            return failure
        rows = []
        for team in user.teams:
            org, _, slug = team.partition("/")
            rows.append({"id": _stable_id(team), "node_id": f"T_{_stable_id(team)}", "name": slug.title(),
                         "slug": slug, "permission": "pull", "privacy": "closed",
                         "organization": {"login": org, "id": _stable_id(org)}})
        return self._page(request, rows)

    async def _api_user(self, request: web.Request, endpoint: str) -> tuple[FakeUser | None, web.StreamResponse]:
        """The token's user, or None and the response to send instead."""
        await self._record(request)
        failure = await self._failure(endpoint)
        if failure is not None:
            return None, failure
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        user_id = self.tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        user = self.users.get(user_id) if user_id is not None else None
        if user is None:
            return None, _bad_credentials()
        return user, web.Response()

    def _page(self, request: web.Request, rows: list[dict[str, Any]]) -> web.Response:
        """One page of ``rows`` with GitHub's ``Link`` header (per_page default 30, at most 100)."""
        per_page = min(int(request.query.get("per_page", "30")), 100, self.max_per_page)
        page = max(int(request.query.get("page", "1")), 1)
        last = max((len(rows) + per_page - 1) // per_page, 1)
        response = web.json_response(rows[(page - 1) * per_page: page * per_page])
        base = request.url if self.next_link_base is None else URL(self.next_link_base).join(
            URL(request.path_qs))

        def link(n: int, rel: str) -> str:
            return f'<{base.update_query(per_page=per_page, page=n)}>; rel="{rel}"'

        links = []
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        if links:
            response.headers["Link"] = ", ".join(links)
        return response

    async def _failure(self, endpoint: str) -> web.StreamResponse | None:
        """The injected failure for ``endpoint``, or None to answer normally (after sleeping for "slow")."""
        mode = self.failures.get(endpoint)
        if mode is None:
            return None
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
            return None
        if mode == "500":
            return web.json_response({"message": "Server Error"}, status=500)
        if mode == "502":
            return web.Response(status=502, text="<html><body>Bad Gateway</body></html>", content_type="text/html")
        if mode == "not_json":
            return web.Response(text="<!DOCTYPE html><html><body>Unicorn!</body></html>", content_type="text/html")
        if mode == "401":
            return _bad_credentials()
        if mode == "403":
            return web.json_response({"message": "Resource not accessible by integration", "documentation_url": DOCS,
                                      "status": "403"}, status=403)
        if mode == "rate_limit":
            return web.json_response(
                {"message": "API rate limit exceeded for user ID 1.", "documentation_url": DOCS, "status": "403"},
                status=403, headers={"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "0",
                                     "x-ratelimit-used": "5000", "x-ratelimit-reset": "1893456000",
                                     "x-ratelimit-resource": "core"})
        if mode == "secondary_rate_limit":
            return web.json_response({"message": "You have exceeded a secondary rate limit. Please wait a few "
                                                 "minutes before you try again.", "documentation_url": DOCS,
                                      "status": "403"}, status=403, headers={"retry-after": "60"})
        if mode == "429":
            return web.json_response({"message": "Too Many Requests"}, status=429, headers={"retry-after": "1"})
        if mode == "wrong_shape":
            return web.json_response({"unexpected": True} if endpoint != "user" else [])
        if mode == "redirect":
            return web.Response(status=302, headers={"Location": "https://elsewhere.invalid/"})
        raise AssertionError(f"unknown failure mode {mode!r} (one of {FAILURES})")


def s256(verifier: str) -> str:
    """RFC 7636 S256 challenge, computed independently of authlib."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _token_error(error: str) -> dict[str, str]:
    descriptions = {
        "bad_verification_code": "The code passed is incorrect or expired.",
        "incorrect_client_credentials": "The client_id and/or client_secret passed are incorrect.",
        "redirect_uri_mismatch": "The redirect_uri MUST match the registered callback URL for this application.",
        "bad_refresh_token": "The refresh token passed is incorrect or expired.",
    }
    anchor = error.replace("_", "-")
    return {"error": error, "error_description": descriptions.get(error, "Something went wrong."),
            "error_uri": f"https://docs.github.com/apps/managing-oauth-apps/"
                         f"troubleshooting-oauth-app-access-token-request-errors/#{anchor}"}


def _bad_credentials() -> web.Response:
    return web.json_response({"message": "Bad credentials", "documentation_url": DOCS, "status": "401"},
                             status=401)


def _stable_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:3], "big")


async def browser_login(provider: Provider, *, redirect_uri: str, secrets: LoginSecrets,
                        github_user: str | None = None) -> Callback:
    """Do what the browser does: open the authorization URL at the fake (signed in as ``github_user``),
    take the redirect without following it, and return what would reach ``/callback``.

    Raises AssertionError when the fake does not redirect back to ``redirect_uri``.
    """
    url = await provider.authorization_url(redirect_uri=redirect_uri, secrets=secrets)
    headers = {"Cookie": f"{SIGNED_IN_COOKIE}={github_user}"} if github_user else {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as browser, \
            browser.get(url, headers=headers, allow_redirects=False) as resp:
        if resp.status != 302:
            raise AssertionError(f"authorize answered {resp.status}: {await resp.text()}")
        location = URL(resp.headers["Location"])
    if location.with_query(None) != URL(redirect_uri).with_query(None):
        raise AssertionError(f"redirected to {location}, not {redirect_uri}")
    return Callback(params=dict(location.query), cookies={})
