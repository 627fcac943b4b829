"""OIDCProvider against a real fake provider: the code flow with PKCE, every way a token can be wrong, caches."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.fakes.oidc import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    Alg,
    FakeOIDC,
    FakeUser,
    Knobs,
    ServerFactory,
    browser_login,
    make_login_secrets,
)
from upstreams import build_provider, config_problems
from upstreams.base import Callback, FailureReason, Identity, LogoutNotice, ProviderError
from upstreams.oidc import DISCOVERY_TTL, JWKS_TTL, OIDCProvider


class Clock:
    """Monotonic time that moves only when told to (for cache expiry)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake(aiohttp_server: ServerFactory) -> FakeOIDC:
    alice = FakeUser(sub="user-alice", email="alice@example.com", name="Alice Liddell",
                     preferred_username="alice", id_claims={"groups": ["staff", "admins"]})
    return await FakeOIDC(users=[alice]).start(aiohttp_server)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def provider_for(fake: FakeOIDC, http: aiohttp.ClientSession, **overrides: Any) -> OIDCProvider:
    config = fake.config(**overrides)
    assert config_problems("corp", config) == []
    provider = build_provider("corp", config, http)
    assert isinstance(provider, OIDCProvider)
    return provider


async def login(provider: OIDCProvider) -> Identity:
    secrets = make_login_secrets()
    callback = await browser_login(provider, secrets)
    return await provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=secrets)


async def failed_login(provider: OIDCProvider) -> ProviderError:
    secrets = make_login_secrets()
    callback = await browser_login(provider, secrets)
    with pytest.raises(ProviderError) as info:
        await provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=secrets)
    assert_safe(info.value, callback)
    return info.value


def assert_safe(error: ProviderError, callback: Callback | None = None) -> None:
    """A failure message holds no secret, code or token."""
    assert CLIENT_SECRET not in error.message
    assert "eyJ" not in error.message
    if callback is not None and callback.params.get("code"):
        assert callback.params["code"] not in error.message


def s256(verifier: str) -> str:
    """RFC 7636 S256, computed independently of the code under test."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# ---- the happy path ---------------------------------------------------------------------------------

async def test_authorization_url_has_pkce_state_nonce_and_scopes(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http, scopes=["email", "order:read"], audience="https://api.example.com",
                            extra_auth_params={"prompt": "login"})
    secrets = make_login_secrets()
    url = await provider.authorization_url(redirect_uri=REDIRECT_URI, secrets=secrets)

    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{fake.issuer}/authorize"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI,
        "scope": "openid email order:read", "state": secrets.state, "nonce": secrets.nonce,
        "code_challenge": s256(secrets.code_verifier), "code_challenge_method": "S256",
        "audience": "https://api.example.com", "prompt": "login",
    }
    assert secrets.code_verifier not in url


async def test_default_scopes(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    url = await provider_for(fake, http).authorization_url(redirect_uri=REDIRECT_URI, secrets=make_login_secrets())
    assert parse_qs(urlsplit(url).query)["scope"] == ["openid email profile"]


async def test_login_returns_the_verified_identity(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    identity = await login(provider_for(fake, http))

    assert identity.subject == "user-alice"
    assert identity.email == "alice@example.com"
    assert identity.email_verified is True
    assert identity.name == "Alice Liddell"
    assert identity.username == "alice"
    assert identity.groups == ("staff", "admins")
    assert identity.mfa is False
    assert identity.claims["iss"] == fake.issuer
    assert identity.id_token.count(".") == 2
    assert identity.session_id == fake.session_ids[-1]
    token_request = fake.token_requests[-1]
    assert token_request["auth_method"] == "client_secret_post"
    assert token_request["redirect_uri"] == REDIRECT_URI
    assert token_request["code_verifier"]
    assert fake.hits["userinfo"] == 0, "every claim was in the ID token"


async def test_client_secret_basic(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    await login(provider_for(fake, http, token_endpoint_auth="client_secret_basic"))
    assert fake.token_requests[-1]["auth_method"] == "client_secret_basic"
    assert "client_secret" not in fake.token_requests[-1]


async def test_public_client_relies_on_pkce(aiohttp_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC(client_secret=None).start(aiohttp_server)
    identity = await login(provider_for(fake, http))
    assert identity.subject == "user-alice"
    assert fake.token_requests[-1]["auth_method"] == "none"


async def test_steady_state_fetches_discovery_and_keys_once(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http)
    for _ in range(3):
        await login(provider)
    assert fake.hits["discovery"] == 1
    assert fake.hits["jwks"] == 1


async def test_caches_refresh_after_ttl_and_survive_an_outage(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    clock = Clock()
    provider = OIDCProvider("corp", OIDCProvider.parse_config(fake.config()), http, clock=clock)
    await login(provider)
    clock.now += max(DISCOVERY_TTL, JWKS_TTL) + 1
    await login(provider)
    assert (fake.hits["discovery"], fake.hits["jwks"]) == (2, 2)

    fake.knobs.discovery_status = 503
    fake.knobs.jwks_status = 503
    clock.now += max(DISCOVERY_TTL, JWKS_TTL) + 1
    identity = await login(provider)
    assert identity.subject == "user-alice", "the last good discovery document and key set keep serving"
    assert (fake.hits["discovery"], fake.hits["jwks"]) == (3, 3)
    await login(provider)
    assert (fake.hits["discovery"], fake.hits["jwks"]) == (3, 3), "no refetch storm during the outage"


# ---- every way the provider can be wrong ------------------------------------------------------------

def knob(**values: Any) -> Callable[[FakeOIDC], None]:
    def apply(fake: FakeOIDC) -> None:
        for key, value in values.items():
            setattr(fake.knobs, key, value)
    return apply


def omit_email_verified(fake: FakeOIDC) -> None:
    fake.users["user-alice"].email_verified = None


MISBEHAVIOUR = [
    pytest.param(knob(id_token_iss="https://evil.example.com"), FailureReason.INVALID, "another issuer",
                 id="iss-foreign"),
    pytest.param(knob(id_token_aud="someone-else"), FailureReason.INVALID, "another audience", id="aud-foreign"),
    pytest.param(knob(id_token_aud=[CLIENT_ID, "other-client"], id_token_azp="other-client"),
                 FailureReason.INVALID, "azp", id="azp-foreign"),
    pytest.param(knob(id_token_nonce="not-our-nonce"), FailureReason.INVALID, "nonce", id="nonce-wrong"),
    pytest.param(knob(id_token_omit=("nonce",)), FailureReason.INVALID, "nonce", id="nonce-missing"),
    pytest.param(knob(id_token_alg="none"), FailureReason.INVALID, "disallowed algorithm", id="alg-none"),
    pytest.param(knob(id_token_alg="HS256-public-key"), FailureReason.INVALID, "disallowed algorithm",
                 id="alg-hs256-with-public-key"),
    pytest.param(knob(id_token_exp=-600, id_token_iat=-900), FailureReason.INVALID, "expired", id="expired"),
    pytest.param(knob(id_token_iat=600, id_token_exp=900), FailureReason.INVALID, "future", id="iat-future"),
    pytest.param(knob(id_token_omit=("exp",)), FailureReason.INVALID, "exp claim", id="exp-missing"),
    pytest.param(knob(id_token_kid="no-such-key"), FailureReason.INVALID, "does not publish", id="kid-unknown"),
    pytest.param(knob(bad_at_hash=True), FailureReason.INVALID, "at_hash", id="at-hash-wrong"),
    pytest.param(lambda fake: setattr(fake.users["user-alice"], "email_verified", False), FailureReason.INVALID,
                 "not verified", id="email-unverified"),
    pytest.param(omit_email_verified, FailureReason.INVALID, "not verified", id="email-verified-missing"),
    pytest.param(knob(id_token_omit=("email",), userinfo_sub="user-mallory"), FailureReason.INVALID,
                 "another subject", id="userinfo-other-sub"),
    pytest.param(knob(id_token_omit=("email",), userinfo_status=500), FailureReason.UNAVAILABLE, "HTTP 500",
                 id="userinfo-500"),
    pytest.param(knob(token_status=500), FailureReason.UNAVAILABLE, "HTTP 500", id="token-500"),
    pytest.param(knob(token_status=502, token_body="<html>bad gateway</html>"), FailureReason.UNAVAILABLE,
                 "HTTP 502", id="token-502"),
    pytest.param(knob(token_body="<html>surprise</html>"), FailureReason.UNAVAILABLE, "not a JSON object",
                 id="token-not-json"),
    pytest.param(knob(token_error="invalid_grant"), FailureReason.INVALID, "invalid_grant", id="token-400"),
    pytest.param(knob(callback_iss="https://evil.example.com"), FailureReason.INVALID, "RFC 9207",
                 id="callback-iss-foreign"),
    pytest.param(knob(advertise_iss_parameter=True), FailureReason.INVALID, "lacks the iss parameter",
                 id="callback-iss-missing-but-promised"),
    pytest.param(knob(authorize_error="access_denied"), FailureReason.ACCESS_DENIED, "access_denied",
                 id="access-denied"),
    pytest.param(knob(authorize_error="invalid_scope"), FailureReason.INVALID, "invalid_scope",
                 id="authorize-error"),
    pytest.param(knob(authorize_error="temporarily_unavailable"), FailureReason.UNAVAILABLE,
                 "temporarily_unavailable", id="authorize-temporarily-unavailable"),
]


@pytest.mark.parametrize(("misbehave", "reason", "words"), MISBEHAVIOUR)
async def test_misbehaving_provider_is_rejected(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                misbehave: Callable[[FakeOIDC], None], reason: FailureReason,
                                                words: str) -> None:
    misbehave(fake)
    error = await failed_login(provider_for(fake, http))
    assert error.reason is reason
    assert words in error.message
    assert error.message.startswith("corp: ")


@pytest.mark.parametrize("alg", ["HS256-public-key", "none"])
async def test_symmetric_and_none_refused_even_if_settings_allow_them(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                                      alg: Alg) -> None:
    """Settings built without config_problems still never verify with HS* or none."""
    settings = dataclasses.replace(OIDCProvider.parse_config(fake.config()),
                                   allowed_algorithms=("RS256", "HS256", "none"))
    provider = OIDCProvider("corp", settings, http)
    fake.knobs.id_token_alg = alg
    error = await failed_login(provider)
    assert "disallowed algorithm" in error.message
    assert await provider.verify_bearer(fake.access_token(alg=alg)) is None


async def test_callback_iss_equal_to_the_issuer_is_accepted(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.knobs.callback_iss = fake.issuer
    fake.knobs.advertise_iss_parameter = True
    assert (await login(provider_for(fake, http))).subject == "user-alice"


async def test_unverified_email_trusted_only_when_configured(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    omit_email_verified(fake)
    identity = await login(provider_for(fake, http, trust_unverified_email=True))
    assert (identity.email, identity.email_verified) == ("alice@example.com", True)

    fake.users["user-alice"].email_verified = False
    error = await failed_login(provider_for(fake, http, trust_unverified_email=True))
    assert "not verified" in error.message, "an explicit false is never trusted"

    identity = await login(provider_for(fake, http, require_verified_email=False))
    assert (identity.email, identity.email_verified) == ("alice@example.com", False)


async def test_missing_code_and_replayed_code(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http)
    secrets = make_login_secrets()
    callback = await browser_login(provider, secrets)
    without_code = Callback(params={"state": secrets.state}, cookies={})
    with pytest.raises(ProviderError, match="no code") as info:
        await provider.redeem(callback=without_code, redirect_uri=REDIRECT_URI, secrets=secrets)
    assert info.value.reason is FailureReason.INVALID

    await provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=secrets)
    with pytest.raises(ProviderError, match="invalid_grant") as info:
        await provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=secrets)
    assert info.value.reason is FailureReason.INVALID
    assert_safe(info.value, callback)


async def test_wrong_pkce_verifier_or_redirect_uri(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http)
    secrets = make_login_secrets()
    callback = await browser_login(provider, secrets)
    other = make_login_secrets()
    with pytest.raises(ProviderError, match="invalid_grant"):
        await provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=other)

    callback = await browser_login(provider, secrets)
    with pytest.raises(ProviderError, match="invalid_grant"):
        await provider.redeem(callback=callback, redirect_uri=REDIRECT_URI + "-elsewhere", secrets=secrets)


async def test_discovery_for_another_issuer_is_refused(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.knobs.discovery_issuer = "https://evil.example.com"
    with pytest.raises(ProviderError, match="names issuer") as info:
        await provider_for(fake, http).authorization_url(redirect_uri=REDIRECT_URI, secrets=make_login_secrets())
    assert info.value.reason is FailureReason.UNAVAILABLE


async def test_discovery_down_is_unavailable(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.knobs.discovery_status = 500
    with pytest.raises(ProviderError, match="HTTP 500") as info:
        await provider_for(fake, http).authorization_url(redirect_uri=REDIRECT_URI, secrets=make_login_secrets())
    assert info.value.reason is FailureReason.UNAVAILABLE


@pytest.mark.parametrize("where", ["token", "discovery"])
async def test_slow_provider_is_unavailable_within_the_timeout(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                               where: str) -> None:
    provider = provider_for(fake, http, timeout=0.3)
    secrets = make_login_secrets()
    callback = Callback(params={"code": "x", "state": secrets.state}, cookies={})
    if where == "token":
        callback = await browser_login(provider, secrets)
        fake.knobs.token_delay = 5
    else:
        fake.knobs.discovery_delay = 5
    started = time.monotonic()
    with pytest.raises(ProviderError, match="did not answer") as info:
        await provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=secrets)
    assert info.value.reason is FailureReason.UNAVAILABLE
    assert time.monotonic() - started < 1.5


async def test_unreachable_provider_is_unavailable(http: aiohttp.ClientSession) -> None:
    config = {"type": "oidc", "issuer": "http://127.0.0.1:9/oidc", "client_id": "x", "allow_insecure_http": True,
              "timeout": 2}
    provider = OIDCProvider.from_config("corp", config, http)
    with pytest.raises(ProviderError, match="could not reach") as info:
        await provider.authorization_url(redirect_uri=REDIRECT_URI, secrets=make_login_secrets())
    assert info.value.reason is FailureReason.UNAVAILABLE


# ---- keys -------------------------------------------------------------------------------------------

async def test_key_rotation_refetches_the_key_set_once(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http)
    await login(provider)
    assert fake.hits["jwks"] == 1

    fake.rotate_key()
    identity = await login(provider)
    assert identity.subject == "user-alice"
    assert fake.hits["jwks"] == 2
    await login(provider)
    assert fake.hits["jwks"] == 2


async def test_unknown_kid_refetch_is_rate_limited(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http)
    await login(provider)
    fake.knobs.id_token_kid = "no-such-key"
    for _ in range(3):
        error = await failed_login(provider)
        assert "does not publish" in error.message
    assert fake.hits["jwks"] == 2, "one refetch for the unknown kid, then the rate limit holds"


async def test_rotation_during_an_outage_of_the_key_set(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http)
    await login(provider)
    fake.rotate_key()
    fake.knobs.jwks_status = 503
    error = await failed_login(provider)
    assert error.reason is FailureReason.UNAVAILABLE


# ---- claims -----------------------------------------------------------------------------------------

async def test_userinfo_fills_what_the_id_token_lacks(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.knobs.id_token_omit = ("email", "email_verified", "name", "preferred_username", "groups")
    fake.users["user-alice"].userinfo_only = {"nickname": "ally"}
    identity = await login(provider_for(fake, http))
    assert fake.hits["userinfo"] == 1
    assert (identity.email, identity.email_verified) == ("alice@example.com", True)
    assert (identity.name, identity.username) == ("Alice Liddell", "alice")
    assert identity.groups == ("staff", "admins")
    assert identity.claims["nickname"] == "ally"


async def test_no_userinfo_endpoint_means_id_token_claims_only(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.knobs.userinfo = False
    fake.knobs.id_token_omit = ("groups",)
    identity = await login(provider_for(fake, http))
    assert identity.groups == ()
    assert fake.hits["userinfo"] == 0


@pytest.mark.parametrize(("claims", "groups_claim", "groups"), [
    pytest.param({"groups": "solo"}, "groups", ("solo",), id="string"),
    pytest.param({"realm_access": {"roles": ["admin", "user"]}}, "realm_access.roles", ("admin", "user"),
                 id="keycloak-dotted-path"),
    pytest.param({"cognito:groups": ["ops"]}, "cognito:groups", ("ops",), id="cognito-colon-key"),
    pytest.param({"https://example.com/roles": ["editor"]}, "https://example.com/roles", ("editor",),
                 id="namespaced-url-key"),
    pytest.param({"groups": ["a", 3, None, "b", "a"]}, "groups", ("a", "b"), id="junk-and-duplicates-dropped"),
    pytest.param({"groups": {"not": "a list"}}, "groups", (), id="object-ignored"),
])
async def test_groups_claim(fake: FakeOIDC, http: aiohttp.ClientSession, claims: dict[str, Any],
                            groups_claim: str, groups: tuple[str, ...]) -> None:
    fake.users["user-alice"].id_claims = claims
    identity = await login(provider_for(fake, http, groups_claim=groups_claim))
    assert identity.groups == groups


async def test_groups_from_a_verified_access_token(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.users["user-alice"].access_claims = {"permissions": ["read:reports", "admin"]}
    provider = provider_for(fake, http, groups_from_access_token=True, groups_claim="permissions",
                            audience="https://api.example.com")
    identity = await login(provider)
    assert identity.groups == ("read:reports", "admin")
    assert fake.authorize_requests[-1]["audience"] == "https://api.example.com"

    fake.knobs.access_token_jwt = False
    assert (await login(provider)).groups == (), "an opaque access token carries no groups"


@pytest.mark.parametrize(("claims", "acr_values", "mfa"), [
    pytest.param({"amr": ["pwd", "otp"]}, [], True, id="amr-otp"),
    pytest.param({"amr": ["mfa"]}, [], True, id="amr-mfa"),
    pytest.param({"amr": ["hwk"]}, [], True, id="amr-hardware-key"),
    pytest.param({"amr": ["pwd"]}, [], False, id="amr-password-only"),
    pytest.param({"amr": "mfa"}, [], False, id="amr-not-a-list"),
    pytest.param({"acr": "gold"}, ["gold"], True, id="acr-configured"),
    pytest.param({"acr": "silver"}, ["gold"], False, id="acr-other"),
])
async def test_mfa(fake: FakeOIDC, http: aiohttp.ClientSession, claims: dict[str, Any], acr_values: list[str],
                   mfa: bool) -> None:
    fake.users["user-alice"].id_claims = {"groups": [], **claims}
    identity = await login(provider_for(fake, http, mfa_acr_values=acr_values))
    assert identity.mfa is mfa


@pytest.mark.parametrize("email", ["attacker@evil.com@corp.com", "no-at-sign", " spaced @x.com", ""])
async def test_malformed_email_is_dropped(fake: FakeOIDC, http: aiohttp.ClientSession, email: str) -> None:
    fake.users["user-alice"].email = email
    identity = await login(provider_for(fake, http))
    assert (identity.email, identity.email_verified) == ("", False)


# ---- logout -----------------------------------------------------------------------------------------

async def test_logout_url(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http)
    url = await provider.logout_url(return_to="https://app.example.com/bye", id_token="the.id.token")
    assert url is not None
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{fake.issuer}/logout"
    assert parse_qs(parts.query) == {"client_id": [CLIENT_ID], "post_logout_redirect_uri": ["https://app.example.com/bye"],
                                     "id_token_hint": ["the.id.token"]}
    url = await provider.logout_url(return_to="https://app.example.com/", id_token="")
    assert url is not None and "id_token_hint" not in url


async def test_no_logout_url_when_disabled_absent_or_down(aiohttp_server: ServerFactory,
                                                          http: aiohttp.ClientSession) -> None:
    fake = await FakeOIDC().start(aiohttp_server)
    assert await provider_for(fake, http, end_session=False).logout_url(return_to="https://a/", id_token="") is None
    fake.knobs.end_session = False
    assert await provider_for(fake, http).logout_url(return_to="https://a/", id_token="") is None
    fake.knobs.discovery_status = 500
    assert await provider_for(fake, http).logout_url(return_to="https://a/", id_token="") is None


# ---- bearer tokens ----------------------------------------------------------------------------------

async def test_verify_bearer_accepts_a_good_token(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.users["user-alice"].access_claims = {"groups": ["api-users"], "email": "alice@example.com",
                                              "email_verified": True}
    identity = await provider_for(fake, http).verify_bearer(fake.access_token())
    assert identity is not None
    assert (identity.subject, identity.groups, identity.email) == ("user-alice", ("api-users",), "alice@example.com")
    assert identity.id_token == ""


async def test_verify_bearer_uses_bearer_audience(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http, bearer_audience="https://api.example.com")
    assert await provider.verify_bearer(fake.access_token(aud=["https://api.example.com", "x"])) is not None
    assert await provider.verify_bearer(fake.access_token()) is None


BAD_BEARERS: list[Any] = [
    pytest.param(lambda fake: fake.access_token(aud="someone-else"), id="aud-foreign"),
    pytest.param(lambda fake: fake.access_token(exp=-600), id="expired"),
    pytest.param(lambda fake: fake.access_token(alg="none"), id="alg-none"),
    pytest.param(lambda fake: fake.access_token(alg="HS256-public-key"), id="alg-hs256-with-public-key"),
    pytest.param(lambda fake: fake.access_token(iss="https://evil.example.com"), id="issuer-foreign"),
    pytest.param(lambda fake: fake.access_token(kid="no-such-key"), id="kid-unknown"),
    pytest.param(lambda fake: fake.access_token()[:-4] + "AAAA", id="signature-tampered"),
    pytest.param(lambda fake: "not-a-jwt", id="garbage"),
    pytest.param(lambda fake: "a.b.c", id="three-garbage-parts"),
    pytest.param(lambda fake: "x" * 20_000, id="huge"),
]


@pytest.mark.parametrize("make_token", BAD_BEARERS)
async def test_verify_bearer_rejects(fake: FakeOIDC, http: aiohttp.ClientSession,
                                     make_token: Callable[[FakeOIDC], str]) -> None:
    assert await provider_for(fake, http).verify_bearer(make_token(fake)) is None


async def test_verify_bearer_foreign_issuer_costs_no_request(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    await provider_for(fake, http).verify_bearer(fake.access_token(iss="https://elsewhere.example.com"))
    assert sum(fake.hits.values()) == 0


async def test_verify_bearer_unavailable_only_without_keys(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.knobs.jwks_status = 503
    provider = provider_for(fake, http)
    with pytest.raises(ProviderError) as info:
        await provider.verify_bearer(fake.access_token())
    assert info.value.reason is FailureReason.UNAVAILABLE

    fake.knobs.jwks_status = 200
    assert await provider.verify_bearer(fake.access_token()) is not None
    fake.knobs.jwks_status = 503
    assert await provider.verify_bearer(fake.access_token()) is not None, "cached keys keep working"


# ---- config -----------------------------------------------------------------------------------------

def test_config_problems_lists_everything_at_once() -> None:
    problems = OIDCProvider.config_problems("corp", {
        "type": "oidc", "issuer": "http://idp.example.com", "scopes": "openid email",
        "allowed_algorithms": ["RS256", "HS256", "none", "XX1"], "token_endpoint_auth": "client_secret_basic",
        "timeout": "soon", "clock_skew": -1, "end_session": "yes", "extra_auth_params": {"state": "x"},
        "groups_claim": "", "required_claims": {"hd": 1},
    })
    assert problems == [
        "upstreams.corp.end_session: expected true or false, got 'yes'",
        "upstreams.corp.groups_claim: expected a non-empty string, got ''",
        "upstreams.corp.client_id: required",
        "upstreams.corp.issuer: must use https (allow_insecure_http = true permits http for tests and development)",
        "upstreams.corp.scopes: expected a list of scope names without spaces, got 'openid email'",
        "upstreams.corp.extra_auth_params: may not set state (the flow owns them)",
        "upstreams.corp.required_claims: expected a table of strings, got {'hd': 1}",
        "upstreams.corp.allowed_algorithms: HS256 is not allowed: symmetric algorithms let anyone holding "
        "the key set forge tokens",
        "upstreams.corp.allowed_algorithms: 'none' is never allowed (unsigned tokens)",
        "upstreams.corp.allowed_algorithms: unknown algorithm 'XX1' (known: RS256, RS384, RS512, PS256, PS384, "
        "PS512, ES256, ES384, ES512, EdDSA)",
        "upstreams.corp.client_secret: required with token_endpoint_auth = client_secret_basic",
        "upstreams.corp.timeout: expected a positive number of seconds, got 'soon'",
        "upstreams.corp.clock_skew: expected a number of seconds between 0 and 600, got -1",
    ]


@pytest.mark.parametrize(("config", "problem"), [
    pytest.param({}, "upstreams.corp.issuer: required", id="issuer-missing"),
    pytest.param({"issuer": "https://idp.example.com/?x=1"}, "must not have a query", id="issuer-query"),
    pytest.param({"issuer": "https://user:pw@idp.example.com"}, "no credentials", id="issuer-credentials"),
    pytest.param({"issuer": 3}, "expected an absolute URL", id="issuer-type"),
    pytest.param({"client_secret": 42}, "client_secret: expected a string", id="secret-type"),
    pytest.param({"allowed_algorithms": []}, "allowed_algorithms: expected a non-empty list", id="algs-empty"),
    pytest.param({"timeout": True}, "timeout: expected a positive number", id="timeout-bool"),
    pytest.param({"mfa_acr_values": "gold"}, "mfa_acr_values: expected a list", id="acr-type"),
])
def test_config_problem(config: dict[str, Any], problem: str) -> None:
    base = {"type": "oidc", "issuer": "https://idp.example.com", "client_id": "x"}
    problems = OIDCProvider.config_problems("corp", {**base, **config} if config else {"client_id": "x"})
    assert any(problem in p for p in problems), problems


def test_valid_configs_have_no_problems() -> None:
    assert OIDCProvider.config_problems("corp", {"type": "oidc", "issuer": "https://idp.example.com",
                                                 "client_id": "x"}) == []
    assert OIDCProvider.config_problems("corp", {"type": "oidc", "issuer": "http://localhost:8080/realms/dev",
                                                 "client_id": "x", "allow_insecure_http": True,
                                                 "allowed_algorithms": ["RS256", "EdDSA"], "timeout": 2.5,
                                                 "clock_skew": 0, "mfa_acr_values": ["gold"]}) == []


def test_parse_config_defaults() -> None:
    settings = OIDCProvider.parse_config({"issuer": "https://idp.example.com", "client_id": "x",
                                          "scopes": ["email", "order:read"]})
    assert settings.scopes == ("openid", "email", "order:read")
    assert settings.allowed_algorithms == ("RS256", "ES256", "PS256")
    assert settings.bearer_audience == "x"
    assert settings.clock_skew == 60
    assert settings.require_verified_email is True
    assert settings.trust_unverified_email is False
    assert settings.timeout.total == 10


def test_knobs_default_to_good_behaviour() -> None:
    assert Knobs().id_token_alg == "RS256"


# ---- back-channel logout tokens (OIDC Back-Channel Logout 1.0, 2.6) ---------------------------------------

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
NOW = int(time.time())

FORGED_LOGOUT_TOKENS = [
    pytest.param({"aud": "another-client"}, "another audience", id="wrong-aud"),
    pytest.param({"iss": "https://evil.example"}, "another issuer", id="wrong-iss"),
    pytest.param({"azp": "another-client"}, "another client (azp)", id="wrong-azp"),
    pytest.param({"events": {}}, "no back-channel logout event", id="no-event"),
    pytest.param({"events": [LOGOUT_EVENT]}, "no back-channel logout event", id="events-a-list"),
    pytest.param({"events": {LOGOUT_EVENT: "yes"}}, "no back-channel logout event", id="event-not-an-object"),
    pytest.param({"nonce": "n-1"}, "carries a nonce", id="nonce"),
    pytest.param({"sub": None}, "neither a subject nor a session", id="neither-sub-nor-sid"),
    pytest.param({"jti": 7}, "invalid", id="jti-a-number"),
    pytest.param({"sid": ["s"]}, "sid is malformed", id="sid-a-list"),
    pytest.param({"sid": "s" * 1025}, "sid is malformed", id="sid-huge"),
    pytest.param({"omit": ("jti",)}, "lacks the jti claim", id="no-jti"),
    pytest.param({"omit": ("iat",)}, "lacks the iat claim", id="no-iat"),
    pytest.param({"omit": ("exp",)}, "lacks the exp claim", id="no-exp"),
    pytest.param({"omit": ("events",)}, "lacks the events claim", id="no-events"),
    pytest.param({"exp": NOW - 3600, "iat": NOW - 3700}, "has expired", id="expired"),
    pytest.param({"iat": NOW + 3600, "exp": NOW + 3700}, "dated in the future", id="iat-in-the-future"),
    pytest.param({"typ": "at+jwt"}, "typed as something else", id="typed-as-an-access-token"),
    pytest.param({"alg": "none"}, "disallowed algorithm", id="unsigned"),
    pytest.param({"alg": "HS256-public-key"}, "disallowed algorithm", id="hs256-keyed-with-the-public-key"),
    pytest.param({"kid": "unknown-key"}, "", id="unknown-key"),
]


async def test_a_logout_token_names_the_subject_and_the_provider_session(fake: FakeOIDC,
                                                                         http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http)
    notice = await provider.verify_logout_token(fake.logout_token(sid="sid-7", jti="jti-1"))
    assert notice == LogoutNotice(subject="user-alice", session_id="sid-7", token_id="jti-1",
                                  expires_at=notice.expires_at)
    assert time.time() < notice.expires_at <= time.time() + 121
    by_session = await provider.verify_logout_token(fake.logout_token(sub=None, sid="sid-8"))
    assert (by_session.subject, by_session.session_id) == ("", "sid-8")
    untyped = await provider.verify_logout_token(fake.logout_token(typ=None))
    assert (untyped.subject, untyped.session_id) == ("user-alice", "")
    for typ in ("application/logout+jwt", "JWT"):  # "JWT": what providers that do not type them send
        assert (await provider.verify_logout_token(fake.logout_token(typ=typ))).subject == "user-alice"


@pytest.mark.parametrize(("forge", "words"), FORGED_LOGOUT_TOKENS)
async def test_forged_logout_tokens_are_refused(fake: FakeOIDC, http: aiohttp.ClientSession,
                                                forge: dict[str, Any], words: str) -> None:
    provider = provider_for(fake, http)
    with pytest.raises(ProviderError) as caught:
        await provider.verify_logout_token(fake.logout_token(**forge))
    assert caught.value.reason is FailureReason.INVALID
    assert words in caught.value.message and caught.value.message.startswith("corp: ")


async def test_an_id_token_or_garbage_is_not_a_logout_token(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    provider = provider_for(fake, http)
    identity = await login(provider)
    for token in (identity.id_token, "", "not-a-jwt", "a.b", "x" * 20_000, fake.access_token()):
        with pytest.raises(ProviderError) as caught:
            await provider.verify_logout_token(token)
        assert caught.value.reason is FailureReason.INVALID


async def test_logout_tokens_need_the_key_set(fake: FakeOIDC, http: aiohttp.ClientSession) -> None:
    fake.knobs.jwks_status = 503
    with pytest.raises(ProviderError) as caught:
        await provider_for(fake, http).verify_logout_token(fake.logout_token())
    assert caught.value.reason is FailureReason.UNAVAILABLE
