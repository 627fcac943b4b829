"""The ``Provider`` protocol every upstream implements, the ``Identity`` it returns, and shared pieces.

An upstream turns a browser's round trip through an identity provider into a verified ``Identity``.
The gateway owns everything around it (login attempts, cookies, sessions, policy); a provider only:

1. builds the URL that starts the login (:meth:`Provider.authorization_url`),
2. turns the callback into an identity (:meth:`Provider.redeem`), verifying everything it received,
3. optionally names a URL that ends the upstream session (:meth:`Provider.logout_url`),
4. optionally verifies a bearer JWT the provider issued (:meth:`Provider.verify_bearer`),
5. optionally asks the provider again, with a refresh token, whether it still vouches for the user
   (:class:`Refreshing`).

Providers never import ``aiohttp.web`` or anything from ``gateway``; they receive a shared
``aiohttp.ClientSession`` and must bound every call with ``timeout``. Failures raise
:class:`ProviderError` with a ``reason`` the gateway maps to a page; messages never hold a code, token
or secret.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

import aiohttp


class FailureReason(enum.Enum):
    """Why a login through an upstream failed (the gateway picks the page and status from it)."""

    ACCESS_DENIED = "access_denied"
    """The user or the provider refused (``error=access_denied``, consent declined, not in org)."""

    UNAVAILABLE = "unavailable"
    """The provider could not be reached, timed out or answered 5xx / garbage."""

    INVALID = "invalid"
    """What came back failed verification (signature, iss, aud, nonce, expiry, unverified email...)."""


class ProviderError(Exception):
    """A login through an upstream failed; ``reason`` says how, the message is safe to log and show."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified user as one upstream describes them.

    ``subject`` is stable and never reassigned by the provider (OIDC ``sub``, GitHub numeric id): the
    gateway keys users on ``(upstream name, subject)``. ``email`` is "" when unknown; it is only to be
    trusted for policy when ``email_verified``. ``groups`` are the provider's own group/role/permission
    names (GitHub: ``org`` and ``org/team``). ``mfa`` is True when the provider says a second factor was
    used (``amr``/``acr``). ``claims`` holds the raw claims for mapping and debugging.
    """

    subject: str
    email: str = ""
    email_verified: bool = False
    name: str = ""
    username: str = ""
    groups: tuple[str, ...] = ()
    mfa: bool = False
    claims: Mapping[str, Any] = field(default_factory=dict)
    id_token: str = field(default="", repr=False)
    """The raw ID token, kept only to hint the provider's end-session endpoint at logout."""
    session_id: str = ""
    """The provider's own session at sign-in (OIDC ``sid``), named again by a back-channel logout; "" when
    the provider gives none."""
    refresh_token: str = field(default="", repr=False)
    """The refresh token the provider issued with this sign-in or refresh ("" when none): what a
    :class:`Refreshing` provider takes to vouch for the user again later. Kept sealed, never logged."""


@dataclass(frozen=True, slots=True)
class LoginSecrets:
    """Per-attempt secrets the gateway generates and keeps server-side for one login attempt."""

    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True, slots=True)
class Callback:
    """What the browser brought back to ``/callback/<name>``: the query parameters and its cookies.

    ``cookies`` matter to upstreams that hand over through a shared cookie (vouch-proxy).
    """

    params: Mapping[str, str]
    cookies: Mapping[str, str]


class Provider(Protocol):
    """One configured upstream. Instances are built by :func:`build_provider` and live for the app."""

    type_name: ClassVar[str]
    name: str
    display_name: str

    async def authorization_url(self, *, redirect_uri: str, secrets: LoginSecrets) -> str:
        """The URL to send the browser to; raises ProviderError(UNAVAILABLE) if discovery fails."""

    async def redeem(self, *, callback: Callback, redirect_uri: str, secrets: LoginSecrets) -> Identity:
        """Verify the callback (state was already checked by the gateway) and return the identity.

        Must check ``error`` parameters, the RFC 9207 ``iss`` parameter when present, redeem the code
        with the PKCE verifier, validate every token fully before using it. Raises ProviderError.
        """

    async def logout_url(self, *, return_to: str, id_token: str) -> str | None:
        """Where to send the browser to end the upstream session too, or None when unsupported."""

    async def verify_bearer(self, token: str) -> Identity | None:
        """Verify a JWT access token this provider issued (signature, iss, aud, exp); None if not
        supported or not valid. Never raises for a bad token; may raise ProviderError(UNAVAILABLE)."""


@dataclass(frozen=True, slots=True)
class LogoutNotice:
    """A verified OIDC back-channel logout: end every session of ``subject`` at this upstream, or only
    those begun in the provider session ``session_id`` (at least one of the two is set).

    ``token_id`` (the logout token's ``jti``) is single use: the gateway refuses a second notice with
    the same id until ``expires_at`` (Unix time), after which the token itself is no longer accepted.
    """

    subject: str
    session_id: str
    token_id: str
    expires_at: float


class BackChannelLogout(Protocol):
    """A provider that can tell the gateway, server to server, that a user signed out upstream
    (OpenID Connect Back-Channel Logout 1.0)."""

    async def verify_logout_token(self, token: str) -> LogoutNotice:
        """Verify a logout token as the spec's section 2.6 says (signature from the provider's keys,
        ``iss``, ``aud``, ``iat``, ``exp``, ``jti``, the logout event, ``sub`` or ``sid``, no ``nonce``).

        Raises ProviderError(INVALID) for a token that fails any check, ProviderError(UNAVAILABLE) when
        the provider's keys cannot be fetched. Does not check that ``jti`` is new: that is the gateway's.
        """


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What a refresh brought back: the refresh token to use next time (the same one when the provider
    did not rotate it) and, when the provider said who the user is now, their identity.

    ``identity`` is None when the provider renewed the grant but described nobody (no ID token in the
    token response and no userinfo endpoint): the user is still vouched for, with what the gateway knew.
    """

    refresh_token: str
    identity: Identity | None


class Refreshing(Protocol):
    """A provider that can be asked again, without the browser, whether it still vouches for a user:
    the OAuth 2.0 refresh token grant (RFC 6749 section 6; OpenID Connect Core section 12)."""

    async def refresh(self, refresh_token: str, *, subject: str) -> Refreshed:
        """Redeem ``refresh_token`` for a new grant and re-read the user it belongs to.

        ``subject`` is the user the token was issued for: an ID token or userinfo that names anyone else
        is INVALID. Every check of :meth:`Provider.redeem` applies again (signature, ``iss``, ``aud``,
        required claims, organisation membership...), except the nonce, which a refresh does not carry.

        Raises ProviderError: ACCESS_DENIED or INVALID when the provider no longer vouches (the grant is
        expired or revoked, ``invalid_grant``; the user lost a required claim or membership) -- the
        gateway then ends the session; UNAVAILABLE when the provider could not be asked (network, 5xx,
        garbage) -- the gateway tries again later and the session lives on until its expiry meanwhile.
        Messages never hold a token.
        """


class ProviderFactory(Protocol):
    """A provider class: validates its config table and builds instances."""

    type_name: str
    issues_bearer_jwts: bool
    """True when :meth:`Provider.verify_bearer` can accept a JWT this type of upstream issued, so that its
    upstreams may be listed in ``check.jwt_upstreams``."""

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        """Every key ``[upstreams.<name>]`` may hold for this type, ``type`` included.

        Derived from the dataclass(es) the table is parsed into (see :func:`config_keys`), so a key is
        accepted exactly when it is read: :meth:`config_problems` reports every other key as unknown.
        """

    @classmethod
    def config_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        """Every problem with ``[upstreams.<name>]`` (each prefixed with ``upstreams.<name>``)."""

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any], http: aiohttp.ClientSession) -> Provider:
        """Build the provider from a config table that :meth:`config_problems` accepted."""


# ---- shared helpers for implementations -------------------------------------------------------------

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
"""Upstream calls never wait longer than this unless configured (``timeout`` key, seconds)."""


def config_str(config: Mapping[str, Any], key: str, default: str = "") -> str:
    """A string config value (the table was validated; missing keys give ``default``)."""
    value = config.get(key, default)
    return value if isinstance(value, str) else default


def config_list(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """A list-of-strings config value as a tuple (a single string becomes a one-item tuple)."""
    value = config.get(key, ())
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def require_keys(name: str, config: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """Problems for required string keys that are missing or empty."""
    return [f"upstreams.{name}.{key}: required" for key in keys
            if not isinstance(config.get(key), str) or not config.get(key)]


def config_keys(*definitions: type) -> frozenset[str]:
    """``type`` plus the field names of the config dataclasses a provider parses its table into.

    The one source of a provider type's allowed keys: a key is allowed because a field reads it, so the
    allowed set cannot drift from what the provider uses.
    """
    return frozenset({"type", *(f.name for d in definitions for f in dataclasses.fields(d))})


def closest_key(key: str, known: Iterable[str]) -> str | None:
    """The known key ``key`` is most likely a typo of (``difflib`` similarity), or None when none is close.

    Compare bare keys, not dotted paths or variable names: a shared prefix (``session.``, ``GATEWAY_``)
    makes unrelated names look alike.
    """
    matches = difflib.get_close_matches(key, sorted(known), n=1)
    return matches[0] if matches else None


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """``"; did you mean 'hosted_domain'?"`` for the closest known key, or ``""`` when none is close."""
    match = closest_key(key, known)
    return f"; did you mean {match!r}?" if match else ""


def unknown_key_problem(where: str, key: str, known: Collection[str]) -> str:
    """The problem for one unknown key: ``"<where>: unknown setting; did you mean 'x'?"``.

    ``where`` names the key in the user's terms (``upstreams.corp.hosted_domian``); suggestions are in
    the same terms as ``known``. Without a close match the message lists the known keys (when few enough
    to read).
    """
    hint = did_you_mean(key, known)
    if not hint and len(known) <= 40:
        hint = f" (expected one of {', '.join(sorted(known))})"
    return f"{where}: unknown setting{hint}"


def unknown_key_problems(name: str, config: Mapping[str, Any], known: Collection[str]) -> list[str]:
    """One problem per key of ``[upstreams.<name>]`` not in ``known`` (a typo would otherwise be silently
    ignored, which for a restriction such as ``hosted_domain`` or ``orgs`` switches it off)."""
    return [unknown_key_problem(f"upstreams.{name}.{key}", key, known) for key in config if key not in known]


def timeout_from(config: Mapping[str, Any]) -> aiohttp.ClientTimeout:
    """The per-call timeout: ``timeout`` seconds from config, else :data:`DEFAULT_TIMEOUT`."""
    value = config.get("timeout")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return aiohttp.ClientTimeout(total=float(value), connect=min(float(value), 5.0))
    return DEFAULT_TIMEOUT


def url_problem(value: object, *, insecure_ok: bool) -> str:
    """Why ``value`` is not a usable upstream base URL ("" when it is).

    https is required because client secrets, codes, tokens and session cookies cross it; plain http
    only with ``allow_insecure_http = true`` (tests and local development), as for OIDC upstreams.
    """
    if not isinstance(value, str) or not value:
        return "expected an absolute URL"
    parts = urlsplit(value)
    if parts.scheme == "http" and not insecure_ok:
        return "must use https (allow_insecure_http = true permits http for tests and development)"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"expected an absolute https URL, got {value!r}"
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return "must not hold credentials, a query or a fragment"
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return f"bad port in {value!r}"
    return ""


def timeout_problems(prefix: str, value: object) -> list[str]:
    """Problems with a ``timeout`` setting (seconds, a positive number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 300:
        return [f"{prefix}.timeout: expected a number of seconds between 0 and 300"]
    return []
