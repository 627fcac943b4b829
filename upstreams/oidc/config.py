"""OIDC configuration: the settings dataclass, parsing and validation of ``[upstreams.<name>]``.

:class:`OIDCConfig` holds the classmethods a provider type uses for its table; presets override the
hooks (:meth:`OIDCConfig.with_defaults`, :meth:`OIDCConfig.issuer_problems`, :attr:`OIDCConfig.preset_terms`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

import aiohttp

from upstreams.base import (
    DEFAULT_TIMEOUT,
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

RESERVED_AUTH_PARAMS: Final = frozenset({
    "response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge",
    "code_challenge_method",
})
"""Authorization parameters the flow owns; ``extra_auth_params`` may not override them."""

CLIENT_AUTH_POST: Final = "client_secret_post"
CLIENT_AUTH_BASIC: Final = "client_secret_basic"
TOKEN_ENDPOINT_AUTH_METHODS: Final = (CLIENT_AUTH_POST, CLIENT_AUTH_BASIC)

_HOSTNAME = re.compile(r"(?=.{1,253}(:|$))[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*(?::[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class OIDCSettings:
    """A validated ``[upstreams.<name>]`` table for an OIDC provider (see :meth:`OIDCConfig.parse_config`).

    Each field is read from the config key of the same name, and these fields (with ``type`` and a
    preset's own terms) are the only keys an OIDC table may hold: see :meth:`OIDCConfig.config_keys`.
    """

    issuer: str
    """The issuer URL; discovery is read from ``{issuer}/.well-known/openid-configuration``."""
    client_id: str
    """The client id registered with the provider."""
    client_secret: str = ""
    """The client secret (pass it as ``GATEWAY_UPSTREAMS_<NAME>_CLIENT_SECRET[_FILE]``); empty: a public
    client, PKCE only."""
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    """Scopes requested (``openid`` is always added); custom ones such as ``order:read`` pass through."""
    display_name: str = ""
    """The label of this upstream's button on the sign-in page; empty: the preset's name, else the
    upstream's name."""
    groups_claim: str = "groups"
    """Where the user's groups are: a claim name or a dotted path (``realm_access.roles``)."""
    groups_from_access_token: bool = False
    """Read ``groups_claim`` from the (JWT) access token instead of the ID token and userinfo."""
    audience: str = ""
    """Sent as the ``audience`` authorization parameter (Auth0 APIs); the access token's ``aud`` must then
    match it when groups come from the access token."""
    extra_auth_params: tuple[tuple[str, str], ...] = ()
    """Extra authorization request parameters (``prompt``, ``hd``...); never those the flow owns."""
    allowed_algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    """JWT signature algorithms accepted (asymmetric only: never ``none`` or HS*)."""
    token_endpoint_auth: str = CLIENT_AUTH_POST
    """How the client authenticates at the token endpoint: ``client_secret_post`` or ``client_secret_basic``."""
    timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT
    """Seconds any one call to the provider may take (at most 5 of them to connect)."""
    clock_skew: float = 60.0
    """Seconds of clock difference tolerated on ``exp``, ``iat`` and ``nbf`` (at most 600)."""
    bearer_audience: str = ""
    """The ``aud`` a bearer JWT must carry (see ``check.jwt_upstreams``); empty: ``client_id``."""
    end_session: bool = True
    """At sign-out, also end the provider's session (RP-initiated logout) when it has an endpoint for it."""
    logout_endpoint: str = ""
    """The provider's logout URL, when discovery names no ``end_session_endpoint``."""
    email_claim: str = "email"
    """The claim holding the user's email."""
    require_verified_email: bool = True
    """Refuse a sign-in whose email the provider says is not verified."""
    trust_unverified_email: bool = False
    """Count an email as verified when the provider sends no ``email_verified`` at all."""
    mfa_acr_values: tuple[str, ...] = ()
    """``acr`` values that mean a second factor was used (``amr`` values such as ``mfa`` always do)."""
    required_claims: tuple[tuple[str, str], ...] = ()
    """Claims that must have exactly these values, else the sign-in is refused (``tid = "..."``)."""
    allow_insecure_http: bool = False
    """Permit plain http ``issuer`` and ``logout_endpoint`` URLs (tests and local development)."""


class OIDCConfig:
    """The config side of an OIDC provider type: which keys its table holds, their problems, the settings."""

    preset_terms: ClassVar[type | None] = None
    """A preset's dataclass of its own keys (``domain``, ``realm``...), allowed besides OIDCSettings'."""

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
            problem = url_problem(issuer, insecure_ok, allow_query=False)
            if problem:
                problems.append(f"{prefix}.issuer: {problem}")
        if "logout_endpoint" in merged:
            problem = url_problem(merged["logout_endpoint"], insecure_ok, allow_query=True)
            if problem:
                problems.append(f"{prefix}.logout_endpoint: {problem}")

        if "scopes" in merged:
            scopes = merged["scopes"]
            if not is_str_list(scopes) or any(not s or any(c.isspace() for c in s) for s in scopes):
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
            if not is_str_list(algs) or not algs:
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

        if "timeout" in merged and not is_number(merged["timeout"], minimum=0.0, exclusive=True):
            bad("timeout", "a positive number of seconds")
        if "clock_skew" in merged and not (is_number(merged["clock_skew"], minimum=0.0)
                                           and merged["clock_skew"] <= 600):
            bad("clock_skew", "a number of seconds between 0 and 600")
        if "mfa_acr_values" in merged and not is_str_list(merged["mfa_acr_values"]):
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
            clock_skew=float(skew) if is_number(skew, minimum=0.0) else 60.0,
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


def is_str_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def is_number(value: Any, *, minimum: float, exclusive: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value > minimum if exclusive else value >= minimum


def url_problem(value: Any, insecure_ok: bool, *, allow_query: bool) -> str:
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


__all__ = ["CLIENT_AUTH_BASIC", "CLIENT_AUTH_POST", "DEFAULT_ALGORITHMS", "DEFAULT_SCOPES", "RESERVED_AUTH_PARAMS",
           "SIGNING_ALGORITHMS", "TOKEN_ENDPOINT_AUTH_METHODS", "OIDCConfig", "OIDCSettings", "is_hostname",
           "is_number", "is_str_list", "url_problem"]
