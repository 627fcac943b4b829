"""The OIDC provider: authorization code flow with PKCE S256, code redemption, userinfo, bearer tokens, logout,
and the refresh token grant.

One :class:`OIDCProvider` serves any compliant provider; :mod:`upstreams.presets` only changes defaults.
Protocol parameters are built with authlib's framework-neutral helpers; keys come from
:mod:`upstreams.oidc.keys`, the token endpoint is called by :mod:`upstreams.oidc.tokens`, and every token is
checked by :mod:`upstreams.oidc.verify` before it is used.

Refresh (:meth:`OIDCProvider.refresh`, the ``Refreshing`` protocol): the sign-in's ``refresh_token``, when
the provider issues one, travels in ``Identity.refresh_token``. A refresh redeems it at the token endpoint
and re-reads the user exactly as a sign-in does (ID token when one comes back, verified per OIDC Core 12.2
with ``sub`` pinned to the user and no nonce; userinfo when wanted; groups; ``required_claims``; email
verification). With neither a new ID token nor a userinfo endpoint the grant is renewed but nobody is
described (``Refreshed.identity`` is None). The next refresh token is the rotated one when the provider
sent one, else the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import jwt
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]

from upstreams.base import (
    Callback,
    FailureReason,
    Identity,
    LoginSecrets,
    LogoutNotice,
    ProviderError,
    Refreshed,
)
from upstreams.oidc.config import OIDCConfig, OIDCSettings
from upstreams.oidc.keys import Discovery, ProviderKeys, Rejected
from upstreams.oidc.tokens import TokenEndpoint, safe_code
from upstreams.oidc.verify import JWS_COMPACT, MAX_TOKEN_CHARS, TokenVerifier

MFA_AMR_VALUES: Final = frozenset({
    "mfa",                                          # the provider says so outright
    "otp", "hwk", "sc", "sms", "tel",               # possession factors (RFC 8176)
    "fpt", "face", "iris", "retina", "vbm",         # inherence factors (RFC 8176)
})
"""``amr`` values that prove more than a password. Knowledge-only (``pwd``, ``pin``, ``kba``) and
context values (``geo``, ``rba``, ``wia``, ``swk``, ``user``, ``pop``) do not count."""


class OIDCProvider(OIDCConfig):
    """An OpenID Connect provider found by discovery; implements ``Provider`` and ``ProviderFactory``.

    Caches (discovery, key set) live on the instance; one instance serves every login concurrently.
    """

    type_name: ClassVar[str] = "oidc"
    issues_bearer_jwts: ClassVar[bool] = True  # access tokens are JWTs signed with the provider's keys
    default_display_name: ClassVar[str] = ""
    username_claims: ClassVar[tuple[str, ...]] = ("preferred_username", "nickname")
    bearer_audience_claim: ClassVar[str] = "aud"
    """Claim that must hold ``bearer_audience`` in a bearer token (Cognito's access tokens use ``client_id``)."""
    bearer_use: ClassVar[str] = ""
    """When set, a bearer token's ``token_use`` claim must equal it (Cognito: ``access``)."""

    def __init__(self, name: str, settings: OIDCSettings, http: aiohttp.ClientSession, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.display_name = settings.display_name or self.default_display_name or name
        self.settings = settings
        self._keys = ProviderKeys(name, settings, http, clock=clock)
        self._verifier = TokenVerifier(settings, self._keys)
        self._tokens = TokenEndpoint(name, settings, self._keys)

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
            error = safe_code(params["error"])
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

        tokens = await self._tokens.redeem_code(discovery, code=code, redirect_uri=redirect_uri,
                                                code_verifier=secrets.code_verifier)
        if not tokens.id_token:
            raise ProviderError(FailureReason.INVALID, f"{self.name}: the token response holds no ID token")
        try:
            id_claims = await self._verifier.verify_id_token(tokens.id_token, nonce=secrets.nonce,
                                                             access_token=tokens.access_token)
        except Rejected as exc:
            raise ProviderError(FailureReason.INVALID, f"{self.name}: {exc}") from None
        return await self._describe(discovery, subject=id_claims["sub"], id_claims=id_claims,
                                    id_token=tokens.id_token, access_token=tokens.access_token,
                                    refresh_token=tokens.refresh_token)

    async def refresh(self, refresh_token: str, *, subject: str) -> Refreshed:
        """Redeem ``refresh_token`` and re-read ``subject`` as :meth:`redeem` reads a user (``Refreshing``).

        A new ID token is verified per OIDC Core 12.2 (every login check but the nonce; ``sub`` must be
        ``subject``); userinfo, when asked, must describe ``subject`` too. Without a new ID token and
        without a userinfo endpoint, ``identity`` is None. The next refresh token is the rotated one, if
        the provider rotated it.

        Raises ProviderError: ACCESS_DENIED when the grant is gone (``invalid_grant``) or the user no
        longer meets ``required_claims``; INVALID for another refusal or anything failing verification
        (another subject, a forged or expired ID token, an unverified email); UNAVAILABLE when the
        provider cannot be asked (network, timeout, 5xx, garbage).
        """
        discovery = await self.discovery()
        tokens = await self._tokens.refresh(discovery, refresh_token)
        next_token = tokens.refresh_token or refresh_token
        id_claims: dict[str, Any] = {}
        if tokens.id_token:
            try:
                id_claims = await self._verifier.verify_refreshed_id_token(
                    tokens.id_token, subject=subject, access_token=tokens.access_token)
            except Rejected as exc:
                raise ProviderError(FailureReason.INVALID, f"{self.name}: {exc}") from None
        elif not discovery.userinfo_endpoint:
            return Refreshed(refresh_token=next_token, identity=None)
        identity = await self._describe(discovery, subject=subject, id_claims=id_claims, id_token=tokens.id_token,
                                        access_token=tokens.access_token, refresh_token=next_token)
        return Refreshed(refresh_token=next_token, identity=identity)

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
        if len(token) > MAX_TOKEN_CHARS or not JWS_COMPACT.fullmatch(token):
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
            claims = await self._verifier.verify_jwt(token, what="bearer token",
                                                     audience=audience if by_aud else None,
                                                     require=("exp", "iss", "sub"))
        except Rejected:
            return None
        if not by_aud and claims.get(self.bearer_audience_claim) != audience:
            return None
        if self.bearer_use and claims.get("token_use") != self.bearer_use:
            return None
        email, verified = self._email(claims, {})
        return self._identity(claims, email=email, email_verified=verified,
                              groups=_strings_at(claims, self.settings.groups_claim), id_token="")

    async def verify_logout_token(self, token: str) -> LogoutNotice:
        """A verified back-channel logout notice (see :class:`~upstreams.base.BackChannelLogout`)."""
        if not JWS_COMPACT.fullmatch(token[:MAX_TOKEN_CHARS + 1]):
            raise ProviderError(FailureReason.INVALID, f"{self.name}: the logout token is not a signed JWT")
        try:
            claims = await self._verifier.verify_logout_token(token)
        except Rejected as exc:
            raise ProviderError(FailureReason.INVALID, f"{self.name}: {exc}") from None
        return LogoutNotice(subject=claims.get("sub") or "", session_id=claims.get("sid") or "",
                            token_id=claims["jti"], expires_at=float(claims["exp"]))

    async def discovery(self) -> Discovery:
        """The provider's discovery document (see :meth:`ProviderKeys.discovery`)."""
        return await self._keys.discovery()

    # ---- HTTP ---------------------------------------------------------------------------------------

    async def _userinfo(self, endpoint: str, access_token: str, subject: str) -> dict[str, Any]:
        response = await self._keys.request("GET", endpoint, what="userinfo",
                                            headers={"Authorization": f"Bearer {access_token}",
                                                     "Accept": "application/json"})
        if 400 <= response.status < 500:
            raise ProviderError(FailureReason.INVALID,
                                f"{self.name}: the userinfo endpoint refused the access token "
                                f"(HTTP {response.status})")
        userinfo = self._keys.json_object(response, what="userinfo")
        if userinfo.get("sub") != subject:
            raise ProviderError(FailureReason.INVALID, f"{self.name}: userinfo describes another subject")
        return userinfo

    # ---- identity -----------------------------------------------------------------------------------

    async def _describe(self, discovery: Discovery, *, subject: str, id_claims: Mapping[str, Any], id_token: str,
                        access_token: str, refresh_token: str) -> Identity:
        """The user a sign-in or a refresh vouches for, from the verified ID token's claims (none on a
        refresh without one) plus userinfo (when wanted, and it must describe ``subject``) and the access
        token's groups (``groups_from_access_token``).

        Raises ProviderError: ACCESS_DENIED when ``required_claims`` are not met, INVALID when userinfo or
        the access token fails verification or the email is unverified, UNAVAILABLE as for any call.
        """
        userinfo: dict[str, Any] = {}
        if access_token and discovery.userinfo_endpoint and self._wants_userinfo(id_claims):
            userinfo = await self._userinfo(discovery.userinfo_endpoint, access_token, subject)

        if self.settings.groups_from_access_token:
            try:
                access_claims = await self._verifier.access_token_claims(access_token)
            except Rejected as exc:
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
        return self._identity(claims, email=email, email_verified=verified, groups=groups, id_token=id_token,
                              session_id=_string_at(id_claims, "sid"), refresh_token=refresh_token)

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
                  groups: tuple[str, ...], id_token: str, session_id: str = "",
                  refresh_token: str = "") -> Identity:
        """The identity for ``claims``; ``session_id`` is the ``sid`` of the ID token, if one came."""
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
            session_id=session_id,
            refresh_token=refresh_token,
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


def _string_at(claims: Mapping[str, Any], key: str) -> str:
    """A non-blank string claim, trimmed, else ""."""
    value = claims.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else ""


def _clean_email(value: Any) -> str:
    """A trimmed address with exactly one ``@`` and no whitespace, else ""."""
    if not isinstance(value, str):
        return ""
    email = value.strip()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in email):
        return ""
    return email


__all__ = ["MFA_AMR_VALUES", "OIDCProvider", "add_query"]
