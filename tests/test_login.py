"""The login dance through the built-in dev upstream: attempts, state checks, mix-up, cookies, enrolment,
access rules, lockout and rate limits. Provider-specific flows live in test_login_providers.py, signing out
in test_logout.py."""

from __future__ import annotations

import asyncio
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import ClientResponse

from tests.harness import Gateway, GatewayFactory

DEV = {"upstreams": {"dev": {"type": "dev"}}, "cookie.secure": False}
JSON = {"Accept": "application/json"}


def location(resp: ClientResponse) -> str:
    return resp.headers["Location"]


def set_cookies(resp: ClientResponse) -> dict[str, Any]:
    jar: SimpleCookie = SimpleCookie()
    for header in resp.headers.getall("Set-Cookie", []):
        jar.load(header)
    return {name: morsel for name, morsel in jar.items()}


async def start(gw: Gateway, rd: str = "/", upstream: str | None = None) -> str:
    """GET /login and return the state the gateway put in the form URL."""
    params = {"rd": rd} | ({"upstream": upstream} if upstream else {})
    resp = await gw.client.get("/login", params=params, allow_redirects=False)
    assert resp.status == 302, await resp.text()
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    return parse_qs(urlsplit(location(resp)).query)["state"][0]


async def sign_in(gw: Gateway, email: str = "ada@example.com", rd: str = "/", upstream: str = "dev",
                  groups: str = "") -> ClientResponse:
    state = await start(gw, rd, upstream)
    return await gw.client.get(f"/callback/{upstream}", params={"state": state, "email": email, "groups": groups},
                               allow_redirects=False)


async def finish(gw: Gateway, state: str, email: str = "ada@example.com", groups: str = "") -> ClientResponse:
    resp = await gw.client.get("/callback/dev", params={"state": state, "email": email, "groups": groups},
                               allow_redirects=False)
    assert resp.status == 302, await resp.text()
    return resp


async def webhook_status(gw: Gateway) -> int:
    return (await gw.client.get("/auth/webhook")).status


async def test_dev_sign_in_end_to_end(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV)
    assert await webhook_status(gw) == 401
    resp = await gw.client.get("/login", params={"rd": "/"}, allow_redirects=False)
    form_url = urlsplit(location(resp))
    assert form_url.path == "/login/dev/dev"
    form = await gw.client.get(f"{form_url.path}?{form_url.query}")
    assert form.status == 200
    assert form.headers["Referrer-Policy"] == "no-referrer"
    assert "Development only" in await form.text()
    state = parse_qs(form_url.query)["state"][0]
    resp = await gw.client.get("/callback/dev", params={"state": state, "email": "Ada@Example.com"},
                               allow_redirects=False)
    assert resp.status == 302
    assert location(resp) == "/"
    assert await webhook_status(gw) == 200
    info = await (await gw.client.get("/auth/userinfo")).json()
    assert info["email"] == "Ada@Example.com" and info["upstream"] == "dev"
    home = await gw.client.get("/")
    assert "Signed in" in await home.text()
    users = await gw.store.list_users()
    assert [(u.upstream, u.subject) for u in users] == [("dev", "ada@example.com")]
    audit = await gw.store.list_audit(user_id=users[0].id)
    assert "login" in [a.event for a in audit]


async def test_session_cookie_attributes(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(upstreams=DEV["upstreams"],
                               **{"cookie.domain": ".example.test", "session.lifetime": "8h"})
    login = await gw.client.get("/login", allow_redirects=False)
    binding = set_cookies(login)
    (name, morsel), = binding.items()
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Lax" and morsel["path"] == "/"
    state = parse_qs(urlsplit(location(login)).query)["state"][0]
    resp = await gw.client.get("/callback/dev", params={"state": state, "email": "a@example.com"},
                               headers={"Cookie": f"{name}={morsel.value}"}, allow_redirects=False)
    assert resp.status == 302
    session = set_cookies(resp)["gw_session"]
    assert session["httponly"] and session["secure"]
    assert session["samesite"] == "Lax" and session["path"] == "/"
    assert session["domain"] == ".example.test"
    assert session["max-age"] == str(8 * 3600)
    assert set_cookies(resp)[name]["max-age"] == "0"


async def test_replayed_state_is_refused(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV)
    state = await start(gw)
    first = await gw.client.get("/callback/dev", params={"state": state, "email": "a@example.com"},
                                allow_redirects=False)
    assert first.status == 302
    replay = await gw.client.get("/callback/dev", params={"state": state, "email": "a@example.com"},
                                 allow_redirects=False)
    assert replay.status == 400
    assert "expired or was already used" in await replay.text()


async def test_swapped_and_missing_state_are_refused(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV)
    state_a = await start(gw)
    await start(gw)
    forged = "x" * 43
    for params in ({"state": forged, "email": "a@example.com"}, {"email": "a@example.com"},
                   {"state": state_a[:-1] + ("A" if state_a[-1] != "A" else "B"), "email": "a@example.com"}):
        resp = await gw.client.get("/callback/dev", params=params, headers=JSON, allow_redirects=False)
        assert resp.status == 400
        assert (await resp.json())["error"] == "login_expired"
    # the untouched attempt still works
    ok = await gw.client.get("/callback/dev", params={"state": state_a, "email": "a@example.com"},
                             allow_redirects=False)
    assert ok.status == 302


async def test_expired_attempt_is_refused(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV, **{"login.attempt_ttl": "2m"})
    state = await start(gw)
    gw.clock.advance(121)
    resp = await gw.client.get("/callback/dev", params={"state": state, "email": "a@example.com"},
                               allow_redirects=False)
    assert resp.status == 400


async def test_mix_up_attempt_for_a_comes_back_to_b(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(upstreams={"dev-a": {"type": "dev"}, "dev-b": {"type": "dev"}},
                               **{"cookie.secure": False})
    page = await gw.client.get("/login", params={"rd": "/"})
    text = await page.text()
    assert "dev-a" in text and "dev-b" in text  # several upstreams, none chosen: a sign-in page
    state = await start(gw, upstream="dev-a")
    resp = await gw.client.get("/callback/dev-b", params={"state": state, "email": "a@example.com"},
                               allow_redirects=False)
    assert resp.status == 400
    assert await gw.store.list_users() == []
    # plain /callback only works with exactly one upstream
    assert (await gw.client.get("/callback", params={"state": state})).status == 404


async def test_fresh_token_at_every_login_and_the_old_one_is_revoked(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV)
    # two attempts started while signed out (two tabs); the second completes while the first's session exists
    states = [await start(gw), await start(gw)]
    await finish(gw, states[0])
    first = gw.client.session.cookie_jar.filter_cookies(gw.client.make_url("/"))["gw_session"].value
    assert (await gw.client.get("/login", allow_redirects=False)).headers["Location"] == "/"
    await finish(gw, states[1])
    second = gw.client.session.cookie_jar.filter_cookies(gw.client.make_url("/"))["gw_session"].value
    assert first != second
    old = await gw.client.get("/auth/check", headers={"Authorization": f"Bearer {first}"})
    assert old.status == 401
    new = await gw.client.get("/auth/check", headers={"Authorization": f"Bearer {second}"})
    assert new.status == 200
    assert len(await gw.store.list_users()) == 1


async def test_login_with_a_session_goes_straight_to_the_target(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV, **{"login.redirect_hosts": ["app.example.com"]})
    await sign_in(gw)
    resp = await gw.client.get("/login", params={"rd": "https://app.example.com/x"}, allow_redirects=False)
    assert location(resp) == "https://app.example.com/x"


@pytest.mark.parametrize("rd", ["//evil.com", "/\\evil.com", "https://evil.com/", "javascript:alert(1)",
                                "https://app.example.com.evil.com/", "https://app.example.com@evil.com/"])
async def test_redirect_tricks_fall_back_to_the_default(gateway_factory: GatewayFactory, rd: str) -> None:
    gw = await gateway_factory(**DEV, **{"login.redirect_hosts": ["app.example.com"],
                                         "login.default_redirect": "/welcome"})
    resp = await sign_in(gw, rd=rd)
    assert location(resp) == "/welcome"


async def test_userinfo_requires_a_session(gw: Gateway) -> None:
    resp = await gw.client.get("/auth/userinfo", headers=JSON)
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthenticated"
    token = await gw.token("bob@example.com", roles=("user", "ops"))
    info = await (await gw.client.get("/auth/userinfo", headers={"Authorization": f"Bearer {token}"})).json()
    assert info["roles"] == ["user", "ops"] and info["session"]["kind"] == "browser"


@pytest.mark.parametrize(("email", "allowed"), [
    ("ada@corp.com", True), ("ADA@Corp.COM", True), (" ada@corp.com ", True), ("boss@partner.org", True),
    ("ada@evil.com", False), ("ada@corp.com.evil.com", False), ("ada@notcorp.com", False),
    ("ada@sub.corp.com", False),
], ids=["domain", "case", "trimmed", "listed-email", "other-domain", "suffix-trick", "lookalike", "subdomain"])
async def test_enrolment_by_email_and_domain(gateway_factory: GatewayFactory, email: str, allowed: bool) -> None:
    gw = await gateway_factory(**DEV, **{"enrolment.domains": ["corp.com"], "enrolment.emails": ["Boss@Partner.org"]})
    resp = await sign_in(gw, email=email)
    if allowed:
        assert resp.status == 302
        assert len(await gw.store.list_users()) == 1
    else:
        assert resp.status == 403
        assert "not on this site" in await resp.text()
        assert await gw.store.list_users() == []
        assert "gw_session" not in set_cookies(resp)


async def test_enrolment_by_group(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV, **{"enrolment.groups": ["staff"]})
    assert (await sign_in(gw, email="a@x.com", groups="guests")).status == 403
    assert (await sign_in(gw, email="b@x.com", groups="guests,staff")).status == 302


async def test_roles_are_mapped_from_groups_and_refreshed_at_every_login(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV, **{"roles.map": {"eng": ["editor"], "ops": ["admin", "editor"]},
                                         "roles.passthrough_groups": False})
    states = [await start(gw), await start(gw)]
    await finish(gw, states[0], groups="eng,OPS,other")
    user, = await gw.store.list_users()
    assert user.roles == ("editor", "admin") and user.groups == ("eng", "OPS", "other")
    await finish(gw, states[1], groups="eng")
    user, = await gw.store.list_users()
    assert user.roles == ("editor",)
    body = await (await gw.client.get("/auth/webhook", headers={"X-Hasura-Role": "admin"})).json()
    assert body == {"error": "unauthenticated"}  # lost the role at the last login


RULES = [
    {"action": "deny", "paths": ["/admin/**"], "groups": ["guests"]},
    {"action": "allow", "paths": ["/admin/**"], "groups": ["admin"], "mfa": False},
    {"action": "deny", "paths": ["/admin", "/admin/**"]},
    {"action": "allow", "hosts": [".example.com"], "methods": ["GET", "HEAD"]},
    {"action": "allow", "hosts": ["api.example.com"], "networks": ["127.0.0.0/8"]},
]


@pytest.mark.parametrize(("url", "method", "groups", "expected"), [
    ("https://app.example.com/", "GET", "", 200),
    ("https://app.example.com/", "POST", "", 403),
    ("https://api.example.com/v1", "POST", "", 200),
    ("https://app.example.com/admin/users", "GET", "admin", 200),
    ("https://app.example.com/admin/users", "GET", "admin,guests", 403),
    ("https://app.example.com/admin/users", "GET", "", 403),
    ("https://app.example.com/public/../admin/x", "GET", "", 403),
    ("https://app.example.com/%2e%2e/admin/x", "GET", "", 403),
    ("https://app.example.com/api/private?x=/admin/ok", "POST", "", 403),
    ("https://other.org/", "GET", "", 403),
    ("https://APP.EXAMPLE.COM/", "GET", "", 200),
    ("https://evilexample.com/", "GET", "", 403),
], ids=["get-allowed", "post-default-deny", "api-from-loopback", "admin", "deny-first-wins", "admin-no-group",
        "dot-segments", "encoded-dots", "query-ignored", "other-host", "host-case", "lookalike-host"])
async def test_access_rules_first_match_wins(gateway_factory: GatewayFactory, url: str, method: str, groups: str,
                                             expected: int) -> None:
    gw = await gateway_factory(**DEV, **{"access.rules": RULES, "access.default": "deny"})
    await sign_in(gw, groups=groups)
    resp = await gw.client.get("/auth/check", headers={"X-Original-URL": url, "X-Original-Method": method})
    assert resp.status == expected
    webhook = await gw.client.get("/auth/webhook")
    assert webhook.status in {200, 401}  # webhook never answers 403


async def test_policy_deny_on_webhook_is_401(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV, **{"access.rules": [{"action": "deny", "emails": ["ada@example.com"]}]})
    await sign_in(gw)
    assert (await gw.client.get("/auth/webhook")).status == 401
    assert (await gw.client.get("/auth/check")).status == 403


async def test_repeated_failed_sign_ins_lock_the_client_out(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV, **{"login.lockout_threshold": 3, "login.lockout_duration": "15m"})
    for _ in range(5):  # callbacks without a live attempt of this browser do not count (anyone can send them)
        resp = await gw.client.get("/callback/dev", params={"state": "forged"}, allow_redirects=False)
        assert resp.status == 400
    for _ in range(3):  # genuine attempts the upstream refuses do
        resp = await gw.client.get("/callback/dev", params={"state": await start(gw), "email": "not-an-email"},
                                   allow_redirects=False)
        assert resp.status == 400
    locked = await gw.client.get("/login", allow_redirects=False)
    assert locked.status == 429
    assert 0 < int(locked.headers["Retry-After"]) <= 900
    assert (await gw.client.get("/callback/dev", params={"state": "x"})).status == 429
    gw.clock.advance(901)
    assert (await gw.client.get("/login", allow_redirects=False)).status == 302


async def test_login_rate_limit(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV, **{"login.rate_limit": 3})
    statuses = [(await gw.client.get("/login", allow_redirects=False)).status for _ in range(4)]
    assert statuses == [302, 302, 302, 429]
    resp = await gw.client.get("/login", headers=JSON, allow_redirects=False)
    assert resp.status == 429 and "Retry-After" in resp.headers
    assert (await resp.json())["error"] == "too_many_requests"


async def test_two_concurrent_first_logins_make_one_user(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**DEV)
    results = await asyncio.gather(*(sign_in(gw, email="twin@example.com") for _ in range(2)))
    assert [r.status for r in results] == [302, 302]
    assert len(await gw.store.list_users()) == 1


async def test_no_upstreams_configured(gw: Gateway) -> None:
    assert (await gw.client.get("/login", headers=JSON)).status == 404
