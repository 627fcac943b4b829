"""GitHubProvider against a fake GitHub served over real HTTP: flow, email choice, orgs/teams, failures."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer, unused_port
from yarl import URL

from tests.fakes.github import FakeEmail, FakeGitHub, FakeUser, browser_login, s256
from upstreams import build_provider, config_problems
from upstreams.base import Callback, FailureReason, Identity, LoginSecrets, Provider, ProviderError
from upstreams.github import GitHubProvider

REDIRECT = "https://gw.example.com/callback/github"
ServerFactory = Callable[..., Awaitable[TestServer]]


def new_secrets() -> LoginSecrets:
    return LoginSecrets(state=secrets.token_urlsafe(16), nonce=secrets.token_urlsafe(16),
                        code_verifier=secrets.token_urlsafe(48))


def octocat(**changes: Any) -> FakeUser:
    fields: dict[str, Any] = {
        "id": 583231, "login": "octocat", "name": "The Octocat", "email": None,
        "emails": [FakeEmail("583231+octocat@users.noreply.github.com", verified=True),
                   FakeEmail("octocat@example.com", primary=True, verified=True, visibility="private")],
        "orgs": ["acme", "Hooli"], "teams": ["acme/ops", "Hooli/Platform-Team"],
    }
    fields.update(changes)
    return FakeUser(**fields)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The gateway's shared client session (no cookie jar: upstream cookies must never be shared)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
def fake() -> FakeGitHub:
    fake = FakeGitHub()
    fake.add_user(octocat())
    return fake


@pytest.fixture
async def server(fake: FakeGitHub, aiohttp_server: ServerFactory) -> TestServer:
    return await aiohttp_server(fake.app())


def base_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def table(fake: FakeGitHub, base: str, **config: Any) -> dict[str, Any]:
    return {"type": "github", "client_id": fake.client_id, "client_secret": fake.client_secret,
            "base_url": base, "api_url": base, "allow_insecure_http": True, **config}


@pytest.fixture
def make(fake: FakeGitHub, server: TestServer, http: aiohttp.ClientSession) -> Callable[..., Provider]:
    """Build a provider for the fake through the registry, after config validation accepts it."""

    def build(**config: Any) -> Provider:
        config = table(fake, base_of(server), **config)
        assert config_problems("gh", config) == []
        return build_provider("gh", config, http)

    return build


async def login(provider: Provider, *, github_user: str | None = None,
                login_secrets: LoginSecrets | None = None) -> Identity:
    """The whole browser round trip, then redeem as the gateway's callback would."""
    login_secrets = login_secrets or new_secrets()
    callback = await browser_login(provider, redirect_uri=REDIRECT, secrets=login_secrets, github_user=github_user)
    assert callback.params["state"] == login_secrets.state
    return await provider.redeem(callback=callback, redirect_uri=REDIRECT, secrets=login_secrets)


async def failure_of(provider: Provider, fake: FakeGitHub, **kwargs: Any) -> ProviderError:
    """The ProviderError a login raises, after checking its message leaks no code, token or secret."""
    login_secrets = kwargs.pop("login_secrets", None) or new_secrets()
    with pytest.raises(ProviderError) as caught:
        await login(provider, login_secrets=login_secrets, **kwargs)
    assert_clean(caught.value, fake, login_secrets)
    return caught.value


def assert_clean(error: ProviderError, fake: FakeGitHub, login_secrets: LoginSecrets) -> None:
    assert error.message == str(error)
    for secret in [*fake.secrets_issued(), login_secrets.code_verifier, login_secrets.state]:
        assert secret not in error.message


# ---- the authorization URL --------------------------------------------------------------------------


async def test_authorization_url_carries_client_scopes_state_and_pkce(make: Callable[..., Provider]) -> None:
    provider = make()
    login_secrets = new_secrets()
    url = URL(await provider.authorization_url(redirect_uri=REDIRECT, secrets=login_secrets))
    assert url.path == "/login/oauth/authorize"
    query = url.query
    assert query["client_id"] == "fake-client-id"
    assert query["redirect_uri"] == REDIRECT
    assert query["scope"] == "read:user user:email"
    assert query["state"] == login_secrets.state
    assert query["code_challenge"] == s256(login_secrets.code_verifier)
    assert query["code_challenge_method"] == "S256"
    assert "nonce" not in query
    assert "fake-client-secret" not in str(url)


@pytest.mark.parametrize(("config", "scope"), [
    pytest.param({"orgs": ["acme"]}, "read:user user:email read:org", id="orgs-add-read-org"),
    pytest.param({"teams": ["acme/ops"]}, "read:user user:email read:org", id="teams-add-read-org"),
    pytest.param({"fetch_groups": True}, "read:user user:email read:org", id="fetch-groups-adds-read-org"),
    pytest.param({"orgs": ["acme"], "scopes": ["user"]}, "user read:org", id="custom-scopes-plus-read-org"),
    pytest.param({"orgs": ["acme"], "scopes": ["user:email", "admin:org"]}, "user:email admin:org",
                 id="admin-org-is-enough"),
])
async def test_scopes(make: Callable[..., Provider], config: dict[str, Any], scope: str) -> None:
    url = URL(await make(**config).authorization_url(redirect_uri=REDIRECT, secrets=new_secrets()))
    assert url.query["scope"] == scope


# ---- happy path ---------------------------------------------------------------------------------------


async def test_login_returns_the_user_keyed_on_numeric_id(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    identity = await login(make())
    assert identity.subject == "583231"
    assert identity.username == "octocat"
    assert identity.name == "The Octocat"
    assert (identity.email, identity.email_verified) == ("octocat@example.com", True)
    assert identity.groups == ()
    assert identity.mfa is False
    assert identity.claims["id"] == 583231 and identity.claims["login"] == "octocat"
    # Groups were neither wanted nor fetched.
    assert not fake.recorded("/user/orgs") and not fake.recorded("/user/teams")


async def test_token_request_and_api_calls_speak_githubs_protocol(make: Callable[..., Provider],
                                                                   fake: FakeGitHub) -> None:
    login_secrets = new_secrets()
    await login(make(), login_secrets=login_secrets)
    (token_call,) = fake.recorded("/login/oauth/access_token")
    assert token_call.headers["Accept"] == "application/json"
    assert token_call.form["client_id"] == fake.client_id
    assert token_call.form["client_secret"] == fake.client_secret
    assert token_call.form["redirect_uri"] == REDIRECT
    assert token_call.form["code_verifier"] == login_secrets.code_verifier
    (token,) = fake.tokens
    for call in fake.recorded("/user") + fake.recorded("/user/emails"):
        assert call.headers["Authorization"] == f"Bearer {token}"
        assert call.headers["Accept"] == "application/vnd.github+json"
        assert call.headers["X-GitHub-Api-Version"] == "2022-11-28"
        assert "Cookie" not in call.headers


async def test_fetch_groups_gives_orgs_and_teams(make: Callable[..., Provider]) -> None:
    identity = await login(make(fetch_groups=True))
    assert identity.groups == ("acme", "Hooli", "acme/ops", "Hooli/Platform-Team")


async def test_subject_stays_the_numeric_id_when_the_login_changes(make: Callable[..., Provider],
                                                                    fake: FakeGitHub) -> None:
    provider = make()
    before = await login(provider)
    fake.users[583231].login = "octocat-renamed"
    fake.default_login = "octocat-renamed"
    after = await login(provider)
    assert before.subject == after.subject == "583231"
    assert after.username == "octocat-renamed"


async def test_another_user_with_the_old_login_is_a_different_subject(make: Callable[..., Provider],
                                                                       fake: FakeGitHub) -> None:
    provider = make()
    fake.users[583231].login = "octocat-renamed"
    fake.add_user(FakeUser(id=9000001, login="octocat", emails=[FakeEmail("squatter@example.net", primary=True)]))
    identity = await login(provider, github_user="octocat")
    assert identity.subject == "9000001"
    assert identity.email == "squatter@example.net"


async def test_name_falls_back_to_login(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    fake.users[583231].name = None
    assert (await login(make())).name == "octocat"


# ---- which email counts -------------------------------------------------------------------------------


@pytest.mark.parametrize(("emails", "public", "expected"), [
    pytest.param([FakeEmail("a@example.com", primary=True), FakeEmail("b@example.com")], None,
                 ("a@example.com", True), id="primary-verified"),
    pytest.param([FakeEmail("b@example.com"), FakeEmail("a@example.com", primary=True)], None,
                 ("a@example.com", True), id="primary-verified-listed-second"),
    pytest.param([FakeEmail("a@example.com", primary=True, verified=False), FakeEmail("b@example.com")], None,
                 ("b@example.com", True), id="primary-unverified-falls-back-to-verified"),
    pytest.param([FakeEmail("a@example.com", primary=True, verified=False),
                  FakeEmail("1+x@users.noreply.github.com"), FakeEmail("c@example.com")], None,
                 ("c@example.com", True), id="fallback-prefers-a-real-address-over-noreply"),
    pytest.param([FakeEmail("1+x@users.noreply.github.com")], None,
                 ("1+x@users.noreply.github.com", True), id="noreply-when-nothing-else"),
    pytest.param([FakeEmail("a@example.com", primary=True, verified=False),
                  FakeEmail("b@example.com", verified=False)], None, ("", False), id="none-verified"),
    pytest.param([], None, ("", False), id="no-emails"),
    pytest.param([FakeEmail("a@example.com", primary=True, verified=False)], "a@example.com", ("", False),
                 id="public-email-is-never-trusted-on-its-own"),
    pytest.param([FakeEmail("a@example.com", primary=True)], None, ("a@example.com", True),
                 id="private-user-email-null"),
])
async def test_email_choice(make: Callable[..., Provider], fake: FakeGitHub, emails: list[FakeEmail],
                            public: str | None, expected: tuple[str, bool]) -> None:
    fake.users[583231].emails = emails
    fake.users[583231].email = public
    identity = await login(make())
    assert (identity.email, identity.email_verified) == expected
    assert identity.claims["email"] == expected[0]


async def test_emails_are_paginated_too(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    fake.max_per_page = 2
    fake.users[583231].emails = [FakeEmail(f"old{i}@example.com", verified=False) for i in range(5)] + \
        [FakeEmail("current@example.com", primary=True)]
    identity = await login(make())
    assert identity.email == "current@example.com"
    assert len(fake.recorded("/user/emails")) == 3


# ---- organisations and teams --------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "admitted"), [
    pytest.param({"orgs": ["acme"]}, True, id="member-of-org"),
    pytest.param({"orgs": ["ACME"]}, True, id="org-case-insensitive"),
    pytest.param({"orgs": ["initech", "hooli"]}, True, id="any-listed-org"),
    pytest.param({"orgs": ["initech"]}, False, id="not-in-org"),
    pytest.param({"teams": ["acme/ops"]}, True, id="member-of-team"),
    pytest.param({"teams": ["hooli/platform-team"]}, True, id="team-case-insensitive"),
    pytest.param({"teams": ["acme/dev"]}, False, id="not-in-team"),
    pytest.param({"teams": ["ops/acme"]}, False, id="team-slug-is-not-an-org"),
    pytest.param({"orgs": ["initech"], "teams": ["acme/ops"]}, True, id="team-admits-when-org-does-not"),
    pytest.param({"orgs": ["acme"], "teams": ["acme/dev"]}, True, id="org-admits-when-team-does-not"),
])
async def test_org_and_team_enforcement(make: Callable[..., Provider], fake: FakeGitHub,
                                        config: dict[str, Any], admitted: bool) -> None:
    provider = make(**config)
    if admitted:
        identity = await login(provider)
        assert "acme" in identity.groups and "acme/ops" in identity.groups
    else:
        error = await failure_of(provider, fake)
        assert error.reason is FailureReason.ACCESS_DENIED
        assert error.message == "not a member of an allowed organisation/team"


async def test_user_in_no_org_at_all_is_denied(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    fake.users[583231].orgs = []
    fake.users[583231].teams = []
    error = await failure_of(make(orgs=["acme"]), fake)
    assert error.reason is FailureReason.ACCESS_DENIED


async def test_org_on_a_later_page_is_found(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    fake.max_per_page = 3
    fake.users[583231].orgs = [f"org{i:02}" for i in range(24)] + ["acme"]
    identity = await login(make(orgs=["acme"]))
    assert identity.groups[:25] == (*(f"org{i:02}" for i in range(24)), "acme")
    assert len(fake.recorded("/user/orgs")) == 9
    assert [c.query.get("page") for c in fake.recorded("/user/orgs")][:3] == [None, "2", "3"]


async def test_team_on_a_later_page_is_found(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    fake.max_per_page = 3
    fake.users[583231].teams = [f"acme/team-{i}" for i in range(10)] + ["acme/ops"]
    identity = await login(make(teams=["acme/ops"]))
    assert "acme/ops" in identity.groups


async def test_pagination_stops_at_the_page_cap(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    fake.max_per_page = 1
    fake.users[583231].orgs = [f"org{i:02}" for i in range(20)] + ["acme"]
    error = await failure_of(make(orgs=["acme"]), fake)
    assert error.reason is FailureReason.ACCESS_DENIED
    assert len(fake.recorded("/user/orgs")) == 10


async def test_pagination_never_follows_links_to_another_host(make: Callable[..., Provider],
                                                                fake: FakeGitHub) -> None:
    fake.max_per_page = 1
    fake.next_link_base = f"http://127.0.0.1:{unused_port()}"
    error = await failure_of(make(orgs=["acme"]), fake)
    assert error.reason is FailureReason.UNAVAILABLE
    assert len(fake.recorded("/user/orgs")) == 1


# ---- GitHub Enterprise and split hosts ----------------------------------------------------------------


async def test_github_enterprise_defaults_api_url_to_api_v3(aiohttp_server: ServerFactory,
                                                            http: aiohttp.ClientSession) -> None:
    ghe = FakeGitHub(api_prefix="/api/v3")
    ghe.add_user(octocat())
    server = await aiohttp_server(ghe.app())
    config = table(ghe, base_of(server), orgs=["acme"])
    del config["api_url"]
    assert config_problems("ghe", config) == []
    identity = await login(build_provider("ghe", config, http))
    assert identity.subject == "583231" and "acme" in identity.groups
    assert {c.path for c in ghe.requests if "/user" in c.path} == {
        "/api/v3/user", "/api/v3/user/emails", "/api/v3/user/orgs", "/api/v3/user/teams"}


async def test_separate_web_and_api_hosts(fake: FakeGitHub, aiohttp_server: ServerFactory,
                                          http: aiohttp.ClientSession) -> None:
    web_server = await aiohttp_server(fake.app())
    api_server = await aiohttp_server(fake.app())
    config = table(fake, base_of(web_server), api_url=base_of(api_server))
    await login(build_provider("gh", config, http))
    api_host = f"{api_server.host}:{api_server.port}"
    assert fake.recorded("/user")[0].headers["Host"] == api_host
    assert fake.recorded("/login/oauth/access_token")[0].headers["Host"] != api_host


async def test_default_urls_are_githubs(http: aiohttp.ClientSession) -> None:
    provider = GitHubProvider.from_config("gh", {"type": "github", "client_id": "i", "client_secret": "s"}, http)
    assert repr(provider) == "GitHubProvider(name='gh', base_url='https://github.com')"
    assert provider.display_name == "GitHub"


async def test_default_authorize_endpoint_is_github_com(http: aiohttp.ClientSession) -> None:
    provider = GitHubProvider.from_config("gh", {"client_id": "i", "client_secret": "s"}, http)
    url = URL(await provider.authorization_url(redirect_uri=REDIRECT, secrets=new_secrets()))
    assert (url.scheme, url.host, url.path) == ("https", "github.com", "/login/oauth/authorize")


# ---- failures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "mode", "reason"), [
    pytest.param("token", "500", FailureReason.UNAVAILABLE, id="token-500"),
    pytest.param("token", "502", FailureReason.UNAVAILABLE, id="token-502-html"),
    pytest.param("token", "not_json", FailureReason.UNAVAILABLE, id="token-not-json"),
    pytest.param("token", "redirect", FailureReason.UNAVAILABLE, id="token-redirect-not-followed"),
    pytest.param("token", "wrong_shape", FailureReason.INVALID, id="token-without-access-token"),
    pytest.param("user", "401", FailureReason.INVALID, id="user-bad-credentials"),
    pytest.param("user", "403", FailureReason.INVALID, id="user-forbidden"),
    pytest.param("user", "rate_limit", FailureReason.UNAVAILABLE, id="user-rate-limited"),
    pytest.param("user", "secondary_rate_limit", FailureReason.UNAVAILABLE, id="user-secondary-rate-limit"),
    pytest.param("user", "429", FailureReason.UNAVAILABLE, id="user-429"),
    pytest.param("user", "500", FailureReason.UNAVAILABLE, id="user-500"),
    pytest.param("user", "not_json", FailureReason.UNAVAILABLE, id="user-not-json"),
    pytest.param("user", "wrong_shape", FailureReason.UNAVAILABLE, id="user-wrong-shape"),
    pytest.param("emails", "401", FailureReason.INVALID, id="emails-bad-credentials"),
    pytest.param("emails", "500", FailureReason.UNAVAILABLE, id="emails-500"),
    pytest.param("emails", "wrong_shape", FailureReason.UNAVAILABLE, id="emails-wrong-shape"),
    pytest.param("orgs", "rate_limit", FailureReason.UNAVAILABLE, id="orgs-rate-limited"),
    pytest.param("orgs", "500", FailureReason.UNAVAILABLE, id="orgs-500"),
    pytest.param("teams", "401", FailureReason.INVALID, id="teams-bad-credentials"),
    pytest.param("teams", "not_json", FailureReason.UNAVAILABLE, id="teams-not-json"),
])
async def test_upstream_failures_map_to_reasons(make: Callable[..., Provider], fake: FakeGitHub, endpoint: str,
                                                mode: str, reason: FailureReason) -> None:
    fake.failures[endpoint] = mode
    error = await failure_of(make(orgs=["acme"]), fake)
    assert error.reason is reason, error.message


@pytest.mark.parametrize("endpoint", ["token", "user", "emails", "teams"])
async def test_a_slow_github_times_out_quickly(make: Callable[..., Provider], fake: FakeGitHub,
                                               endpoint: str) -> None:
    fake.failures[endpoint] = "slow"
    provider = make(timeout=0.3, fetch_groups=True)
    started = time.monotonic()
    error = await failure_of(provider, fake)
    assert error.reason is FailureReason.UNAVAILABLE
    assert "in time" in error.message
    assert time.monotonic() - started < 2.5


async def test_unreachable_github_is_unavailable(fake: FakeGitHub, server: TestServer,
                                                 http: aiohttp.ClientSession) -> None:
    dead = f"http://127.0.0.1:{unused_port()}"
    provider = build_provider("gh", table(fake, base_of(server), api_url=dead, timeout=2), http)
    error = await failure_of(provider, fake)
    assert error.reason is FailureReason.UNAVAILABLE


@pytest.mark.parametrize(("token_error", "fragment"), [
    pytest.param("bad_verification_code", "authorization code", id="bad-verification-code"),
    pytest.param("incorrect_client_credentials", "client credentials", id="incorrect-client-credentials"),
    pytest.param("redirect_uri_mismatch", "redirect_uri_mismatch", id="redirect-uri-mismatch"),
    pytest.param("unverified_user_email", "unverified_user_email", id="other-error"),
])
async def test_token_endpoint_200_with_error_is_invalid(make: Callable[..., Provider], fake: FakeGitHub,
                                                        token_error: str, fragment: str) -> None:
    fake.token_error = token_error
    error = await failure_of(make(), fake)
    assert error.reason is FailureReason.INVALID
    assert fragment in error.message


async def test_wrong_client_secret_is_invalid_and_not_echoed(fake: FakeGitHub, server: TestServer,
                                                             http: aiohttp.ClientSession) -> None:
    provider = build_provider("gh", table(fake, base_of(server), client_secret="wrong-secret-123"), http)
    error = await failure_of(provider, fake)
    assert error.reason is FailureReason.INVALID
    assert "wrong-secret-123" not in error.message


async def test_a_code_redeems_once(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    provider = make()
    login_secrets = new_secrets()
    callback = await browser_login(provider, redirect_uri=REDIRECT, secrets=login_secrets)
    await provider.redeem(callback=callback, redirect_uri=REDIRECT, secrets=login_secrets)
    with pytest.raises(ProviderError) as caught:
        await provider.redeem(callback=callback, redirect_uri=REDIRECT, secrets=login_secrets)
    assert caught.value.reason is FailureReason.INVALID
    assert_clean(caught.value, fake, login_secrets)


async def test_a_stolen_code_without_the_verifier_is_refused(make: Callable[..., Provider],
                                                             fake: FakeGitHub) -> None:
    provider = make()
    victim = new_secrets()
    callback = await browser_login(provider, redirect_uri=REDIRECT, secrets=victim)
    attacker = LoginSecrets(state=victim.state, nonce=victim.nonce, code_verifier=secrets.token_urlsafe(48))
    with pytest.raises(ProviderError) as caught:
        await provider.redeem(callback=callback, redirect_uri=REDIRECT, secrets=attacker)
    assert caught.value.reason is FailureReason.INVALID
    assert_clean(caught.value, fake, victim)


async def test_redirect_uri_must_match_the_authorization_request(make: Callable[..., Provider],
                                                                 fake: FakeGitHub) -> None:
    provider = make()
    login_secrets = new_secrets()
    callback = await browser_login(provider, redirect_uri=REDIRECT, secrets=login_secrets)
    with pytest.raises(ProviderError) as caught:
        await provider.redeem(callback=callback, redirect_uri=REDIRECT + "/other", secrets=login_secrets)
    assert caught.value.reason is FailureReason.INVALID


async def test_user_declining_is_access_denied(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    fake.deny = True
    error = await failure_of(make(), fake)
    assert error.reason is FailureReason.ACCESS_DENIED
    assert not fake.recorded("/login/oauth/access_token")


@pytest.mark.parametrize(("params", "reason", "fragment"), [
    pytest.param({"error": "application_suspended"}, FailureReason.INVALID, "application_suspended",
                 id="other-error-param"),
    pytest.param({"error": "<script>alert(1)</script>"}, FailureReason.INVALID, "unrecognised error",
                 id="hostile-error-param-not-echoed"),
    pytest.param({"error": "access_denied", "code": "abc"}, FailureReason.ACCESS_DENIED, "declined",
                 id="error-wins-over-code"),
    pytest.param({}, FailureReason.INVALID, "no authorization code", id="no-code"),
    pytest.param({"code": ""}, FailureReason.INVALID, "no authorization code", id="empty-code"),
    pytest.param({"code": "x" * 600}, FailureReason.INVALID, "no authorization code", id="oversized-code"),
    pytest.param({"code": "abc", "iss": "https://evil.example"}, FailureReason.INVALID, "issuer",
                 id="foreign-iss"),
])
async def test_bad_callbacks(make: Callable[..., Provider], fake: FakeGitHub, params: dict[str, str],
                             reason: FailureReason, fragment: str) -> None:
    with pytest.raises(ProviderError) as caught:
        await make().redeem(callback=Callback(params={"state": "s", **params}, cookies={}), redirect_uri=REDIRECT,
                            secrets=new_secrets())
    assert caught.value.reason is reason
    assert fragment in caught.value.message
    assert "<script>" not in caught.value.message
    assert not fake.recorded("/login/oauth/access_token")


async def test_matching_iss_is_accepted(make: Callable[..., Provider], fake: FakeGitHub,
                                        server: TestServer) -> None:
    provider = make()
    login_secrets = new_secrets()
    callback = await browser_login(provider, redirect_uri=REDIRECT, secrets=login_secrets)
    with_iss = Callback(params={**callback.params, "iss": base_of(server) + "/login/oauth"}, cookies={})
    identity = await provider.redeem(callback=with_iss, redirect_uri=REDIRECT, secrets=login_secrets)
    assert identity.subject == "583231"


async def test_no_logout_and_no_bearer_verification(make: Callable[..., Provider], fake: FakeGitHub) -> None:
    provider = make()
    assert await provider.logout_url(return_to="https://app.example.com/", id_token="") is None
    assert await provider.verify_bearer("gho_whatever") is None
    assert fake.requests == []


# ---- configuration ------------------------------------------------------------------------------------


def test_config_problems_are_reported_all_at_once() -> None:
    problems = config_problems("gh", {
        "type": "github", "client_secret": 5, "display_name": 3, "base_url": "http://github.example.com",
        "api_url": "ftp://api.example.com", "scopes": ["read:user"], "orgs": ["bad org"], "teams": ["noslash"],
        "fetch_groups": "yes", "timeout": -1, "org": ["typo-for-orgs"], "allow_insecure_http": "no",
    })
    for key in ("client_id", "client_secret", "display_name", "base_url", "api_url", "scopes", "orgs", "teams",
                "fetch_groups", "timeout", "org", "allow_insecure_http"):
        assert any(p.startswith(f"upstreams.gh.{key}:") for p in problems), (key, problems)
    assert len(problems) == 12


@pytest.mark.parametrize(("config", "fragment"), [
    pytest.param({"base_url": "https://user:pw@github.example.com"}, "credentials", id="userinfo-in-url"),
    pytest.param({"base_url": "https://github.example.com/?x=1"}, "query", id="query-in-url"),
    pytest.param({"base_url": "github.com"}, "absolute", id="not-absolute"),
    pytest.param({"base_url": "http://localhost:8080"}, "allow_insecure_http", id="http-not-allowed"),
    pytest.param({"api_url": "https://api.example.com:99999"}, "port", id="bad-port"),
    pytest.param({"scopes": "read:user user:email"}, "list", id="scopes-not-a-list"),
    pytest.param({"scopes": ["read:user user:email"]}, "spaces", id="scope-with-space"),
    pytest.param({"teams": ["acme/"]}, "org/team-slug", id="team-without-slug"),
    pytest.param({"timeout": True}, "seconds", id="timeout-bool"),
    pytest.param({"timeout": "5"}, "seconds", id="timeout-string"),
])
def test_single_config_problems(config: dict[str, Any], fragment: str) -> None:
    problems = config_problems("gh", {"type": "github", "client_id": "i", "client_secret": "s", **config})
    assert len(problems) == 1 and fragment in problems[0], problems


@pytest.mark.parametrize("config", [
    pytest.param({}, id="minimal"),
    pytest.param({"base_url": "https://ghe.example.com", "api_url": "https://ghe.example.com/api/v3/"}, id="ghe"),
    pytest.param({"base_url": "http://localhost:8080", "api_url": "http://[::1]:8080", "allow_insecure_http": True},
                 id="http-when-allowed"),
    pytest.param({"orgs": ["acme", "Hooli-2"], "teams": ["acme/ops", "acme/a_b.c"], "fetch_groups": False,
                  "scopes": ["user"], "timeout": 2.5, "display_name": "GitHub (corp)"}, id="everything"),
])
def test_valid_configs(config: dict[str, Any]) -> None:
    assert config_problems("gh", {"type": "github", "client_id": "i", "client_secret": "s", **config}) == []


async def test_secret_is_not_in_repr(http: aiohttp.ClientSession) -> None:
    provider = GitHubProvider.from_config("gh", {"client_id": "i", "client_secret": "very-secret"}, http)
    assert "very-secret" not in repr(provider)
