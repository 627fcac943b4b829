"""The proxy check endpoint (/auth/check, /auth/check/{anything}) against contracts.md, plus the cache."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.access import DenyAll
from gateway.app import CHECKER
from gateway.core import Decision, Outcome
from gateway.credentials import Credential, CredentialSource
from gateway.handlers.check import IDENTITY_HEADERS
from gateway.tokens import mint_token
from tests.harness import FRONT_ENDS, Gateway, GatewayFactory


@pytest.fixture(params=FRONT_ENDS)
def frontend(request: pytest.FixtureRequest) -> str:
    """Every test here runs through the fast lane and through aiohttp alone."""
    return str(request.param)


COOKIE = "gw_session"
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


async def test_allowed_with_every_identity_header(gw: Gateway) -> None:
    token = await gw.token("ada@example.com", roles=("user", "admin"), username="ada")
    resp = await gw.client.get("/auth/check", headers={"Cookie": f"{COOKIE}={token}"})
    assert resp.status == 200
    assert resp.headers["X-Auth-Request-User"] == "ada"
    assert resp.headers["X-Auth-Request-Email"] == "ada@example.com"
    assert resp.headers["X-Auth-Request-Groups"] == "user,admin"
    assert resp.headers["X-Auth-Request-User-Id"] == str(gw.users["ada@example.com"].id)
    assert await resp.read() == b""


async def test_user_header_falls_back_to_email(gw: Gateway) -> None:
    token = await gw.token("noname@example.com")
    resp = await gw.client.get("/auth/check", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert resp.headers["X-Auth-Request-User"] == "noname@example.com"
    assert resp.headers["X-Auth-Request-Groups"] == "user"


@pytest.mark.parametrize("headers", [
    {},
    {"Cookie": f"{COOKIE}=nonsense"},
    {"Cookie": f"{COOKIE}={mint_token()}"},
    {"Authorization": "Bearer nonsense"},
    {"Authorization": "Bearer"},
    {"Cookie": f"other={mint_token()}"},
], ids=["none", "malformed-cookie", "unknown-token", "malformed-bearer", "empty-bearer", "other-cookie"])
async def test_denied_is_401_with_empty_identity_headers_and_body(gw: Gateway, headers: dict[str, str]) -> None:
    resp = await gw.client.get("/auth/check", headers={**headers, "X-Auth-Request-User": "spoofed"})
    assert resp.status == 401
    for name in IDENTITY_HEADERS:
        assert resp.headers[name] == ""
    assert await resp.read() == b""


async def test_policy_deny_is_403_with_identity(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(policy=DenyAll())
    token = await gw.token("eve@example.com")
    resp = await gw.client.get("/auth/check", headers={"Cookie": f"{COOKIE}={token}"})
    assert resp.status == 403
    assert resp.headers["X-Auth-Request-Email"] == "eve@example.com"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
async def test_envoy_catch_all_accepts_every_method(gw: Gateway, method: str) -> None:
    token = await gw.token()
    resp = await gw.client.request(method, "/auth/check/api/v1/items?x=1", headers={"Cookie": f"{COOKIE}={token}"})
    assert resp.status == 200
    resp = await gw.client.request(method, "/auth/check/api/v1/items")
    assert resp.status == 401


async def test_browser_mode_redirects_html_requests_to_login(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**{"check.redirect_browsers": True, "public_url": "https://auth.example.com"})
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app.example.com",
                 "X-Forwarded-Uri": "/reports?year=2026", "X-Forwarded-Method": "GET"}
    resp = await gw.client.get("/auth/check", headers={**forwarded, "Accept": HTML}, allow_redirects=False)
    assert resp.status == 302
    location = urlsplit(resp.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "auth.example.com", "/login")
    assert parse_qs(location.query)["rd"] == ["https://app.example.com/reports?year=2026"]
    # API and XHR callers get a plain 401
    resp = await gw.client.get("/auth/check", headers={**forwarded, "Accept": "application/json"},
                               allow_redirects=False)
    assert resp.status == 401
    resp = await gw.client.get("/auth/check", headers={**forwarded, "Accept": HTML,
                                                       "X-Requested-With": "XMLHttpRequest"}, allow_redirects=False)
    assert resp.status == 401
    # logged-in browsers pass
    token = await gw.token()
    resp = await gw.client.get("/auth/check", headers={**forwarded, "Accept": HTML, "Cookie": f"{COOKIE}={token}"},
                               allow_redirects=False)
    assert resp.status == 200


async def test_browser_mode_per_check_url(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(public_url="https://auth.example.com")
    headers = {"Accept": HTML, "X-Original-URL": "https://app.example.com/x"}
    resp = await gw.client.get("/auth/check", headers=headers, allow_redirects=False)
    assert resp.status == 401
    resp = await gw.client.get("/auth/check?mode=redirect", headers=headers, allow_redirects=False)
    assert resp.status == 302
    assert parse_qs(urlsplit(resp.headers["Location"]).query)["rd"] == ["https://app.example.com/x"]


async def test_a_401_names_the_encoded_sign_in_url_for_proxies_that_cannot_encode(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(public_url="https://auth.example.com")
    original = "https://app.example.com/reports?year=2026&q=a%26b"
    resp = await gw.client.get("/auth/check", headers={"X-Original-URL": original}, allow_redirects=False)
    assert resp.status == 401
    login = urlsplit(resp.headers["X-Auth-Request-Login"])
    assert (login.scheme, login.netloc, login.path) == ("https", "auth.example.com", "/login")
    assert parse_qs(login.query)["rd"] == [original]
    # no original URL (or an untrusted peer's): nothing to name
    resp = await gw.client.get("/auth/check", allow_redirects=False)
    assert resp.status == 401 and "X-Auth-Request-Login" not in resp.headers
    token = await gw.token()
    resp = await gw.client.get("/auth/check", headers={"X-Original-URL": original, "Cookie": f"{COOKIE}={token}"})
    assert resp.status == 200 and "X-Auth-Request-Login" not in resp.headers


async def test_forwarded_headers_from_untrusted_peers_are_ignored(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**{"check.redirect_browsers": True, "trusted_proxies": ["10.0.0.0/8"]})
    headers = {"Accept": HTML, "X-Forwarded-Host": "evil.example.net", "X-Forwarded-Uri": "/x",
               "X-Original-URL": "https://evil.example.net/"}
    resp = await gw.client.get("/auth/check", headers=headers, allow_redirects=False)
    assert resp.status == 302
    assert urlsplit(resp.headers["Location"]).query == ""  # no rd taken from an untrusted peer


@pytest.mark.parametrize("headers", [
    {"X-Original-URL": "not a url"},
    {"X-Original-URL": "javascript:alert(1)"},
    {"X-Original-URL": "https://app.example.com:99999/"},
    {"X-Original-URL": "https://app.example.com/a\tb"},
    {"X-Original-URL": "/relative/only"},
    {"X-Forwarded-Uri": "no-leading-slash"},
    {"X-Original-URI": "/%ff%fe"},
    {"X-Original-URI": "/a%00b"},
    {"X-Forwarded-Proto": "gopher", "X-Forwarded-Uri": "/x"},
    {"X-Original-URL": "http://app.example.com:80#/admin/secret", "X-Original-URI": "/admin/secret"},
    {"X-Original-URL": "http://app.example.com:80@public.example.com/admin/secret"},
    {"X-Original-URL": "https://app.example.com/reports#top"},
    {"X-Original-URI": "/a//../admin"},
], ids=["garbage", "javascript", "bad-port", "tab", "relative", "uri-no-slash", "bad-utf8", "nul", "bad-scheme",
        "authority-with-hash", "authority-with-userinfo", "fragment", "ambiguous-dot-segment"])
async def test_malformed_original_request_is_a_deny_even_with_a_session(gw: Gateway, headers: dict[str, str]) -> None:
    token = await gw.token()
    resp = await gw.client.get("/auth/check", headers={**headers, "Cookie": f"{COOKIE}={token}"})
    assert resp.status == 401


async def test_known_token_is_served_from_cache(gw: Gateway) -> None:
    token = await gw.token()
    for _ in range(5):
        resp = await gw.client.get("/auth/check", headers={"Cookie": f"{COOKIE}={token}"})
        assert resp.status == 200
    assert gw.metric("gateway_session_cache_events_total", event="miss") == 1
    assert gw.metric("gateway_session_cache_events_total", event="hit") == 4


async def test_concurrent_misses_for_one_token_make_one_query(gw: Gateway) -> None:
    token = await gw.token()
    gw.flush_cache()
    responses = await asyncio.gather(*(gw.client.get("/auth/check", headers={"Cookie": f"{COOKIE}={token}"})
                                       for _ in range(30)))
    assert {r.status for r in responses} == {200}
    queried = gw.metric("gateway_session_cache_events_total", event="miss")
    assert queried == 1
    assert gw.metric("gateway_session_cache_events_total", event="coalesced") + gw.metric(
        "gateway_session_cache_events_total", event="hit") == 29


async def test_a_cancelled_check_leaves_the_shared_lookup_to_the_others(gw: Gateway) -> None:
    token = await gw.token()
    gw.flush_cache()
    checker = gw.app[CHECKER]
    credential = Credential(token, CredentialSource.COOKIE)
    first = asyncio.create_task(checker.decide(credential, None))
    second = asyncio.create_task(checker.decide(credential, None))
    await asyncio.sleep(0)  # both wait on one lookup
    first.cancel()
    assert (await second).outcome is Outcome.ALLOW
    with pytest.raises(asyncio.CancelledError):
        await first
    assert gw.metric("gateway_session_cache_events_total", event="miss") == 1
    assert gw.metric("gateway_session_cache_events_total", event="coalesced") == 1


async def test_checks_finished_from_one_lookup_each_get_their_own_answer(gw: Gateway) -> None:
    token = await gw.token()
    gw.flush_cache()
    checker = gw.app[CHECKER]
    credential = Credential(token, CredentialSource.COOKIE)

    def outcome(decision: Decision, asked: int) -> tuple[Outcome, int]:
        return decision.outcome, asked

    def broken(decision: Decision, asked: None) -> str:
        raise RuntimeError("a bug in one front-end")

    cancelled = checker.check(credential, None, outcome, -1)
    outcomes = [checker.check(credential, None, outcome, asked) for asked in range(3)]
    failing = checker.check(credential, None, broken, None)
    assert isinstance(cancelled, asyncio.Future) and isinstance(failing, asyncio.Future)
    cancelled.cancel()
    assert await asyncio.gather(*outcomes) == [(Outcome.ALLOW, 0), (Outcome.ALLOW, 1), (Outcome.ALLOW, 2)]
    with pytest.raises(RuntimeError, match="a bug in one front-end"):
        await failing
    assert cancelled.cancelled()
    assert gw.metric("gateway_session_cache_events_total", event="miss") == 1
    assert gw.metric("gateway_session_cache_events_total", event="coalesced") == 4
    # the cache was filled before any of them finished: the next check is answered at once
    assert checker.check(credential, None, outcome, 3) == (Outcome.ALLOW, 3)


async def test_revocation_evicts_the_cache_at_once(gw: Gateway) -> None:
    token = await gw.token()
    assert (await gw.client.get("/auth/check", headers={"Cookie": f"{COOKIE}={token}"})).status == 200
    assert await gw.app[CHECKER].revoke_token(token, actor="test", reason="logout")
    assert (await gw.client.get("/auth/check", headers={"Cookie": f"{COOKIE}={token}"})).status == 401


async def test_revocation_from_another_process_reaches_the_cache(gateway_factory: GatewayFactory) -> None:
    """A second store on the same SQLite file revokes; the serving gateway's cache follows within 1 s."""

    gw = await gateway_factory()
    token = await gw.token()
    headers = {"Cookie": f"{COOKIE}={token}"}
    assert (await gw.client.get("/auth/check", headers=headers)).status == 200
    assert await gw.revoke_elsewhere(token)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    status = 200
    while loop.time() < deadline and status == 200:
        status = (await gw.client.get("/auth/check", headers=headers)).status
        await asyncio.sleep(0.02)
    assert status == 401


async def test_cache_never_outlives_the_session(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**{"cache.ttl": "1h"})
    token = await gw.token(kind="api", lifetime=10)
    headers = {"Cookie": f"{COOKIE}={token}"}
    assert (await gw.client.get("/auth/check", headers=headers)).status == 200
    gw.clock.advance(11)
    assert (await gw.client.get("/auth/check", headers=headers)).status == 401


async def test_use_is_recorded_at_a_coarse_grain_and_moves_the_idle_deadline(gateway_factory: GatewayFactory) -> None:
    from gateway.tokens import hash_token

    gw = await gateway_factory(**{"session.idle_timeout": "10m", "session.last_seen_grain": "60s",
                                  "cache.ttl": "1h"})
    token = await gw.token()
    headers = {"Cookie": f"{COOKIE}={token}"}
    created = (await gw.store.lookup_session(hash_token(token)))
    assert created is not None
    for _ in range(9):  # 9 x 50 s = 450 s of steady use, well past the 600 s idle deadline in total
        gw.clock.advance(50)
        assert (await gw.client.get("/auth/check", headers=headers)).status == 200
    gw.clock.advance(500)
    assert (await gw.client.get("/auth/check", headers=headers)).status == 200
    await gw.app[CHECKER].drain()
    row = await gw.store.lookup_session(hash_token(token))
    assert row is not None
    assert row.session.last_seen_at > created.session.last_seen_at
    assert row.session.idle_expires_at is not None
    assert row.session.idle_expires_at >= gw.clock() + 500
    gw.clock.advance(601)
    assert (await gw.client.get("/auth/check", headers=headers)).status == 401


async def test_many_uses_are_written_back_in_statements_of_bounded_size(
        gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.app import STORE
    from gateway.tokens import hash_token

    gw = await gateway_factory(**{"session.last_seen_grain": "60s", "cache.ttl": "1h"})
    tokens = [await gw.token(f"user{i}@example.com") for i in range(1100)]
    store = gw.app[STORE]
    sizes: list[int] = []
    touch_sessions = store.touch_sessions

    async def counting(touches: dict[str, tuple[float, float]]) -> None:
        sizes.append(len(touches))
        await touch_sessions(touches)

    monkeypatch.setattr(store, "touch_sessions", counting)
    monkeypatch.setattr("gateway.lastseen.BATCH_DELAY", 3600.0)  # only drain() below writes: no timing
    gw.clock.advance(120)
    checker = gw.app[CHECKER]
    for token in tokens:
        assert (await checker.decide(Credential(token, CredentialSource.COOKIE), None)).outcome is Outcome.ALLOW
    await checker.drain()
    assert sizes == [500, 500, 100]
    for token in tokens[::100]:
        row = await gw.store.lookup_session(hash_token(token))
        assert row is not None and row.session.last_seen_at == gw.clock()


async def test_non_utf8_header_bytes_are_denied(gw: Gateway) -> None:
    host, port = gw.client.host, gw.client.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /auth/check HTTP/1.1\r\nHost: x\r\nCookie: gw_session=gwt_\xff\xfe\xfd\r\n"
                 b"Connection: close\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] in {b"400", b"401"}


async def test_health_readiness_and_metrics(gw: Gateway) -> None:
    assert (await gw.client.get("/healthz")).status == 200
    resp = await gw.client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ready"
    token = await gw.token()
    await gw.client.get("/auth/check", headers={"Cookie": f"{COOKIE}={token}"})
    await gw.client.get("/auth/check")
    text = await (await gw.client.get("/metrics")).text()
    assert 'gateway_checks_total{endpoint="check",outcome="allow"} 1.0' in text
    assert 'gateway_checks_total{endpoint="check",outcome="missing"} 1.0' in text
    assert "gateway_check_duration_seconds_bucket" in text
    assert "gateway_active_sessions 1.0" in text
    assert "gateway_revocation_feed_up 1.0" in text


async def test_unknown_route_is_a_json_404_for_api_clients(gw: Gateway) -> None:
    resp = await gw.client.get("/nope", headers={"Accept": "application/json"})
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    resp = await gw.client.get("/nope", headers={"Accept": HTML})
    assert resp.status == 404
    assert "text/html" in resp.headers["Content-Type"]
