"""OIDC keys: the provider's discovery document and key set (JWKS), fetched over aiohttp and cached.

Every call to the provider goes through :meth:`ProviderKeys.request` (timeout, size bound, no redirects).
A failed refresh keeps serving the last good document or key set; an unknown ``kid`` refetches the key
set at most once per :data:`JWKS_REFETCH_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import jwt

from upstreams.base import FailureReason, ProviderError
from upstreams.oidc.config import SIGNING_ALGORITHMS, OIDCSettings, url_problem

DISCOVERY_TTL: Final = 3600.0
"""Seconds a discovery document is used before it is fetched again."""
JWKS_TTL: Final = 3600.0
"""Seconds a key set is used before it is fetched again (retired keys stop working after this)."""
RETRY_AFTER_FAILURE: Final = 30.0
"""After a failed refresh, the last good document or key set is served this long before trying again."""
JWKS_REFETCH_INTERVAL: Final = 10.0
"""An unknown ``kid`` refetches the key set at most once per this many seconds (bounds attacker load)."""
MAX_RESPONSE_BYTES: Final = 1 << 20


class Rejected(Exception):
    """A token failed verification; the message is safe to show (no token, code or secret)."""


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
class Response:
    status: int
    body: bytes


class ProviderKeys:
    """One provider's discovery document and key set, cached on the instance for every login at once."""

    def __init__(self, name: str, settings: OIDCSettings, http: aiohttp.ClientSession, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
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
        document = self.json_object(await self.request("GET", url, what="discovery"), what="discovery")
        if document.get("issuer") != issuer:
            raise ProviderError(FailureReason.UNAVAILABLE,
                                f"{self.name}: the discovery document names issuer "
                                f"{str(document.get('issuer'))[:200]!r}, expected {issuer!r}")

        def endpoint(key: str, required: bool) -> str:
            value = document.get(key)
            if isinstance(value, str) and not url_problem(value, self.settings.allow_insecure_http,
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
        document = self.json_object(await self.request("GET", discovery.jwks_uri, what="key set"),
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

    async def signing_key(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The verification key for ``kid``; an unknown kid refetches the key set once (rate-limited)."""
        keys, generation = await self._current_jwks()
        jwk = find_jwk(keys, kid, alg)
        if jwk is None and kid is not None:
            async with self._jwks_lock:
                if self._jwks is not None and self._jwks_generation != generation:
                    keys = self._jwks  # another login refreshed while we waited
                    jwk = find_jwk(keys, kid, alg)
                if jwk is None and self._clock() >= self._jwks_refetch_not_before:
                    self._jwks_refetch_not_before = self._clock() + JWKS_REFETCH_INTERVAL
                    await self._refresh_jwks_locked()
                    assert self._jwks is not None
                    jwk = find_jwk(self._jwks, kid, alg)
        if jwk is None:
            raise Rejected("the token is signed with a key the provider does not publish")
        cache_key = (str(jwk.get("kid", "")), alg)
        key = self._keys.get(cache_key)
        if key is None:
            key = build_key(jwk, alg)
            self._keys[cache_key] = key
        return key

    async def request(self, method: str, url: str, *, what: str, data: str | None = None,
                      headers: Mapping[str, str] | None = None) -> Response:
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
                return Response(response.status, b"".join(chunks))
        except TimeoutError:
            raise ProviderError(FailureReason.UNAVAILABLE,
                                f"{self.name}: the {what} did not answer within "
                                f"{self.settings.timeout.total} s") from None
        except aiohttp.ClientError as exc:
            raise ProviderError(FailureReason.UNAVAILABLE,
                                f"{self.name}: could not reach the {what} ({type(exc).__name__})") from None

    def json_object(self, response: Response, *, what: str) -> dict[str, Any]:
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


def find_jwk(keys: Sequence[Mapping[str, Any]], kid: str | None, alg: str) -> Mapping[str, Any] | None:
    """The key with ``kid``; without a kid, the only key that fits ``alg`` (ambiguity finds nothing)."""
    if kid is not None:
        return next((k for k in keys if k.get("kid") == kid), None)
    kty = SIGNING_ALGORITHMS[alg][0]
    fitting = [k for k in keys if k.get("kty") == kty]
    return fitting[0] if len(fitting) == 1 else None


def build_key(jwk: Mapping[str, Any], alg: str) -> jwt.PyJWK:
    """A PyJWK for ``alg`` from a published key, refusing keys whose type, curve or own alg do not fit."""
    kty, crv, _ = SIGNING_ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise Rejected(f"the token's algorithm {alg} does not fit the published key")
    if "alg" in jwk and jwk["alg"] != alg:
        raise Rejected(f"the published key is for {str(jwk['alg'])[:20]}, not {alg}")
    try:
        return jwt.PyJWK(dict(jwk), algorithm=alg)
    except jwt.PyJWTError:
        raise Rejected("the provider publishes a key that cannot be used") from None


__all__ = ["DISCOVERY_TTL", "JWKS_REFETCH_INTERVAL", "JWKS_TTL", "MAX_RESPONSE_BYTES", "RETRY_AFTER_FAILURE",
           "Discovery", "ProviderKeys", "Rejected", "Response"]
