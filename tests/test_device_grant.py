"""The device authorization grant (RFC 8628) against a real gateway on SQLite and PostgreSQL.

A CLI asks ``/auth/device/code``, its person approves at ``/device`` with a browser session (same origin,
CSRF token), the CLI polls ``/auth/device/token`` and gets an API token exactly once; time moves by the
gateway's injected clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

import pytest
import structlog.testing
from aiohttp import ClientResponse

from gateway.device import GRANT_TYPE
from gateway.settings import SettingsError
from gateway.tokens import hash_token, is_well_formed
from tests.harness import Gateway, GatewayFactory
from tests.helpers import make_settings

PUBLIC = "https://auth.example.com"
SETTINGS: dict[str, Any] = {"cookie.secure": False, "public_url": PUBLIC,
                            "login.redirect_hosts": ["app.example.com"]}
COOKIE = "gw_session"
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": PUBLIC}
USER_CODE_RE = re.compile(r"[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}")
CSRF_RE = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
async def gw(gateway_factory: GatewayFactory, database_url: str) -> Gateway:
    return await gateway_factory(database_url=database_url, **SETTINGS)


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={token}"}


async def ask(gw: Gateway, client_id: str = "deploy-cli") -> dict[str, Any]:
    resp = await gw.client.post("/auth/device/code", data={"client_id": client_id, "scope": "anything"})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await resp.json()
    return body


async def poll(gw: Gateway, device_code: str, client_id: str = "deploy-cli") -> tuple[int, dict[str, Any]]:
    resp = await gw.client.post("/auth/device/token", data={"grant_type": GRANT_TYPE, "device_code": device_code,
                                                             "client_id": client_id})
    assert resp.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await resp.json()
    return resp.status, body


async def error_of(gw: Gateway, device_code: str, client_id: str = "deploy-cli") -> str:
    status, body = await poll(gw, device_code, client_id)
    assert status == 400, body
    assert body["error_description"]
    return str(body["error"])


async def page_csrf(gw: Gateway, browser: str) -> str:
    resp = await gw.client.get("/device", headers={"Accept": "text/html", **cookie(browser)})
    assert resp.status == 200, await resp.text()
    match = CSRF_RE.search(await resp.text())
    assert match
    return match.group(1)


async def submit(gw: Gateway, browser: str, user_code: str, action: str = "look_up", *,
                 csrf_token: str | None = None, headers: dict[str, str] | None = None) -> ClientResponse:
    token = csrf_token if csrf_token is not None else await page_csrf(gw, browser)
    sent = {"Accept": "text/html", **SAME_ORIGIN, **cookie(browser), **(headers or {})}
    resp = await gw.client.post("/device", data={"csrf_token": token, "user_code": user_code, "action": action},
                                headers=sent)
    await resp.read()
    return resp


async def approve(gw: Gateway, browser: str, user_code: str, action: str = "approve") -> None:
    resp = await submit(gw, browser, user_code, action)
    assert resp.status == 200, await resp.text()


async def check(gw: Gateway, token: str) -> int:
    return (await gw.client.get("/auth/check", headers={"Authorization": f"Bearer {token}"})).status


# ---- the whole flow -------------------------------------------------------------------------------------------


async def test_a_cli_gets_a_token_once_its_person_approves_in_the_browser(gw: Gateway) -> None:
    with structlog.testing.capture_logs() as logs:
        asked = await ask(gw)
        assert set(asked) == {"device_code", "user_code", "verification_uri", "verification_uri_complete",
                              "expires_in", "interval"}
        assert USER_CODE_RE.fullmatch(asked["user_code"]) and len(asked["device_code"]) == 43
        assert asked["verification_uri"] == PUBLIC + "/device"
        assert asked["verification_uri_complete"] == f"{PUBLIC}/device?user_code={asked['user_code']}"
        assert (asked["expires_in"], asked["interval"]) == (600, 5)
        assert await error_of(gw, asked["device_code"]) == "authorization_pending"

        browser = await gw.token("ada@example.com", name="Ada")
        resp = await gw.client.get(f"/device?user_code={asked['user_code']}", headers=cookie(browser))
        text = await resp.text()
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert f'value="{asked["user_code"]}"' in text and "Ada" in text
        # typed the way people type: lower case, spaces instead of the dash
        looked = await submit(gw, browser, asked["user_code"].lower().replace("-", " "))
        shown = html.unescape(await looked.text())
        assert looked.status == 200 and "deploy-cli" in shown and "127.0.0.1" in shown
        assert asked["user_code"] in shown and 'value="approve"' in shown and 'value="deny"' in shown
        await approve(gw, browser, asked["user_code"])

        gw.clock.advance(5)
        status, body = await poll(gw, asked["device_code"])
    assert status == 200, body
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 90 * 86400
    token = body["access_token"]
    assert is_well_formed(token) and await check(gw, token) == 200
    gw.clock.advance(5)
    assert await error_of(gw, asked["device_code"]) == "invalid_grant"  # once only

    listed = await (await gw.client.get("/auth/tokens", headers=cookie(browser))).json()
    assert [(t["name"], t["id"]) for t in listed["tokens"]] == [("deploy-cli", hash_token(token)[:8])]
    audit = await gw.store.list_audit(limit=5)
    events = [(e.event, e.actor) for e in audit]
    assert ("device_approve", "user") in events and ("token_mint", "user") in events
    approved = next(e for e in audit if e.event == "device_approve")
    assert approved.detail["client_id"] == "deploy-cli" and approved.detail["client_addr"] == "127.0.0.1"
    secrets = (asked["device_code"], asked["user_code"], asked["user_code"].replace("-", ""), token,
               hash_token(token))
    assert not [s for s in secrets if s in str(logs)]
    assert {"device code issued", "device code approved", "device token issued"} <= {e["event"] for e in logs}
    for outcome, count in (("issued", 1), ("approved", 1), ("token_issued", 1), ("pending", 1),
                           ("invalid_grant", 1), ("denied", 0)):
        assert gw.metric("gateway_device_grants_total", outcome=outcome) == count, outcome


async def test_polling_too_fast_is_slow_down_and_the_interval_grows_for_good(gw: Gateway) -> None:
    asked = await ask(gw)
    code = asked["device_code"]
    assert await error_of(gw, code) == "authorization_pending"
    gw.clock.advance(1)
    assert await error_of(gw, code) == "slow_down"  # interval now 10 s
    gw.clock.advance(6)
    assert await error_of(gw, code) == "slow_down"  # 6 s < 10 s: interval now 15 s
    gw.clock.advance(14)
    assert await error_of(gw, code) == "slow_down"  # 14 s < 15 s: now 20 s
    gw.clock.advance(20)
    assert await error_of(gw, code) == "authorization_pending"
    assert gw.metric("gateway_device_grants_total", outcome="slow_down") == 3


async def test_an_expired_device_code_is_expired_token_and_can_no_longer_be_approved(gw: Gateway) -> None:
    asked = await ask(gw)
    browser = await gw.token()
    gw.clock.advance(600)
    assert await error_of(gw, asked["device_code"]) == "expired_token"
    resp = await submit(gw, browser, asked["user_code"], "approve")
    assert resp.status == 400 and "No request with this code" in await resp.text()
    assert gw.metric("gateway_device_grants_total", outcome="expired") == 1


async def test_a_denied_request_is_access_denied_and_audited(gw: Gateway) -> None:
    asked = await ask(gw)
    browser = await gw.token()
    resp = await submit(gw, browser, asked["user_code"], "deny")
    assert resp.status == 200 and "Device denied" in await resp.text()
    assert await error_of(gw, asked["device_code"]) == "access_denied"
    gw.clock.advance(5)
    assert await error_of(gw, asked["device_code"]) == "access_denied"
    assert (await gw.store.list_audit(limit=1))[0].event == "device_deny"
    assert gw.metric("gateway_device_grants_total", outcome="denied") == 1


async def test_two_concurrent_polls_get_one_token(gw: Gateway) -> None:
    asked = await ask(gw)
    await approve(gw, await gw.token(), asked["user_code"])
    results = await asyncio.gather(*(poll(gw, asked["device_code"]) for _ in range(6)))
    assert sorted(status for status, _ in results) == [200, 400, 400, 400, 400, 400]
    assert {body.get("error") for status, body in results if status == 400} == {"invalid_grant"}


@pytest.mark.postgres
async def test_two_replicas_polling_at_once_hand_out_one_token(gateway_factory: GatewayFactory,
                                                               postgres_url: str) -> None:
    one = await gateway_factory(database_url=postgres_url, **SETTINGS)
    two = await gateway_factory(database_url=postgres_url, **SETTINGS)
    asked = await ask(one)
    await approve(two, await two.token(), asked["user_code"])
    results = await asyncio.gather(*(poll(g, asked["device_code"]) for g in (one, two, one, two)))
    assert sorted(status for status, _ in results) == [200, 400, 400, 400]
    [token] = [body["access_token"] for status, body in results if status == 200]
    assert await check(one, token) == 200 and await check(two, token) == 200


async def test_a_code_polled_by_another_client_is_invalid_grant_and_stays_pending(gw: Gateway) -> None:
    asked = await ask(gw, "deploy-cli")
    assert await error_of(gw, asked["device_code"], "other-cli") == "invalid_grant"
    assert await error_of(gw, asked["device_code"], "deploy-cli") == "authorization_pending"
    await approve(gw, await gw.token(), asked["user_code"])
    gw.clock.advance(5)
    assert await error_of(gw, asked["device_code"], "other-cli") == "invalid_grant"
    assert (await poll(gw, asked["device_code"], "deploy-cli"))[0] == 200


@pytest.mark.parametrize("device_code", [
    pytest.param("A" * 43, id="unknown"),
    pytest.param("short", id="malformed"),
    pytest.param("A" * 42 + "=", id="bad-character"),
    pytest.param("é" * 43, id="non-ascii"),
])
async def test_an_unknown_device_code_is_invalid_grant(gw: Gateway, device_code: str) -> None:
    assert await error_of(gw, device_code) == "invalid_grant"


async def test_when_the_approving_session_ends_before_the_poll_no_token_is_handed_out(gw: Gateway) -> None:
    asked = await ask(gw)
    browser = await gw.token()
    await approve(gw, browser, asked["user_code"])
    assert await gw.store.revoke_session(hash_token(browser), actor="user", reason="logout")
    assert await error_of(gw, asked["device_code"]) == "access_denied"


# ---- who may approve ------------------------------------------------------------------------------------------


async def test_without_a_session_the_page_sends_the_browser_to_sign_in_and_back_to_the_code(gw: Gateway) -> None:
    resp = await gw.client.get("/device?user_code=bcdf-ghjk", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login?rd=%2Fdevice%3Fuser_code%3DBCDF-GHJK"
    resp = await gw.client.get("/device?user_code=%22%3E%3Cscript%3E", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login?rd=%2Fdevice"
    resp = await gw.client.post("/device", data={"user_code": "BCDF-GHJK", "action": "approve"},
                                headers={"Accept": "application/json", **SAME_ORIGIN})
    assert resp.status == 401


async def test_an_api_token_session_cannot_approve(gw: Gateway) -> None:
    asked = await ask(gw)
    api = await gw.token(kind="api")
    resp = await gw.client.get("/device", headers=cookie(api), allow_redirects=False)
    assert resp.status == 302  # an API token is no browser session: sign in
    browser = await gw.token()
    csrf = await page_csrf(gw, browser)
    for headers in ({"Authorization": f"Bearer {api}"}, cookie(api), {"Authorization": f"Bearer {browser}"}):
        resp = await gw.client.post("/device", data={"csrf_token": csrf, "user_code": asked["user_code"],
                                                     "action": "approve"},
                                    headers={"Accept": "application/json", **SAME_ORIGIN, **headers})
        assert resp.status == 403, headers
    assert await error_of(gw, asked["device_code"]) == "authorization_pending"
    assert gw.metric("gateway_device_grants_total", outcome="forbidden") == 3


@pytest.mark.parametrize(("headers", "csrf"), [
    pytest.param({}, "", id="no-csrf-token"),
    pytest.param({}, "0" * 64, id="wrong-csrf-token"),
    pytest.param({"Origin": "https://evil.example.net"}, None, id="cross-origin"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, None, id="cross-site-fetch"),
    pytest.param({"Origin": "https://auth.example.com.evil.net"}, None, id="lookalike-origin"),
])
async def test_a_forged_approval_is_refused_and_changes_nothing(gw: Gateway, headers: dict[str, str],
                                                                csrf: str | None) -> None:
    asked = await ask(gw)
    browser = await gw.token()
    with structlog.testing.capture_logs() as logs:
        for action in ("approve", "look_up"):
            resp = await submit(gw, browser, asked["user_code"], action, csrf_token=csrf, headers=headers)
            assert resp.status == 403
    assert [e["event"] for e in logs].count("device approval refused") == 2
    assert await error_of(gw, asked["device_code"]) == "authorization_pending"


async def test_another_browsers_csrf_token_is_refused(gw: Gateway) -> None:
    asked = await ask(gw)
    mine, theirs = await gw.token("ada@example.com"), await gw.token("eve@example.com")
    resp = await submit(gw, mine, asked["user_code"], "approve", csrf_token=await page_csrf(gw, theirs))
    assert resp.status == 403


async def test_wrong_user_codes_are_limited_per_session_and_address_and_logged(gw: Gateway) -> None:
    asked = await ask(gw)
    browser = await gw.token()
    csrf = await page_csrf(gw, browser)
    with structlog.testing.capture_logs() as logs:
        for wrong in ("BCDF-GHJK", "nonsense", "", "ZZZZ-ZZZZ", "BBBB-BBBB"):
            resp = await submit(gw, browser, wrong, csrf_token=csrf)
            assert resp.status == 400 and "No request with this code" in await resp.text()
        resp = await submit(gw, browser, asked["user_code"], "approve", csrf_token=csrf)
        assert resp.status == 429 and "Retry-After" in resp.headers  # even the right code, now
        other = await gw.token("bob@example.com")  # another session from the same address
        assert (await submit(gw, other, asked["user_code"])).status == 429
    assert [e["event"] for e in logs].count("device code not found") == 5
    assert gw.metric("gateway_device_grants_total", outcome="wrong_user_code") == 5
    assert await error_of(gw, asked["device_code"]) == "authorization_pending"
    gw.clock.advance(60)
    assert (await submit(gw, browser, asked["user_code"], "approve", csrf_token=csrf)).status == 200


async def test_a_code_is_decided_once(gw: Gateway) -> None:
    asked = await ask(gw)
    browser = await gw.token()
    await approve(gw, browser, asked["user_code"])
    assert (await submit(gw, browser, asked["user_code"], "deny")).status == 400
    gw.clock.advance(5)
    assert (await poll(gw, asked["device_code"]))[0] == 200


# ---- bad input is a 4xx, never a 500 --------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "error"), [
    pytest.param({}, "invalid_request", id="no-client-id"),
    pytest.param({"client_id": ""}, "invalid_request", id="empty-client-id"),
    pytest.param({"client_id": "x" * 65}, "invalid_client", id="long-client-id"),
    pytest.param({"client_id": "cli\r\nX-Injected: 1"}, "invalid_client", id="control-characters"),
    pytest.param({"client_id": "clé"}, "invalid_client", id="non-ascii"),
])
async def test_a_bad_client_id_is_refused(gw: Gateway, fields: dict[str, str], error: str) -> None:
    resp = await gw.client.post("/auth/device/code", data=fields, headers={"Accept": "text/html"})
    assert resp.status == 400 and resp.content_type == "application/json"  # OAuth errors are JSON, always
    assert (await resp.json())["error"] == error


@pytest.mark.parametrize(("fields", "error"), [
    pytest.param({"device_code": "A" * 43, "client_id": "c"}, "invalid_request", id="no-grant-type"),
    pytest.param({"grant_type": "authorization_code", "device_code": "A" * 43, "client_id": "c"},
                 "unsupported_grant_type", id="other-grant-type"),
    pytest.param({"grant_type": GRANT_TYPE, "client_id": "c"}, "invalid_request", id="no-device-code"),
    pytest.param({"grant_type": GRANT_TYPE, "device_code": "A" * 43}, "invalid_request", id="no-client-id"),
    pytest.param({"grant_type": GRANT_TYPE, "device_code": "A" * 43, "client_id": "\x00"}, "invalid_client",
                 id="nul-client-id"),
])
async def test_a_bad_token_request_is_the_rfcs_error(gw: Gateway, fields: dict[str, str], error: str) -> None:
    resp = await gw.client.post("/auth/device/token", data=fields)
    assert resp.status == 400 and (await resp.json())["error"] == error


@pytest.mark.parametrize("path", ["/auth/device/code", "/auth/device/token", "/device"])
@pytest.mark.parametrize(("body", "content_type", "statuses"), [
    pytest.param(b"x" * 100_000, "application/x-www-form-urlencoded", {413}, id="huge"),
    pytest.param(b'{"client_id": "cli"}', "application/json", {400, 401}, id="json"),
    pytest.param(b"client_id=\xff\xfe", "application/x-www-form-urlencoded", {400, 401}, id="not-utf8"),
    pytest.param(b"client_id=%ff%fe", "application/x-www-form-urlencoded", {400, 401}, id="encoded-not-utf8"),
    pytest.param(b"client_id=a&client_id=b", "application/x-www-form-urlencoded", {400, 401}, id="twice"),
    pytest.param(b"&".join(b"f%d=1" % i for i in range(100)), "application/x-www-form-urlencoded", {400, 401},
                 id="many-fields"),
    pytest.param(b"--x\r\nContent-Disposition: form-data; name=client_id\r\n\r\ncli\r\n--x--\r\n",
                 "multipart/form-data; boundary=x", {400, 401}, id="multipart"),
    pytest.param(b"\x00\x01\x02", "text/plain", {400, 401}, id="binary"),
])
async def test_garbage_is_refused_with_a_4xx(gw: Gateway, path: str, body: bytes, content_type: str,
                                             statuses: set[int]) -> None:
    resp = await gw.client.post(path, data=body, headers={"Content-Type": content_type,
                                                          "Accept": "application/json"})
    assert resp.status in statuses, (resp.status, await resp.text())


async def test_garbage_on_the_page_with_a_session_is_refused_not_a_500(gw: Gateway) -> None:
    browser = await gw.token()
    for data in (b"\xff\xfe", b"user_code=%ff", b"action=approve&action=deny"):
        resp = await gw.client.post("/device", data=data, headers={
            "Content-Type": "application/x-www-form-urlencoded", **SAME_ORIGIN, **cookie(browser)})
        assert resp.status == 403
    csrf = await page_csrf(gw, browser)
    for code, action in (("x" * 5000, "look_up"), ("BCDF-GHJK", "launch"), ("\x00", "approve")):
        resp = await submit(gw, browser, code, action, csrf_token=csrf)
        assert resp.status in (400, 413, 429), resp.status
    resp = await gw.client.get("/device?user_code=" + "%ff" * 100, headers=cookie(browser))
    assert resp.status == 200
    assert (await gw.client.get("/auth/device/token")).status == 405


async def test_without_self_service_there_is_no_device_grant(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**SETTINGS, **{"session.api_token_self_service": False})
    for path in ("/auth/device/code", "/auth/device/token", "/device"):
        assert (await gw.client.post(path, data={"client_id": "x"})).status == 404


async def test_the_settings_are_bounded() -> None:
    assert make_settings(**{"session.device_code_lifetime": 900, "session.device_poll_interval": 2})
    for bad in ({"session.device_code_lifetime": 30}, {"session.device_code_lifetime": 7200},
                {"session.device_poll_interval": 0}, {"session.device_poll_interval": 61},
                {"session.device_code_lifetime": 60, "session.device_poll_interval": 60}):
        with pytest.raises(SettingsError, match=r"session\.device_"):
            make_settings(**bad)


async def test_the_configured_lifetime_and_interval_are_offered(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**SETTINGS, **{"session.device_code_lifetime": 120,
                                              "session.device_poll_interval": 2})
    asked = await ask(gw)
    assert (asked["expires_in"], asked["interval"]) == (120, 2)
    await error_of(gw, asked["device_code"])
    gw.clock.advance(2)
    assert await error_of(gw, asked["device_code"]) == "authorization_pending"
    gw.clock.advance(118)
    assert await error_of(gw, asked["device_code"]) == "expired_token"
