"""A fake OpenID Connect provider: discovery, authorize, token, JWKS, userinfo and end-session, as a real aiohttp app.

It checks what a real provider checks (client authentication, single-use codes bound to the redirect
URI, the PKCE S256 verifier) and signs RS256 tokens with 2048-bit keys whose JWKS can be rotated.
``FakeOIDC.knobs`` (a :class:`Knobs`) makes it misbehave in one way per test: wrong ``iss``/``aud``/
``nonce``, ``alg: none``, HS256 signed with the RSA public key as the HMAC secret, expired or future
tokens, unknown ``kid``, a userinfo for another subject, a failing/slow/garbage token endpoint, a
discovery document for another issuer... Every request is counted in ``hits`` and recorded.

The refresh token grant is real: a code redemption issues a refresh token (``Knobs.refresh_tokens``), the
token endpoint accepts ``grant_type=refresh_token`` (client authentication as for codes), optionally
rotates it (``Knobs.rotate_refresh_tokens``: an old one is then ``invalid_grant``, as at Auth0 or Okta),
returns a new ID token or not (``Knobs.refresh_id_token``), honours ``refresh_token_ttl`` and
:meth:`FakeOIDC.revoke_refresh_tokens`, and counts every refresh request in ``refresh_calls``. The
``token_*`` failure knobs apply to refreshes too; a refresh re-reads the user from ``users``, so changing
a :class:`FakeUser` (or :meth:`FakeOIDC.set_claims`) between sign-in and refresh changes what it says.

Usage::

    fake = await FakeOIDC().start(aiohttp_server)
    provider = OIDCProvider.from_config("corp", fake.config(), http)
    callback = await browser_login(provider, secrets, REDIRECT_URI)
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import aiohttp
import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from upstreams.base import Callback, LoginSecrets, Provider

CLIENT_ID = "gateway-client"
CLIENT_SECRET = "fake-client-secret-0123456789"
REDIRECT_URI = "https://gateway.example.com/callback/corp"

ServerFactory = Callable[..., Awaitable[TestServer]]


@functools.cache
def rsa_key(index: int) -> rsa.RSAPrivateKey:
    """The ``index``-th RSA key; generated once per test session (2048 bits: smaller keys warn)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_login_secrets() -> LoginSecrets:
    """Fresh per-attempt secrets, as the gateway generates them."""
    return LoginSecrets(state=secrets.token_urlsafe(16), nonce=secrets.token_urlsafe(16),
                        code_verifier=secrets.token_urlsafe(48))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact_jws(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS built by hand (PyJWT refuses to make the malicious ones)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def at_hash(access_token: str) -> str:
    """``at_hash`` for an RS256 ID token."""
    return _b64(hashlib.sha256(access_token.encode()).digest()[:16])


@dataclass
class FakeUser:
    """An account at the fake provider. ``None`` leaves a standard claim out everywhere."""

    sub: str
    email: str | None = None
    email_verified: bool | None = True
    name: str | None = None
    preferred_username: str | None = None
    id_claims: dict[str, Any] = field(default_factory=dict)
    """Extra ID token (and userinfo) claims: ``amr``, ``groups``, ``realm_access``, ``cognito:groups``, ``hd``..."""
    access_claims: dict[str, Any] = field(default_factory=dict)
    """Extra access token claims (Auth0's ``permissions``)."""
    userinfo_only: dict[str, Any] = field(default_factory=dict)
    """Claims only the userinfo endpoint returns."""

    def standard_claims(self) -> dict[str, Any]:
        claims: dict[str, Any] = {"email": self.email, "email_verified": self.email_verified, "name": self.name,
                                  "preferred_username": self.preferred_username}
        return {k: v for k, v in claims.items() if v is not None} | self.id_claims


Alg = Literal["RS256", "none", "HS256-public-key"]



def ada_and_bob() -> list[FakeUser]:
    """Two users of one provider, for tests where one user's sign-out must leave the other's sessions alone."""
    return [FakeUser(sub="user-ada", email="ada@example.com", name="Ada"),
            FakeUser(sub="user-bob", email="bob@example.com", name="Bob")]


@dataclass
class Knobs:
    """Ways the fake misbehaves; all off by default. Times are seconds relative to now."""

    id_token_iss: str | None = None
    id_token_aud: str | list[str] | None = None
    id_token_azp: str | None = None
    id_token_nonce: str | None = None
    id_token_alg: Alg = "RS256"
    id_token_kid: str | None = None
    id_token_exp: int = 300
    id_token_iat: int = 0
    id_token_omit: tuple[str, ...] = ()
    """ID token claims to leave out (``email``, ``email_verified``, ``name``, ``nonce``...)."""
    bad_at_hash: bool = False
    access_token_jwt: bool = True
    userinfo_sub: str | None = None
    userinfo_status: int = 200
    token_status: int = 200
    token_body: str | None = None
    """A raw body for the token endpoint instead of JSON (with ``token_status``)."""
    token_delay: float = 0.0
    token_error: str | None = None
    """Answer the token request with 400 and this OAuth error."""
    discovery_issuer: str | None = None
    discovery_status: int = 200
    discovery_delay: float = 0.0
    jwks_status: int = 200
    callback_iss: str | None = None
    """The RFC 9207 ``iss`` the authorize redirect carries; None sends none."""
    advertise_iss_parameter: bool = False
    authorize_error: str | None = None
    end_session: bool = True
    userinfo: bool = True
    refresh_tokens: bool = True
    """Code redemption issues a refresh token (off: the provider issues none, as without ``offline_access``)."""
    rotate_refresh_tokens: bool = False
    """Each refresh issues a new refresh token and retires the one used (reusing it is ``invalid_grant``)."""
    reuse_revokes_family: bool = False
    """With rotation, reusing a retired refresh token also revokes every token descended from the same
    sign-in (Auth0's reuse detection)."""
    refresh_token_ttl: float | None = None
    """Seconds a refresh token stays redeemable after it was issued (None: until revoked)."""
    refresh_id_token: bool = True
    """A refresh returns a new ID token (off: access token only, as many providers do)."""
    refresh_id_token_sub: str | None = None
    """The ``sub`` a refreshed ID token names instead of the user's."""


@dataclass
class Grant:
    """An authorization code and what it was issued for."""

    sub: str
    client_id: str
    redirect_uri: str
    nonce: str | None
    code_challenge: str
    scope: str
    audience: str | None
    used: bool = False


@dataclass
class RefreshGrant:
    """A refresh token and what it renews: the sign-in it descends from (``family``) and its session."""

    sub: str
    client_id: str
    scope: str
    audience: str | None
    nonce: str | None
    sid: str
    family: str
    issued_at: float
    retired: bool = False
    """Used once under rotation (a second use is reuse)."""
    revoked: bool = False


class FakeOIDC:
    """One fake provider. ``issuer`` is known once :meth:`start` has run."""

    def __init__(self, *, path: str = "/oidc", client_id: str = CLIENT_ID,
                 client_secret: str | None = CLIENT_SECRET, users: list[FakeUser] | None = None) -> None:
        self.path = path
        self.client_id = client_id
        self.client_secret = client_secret
        self.users = {u.sub: u for u in users or [FakeUser(
            sub="user-alice", email="alice@example.com", name="Alice Liddell", preferred_username="alice")]}
        self.login_as = next(iter(self.users))
        self.knobs = Knobs()
        self.hits: Counter[str] = Counter()
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.logout_requests: list[dict[str, str]] = []
        self.session_ids: list[str] = []
        """The provider session (``sid``) of each sign-in, in order: what a back-channel logout names."""
        self.refresh_calls = 0
        """Token requests with ``grant_type=refresh_token`` received, whatever they were answered."""
        self.refresh_grants: dict[str, RefreshGrant] = {}
        """Every refresh token issued (live, retired or revoked) -> what it renews."""
        self.issuer = ""
        self.server: TestServer | None = None
        self._grants: dict[str, Grant] = {}
        self._access_tokens: dict[str, str] = {}
        self._next_key = 0
        self._keys: dict[str, rsa.RSAPrivateKey] = {}
        self.signing_kid = self.add_key()
        self.app = self._make_app()

    # ---- driving the fake -----------------------------------------------------------------------------

    async def start(self, aiohttp_server: ServerFactory) -> FakeOIDC:
        """Serve the app and fix ``issuer`` (``http://127.0.0.1:<port><path>``)."""
        self.server = await aiohttp_server(self.app)
        self.issuer = f"http://{self.server.host}:{self.server.port}{self.path}"
        return self

    @property
    def base(self) -> str:
        """Where the endpoints live (the issuer without a trailing slash)."""
        return self.issuer.rstrip("/")

    def config(self, **overrides: Any) -> dict[str, Any]:
        """An ``[upstreams.<name>]`` table pointing at this fake (plain http allowed)."""
        config: dict[str, Any] = {"type": "oidc", "issuer": self.issuer, "client_id": self.client_id,
                                  "allow_insecure_http": True, "timeout": 5}
        if self.client_secret is not None:
            config["client_secret"] = self.client_secret
        return config | overrides

    def add_key(self) -> str:
        """Publish a new key and sign with it from now on (the old keys stay published); returns its kid."""
        self._next_key += 1
        kid = f"key-{self._next_key}"
        self._keys[kid] = rsa_key(self._next_key)
        self.signing_kid = kid
        return kid

    def rotate_key(self) -> str:
        """Publish a new key, sign with it, and retire every older key; returns the new kid."""
        kid = self.add_key()
        self._keys = {kid: self._keys[kid]}
        return kid

    def revoke_refresh_tokens(self, subject: str | None = None) -> int:
        """Revoke every refresh token of ``subject`` (None: of everyone), as an admin or the user's sign-out
        at the provider would; returns how many live ones were revoked. Redeeming one is then ``invalid_grant``."""
        revoked = 0
        for grant in self.refresh_grants.values():
            if (subject is None or grant.sub == subject) and not grant.revoked:
                revoked += not grant.retired
                grant.revoked = True
        return revoked

    def set_claims(self, subject: str, **claims: Any) -> None:
        """Change a user's ID token (and userinfo) claims from now on: ``set_claims("user-alice", groups=["x"])``;
        a value of None removes the claim."""
        user = self.users[subject]
        for name, value in claims.items():
            if value is None:
                user.id_claims.pop(name, None)
            else:
                user.id_claims[name] = value

    @property
    def issued_refresh_tokens(self) -> list[str]:
        """Every refresh token handed out, in order (none may appear in an error message or log line)."""
        return list(self.refresh_grants)

    def live_refresh_tokens(self, subject: str | None = None) -> list[str]:
        """Refresh tokens that would be honoured now (of ``subject``, or of anyone)."""
        return [token for token, grant in self.refresh_grants.items()
                if (subject is None or grant.sub == subject) and self._refreshable(grant)]

    @property
    def published_kids(self) -> list[str]:
        return list(self._keys)

    def sign(self, claims: dict[str, Any], *, alg: Alg = "RS256", kid: str | None = None) -> str:
        """A JWT over ``claims``: RS256 with the signing key, unsigned, or HS256 keyed with the public PEM."""
        kid = kid or self.signing_kid
        key = self._keys[self.signing_kid]
        if alg == "none":
            return compact_jws({"alg": "none", "typ": "JWT"}, claims, lambda _: b"")
        if alg == "HS256-public-key":
            pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
            return compact_jws({"alg": "HS256", "typ": "JWT", "kid": kid}, claims,
                               lambda data: hmac.new(pem, data, hashlib.sha256).digest())
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    def access_token(self, sub: str | None = None, *, aud: str | list[str] | None = None, exp: int = 300,
                     iss: str | None = None, alg: Alg = "RS256", kid: str | None = None,
                     **claims: Any) -> str:
        """A JWT access token as this provider would issue it (for bearer tests); knobs via arguments."""
        user = self.users[sub or self.login_as]
        now = int(time.time())
        payload: dict[str, Any] = {"iss": iss or self.issuer, "sub": user.sub,
                                   "aud": aud if aud is not None else self.client_id,
                                   "iat": now, "exp": now + exp, "scope": "openid email profile",
                                   "client_id": self.client_id, "jti": secrets.token_urlsafe(12),
                                   **user.access_claims, **claims}
        token = self.sign(payload, alg=alg, kid=kid)
        self._access_tokens[token] = user.sub
        return token

    def logout_token(self, *, sub: str | None = "", sid: str | None = None, jti: str | None = None,
                     typ: str | None = "logout+jwt", alg: Alg = "RS256", kid: str | None = None,
                     omit: tuple[str, ...] = (), **claims: Any) -> str:
        """A back-channel logout token (Back-Channel Logout 1.0, 2.4) as this provider would send it.

        ``sub=""`` names the signed-in user (``login_as``), None leaves ``sub`` out; ``sid`` names a
        provider session (None: none); ``typ`` None sends no ``typ`` header; ``claims`` override or add
        claims; ``omit`` drops some.
        """
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer, "aud": self.client_id, "iat": now, "exp": now + 120,
            "jti": jti or secrets.token_urlsafe(16),
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        }
        if sub is not None:
            payload["sub"] = sub or self.users[self.login_as].sub
        if sid is not None:
            payload["sid"] = sid
        payload.update(claims)
        for claim in omit:
            payload.pop(claim, None)
        if alg != "RS256":
            return self.sign(payload, alg=alg, kid=kid)
        return jwt.encode(payload, self._keys[self.signing_kid], algorithm="RS256",
                          headers={"kid": kid or self.signing_kid, "typ": typ})

    # ---- the app --------------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        prefix = self.path.rstrip("/")
        app.router.add_get(f"{prefix}/.well-known/openid-configuration", self._discovery)
        app.router.add_get(f"{prefix}/authorize", self._authorize)
        app.router.add_post(f"{prefix}/token", self._token)
        app.router.add_get(f"{prefix}/jwks", self._jwks)
        app.router.add_get(f"{prefix}/userinfo", self._userinfo)
        app.router.add_get(f"{prefix}/logout", self._logout)
        return app

    async def _discovery(self, request: web.Request) -> web.Response:
        self.hits["discovery"] += 1
        if self.knobs.discovery_delay:
            await asyncio.sleep(self.knobs.discovery_delay)
        if self.knobs.discovery_status != 200:
            return web.Response(status=self.knobs.discovery_status, text="discovery is down")
        document: dict[str, Any] = {
            "issuer": self.knobs.discovery_issuer or self.issuer,
            "authorization_endpoint": f"{self.base}/authorize",
            "token_endpoint": f"{self.base}/token",
            "jwks_uri": f"{self.base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "none"],
        }
        if self.knobs.userinfo:
            document["userinfo_endpoint"] = f"{self.base}/userinfo"
        if self.knobs.end_session:
            document["end_session_endpoint"] = f"{self.base}/logout"
        if self.knobs.advertise_iss_parameter:
            document["authorization_response_iss_parameter_supported"] = True
        # It signs logout tokens (logout_token()) naming the sid its ID tokens carry.
        document["backchannel_logout_supported"] = True
        document["backchannel_logout_session_supported"] = True
        return web.json_response(document)

    async def _authorize(self, request: web.Request) -> web.Response:
        self.hits["authorize"] += 1
        query = dict(request.query)
        self.authorize_requests.append(query)
        redirect_uri = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id or not redirect_uri:
            return web.Response(status=400, text="unknown client or missing redirect_uri")
        if query.get("response_type") != "code":
            return web.Response(status=400, text="unsupported response_type")
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return web.Response(status=400, text="PKCE S256 required")
        params: dict[str, str] = {}
        if self.knobs.authorize_error:
            params["error"] = self.knobs.authorize_error
        else:
            code = secrets.token_urlsafe(24)
            self._grants[code] = Grant(sub=self.login_as, client_id=self.client_id, redirect_uri=redirect_uri,
                                       nonce=query.get("nonce"), code_challenge=query["code_challenge"],
                                       scope=query.get("scope", ""), audience=query.get("audience"))
            params["code"] = code
        if "state" in query:
            params["state"] = query["state"]
        if self.knobs.callback_iss is not None:
            params["iss"] = self.knobs.callback_iss
        separator = "&" if "?" in redirect_uri else "?"
        return web.Response(status=302, headers={"Location": f"{redirect_uri}{separator}{urlencode(params)}"})

    def _client_auth(self, request: web.Request, form: dict[str, str]) -> tuple[str, str | None, str | None]:
        """(method, client_id, secret) as the client presented them."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return "client_secret_basic", unquote(user), unquote(password)
        if "client_secret" in form:
            return "client_secret_post", form.get("client_id"), form["client_secret"]
        return "none", form.get("client_id"), None

    async def _token(self, request: web.Request) -> web.Response:
        self.hits["token"] += 1
        knobs = self.knobs
        form = {k: str(v) for k, v in (await request.post()).items()}
        if form.get("grant_type") == "refresh_token":
            self.refresh_calls += 1
        if knobs.token_delay:
            await asyncio.sleep(knobs.token_delay)
        method, client_id, secret = self._client_auth(request, form)
        self.token_requests.append({**form, "auth_method": method})
        if knobs.token_body is not None or knobs.token_status != 200:
            return web.Response(status=knobs.token_status, text=knobs.token_body or "upstream exploded",
                                content_type="text/html")
        if knobs.token_error:
            return web.json_response({"error": knobs.token_error}, status=400)
        if client_id != self.client_id or secret != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") == "refresh_token":
            return self._refresh(form)
        if form.get("grant_type") != "authorization_code":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        grant = self._grants.get(form.get("code", ""))
        if grant is None or grant.used or grant.redirect_uri != form.get("redirect_uri"):
            return web.json_response({"error": "invalid_grant"}, status=400)
        grant.used = True
        verifier = form.get("code_verifier", "")
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        if not verifier or not hmac.compare_digest(challenge, grant.code_challenge):
            return web.json_response({"error": "invalid_grant", "error_description": "PKCE failed"}, status=400)

        user = self.users[grant.sub]
        access_token = self._issue_access_token(user.sub, grant.audience)
        id_token = self._id_token(user, grant, access_token)
        body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer", "expires_in": 3600,
                                "scope": grant.scope, "id_token": id_token}
        if knobs.refresh_tokens:
            body["refresh_token"] = self._issue_refresh_token(RefreshGrant(
                sub=user.sub, client_id=grant.client_id, scope=grant.scope, audience=grant.audience,
                nonce=grant.nonce, sid=self.session_ids[-1], family=secrets.token_urlsafe(8), issued_at=0.0))
        return web.json_response(body)

    def _issue_access_token(self, sub: str, audience: str | None) -> str:
        if self.knobs.access_token_jwt:
            aud: str | list[str] = [audience, f"{self.base}/userinfo"] if audience else self.client_id
            return self.access_token(sub, aud=aud)
        access_token = secrets.token_urlsafe(32)
        self._access_tokens[access_token] = sub
        return access_token

    def _issue_refresh_token(self, grant: RefreshGrant) -> str:
        token = "rt-" + secrets.token_urlsafe(24)
        grant.issued_at = time.time()
        self.refresh_grants[token] = grant
        return token

    def _refreshable(self, grant: RefreshGrant) -> bool:
        ttl = self.knobs.refresh_token_ttl
        return not grant.retired and not grant.revoked and (ttl is None or time.time() < grant.issued_at + ttl)

    def _refresh(self, form: dict[str, str]) -> web.Response:
        """The refresh token grant (RFC 6749 6; OIDC Core 12): a new access token, maybe a new ID token
        describing the user as they are now, and under rotation a new refresh token."""
        knobs = self.knobs
        grant = self.refresh_grants.get(form.get("refresh_token", ""))
        if grant is None or grant.client_id != self.client_id:
            return web.json_response({"error": "invalid_grant"}, status=400)
        if grant.retired and knobs.reuse_revokes_family:
            for other in self.refresh_grants.values():
                if other.family == grant.family:
                    other.revoked = True
        if not self._refreshable(grant):
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "refresh token expired, revoked or reused"}, status=400)
        user = self.users[grant.sub]
        access_token = self._issue_access_token(user.sub, grant.audience)
        body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer", "expires_in": 3600,
                                "scope": grant.scope}
        if knobs.refresh_id_token:
            login = Grant(sub=user.sub, client_id=grant.client_id, redirect_uri="", nonce=grant.nonce,
                          code_challenge="", scope=grant.scope, audience=grant.audience)
            body["id_token"] = self._id_token(user, login, access_token, sid=grant.sid,
                                              sub=knobs.refresh_id_token_sub)
        if knobs.rotate_refresh_tokens:
            grant.retired = True
            body["refresh_token"] = self._issue_refresh_token(
                RefreshGrant(sub=grant.sub, client_id=grant.client_id, scope=grant.scope, audience=grant.audience,
                             nonce=grant.nonce, sid=grant.sid, family=grant.family, issued_at=0.0))
        return web.json_response(body)

    def _id_token(self, user: FakeUser, grant: Grant, access_token: str, *, sid: str | None = None,
                  sub: str | None = None) -> str:
        """An ID token for ``user``: a new provider session (``sid``) at sign-in; on a refresh, ``sid`` names
        the sign-in's session and the login's nonce is repeated (as Keycloak does)."""
        knobs = self.knobs
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": knobs.id_token_iss or self.issuer,
            "sub": sub or user.sub,
            "aud": knobs.id_token_aud if knobs.id_token_aud is not None else grant.client_id,
            "iat": now + knobs.id_token_iat,
            "exp": now + knobs.id_token_exp,
            "auth_time": now,
            "at_hash": at_hash("tampered" if knobs.bad_at_hash else access_token),
            **user.standard_claims(),
        }
        if sid is None:
            sid = f"sid-{len(self.session_ids) + 1}"
            self.session_ids.append(sid)
        claims["sid"] = sid
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        if knobs.id_token_nonce is not None:
            claims["nonce"] = knobs.id_token_nonce
        if knobs.id_token_azp is not None:
            claims["azp"] = knobs.id_token_azp
        for claim in knobs.id_token_omit:
            claims.pop(claim, None)
        return self.sign(claims, alg=knobs.id_token_alg, kid=knobs.id_token_kid)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        if self.knobs.jwks_status != 200:
            return web.Response(status=self.knobs.jwks_status, text="jwks is down")
        keys = []
        for kid, key in self._keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys})

    async def _userinfo(self, request: web.Request) -> web.Response:
        self.hits["userinfo"] += 1
        header = request.headers.get("Authorization", "")
        sub = self._access_tokens.get(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None
        if sub is None:
            return web.json_response({"error": "invalid_token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if self.knobs.userinfo_status != 200:
            return web.Response(status=self.knobs.userinfo_status, text="userinfo is down")
        user = self.users[sub]
        return web.json_response({"sub": self.knobs.userinfo_sub or user.sub, **user.standard_claims(),
                                  **user.userinfo_only})

    async def _logout(self, request: web.Request) -> web.Response:
        self.hits["logout"] += 1
        self.logout_requests.append(dict(request.query))
        target = request.query.get("post_logout_redirect_uri")
        if target:
            return web.Response(status=302, headers={"Location": target})
        return web.Response(text="signed out")


async def browser_login(provider: Provider, secrets: LoginSecrets, redirect_uri: str = REDIRECT_URI) -> Callback:
    """What the browser does: open the authorization URL at the fake (no redirects followed), and bring
    back the query of the redirect to ``redirect_uri`` as a :class:`Callback`."""
    url = await provider.authorization_url(redirect_uri=redirect_uri, secrets=secrets)
    async with aiohttp.ClientSession() as browser, browser.get(url, allow_redirects=False) as response:
        body = await response.text()
        assert response.status == 302, f"authorize answered {response.status}: {body}"
        location = response.headers["Location"]
    back, expected = urlsplit(location), urlsplit(redirect_uri)
    assert (back.scheme, back.netloc, back.path) == (expected.scheme, expected.netloc, expected.path), location
    return Callback(params=dict(parse_qsl(back.query, keep_blank_values=True)), cookies={})
