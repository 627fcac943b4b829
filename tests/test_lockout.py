"""The sign-in lockout is no denial of service: only failures of a genuine attempt count, and a browser
that signed in before (its device cookie) is judged by its own failures, not by its address's.

Every browser here is a separate cookie jar; all of them share the test server's address (127.0.0.1), as
an office behind NAT does. Sign-ins go through the fake OpenID Connect provider (a real HTTP server).
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import structlog.testing

from gateway.login import DEVICE_LIFETIME, is_device_id, mint_device_id
from gateway.tokens import hash_token
from tests.browsers import DEVICE, PUBLIC, Browser, BrowserFactory
from tests.fakes.oidc import FakeOIDC, FakeUser, ServerFactory
from tests.harness import Gateway, GatewayFactory

ADDRESS = "127.0.0.1"
LOGINS = "gateway_logins_total"


@pytest.fixture
async def oidc(aiohttp_server: ServerFactory) -> FakeOIDC:
    users = [FakeUser(sub="user-ada", email="ada@example.com", name="Ada"),
             FakeUser(sub="user-mallory", email="mallory@example.com", name="Mallory")]
    return await FakeOIDC(users=users).start(aiohttp_server)


async def gateway(gateway_factory: GatewayFactory, oidc: FakeOIDC, **extra: Any) -> Gateway:
    return await gateway_factory(upstreams={"corp": oidc.config()}, public_url=PUBLIC,
                                 **{"cookie.secure": False, **extra})


async def assert_locked(browser: Browser) -> None:
    for path in ("/login?rd=%2F", "/callback/corp?state=x&code=y"):
        resp = await browser.get(path, headers={"Accept": "application/json"})
        assert resp.status == 429, (path, await resp.text())
        assert 0 < int(resp.headers["Retry-After"]) <= 900
        assert (await resp.json())["error"] == "too_many_requests"


async def test_bogus_callbacks_lock_nobody_out(gateway_factory: GatewayFactory, oidc: FakeOIDC,
                                               browsers: BrowserFactory) -> None:
    gw = await gateway(gateway_factory, oidc)
    attacker = browsers(gw)
    # an expired attempt and a replayed one, then every kind of callback anyone can send without one
    stale = await attacker.callback_url()
    gw.clock.advance(gw.settings.login.attempt_ttl + 1)
    used = await attacker.callback_url()
    assert (await attacker.get(used)).status == 302
    attacker.drop_session()
    forged_binding = {"Cookie": f"gw_login_{'0' * 16}={secrets.token_urlsafe(32)}"}
    bogus = [stale, used, "/callback/corp", "/callback/corp?code=x", "/callback/corp?state=forged&code=x",
             "/callback/corp?state=&code=x", "/callback/corp?error=access_denied"]
    with structlog.testing.capture_logs() as logs:
        for url in bogus * 2:
            assert (await attacker.get(url)).status == 400, url
        resp = await attacker.get("/callback/corp?state=forged&code=x", headers=forged_binding)
        assert resp.status == 400
    refused = [e for e in logs if e.get("event") == "login callback refused: no live attempt for this browser"]
    assert len(refused) == 2 * len(bogus) + 1
    assert not [e for e in logs if e.get("event") == "login callback failed"]
    assert gw.metric(LOGINS, upstream="corp", outcome="invalid_state") == 2 * len(bogus) + 1
    assert gw.metric(LOGINS, upstream="corp", outcome="failed") == 0
    assert await gw.store.locked_until(ADDRESS, now=gw.clock()) is None

    # a colleague at the same address signs in for the first time, as does the attacker's own browser
    colleague = browsers(gw)
    resp = await colleague.sign_in()
    assert resp.status == 302, await resp.text()
    assert (await colleague.get("/auth/check")).status == 200
    assert (await attacker.sign_in()).status == 302


async def test_five_genuine_failures_lock_the_address(gateway_factory: GatewayFactory, oidc: FakeOIDC,
                                                      browsers: BrowserFactory) -> None:
    gw = await gateway(gateway_factory, oidc)
    attacker = browsers(gw)
    with structlog.testing.capture_logs() as logs:
        for _ in range(4):
            assert (await attacker.fail_genuinely()).status == 400
    assert [e["locked_out"] for e in logs if e.get("event") == "login callback failed"] == [False] * 4
    assert gw.metric(LOGINS, upstream="corp", outcome="failed") == 4
    assert (await browsers(gw).get("/login?rd=%2F")).status == 302  # four are not enough
    assert (await attacker.fail_genuinely()).status == 400
    assert gw.metric(LOGINS, upstream="corp", outcome="failed") == 5

    await assert_locked(attacker)
    newcomer = browsers(gw)
    await assert_locked(newcomer)
    locked = await newcomer.get("/login?rd=%2F", headers={"Accept": "text/html"})
    assert "from your address" in await locked.text()
    gw.clock.advance(gw.settings.login.lockout_duration - 2)
    await assert_locked(newcomer)
    gw.clock.advance(3)
    assert (await newcomer.sign_in()).status == 302


async def test_a_browser_that_signed_in_before_still_signs_in_while_its_address_is_locked(
        gateway_factory: GatewayFactory, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    gw = await gateway(gateway_factory, oidc)
    ada = browsers(gw)
    first = await ada.sign_in()
    assert first.status == 302, await first.text()
    device = ada.cookie(DEVICE)
    assert device is not None and is_device_id(device)
    ada.drop_session()  # signed out later; the device cookie stays

    mallory = browsers(gw)
    for _ in range(gw.settings.login.lockout_threshold):
        assert (await mallory.fail_genuinely()).status == 400
    await assert_locked(mallory)
    await assert_locked(browsers(gw))

    again = await ada.sign_in()
    assert again.status == 302, await again.text()
    assert (await ada.get("/auth/check")).status == 200
    assert ada.cookie(DEVICE) == device  # the same device, its life extended
    # the device's success did not unlock the address for everyone else
    await assert_locked(mallory)
    assert gw.metric(LOGINS, upstream="corp", outcome="success") == 2


async def test_a_known_browser_that_fails_is_locked_on_its_own(gateway_factory: GatewayFactory, oidc: FakeOIDC,
                                                               browsers: BrowserFactory) -> None:
    gw = await gateway(gateway_factory, oidc, **{"login.lockout_threshold": 3})
    ada = browsers(gw)
    assert (await ada.sign_in()).status == 302
    ada.drop_session()
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert (await ada.fail_genuinely()).status == 400
    failures = [e for e in logs if e.get("event") == "login callback failed"]
    assert [(e["known_device"], e["locked_out"]) for e in failures] == [(True, False), (True, False), (True, True)]
    await assert_locked(ada)
    locked = await ada.get("/login?rd=%2F", headers={"Accept": "text/html"})
    assert "from this browser" in await locked.text()
    # the address itself is not locked: others there sign in as usual
    assert await gw.store.locked_until(ADDRESS, now=gw.clock()) is None
    assert (await browsers(gw).sign_in()).status == 302
    # and dropping the device cookie only makes the browser one more newcomer at the address
    gw.clock.advance(gw.settings.login.lockout_duration + 1)
    assert (await ada.sign_in()).status == 302


async def test_forged_expired_or_orphaned_device_cookies_give_no_exemption(
        gateway_factory: GatewayFactory, oidc: FakeOIDC, browsers: BrowserFactory) -> None:
    gw = await gateway(gateway_factory, oidc)
    # a device that runs out before the lock starts, and one whose user is deleted
    short_lived = mint_device_id()
    user = await gw.user("grace@example.com")
    await gw.store.remember_device(hash_token(short_lived), user_id=user.id, now=gw.clock(),
                                   expires_at=gw.clock() + 10)
    orphan = mint_device_id()
    doomed = await gw.user("doomed@example.com")
    await gw.store.remember_device(hash_token(orphan), user_id=doomed.id, now=gw.clock(),
                                   expires_at=gw.clock() + DEVICE_LIFETIME)
    assert await gw.store.delete_user(doomed.id, actor="admin")
    gw.clock.advance(11)

    mallory = browsers(gw)
    for _ in range(gw.settings.login.lockout_threshold):
        assert (await mallory.fail_genuinely()).status == 400
    for value in (mint_device_id(), short_lived, orphan, "gwd_" + "A" * 42, "not-a-device", hash_token("x")):
        pretender = browsers(gw)
        pretender.set_cookie(DEVICE, value)
        await assert_locked(pretender)


async def test_the_device_cookie_attributes(gateway_factory: GatewayFactory, oidc: FakeOIDC,
                                            browsers: BrowserFactory) -> None:
    gw = await gateway_factory(upstreams={"corp": oidc.config()}, public_url=PUBLIC,
                               **{"cookie.domain": ".gateway.test"})
    browser = browsers(gw)

    async def attempt() -> tuple[str, dict[str, str]]:
        # Secure cookies do not travel over the test's plain http by themselves: carry the binding by hand
        login = await browser.get("/login?rd=%2F")
        ((name, morsel),) = [(n, m) for n, m in login.cookies.items() if n.startswith("gw_login_")]
        back = (await browser.get(login.headers["Location"])).headers["Location"]
        return back, {"Cookie": f"{name}={morsel.value}"}

    back, binding = await attempt()
    failed = await browser.get(back.replace("code=", "code=x"), headers=binding)
    assert failed.status == 400
    assert DEVICE not in failed.cookies  # only a sign-in earns one
    back, binding = await attempt()
    resp = await browser.get(back, headers=binding)
    assert resp.status == 302, await resp.text()
    morsel = resp.cookies[DEVICE]
    assert is_device_id(morsel.value)
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
    assert morsel["domain"] == ""  # host-only, unlike the session cookie here
    assert resp.cookies["gw_session"]["domain"] == ".gateway.test"
    assert morsel["max-age"] == str(int(DEVICE_LIFETIME))
    # the database holds only its hash
    device = await gw.store.find_device(hash_token(morsel.value), now=gw.clock())
    (user,) = await gw.store.list_users()
    assert device is not None and device.user_id == user.id

    plain = await gateway(gateway_factory, oidc, database_url=gw.settings.database_url.replace(".db", "2.db"))
    resp = await browsers(plain).sign_in()
    assert resp.status == 302 and not resp.cookies[DEVICE]["secure"]  # cookie.secure = false


async def test_a_device_is_per_user(gateway_factory: GatewayFactory, oidc: FakeOIDC,
                                    browsers: BrowserFactory) -> None:
    gw = await gateway(gateway_factory, oidc)
    shared = browsers(gw)
    assert (await shared.sign_in()).status == 302
    ada_device = shared.cookie(DEVICE)
    shared.drop_session()
    oidc.login_as = "user-mallory"
    assert (await shared.sign_in()).status == 302
    mallory_device = shared.cookie(DEVICE)
    assert mallory_device is not None and mallory_device != ada_device
    ada, mallory = sorted(await gw.store.list_users(), key=lambda u: u.email)
    for value, owner in ((ada_device, ada), (mallory_device, mallory)):
        assert value is not None
        device = await gw.store.find_device(hash_token(value), now=gw.clock())
        assert device is not None and device.user_id == owner.id
