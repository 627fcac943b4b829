"""A fake vouch-proxy: ``/login``, ``/validate`` and ``/logout`` as a real aiohttp app.

``/login?url=`` collapses vouch's round trip through its IdP: it sets the ``VouchCookie`` (a JWT-shaped
opaque value; split into ``VouchCookie_1ofN``... chunks when longer than ``chunk_size``, as vouch does
for big cookies), plus vouch's own ``VouchSession`` cookie, and redirects to ``url``. ``/validate``
reassembles the chunks and answers like vouch: 200 with ``X-Vouch-User``, ``X-Vouch-Success`` and one
``X-Vouch-IdP-Claims-<Claim>`` header per forwarded claim (header names cleaned the way vouch does, list
claims as ``"a","b"``), or 401. ``public_access = True`` mimics vouch's ``publicAccess``: 200 with an
empty user when there is no valid cookie.

Which user is signed in at the IdP: the ``fake_vouch_user`` cookie, else ``default_user``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

from upstreams.base import Callback, LoginSecrets, Provider

SIGNED_IN_COOKIE = "fake_vouch_user"
SESSION_COOKIE = "VouchSession"
ClaimValue = str | bool | list[str]


@dataclass
class FakeVouchUser:
    """A user as vouch's IdP describes them: vouch's ``Username`` and the IdP's raw claims."""

    username: str
    claims: dict[str, ClaimValue] = field(default_factory=dict)


@dataclass
class ValidateCall:
    """One ``/validate`` request: the cookies and headers vouch received."""

    cookies: dict[str, str]
    headers: dict[str, str]


class FakeVouch:
    """vouch-proxy's endpoints over one mutable in-memory state."""

    def __init__(self, *, cookie_name: str = "VouchCookie", claims_prefix: str = "X-Vouch-IdP-Claims-",
                 chunk_size: int | None = None, forwarded_claims: list[str] | None = None) -> None:
        self.cookie_name = cookie_name
        self.claims_prefix = claims_prefix
        self.chunk_size = chunk_size
        self.forwarded_claims = forwarded_claims
        """vouch's ``headers.claims``: the claims sent as headers (None: every claim the user has)."""
        self.users: dict[str, FakeVouchUser] = {}
        self.default_user: str | None = None
        self.public_access = False
        self.pad_jwt = 0
        """Extra bytes in minted JWTs (to force chunking, as many claims do in real life)."""
        self.failures: dict[str, str] = {}
        """``"validate"`` -> ``"500"``, ``"502"``, ``"slow"``, ``"redirect"``, ``"404"``, ``"no_user_header"``."""
        self.slow_seconds = 5.0
        self.allowed_logout_urls: list[str] | None = None
        self.sessions: dict[str, str] = {}
        """Whole JWT -> username."""
        self.login_urls: list[str] = []
        self.validate_calls: list[ValidateCall] = []
        self.logout_urls: list[str] = []

    def add_user(self, user: FakeVouchUser, *, default: bool = False) -> FakeVouchUser:
        self.users[user.username] = user
        if default or self.default_user is None:
            self.default_user = user.username
        return user

    def revoke_all(self) -> None:
        """Forget every minted JWT (as if vouch's secret rotated)."""
        self.sessions.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/login", self.login)
        app.router.add_get("/validate", self.validate)
        app.router.add_get("/logout", self.logout)
        return app

    async def login(self, request: web.Request) -> web.StreamResponse:
        url = request.query.get("url", "")
        self.login_urls.append(url)
        if not url.startswith(("http://", "https://")):
            return web.Response(status=400, text="requested destination URL is not a valid URL")
        username = request.cookies.get(SIGNED_IN_COOKIE) or self.default_user
        user = self.users.get(username) if username else None
        if user is None:
            return web.Response(status=401, text="IdP login failed")
        jwt = self._mint(user)
        self.sessions[jwt] = user.username
        response = web.HTTPFound(url)
        for name, value in self._cookie_parts(jwt):
            response.set_cookie(name, value, path="/", httponly=True, samesite="Lax")
        response.set_cookie(SESSION_COOKIE, secrets.token_urlsafe(24), path="/", httponly=True, samesite="Lax")
        raise response

    async def validate(self, request: web.Request) -> web.StreamResponse:
        self.validate_calls.append(ValidateCall(dict(request.cookies), dict(request.headers)))
        mode = self.failures.get("validate")
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        elif mode == "500":
            return web.Response(status=500, text="500 Internal Server Error")
        elif mode == "502":
            return web.Response(status=502, text="Bad Gateway")
        elif mode == "404":
            return web.Response(status=404, text="404 page not found")
        elif mode == "redirect":
            return web.Response(status=302, headers={"Location": "/login"})
        username = self.sessions.get(self._jwt_from(request.cookies))
        user = self.users.get(username) if username else None
        if user is None:
            if self.public_access:
                return web.Response(headers={"X-Vouch-User": ""})
            return web.Response(status=401, text="401 Unauthorized")
        response = web.Response()
        for claim, value in user.claims.items():
            if self.forwarded_claims is None or claim in self.forwarded_claims:
                response.headers.add(self.claims_prefix + claim_to_header(claim), _header_value(value))
        if mode != "no_user_header":
            response.headers["X-Vouch-User"] = user.username
        response.headers["X-Vouch-Success"] = "true"
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        url = request.query.get("url", "")
        self.logout_urls.append(url)
        if self.allowed_logout_urls is not None and url not in self.allowed_logout_urls:
            return web.Response(status=400, text="url not in post_logout_redirect_uris")
        response = web.HTTPFound(url) if url else web.HTTPOk(text="you have been logged out")
        for name in request.cookies:
            if name.startswith(self.cookie_name):
                response.del_cookie(name, path="/")
        raise response

    def _mint(self, user: FakeVouchUser) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

        payload = {"username": user.username, "iss": "Vouch", "exp": int(time.time()) + 3600,
                   "CustomClaims": user.claims, "pad": "x" * self.pad_jwt}
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        return f"{header}.{b64(json.dumps(payload).encode())}.{b64(secrets.token_bytes(32))}"

    def _cookie_parts(self, jwt: str) -> list[tuple[str, str]]:
        if self.chunk_size is None or len(jwt) <= self.chunk_size:
            return [(self.cookie_name, jwt)]
        chunks = [jwt[i: i + self.chunk_size] for i in range(0, len(jwt), self.chunk_size)]
        return [(f"{self.cookie_name}_{i}of{len(chunks)}", chunk) for i, chunk in enumerate(chunks, 1)]

    def _jwt_from(self, jar: Mapping[str, str]) -> str:
        """The whole JWT from the request's cookies: the plain cookie, or every chunk in order."""
        if self.cookie_name in jar:
            return jar[self.cookie_name]
        pattern = re.compile(rf"^{re.escape(self.cookie_name)}_(\d+)of(\d+)$")
        chunks: dict[int, str] = {}
        total = 0
        for name, value in jar.items():
            match = pattern.match(name)
            if match:
                chunks[int(match.group(1))] = value
                total = int(match.group(2))
        if not chunks or sorted(chunks) != list(range(1, total + 1)):
            return ""
        return "".join(chunks[i] for i in range(1, total + 1))


def claim_to_header(claim: str) -> str:
    """vouch's claim -> header name: drop a URL scheme, specials to ``-``, then Go's canonical header case."""
    for scheme in ("http://", "https://"):
        claim = claim.removeprefix(scheme)
    claim = re.sub(r'["(),/\\:;<=>?@\[\]{}_.]', "-", claim)
    claim = "".join(c if 33 <= ord(c) <= 126 else "-" for c in claim)
    return "-".join(part[:1].upper() + part[1:].lower() for part in claim.split("-"))


def _header_value(value: ClaimValue) -> str:
    """vouch's rendering: lists as ``"a","b"``, booleans as Go prints them, the rest as text."""
    if isinstance(value, list):
        return ",".join(f'"{v}"' for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


async def browser_login(provider: Provider, *, redirect_uri: str, secrets: LoginSecrets,
                        vouch_user: str | None = None) -> Callback:
    """Do what the browser does: open the authorization URL at the fake vouch (signed in at its IdP as
    ``vouch_user``), take the redirect without following it, and return what reaches ``/callback``: the
    redirect's query parameters and every cookie vouch set (the shared cookie domain carries them).

    Raises AssertionError when vouch does not redirect back to ``redirect_uri``.
    """
    url = await provider.authorization_url(redirect_uri=redirect_uri, secrets=secrets)
    headers = {"Cookie": f"{SIGNED_IN_COOKIE}={vouch_user}"} if vouch_user else {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as browser, \
            browser.get(url, headers=headers, allow_redirects=False) as resp:
        if resp.status != 302:
            raise AssertionError(f"vouch /login answered {resp.status}: {await resp.text()}")
        location = URL(resp.headers["Location"])
        cookies = {name: morsel.value for name, morsel in resp.cookies.items()}
    if location.with_query(None) != URL(redirect_uri).with_query(None):
        raise AssertionError(f"redirected to {location}, not {redirect_uri}")
    return Callback(params=dict(location.query), cookies=cookies)
