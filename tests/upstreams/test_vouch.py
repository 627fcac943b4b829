"""VouchProvider against a fake vouch-proxy served over real HTTP: handover, cookies, claims, failures."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port
from yarl import URL

from tests.fakes.vouch import SESSION_COOKIE, SIGNED_IN_COOKIE, FakeVouch, FakeVouchUser, browser_login
from upstreams import build_provider, config_problems
from upstreams.base import Callback, FailureReason, Identity, LoginSecrets, Provider, ProviderError
from upstreams.vouch import VouchProvider

REDIRECT = "https://gw.example.com/callback/vouch"
ServerFactory = Callable[..., Awaitable[TestServer]]


def new_secrets() -> LoginSecrets:
    return LoginSecrets(state=secrets.token_urlsafe(16), nonce=secrets.token_urlsafe(16),
                        code_verifier=secrets.token_urlsafe(48))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The gateway's shared client session (no cookie jar: one user's vouch cookie must not reach another's call)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
def fake() -> FakeVouch:
    fake = FakeVouch()
    fake.add_user(FakeVouchUser("Ada@Example.com", {"sub": "a1", "name": "Ada Lovelace",
                                                    "groups": ["eng", "admins"], "email_verified": True}))
    fake.add_user(FakeVouchUser("octocat", {"name": "The Octocat"}))
    return fake


@pytest.fixture
async def server(fake: FakeVouch, aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(fake.app())


def base_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def make(server: TestServer, http: aiohttp.ClientSession) -> Callable[..., Provider]:
    """Build a provider for the fake through the registry, after config validation accepts it."""

    def build(**config: Any) -> Provider:
        config = {"type": "vouch", "url": base_of(server), "groups_claim": "Groups", "allow_insecure_http": True,
                  **config}
        assert config_problems("sso", config) == []
        return build_provider("sso", config, http)

    return build


async def login(provider: Provider, *, vouch_user: str | None = None) -> Identity:
    login_secrets = new_secrets()
    callback = await browser_login(provider, redirect_uri=REDIRECT, secrets=login_secrets, vouch_user=vouch_user)
    assert callback.params["state"] == login_secrets.state
    return await provider.redeem(callback=callback, redirect_uri=REDIRECT, secrets=login_secrets)


async def failure_of(provider: Provider, callback: Callback) -> ProviderError:
    """The ProviderError redeeming ``callback`` raises; its message never holds a cookie value."""
    with pytest.raises(ProviderError) as caught:
        await provider.redeem(callback=callback, redirect_uri=REDIRECT, secrets=new_secrets())
    for value in callback.cookies.values():
        assert not value or value not in caught.value.message
    return caught.value


async def vouch_callback(provider: Provider, vouch_user: str | None = None) -> Callback:
    return await browser_login(provider, redirect_uri=REDIRECT, secrets=new_secrets(), vouch_user=vouch_user)


# ---- the authorization URL --------------------------------------------------------------------------


@pytest.mark.parametrize(("redirect_uri", "separator"), [
    pytest.param(REDIRECT, "?", id="plain-callback"),
    pytest.param(REDIRECT + "?x=1", "&", id="callback-with-query"),
])
async def test_authorization_url_sends_the_browser_to_vouch_with_state_inside_the_callback(
        make: Callable[..., Provider], server: TestServer, redirect_uri: str, separator: str) -> None:
    login_secrets = new_secrets()
    url = URL(await make().authorization_url(redirect_uri=redirect_uri, secrets=login_secrets))
    assert str(url.with_query(None)) == base_of(server) + "/login"
    assert list(url.query) == ["url"]
    assert url.query["url"] == f"{redirect_uri}{separator}state={login_secrets.state}"


async def test_state_with_reserved_characters_survives_the_round_trip(make: Callable[..., Provider]) -> None:
    provider = make()
    login_secrets = LoginSecrets(state="a+b/c=d&e", nonce="n", code_verifier="v" * 43)
    callback = await browser_login(provider, redirect_uri=REDIRECT, secrets=login_secrets)
    assert callback.params["state"] == "a+b/c=d&e"


# ---- happy paths --------------------------------------------------------------------------------------


async def test_login_through_vouch(make: Callable[..., Provider], fake: FakeVouch) -> None:
    identity = await login(make())
    assert identity.subject == "ada@example.com"
    assert (identity.email, identity.email_verified) == ("ada@example.com", True)
    assert identity.username == "Ada@Example.com"
    assert identity.name == "Ada Lovelace"
    assert identity.groups == ("eng", "admins")
    assert identity.claims == {"sub": "a1", "name": "Ada Lovelace", "groups": ["eng", "admins"],
                               "email-verified": "true"}
    (call,) = fake.validate_calls
    assert set(call.cookies) == {"VouchCookie"}
    assert SESSION_COOKIE not in call.headers["Cookie"]


async def test_only_vouch_cookies_are_forwarded(make: Callable[..., Provider], fake: FakeVouch) -> None:
    provider = make()
    callback = await vouch_callback(provider)
    extra = Callback(params=callback.params, cookies={**callback.cookies, "gw_session": "gateway-token",
                                                       "VouchCookieJar": "not-ours", SIGNED_IN_COOKIE: "x"})
    await provider.redeem(callback=extra, redirect_uri=REDIRECT, secrets=new_secrets())
    (call,) = fake.validate_calls
    assert set(call.cookies) == {"VouchCookie"}


async def test_chunked_cookies_are_all_forwarded_in_order(fake: FakeVouch, make: Callable[..., Provider]) -> None:
    fake.chunk_size = 200
    fake.pad_jwt = 500
    provider = make()
    callback = await vouch_callback(provider)
    chunk_names = sorted(name for name in callback.cookies if name.startswith("VouchCookie_"))
    assert len(chunk_names) >= 3 and "VouchCookie" not in callback.cookies
    # Browsers send cookies in no promised order.
    shuffled = Callback(params=callback.params, cookies=dict(reversed(list(callback.cookies.items()))))
    identity = await provider.redeem(callback=shuffled, redirect_uri=REDIRECT, secrets=new_secrets())
    assert identity.subject == "ada@example.com"
    (call,) = fake.validate_calls
    assert sorted(call.cookies) == chunk_names
    assert call.headers["Cookie"].split("; ")[0].startswith("VouchCookie_1of")


async def test_missing_chunk_is_refused_by_vouch(fake: FakeVouch, make: Callable[..., Provider]) -> None:
    fake.chunk_size = 200
    fake.pad_jwt = 500
    provider = make()
    callback = await vouch_callback(provider)
    partial = {k: v for k, v in callback.cookies.items() if not k.startswith("VouchCookie_2of")}
    error = await failure_of(provider, Callback(params=callback.params, cookies=partial))
    assert error.reason is FailureReason.ACCESS_DENIED


async def test_user_that_is_not_an_email(make: Callable[..., Provider]) -> None:
    identity = await login(make(), vouch_user="octocat")
    assert identity.subject == "octocat"
    assert (identity.email, identity.email_verified) == ("", False)
    assert identity.name == "The Octocat"
    assert identity.groups == ()


@pytest.mark.parametrize(("username", "claims", "expected"), [
    pytest.param("ada@example.com", {}, ("ada@example.com", True), id="email-user-trusted"),
    pytest.param("ada@example.com", {"email_verified": False}, ("ada@example.com", False),
                 id="email-verified-false-claim-wins"),
    pytest.param("octocat", {"email": "Octo@Example.com", "email_verified": True}, ("octo@example.com", True),
                 id="verified-email-claim-beside-a-login"),
    pytest.param("octocat", {"email": "octo@example.com"}, ("octo@example.com", False),
                 id="unverified-email-claim-beside-a-login"),
    pytest.param("attacker@evil.com@corp.com", {}, ("", False), id="double-at-is-not-an-email"),
    pytest.param("Bob@Example.COM", {}, ("bob@example.com", True), id="lower-cased"),
])
async def test_email_trust(fake: FakeVouch, make: Callable[..., Provider], username: str,
                           claims: dict[str, Any], expected: tuple[str, bool]) -> None:
    fake.add_user(FakeVouchUser(username, claims))
    identity = await login(make(), vouch_user=username)
    assert (identity.email, identity.email_verified) == expected
    assert identity.subject == (username.lower() if username.count("@") == 1 else username)


# ---- claims and groups --------------------------------------------------------------------------------


@pytest.mark.parametrize(("claims", "groups_claim", "groups", "claim_key"), [
    pytest.param({"groups": ["eng", "ops"]}, "Groups", ("eng", "ops"), "groups", id="vouch-list"),
    pytest.param({"cognito:groups": ["admin"]}, "Cognito-Groups", ("admin",), "cognito-groups",
                 id="cognito-groups-cleaned-name"),
    pytest.param({"https://example.com/roles": ["a", "b"]}, "example-com-roles", ("a", "b"),
                 "example-com-roles", id="auth0-namespaced-claim"),
    pytest.param({"groups": "eng, ops ,, qa"}, "groups", ("eng", "ops", "qa"), "groups", id="plain-comma-list"),
    pytest.param({"groups": ["a,b", "c"]}, "Groups", ("a,b", "c"), "groups", id="comma-inside-quoted-item"),
    pytest.param({"groups": ["eng", "eng"]}, "Groups", ("eng",), "groups", id="duplicates-dropped"),
    pytest.param({"groups": []}, "Groups", (), "groups", id="empty-list"),
    pytest.param({"roles": ["x"]}, "Groups", (), "roles", id="groups-claim-absent"),
])
async def test_claims_and_groups(fake: FakeVouch, make: Callable[..., Provider], claims: dict[str, Any],
                                 groups_claim: str, groups: tuple[str, ...], claim_key: str) -> None:
    fake.add_user(FakeVouchUser("grace@example.com", claims))
    identity = await login(make(groups_claim=groups_claim), vouch_user="grace@example.com")
    assert identity.groups == groups
    assert claim_key in identity.claims


async def test_no_groups_claim_configured_means_no_groups(make: Callable[..., Provider],
                                                          server: TestServer, http: aiohttp.ClientSession) -> None:
    provider = build_provider("sso", {"type": "vouch", "url": base_of(server), "allow_insecure_http": True}, http)
    identity = await login(provider)
    assert identity.groups == ()
    assert identity.claims["groups"] == ["eng", "admins"]


async def test_only_forwarded_claims_appear(fake: FakeVouch, make: Callable[..., Provider]) -> None:
    fake.forwarded_claims = ["name"]
    identity = await login(make())
    assert identity.claims == {"name": "Ada Lovelace"}
    assert identity.groups == ()


async def test_custom_cookie_name_and_claims_prefix(aiohttp_server: ServerFactory,
                                                    http: aiohttp.ClientSession) -> None:
    fake = FakeVouch(cookie_name="CorpSSO", claims_prefix="X-Claim-")
    fake.add_user(FakeVouchUser("ada@example.com", {"groups": ["eng"], "name": "Ada"}))
    server = await aiohttp_server(fake.app())
    config = {"type": "vouch", "url": base_of(server), "cookie_name": "CorpSSO", "claims_headers_prefix": "X-Claim-",
              "groups_claim": "groups", "display_name": "Corp SSO", "allow_insecure_http": True}
    assert config_problems("corp", config) == []
    provider = build_provider("corp", config, http)
    assert provider.display_name == "Corp SSO"
    identity = await login(provider)
    assert identity.groups == ("eng",) and identity.name == "Ada"
    assert set(fake.validate_calls[0].cookies) == {"CorpSSO"}


# ---- failures -----------------------------------------------------------------------------------------


async def test_missing_cookie_is_invalid_without_calling_vouch(make: Callable[..., Provider],
                                                               fake: FakeVouch) -> None:
    error = await failure_of(make(), Callback(params={"state": "s"}, cookies={"gw_session": "x"}))
    assert error.reason is FailureReason.INVALID
    assert error.message == "no vouch session"
    assert fake.validate_calls == []


async def test_unknown_cookie_is_access_denied(make: Callable[..., Provider]) -> None:
    error = await failure_of(make(), Callback(params={"state": "s"}, cookies={"VouchCookie": "eyJhbGciOi.forged.x"}))
    assert error.reason is FailureReason.ACCESS_DENIED
    assert error.message == "vouch session not valid"


async def test_cookie_vouch_no_longer_accepts_is_access_denied(make: Callable[..., Provider],
                                                              fake: FakeVouch) -> None:
    provider = make()
    callback = await vouch_callback(provider)
    fake.revoke_all()
    error = await failure_of(provider, callback)
    assert error.reason is FailureReason.ACCESS_DENIED


async def test_public_access_answer_without_user_is_access_denied(make: Callable[..., Provider],
                                                                  fake: FakeVouch) -> None:
    fake.public_access = True
    error = await failure_of(make(), Callback(params={}, cookies={"VouchCookie": "stale"}))
    assert error.reason is FailureReason.ACCESS_DENIED


async def test_200_without_user_header_is_invalid(make: Callable[..., Provider], fake: FakeVouch) -> None:
    provider = make()
    callback = await vouch_callback(provider)
    fake.failures["validate"] = "no_user_header"
    error = await failure_of(provider, callback)
    assert error.reason is FailureReason.INVALID


@pytest.mark.parametrize("cookies", [
    pytest.param({"VouchCookie": "a;b"}, id="semicolon"),
    pytest.param({"VouchCookie": "a\r\nX-Injected: 1"}, id="crlf"),
    pytest.param({"VouchCookie": "a b"}, id="space"),
    pytest.param({"VouchCookie": ""}, id="empty"),
    pytest.param({"VouchCookie": "x" * 40000}, id="oversized"),
    pytest.param({f"VouchCookie_{i}of20": "x" for i in range(1, 21)}, id="too-many-chunks"),
])
async def test_malformed_cookies_are_invalid_without_calling_vouch(make: Callable[..., Provider], fake: FakeVouch,
                                                                   cookies: dict[str, str]) -> None:
    error = await failure_of(make(), Callback(params={}, cookies=cookies))
    assert error.reason is FailureReason.INVALID
    assert fake.validate_calls == []


@pytest.mark.parametrize("mode", ["500", "502", "404", "redirect"])
async def test_vouch_errors_are_unavailable(make: Callable[..., Provider], fake: FakeVouch, mode: str) -> None:
    provider = make()
    callback = await vouch_callback(provider)
    fake.failures["validate"] = mode
    error = await failure_of(provider, callback)
    assert error.reason is FailureReason.UNAVAILABLE


async def test_a_slow_vouch_times_out_quickly(make: Callable[..., Provider], fake: FakeVouch) -> None:
    provider = make(timeout=0.3)
    callback = await vouch_callback(provider)
    fake.failures["validate"] = "slow"
    started = time.monotonic()
    error = await failure_of(provider, callback)
    assert error.reason is FailureReason.UNAVAILABLE
    assert time.monotonic() - started < 2.5


async def test_unreachable_vouch_is_unavailable(http: aiohttp.ClientSession) -> None:
    provider = build_provider("sso", {"type": "vouch", "url": f"http://127.0.0.1:{unused_port()}"}, http)
    error = await failure_of(provider, Callback(params={}, cookies={"VouchCookie": "abc"}))
    assert error.reason is FailureReason.UNAVAILABLE


# ---- logout and bearer --------------------------------------------------------------------------------


async def test_logout_goes_through_vouch_and_back(make: Callable[..., Provider], fake: FakeVouch,
                                                  server: TestServer) -> None:
    return_to = "https://app.example.com/bye?x=1&y=2"
    fake.allowed_logout_urls = [return_to]
    url = await make().logout_url(return_to=return_to, id_token="")
    assert url is not None
    assert str(URL(url).with_query(None)) == base_of(server) + "/logout"
    async with aiohttp.ClientSession() as browser, browser.get(url, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == return_to
    assert fake.logout_urls == [return_to]


async def test_no_bearer_verification(make: Callable[..., Provider], fake: FakeVouch) -> None:
    assert await make().verify_bearer("eyJhbGciOiJIUzI1NiJ9.e30.x") is None
    assert fake.validate_calls == []


# ---- configuration ------------------------------------------------------------------------------------


def test_config_problems_are_reported_all_at_once() -> None:
    problems = config_problems("sso", {
        "type": "vouch", "cookie_name": "bad name", "claims_headers_prefix": "X-Bad:", "groups_claim": "",
        "display_name": ["x"], "timeout": 0, "cookie": "typo", "allow_insecure_http": 1,
    })
    for key in ("url", "cookie_name", "claims_headers_prefix", "groups_claim", "display_name", "timeout", "cookie",
                "allow_insecure_http"):
        assert any(p.startswith(f"upstreams.sso.{key}:") for p in problems), (key, problems)
    assert len(problems) == 8


@pytest.mark.parametrize(("url", "fragment"), [
    pytest.param("http://vouch.example.com", "https", id="plain-http-remote"),
    pytest.param("vouch.example.com", "absolute", id="no-scheme"),
    pytest.param("https://vouch.example.com/?a=1", "query", id="query"),
    pytest.param(42, "required", id="not-a-string"),
])
def test_url_problems(url: object, fragment: str) -> None:
    problems = config_problems("sso", {"type": "vouch", "url": url})
    assert len(problems) == 1 and fragment in problems[0], problems


@pytest.mark.parametrize(("url", "insecure"), [
    pytest.param("https://vouch.example.com", False, id="https"),
    pytest.param("https://example.com/vouch/", False, id="under-a-path"),
    pytest.param("http://vouch:9090", True, id="http-when-allowed"),
])
def test_valid_urls(url: str, insecure: bool) -> None:
    config = {"type": "vouch", "url": url, "timeout": 3, "allow_insecure_http": insecure}
    assert config_problems("sso", config) == []


async def test_defaults(http: aiohttp.ClientSession) -> None:
    provider = VouchProvider.from_config("sso", {"type": "vouch", "url": "https://vouch.example.com/"}, http)
    assert provider.display_name == "Single sign-on"
    assert repr(provider) == "VouchProvider(name='sso', url='https://vouch.example.com')"
    url = await provider.authorization_url(redirect_uri=REDIRECT, secrets=new_secrets())
    assert url.startswith("https://vouch.example.com/login?url=https%3A%2F%2Fgw.example.com%2F")
