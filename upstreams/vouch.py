"""vouch-proxy as an upstream: vouch does the login, the gateway asks vouch's ``/validate`` who it was.

The browser goes to ``{url}/login?url=<our callback>``; vouch runs its own IdP login, sets its
``VouchCookie`` (a JWT, split into ``VouchCookie_1of2``, ``VouchCookie_2of2``... when large) on the
cookie domain it shares with the gateway, and redirects back to our callback. Our ``state`` rides inside
that callback URL, because vouch returns to exactly the URL it was given.

At the callback the gateway forwards the vouch cookies server-to-server to ``{url}/validate``: a 200
names the user in ``X-Vouch-User`` and, when vouch is configured with ``headers.claims``, passes IdP
claims as ``X-Vouch-IdP-Claims-<Claim>`` headers (list claims as ``"a","b"``). vouch's JWT cannot be
revoked, so it is used once here and the gateway's own session is the source of truth afterwards.

Trust assumption: vouch mints its cookie only after its IdP authenticated the user and vouch's own
``domains``/``whiteList`` checks passed, so an ``X-Vouch-User`` that is an email address is treated as
verified -- unless vouch also forwards an ``email_verified`` claim saying ``false``. Deployments whose
vouch IdP hands out unverified emails (some generic OIDC setups) should forward ``email_verified``.

Deployment needs: vouch's host must be inside a vouch ``domains`` entry (``/validate`` checks the
``Host`` header), the gateway's callback host must share vouch's cookie domain, and the gateway's
``return_to`` URLs must be listed in vouch's ``post_logout_redirect_uris`` for logout to come back.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import aiohttp

from upstreams.base import (
    DEFAULT_TIMEOUT,
    Callback,
    FailureReason,
    Identity,
    LoginSecrets,
    Provider,
    ProviderError,
    config_keys,
    config_str,
    require_keys,
    timeout_from,
    timeout_problems,
    unknown_key_problems,
    url_problem,
)

DEFAULT_COOKIE_NAME = "VouchCookie"
DEFAULT_CLAIMS_PREFIX = "X-Vouch-IdP-Claims-"
USER_HEADER = "X-Vouch-User"
MAX_COOKIES = 16
MAX_COOKIE_BYTES = 32 * 1024

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP token (RFC 9110): valid cookie and header names."""
_COOKIE_VALUE_RE = re.compile(r'^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$')
"""RFC 6265 cookie-octets: nothing that could end the value or smuggle another cookie or header."""
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


@dataclass(frozen=True, slots=True)
class VouchSettings:
    """A validated ``type = "vouch"`` table (see :meth:`VouchProvider.parse_config`).

    Each field is read from the config key of the same name; these fields and ``type`` are the only keys
    the table may hold (:meth:`VouchProvider.config_keys`).
    """

    url: str
    """vouch-proxy's URL (its ``/login`` and ``/validate`` are called)."""
    display_name: str = "Single sign-on"
    """The label of this upstream's button on the sign-in page."""
    cookie_name: str = DEFAULT_COOKIE_NAME
    """vouch's cookie name (its ``cookie.name``)."""
    claims_headers_prefix: str = DEFAULT_CLAIMS_PREFIX
    """The prefix of the claim headers vouch's ``/validate`` sends (its ``headers.claimheader``)."""
    groups_claim: str = ""
    """The claim, as named in vouch's claim headers (``Groups``), that holds the user's groups; empty: none."""
    timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT
    """Seconds any one call to vouch may take (at most 300)."""
    allow_insecure_http: bool = False
    """Permit a plain http ``url`` (tests and local development); checked at validation."""


class VouchProvider:
    """An existing vouch-proxy that logs users in for us (config ``type = "vouch"``)."""

    type_name: ClassVar[str] = "vouch"
    issues_bearer_jwts: ClassVar[bool] = False  # vouch's JWTs are checked by vouch alone

    def __init__(self, *, name: str, display_name: str, url: str, cookie_name: str, claims_headers_prefix: str,
                 groups_claim: str, timeout: aiohttp.ClientTimeout, http: aiohttp.ClientSession) -> None:
        self.name = name
        self.display_name = display_name
        self._url = url.rstrip("/")
        self._cookie_name = cookie_name
        self._cookie_re = re.compile(rf"^{re.escape(cookie_name)}(?:_(\d{{1,3}})of(\d{{1,3}}))?$")
        self._claims_prefix = claims_headers_prefix.lower()
        self._groups_claim = groups_claim.lower()
        self._timeout = timeout
        self._http = http

    def __repr__(self) -> str:
        return f"VouchProvider(name={self.name!r}, url={self._url!r})"

    # ---- ProviderFactory ------------------------------------------------------------------------------

    @classmethod
    def config_keys(cls) -> frozenset[str]:
        """``type`` and the fields of :class:`VouchSettings`."""
        return config_keys(VouchSettings)

    @classmethod
    def config_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        """Every problem with a ``type = "vouch"`` table, each prefixed ``upstreams.<name>``; unknown keys
        come with a did-you-mean suggestion."""
        prefix = f"upstreams.{name}"
        problems = require_keys(name, config, ("url",))
        problems += unknown_key_problems(name, config, cls.config_keys())
        if isinstance(config.get("url"), str) and config["url"]:
            problem = url_problem(config["url"], insecure_ok=config.get("allow_insecure_http") is True)
            if problem:
                problems.append(f"{prefix}.url: {problem}")
        if "display_name" in config and not isinstance(config["display_name"], str):
            problems.append(f"{prefix}.display_name: expected a string")
        for key, what in (("cookie_name", "a cookie name"), ("claims_headers_prefix", "a header name prefix"),
                          ("groups_claim", "a claim name as it appears in the header (like Groups)")):
            if key in config and (not isinstance(config[key], str) or not _TOKEN_RE.match(config[key])):
                problems.append(f"{prefix}.{key}: expected {what}")
        if "allow_insecure_http" in config and not isinstance(config["allow_insecure_http"], bool):
            problems.append(f"{prefix}.allow_insecure_http: expected true or false")
        if "timeout" in config:
            problems += timeout_problems(prefix, config["timeout"])
        return problems

    @classmethod
    def parse_config(cls, config: Mapping[str, Any]) -> VouchSettings:
        """Settings from a table :meth:`config_problems` accepted, defaults applied."""
        return VouchSettings(
            url=config_str(config, "url"),
            display_name=config_str(config, "display_name", "Single sign-on"),
            cookie_name=config_str(config, "cookie_name", DEFAULT_COOKIE_NAME),
            claims_headers_prefix=config_str(config, "claims_headers_prefix", DEFAULT_CLAIMS_PREFIX),
            groups_claim=config_str(config, "groups_claim"),
            timeout=timeout_from(config),
            allow_insecure_http=config.get("allow_insecure_http") is True,
        )

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any], http: aiohttp.ClientSession) -> Provider:
        """Build from a table :meth:`config_problems` accepted (see :meth:`parse_config`)."""
        settings = cls.parse_config(config)
        return cls(
            name=name,
            display_name=settings.display_name,
            url=settings.url,
            cookie_name=settings.cookie_name,
            claims_headers_prefix=settings.claims_headers_prefix,
            groups_claim=settings.groups_claim,
            timeout=settings.timeout,
            http=http,
        )

    # ---- Provider -------------------------------------------------------------------------------------

    async def authorization_url(self, *, redirect_uri: str, secrets: LoginSecrets) -> str:
        """``{url}/login?url=<redirect_uri?state=...>``: vouch returns to that URL, state included."""
        separator = "&" if "?" in redirect_uri else "?"
        back = f"{redirect_uri}{separator}{urlencode({'state': secrets.state})}"
        return f"{self._url}/login?{urlencode({'url': back}, quote_via=quote)}"

    async def redeem(self, *, callback: Callback, redirect_uri: str, secrets: LoginSecrets) -> Identity:
        """Ask vouch's ``/validate`` about the vouch cookies the browser brought back.

        Raises ProviderError: INVALID when there is no (well-formed) vouch cookie or vouch's answer
        names no user; ACCESS_DENIED when vouch says the session is not valid; UNAVAILABLE when vouch
        is slow, unreachable or answers anything else.
        """
        cookie_header = self._cookie_header(callback.cookies)
        try:
            async with self._http.get(f"{self._url}/validate", headers={"Cookie": cookie_header},
                                      timeout=self._timeout, allow_redirects=False) as resp:
                status, headers = resp.status, resp.headers.copy()
        except TimeoutError as exc:
            raise ProviderError(FailureReason.UNAVAILABLE, "vouch did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise ProviderError(FailureReason.UNAVAILABLE, "vouch could not be reached") from exc
        if status in (401, 403):
            raise ProviderError(FailureReason.ACCESS_DENIED, "vouch session not valid")
        if status != 200:
            raise ProviderError(FailureReason.UNAVAILABLE, f"vouch's /validate answered HTTP {status}")

        if USER_HEADER not in headers:
            raise ProviderError(FailureReason.INVALID, f"vouch named no user (no {USER_HEADER} header)")
        user = headers[USER_HEADER].strip()
        if not user:
            # vouch with publicAccess answers 200 and an empty user when there is no session.
            raise ProviderError(FailureReason.ACCESS_DENIED, "vouch session not valid")
        if len(user) > 320 or not user.isprintable():
            raise ProviderError(FailureReason.INVALID, "vouch named a malformed user")

        claims = self._claims(headers)
        is_email = bool(_EMAIL_RE.match(user))
        subject = user.lower() if is_email else user
        email, verified = (user.lower(), True) if is_email else ("", False)
        if not is_email and isinstance(claims.get("email"), str) and _EMAIL_RE.match(str(claims["email"]).strip()):
            # Only an IdP that says so makes a claimed email (beside a non-email user name) trustworthy.
            email = str(claims["email"]).strip().lower()
            verified = _claimed_verified(claims) is True
        elif is_email and _claimed_verified(claims) is False:
            verified = False
        name = claims.get("name")
        return Identity(subject=subject, email=email, email_verified=verified,
                        name=name if isinstance(name, str) and name else user, username=user,
                        groups=self._groups(claims), claims=claims)

    async def logout_url(self, *, return_to: str, id_token: str) -> str | None:
        """``{url}/logout?url=<return_to>`` (vouch redirects only to its ``post_logout_redirect_uris``)."""
        return f"{self._url}/logout?{urlencode({'url': return_to}, quote_via=quote)}"

    async def verify_bearer(self, token: str) -> Identity | None:
        """None: vouch's JWTs are only ever checked by vouch itself."""
        return None

    # ---- internals ------------------------------------------------------------------------------------

    def _cookie_header(self, cookies: Mapping[str, str]) -> str:
        """``Cookie`` header value with the vouch cookie and its chunks, in chunk order; or ProviderError."""
        found: list[tuple[int, str, str]] = []
        for cookie_name, value in cookies.items():
            match = self._cookie_re.match(cookie_name)
            if match is not None:
                found.append((int(match.group(1) or 0), cookie_name, value))
        if not found:
            raise ProviderError(FailureReason.INVALID, "no vouch session")
        found.sort()
        total = sum(len(name) + len(value) + 2 for _, name, value in found)
        if len(found) > MAX_COOKIES or total > MAX_COOKIE_BYTES \
                or any(not value or not _COOKIE_VALUE_RE.match(value) for _, _, value in found):
            raise ProviderError(FailureReason.INVALID, "malformed vouch cookie")
        return "; ".join(f"{name}={value}" for _, name, value in found)

    def _claims(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """Every ``<prefix><Claim>`` header as ``claim`` (lower-case): a list for vouch's ``"a","b"`` form."""
        raw: dict[str, list[str]] = {}
        for header, value in headers.items():
            if header.lower().startswith(self._claims_prefix) and len(header) > len(self._claims_prefix):
                raw.setdefault(header[len(self._claims_prefix):].lower(), []).append(value)
        claims: dict[str, Any] = {}
        for claim, values in raw.items():
            joined = ",".join(values)
            quoted = joined.strip()
            if len(quoted) >= 2 and quoted.startswith('"') and quoted.endswith('"'):
                claims[claim] = split_list(joined)
            else:
                claims[claim] = joined if len(values) == 1 else split_list(joined)
        return claims

    def _groups(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        if not self._groups_claim:
            return ()
        value = claims.get(self._groups_claim)
        if isinstance(value, list):
            return tuple(dict.fromkeys(str(v) for v in value if v))
        if isinstance(value, str):
            return tuple(dict.fromkeys(split_list(value)))
        return ()


def split_list(value: str) -> list[str]:
    """Items of a comma-separated header value, with vouch's surrounding double quotes removed."""
    try:
        items = next(csv.reader([value], skipinitialspace=True), [])
    except csv.Error:
        items = value.split(",")
    return [item.strip().strip('"').strip() for item in items if item.strip().strip('"').strip()]


def _claimed_verified(claims: Mapping[str, Any]) -> bool | None:
    """What an ``email_verified`` claim says (vouch turns ``_`` into ``-`` in header names); None if absent."""
    for key in ("email-verified", "email_verified"):
        value = claims.get(key)
        if isinstance(value, str):
            return value.strip().lower() == "true"
    return None
