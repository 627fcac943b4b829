"""OpenID Connect upstream: discovery, authorization code flow with PKCE S256, full ID token validation.

One :class:`OIDCProvider` serves any compliant provider; :mod:`upstreams.presets` only changes defaults.
Protocol parameters are built with authlib's framework-neutral helpers, every JWT is verified with
PyJWT against keys fetched from the provider's ``jwks_uri`` over the shared ``aiohttp.ClientSession``.
No token is used before it has been verified: signature (allow-listed algorithms that fit the key),
``iss``, ``aud``/``azp``, ``exp``, ``iat`` and ``nonce``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiohttp
import jwt
from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped]
    prepare_grant_uri,
    prepare_token_request,
)
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]

from upstreams.base import (
    DEFAULT_TIMEOUT,
    Callback,
    FailureReason,
    Identity,
    LoginSecrets,
    ProviderError,
    config_keys,
    config_list,
    config_str,
    timeout_from,
    unknown_key_problems,
)

DEFAULT_SCOPES: Final = ("openid", "email", "profile")
DEFAULT_ALGORITHMS: Final = ("RS256", "ES256", "PS256")

# alg -> (JWK kty, JWK crv or None, hash used for at_hash). Symmetric (HS*) and "none" are absent on
# purpose: a public JWKS can never hold a secret we share with the provider.
SIGNING_ALGORITHMS: Final[Mapping[str, tuple[str, str | None, str]]] = {
    "RS256": ("RSA", None, "sha256"), "RS384": ("RSA", None, "sha384"), "RS512": ("RSA", None, "sha512"),
    "PS256": ("RSA", None, "sha256"), "PS384": ("RSA", None, "sha384"), "PS512": ("RSA", None, "sha512"),
    "ES256": ("EC", "P-256", "sha256"), "ES384": ("EC", "P-384", "sha384"), "ES512": ("EC", "P-521", "sha512"),
    "EdDSA": ("OKP", "Ed25519", "sha512"),
}

MFA_AMR_VALUES: Final = frozenset({
    "mfa",                                          # the provider says so outright
    "otp", "hwk", "sc", "sms", "tel",               # possession factors (RFC 8176)
    "fpt", "face", "iris", "retina", "vbm",         # inherence factors (RFC 8176)
})
"""``amr`` values that prove more than a password. Knowledge-only (``pwd``, ``pin``, ``kba``) and
context values (``geo``, ``rba``, ``wia``, ``swk``, ``user``, ``pop``) do not count."""

RESERVED_AUTH_PARAMS: Final = frozenset({
    "response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge",
    "code_challenge_method",
})
"""Authorization parameters the flow owns; ``extra_auth_params`` may not override them."""

CLIENT_AUTH_POST: Final = "client_secret_post"
CLIENT_AUTH_BASIC: Final = "client_secret_basic"
TOKEN_ENDPOINT_AUTH_METHODS: Final = (CLIENT_AUTH_POST, CLIENT_AUTH_BASIC)

DISCOVERY_TTL: Final = 3600.0
"""Seconds a discovery document is used before it is fetched again."""
JWKS_TTL: Final = 3600.0
"""Seconds a key set is used before it is fetched again (retired keys stop working after this)."""
RETRY_AFTER_FAILURE: Final = 30.0
"""After a failed refresh, the last good document or key set is served this long before trying again."""
JWKS_REFETCH_INTERVAL: Final = 10.0
"""An unknown ``kid`` refetches the key set at most once per this many seconds (bounds attacker load)."""
MAX_RESPONSE_BYTES: Final = 1 << 20
MAX_TOKEN_CHARS: Final = 16_384

_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_JWS_COMPACT = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_HOSTNAME = re.compile(r"(?=.{1,253}(:|$))[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*(?::[0-9]{1,5})?")


class _Rejected(Exception):
    """A token failed verification; the message is safe to show (no token, code or secret)."""


@dataclass(frozen=True, slots=True)
class OIDCSettings:
    """A validated ``[upstreams.<name>]`` table for an OIDC provider (see :meth:`OIDCProvider.parse_config`).

    Each field is read from the config key of the same name, and these fields (with ``type`` and a
    preset's own terms) are the only keys an OIDC table may hold: see :meth:`OIDCProvider.config_keys`.
    """

    issuer: str
    client_id: str
    client_secret: str = ""
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    display_name: str = ""
    groups_claim: str = "groups"
    groups_from_access_token: bool = False
    audience: str = ""
    extra_auth_params: tuple[tuple[str, str], ...] = ()
    allowed_algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    token_endpoint_auth: str = CLIENT_AUTH_POST
    timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT
    clock_skew: float = 60.0
    bearer_audience: str = ""
    end_session: bool = True
    logout_endpoint: str = ""
    email_claim: str = "email"
    require_verified_email: bool = True
    trust_unverified_email: bool = False
    mfa_acr_values: tuple[str, ...] = ()
    required_claims: tuple[tuple[str, str], ...] = ()
    allow_insecure_http: bool = False


@dataclass(frozen=True, slots=True)
class Discovery:
    """The parts of ``/.well-known/openid-configuration`` the flow uses."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""
    end_session_endpoint: str = ""
    iss_parameter_supported: bool = False


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes


class OIDCProvider:
    """An OpenID Connect provider found by discovery; implements ``Provider`` and ``ProviderFactory``.

    Caches (discovery, key set) live on the instance; one instance serves every login concurrently.
    """

    type_name: ClassVar[str] = "oidc"
    default_display_name: ClassVar[str] = ""
    username_claims: ClassVar[tuple[str, ...]] = ("preferred_username", "nickname")
    bearer_audience_claim: ClassVar[str] = "aud"
    """Claim that must hold ``bearer_audience`` in a bearer token (Cognito's access tokens use ``client_id``)."""
    bearer_use: ClassVar[str] = ""
    """When set, a bearer token's ``token_use`` claim must equal it (Cognito: ``access``)."""
    preset_terms: ClassVar[type | None] = None
    """A preset's dataclass of its own keys (``domain``, ``realm``...), allowed besides OIDCSettings'."""

    def __init__(self, name: str, settings: OIDCSettings, http: aiohttp.ClientSession, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.display_name = settings.display_name or self.default_display_name or name
        self.settings = settings
        self._http = http
        self._clock = clock
        self._discovery: Discovery | None = None
        self._discovery_until = 0.0
        self._discovery_lock = asyncio.Lock()
        self._jwks: tuple[dict[str, Any], ...] | None = None
        self._jwks_until = 0.0
        self._jwks_generation = 0
        self._jwks_refetch_not_before = 0.0
        self._jwks_lock = asyncio.Lock()
        self._keys: dict[tuple[str, str], jwt.PyJWK] = {}

    # ---- config -------------------------------------------------------------------------------------

    @classmethod
    def with_defaults(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config table with this provider type's defaults filled in (presets derive ``issuer``)."""
        return dict(config)

    @classmethod
    def issuer_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        """Problems with what the issuer is derived from (presets: ``domain``, ``realm``...)."""
        return [] if config.get("issuer") is not None else [f"upstreams.{name}.issuer: required"]

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        """``type``, the fields of :class:`OIDCSettings` and those of the preset's :attr:`preset_terms`."""
        return config_keys(OIDCSettings, *(() if cls.preset_terms is None else (cls.preset_terms,)))

    @classmethod
    def config_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        """Every problem with ``[upstreams.<name>]``, each prefixed with ``upstreams.<name>``.

        Unknown keys come first, with a did-you-mean suggestion: a misspelt restriction (``hosted_domian``,
        ``required_claim``) would otherwise be ignored and the restriction silently off.
        """
        problems = unknown_key_problems(name, config, cls.config_keys())
        problems += cls.issuer_problems(name, config)
        merged = cls.with_defaults(config)
        prefix = f"upstreams.{name}"

        def bad(key: str, expected: str) -> None:
            problems.append(f"{prefix}.{key}: expected {expected}, got {merged[key]!r}")

        for key in ("allow_insecure_http", "groups_from_access_token", "end_session", "require_verified_email",
                    "trust_unverified_email"):
            if key in merged and not isinstance(merged[key], bool):
                bad(key, "true or false")
        insecure_ok = merged.get("allow_insecure_http") is True

        for key in ("client_secret", "display_name", "audience", "bearer_audience"):
            if key in merged and not isinstance(merged[key], str):
                bad(key, "a string")
        for key in ("groups_claim", "email_claim"):
            if key in merged and (not isinstance(merged[key], str) or not merged[key]):
                bad(key, "a non-empty string")
        if not isinstance(merged.get("client_id"), str) or not merged["client_id"]:
            problems.append(f"{prefix}.client_id: required")

        issuer = merged.get("issuer")
        if issuer is not None:
            problem = _url_problem(issuer, insecure_ok, allow_query=False)
            if problem:
                problems.append(f"{prefix}.issuer: {problem}")
        if "logout_endpoint" in merged:
            problem = _url_problem(merged["logout_endpoint"], insecure_ok, allow_query=True)
            if problem:
                problems.append(f"{prefix}.logout_endpoint: {problem}")

        if "scopes" in merged:
            scopes = merged["scopes"]
            if not _is_str_list(scopes) or any(not s or any(c.isspace() for c in s) for s in scopes):
                bad("scopes", "a list of scope names without spaces")

        for key in ("extra_auth_params", "required_claims"):
            if key in merged:
                table = merged[key]
                if not isinstance(table, Mapping) or not all(
                        isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
                    bad(key, "a table of strings")
                elif key == "extra_auth_params" and (reserved := sorted(RESERVED_AUTH_PARAMS & set(table))):
                    problems.append(f"{prefix}.{key}: may not set {', '.join(reserved)} (the flow owns them)")

        if "allowed_algorithms" in merged:
            algs = merged["allowed_algorithms"]
            if not _is_str_list(algs) or not algs:
                bad("allowed_algorithms", f"a non-empty list from {', '.join(SIGNING_ALGORITHMS)}")
            else:
                for alg in algs:
                    if alg.lower() == "none":
                        problems.append(f"{prefix}.allowed_algorithms: 'none' is never allowed (unsigned tokens)")
                    elif alg.upper().startswith("HS"):
                        problems.append(f"{prefix}.allowed_algorithms: {alg} is not allowed: symmetric "
                                        "algorithms let anyone holding the key set forge tokens")
                    elif alg not in SIGNING_ALGORITHMS:
                        problems.append(f"{prefix}.allowed_algorithms: unknown algorithm {alg!r} "
                                        f"(known: {', '.join(SIGNING_ALGORITHMS)})")

        auth = merged.get("token_endpoint_auth", CLIENT_AUTH_POST)
        if auth not in TOKEN_ENDPOINT_AUTH_METHODS:
            bad("token_endpoint_auth", " or ".join(TOKEN_ENDPOINT_AUTH_METHODS))
        elif auth == CLIENT_AUTH_BASIC and not merged.get("client_secret"):
            problems.append(f"{prefix}.client_secret: required with token_endpoint_auth = client_secret_basic")

        if "timeout" in merged and not _is_number(merged["timeout"], minimum=0.0, exclusive=True):
            bad("timeout", "a positive number of seconds")
        if "clock_skew" in merged and not (_is_number(merged["clock_skew"], minimum=0.0)
                                           and merged["clock_skew"] <= 600):
            bad("clock_skew", "a number of seconds between 0 and 600")
        if "mfa_acr_values" in merged and not _is_str_list(merged["mfa_acr_values"]):
            bad("mfa_acr_values", "a list of strings")
        return problems

    @classmethod
    def parse_config(cls, config: Mapping[str, Any]) -> OIDCSettings:
        """Settings from a config table that :meth:`config_problems` accepted (defaults applied)."""
        merged = cls.with_defaults(config)
        client_id = config_str(merged, "client_id")
        scopes = config_list(merged, "scopes") if "scopes" in merged else DEFAULT_SCOPES
        if "openid" not in scopes:
            scopes = ("openid", *scopes)
        skew = merged.get("clock_skew", 60)

        def flag(key: str, default: bool) -> bool:
            value = merged.get(key, default)
            return value if isinstance(value, bool) else default

        def pairs(key: str) -> tuple[tuple[str, str], ...]:
            table = merged.get(key) or {}
            return tuple((str(k), str(v)) for k, v in table.items()) if isinstance(table, Mapping) else ()

        return OIDCSettings(
            issuer=config_str(merged, "issuer"),
            client_id=client_id,
            client_secret=config_str(merged, "client_secret"),
            scopes=tuple(dict.fromkeys(scopes)),
            display_name=config_str(merged, "display_name"),
            groups_claim=config_str(merged, "groups_claim", "groups") or "groups",
            groups_from_access_token=flag("groups_from_access_token", False),
            audience=config_str(merged, "audience"),
            extra_auth_params=pairs("extra_auth_params"),
            allowed_algorithms=(config_list(merged, "allowed_algorithms") if "allowed_algorithms" in merged
                                else DEFAULT_ALGORITHMS),
            token_endpoint_auth=config_str(merged, "token_endpoint_auth", CLIENT_AUTH_POST),
            timeout=timeout_from(merged),
            clock_skew=float(skew) if _is_number(skew, minimum=0.0) else 60.0,
            bearer_audience=config_str(merged, "bearer_audience") or client_id,
            end_session=flag("end_session", True),
            logout_endpoint=config_str(merged, "logout_endpoint"),
            email_claim=config_str(merged, "email_claim", "email") or "email",
            require_verified_email=flag("require_verified_email", True),
            trust_unverified_email=flag("trust_unverified_email", False),
            mfa_acr_values=config_list(merged, "mfa_acr_values"),
            required_claims=pairs("required_claims"),
            allow_insecure_http=flag("allow_insecure_http", False),
        )

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any], http: aiohttp.ClientSession) -> Self:
        """Build the provider for a config table that :meth:`config_problems` accepted."""
        return cls(name, cls.parse_config(config), http)

    # ---- Provider -----------------------------------------------------------------------------------

    async def authorization_url(self, *, redirect_uri: str, secrets: LoginSecrets) -> str:
        """The provider's authorize URL with PKCE S256, ``state``, ``nonce`` and the configured scopes.

        Raises ProviderError(UNAVAILABLE) when discovery fails and no earlier document is cached.
        """
        discovery = await self.discovery()
        extras = dict(self.settings.extra_auth_params)
        if self.settings.audience:
            extras.setdefault("audience", self.settings.audience)
        return str(prepare_grant_uri(
            discovery.authorization_endpoint, self.settings.client_id, "code", redirect_uri,
            list(self.settings.scopes), secrets.state, nonce=secrets.nonce,
            code_challenge=create_s256_code_challenge(secrets.code_verifier), code_challenge_method="S256",
            **extras))

    async def redeem(self, *, callback: Callback, redirect_uri: str, secrets: LoginSecrets) -> Identity:
        """Check the callback, redeem the code with the PKCE verifier, verify the ID token, build the identity.

        Raises ProviderError: ACCESS_DENIED when the user or provider refused (or a required claim such as
        Google's ``hd`` does not match), INVALID when anything fails verification, UNAVAILABLE when the
        provider cannot be reached or answers garbage.
        """
        params = callback.params
        if "error" in params:
            error = _safe_code(params["error"])
            reason = (FailureReason.ACCESS_DENIED if error == "access_denied"
                      else FailureReason.UNAVAILABLE if error in ("server_error", "temporarily_unavailable")
                      else FailureReason.INVALID)
            raise ProviderError(reason, f"{self.name}: the provider answered error={error}")
        issuer_param = params.get("iss")
        if issuer_param is not None and issuer_param != self.settings.issuer:
            raise ProviderError(FailureReason.INVALID,
                                f"{self.name}: the callback comes from another issuer (RFC 9207 iss mismatch)")
        discovery = await self.discovery()
        if issuer_param is None and discovery.iss_parameter_supported:
            raise ProviderError(FailureReason.INVALID,
                                f"{self.name}: the callback lacks the iss parameter the provider promises")
        code = params.get("code", "")
        if not code:
            raise ProviderError(FailureReason.INVALID, f"{self.name}: the callback carries no code")

        tokens = await self._redeem_code(discovery, code, redirect_uri, secrets.code_verifier)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise ProviderError(FailureReason.INVALID, f"{self.name}: the token response holds no ID token")
        access_token = tokens.get("access_token")
        access_token = access_token if isinstance(access_token, str) else ""
        token_type = tokens.get("token_type")
        if access_token and isinstance(token_type, str) and token_type.lower() != "bearer":
            raise ProviderError(FailureReason.INVALID, f"{self.name}: unsupported token type {_safe_code(token_type)}")

        try:
            id_claims = await self._verify_id_token(id_token, nonce=secrets.nonce, access_token=access_token)
        except _Rejected as exc:
            raise ProviderError(FailureReason.INVALID, f"{self.name}: {exc}") from None

        userinfo: dict[str, Any] = {}
        if access_token and discovery.userinfo_endpoint and self._wants_userinfo(id_claims):
            userinfo = await self._userinfo(discovery.userinfo_endpoint, access_token, id_claims["sub"])

        if self.settings.groups_from_access_token:
            try:
                access_claims = await self._access_token_claims(access_token)
            except _Rejected as exc:
                raise ProviderError(FailureReason.INVALID, f"{self.name}: {exc}") from None
            groups = _strings_at(access_claims, self.settings.groups_claim)
        else:
            groups = _strings_at({**userinfo, **id_claims}, self.settings.groups_claim)

        claims = {**userinfo, **id_claims}
        for claim, expected in self.settings.required_claims:
            if claims.get(claim) != expected:
                raise ProviderError(FailureReason.ACCESS_DENIED,
                                    f"{self.name}: the account's {claim} is not {expected}")
        email, verified = self._email(id_claims, userinfo)
        if email and not verified and self.settings.require_verified_email:
            raise ProviderError(FailureReason.INVALID,
                                f"{self.name}: the provider has not verified the user's email address")
        return self._identity(claims, email=email, email_verified=verified, groups=groups, id_token=id_token)

    async def logout_url(self, *, return_to: str, id_token: str) -> str | None:
        """RP-initiated logout: ``end_session_endpoint`` (or ``logout_endpoint``) with the return target.

        None when ``end_session`` is off, the provider has no such endpoint, or discovery is unavailable
        (the gateway's own logout must not depend on the provider being up).
        """
        if not self.settings.end_session:
            return None
        endpoint = self.settings.logout_endpoint
        if not endpoint:
            try:
                endpoint = (await self.discovery()).end_session_endpoint
            except ProviderError:
                return None
        if not endpoint:
            return None
        params = [("client_id", self.settings.client_id), ("post_logout_redirect_uri", return_to)]
        if id_token:
            params.append(("id_token_hint", id_token))
        return add_query(endpoint, params)

    async def verify_bearer(self, token: str) -> Identity | None:
        """Verify a JWT access token this provider issued: alg, signature, ``iss``, audience, ``exp``.

        None for anything that is not a valid token from this issuer (checked without network first).
        Raises ProviderError(UNAVAILABLE) only when the key set cannot be fetched.
        """
        if len(token) > MAX_TOKEN_CHARS or not _JWS_COMPACT.fullmatch(token):
            return None
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        if unverified.get("iss") != self.settings.issuer:
            return None
        audience = self.settings.bearer_audience
        by_aud = self.bearer_audience_claim == "aud"
        try:
            claims = await self._verify_jwt(token, what="bearer token", audience=audience if by_aud else None,
                                            require=("exp", "iss", "sub"))
        except _Rejected:
            return None
        if not by_aud and claims.get(self.bearer_audience_claim) != audience:
            return None
        if self.bearer_use and claims.get("token_use") != self.bearer_use:
            return None
        email, verified = self._email(claims, {})
        return self._identity(claims, email=email, email_verified=verified,
                              groups=_strings_at(claims, self.settings.groups_claim), id_token="")

    # ---- discovery and keys -------------------------------------------------------------------------

    async def discovery(self) -> Discovery:
        """The provider's discovery document, cached for :data:`DISCOVERY_TTL`.

        A failed refresh keeps serving the last good document; raises ProviderError(UNAVAILABLE) only
        when there is none.
        """
        if self._discovery is not None and self._clock() < self._discovery_until:
            return self._discovery
        async with self._discovery_lock:
            if self._discovery is not None and self._clock() < self._discovery_until:
                return self._discovery
            try:
                document = await self._fetch_discovery()
            except ProviderError:
                if self._discovery is None:
                    raise
                self._discovery_until = self._clock() + RETRY_AFTER_FAILURE
                return self._discovery
            self._discovery = document
            self._discovery_until = self._clock() + DISCOVERY_TTL
            return document

    async def _fetch_discovery(self) -> Discovery:
        issuer = self.settings.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._json_object(await self._request("GET", url, what="discovery"), what="discovery")
        if document.get("issuer") != issuer:
            raise ProviderError(FailureReason.UNAVAILABLE,
                                f"{self.name}: the discovery document names issuer "
                                f"{str(document.get('issuer'))[:200]!r}, expected {issuer!r}")

        def endpoint(key: str, required: bool) -> str:
            value = document.get(key)
            if isinstance(value, str) and not _url_problem(value, self.settings.allow_insecure_http,
                                                           allow_query=True):
                return value
            if required:
                raise ProviderError(FailureReason.UNAVAILABLE,
                                    f"{self.name}: the discovery document lacks a usable {key}")
            return ""

        return Discovery(
            authorization_endpoint=endpoint("authorization_endpoint", True),
            token_endpoint=endpoint("token_endpoint", True),
            jwks_uri=endpoint("jwks_uri", True),
            userinfo_endpoint=endpoint("userinfo_endpoint", False),
            end_session_endpoint=endpoint("end_session_endpoint", False),
            iss_parameter_supported=document.get("authorization_response_iss_parameter_supported") is True,
        )

    async def _current_jwks(self) -> tuple[tuple[dict[str, Any], ...], int]:
        """The cached key set (fetched when absent or stale) and its generation number."""
        if self._jwks is not None and self._clock() < self._jwks_until:
            return self._jwks, self._jwks_generation
        async with self._jwks_lock:
            if self._jwks is None or self._clock() >= self._jwks_until:
                try:
                    await self._refresh_jwks_locked()
                except ProviderError:
                    if self._jwks is None:
                        raise
                    self._jwks_until = self._clock() + RETRY_AFTER_FAILURE
            assert self._jwks is not None
            return self._jwks, self._jwks_generation

    async def _refresh_jwks_locked(self) -> None:
        discovery = await self.discovery()
        document = self._json_object(await self._request("GET", discovery.jwks_uri, what="key set"),
                                     what="key set")
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise ProviderError(FailureReason.UNAVAILABLE, f"{self.name}: the key set has no keys list")
        # Symmetric keys have no place in a published key set: drop them rather than ever using one.
        self._jwks = tuple(k for k in keys if isinstance(k, dict) and isinstance(k.get("kty"), str)
                           and k["kty"] != "oct" and k.get("use", "sig") == "sig")
        self._jwks_until = self._clock() + JWKS_TTL
        self._jwks_generation += 1
        self._keys.clear()

    async def _signing_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The verification key for ``kid``; an unknown kid refetches the key set once (rate-limited)."""
        keys, generation = await self._current_jwks()
        jwk = _find_jwk(keys, kid, alg)
        if jwk is None and kid is not None:
            async with self._jwks_lock:
                if self._jwks is not None and self._jwks_generation != generation:
                    keys = self._jwks  # another login refreshed while we waited
                    jwk = _find_jwk(keys, kid, alg)
                if jwk is None and self._clock() >= self._jwks_refetch_not_before:
                    self._jwks_refetch_not_before = self._clock() + JWKS_REFETCH_INTERVAL
                    await self._refresh_jwks_locked()
                    assert self._jwks is not None
                    jwk = _find_jwk(self._jwks, kid, alg)
        if jwk is None:
            raise _Rejected("the token is signed with a key the provider does not publish")
        cache_key = (str(jwk.get("kid", "")), alg)
        key = self._keys.get(cache_key)
        if key is None:
            key = _build_key(jwk, alg)
            self._keys[cache_key] = key
        return key

    # ---- tokens -------------------------------------------------------------------------------------

    async def _verify_jwt(self, token: str, *, what: str, audience: str | None,
                          require: Sequence[str]) -> dict[str, Any]:
        """Claims of a JWT whose alg, signature, ``iss``, audience, ``exp``, ``iat``, ``nbf`` all check out.

        Raises _Rejected with a safe message; ProviderError(UNAVAILABLE) if keys cannot be fetched.
        """
        if len(token) > MAX_TOKEN_CHARS:
            raise _Rejected(f"the {what} is too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _Rejected(f"the {what} is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.allowed_algorithms or alg not in SIGNING_ALGORITHMS:
            raise _Rejected(f"the {what} uses a disallowed algorithm {str(alg)[:20]!r}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _Rejected(f"the {what} has a malformed key id")
        key = await self._signing_key(kid, alg)
        try:
            return jwt.decode(
                token, key, algorithms=[alg], audience=audience, issuer=self.settings.issuer,
                leeway=self.settings.clock_skew,
                options={"require": list(require), "verify_aud": audience is not None,
                         "enforce_minimum_key_length": True})
        except jwt.ExpiredSignatureError:
            raise _Rejected(f"the {what} has expired") from None
        except jwt.ImmatureSignatureError:
            raise _Rejected(f"the {what} is dated in the future (iat/nbf)") from None
        except jwt.InvalidIssuerError:
            raise _Rejected(f"the {what} was issued by another issuer") from None
        except jwt.InvalidAudienceError:
            raise _Rejected(f"the {what} is meant for another audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _Rejected(f"the {what} lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise _Rejected(f"the {what}'s signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise _Rejected(f"the {what} is invalid ({type(exc).__name__})") from None

    async def _verify_id_token(self, id_token: str, *, nonce: str, access_token: str) -> dict[str, Any]:
        """ID token validation per OIDC Core 3.1.3.7 (plus ``at_hash`` when present)."""
        claims = await self._verify_jwt(id_token, what="ID token", audience=self.settings.client_id,
                                        require=("iss", "aud", "exp", "iat", "sub"))
        if "azp" in claims and claims["azp"] != self.settings.client_id:
            raise _Rejected("the ID token was issued to another client (azp)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _Rejected("the ID token has no subject")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
            raise _Rejected("the ID token's nonce does not match this login attempt")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token:
            alg = jwt.get_unverified_header(id_token)["alg"]
            if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, _half_hash(access_token, alg)):
                raise _Rejected("the ID token's at_hash does not match the access token")
        return claims

    async def _access_token_claims(self, access_token: str) -> dict[str, Any]:
        """Verified claims of a JWT access token; {} when the token is opaque (no groups then)."""
        if not access_token or not _JWS_COMPACT.fullmatch(access_token):
            return {}
        try:
            jwt.get_unverified_header(access_token)
        except jwt.PyJWTError:
            return {}
        return await self._verify_jwt(access_token, what="access token", audience=self.settings.audience or None,
                                      require=("iss", "exp"))

    # ---- HTTP ---------------------------------------------------------------------------------------

    async def _redeem_code(self, discovery: Discovery, code: str, redirect_uri: str,
                           code_verifier: str) -> dict[str, Any]:
        settings = self.settings
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        client: dict[str, str] = {}
        if settings.token_endpoint_auth == CLIENT_AUTH_BASIC and settings.client_secret:
            userpass = f"{quote(settings.client_id, safe='')}:{quote(settings.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(userpass.encode()).decode()
        else:
            client["client_id"] = settings.client_id
            if settings.client_secret:
                client["client_secret"] = settings.client_secret
        body = str(prepare_token_request("authorization_code", code=code, redirect_uri=redirect_uri,
                                         code_verifier=code_verifier, **client))
        response = await self._request("POST", discovery.token_endpoint, what="token endpoint",
                                       data=body, headers=headers)
        if 400 <= response.status < 500:
            error = "unknown"
            with contextlib.suppress(ValueError, AttributeError, RecursionError):
                error = _safe_code(json.loads(response.body).get("error", "unknown"))
            raise ProviderError(FailureReason.INVALID,
                                f"{self.name}: the token endpoint refused the code (HTTP {response.status}, "
                                f"error={error})")
        return self._json_object(response, what="token endpoint")

    async def _userinfo(self, endpoint: str, access_token: str, subject: str) -> dict[str, Any]:
        response = await self._request("GET", endpoint, what="userinfo",
                                       headers={"Authorization": f"Bearer {access_token}",
                                                "Accept": "application/json"})
        if 400 <= response.status < 500:
            raise ProviderError(FailureReason.INVALID,
                                f"{self.name}: the userinfo endpoint refused the access token "
                                f"(HTTP {response.status})")
        userinfo = self._json_object(response, what="userinfo")
        if userinfo.get("sub") != subject:
            raise ProviderError(FailureReason.INVALID, f"{self.name}: userinfo describes another subject")
        return userinfo

    async def _request(self, method: str, url: str, *, what: str, data: str | None = None,
                       headers: Mapping[str, str] | None = None) -> _Response:
        """One bounded call (timeout, body size, no redirects); transport failures become UNAVAILABLE."""
        try:
            async with self._http.request(method, url, data=data, headers=headers, allow_redirects=False,
                                          timeout=self.settings.timeout) as response:
                if response.content_length is not None and response.content_length > MAX_RESPONSE_BYTES:
                    raise ProviderError(FailureReason.UNAVAILABLE, f"{self.name}: the {what} answer is too large")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(65_536):
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise ProviderError(FailureReason.UNAVAILABLE,
                                            f"{self.name}: the {what} answer is too large")
                    chunks.append(chunk)
                return _Response(response.status, b"".join(chunks))
        except TimeoutError:
            raise ProviderError(FailureReason.UNAVAILABLE,
                                f"{self.name}: the {what} did not answer within "
                                f"{self.settings.timeout.total} s") from None
        except aiohttp.ClientError as exc:
            raise ProviderError(FailureReason.UNAVAILABLE,
                                f"{self.name}: could not reach the {what} ({type(exc).__name__})") from None

    def _json_object(self, response: _Response, *, what: str) -> dict[str, Any]:
        """The body as a JSON object; anything but a 200 with a JSON object is UNAVAILABLE."""
        if response.status != 200:
            raise ProviderError(FailureReason.UNAVAILABLE,
                                f"{self.name}: the {what} answered HTTP {response.status}")
        try:
            document = json.loads(response.body)
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            raise ProviderError(FailureReason.UNAVAILABLE, f"{self.name}: the {what} answered something "
                                                           "that is not a JSON object")
        return document

    # ---- identity -----------------------------------------------------------------------------------

    def _wants_userinfo(self, claims: Mapping[str, Any]) -> bool:
        """Whether the ID token lacks something userinfo may supply (email, its verification, name, groups)."""
        email_claim = self.settings.email_claim
        return (email_claim not in claims
                or "email_verified" not in claims
                or not any(c in claims for c in ("name", "preferred_username"))
                or (not self.settings.groups_from_access_token
                    and _claim_at(claims, self.settings.groups_claim) is None))

    def _email(self, primary: Mapping[str, Any], secondary: Mapping[str, Any]) -> tuple[str, bool]:
        """The email and whether it is verified, both taken from the same source.

        A missing ``email_verified`` counts as unverified unless ``trust_unverified_email``.
        """
        key = self.settings.email_claim
        source, other = (primary, secondary) if key in primary else (secondary, primary)
        email = _clean_email(source.get(key))
        if not email:
            return "", False
        flag = source.get("email_verified")
        if flag is None and _clean_email(other.get(key)) == email:
            flag = other.get("email_verified")
        if flag is None:
            return email, self.settings.trust_unverified_email
        return email, flag is True or (isinstance(flag, str) and flag.lower() == "true")

    def _identity(self, claims: Mapping[str, Any], *, email: str, email_verified: bool,
                  groups: tuple[str, ...], id_token: str) -> Identity:
        def first(*keys: str) -> str:
            for key in keys:
                value = claims.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
            return ""

        amr = claims.get("amr")
        amr_values = {v for v in amr if isinstance(v, str)} if isinstance(amr, list) else set()
        acr = claims.get("acr")
        mfa = bool(amr_values & MFA_AMR_VALUES) or (isinstance(acr, str) and acr in self.settings.mfa_acr_values)
        return Identity(
            subject=str(claims["sub"]),
            email=email,
            email_verified=email_verified,
            name=first("name", *self.username_claims),
            username=first(*self.username_claims),
            groups=groups,
            mfa=mfa,
            claims=dict(claims),
            id_token=id_token,
        )


# ---- helpers ------------------------------------------------------------------------------------------

def add_query(url: str, params: Sequence[tuple[str, str]]) -> str:
    """``url`` with ``params`` appended to whatever query it already has."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim named ``path``: a literal key first (``cognito:groups``, ``https://example.com/roles``),
    else a dotted path into nested objects (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _strings_at(claims: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """Group names at ``path``: a string or a list of strings (other values are ignored)."""
    value = _claim_at(claims, path)
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(dict.fromkeys(v for v in value if isinstance(v, str) and v))
    return ()


def _clean_email(value: Any) -> str:
    """A trimmed address with exactly one ``@`` and no whitespace, else ""."""
    if not isinstance(value, str):
        return ""
    email = value.strip()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in email):
        return ""
    return email


def _find_jwk(keys: Sequence[Mapping[str, Any]], kid: str | None, alg: str) -> Mapping[str, Any] | None:
    """The key with ``kid``; without a kid, the only key that fits ``alg`` (ambiguity finds nothing)."""
    if kid is not None:
        return next((k for k in keys if k.get("kid") == kid), None)
    kty = SIGNING_ALGORITHMS[alg][0]
    fitting = [k for k in keys if k.get("kty") == kty]
    return fitting[0] if len(fitting) == 1 else None


def _build_key(jwk: Mapping[str, Any], alg: str) -> jwt.PyJWK:
    """A PyJWK for ``alg`` from a published key, refusing keys whose type, curve or own alg do not fit."""
    kty, crv, _ = SIGNING_ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise _Rejected(f"the token's algorithm {alg} does not fit the published key")
    if "alg" in jwk and jwk["alg"] != alg:
        raise _Rejected(f"the published key is for {str(jwk['alg'])[:20]}, not {alg}")
    try:
        return jwt.PyJWK(dict(jwk), algorithm=alg)
    except jwt.PyJWTError:
        raise _Rejected("the provider publishes a key that cannot be used") from None


def _half_hash(value: str, alg: str) -> str:
    """``at_hash``/``c_hash``: base64url of the left half of the alg's hash of the ASCII value."""
    digest = hashlib.new(SIGNING_ALGORITHMS[alg][2], value.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


def _safe_code(value: Any) -> str:
    """An OAuth error code fit for a message; anything else becomes ``unknown``."""
    return value if isinstance(value, str) and _ERROR_CODE.fullmatch(value) else "unknown"


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def _is_number(value: Any, *, minimum: float, exclusive: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value > minimum if exclusive else value >= minimum


def _url_problem(value: Any, insecure_ok: bool, *, allow_query: bool) -> str:
    """Why ``value`` is not an acceptable absolute https URL ("" when it is)."""
    if not isinstance(value, str) or not value:
        return "expected an absolute URL"
    parts = urlsplit(value)
    if parts.scheme not in (("https", "http") if insecure_ok else ("https",)):
        return ("must use https (allow_insecure_http = true permits http for tests and development)"
                if parts.scheme == "http" else "expected an https URL")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        return "expected an absolute URL with a host and no credentials"
    if parts.fragment or (parts.query and not allow_query):
        return "must not have a query or fragment"
    return ""


def is_hostname(value: Any) -> bool:
    """Whether ``value`` is a DNS host name (optionally with a port), for preset ``domain`` keys."""
    return isinstance(value, str) and bool(_HOSTNAME.fullmatch(value))


__all__ = ["DEFAULT_ALGORITHMS", "DEFAULT_SCOPES", "MFA_AMR_VALUES", "Discovery", "OIDCProvider", "OIDCSettings",
           "add_query", "is_hostname"]
