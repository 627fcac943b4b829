"""Sliding renewal with the upstream's refresh token (``session.refresh``), end to end.

Browsers sign in through the fake OIDC provider (a real HTTP server issuing RS256 ID tokens and refresh
tokens) and keep using the gateway's check endpoint while the gateway's clock moves on. What is held:

- a session in use is refreshed once its ``refresh_interval`` has passed, in the background: the check
  that noticed is answered as usual, the provider is asked exactly once (however many checks, however
  many replicas), the session then lives ``lifetime`` from the renewal and outlives its first expiry, the
  user's groups and roles are re-read, and the browser's cookie gets the new ``Max-Age``;
- the provider's refusal ends the session everywhere (a revoked or expired refresh token, a user who no
  longer passes the enrolment policy, or who lost a required claim); a provider that is down changes
  nothing, and the refresh is tried again later; a session is never extended without the provider;
- without ``session.refresh`` nothing of this happens and no refresh token is kept; with it, the refresh
  token is kept only sealed, and never logged;
- two replicas that see the session come due at once refresh it once, even with rotating refresh
  tokens whose replay would revoke the whole family;
- a GitHub App's sessions (expiring user tokens) are renewed the same way, and end when the user leaves
  the organisation the upstream admits.

Most run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
import structlog.testing
from aiohttp import ClientResponse

from gateway.app import REFRESHER
from gateway.sealing import new_key
from gateway.settings import SettingsError
from gateway.tokens import hash_token
from tests.browsers import PUBLIC, Browser, BrowserFactory
from tests.fakes.github import FakeEmail, FakeGitHub
from tests.fakes.github import FakeUser as GitHubUser
from tests.fakes.oidc import FakeOIDC, FakeUser, ServerFactory
from tests.harness import Gateway, GatewayFactory
from tests.helpers import make_settings
from tests.test_id_token_hint import database_text, kept
from tests.test_login_providers import Browser as ProviderBrowser
from tests.test_login_providers import github_table
from tests.test_login_providers import settings as provider_settings

KEY = new_key()
HOUR = 3600.0
SETTINGS: dict[str, Any] = {"public_url": PUBLIC, "cookie.secure": False, "session.sealing_key": KEY,
                            "session.refresh": True, "session.lifetime": "2h", "session.refresh_interval": "1h"}
ADA = "user-ada"


@pytest.fixture
async def oidc(aiohttp_server: ServerFactory) -> FakeOIDC:
    users = [FakeUser(sub=ADA, email="ada@example.com", name="Ada", id_claims={"groups": ["staff"]})]
    return await FakeOIDC(users=users).start(aiohttp_server)


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def start(gateway_factory: GatewayFactory, oidc: FakeOIDC, database_url: str) -> Any:
    """Start a gateway (another replica on the same database each call) with ``SETTINGS`` and overrides."""
    async def started(**overrides: Any) -> Gateway:
        upstream = oidc.config(**overrides.pop("upstream", {}))
        return await gateway_factory(upstreams={"corp": upstream}, database_url=database_url,
                                     **{**SETTINGS, **overrides})
    return started


async def signed_in(browsers: BrowserFactory, gw: Gateway) -> Browser:
    browser = browsers(gw)
    assert (await browser.sign_in()).status == 302
    return browser


async def check(browser: Browser) -> ClientResponse:
    return await browser.get("/auth/check", headers={"Accept": "application/json"})


async def settle(*gateways: Gateway) -> None:
    """Let every refresh these gateways started finish."""
    for gw in gateways:
        await gw.app[REFRESHER].drain()


async def until(predicate: Any, what: str, timeout: float = 5.0) -> None:
    """Poll ``await predicate()`` until true (the revocation feed reaches every process within a second)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def session_hash(browser: Browser) -> str:
    return hash_token(str(browser.cookie("gw_session")))


def max_age(resp: ClientResponse) -> int | None:
    """The Max-Age of the session cookie the answer sets, or None when it sets none."""
    for value in resp.headers.getall("Set-Cookie", ()):
        if value.startswith("gw_session="):
            found = re.search(r"Max-Age=(\d+)", value, re.I)
            return int(found.group(1)) if found else None
    return None


async def test_a_session_in_use_outlives_its_lifetime_while_the_upstream_vouches(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory, database_url: str) -> None:
    gw = await start()
    browser = await signed_in(browsers, gw)
    h = session_hash(browser)
    assert sorted(p for s, p in kept(database_url) if s == h) == ["id_token", "refresh_token"]
    first = await check(browser)
    assert first.status == 200 and first.headers["X-Auth-Request-Groups"] == "staff"
    assert max_age(first) is None  # nothing renewed yet: the sign-in's cookie stands

    gw.clock.advance(HOUR - 1)
    assert (await check(browser)).status == 200
    await settle(gw)
    assert oidc.refresh_calls == 0  # not due yet

    oidc.set_claims(ADA, groups=["staff", "admins"])
    gw.clock.advance(2)
    noticed = await check(browser)  # due: answered as usual, the refresh runs in the background
    assert noticed.status == 200 and max_age(noticed) is None
    await settle(gw)
    assert oidc.refresh_calls == 1
    assert gw.metric("gateway_session_refreshes_total", outcome="renewed") == 1

    async def groups_re_read() -> bool:
        return (await check(browser)).headers.get("X-Auth-Request-Groups") == "staff,admins"
    await until(groups_re_read, "the renewed session's new groups were never served")
    found = await gw.store.lookup_session(h)
    assert found is not None and found.session.renewed_at == pytest.approx(gw.clock())
    assert found.session.expires_at == pytest.approx(gw.clock() + 2 * HOUR)
    assert found.user.roles == () or "admins" in found.user.groups
    # the browser's cookie follows the session: the same token, with the renewed session's Max-Age
    renewed = await check(browser)
    assert max_age(renewed) == pytest.approx(2 * HOUR, abs=2)
    audit = [e for e in await gw.store.list_audit(limit=20) if e.event == "session_refresh"]
    assert [(e.actor, e.detail.get("session"), e.detail.get("groups")) for e in audit] == [
        ("refresh", h[:12], "staff,admins")]
    assert browser.cookie("gw_session") is not None and session_hash(browser) == h

    # past the sign-in's own expiry, still in, refreshed once an interval, never more
    for _ in range(3):
        gw.clock.advance(HOUR + 1)
        assert (await check(browser)).status == 200
        await settle(gw)
    assert oidc.refresh_calls == 4
    gw.clock.advance(HOUR / 2 + 1)
    assert max_age(await check(browser)) is None  # half an interval after the renewal: no more cookies


async def test_many_checks_of_a_due_session_refresh_it_once(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    gw = await start()
    browser = await signed_in(browsers, gw)
    gw.clock.advance(HOUR + 1)
    answers = await asyncio.gather(*(check(browser) for _ in range(30)))
    assert {a.status for a in answers} == {200}
    await settle(gw)
    assert oidc.refresh_calls == 1


@pytest.mark.postgres
async def test_two_replicas_seeing_a_session_come_due_refresh_it_once(
        gateway_factory: GatewayFactory, oidc: FakeOIDC, browsers: BrowserFactory, postgres_url: str) -> None:
    # rotating refresh tokens whose replay revokes every token of the sign-in (Auth0's reuse detection):
    # a second refresh with the same token would end the session
    oidc.knobs.rotate_refresh_tokens = True
    oidc.knobs.reuse_revokes_family = True
    replicas = [await gateway_factory(upstreams={"corp": oidc.config()}, database_url=postgres_url, **SETTINGS)
                for _ in range(2)]
    browser = await signed_in(browsers, replicas[0])
    token = str(browser.cookie("gw_session"))
    others = browsers(replicas[1])
    others.set_cookie("gw_session", token)
    due = replicas[0].clock.now + HOUR + 1
    for replica in replicas:
        replica.clock.now = due
    answers = await asyncio.gather(*(b.get("/auth/check") for b in (browser, others) for _ in range(10)))
    assert {a.status for a in answers} == {200}
    await settle(*replicas)
    assert oidc.refresh_calls == 1
    assert sum(r.metric("gateway_session_refreshes_total", outcome="renewed") for r in replicas) == 1
    assert sum(r.metric("gateway_session_refreshes_total", outcome="elsewhere") for r in replicas) == 1
    # the next interval, the other replica may be the one: the rotated token works, the session lives on
    for replica in replicas:
        replica.clock.advance(HOUR + 1)
    assert (await others.get("/auth/check")).status == 200
    await settle(*replicas)
    assert oidc.refresh_calls == 2
    for replica in replicas:
        replica.clock.advance(HOUR + 1)  # past the sign-in's expiry and the first renewal's
    assert (await browser.get("/auth/check")).status == 200
    assert (await others.get("/auth/check")).status == 200


@pytest.mark.parametrize("refusal", ["revoked", "expired", "disabled"])
async def test_the_upstreams_refusal_ends_the_session_everywhere(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory, refusal: str) -> None:
    gw = await start()
    if refusal == "expired":
        oidc.knobs.refresh_token_ttl = 1.0  # the provider's own clock: real seconds
    browser = await signed_in(browsers, gw)
    bystander = await signed_in(browsers, gw)  # the same user, signed in again: a session of its own
    if refusal == "revoked":
        oidc.revoke_refresh_tokens(ADA)
    elif refusal == "expired":
        await asyncio.sleep(1.2)
    else:
        oidc.knobs.token_error = "invalid_grant"  # a disabled user: the provider refuses every grant
    gw.clock.advance(HOUR + 1)
    assert (await check(browser)).status == 200  # still valid while the refresh runs
    await settle(gw)
    assert gw.metric("gateway_session_refreshes_total", outcome="refused") >= 1

    async def ended() -> bool:
        return (await check(browser)).status == 401
    await until(ended, "a session its upstream no longer vouches for was still allowed")
    audit = await gw.store.list_audit(limit=10)
    assert any(e.event == "revoke" and e.actor == "refresh" and e.detail.get("reason") == "upstream refused refresh"
               for e in audit)
    if refusal != "disabled":
        # the other sign-in holds its own refresh token; it is judged on its own turn
        assert (await check(bystander)).status == 200


async def test_a_user_the_enrolment_policy_now_refuses_is_signed_out(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    gw = await start(**{"enrolment.groups": ["staff"]})
    browser = await signed_in(browsers, gw)
    oidc.set_claims(ADA, groups=["contractors"])
    gw.clock.advance(HOUR + 1)
    assert (await check(browser)).status == 200
    await settle(gw)

    async def ended() -> bool:
        return (await check(browser)).status == 401
    await until(ended, "a user the enrolment policy refuses kept their session")
    assert gw.metric("gateway_session_refreshes_total", outcome="refused") == 1


async def test_a_required_claim_lost_upstream_ends_the_session(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    oidc.set_claims(ADA, hd="example.com")
    gw = await start(upstream={"required_claims": {"hd": "example.com"}})
    browser = await signed_in(browsers, gw)
    oidc.set_claims(ADA, hd="elsewhere.example")
    gw.clock.advance(HOUR + 1)
    await check(browser)
    await settle(gw)

    async def ended() -> bool:
        return (await check(browser)).status == 401
    await until(ended, "a user who lost a required claim kept their session")


async def test_an_upstream_that_is_down_changes_nothing_and_is_asked_again_later(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    gw = await start()
    browser = await signed_in(browsers, gw)
    found = await gw.store.lookup_session(session_hash(browser))
    assert found is not None
    expires_at = found.session.expires_at
    oidc.knobs.token_status = 503
    gw.clock.advance(HOUR + 1)
    for _ in range(5):
        assert (await check(browser)).status == 200
    await settle(gw)
    assert oidc.refresh_calls == 1  # tried once, not on every check
    assert gw.metric("gateway_session_refreshes_total", outcome="provider_unavailable") == 1
    found = await gw.store.lookup_session(session_hash(browser))
    assert found is not None and found.session.expires_at == expires_at and found.session.renewed_at is None

    gw.clock.advance(30)
    await check(browser)
    await settle(gw)
    assert oidc.refresh_calls == 1  # within the retry pause
    oidc.knobs.token_status = 200
    gw.clock.advance(31)
    await check(browser)
    await settle(gw)
    assert oidc.refresh_calls == 2
    assert gw.metric("gateway_session_refreshes_total", outcome="renewed") == 1


async def test_a_session_the_upstream_never_renewed_still_ends_at_its_lifetime(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    gw = await start()
    browser = await signed_in(browsers, gw)
    oidc.knobs.token_status = 503
    for _ in range(2):
        gw.clock.advance(HOUR - 60)
        await check(browser)
        await settle(gw)
    gw.clock.advance(121)  # 2 h after the sign-in: fail closed, never extended without the upstream
    assert (await check(browser)).status == 401


async def test_without_refresh_nothing_is_kept_or_renewed(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory, database_url: str) -> None:
    gw = await start(**{"session.refresh": False})
    assert REFRESHER not in gw.app
    browser = await signed_in(browsers, gw)
    assert [p for _, p in kept(database_url)] == ["id_token"]
    gw.clock.advance(HOUR + 1)
    assert (await check(browser)).status == 200
    gw.clock.advance(HOUR)
    assert (await check(browser)).status == 401
    assert oidc.refresh_calls == 0


async def test_an_upstream_that_issues_no_refresh_token_leaves_sessions_as_they_are(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory, database_url: str) -> None:
    oidc.knobs.refresh_tokens = False
    gw = await start()
    browser = await signed_in(browsers, gw)
    assert [p for _, p in kept(database_url)] == ["id_token"]
    gw.clock.advance(HOUR + 1)
    for _ in range(3):
        assert (await check(browser)).status == 200
        await settle(gw)
        gw.clock.advance(61)
    assert gw.metric("gateway_session_refreshes_total", outcome="unsupported") == 1  # then remembered
    assert oidc.refresh_calls == 0


async def test_api_tokens_and_bearer_checks_never_refresh_or_get_cookies(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    gw = await start()
    api = await gw.token("ada@example.com", kind="api")
    browser = await signed_in(browsers, gw)
    gw.clock.advance(HOUR + 1)
    assert (await browser.get("/auth/check")).status == 200
    await settle(gw)
    resp = await gw.client.get("/auth/check", headers={"Authorization": f"Bearer {browser.cookie('gw_session')}"})
    assert resp.status == 200 and max_age(resp) is None  # renewed, but a bearer caller has no cookie to renew
    api_check = await gw.client.get("/auth/check", headers={"Authorization": f"Bearer {api}"})
    assert api_check.status == 200
    await settle(gw)
    assert oidc.refresh_calls == 1
    assert gw.metric("gateway_session_refreshes_total", outcome="unsupported") == 0


async def test_the_refresh_token_is_kept_sealed_and_never_logged(
        start: Any, oidc: FakeOIDC, browsers: BrowserFactory, database_url: str) -> None:
    oidc.knobs.rotate_refresh_tokens = True
    gw = await start()
    with structlog.testing.capture_logs() as logs:
        browser = await signed_in(browsers, gw)
        gw.clock.advance(HOUR + 1)
        await check(browser)
        await settle(gw)
        oidc.revoke_refresh_tokens(ADA)
        gw.clock.advance(HOUR + 1)
        await check(browser)
        await settle(gw)
    issued = oidc.issued_refresh_tokens
    assert len(issued) == 2 and oidc.refresh_calls == 2
    dump = database_text(database_url)
    assert dump and not any(token in dump for token in issued)
    assert not any(token in repr(logs) for token in issued)
    events = [line["event"] for line in logs]
    assert "session renewed by its upstream" in events and "session ended: upstream refused refresh" in events


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"session.sealing_key": ""}, "session.refresh: needs session.sealing_key"),
    ({"session.refresh_interval": "2h"}, "session.refresh_interval: must be positive and shorter than"),
    ({"session.refresh_interval": "0s"}, "session.refresh_interval: must be positive and shorter than"),
])
def test_check_config_names_what_refresh_needs(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings({**SETTINGS, **overrides})
    assert problem in str(caught.value)


async def test_a_github_app_session_is_renewed_until_the_user_leaves_the_org(
        gateway_factory: GatewayFactory, aiohttp_server: ServerFactory) -> None:
    fake = FakeGitHub()
    fake.expiring_tokens = True  # a GitHub App with expiring user tokens: refresh tokens, rotated at each use
    fake.add_user(GitHubUser(id=1001, login="member", emails=[FakeEmail("member@example.com", primary=True)],
                             orgs=["acme"]))
    fake.default_login = "member"
    base = str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")
    gw = await gateway_factory(**provider_settings(
        {"github": github_table(fake, base, api_url=base, orgs=["acme"])},
        **{k: v for k, v in SETTINGS.items() if k.startswith("session.")}))
    browser = ProviderBrowser(gw)
    assert (await browser.sign_in()).status == 302
    gw.clock.advance(HOUR + 1)
    assert (await browser.get("/auth/check")).status == 200
    await settle(gw)
    assert fake.refresh_calls == 1
    assert gw.metric("gateway_session_refreshes_total", outcome="renewed") == 1
    gw.clock.advance(HOUR)  # past the sign-in's lifetime: renewed
    assert (await browser.get("/auth/check")).status == 200

    fake.users[1001].orgs = []  # removed from the organisation the upstream admits
    gw.clock.advance(1)
    await browser.get("/auth/check")
    await settle(gw)

    async def ended() -> bool:
        return (await browser.get("/auth/check")).status == 401
    await until(ended, "a GitHub user who left the organisation kept their session")
    assert fake.refresh_calls == 2
