"""One conformance suite for the ``Provider`` protocol, run over every type in the provider registry.

Each rule ``upstreams/base.py`` states for every provider is one test, parametrized over
``PROVIDER_TYPES`` (presets included), each type built through the registry against its fake upstream
served over real HTTP, configured as that type would be. A rule that cannot apply to a type is left out
for it in :data:`NOT_APPLICABLE`, with the reason; a registered type without an entry in :data:`UPSTREAMS`
fails ``test_every_registered_type_is_covered`` and every rule.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.fakes import github as fake_github
from tests.fakes import oidc as fake_oidc
from tests.fakes import vouch as fake_vouch
from upstreams import PROVIDER_TYPES, build_provider, config_problems, provider_class
from upstreams.base import Callback, FailureReason, Identity, LoginSecrets, Provider, ProviderError, Refreshed

ServerFactory = Callable[..., Awaitable[TestServer]]
NAME = "sso"
REDIRECT_URI = f"https://gw.example.com/callback/{NAME}"
TIMEOUT = 0.5
"""The ``timeout`` every upstream under test is configured with (seconds)."""
SLOW = 5.0
"""How long a slowed-down fake takes to answer: far beyond ``TIMEOUT``."""


def new_secrets() -> LoginSecrets:
    return LoginSecrets(state=secrets.token_urlsafe(16), nonce=secrets.token_urlsafe(16),
                        code_verifier=secrets.token_urlsafe(48))


def s256(verifier: str) -> str:
    """RFC 7636 S256 code challenge, computed independently of the providers."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass
class Upstream:
    """One registered type, built through the registry against its fake, and the ways to drive the fake."""

    provider: Provider
    login: Callable[[LoginSecrets], Awaitable[Callback]]
    """The browser's round trip through the upstream: what reaches ``/callback``."""
    forged: Callable[[LoginSecrets], Callback]
    """A well-formed callback the upstream never issued (a made-up code or session cookie)."""
    stop: Callable[[], Awaitable[None]]
    """Take the upstream off the network."""
    slow_down: Callable[[], None]
    """Make the upstream answer only after :data:`SLOW` seconds."""
    tamper: Callable[[], None]
    """Make the upstream's answer one that must fail verification."""
    sensitive: list[str] = field(default_factory=list)
    """Values (client secret...) no error message may hold."""


@dataclass(frozen=True)
class Expectations:
    """What one type's protocol has, where the rules differ by protocol."""

    required_keys: frozenset[str]
    """The keys an empty ``[upstreams.<name>]`` table is reported as missing."""
    carries: frozenset[str]
    """Which of ``state``, ``pkce``, ``nonce`` the authorization URL carries."""
    forged: FailureReason
    """How a callback the upstream never issued fails."""


OIDC_CARRIES = frozenset({"state", "pkce", "nonce"})
EXPECTED: dict[str, Expectations] = {
    "github": Expectations(frozenset({"client_id", "client_secret"}), frozenset({"state", "pkce"}),
                           FailureReason.INVALID),
    "oidc": Expectations(frozenset({"issuer", "client_id"}), OIDC_CARRIES, FailureReason.INVALID),
    "auth0": Expectations(frozenset({"domain", "client_id"}), OIDC_CARRIES, FailureReason.INVALID),
    "authing": Expectations(frozenset({"app", "client_id"}), OIDC_CARRIES, FailureReason.INVALID),
    "cognito": Expectations(frozenset({"region", "user_pool_id", "client_id"}), OIDC_CARRIES,
                            FailureReason.INVALID),
    "google": Expectations(frozenset({"client_id"}), OIDC_CARRIES, FailureReason.INVALID),
    "keycloak": Expectations(frozenset({"base_url", "realm", "client_id"}), OIDC_CARRIES, FailureReason.INVALID),
    # vouch answers 401 for a session it never issued: the upstream refuses, as for a revoked one
    "vouch": Expectations(frozenset({"url"}), frozenset({"state"}), FailureReason.ACCESS_DENIED),
    # the form's submission is the callback: one without a valid email is what a forgery looks like
    "dev": Expectations(frozenset(), frozenset({"state"}), FailureReason.INVALID),
}

NO_UPSTREAM = "dev has no upstream: the gateway's own form, nothing is called"
NO_OAUTH_RESPONSE = ("vouch hands over through its session cookie, not an OAuth authorization response: "
                     "the callback carries no code, error or iss")
SESSION_NOT_CODE = ("vouch's cookie is its session, valid until vouch ends it, not a single-use code; "
                    "replays are stopped by the gateway's single-use login attempt (state)")
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("dev", "unreachable"): NO_UPSTREAM,
    ("dev", "timeout"): NO_UPSTREAM,
    ("dev", "tampered"): NO_UPSTREAM + "; the typed email is the identity by design",
    ("dev", "replay"): NO_UPSTREAM + "; the gateway's single-use login attempt (state) stops a replay",
    ("dev", "error"): NO_UPSTREAM + "; the form cannot be declined, only left",
    ("dev", "iss"): NO_UPSTREAM + "; RFC 9207 applies to authorization servers",
    ("vouch", "replay"): SESSION_NOT_CODE,
    ("vouch", "error"): NO_OAUTH_RESPONSE,
    ("vouch", "iss"): NO_OAUTH_RESPONSE,
    ("dev", "refresh"): NO_UPSTREAM + "; there is no grant to renew",
    ("vouch", "refresh"): "vouch hands over its session cookie, not an OAuth grant: there is no refresh token",
}
"""(type, rule) -> why the rule cannot apply to that type. Only these pairs are left out."""

RULES = {"unreachable", "timeout", "tampered", "replay", "error", "iss", "refresh"}


def types_for(rule: str) -> list[Any]:
    """The registered types ``rule`` applies to: every type but those :data:`NOT_APPLICABLE` lists for it.

    Not-applicable pairs are left out of the parametrization rather than skipped, so a run reports no
    skip (CI treats a skip as a failure); their reasons stay in the table above.
    """
    assert rule in RULES, rule
    return [pytest.param(t, id=t) for t in PROVIDER_TYPES if (t, rule) not in NOT_APPLICABLE]


# ---- one fixture per family of types -----------------------------------------------------------------

@dataclass
class Context:
    aiohttp_server: ServerFactory
    http: aiohttp.ClientSession


def build(type_name: str, config: dict[str, Any], http: aiohttp.ClientSession) -> Provider:
    """Build through the registry, after config validation accepted the table."""
    assert config_problems(NAME, config) == []
    return build_provider(NAME, config, http)


def server_stopper(server: TestServer | None) -> Callable[[], Awaitable[None]]:
    async def stop() -> None:
        assert server is not None
        await server.close()
    return stop


OIDC_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "oidc": ("/oidc", {}),
    "auth0": ("/", {"domain": "acme.eu.auth0.com"}),
    "authing": ("/oidc", {"app": "acme"}),
    "cognito": ("/oidc", {"region": "eu-west-1", "user_pool_id": "eu-west-1_AbC123"}),
    "google": ("", {}),
    "keycloak": ("/realms/acme", {"realm": "acme"}),
}
"""Where each OIDC type's issuer lives at the fake, and the type's own terms (as in test_presets.py)."""


async def oidc_upstream(type_name: str, ctx: Context) -> Upstream:
    path, terms = OIDC_PRESETS[type_name]
    fake = await fake_oidc.FakeOIDC(path=path).start(ctx.aiohttp_server)
    config = fake.config(type=type_name, timeout=TIMEOUT, **terms)
    if type_name == "keycloak":  # the issuer is derived from base_url and realm, as in a real deployment
        assert fake.server is not None
        del config["issuer"]
        config["base_url"] = f"http://{fake.server.host}:{fake.server.port}"
    provider = build(type_name, config, ctx.http)

    def slow_down() -> None:
        fake.knobs.discovery_delay = SLOW
        fake.knobs.token_delay = SLOW

    def tamper() -> None:
        fake.knobs.id_token_alg = "none"

    return Upstream(
        provider=provider,
        login=lambda s: fake_oidc.browser_login(provider, s, REDIRECT_URI),
        forged=lambda s: Callback(params={"state": s.state, "code": "forged-code-0123456789"}, cookies={}),
        stop=server_stopper(fake.server), slow_down=slow_down, tamper=tamper,
        sensitive=[fake_oidc.CLIENT_SECRET, "forged-code-0123456789"])


async def github_upstream(type_name: str, ctx: Context) -> Upstream:
    fake = fake_github.FakeGitHub()
    fake.expiring_tokens = True  # a GitHub App with expiring user tokens: the kind that refreshes
    fake.add_user(fake_github.FakeUser(id=583231, login="octocat", name="The Octocat",
                                       emails=[fake_github.FakeEmail("octocat@example.com", primary=True)]))
    fake.slow_seconds = SLOW
    server = await ctx.aiohttp_server(fake.app())
    base = str(server.make_url("")).rstrip("/")
    provider = build(type_name, {"type": type_name, "client_id": fake.client_id, "client_secret": fake.client_secret,
                                 "base_url": base, "api_url": base, "allow_insecure_http": True,
                                 "timeout": TIMEOUT}, ctx.http)

    def slow_down() -> None:
        fake.failures["token"] = "slow"

    def tamper() -> None:
        fake.token_error = "bad_verification_code"

    return Upstream(
        provider=provider,
        login=lambda s: fake_github.browser_login(provider, redirect_uri=REDIRECT_URI, secrets=s),
        forged=lambda s: Callback(params={"state": s.state, "code": "forged0123456789abcd"}, cookies={}),
        stop=server_stopper(server), slow_down=slow_down, tamper=tamper,
        sensitive=[fake.client_secret, "forged0123456789abcd"])


async def vouch_upstream(type_name: str, ctx: Context) -> Upstream:
    fake = fake_vouch.FakeVouch()
    fake.add_user(fake_vouch.FakeVouchUser("ada@example.com", {"sub": "a1", "name": "Ada Lovelace"}))
    fake.slow_seconds = SLOW
    server = await ctx.aiohttp_server(fake.app())
    base = str(server.make_url("")).rstrip("/")
    provider = build(type_name, {"type": type_name, "url": base, "allow_insecure_http": True, "timeout": TIMEOUT},
                     ctx.http)

    def slow_down() -> None:
        fake.failures["validate"] = "slow"

    def tamper() -> None:
        fake.failures["validate"] = "no_user_header"

    forged_cookie = "eyJhbGciOi.forged.x"
    return Upstream(
        provider=provider,
        login=lambda s: fake_vouch.browser_login(provider, redirect_uri=REDIRECT_URI, secrets=s),
        forged=lambda s: Callback(params={"state": s.state}, cookies={"VouchCookie": forged_cookie}),
        stop=server_stopper(server), slow_down=slow_down, tamper=tamper, sensitive=[forged_cookie])


async def dev_upstream(type_name: str, ctx: Context) -> Upstream:
    provider = build(type_name, {"type": type_name}, ctx.http)

    async def login(s: LoginSecrets) -> Callback:
        await provider.authorization_url(redirect_uri=REDIRECT_URI, secrets=s)
        return Callback(params={"state": s.state, "email": "ada@example.com"}, cookies={})

    async def nothing_to_stop() -> None:
        return None

    def not_applicable() -> None:
        raise AssertionError("listed in NOT_APPLICABLE")

    return Upstream(provider=provider, login=login,
                    forged=lambda s: Callback(params={"state": s.state}, cookies={}),
                    stop=nothing_to_stop, slow_down=not_applicable, tamper=not_applicable)


UPSTREAMS: dict[str, Callable[[str, Context], Awaitable[Upstream]]] = {
    "github": github_upstream,
    "oidc": oidc_upstream,
    "auth0": oidc_upstream,
    "authing": oidc_upstream,
    "cognito": oidc_upstream,
    "google": oidc_upstream,
    "keycloak": oidc_upstream,
    "vouch": vouch_upstream,
    "dev": dev_upstream,
}
"""Registry type -> how to build it against its fake. A new registry entry needs one here."""

TYPES = [pytest.param(type_name, id=type_name) for type_name in PROVIDER_TYPES]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The gateway's shared client session (no cookie jar: upstream cookies are never shared)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture(params=TYPES)
def type_name(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name not in UPSTREAMS or name not in EXPECTED:
        pytest.fail(f"registered provider type {name!r} has no fixture in UPSTREAMS/EXPECTED of this suite")
    return name


@pytest.fixture
async def upstream(type_name: str, aiohttp_server: ServerFactory, http: aiohttp.ClientSession) -> Upstream:
    return await UPSTREAMS[type_name](type_name, Context(aiohttp_server, http))


async def failure(upstream: Upstream, callback: Callback, login_secrets: LoginSecrets) -> ProviderError:
    """The ProviderError redeeming ``callback`` raises (authorization URL first, as a login does); its
    message holds no code, cookie or secret."""
    with pytest.raises(ProviderError) as caught:
        await upstream.provider.authorization_url(redirect_uri=REDIRECT_URI, secrets=login_secrets)
        await upstream.provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=login_secrets)
    error = caught.value
    secret_values = [*upstream.sensitive, login_secrets.code_verifier, *callback.cookies.values()]
    if "code" in callback.params:
        secret_values.append(callback.params["code"])
    for value in secret_values:
        assert not value or value not in error.message, f"the message holds a secret: {error.message!r}"
    return error


# ---- the registry -------------------------------------------------------------------------------------

def test_every_registered_type_is_covered() -> None:
    assert set(UPSTREAMS) == set(PROVIDER_TYPES), "every registry entry needs a fixture here, and only those"
    assert set(EXPECTED) == set(PROVIDER_TYPES)
    assert {t for t, _ in NOT_APPLICABLE} <= set(PROVIDER_TYPES)
    assert {rule for _, rule in NOT_APPLICABLE} <= RULES


def test_the_class_names_its_registry_type(type_name: str) -> None:
    assert provider_class(type_name).type_name == type_name


async def test_a_built_provider_has_its_name_and_a_display_name(type_name: str, upstream: Upstream) -> None:
    assert type(upstream.provider).type_name == type_name
    assert upstream.provider.name == NAME
    assert isinstance(upstream.provider.display_name, str) and upstream.provider.display_name


# ---- config -------------------------------------------------------------------------------------------

def test_an_empty_table_reports_exactly_its_missing_required_keys(type_name: str) -> None:
    problems = config_problems(NAME, {"type": type_name})
    missing = {p.removeprefix(f"upstreams.{NAME}.").split(":", 1)[0] for p in problems}
    assert missing == EXPECTED[type_name].required_keys, problems
    assert all(p.startswith(f"upstreams.{NAME}.") and ": required" in p for p in problems), problems


def test_an_unknown_key_is_reported(type_name: str) -> None:
    problems = config_problems(NAME, {"type": type_name, "bogus_setting": 1})
    assert [p for p in problems if p.startswith(f"upstreams.{NAME}.bogus_setting: unknown setting")], problems
    assert all(p.startswith(f"upstreams.{NAME}.") for p in problems), problems


def test_config_keys_name_type_and_every_required_key(type_name: str) -> None:
    keys = provider_class(type_name).config_keys()
    assert "type" in keys
    assert EXPECTED[type_name].required_keys <= keys
    assert "bogus_setting" not in keys


# ---- starting a login ---------------------------------------------------------------------------------

def _query_values(url: str, depth: int = 0) -> dict[str, list[str]]:
    """Every query parameter of ``url`` and of URLs nested in its parameters (vouch's ``url=``)."""
    found: dict[str, list[str]] = {}
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        found.setdefault(key, []).append(value)
        if depth < 2 and value.startswith(("http://", "https://")):
            for inner_key, inner in _query_values(value, depth + 1).items():
                found.setdefault(inner_key, []).extend(inner)
    return found


async def test_the_authorization_url_carries_state_pkce_and_nonce_where_the_protocol_has_them(
        type_name: str, upstream: Upstream) -> None:
    login_secrets = new_secrets()
    url = await upstream.provider.authorization_url(redirect_uri=REDIRECT_URI, secrets=login_secrets)
    assert urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc
    query = _query_values(url)
    carries = EXPECTED[type_name].carries
    if "state" in carries:
        assert query.get("state") == [login_secrets.state], url
    if "pkce" in carries:
        assert query.get("code_challenge") == [s256(login_secrets.code_verifier)], url
        assert query.get("code_challenge_method") == ["S256"], url
    if "nonce" in carries:
        assert query.get("nonce") == [login_secrets.nonce], url
    assert login_secrets.code_verifier not in url, "the PKCE verifier never leaves the gateway"


# ---- redeeming the callback ---------------------------------------------------------------------------

async def test_a_login_redeems_to_an_identity_with_a_subject(upstream: Upstream) -> None:
    login_secrets = new_secrets()
    callback = await upstream.login(login_secrets)
    identity = await upstream.provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=login_secrets)
    assert isinstance(identity, Identity)
    assert isinstance(identity.subject, str) and identity.subject.strip()


async def test_a_forged_callback_is_refused(type_name: str, upstream: Upstream) -> None:
    login_secrets = new_secrets()
    error = await failure(upstream, upstream.forged(login_secrets), login_secrets)
    assert error.reason is EXPECTED[type_name].forged, error.message


@pytest.mark.parametrize("type_name", types_for("replay"), indirect=True)
async def test_a_replayed_callback_is_invalid(type_name: str, upstream: Upstream) -> None:
    login_secrets = new_secrets()
    callback = await upstream.login(login_secrets)
    await upstream.provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=login_secrets)
    error = await failure(upstream, callback, login_secrets)
    assert error.reason is FailureReason.INVALID, error.message


@pytest.mark.parametrize("type_name", types_for("tampered"), indirect=True)
async def test_an_answer_that_fails_verification_is_invalid(type_name: str, upstream: Upstream) -> None:
    """Never trust what the upstream sent without verifying it (unsigned ID token, error in a 200, no user)."""
    login_secrets = new_secrets()
    callback = await upstream.login(login_secrets)
    upstream.tamper()
    error = await failure(upstream, callback, login_secrets)
    assert error.reason is FailureReason.INVALID, error.message


@pytest.mark.parametrize("type_name", types_for("error"), indirect=True)
async def test_an_error_parameter_is_access_denied(type_name: str, upstream: Upstream) -> None:
    login_secrets = new_secrets()
    callback = Callback(params={"state": login_secrets.state, "error": "access_denied"}, cookies={})
    error = await failure(upstream, callback, login_secrets)
    assert error.reason is FailureReason.ACCESS_DENIED, error.message


@pytest.mark.parametrize("type_name", types_for("iss"), indirect=True)
async def test_a_foreign_iss_parameter_is_invalid(type_name: str, upstream: Upstream) -> None:
    login_secrets = new_secrets()
    callback = await upstream.login(login_secrets)
    foreign = Callback(params={**callback.params, "iss": "https://evil.example"}, cookies=callback.cookies)
    error = await failure(upstream, foreign, login_secrets)
    assert error.reason is FailureReason.INVALID, error.message


# ---- an upstream that is away or slow -----------------------------------------------------------------

@pytest.mark.parametrize("type_name", types_for("unreachable"), indirect=True)
async def test_an_unreachable_upstream_is_unavailable(type_name: str, upstream: Upstream) -> None:
    login_secrets = new_secrets()
    await upstream.stop()
    error = await failure(upstream, upstream.forged(login_secrets), login_secrets)
    assert error.reason is FailureReason.UNAVAILABLE, error.message


@pytest.mark.parametrize("type_name", types_for("timeout"), indirect=True)
async def test_the_configured_timeout_is_honoured(type_name: str, upstream: Upstream) -> None:
    login_secrets = new_secrets()
    upstream.slow_down()
    started = time.monotonic()
    error = await failure(upstream, upstream.forged(login_secrets), login_secrets)
    assert error.reason is FailureReason.UNAVAILABLE, error.message
    assert time.monotonic() - started < TIMEOUT * 2 + 1.5, "a slow upstream must not hold a login past timeout"


# ---- logout and bearer tokens -------------------------------------------------------------------------

@pytest.mark.parametrize("upstream_up", [pytest.param(True, id="upstream-up"),
                                         pytest.param(False, id="upstream-down")])
async def test_logout_url_is_a_url_or_none_and_never_raises(upstream: Upstream, upstream_up: bool) -> None:
    if not upstream_up:
        await upstream.stop()
    for id_token in ("", "a.b.c"):
        url = await upstream.provider.logout_url(return_to="https://app.example.com/", id_token=id_token)
        assert url is None or (isinstance(url, str) and urlsplit(url).scheme in ("http", "https")
                               and urlsplit(url).netloc), url


@pytest.mark.parametrize("token", [
    pytest.param("not-a-jwt", id="garbage"),
    pytest.param("", id="empty"),
    pytest.param("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", id="unsigned-jwt"),
])
async def test_verify_bearer_never_raises_for_a_bad_token(upstream: Upstream, token: str) -> None:
    assert await upstream.provider.verify_bearer(token) is None


# ---- refresh (the Refreshing protocol) ----------------------------------------------------------------

MADE_UP_REFRESH_TOKEN = "made-up-refresh-token-0123456789abcdef"


async def refresh_failure(upstream: Upstream, refresh_token: str, subject: str = "someone") -> ProviderError:
    """The ProviderError refreshing ``refresh_token`` raises; its message holds no token or secret."""
    refresh = getattr(upstream.provider, "refresh")  # noqa: B009 - the gateway's detection
    with pytest.raises(ProviderError) as caught:
        await refresh(refresh_token, subject=subject)
    for value in [refresh_token, *upstream.sensitive]:
        assert value not in caught.value.message, f"the message holds a secret: {caught.value.message!r}"
    return caught.value


async def test_refresh_support_is_detected_by_a_callable_refresh(type_name: str, upstream: Upstream) -> None:
    """The gateway asks ``callable(getattr(provider, "refresh", None))``: exactly the refreshing types answer yes."""
    assert callable(getattr(upstream.provider, "refresh", None)) == ((type_name, "refresh") not in NOT_APPLICABLE)


@pytest.mark.parametrize("type_name", types_for("refresh"), indirect=True)
async def test_a_sign_in_refreshes_to_the_same_subject(type_name: str, upstream: Upstream) -> None:
    login_secrets = new_secrets()
    callback = await upstream.login(login_secrets)
    identity = await upstream.provider.redeem(callback=callback, redirect_uri=REDIRECT_URI, secrets=login_secrets)
    assert identity.refresh_token, "the fake issues refresh tokens: the sign-in must keep one"
    refreshed = await getattr(upstream.provider, "refresh")(identity.refresh_token, subject=identity.subject)  # noqa: B009
    assert isinstance(refreshed, Refreshed) and refreshed.refresh_token
    assert refreshed.identity is None or refreshed.identity.subject == identity.subject


@pytest.mark.parametrize("type_name", types_for("refresh"), indirect=True)
async def test_a_refresh_token_the_upstream_never_issued_is_refused(type_name: str, upstream: Upstream) -> None:
    error = await refresh_failure(upstream, MADE_UP_REFRESH_TOKEN)
    assert error.reason in (FailureReason.ACCESS_DENIED, FailureReason.INVALID), error.message


@pytest.mark.parametrize("type_name", types_for("refresh"), indirect=True)
async def test_a_refresh_against_an_unreachable_upstream_is_unavailable(type_name: str, upstream: Upstream) -> None:
    await upstream.stop()
    assert (await refresh_failure(upstream, MADE_UP_REFRESH_TOKEN)).reason is FailureReason.UNAVAILABLE


@pytest.mark.parametrize("type_name", types_for("refresh"), indirect=True)
async def test_a_refresh_honours_the_configured_timeout(type_name: str, upstream: Upstream) -> None:
    upstream.slow_down()
    started = time.monotonic()
    assert (await refresh_failure(upstream, MADE_UP_REFRESH_TOKEN)).reason is FailureReason.UNAVAILABLE
    assert time.monotonic() - started < TIMEOUT * 2 + 1.5, "a slow upstream must not hold a refresh past timeout"
