"""Self-service API tokens against a real gateway on SQLite and PostgreSQL: ``/auth/tokens`` (JSON) and ``/tokens``.

Only a browser session may mint or revoke, and only from our own origin with the session-bound CSRF token;
a minted token works on the check path at once and stops at once (everywhere within a second) when revoked.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from typing import Any

import pytest
import structlog.testing
from aiohttp import ClientResponse

from gateway.handlers.login import sign_out_token
from gateway.tokens import hash_token, is_well_formed
from tests.harness import Gateway, GatewayFactory

PUBLIC = "https://auth.example.com"
SETTINGS: dict[str, Any] = {"cookie.secure": False, "public_url": PUBLIC,
                            "login.redirect_hosts": ["app.example.com"]}
COOKIE = "gw_session"
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": PUBLIC}
DAY = 86400


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def gw(gateway_factory: GatewayFactory, database_url: str) -> Gateway:
    return await gateway_factory(database_url=database_url, **SETTINGS)


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def listing(gw: Gateway, headers: dict[str, str]) -> dict[str, Any]:
    resp = await gw.client.get("/auth/tokens", headers={"Accept": "application/json", **headers})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await resp.json()
    return body


async def csrf(gw: Gateway, browser: str) -> str:
    token: str = (await listing(gw, cookie(browser)))["csrf_token"]
    return token


async def mint(gw: Gateway, browser: str, body: Any = None, *, headers: dict[str, str] | None = None,
               csrf_token: str | None = None) -> ClientResponse:
    sent = {"X-CSRF-Token": csrf_token if csrf_token is not None else await csrf(gw, browser), **SAME_ORIGIN,
            "Accept": "application/json", **cookie(browser), **(headers or {})}
    resp = await gw.client.post("/auth/tokens", json={"name": "ci"} if body is None else body, headers=sent)
    await resp.read()
    return resp


async def revoke(gw: Gateway, browser: str, token_id: str, *, headers: dict[str, str] | None = None) -> ClientResponse:
    sent = {"X-CSRF-Token": await csrf(gw, browser), **SAME_ORIGIN, "Accept": "application/json", **cookie(browser),
            **(headers or {})}
    resp = await gw.client.delete(f"/auth/tokens/{token_id}", headers=sent)
    await resp.read()
    return resp


async def check(gw: Gateway, token: str) -> int:
    return (await gw.client.get("/auth/check", headers=bearer(token))).status


async def webhook(gw: Gateway, token: str) -> int:
    return (await gw.client.get("/auth/webhook", headers=bearer(token))).status


# ---- the JSON API ---------------------------------------------------------------------------------------------


async def test_a_browser_mints_a_named_token_that_works_at_once_and_is_listed_without_its_secret(gw: Gateway) -> None:
    browser = await gw.token("ada@example.com")
    with structlog.testing.capture_logs() as logs:
        resp = await mint(gw, browser, {"name": "deploy script", "expires_in": 30 * DAY})
    assert resp.status == 201 and resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    token = body["token"]
    assert is_well_formed(token) and body["id"] == hash_token(token)[:8] and body["name"] == "deploy script"
    assert body["expires_at"] - body["created_at"] == 30 * DAY
    assert (await check(gw, token), await webhook(gw, token)) == (200, 200)
    info = await (await gw.client.get("/auth/userinfo", headers=bearer(token))).json()
    assert info["email"] == "ada@example.com" and info["session"]["kind"] == "api"

    listed = await listing(gw, cookie(browser))
    assert [(t["id"], t["name"], t["state"], t["expires_at"]) for t in listed["tokens"]] == [
        (body["id"], "deploy script", "active", body["expires_at"])]
    assert token not in str(listed) and hash_token(token) not in str(listed)
    assert listed["limit"] == 50 and listed["max_lifetime"] == 365 * DAY
    assert token not in str(logs) and hash_token(token) not in str(logs)
    assert [e["event"] for e in logs].count("api token minted") == 1
    audit = (await gw.store.list_audit(limit=1))[0]
    assert (audit.event, audit.actor, audit.detail["name"], audit.detail["session"]) == (
        "token_mint", "user", "deploy script", body["id"])
    assert gw.metric("gateway_api_tokens_total", action="mint", outcome="ok") == 1


async def test_without_expires_in_a_token_lives_the_default_lifetime(gw: Gateway) -> None:
    browser = await gw.token()
    body = await (await mint(gw, browser, {"name": "x"})).json()
    assert body["expires_at"] - body["created_at"] == 90 * DAY


async def test_revoking_a_token_refuses_it_at_once_and_a_second_revoke_is_404(gw: Gateway) -> None:
    browser = await gw.token()
    body = await (await mint(gw, browser)).json()
    assert await check(gw, body["token"]) == 200  # now cached
    resp = await revoke(gw, browser, body["id"])
    assert resp.status == 200 and (await resp.json())["state"] == "revoked"
    assert (await check(gw, body["token"]), await webhook(gw, body["token"])) == (401, 401)
    assert (await revoke(gw, browser, body["id"])).status == 404
    assert [t["state"] for t in (await listing(gw, cookie(browser)))["tokens"]] == ["revoked"]
    assert gw.metric("gateway_api_tokens_total", action="revoke", outcome="ok") == 1


async def test_another_users_token_id_is_404_and_their_token_lives_on(gw: Gateway) -> None:
    ada, bob = await gw.token("ada@example.com"), await gw.token("bob@example.com")
    bobs = await (await mint(gw, bob)).json()
    for token_id in (bobs["id"], hash_token(bobs["token"])):
        resp = await revoke(gw, ada, token_id)
        assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    browser_session = hash_token(ada)[:8]  # ids name API tokens only, never a browser session
    assert (await revoke(gw, ada, browser_session)).status == 404
    assert await check(gw, bobs["token"]) == 200 and await check(gw, ada) == 200
    assert (await listing(gw, cookie(ada)))["tokens"] == []


@pytest.mark.parametrize("token_id", ["abc", "not-hex!", "%25" * 8, "A" * 8, "0" * 65],
                         ids=["short", "not-hex", "wildcards", "upper", "too-long"])
async def test_a_malformed_id_is_404(gw: Gateway, token_id: str) -> None:
    browser = await gw.token()
    await mint(gw, browser)
    assert (await revoke(gw, browser, token_id)).status == 404


async def test_an_api_token_cannot_mint_or_revoke_tokens_but_may_list_them(gw: Gateway) -> None:
    browser = await gw.token()
    first = await (await mint(gw, browser)).json()
    api = first["token"]
    # a leaked token must not multiply: refused even with a valid CSRF token and same-origin headers
    resp = await mint(gw, browser, headers=bearer(api))
    assert resp.status == 403 and (await resp.json())["error"] == "forbidden"
    assert (await revoke(gw, browser, first["id"], headers=bearer(api))).status == 403
    admin_minted = await gw.token(kind="api")  # `gateway tokens mint`'s kind of token, held in a cookie
    assert (await mint(gw, admin_minted, csrf_token=sign_out_token(admin_minted))).status == 403
    listed = await listing(gw, bearer(api))
    # tokens minted by an admin (`gateway tokens mint`) are the user's too, listed unnamed
    assert {(t["id"], t["name"]) for t in listed["tokens"]} == {(hash_token(admin_minted)[:8], ""),
                                                                (first["id"], "ci")}
    assert "csrf_token" not in listed
    assert gw.metric("gateway_api_tokens_total", action="mint", outcome="forbidden") == 2


@pytest.mark.parametrize("csrf_token", [
    pytest.param("", id="missing"),
    pytest.param("0" * 64, id="forged"),
    pytest.param("{sign_out}", id="the-sign-out-token"),
    pytest.param("{other_session}", id="another-sessions-token"),
])
async def test_a_missing_or_wrong_csrf_token_is_refused(gw: Gateway, csrf_token: str) -> None:
    browser, other = await gw.token("ada@example.com"), await gw.token("ada@example.com")
    sent = csrf_token.format(sign_out=sign_out_token(browser), other_session=await csrf(gw, other))
    with structlog.testing.capture_logs() as logs:
        resp = await mint(gw, browser, csrf_token=sent)
    assert resp.status == 403
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["api token request refused"]
    assert (await listing(gw, cookie(browser)))["tokens"] == []


@pytest.mark.parametrize("headers", [
    pytest.param({"Sec-Fetch-Site": "cross-site"}, id="cross-site"),
    pytest.param({"Sec-Fetch-Site": "same-site"}, id="same-site"),
    pytest.param({"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example.net"}, id="foreign-origin"),
    pytest.param({"Sec-Fetch-Site": "same-origin", "Origin": "https://auth.example.com.evil.net"}, id="lookalike"),
])
async def test_a_request_from_another_site_is_refused_even_with_the_token(gw: Gateway,
                                                                           headers: dict[str, str]) -> None:
    browser = await gw.token()
    assert (await mint(gw, browser, headers=headers)).status == 403
    good = await (await mint(gw, browser)).json()
    assert (await revoke(gw, browser, good["id"], headers=headers)).status == 403
    assert await check(gw, good["token"]) == 200


async def test_a_json_client_without_fetch_metadata_passes_with_the_token(gw: Gateway) -> None:
    """curl or a script holding the browser's cookie sends no Sec-Fetch-Site and no Origin."""
    browser = await gw.token()
    token = await csrf(gw, browser)
    resp = await gw.client.post("/auth/tokens", json={"name": "cli"},
                                headers={**cookie(browser), "X-CSRF-Token": token})
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("body", [
    pytest.param({"name": "x", "expires_in": 365 * DAY + 1}, id="over-max"),
    pytest.param({"name": "x", "expires_in": 60}, id="under-an-hour"),
    pytest.param({"name": "x", "expires_in": -1}, id="negative"),
    pytest.param({"name": "x", "expires_in": 1.5 * DAY + 0.5}, id="fraction"),
    pytest.param({"name": "x", "expires_in": True}, id="bool"),
    pytest.param({"name": "x", "expires_in": "soon"}, id="text"),
    pytest.param({"name": "x", "expires_in": 10**400}, id="huge"),
    pytest.param({"name": ""}, id="empty-name"),
    pytest.param({"name": "   "}, id="blank-name"),
    pytest.param({"name": "x" * 101}, id="long-name"),
    pytest.param({"name": "a\nb"}, id="newline"),
    pytest.param({"name": 7}, id="number-name"),
    pytest.param({}, id="no-name"),
    pytest.param([], id="array"),
    pytest.param("name", id="string"),
    pytest.param(None, id="null"),
])
async def test_bad_input_is_a_clear_400(gw: Gateway, body: Any) -> None:
    browser = await gw.token()
    sent = {"X-CSRF-Token": await csrf(gw, browser), **SAME_ORIGIN, **cookie(browser), "Accept": "application/json"}
    raw = json.dumps(body) if not (isinstance(body, dict) and body.get("expires_in") == 10**400) else \
        '{"name": "x", "expires_in": 1' + "0" * 400 + "}"
    resp = await gw.client.post("/auth/tokens", data=raw, headers={**sent, "Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"] == "invalid_request"
    assert (await listing(gw, cookie(browser)))["tokens"] == []


@pytest.mark.parametrize(("data", "content_type", "status"), [
    pytest.param(b"{not json", "application/json", 400, id="not-json"),
    pytest.param(b"[" * 5000, "application/json", 413, id="deep"),
    pytest.param(b'{"name": "' + b"x" * 5000 + b'"}', "application/json", 413, id="large"),
    pytest.param(b"name=x", "application/x-www-form-urlencoded", 400, id="form"),
])
async def test_bad_bodies_are_4xx_never_500(gw: Gateway, data: bytes, content_type: str, status: int) -> None:
    browser = await gw.token()
    sent = {"X-CSRF-Token": await csrf(gw, browser), **SAME_ORIGIN, **cookie(browser), "Content-Type": content_type}
    assert (await gw.client.post("/auth/tokens", data=data, headers=sent)).status == status


async def test_the_limit_is_a_409_until_a_token_is_revoked(gateway_factory: GatewayFactory, database_url: str) -> None:
    gw = await gateway_factory(database_url=database_url, **SETTINGS, **{"session.api_tokens_per_user": 2})
    browser = await gw.token()
    ids = [(await (await mint(gw, browser, {"name": f"t{i}"})).json())["id"] for i in range(2)]
    resp = await mint(gw, browser, {"name": "one too many"})
    assert resp.status == 409 and (await resp.json())["error"] == "too_many_tokens"
    assert (await revoke(gw, browser, ids[0])).status == 200
    assert (await mint(gw, browser, {"name": "room again"})).status == 201
    assert gw.metric("gateway_api_tokens_total", action="mint", outcome="limit") == 1


async def test_an_expired_token_is_listed_as_expired_and_refused(gw: Gateway) -> None:
    browser = await gw.token()
    body = await (await mint(gw, browser, {"name": "short", "expires_in": 3600})).json()
    gw.clock.advance(3601)
    assert await check(gw, body["token"]) == 401
    assert [(t["id"], t["state"]) for t in (await listing(gw, cookie(browser)))["tokens"]] == [(body["id"], "expired")]
    assert (await revoke(gw, browser, body["id"])).status == 200  # revoking an expired one is harmless
    gw.clock.advance(31 * DAY)
    assert (await listing(gw, cookie(await gw.token())))["tokens"] == []  # ended tokens drop off after 30 days


async def test_without_a_session_the_api_is_401(gw: Gateway) -> None:
    for method, path in [("GET", "/auth/tokens"), ("POST", "/auth/tokens"), ("DELETE", "/auth/tokens/abcdef01")]:
        resp = await gw.client.request(method, path, headers={"Accept": "application/json", **SAME_ORIGIN})
        assert resp.status == 401, (method, path)
    revoked = await gw.token()
    await gw.store.revoke_session(hash_token(revoked), actor="admin", reason="test")
    assert (await gw.client.get("/auth/tokens", headers=cookie(revoked))).status == 401


async def test_self_service_can_be_turned_off(gateway_factory: GatewayFactory, database_url: str) -> None:
    gw = await gateway_factory(database_url=database_url, **SETTINGS, **{"session.api_token_self_service": False})
    browser = await gw.token()
    for method, path in [("GET", "/tokens"), ("GET", "/auth/tokens"), ("POST", "/auth/tokens")]:
        assert (await gw.client.request(method, path, headers=cookie(browser))).status == 404


# ---- the page -------------------------------------------------------------------------------------------------

FROM_OUR_PAGE = {"Sec-Fetch-Site": "same-origin", "Origin": "null", "Accept": "text/html"}
"""What Chromium sends for our own forms (``Origin: null``: our pages say no-referrer)."""


def form_token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]*)"', page)
    assert match is not None
    return html.unescape(match.group(1))


async def test_the_page_mints_shows_the_token_once_and_revokes(gw: Gateway) -> None:
    browser = await gw.token("ada@example.com", name="Ada")
    resp = await gw.client.get("/tokens", headers={**cookie(browser), "Accept": "text/html"})
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["X-Frame-Options"] == "DENY"
    page = await resp.text()
    assert "You have no API tokens yet" in page and 'value="7776000" selected' in page
    assert form_token(page) == await csrf(gw, browser)

    resp = await gw.client.post("/tokens", data={"name": "<script>x</script>", "expires_in": str(7 * DAY),
                                                 "csrf_token": form_token(page)},
                                headers={**cookie(browser), **FROM_OUR_PAGE})
    assert resp.status == 200, await resp.text()
    shown = await resp.text()
    token = re.search(r'<code class="secret" id="new-token">([^<]+)</code>', shown)
    assert token is not None and is_well_formed(token.group(1))
    assert "<script>x" not in shown and "&lt;script&gt;x&lt;/script&gt;" in shown
    assert await check(gw, token.group(1)) == 200

    again = await (await gw.client.get("/tokens", headers=cookie(browser))).text()
    assert token.group(1) not in again and hash_token(token.group(1))[:8] in again  # shown once only
    token_id = hash_token(token.group(1))[:8]
    resp = await gw.client.post(f"/tokens/{token_id}/revoke", data={"csrf_token": form_token(again)},
                                headers={**cookie(browser), **FROM_OUR_PAGE}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/tokens"
    assert await check(gw, token.group(1)) == 401
    assert f'id="revoke-{token_id}"' not in await (await gw.client.get("/tokens", headers=cookie(browser))).text()


async def test_the_page_sends_a_browser_without_a_session_to_sign_in(gw: Gateway) -> None:
    resp = await gw.client.get("/tokens", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login?rd=%2Ftokens"
    api = await gw.token(kind="api")
    resp = await gw.client.get("/tokens", headers=cookie(api), allow_redirects=False)
    assert resp.status == 302


async def test_a_forged_page_form_is_refused_with_a_page(gw: Gateway) -> None:
    browser = await gw.token()
    resp = await gw.client.post("/tokens", data={"name": "x", "csrf_token": "0" * 64},
                                headers={**cookie(browser), **FROM_OUR_PAGE})
    assert resp.status == 403 and "API tokens page" in await resp.text()
    resp = await gw.client.post("/tokens", data={"name": "x", "csrf_token": await csrf(gw, browser)},
                                headers={**cookie(browser), "Sec-Fetch-Site": "cross-site", "Accept": "text/html"})
    assert resp.status == 403
    assert (await listing(gw, cookie(browser)))["tokens"] == []


@pytest.mark.parametrize(("path", "data", "content_type"), [
    pytest.param("/tokens", b"name=\xff\xfe&csrf_token=x", "application/x-www-form-urlencoded", id="tokens-not-utf8"),
    pytest.param("/tokens", b"name=x", "application/x-www-form-urlencoded; charset=no-such-charset",
                 id="tokens-charset"),
    pytest.param("/tokens", b"--b\r\nnot a part", "multipart/form-data; boundary=b", id="tokens-broken-multipart"),
    pytest.param("/tokens", b"x", "multipart/form-data", id="tokens-multipart-no-boundary"),
    pytest.param("/logout", b"rd=\xff\xfe", "application/x-www-form-urlencoded", id="logout-not-utf8"),
    pytest.param("/logout", b"--b\r\nnot a part", "multipart/form-data; boundary=b", id="logout-broken-multipart"),
])
async def test_a_form_that_cannot_be_read_is_a_400_never_a_500(gw: Gateway, path: str, data: bytes,
                                                              content_type: str) -> None:
    browser = await gw.token()
    resp = await gw.client.post(path, data=data, headers={**cookie(browser), **FROM_OUR_PAGE,
                                                          "Content-Type": content_type}, allow_redirects=False)
    assert resp.status == 400, (resp.status, await resp.text())
    assert await check(gw, browser) == 200  # and nothing happened to the session


# ---- replicas ---------------------------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_token_revoked_on_one_replica_is_refused_by_another_within_a_second(
        gateway_factory: GatewayFactory, postgres_url: str) -> None:
    a, b = [await gateway_factory(database_url=postgres_url, **SETTINGS) for _ in range(2)]
    for replica in (a, b):
        while replica.metric("gateway_revocation_feed_up") != 1:
            await asyncio.sleep(0.02)
    browser = await a.token()
    body = await (await mint(a, browser)).json()
    assert await check(b, body["token"]) == 200  # cached by b
    assert (await revoke(a, browser, body["id"])).status == 200
    deadline = time.monotonic() + 1.0
    while await check(b, body["token"]) != 401:
        assert time.monotonic() < deadline, "replica b still admits the token a second after it was revoked"
        await asyncio.sleep(0.02)
