"""OIDC token verification: every JWT (ID token, access token, bearer token) is checked before use.

Signature with an allow-listed algorithm that fits the published key, ``iss``, ``aud``/``azp``, ``exp``,
``iat``/``nbf``, and for ID tokens ``nonce`` and ``at_hash`` (OIDC Core 3.1.3.7) -- for an ID token from a
refresh ``sub`` instead of ``nonce`` (OIDC Core 12.2); for back-channel logout
tokens the logout event, ``jti``, ``sub``/``sid`` and the absence of ``nonce`` (Back-Channel Logout 1.0,
2.6).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Any, Final

import jwt

from upstreams.oidc.config import SIGNING_ALGORITHMS, OIDCSettings
from upstreams.oidc.keys import ProviderKeys, Rejected

MAX_TOKEN_CHARS: Final = 16_384
BACKCHANNEL_LOGOUT_EVENT: Final = "http://schemas.openid.net/event/backchannel-logout"
"""The member of a logout token's ``events`` claim that makes it one (Back-Channel Logout 1.0, 2.4)."""
LOGOUT_TOKEN_TYPES: Final = frozenset({"logout+jwt", "application/logout+jwt", "jwt"})
"""``typ`` values a logout token may carry: 2.4 says it SHOULD be typed ``logout+jwt``, and providers that do
not type them send ``JWT`` or nothing. Another type (``at+jwt``) is another kind of token."""
MAX_CLAIM_CHARS: Final = 1024
"""Longest ``jti``, ``sub`` or ``sid`` a logout token may carry."""
JWS_COMPACT: Final = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


class TokenVerifier:
    """Verifies one provider's JWTs against its settings and its published keys."""

    def __init__(self, settings: OIDCSettings, keys: ProviderKeys) -> None:
        self.settings = settings
        self._keys = keys

    async def verify_jwt(self, token: str, *, what: str, audience: str | None,
                         require: Sequence[str]) -> dict[str, Any]:
        """Claims of a JWT whose alg, signature, ``iss``, audience, ``exp``, ``iat``, ``nbf`` all check out.

        Raises Rejected with a safe message; ProviderError(UNAVAILABLE) if keys cannot be fetched.
        """
        if len(token) > MAX_TOKEN_CHARS:
            raise Rejected(f"the {what} is too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Rejected(f"the {what} is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.allowed_algorithms or alg not in SIGNING_ALGORITHMS:
            raise Rejected(f"the {what} uses a disallowed algorithm {str(alg)[:20]!r}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Rejected(f"the {what} has a malformed key id")
        key = await self._keys.signing_key(kid, alg)
        try:
            return jwt.decode(
                token, key, algorithms=[alg], audience=audience, issuer=self.settings.issuer,
                leeway=self.settings.clock_skew,
                options={"require": list(require), "verify_aud": audience is not None,
                         "enforce_minimum_key_length": True})
        except jwt.ExpiredSignatureError:
            raise Rejected(f"the {what} has expired") from None
        except jwt.ImmatureSignatureError:
            raise Rejected(f"the {what} is dated in the future (iat/nbf)") from None
        except jwt.InvalidIssuerError:
            raise Rejected(f"the {what} was issued by another issuer") from None
        except jwt.InvalidAudienceError:
            raise Rejected(f"the {what} is meant for another audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Rejected(f"the {what} lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise Rejected(f"the {what}'s signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise Rejected(f"the {what} is invalid ({type(exc).__name__})") from None

    async def verify_id_token(self, id_token: str, *, nonce: str, access_token: str) -> dict[str, Any]:
        """ID token validation per OIDC Core 3.1.3.7 (plus ``at_hash`` when present)."""
        claims = await self._id_token_claims(id_token)
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
            raise Rejected("the ID token's nonce does not match this login attempt")
        self._check_at_hash(id_token, claims, access_token)
        return claims

    async def verify_refreshed_id_token(self, id_token: str, *, subject: str, access_token: str) -> dict[str, Any]:
        """An ID token from a refresh, per OIDC Core 12.2: every check of 3.1.3.7 but the nonce, and ``sub``
        must be ``subject``, the user the refresh token was issued for.

        The nonce is not checked because a refresh request carries none (Keycloak repeats the login's,
        others leave it out); a refreshed ID token cannot be replayed into a login, which always checks it.
        """
        claims = await self._id_token_claims(id_token)
        if not hmac.compare_digest(claims["sub"].encode(), subject.encode()):
            raise Rejected("the refreshed ID token names another subject")
        self._check_at_hash(id_token, claims, access_token)
        return claims

    async def _id_token_claims(self, id_token: str) -> dict[str, Any]:
        """Claims of an ID token whose signature, ``iss``, ``aud``, ``azp``, ``exp``, ``iat`` and ``sub`` check out."""
        claims = await self.verify_jwt(id_token, what="ID token", audience=self.settings.client_id,
                                       require=("iss", "aud", "exp", "iat", "sub"))
        if "azp" in claims and claims["azp"] != self.settings.client_id:
            raise Rejected("the ID token was issued to another client (azp)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Rejected("the ID token has no subject")
        return claims

    @staticmethod
    def _check_at_hash(id_token: str, claims: dict[str, Any], access_token: str) -> None:
        """``at_hash``, when the ID token has one, must match the access token it came with."""
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token:
            alg = jwt.get_unverified_header(id_token)["alg"]
            if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, half_hash(access_token, alg)):
                raise Rejected("the ID token's at_hash does not match the access token")

    async def verify_logout_token(self, token: str) -> dict[str, Any]:
        """Claims of a back-channel logout token that passes every check of Back-Channel Logout 1.0, 2.6.

        Like an ID token: signature, ``iss``, ``aud`` (this client), ``azp`` when present, ``iat``, ``exp``.
        Beyond it: ``jti`` present; ``events`` an object whose logout member is an object; ``sub`` or
        ``sid`` (strings); no ``nonce`` (which an ID token passed off as a logout token would carry); a
        ``typ`` header, when present, of a logout token. Raises Rejected.
        """
        try:
            typ = jwt.get_unverified_header(token).get("typ") if len(token) <= MAX_TOKEN_CHARS else None
        except jwt.PyJWTError:
            typ = None  # verify_jwt says what is wrong with it
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in LOGOUT_TOKEN_TYPES):
            raise Rejected("the logout token is typed as something else (typ)")
        claims = await self.verify_jwt(token, what="logout token", audience=self.settings.client_id,
                                       require=("iss", "aud", "iat", "exp", "jti", "events"))
        if "azp" in claims and claims["azp"] != self.settings.client_id:
            raise Rejected("the logout token was issued to another client (azp)")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
            raise Rejected("the logout token carries no back-channel logout event")
        if "nonce" in claims:
            raise Rejected("the logout token carries a nonce (an ID token is not a logout token)")
        for name in ("jti", "sub", "sid"):
            value = claims.get(name)
            if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_CLAIM_CHARS):
                raise Rejected(f"the logout token's {name} is malformed")
        if not claims.get("sub") and not claims.get("sid"):
            raise Rejected("the logout token names neither a subject nor a session (sub, sid)")
        return claims

    async def access_token_claims(self, access_token: str) -> dict[str, Any]:
        """Verified claims of a JWT access token; {} when the token is opaque (no groups then)."""
        if not access_token or not JWS_COMPACT.fullmatch(access_token):
            return {}
        try:
            jwt.get_unverified_header(access_token)
        except jwt.PyJWTError:
            return {}
        return await self.verify_jwt(access_token, what="access token", audience=self.settings.audience or None,
                                     require=("iss", "exp"))


def half_hash(value: str, alg: str) -> str:
    """``at_hash``/``c_hash``: base64url of the left half of the alg's hash of the ASCII value."""
    digest = hashlib.new(SIGNING_ALGORITHMS[alg][2], value.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


__all__ = ["BACKCHANNEL_LOGOUT_EVENT", "JWS_COMPACT", "LOGOUT_TOKEN_TYPES", "MAX_TOKEN_CHARS", "TokenVerifier",
           "half_hash"]
