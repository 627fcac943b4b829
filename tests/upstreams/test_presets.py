"""OIDC presets: issuer derivation, where each finds groups, Google's ``hd``, logout URL shapes, config problems."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.fakes.oidc import (
    CLIENT_ID,
    REDIRECT_URI,
    FakeOIDC,
    FakeUser,
    ServerFactory,
    browser_login,
    make_login_secrets,
)
from upstreams import build_provider, config_problems, provider_class
from upstreams.base import FailureReason, Identity, ProviderError
from upstreams.oidc import OIDCProvider
from upstreams.presets import (
    Auth0Provider,
    AuthingProvider,
    CognitoProvider,
    GoogleProvider,
    KeycloakProvider,
)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def build(name: str, config: dict[str, Any], http: aiohttp.ClientSession) -> OIDCProvider:
    assert config_problems(name, config) == []
    provider = build_provider(name, config, http)
    assert isinstance(provider, OIDCProvider)
    return provider


async def login(provider: OIDCProvider) -> Identity:
    secrets = make_login_secrets()
    callback = await browser_login(provider, secrets)
    return await provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=secrets)


def query(url: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query)


@pytest.mark.parametrize(("type_name", "cls"), [
    ("oidc", OIDCProvider), ("auth0", Auth0Provider), ("authing", AuthingProvider), ("cognito", CognitoProvider),
    ("google", GoogleProvider), ("keycloak", KeycloakProvider),
])
def test_registry(type_name: str, cls: type[OIDCProvider]) -> None:
    assert cast(type[OIDCProvider], provider_class(type_name)) is cls
    assert cls.type_name == type_name


# ---- issuer derivation ------------------------------------------------------------------------------

@pytest.mark.parametrize(("type_name", "config", "issuer"), [
    pytest.param("auth0", {"domain": "acme.eu.auth0.com"}, "https://acme.eu.auth0.com/", id="auth0"),
    pytest.param("authing", {"app": "acme"}, "https://acme.authing.cn/oidc", id="authing-app"),
    pytest.param("authing", {"domain": "login.acme.com"}, "https://login.acme.com/oidc", id="authing-domain"),
    pytest.param("cognito", {"region": "eu-west-1", "user_pool_id": "eu-west-1_AbC123"},
                 "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC123", id="cognito"),
    pytest.param("google", {}, "https://accounts.google.com", id="google"),
    pytest.param("keycloak", {"base_url": "https://sso.acme.com/", "realm": "staff"},
                 "https://sso.acme.com/realms/staff", id="keycloak"),
    pytest.param("keycloak", {"base_url": "https://sso.acme.com", "realm": "staff",
                              "issuer": "https://override.example.com/x"}, "https://override.example.com/x",
                 id="explicit-issuer-wins"),
])
def test_issuer_is_derived(type_name: str, config: dict[str, Any], issuer: str) -> None:
    full = {"type": type_name, "client_id": CLIENT_ID, **config}
    assert config_problems("sso", full) == []
    cls = cast(type[OIDCProvider], provider_class(type_name))
    assert cls.parse_config(full).issuer == issuer


@pytest.mark.parametrize(("type_name", "config", "expected"), [
    pytest.param("auth0", {}, ["upstreams.sso.domain: required (e.g. example.eu.auth0.com), or set issuer"],
                 id="auth0-missing"),
    pytest.param("auth0", {"domain": "https://acme.auth0.com"},
                 ["upstreams.sso.domain: expected a host name such as example.eu.auth0.com, "
                  "got 'https://acme.auth0.com'"], id="auth0-url-not-host"),
    pytest.param("authing", {}, ["upstreams.sso.app: required (or domain, or issuer)"], id="authing-missing"),
    pytest.param("authing", {"app": "Acme Corp"},
                 ["upstreams.sso.app: expected the Authing app name (letters, digits, '-'), got 'Acme Corp'"],
                 id="authing-bad-app"),
    pytest.param("cognito", {"region": "Europe"},
                 ["upstreams.sso.region: expected something like eu-west-1, got 'Europe'",
                  "upstreams.sso.user_pool_id: required (e.g. eu-west-1_AbC123xyz), or set issuer"],
                 id="cognito-both"),
    pytest.param("google", {"hosted_domain": "*"},
                 ["upstreams.sso.hosted_domain: expected a host name such as example.com, got '*'"],
                 id="google-hd-wildcard"),
    pytest.param("keycloak", {"base_url": "https://sso.acme.com"},
                 ["upstreams.sso.realm: required, a realm name without '/', or set issuer"], id="keycloak-realm"),
    pytest.param("keycloak", {"base_url": "http://sso.acme.com", "realm": "staff"},
                 ["upstreams.sso.issuer: must use https (allow_insecure_http = true permits http for tests and "
                  "development)"], id="keycloak-http"),
])
def test_preset_config_problems(type_name: str, config: dict[str, Any], expected: list[str]) -> None:
    assert config_problems("sso", {"type": type_name, "client_id": CLIENT_ID, **config}) == expected


def test_preset_problems_come_with_the_common_ones() -> None:
    problems = config_problems("sso", {"type": "cognito", "allowed_algorithms": ["HS256"]})
    assert problems == [
        "upstreams.sso.region: required (e.g. eu-west-1), or set issuer",
        "upstreams.sso.user_pool_id: required (e.g. eu-west-1_AbC123xyz), or set issuer",
        "upstreams.sso.client_id: required",
        "upstreams.sso.allowed_algorithms: HS256 is not allowed: symmetric algorithms let anyone holding the key "
        "set forge tokens",
    ]


@pytest.mark.parametrize(("type_name", "config", "expected"), [
    pytest.param("google", {"hosted_domian": "acme.com"},
                 ["upstreams.sso.hosted_domian: unknown setting; did you mean 'hosted_domain'?"],
                 id="google-hosted_domian"),
    pytest.param("auth0", {"domain": "acme.eu.auth0.com", "audiance": "https://api.acme.com"},
                 ["upstreams.sso.audiance: unknown setting; did you mean 'audience'?"], id="auth0-audiance"),
    pytest.param("authing", {"ap": "acme"},
                 ["upstreams.sso.ap: unknown setting; did you mean 'app'?",
                  "upstreams.sso.app: required (or domain, or issuer)"], id="authing-ap"),
    pytest.param("cognito", {"region": "eu-west-1", "user_pool": "eu-west-1_AbC123"},
                 ["upstreams.sso.user_pool: unknown setting; did you mean 'user_pool_id'?",
                  "upstreams.sso.user_pool_id: required (e.g. eu-west-1_AbC123xyz), or set issuer"],
                 id="cognito-user_pool"),
    pytest.param("keycloak", {"base_url": "https://sso.acme.com", "relm": "staff"},
                 ["upstreams.sso.relm: unknown setting; did you mean 'realm'?",
                  "upstreams.sso.realm: required, a realm name without '/', or set issuer"], id="keycloak-relm"),
    pytest.param("oidc", {"issuer": "https://idp.acme.com", "required_claim": {"tid": "acme"}},
                 ["upstreams.sso.required_claim: unknown setting; did you mean 'required_claims'?"],
                 id="oidc-required_claim"),
])
def test_misspelt_keys_are_reported_with_a_suggestion(type_name: str, config: dict[str, Any],
                                                      expected: list[str]) -> None:
    """A typo must not switch a restriction off: it is a problem, and names the key that was meant."""
    assert config_problems("sso", {"type": type_name, "client_id": CLIENT_ID, **config}) == expected


@pytest.mark.parametrize("cls", [Auth0Provider, AuthingProvider, CognitoProvider, GoogleProvider, KeycloakProvider])
def test_a_preset_takes_its_own_terms_and_every_oidc_key(cls: type[OIDCProvider]) -> None:
    assert cls.preset_terms is not None
    own = {f.name for f in dataclasses.fields(cls.preset_terms)}
    assert cls.config_keys() == OIDCProvider.config_keys() | own
    assert own and not own & OIDCProvider.config_keys()
    # A term of another preset is a typo here, not a silently ignored key.
    if cls is not GoogleProvider:
        assert config_problems("sso", {"type": cls.type_name, "hosted_domain": "acme.com"})[0].startswith(
            "upstreams.sso.hosted_domain: unknown setting")


# ---- logins against the fake ------------------------------------------------------------------------

async def test_auth0_groups_are_access_token_permissions(aiohttp_server: ServerFactory,
                                                         http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(path="/", users=[FakeUser(
        sub="auth0|42", email="ada@acme.com", access_claims={"permissions": ["admin", "read:reports"]},
        id_claims={"groups": ["ignored"]})]).start(aiohttp_server)
    assert fake.issuer.endswith("/"), "Auth0 issuers end in a slash"
    provider = build("auth0", fake.config(type="auth0", domain="acme.eu.auth0.com",
                                          audience="https://api.acme.com"), http)
    identity = await login(provider)
    assert identity.groups == ("admin", "read:reports")
    assert fake.authorize_requests[-1]["audience"] == "https://api.acme.com"
    assert provider.display_name == "Auth0"


async def test_authing_passes_custom_scopes(aiohttp_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(path="/oidc").start(aiohttp_server)
    provider = build("authing", fake.config(type="authing", app="acme",
                                            scopes=["openid", "profile", "email", "order:read"]), http)
    identity = await login(provider)
    assert identity.subject == "user-alice"
    assert fake.authorize_requests[-1]["scope"] == "openid profile email order:read"


async def test_cognito_groups_and_username(aiohttp_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(users=[FakeUser(
        sub="5f0e-uuid", email="ops@acme.com",
        id_claims={"cognito:groups": ["ops", "admins"], "cognito:username": "opsy"})]).start(aiohttp_server)
    provider = build("cognito", fake.config(type="cognito", region="eu-west-1", user_pool_id="eu-west-1_AbC123"),
                     http)
    identity = await login(provider)
    assert identity.groups == ("ops", "admins")
    assert identity.username == "opsy"


async def test_keycloak_realm_roles_through_derived_issuer(aiohttp_server: ServerFactory,
                                                           http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(path="/realms/acme", users=[FakeUser(
        sub="kc-1", email="kc@acme.com", id_claims={"realm_access": {"roles": ["offline_access", "admin"]}},
    )]).start(aiohttp_server)
    assert fake.server is not None
    config = {"type": "keycloak", "base_url": f"http://{fake.server.host}:{fake.server.port}", "realm": "acme",
              "client_id": CLIENT_ID, "client_secret": fake.client_secret, "allow_insecure_http": True}
    identity = await login(build("keycloak", config, http))
    assert identity.groups == ("offline_access", "admin")


@pytest.mark.parametrize(("claims", "outcome"), [
    pytest.param({"hd": "acme.com"}, None, id="same-domain"),
    pytest.param({"hd": "evil.com"}, FailureReason.ACCESS_DENIED, id="other-domain"),
    pytest.param({}, FailureReason.ACCESS_DENIED, id="consumer-account-without-hd"),
])
async def test_google_hosted_domain_is_enforced(aiohttp_server: ServerFactory, http: aiohttp.ClientSession,
                                                claims: dict[str, Any], outcome: FailureReason | None) -> None:
    fake = await FakeOIDC(path="", users=[FakeUser(sub="1234567890", email="ada@acme.com", id_claims=claims)]
                          ).start(aiohttp_server)
    provider = build("google", fake.config(type="google", hosted_domain="acme.com"), http)
    if outcome is None:
        assert (await login(provider)).subject == "1234567890"
    else:
        with pytest.raises(ProviderError) as info:
            await login(provider)
        assert info.value.reason is outcome
        assert "hd" in info.value.message
    assert fake.authorize_requests[-1]["hd"] == "acme.com"


async def test_google_without_hosted_domain_accepts_any_account(aiohttp_server: ServerFactory,
                                                                http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(path="").start(aiohttp_server)
    provider = build("google", fake.config(type="google"), http)
    assert (await login(provider)).subject == "user-alice"
    assert "hd" not in fake.authorize_requests[-1]


# ---- logout URL shapes ------------------------------------------------------------------------------

async def test_auth0_logout_url(http: aiohttp.ClientSession) -> None:
    provider = build("auth0", {"type": "auth0", "domain": "acme.eu.auth0.com", "client_id": CLIENT_ID}, http)
    url = await provider.logout_url(return_to="https://app.acme.com/", id_token="a.b.c")
    assert url is not None
    assert query(url) == ("https://acme.eu.auth0.com/v2/logout",
                          {"client_id": [CLIENT_ID], "returnTo": ["https://app.acme.com/"]})


async def test_cognito_logout_url(http: aiohttp.ClientSession) -> None:
    config = {"type": "cognito", "region": "eu-west-1", "user_pool_id": "eu-west-1_AbC123", "client_id": CLIENT_ID}
    without_domain = build("cognito", config, http)
    assert await without_domain.logout_url(return_to="https://app.acme.com/", id_token="") is None
    provider = build("cognito", {**config, "domain": "auth.acme.com"}, http)
    url = await provider.logout_url(return_to="https://app.acme.com/", id_token="a.b.c")
    assert url is not None
    assert query(url) == ("https://auth.acme.com/logout",
                          {"client_id": [CLIENT_ID], "logout_uri": ["https://app.acme.com/"]})
    disabled = build("cognito", {**config, "domain": "auth.acme.com", "end_session": False}, http)
    assert await disabled.logout_url(return_to="https://app.acme.com/", id_token="") is None


async def test_keycloak_logout_url_comes_from_discovery(aiohttp_server: ServerFactory,
                                                        http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(path="/realms/acme").start(aiohttp_server)
    provider = build("keycloak", fake.config(type="keycloak"), http)
    url = await provider.logout_url(return_to="https://app.acme.com/", id_token="a.b.c")
    assert url is not None
    assert query(url) == (f"{fake.issuer}/logout", {"client_id": [CLIENT_ID],
                                                    "post_logout_redirect_uri": ["https://app.acme.com/"],
                                                    "id_token_hint": ["a.b.c"]})


async def test_google_has_no_logout_url(aiohttp_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(path="").start(aiohttp_server)
    fake.knobs.end_session = False  # Google's discovery names no end_session_endpoint
    provider = build("google", fake.config(type="google"), http)
    assert await provider.logout_url(return_to="https://app.acme.com/", id_token="a.b.c") is None


# ---- bearer tokens ----------------------------------------------------------------------------------

async def test_cognito_bearer_is_checked_by_client_id_and_token_use(aiohttp_server: ServerFactory,
                                                                    http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(users=[FakeUser(sub="5f0e-uuid", access_claims={"cognito:groups": ["ops"]})]
                          ).start(aiohttp_server)
    provider = build("cognito", fake.config(type="cognito"), http)
    # Cognito access tokens have no aud: the client is in client_id, the kind in token_use.
    good = fake.access_token(aud=[], token_use="access")
    identity = await provider.verify_bearer(good)
    assert identity is not None and identity.groups == ("ops",)
    assert await provider.verify_bearer(fake.access_token(aud=[], token_use="id")) is None
    assert await provider.verify_bearer(fake.access_token(aud=[], token_use="access", client_id="other")) is None
