"""Thin OIDC presets (Auth0, Authing, Amazon Cognito, Google, Keycloak): defaults on top of ``OIDCProvider``.

Each preset derives ``issuer`` from the provider's own terms (tenant domain, user pool, realm...) and
sets where groups live; an explicit ``issuer`` in config always wins. Only Auth0 and Cognito change
behaviour, because their logout endpoints and (for Cognito) access tokens are not standard OIDC.

A preset's terms are declared once, as the fields of its ``*Terms`` dataclass (``preset_terms``): they
and OIDC's own keys are all its table may hold, so ``hosted_domian`` is reported, not ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from upstreams.oidc import OIDCProvider, add_query, is_hostname

_COGNITO_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")
_COGNITO_POOL = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}_[0-9A-Za-z]+")
_AUTHING_APP = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _host_problems(name: str, config: Mapping[str, Any], key: str, *, required: bool, example: str) -> list[str]:
    """Problems with a host-name key (``required`` only matters when ``issuer`` is not given)."""
    if key not in config:
        return [f"upstreams.{name}.{key}: required (e.g. {example}), or set issuer"] if required else []
    if not is_hostname(config[key]):
        return [f"upstreams.{name}.{key}: expected a host name such as {example}, got {config[key]!r}"]
    return []


@dataclass(frozen=True, slots=True)
class Auth0Terms:
    """The keys an ``auth0`` table holds besides OIDC's."""

    domain: str = ""
    """The tenant host (``example.eu.auth0.com``): gives ``issuer`` and the ``/v2/logout`` endpoint."""


class Auth0Provider(OIDCProvider):
    """Auth0: ``domain`` is the tenant host; groups are the access token's ``permissions`` (RBAC)."""

    type_name: ClassVar[str] = "auth0"
    default_display_name: ClassVar[str] = "Auth0"
    preset_terms: ClassVar[type | None] = Auth0Terms

    @classmethod
    def issuer_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        return _host_problems(name, config, "domain", required="issuer" not in config,
                              example="example.eu.auth0.com")

    @classmethod
    def with_defaults(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(config)
        domain = config.get("domain")
        if is_hostname(domain):
            merged.setdefault("issuer", f"https://{domain}/")
            merged.setdefault("logout_endpoint", f"https://{domain}/v2/logout")
        merged.setdefault("groups_from_access_token", True)
        merged.setdefault("groups_claim", "permissions")
        return merged

    async def logout_url(self, *, return_to: str, id_token: str) -> str | None:
        """Auth0's ``/v2/logout?client_id=&returnTo=`` (``returnTo`` must be in the app's allowed list)."""
        if not self.settings.end_session or not self.settings.logout_endpoint:
            return None
        return add_query(self.settings.logout_endpoint,
                         [("client_id", self.settings.client_id), ("returnTo", return_to)])


@dataclass(frozen=True, slots=True)
class AuthingTerms:
    """The keys an ``authing`` table holds besides OIDC's."""

    app: str = ""
    """The Authing app name: the issuer is ``https://<app>.authing.cn/oidc``."""
    domain: str = ""
    """A custom domain instead (wins over ``app``): the issuer is ``https://<domain>/oidc``."""


class AuthingProvider(OIDCProvider):
    """Authing: ``app`` (``https://<app>.authing.cn/oidc``) or a custom ``domain`` (``https://<domain>/oidc``).

    Custom scopes such as ``order:read`` go in ``scopes`` and pass through unchanged.
    """

    type_name: ClassVar[str] = "authing"
    default_display_name: ClassVar[str] = "Authing"
    preset_terms: ClassVar[type | None] = AuthingTerms

    @classmethod
    def issuer_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        problems = _host_problems(name, config, "domain", required=False, example="login.example.com")
        if "app" in config and (not isinstance(config["app"], str) or not _AUTHING_APP.fullmatch(config["app"])):
            problems.append(f"upstreams.{name}.app: expected the Authing app name (letters, digits, '-'), "
                            f"got {config['app']!r}")
        if "issuer" not in config and "app" not in config and "domain" not in config:
            problems.append(f"upstreams.{name}.app: required (or domain, or issuer)")
        return problems

    @classmethod
    def with_defaults(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(config)
        if is_hostname(config.get("domain")):
            merged.setdefault("issuer", f"https://{config['domain']}/oidc")
        elif isinstance(config.get("app"), str) and _AUTHING_APP.fullmatch(config["app"]):
            merged.setdefault("issuer", f"https://{config['app']}.authing.cn/oidc")
        return merged


@dataclass(frozen=True, slots=True)
class CognitoTerms:
    """The keys a ``cognito`` table holds besides OIDC's."""

    region: str = ""
    """The user pool's AWS region (``eu-west-1``)."""
    user_pool_id: str = ""
    """The user pool (``eu-west-1_AbC123xyz``); with ``region`` it gives the issuer."""
    domain: str = ""
    """The hosted UI's host: enables logout through its ``/logout`` endpoint."""


class CognitoProvider(OIDCProvider):
    """Amazon Cognito user pool: ``region`` + ``user_pool_id``; ``domain`` (hosted UI) enables logout.

    Groups are ``cognito:groups``. Cognito access tokens carry no ``aud``: bearer tokens are checked by
    their ``client_id`` claim and ``token_use = access`` instead.
    """

    type_name: ClassVar[str] = "cognito"
    default_display_name: ClassVar[str] = "Amazon Cognito"
    preset_terms: ClassVar[type | None] = CognitoTerms
    username_claims: ClassVar[tuple[str, ...]] = ("preferred_username", "cognito:username", "nickname")
    bearer_audience_claim: ClassVar[str] = "client_id"
    bearer_use: ClassVar[str] = "access"

    @classmethod
    def issuer_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        problems = _host_problems(name, config, "domain", required=False, example="auth.example.com")
        derive = "issuer" not in config
        for key, pattern, example in (("region", _COGNITO_REGION, "eu-west-1"),
                                      ("user_pool_id", _COGNITO_POOL, "eu-west-1_AbC123xyz")):
            value = config.get(key)
            if value is None:
                if derive:
                    problems.append(f"upstreams.{name}.{key}: required (e.g. {example}), or set issuer")
            elif not isinstance(value, str) or not pattern.fullmatch(value):
                problems.append(f"upstreams.{name}.{key}: expected something like {example}, got {value!r}")
        return problems

    @classmethod
    def with_defaults(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(config)
        region, pool = config.get("region"), config.get("user_pool_id")
        if isinstance(region, str) and isinstance(pool, str):
            merged.setdefault("issuer", f"https://cognito-idp.{region}.amazonaws.com/{quote(pool, safe='')}")
        if is_hostname(config.get("domain")):
            merged.setdefault("logout_endpoint", f"https://{config['domain']}/logout")
        merged.setdefault("groups_claim", "cognito:groups")
        return merged

    async def logout_url(self, *, return_to: str, id_token: str) -> str | None:
        """The hosted UI's ``/logout?client_id=&logout_uri=``; None without ``domain``."""
        if not self.settings.end_session or not self.settings.logout_endpoint:
            return None
        return add_query(self.settings.logout_endpoint,
                         [("client_id", self.settings.client_id), ("logout_uri", return_to)])


@dataclass(frozen=True, slots=True)
class GoogleTerms:
    """The keys a ``google`` table holds besides OIDC's."""

    hosted_domain: str = ""
    """Admit only this Google Workspace domain (sent as ``hd``, and the ID token's ``hd`` must match)."""


class GoogleProvider(OIDCProvider):
    """Google accounts. ``hosted_domain`` limits logins to one Workspace domain: it is sent as ``hd`` and
    the ID token's ``hd`` claim must equal it (the parameter alone is only a UI hint)."""

    type_name: ClassVar[str] = "google"
    default_display_name: ClassVar[str] = "Google"
    preset_terms: ClassVar[type | None] = GoogleTerms

    @classmethod
    def issuer_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        return _host_problems(name, config, "hosted_domain", required=False, example="example.com")

    @classmethod
    def with_defaults(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(config)
        merged.setdefault("issuer", "https://accounts.google.com")
        hosted_domain = config.get("hosted_domain")
        if is_hostname(hosted_domain):
            for key in ("extra_auth_params", "required_claims"):
                table = config.get(key, {})
                if isinstance(table, Mapping):
                    merged[key] = {**table, "hd": hosted_domain}
        return merged


@dataclass(frozen=True, slots=True)
class KeycloakTerms:
    """The keys a ``keycloak`` table holds besides OIDC's."""

    base_url: str = ""
    """The server's URL (``https://sso.example.com``); with ``realm`` it gives the issuer."""
    realm: str = ""
    """The realm name."""


class KeycloakProvider(OIDCProvider):
    """Keycloak: ``base_url`` + ``realm`` give ``{base_url}/realms/{realm}``; groups are realm roles."""

    type_name: ClassVar[str] = "keycloak"
    default_display_name: ClassVar[str] = "Keycloak"
    preset_terms: ClassVar[type | None] = KeycloakTerms

    @classmethod
    def issuer_problems(cls, name: str, config: Mapping[str, Any]) -> list[str]:
        if "issuer" in config:
            return []
        problems = []
        base_url = config.get("base_url")
        if not isinstance(base_url, str) or not base_url:
            problems.append(f"upstreams.{name}.base_url: required (e.g. https://sso.example.com), or set issuer")
        realm = config.get("realm")
        if not isinstance(realm, str) or not realm or "/" in realm:
            problems.append(f"upstreams.{name}.realm: required, a realm name without '/', or set issuer")
        return problems

    @classmethod
    def with_defaults(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        merged = dict(config)
        base_url, realm = config.get("base_url"), config.get("realm")
        if isinstance(base_url, str) and base_url and isinstance(realm, str) and realm:
            merged.setdefault("issuer", f"{base_url.rstrip('/')}/realms/{quote(realm, safe='')}")
        merged.setdefault("groups_claim", "realm_access.roles")
        return merged


__all__ = [
    "Auth0Provider", "Auth0Terms", "AuthingProvider", "AuthingTerms", "CognitoProvider", "CognitoTerms",
    "GoogleProvider", "GoogleTerms", "KeycloakProvider", "KeycloakTerms",
]
