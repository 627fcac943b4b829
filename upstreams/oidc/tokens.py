"""OIDC token endpoint: the authorization code grant and the refresh token grant (RFC 6749 4.1.3 and 6).

Both grants POST the discovery document's ``token_endpoint`` with the same client authentication
(``client_secret_post`` or ``client_secret_basic``, see ``OIDCSettings.token_endpoint_auth``), through
:meth:`ProviderKeys.request` (the configured timeout, a size bound, no redirects). This module only checks
the answer's shape (a JSON object, a bearer access token); the tokens in it are verified by
:mod:`upstreams.oidc.verify` before the provider uses anything.

How a refused refresh reads: an OAuth error response (HTTP 400 or 401, RFC 6749 5.2) with
``invalid_grant`` (the refresh token is expired, revoked or was already used) is ACCESS_DENIED, any other
error code INVALID, except ``temporarily_unavailable``/``server_error`` and the client's own credentials
refused (``invalid_client``/``unauthorized_client``: a configuration problem, not the user's); those,
every other status, a network failure and a body that is not a JSON object are UNAVAILABLE (ask again
later). Messages name the HTTP status and the error code only, never a token.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from authlib.oauth2.rfc6749.parameters import prepare_token_request  # type: ignore[import-untyped]

from upstreams.base import FailureReason, ProviderError
from upstreams.oidc.config import CLIENT_AUTH_BASIC, OIDCSettings
from upstreams.oidc.keys import Discovery, ProviderKeys, Response

_ERROR_CODE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
REFUSAL_STATUSES: Final = frozenset({400, 401})
"""Statuses of an OAuth error response (RFC 6749 5.2): only these can refuse a grant."""
RETRY_ERRORS: Final = frozenset({"temporarily_unavailable", "server_error", "invalid_client", "unauthorized_client"})
"""Error codes of a refresh that say "not now" rather than "no": the provider is busy, or it refuses the
gateway's own client credentials (a secret rotated at the provider and not yet here). Neither says anything
of the user, so no session ends for them; each stays to its own expiry, and the operator sees the
``session refresh postponed`` warnings."""


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """The tokens of a successful token response ("" for each one the provider did not send).

    Unverified: the ID token (and a JWT access token) must pass :mod:`upstreams.oidc.verify` before use.
    """

    access_token: str
    id_token: str
    refresh_token: str

    def __repr__(self) -> str:
        return "TokenResponse(<tokens withheld>)"


class TokenEndpoint:
    """One provider's token endpoint, as a confidential (or public, PKCE-only) client."""

    def __init__(self, name: str, settings: OIDCSettings, keys: ProviderKeys) -> None:
        self.name = name
        self.settings = settings
        self._keys = keys

    async def redeem_code(self, discovery: Discovery, *, code: str, redirect_uri: str,
                          code_verifier: str) -> TokenResponse:
        """Redeem an authorization code with its PKCE verifier.

        Raises ProviderError: INVALID when the endpoint refuses the code (any 4xx) or sends a token of
        another type than bearer; UNAVAILABLE when it cannot be reached or answers 5xx or garbage.
        """
        response = await self._post(discovery, "authorization_code", code=code, redirect_uri=redirect_uri,
                                    code_verifier=code_verifier)
        if 400 <= response.status < 500:
            raise ProviderError(FailureReason.INVALID,
                                f"{self.name}: the token endpoint refused the code (HTTP {response.status}, "
                                f"error={error_code(response)})")
        return self._tokens(response, access_token_required=False)

    async def refresh(self, discovery: Discovery, refresh_token: str) -> TokenResponse:
        """Redeem a refresh token for a new grant (RFC 6749 section 6) and return its tokens.

        Raises ProviderError: ACCESS_DENIED for ``invalid_grant`` (expired, revoked, reused), INVALID for
        any other refusal or an answer without a bearer access token, UNAVAILABLE when the endpoint cannot
        be asked (network, timeout, 5xx, another status, ``temporarily_unavailable``, garbage).
        """
        response = await self._post(discovery, "refresh_token", refresh_token=refresh_token)
        if response.status in REFUSAL_STATUSES:
            error = error_code(response)
            reason = (FailureReason.ACCESS_DENIED if error == "invalid_grant"
                      else FailureReason.UNAVAILABLE if error in RETRY_ERRORS
                      else FailureReason.INVALID)
            raise ProviderError(reason, f"{self.name}: the token endpoint refused the refresh token "
                                        f"(HTTP {response.status}, error={error})")
        return self._tokens(response, access_token_required=True)

    # ---- internals ------------------------------------------------------------------------------------

    async def _post(self, discovery: Discovery, grant_type: str, **params: str) -> Response:
        settings = self.settings
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        client: dict[str, str] = {}
        if settings.token_endpoint_auth == CLIENT_AUTH_BASIC and settings.client_secret:
            # RFC 6749 2.3.1: both halves form-urlencoded before they are joined
            userpass = f"{quote(settings.client_id, safe='')}:{quote(settings.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(userpass.encode()).decode()
        else:
            client["client_id"] = settings.client_id
            if settings.client_secret:
                client["client_secret"] = settings.client_secret
        body = str(prepare_token_request(grant_type, **params, **client))
        return await self._keys.request("POST", discovery.token_endpoint, what="token endpoint", data=body,
                                        headers=headers)

    def _tokens(self, response: Response, *, access_token_required: bool) -> TokenResponse:
        """The tokens of a 200 JSON answer (anything else is UNAVAILABLE); the token type must be bearer."""
        document = self._keys.json_object(response, what="token endpoint")
        access_token = _string(document, "access_token")
        if access_token_required and not access_token:
            raise ProviderError(FailureReason.INVALID, f"{self.name}: the token response holds no access token")
        token_type = document.get("token_type")
        if access_token and isinstance(token_type, str) and token_type.lower() != "bearer":
            raise ProviderError(FailureReason.INVALID, f"{self.name}: unsupported token type {safe_code(token_type)}")
        return TokenResponse(access_token=access_token, id_token=_string(document, "id_token"),
                             refresh_token=_string(document, "refresh_token"))


def _string(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    return value if isinstance(value, str) else ""


def error_code(response: Response) -> str:
    """The OAuth ``error`` of an error response, fit for a message (``unknown`` when there is none)."""
    error = "unknown"
    with contextlib.suppress(ValueError, AttributeError, RecursionError):
        error = safe_code(json.loads(response.body).get("error", "unknown"))
    return error


def safe_code(value: Any) -> str:
    """An OAuth error code fit for a message; anything else becomes ``unknown``."""
    return value if isinstance(value, str) and _ERROR_CODE.fullmatch(value) else "unknown"


__all__ = ["REFUSAL_STATUSES", "RETRY_ERRORS", "TokenEndpoint", "TokenResponse", "error_code", "safe_code"]
