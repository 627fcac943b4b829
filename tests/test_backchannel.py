"""OIDC Back-Channel Logout 1.0 at ``POST /backchannel-logout/<upstream>``, against the fake provider.

Browsers sign in through the fake OIDC provider (real HTTP, JWKS, RS256), which gives each sign-in its own
provider session (``sid``); the fake then signs logout tokens as the provider would post them. A token
naming a ``sid`` ends that browser session only, one naming only ``sub`` every browser session of the
user; API tokens live on. Replayed and forged tokens end nothing. Each runs on SQLite and PostgreSQL, and
two replicas on one PostgreSQL show that a logout posted to one ends a session cached by the other
within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import jwt
import pytest
import structlog.testing
from aiohttp import ClientResponse

from gateway import admin
from gateway.handlers.backchannel import MAX_BODY_BYTES
from tests.browsers import PUBLIC, Browser, BrowserFactory
from tests.fakes.oidc import FakeOIDC, ServerFactory, ada_and_bob, rsa_key
from tests.harness import Gateway, GatewayFactory
from tests.helpers import PostgresCluster

FORM = "application/x-www-form-urlencoded"
SETTINGS: dict[str, Any] = {"public_url": PUBLIC, "cookie.secure": False}


@pytest.fixture
async def oidc(aiohttp_server: ServerFactory) -> FakeOIDC:
    return await FakeOIDC(users=ada_and_bob()).start(aiohttp_server)


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of each backend (their revocation feeds differ: polling and LISTEN/NOTIFY)."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def gw(gateway_factory: GatewayFactory, oidc: FakeOIDC, database_url: str) -> Gateway:
    return await gateway_factory(upstreams={"corp": oidc.config()}, database_url=database_url, **SETTINGS)


async def post_logout(gw: Gateway, token: str | None, *, upstream: str = "corp", content_type: str = FORM,
                      body: bytes | None = None) -> ClientResponse:
    """POST a logout token as a provider does (form-encoded), or ``body`` as given."""
    data = body if body is not None else (f"logout_token={token}".encode() if token is not None else b"")
    resp = await gw.client.post(f"/backchannel-logout/{upstream}", data=data,
                                headers={"Content-Type": content_type})
    await resp.read()
    return resp


async def check(browser: Browser, headers: Mapping[str, str] | None = None) -> int:
    return (await browser.get("/auth/check", headers=headers)).status


async def signed_in(browsers: BrowserFactory, gw: Gateway, count: int) -> list[Browser]:
    """``count`` browsers each signed in as the fake's current user, each in a provider session of its own."""
    out = []
    for _ in range(count):
        browser = browsers(gw)
        assert (await browser.sign_in()).status == 302
        assert await check(browser) == 200
        out.append(browser)
    return out


async def api_token(gw: Gateway, subject: str = "user-ada") -> dict[str, str]:
    user = await gw.store.get_user_by_key("corp", subject)
    assert user is not None
    minted = await admin.mint_api_token(gw.store, gw.settings.session, user_id=user.id)
    return {"Authorization": f"Bearer {minted.token}"}


async def assert_refused(resp: ClientResponse, status: int = 400, error: str = "invalid_request") -> None:
    assert resp.status == status, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert (await resp.json())["error"] == error


async def test_a_sid_ends_that_browser_session_and_a_sub_every_one(
        gw: Gateway, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    first, second = await signed_in(browsers, gw, 2)
    assert oidc.session_ids == ["sid-1", "sid-2"]
    api = await api_token(gw)
    oidc.login_as = "user-bob"
    (bob,) = await signed_in(browsers, gw, 1)

    with structlog.testing.capture_logs() as logs:
        by_sid = oidc.logout_token(sub=None, sid="sid-1")
        resp = await post_logout(gw, by_sid)
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert [e["event"] for e in logs if e["log_level"] in ("info", "warning")] == ["back-channel logout"]
    assert by_sid not in repr(logs)
    # at once on this replica (it evicts its own cache); the other session and the API token live on
    assert (await check(first), await check(second), await check(first, api), await check(bob)) == (401, 200, 200, 200)
    # and for Hasura alike
    assert ((await first.get("/auth/webhook")).status, (await second.get("/auth/webhook")).status) == (401, 200)

    resp = await post_logout(gw, oidc.logout_token(sub="user-ada"))
    assert resp.status == 200
    assert (await check(second), await check(second, api), await check(bob)) == (401, 200, 200)

    # a logout naming nobody's session is still a 200 (the spec's 2.8): the provider is done with it
    assert (await post_logout(gw, oidc.logout_token(sub=None, sid="sid-unknown"))).status == 200
    assert (await post_logout(gw, oidc.logout_token(sub="user-bob", sid="sid-1"))).status == 200
    assert await check(bob) == 200

    assert gw.metric("gateway_backchannel_logouts_total", upstream="corp", outcome="revoked") == 2
    assert gw.metric("gateway_backchannel_logouts_total", upstream="corp", outcome="no_session") == 2
    revokes = [e for e in await gw.store.list_audit(limit=20) if e.detail.get("reason") == "backchannel_logout"]
    assert [(e.actor, e.user_key, e.detail["sessions"]) for e in reversed(revokes)] == [
        ("upstream:corp", "corp:user-ada", "1"), ("upstream:corp", "corp:user-ada", "1"),
        ("upstream:corp", "", "0"), ("upstream:corp", "corp:user-bob", "0")]


async def test_a_replayed_logout_token_ends_nothing_more(
        gw: Gateway, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    (first,) = await signed_in(browsers, gw, 1)
    token = oidc.logout_token(sub="user-ada")
    assert (await post_logout(gw, token)).status == 200
    assert await check(first) == 401
    (again,) = await signed_in(browsers, gw, 1)  # the user signs in again afterwards

    await assert_refused(await post_logout(gw, token))
    assert await check(again) == 200
    assert gw.metric("gateway_backchannel_logouts_total", upstream="corp", outcome="replayed") == 1


def forged_tokens(oidc: FakeOIDC) -> dict[str, str]:
    """Logout tokens the gateway must refuse, each wrong in one way, all naming Ada's sessions."""
    now = int(time.time())
    good: dict[str, Any] = {"iss": oidc.issuer, "aud": oidc.client_id, "iat": now, "exp": now + 120, "sub": "user-ada",
                            "jti": "foreign-key", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}}
    return {
        "wrong aud": oidc.logout_token(aud="another-client"),
        "wrong iss": oidc.logout_token(iss="https://evil.example.com/oidc"),
        "signed by a foreign key": jwt.encode(good, rsa_key(99), algorithm="RS256",
                                              headers={"kid": oidc.signing_kid, "typ": "logout+jwt"}),
        "alg none": oidc.logout_token(alg="none"),
        "HS256 keyed with the public key": oidc.logout_token(alg="HS256-public-key"),
        "a nonce (an ID token)": oidc.logout_token(nonce="n-0S6_WzA2Mj"),
        "no logout event": oidc.logout_token(omit=("events",)),
        "expired": oidc.logout_token(iat=now - 900, exp=now - 600),
        "no jti": oidc.logout_token(omit=("jti",)),
        "neither sub nor sid": oidc.logout_token(sub=None),
        "not a JWT": "not-a-jwt",
    }


async def test_forged_logout_tokens_end_nothing(gw: Gateway, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    first, second = await signed_in(browsers, gw, 2)
    for shape, token in forged_tokens(oidc).items():
        resp = await post_logout(gw, token)
        assert resp.status == 400, shape
        body = await resp.json()
        assert body["error"] == "invalid_request", shape
        assert body["message"] == "The logout token could not be verified.", shape  # no hint for the forger
    assert (await check(first), await check(second)) == (200, 200)
    invalid = gw.metric("gateway_backchannel_logouts_total", upstream="corp", outcome="invalid")
    assert invalid == len(forged_tokens(oidc))
    assert [e for e in await gw.store.list_audit() if e.event == "revoke"] == []


async def test_malformed_requests_are_answered_clearly(gw: Gateway, oidc: FakeOIDC) -> None:
    token = oidc.logout_token()
    await assert_refused(await post_logout(gw, token, upstream="nowhere"), 404, "not_found")
    await assert_refused(await post_logout(gw, token, content_type="application/json"))
    await assert_refused(await post_logout(gw, token, content_type="text/plain"))
    await assert_refused(await post_logout(gw, None))
    await assert_refused(await post_logout(gw, "", body=f"logout_token={token}&logout_token={token}".encode()))
    await assert_refused(await post_logout(gw, "", body=b"logout_token=\xff\xfe"))
    await assert_refused(await post_logout(gw, "", body=b"&".join([b"a=1"] * 100)))
    huge = await post_logout(gw, "", body=b"logout_token=" + b"a" * MAX_BODY_BYTES)
    await assert_refused(huge, 413, "payload_too_large")
    get = await gw.client.get("/backchannel-logout/corp")
    assert get.status == 405 and get.headers["Allow"] == "POST"
    # none of it used the token: it still works
    assert (await post_logout(gw, token)).status == 200


async def test_an_upstream_that_sends_no_logouts_has_no_endpoint(gateway_factory: GatewayFactory,
                                                                  oidc: FakeOIDC) -> None:
    github = {"type": "github", "client_id": "gh-client", "client_secret": "gh-secret",
              "base_url": "http://127.0.0.1:9", "allow_insecure_http": True}
    gw = await gateway_factory(upstreams={"corp": oidc.config(), "gh": github}, **SETTINGS)
    await assert_refused(await post_logout(gw, oidc.logout_token(), upstream="gh"), 404, "not_found")
    assert gw.metric("gateway_backchannel_logouts_total", upstream="", outcome="not_found") == 1


async def test_keys_out_of_reach_ask_the_provider_to_retry(
        gateway_factory: GatewayFactory, gw: Gateway, oidc: FakeOIDC, browsers: BrowserFactory,
        database_url: str) -> None:
    (browser,) = await signed_in(browsers, gw, 1)
    # a replica that has not fetched the provider's keys yet, while the provider is down
    fresh = await gateway_factory(upstreams={"corp": oidc.config()}, database_url=database_url, **SETTINGS)
    oidc.knobs.discovery_status = oidc.knobs.jwks_status = 503
    token = oidc.logout_token(sub="user-ada")
    resp = await post_logout(fresh, token)
    await assert_refused(resp, 503, "temporarily_unavailable")
    assert int(resp.headers["Retry-After"]) > 0
    assert await check(browser) == 200

    # the retry goes through: the failed attempt did not use up the token's jti
    oidc.knobs.discovery_status = oidc.knobs.jwks_status = 200
    assert (await post_logout(fresh, token)).status == 200
    fresh_browser = browsers(fresh)
    fresh_browser.set_cookie("gw_session", browser.cookie("gw_session") or "")
    assert await check(fresh_browser) == 401
    assert fresh.metric("gateway_backchannel_logouts_total", upstream="corp", outcome="unavailable") == 1


@pytest.mark.postgres
async def test_a_logout_posted_to_one_replica_ends_a_session_cached_by_another_within_a_second(
        gateway_factory: GatewayFactory, oidc: FakeOIDC, browsers: BrowserFactory, postgres_url: str) -> None:
    replicas = [await gateway_factory(upstreams={"corp": oidc.config()}, database_url=postgres_url, **SETTINGS)
                for _ in range(2)]
    for replica in replicas:
        while replica.metric("gateway_revocation_feed_up") != 1:
            await asyncio.sleep(0.02)
    a, b = replicas
    first, second = await signed_in(browsers, b, 2)  # both now cached by b
    assert (await check(first), await check(second)) == (200, 200)

    assert (await post_logout(a, oidc.logout_token(sub=None, sid="sid-1"))).status == 200
    deadline = time.monotonic() + 1.0
    while await check(first) != 401:
        assert time.monotonic() < deadline, "replica b still admits the session a second after the logout"
        await asyncio.sleep(0.02)
    assert await check(second) == 200


@pytest.mark.postgres
async def test_a_database_outage_asks_the_provider_to_retry(
        gateway_factory: GatewayFactory, oidc: FakeOIDC, browsers: BrowserFactory, postgres_url: str,
        postgres_cluster: PostgresCluster) -> None:
    gw = await gateway_factory(upstreams={"corp": oidc.config()}, database_url=postgres_url,
                               **SETTINGS, **{"database.connect_timeout": "1s", "database.query_timeout": "1s"})
    (browser,) = await signed_in(browsers, gw, 1)  # the provider's keys are fetched by now
    token = oidc.logout_token(sub="user-ada")
    postgres_cluster.stop()
    try:
        resp = await post_logout(gw, token)
        await assert_refused(resp, 503, "temporarily_unavailable")
        assert int(resp.headers["Retry-After"]) > 0
    finally:
        postgres_cluster.start()
    # nothing was written: the provider's retry (once the pool has reconnected) ends the session
    deadline = time.monotonic() + 5.0
    while (resp := await post_logout(gw, token)).status == 503 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert resp.status == 200, await resp.text()
    assert await check(browser) == 401
