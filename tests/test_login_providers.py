"""Whole sign-ins through real fake providers: a browser (the test client and its cookie jar) walks from
``/login`` through the provider and back to ``/callback/<name>``, then uses its session on
``/auth/webhook`` and ``/auth/check``. OIDC (and every way an ID token or callback can be wrong), mix-up
between two providers, GitHub (and GitHub Enterprise), vouch-proxy, logout, bearer JWTs, concurrency.

The gateway's ``public_url`` is :data:`PUBLIC`, a name nothing listens on: the URLs the gateway builds for
itself (the ``redirect_uri`` the provider sends the browser back to) are translated onto the test server
by :class:`Browser`, which is what a browser reaching the gateway under that name would do.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import structlog.testing
from aiohttp import ClientResponse
from yarl import URL

from tests.fakes.github import FakeEmail, FakeGitHub
from tests.fakes.github import FakeUser as GitHubUser
from tests.fakes.oidc import CLIENT_ID, FakeOIDC, FakeUser, ServerFactory
from tests.fakes.vouch import FakeVouch, FakeVouchUser
from tests.harness import Gateway, GatewayFactory

PUBLIC = "http://gateway.test"
"""The gateway's ``public_url``; requests to it go to the test server."""
APP = "https://app.example.com"
JSON = {"Accept": "application/json"}
HTML = {"Accept": "text/html,application/xhtml+xml"}
ATTEMPT_COOKIE = re.compile(r"^gw_login_[0-9a-f]{16}$")
HITS = "gateway_session_cache_events_total"


# ---- the browser ----------------------------------------------------------------------------------------

class Browser:
    """One browser: the test client's cookie jar, shared between the gateway and the fakes.

    Redirects are never followed automatically, so every hop can be inspected. Gateway URLs (local paths
    or under :data:`PUBLIC`) go to the gateway's test server; any other absolute URL goes to that server
    (a fake provider) through the same session and jar.
    """

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    @staticmethod
    def gateway_path(url: str) -> str | None:
        """The path and query of a URL on the gateway, or None when ``url`` is elsewhere."""
        if url.startswith("/") and not url.startswith("//"):
            return url
        if url == PUBLIC or url.startswith(PUBLIC + "/") or url.startswith(PUBLIC + "?"):
            return url[len(PUBLIC):] or "/"
        return None

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> ClientResponse:
        path = self.gateway_path(url)
        if path is not None:
            resp = await self.gw.client.get(URL(path, encoded=True), headers=headers, allow_redirects=False)
        else:
            resp = await self.gw.client.session.get(URL(url, encoded=True), headers=headers, allow_redirects=False)
        await resp.read()
        return resp

    def cookie(self, name: str, path: str = "/") -> str | None:
        """The value the jar would send to the gateway for ``name`` (None when it would send none)."""
        morsel = self.gw.client.session.cookie_jar.filter_cookies(self.gw.client.make_url(path)).get(name)
        return morsel.value if morsel is not None else None

    def forget_session(self) -> None:
        """Drop every cookie (a new private window), so the next /login starts a new sign-in."""
        self.gw.client.session.cookie_jar.clear()

    async def start(self, rd: str = "/", upstream: str | None = None) -> ClientResponse:
        """``GET /login`` and check the redirect to the provider and its binding cookie."""
        params = {"rd": rd} | ({"upstream": upstream} if upstream else {})
        resp = await self.get(f"/login?{urlencode(params)}")
        assert resp.status == 302, await resp.text()
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        bindings = [name for name in resp.cookies if ATTEMPT_COOKIE.match(name)]
        assert len(bindings) == 1, resp.headers.getall("Set-Cookie", [])
        return resp

    async def at_provider(self, url: str) -> str:
        """Open the provider's page (it approves at once) and return where it sends the browser back."""
        resp = await self.get(url)
        assert resp.status == 302, f"provider answered {resp.status}: {await resp.text()}"
        return resp.headers["Location"]

    async def sign_in(self, rd: str = "/", upstream: str | None = None,
                      headers: Mapping[str, str] | None = None) -> ClientResponse:
        """The whole dance; returns the gateway's answer to the callback."""
        login = await self.start(rd, upstream)
        back = await self.at_provider(login.headers["Location"])
        return await self.get(back, headers=headers)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def settings(upstreams: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Gateway settings for these upstreams: plain-http cookies, app.example.com as a return host."""
    return {"upstreams": upstreams, "public_url": PUBLIC, "cookie.secure": False,
            "login.redirect_hosts": ["app.example.com"], **extra}


async def assert_signed_out(browser: Browser) -> None:
    """No session cookie in the jar, and the gateway sees no session."""
    assert browser.cookie("gw_session") is None
    assert (await browser.get("/auth/webhook")).status == 401
    assert (await browser.get("/auth/check")).status == 401


async def feed_live(gw: Gateway) -> None:
    """Wait (bounded) until the revocation feed is up: its first notice marks every cached entry stale, which
    would turn an expected cache hit into a miss."""
    for _ in range(200):
        if gw.metric("gateway_revocation_feed_up") == 1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the revocation feed did not come up within 2 s")


async def assert_locked_out(browser: Browser) -> None:
    locked = await browser.get("/login?rd=%2F")
    assert locked.status == 429, await locked.text()
    assert 0 < int(locked.headers["Retry-After"]) <= 900


# ---- fakes ----------------------------------------------------------------------------------------------

ALICE = FakeUser(sub="user-alice", email="alice@example.com", name="Alice Liddell", preferred_username="alice",
                 id_claims={"groups": ["eng", "ops"], "amr": ["pwd"]})
BOB = FakeUser(sub="user-bob", email="bob@example.com", name="Bob", preferred_username="bob",
               id_claims={"groups": ["eng"], "amr": ["pwd", "otp"]})


def fresh(user: FakeUser) -> FakeUser:
    return FakeUser(sub=user.sub, email=user.email, name=user.name, preferred_username=user.preferred_username,
                    id_claims=dict(user.id_claims))


@pytest.fixture
async def oidc(aiohttp_server: ServerFactory) -> FakeOIDC:
    return await FakeOIDC(users=[fresh(ALICE), fresh(BOB)]).start(aiohttp_server)


# ---- 1. OIDC end to end ---------------------------------------------------------------------------------

ADMIN_NEEDS_MFA = [{"action": "deny", "paths": ["/admin/**"], "mfa": False}]


async def test_oidc_sign_in_end_to_end(gateway_factory: GatewayFactory, oidc: FakeOIDC) -> None:
    gw = await gateway_factory(**settings(
        {"corp": oidc.config()}, **{"roles.map": {"eng": ["editor"], "ops": ["operator"]},
                                    "roles.passthrough_groups": False, "access.rules": ADMIN_NEEDS_MFA}))
    browser = Browser(gw)
    await assert_signed_out(browser)

    login = await browser.start(rd=f"{APP}/dashboard")
    authorize = login.headers["Location"]
    assert authorize.startswith(f"{oidc.base}/authorize?")
    params = query_of(authorize)
    assert params["response_type"] == "code"
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == f"{PUBLIC}/callback/corp"
    assert params["scope"].split() == ["openid", "email", "profile"]
    assert params["code_challenge_method"] == "S256"
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", params["code_challenge"])
    assert len(params["state"]) >= 32 and len(params["nonce"]) >= 32 and params["state"] != params["nonce"]
    assert "client_secret" not in authorize

    back = await browser.at_provider(authorize)
    assert back.startswith(f"{PUBLIC}/callback/corp?")
    assert query_of(back)["state"] == params["state"]
    callback = await browser.get(back)
    assert callback.status == 302, await callback.text()
    assert callback.headers["Location"] == f"{APP}/dashboard"
    assert callback.headers["Referrer-Policy"] == "no-referrer"
    assert browser.cookie("gw_session")
    # the binding cookie was used once and is cleared
    assert not [c for c in gw.client.session.cookie_jar if ATTEMPT_COOKIE.match(c.key)]
    # the code went back with the verifier whose S256 the authorize request carried
    (token_request,) = oidc.token_requests
    assert s256(token_request["code_verifier"]) == params["code_challenge"]
    assert token_request["redirect_uri"] == f"{PUBLIC}/callback/corp"

    webhook = await browser.get("/auth/webhook")
    assert webhook.status == 200
    (user,) = await gw.store.list_users()
    body = await webhook.json()
    assert body["X-Hasura-User-Id"] == str(user.id) and body["X-Hasura-Role"] == "editor"
    assert all(isinstance(v, str) for v in body.values())
    as_operator = await browser.get("/auth/webhook", headers={"X-Hasura-Role": "operator"})
    assert (await as_operator.json())["X-Hasura-Role"] == "operator"
    assert (await browser.get("/auth/webhook", headers={"X-Hasura-Role": "admin"})).status == 401

    info = await (await browser.get("/auth/userinfo")).json()
    assert info["email"] == "alice@example.com" and info["upstream"] == "corp" and info["subject"] == "user-alice"
    assert info["groups"] == ["eng", "ops"] and info["roles"] == ["editor", "operator"]
    assert info["session"]["mfa"] is False  # amr ["pwd"] is one factor
    assert (user.upstream, user.subject, user.roles) == ("corp", "user-alice", ("editor", "operator"))

    check = await browser.get("/auth/check", headers={"X-Original-URL": f"{APP}/home"})
    assert check.status == 200
    assert check.headers["X-Auth-Request-Email"] == "alice@example.com"
    admin = await browser.get("/auth/check", headers={"X-Original-URL": f"{APP}/admin/x"})
    assert admin.status == 403

    # Bob signs in with a second factor: the deny rule for non-MFA sessions no longer matches.
    browser.forget_session()
    oidc.login_as = "user-bob"
    assert (await browser.sign_in(rd="/")).status == 302
    info = await (await browser.get("/auth/userinfo")).json()
    assert info["email"] == "bob@example.com" and info["session"]["mfa"] is True
    admin = await browser.get("/auth/check", headers={"X-Original-URL": f"{APP}/admin/x"})
    assert admin.status == 200
    assert admin.headers["X-Auth-Request-Email"] == "bob@example.com"
    assert len(await gw.store.list_users()) == 2


async def test_key_rotation_refetches_the_key_set_once(gateway_factory: GatewayFactory, oidc: FakeOIDC) -> None:
    gw = await gateway_factory(**settings({"corp": oidc.config()}))
    browser = Browser(gw)
    assert (await browser.sign_in()).status == 302
    assert oidc.hits["jwks"] == 1
    new_kid = oidc.rotate_key()
    assert oidc.published_kids == [new_kid]
    browser.forget_session()
    resp = await browser.sign_in()
    assert resp.status == 302, await resp.text()
    assert oidc.hits["jwks"] == 2  # the unknown kid cost exactly one refetch
    assert browser.cookie("gw_session")
    assert len(await gw.store.list_users()) == 1


# ---- 2. misbehaving OIDC providers ----------------------------------------------------------------------

OTHER_ISSUER = "https://evil.example.com/oidc"
REFUSALS = [
    pytest.param({"id_token_iss": OTHER_ISSUER}, "issued by another issuer", id="wrong-iss"),
    pytest.param({"id_token_aud": "someone-else"}, "meant for another audience", id="wrong-aud"),
    pytest.param({"id_token_nonce": "not-the-nonce-we-sent"}, "nonce does not match", id="wrong-nonce"),
    pytest.param({"id_token_alg": "none"}, "disallowed algorithm 'none'", id="alg-none"),
    pytest.param({"id_token_alg": "HS256-public-key"}, "disallowed algorithm 'HS256'", id="hs256-with-public-key"),
    pytest.param({"id_token_exp": -3600}, "has expired", id="expired"),
    pytest.param({"id_token_kid": "key-nobody-publishes"}, "key the provider does not publish", id="unknown-kid"),
    pytest.param({"callback_iss": OTHER_ISSUER}, "RFC 9207 iss mismatch", id="rfc9207-iss-mismatch"),
    pytest.param({"advertise_iss_parameter": True}, "lacks the iss parameter", id="rfc9207-iss-promised-missing"),
]


def failure_reasons(logs: list[dict[str, Any]]) -> list[str]:
    return [str(e.get("reason")) for e in logs if e.get("event") == "login callback failed"]


@pytest.mark.parametrize(("knobs", "reason"), REFUSALS)
async def test_a_callback_that_does_not_verify_is_refused(gateway_factory: GatewayFactory, oidc: FakeOIDC,
                                                          knobs: dict[str, Any], reason: str) -> None:
    gw = await gateway_factory(**settings({"corp": oidc.config()}, **{"login.lockout_threshold": 2}))
    browser = Browser(gw)
    for key, value in knobs.items():
        setattr(oidc.knobs, key, value)
    # a browser gets a page, an API client JSON; each try is a fresh attempt
    with structlog.testing.capture_logs() as logs:
        page = await browser.sign_in(headers=HTML)
        as_json = await browser.sign_in(headers=JSON)
    reasons = failure_reasons(logs)
    assert len(reasons) == 2 and all(reason in r for r in reasons), reasons
    assert page.status == 400
    assert page.content_type == "text/html"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    text = await page.text()
    assert "Sign-in expired" in text and "/login?upstream=corp" in text
    assert as_json.status == 400
    assert (await as_json.json())["error"] == "login_expired"
    for resp in (page, as_json):
        assert "gw_session" not in resp.cookies
    await assert_signed_out(browser)
    assert await gw.store.list_users() == []
    assert gw.metric("gateway_logins_total", upstream="corp", outcome="failed") == 2
    if "callback_iss" in knobs or "advertise_iss_parameter" in knobs:
        assert oidc.hits["token"] == 0  # the code was never redeemed
    if "id_token_kid" in knobs:
        assert oidc.hits["jwks"] == 2  # one refetch for the unknown kid, not one per attempt
    # two failures reach login.lockout_threshold
    await assert_locked_out(browser)


async def test_the_rfc9207_iss_parameter_when_it_matches(gateway_factory: GatewayFactory, oidc: FakeOIDC) -> None:
    gw = await gateway_factory(**settings({"corp": oidc.config()}))
    oidc.knobs.advertise_iss_parameter = True
    oidc.knobs.callback_iss = oidc.issuer
    resp = await Browser(gw).sign_in()
    assert resp.status == 302, await resp.text()
    assert len(await gw.store.list_users()) == 1


async def test_access_denied_at_the_provider_is_a_403_page(gateway_factory: GatewayFactory,
                                                            oidc: FakeOIDC) -> None:
    gw = await gateway_factory(**settings({"corp": oidc.config()}, **{"login.lockout_threshold": 2}))
    browser = Browser(gw)
    oidc.knobs.authorize_error = "access_denied"
    page = await browser.sign_in(headers=HTML)
    assert page.status == 403 and page.content_type == "text/html"
    assert "Access denied" in await page.text()
    as_json = await browser.sign_in(headers=JSON)
    assert as_json.status == 403
    assert (await as_json.json())["error"] == "access_denied"
    assert oidc.hits["token"] == 0
    await assert_signed_out(browser)
    assert await gw.store.list_users() == []
    await assert_locked_out(browser)


@pytest.fixture
async def oidc_without_email(aiohttp_server: ServerFactory) -> FakeOIDC:
    nobody = FakeUser(sub="user-no-email", email=None, email_verified=None, name="No Email",
                      preferred_username="noemail")
    return await FakeOIDC(users=[nobody]).start(aiohttp_server)


async def test_missing_email_is_not_allowed_by_an_enrolment_domain(gateway_factory: GatewayFactory,
                                                                   oidc_without_email: FakeOIDC) -> None:
    gw = await gateway_factory(**settings({"corp": oidc_without_email.config()},
                                          **{"enrolment.domains": ["example.com"]}))
    browser = Browser(gw)
    page = await browser.sign_in(headers=HTML)
    assert page.status == 403 and page.content_type == "text/html"
    assert "not allowed" in (await page.text()).lower()
    as_json = await browser.sign_in(headers=JSON)
    assert as_json.status == 403
    assert (await as_json.json())["error"] == "not_allowed"
    assert oidc_without_email.hits["token"] == 2  # the provider was asked; the policy said no
    await assert_signed_out(browser)
    assert await gw.store.list_users() == []


async def test_enrolment_refusals_count_toward_the_lockout(gateway_factory: GatewayFactory,
                                                           oidc_without_email: FakeOIDC) -> None:
    gw = await gateway_factory(**settings({"corp": oidc_without_email.config()},
                                          **{"enrolment.domains": ["example.com"], "login.lockout_threshold": 2}))
    browser = Browser(gw)
    for _ in range(2):
        assert (await browser.sign_in(headers=JSON)).status == 403
    await assert_locked_out(browser)


@pytest.mark.parametrize("knobs", [
    pytest.param({"token_status": 503}, id="token-endpoint-down"),
    pytest.param({"token_delay": 1.0}, id="token-endpoint-slow"),
])
async def test_an_unavailable_provider_is_a_quick_502_that_does_not_lock_out(
        gateway_factory: GatewayFactory, oidc: FakeOIDC, knobs: dict[str, Any]) -> None:
    gw = await gateway_factory(**settings({"corp": oidc.config(timeout=0.2)}, **{"login.lockout_threshold": 2}))
    browser = Browser(gw)
    for key, value in knobs.items():
        setattr(oidc.knobs, key, value)
    for headers in (HTML, JSON, JSON):  # one more than the lockout threshold
        login = await browser.start()
        back = await browser.at_provider(login.headers["Location"])
        started = time.monotonic()
        resp = await browser.get(back, headers=headers)
        elapsed = time.monotonic() - started
        assert resp.status == 502, await resp.text()
        assert elapsed < 0.9, f"the callback took {elapsed:.2f} s with a 0.2 s provider timeout"
        assert "gw_session" not in resp.cookies
        if headers is JSON:
            assert (await resp.json())["error"] == "provider_unavailable"
        else:
            assert resp.content_type == "text/html" and "provider unavailable" in (await resp.text()).lower()
    assert oidc.hits["token"] == 3
    assert gw.metric("gateway_logins_total", upstream="corp", outcome="provider_unavailable") == 3
    assert gw.metric("gateway_logins_total", upstream="corp", outcome="failed") == 0
    await assert_signed_out(browser)
    assert await gw.store.list_users() == []
    # an outage is not the client's fault: no lockout, and the next sign-in works
    oidc.knobs.token_status, oidc.knobs.token_delay = 200, 0.0
    assert (await browser.sign_in()).status == 302


# ---- 3. mix-up between two providers --------------------------------------------------------------------

async def test_a_code_for_provider_a_delivered_to_provider_b_is_refused(gateway_factory: GatewayFactory,
                                                                        aiohttp_server: ServerFactory) -> None:
    fake_a = await FakeOIDC(users=[fresh(ALICE)]).start(aiohttp_server)
    fake_b = await FakeOIDC(users=[fresh(ALICE)]).start(aiohttp_server)
    assert fake_a.issuer != fake_b.issuer
    gw = await gateway_factory(**settings({"corp-a": fake_a.config(), "corp-b": fake_b.config()}))
    browser = Browser(gw)
    login = await browser.start(upstream="corp-a")
    assert login.headers["Location"].startswith(f"{fake_a.base}/authorize?")
    back = await browser.at_provider(login.headers["Location"])
    assert back.startswith(f"{PUBLIC}/callback/corp-a?")
    swapped = back.replace("/callback/corp-a?", "/callback/corp-b?", 1)
    resp = await browser.get(swapped, headers=JSON)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "login_expired" and "does not belong" in body["message"]
    assert "gw_session" not in resp.cookies
    assert fake_a.hits["token"] == fake_b.hits["token"] == 0  # A's code went to neither token endpoint
    # the attempt is spent: bringing the code to the right place afterwards does not work either
    assert (await browser.get(back)).status == 400
    await assert_signed_out(browser)
    assert await gw.store.list_users() == []


# ---- 4. GitHub ------------------------------------------------------------------------------------------

def octocat() -> GitHubUser:
    return GitHubUser(id=583231, login="octocat", name="The Octocat", email=None,
                      emails=[FakeEmail("old@example.org", verified=True),
                              FakeEmail("unverified@example.net", verified=False),
                              FakeEmail("octocat@example.com", primary=True, verified=True, visibility="private")],
                      orgs=["hooli"])


def github_table(fake: FakeGitHub, base_url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "github", "client_id": fake.client_id, "client_secret": fake.client_secret,
            "base_url": base_url, "allow_insecure_http": True, **extra}


async def test_github_sign_in_keys_the_user_on_the_numeric_id(gateway_factory: GatewayFactory,
                                                               aiohttp_server: ServerFactory) -> None:
    fake = FakeGitHub()
    fake.add_user(octocat())
    # github.com style: the web flow and the API on different origins
    web_server, api_server = await aiohttp_server(fake.app()), await aiohttp_server(fake.app())
    web_base, api_base = str(web_server.make_url("")).rstrip("/"), str(api_server.make_url("")).rstrip("/")
    gw = await gateway_factory(**settings({"github": github_table(fake, web_base, api_url=api_base)}))
    browser = Browser(gw)

    login = await browser.start(rd=f"{APP}/repos")
    authorize = login.headers["Location"]
    assert authorize.startswith(f"{web_base}/login/oauth/authorize?")
    params = query_of(authorize)
    assert params["redirect_uri"] == f"{PUBLIC}/callback/github"
    assert params["client_id"] == fake.client_id and params["scope"] == "read:user user:email"
    assert params["code_challenge_method"] == "S256" and params["state"]
    resp = await browser.get(await browser.at_provider(authorize))
    assert resp.status == 302, await resp.text()
    assert resp.headers["Location"] == f"{APP}/repos"
    assert (await browser.get("/auth/webhook")).status == 200
    info = await (await browser.get("/auth/userinfo")).json()
    assert info["subject"] == "583231" and info["username"] == "octocat" and info["upstream"] == "github"
    assert info["email"] == "octocat@example.com"  # the primary verified address
    web_host, api_host = web_base.removeprefix("http://"), api_base.removeprefix("http://")
    assert {r.headers["Host"] for r in fake.recorded("/login/oauth/access_token")} == {web_host}
    assert {r.headers["Host"] for r in fake.recorded("/user") + fake.recorded("/user/emails")} == {api_host}
    (first,) = await gw.store.list_users()

    # the account is renamed on GitHub: same id, same user row
    fake.users[583231].login = "octocat-renamed"
    fake.default_login = "octocat-renamed"
    browser.forget_session()
    assert (await browser.sign_in()).status == 302
    (again,) = await gw.store.list_users()
    assert again.id == first.id and again.subject == "583231"
    assert again.username == "octocat-renamed"
    check = await browser.get("/auth/check")
    assert check.status == 200 and check.headers["X-Auth-Request-User"] == "octocat-renamed"


async def test_github_org_restriction_refuses_a_non_member(gateway_factory: GatewayFactory,
                                                           aiohttp_server: ServerFactory) -> None:
    fake = FakeGitHub()
    fake.add_user(octocat())
    fake.add_user(GitHubUser(id=1001, login="member", emails=[FakeEmail("member@example.com", primary=True)],
                             orgs=["acme"]))
    base = str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")
    gw = await gateway_factory(**settings({"github": github_table(fake, base, api_url=base, orgs=["acme"])}))
    browser = Browser(gw)
    fake.default_login = "octocat"
    login = await browser.start()
    assert "read:org" in query_of(login.headers["Location"])["scope"].split()
    page = await browser.get(await browser.at_provider(login.headers["Location"]), headers=HTML)
    assert page.status == 403 and page.content_type == "text/html"
    assert "Access denied" in await page.text()
    assert "gw_session" not in page.cookies
    await assert_signed_out(browser)
    assert await gw.store.list_users() == []
    fake.default_login = "member"
    assert (await browser.sign_in()).status == 302
    (user,) = await gw.store.list_users()
    assert user.subject == "1001" and "acme" in user.groups


async def test_github_enterprise_urls(gateway_factory: GatewayFactory, aiohttp_server: ServerFactory) -> None:
    fake = FakeGitHub(api_prefix="/api/v3")
    fake.add_user(octocat())
    base = str((await aiohttp_server(fake.app())).make_url("")).rstrip("/") + "/"
    # only base_url: the API lives at {base_url}/api/v3, as on GitHub Enterprise Server
    gw = await gateway_factory(**settings({"ghe": github_table(fake, base)}))
    browser = Browser(gw)
    login = await browser.start()
    assert login.headers["Location"].startswith(f"{base.rstrip('/')}/login/oauth/authorize?")
    resp = await browser.get(await browser.at_provider(login.headers["Location"]))
    assert resp.status == 302, await resp.text()
    assert fake.recorded("/api/v3/user") and fake.recorded("/api/v3/user/emails")
    info = await (await browser.get("/auth/userinfo")).json()
    assert (info["upstream"], info["subject"], info["email"]) == ("ghe", "583231", "octocat@example.com")


# ---- 5. vouch-proxy -------------------------------------------------------------------------------------

@pytest.fixture
async def vouch(aiohttp_server: ServerFactory) -> tuple[FakeVouch, str]:
    fake = FakeVouch()
    fake.add_user(FakeVouchUser("ada@example.com", {"name": "Ada Lovelace", "groups": ["eng", "admins"]}))
    server = await aiohttp_server(fake.app())
    return fake, str(server.make_url("")).rstrip("/")


async def vouch_round_trip(browser: Browser, base: str) -> str:
    """/login -> vouch /login -> back: returns the callback URL, with vouch's cookie now in the jar."""
    login = await browser.start(rd=f"{APP}/")
    to_vouch = login.headers["Location"]
    assert to_vouch.startswith(f"{base}/login?url=")
    callback_url = query_of(to_vouch)["url"]
    assert callback_url.startswith(f"{PUBLIC}/callback/sso?state=")
    resp = await browser.get(to_vouch)
    assert resp.status == 302
    assert resp.headers["Location"] == callback_url
    assert "VouchCookie" in resp.cookies
    # vouch's cookie is host-only for 127.0.0.1 and the gateway's test server is on 127.0.0.1 too: cookies
    # ignore ports, and the test client's jar is unsafe=True (it accepts IP hosts), so the jar really sends
    # it to the gateway's callback -- as a browser sends a cookie on the shared cookie domain. No copying.
    assert browser.cookie("VouchCookie", "/callback/sso") == resp.cookies["VouchCookie"].value
    return callback_url


async def test_vouch_sign_in(gateway_factory: GatewayFactory, vouch: tuple[FakeVouch, str]) -> None:
    fake, base = vouch
    gw = await gateway_factory(**settings({"sso": {"type": "vouch", "url": base, "allow_insecure_http": True,
                                                   "groups_claim": "Groups"}},
                                          **{"roles.map": {"admins": ["admin"]}}))
    browser = Browser(gw)
    callback_url = await vouch_round_trip(browser, base)
    resp = await browser.get(callback_url)
    assert resp.status == 302, await resp.text()
    assert resp.headers["Location"] == f"{APP}/"
    (call,) = fake.validate_calls  # server to server, with the cookie the browser brought
    assert call.cookies["VouchCookie"] == browser.cookie("VouchCookie")
    info = await (await browser.get("/auth/userinfo")).json()
    assert (info["upstream"], info["email"], info["name"]) == ("sso", "ada@example.com", "Ada Lovelace")
    assert info["groups"] == ["eng", "admins"] and "admin" in info["roles"]
    assert (await browser.get("/auth/webhook")).status == 200
    # the gateway's token is the session from now on: vouch is not asked again
    assert (await browser.get("/auth/check")).status == 200
    assert len(fake.validate_calls) == 1


async def test_a_revoked_vouch_session_is_refused(gateway_factory: GatewayFactory,
                                                  vouch: tuple[FakeVouch, str]) -> None:
    fake, base = vouch
    gw = await gateway_factory(**settings({"sso": {"type": "vouch", "url": base, "allow_insecure_http": True}}))
    browser = Browser(gw)
    callback_url = await vouch_round_trip(browser, base)
    fake.revoke_all()
    page = await browser.get(callback_url, headers=HTML)
    assert page.status == 403 and page.content_type == "text/html"
    assert "Access denied" in await page.text()
    assert len(fake.validate_calls) == 1
    assert "gw_session" not in page.cookies
    await assert_signed_out(browser)
    assert await gw.store.list_users() == []


# ---- 6. logout through OIDC -----------------------------------------------------------------------------

@pytest.mark.parametrize(("rd", "comes_back_to"), [
    pytest.param(f"{APP}/bye", f"{APP}/bye", id="allowed-host"),
    pytest.param("/bye?x=1", f"{PUBLIC}/bye?x=1", id="local-path-made-absolute"),
    pytest.param("https://evil.example.org/", f"{PUBLIC}/", id="refused-target-falls-back"),
])
async def test_logout_ends_the_provider_session_too(gateway_factory: GatewayFactory, oidc: FakeOIDC, rd: str,
                                                    comes_back_to: str) -> None:
    gw = await gateway_factory(**settings({"corp": oidc.config()}))
    browser = Browser(gw)
    assert (await browser.sign_in()).status == 302
    token = browser.cookie("gw_session")
    assert token and (await browser.get("/auth/webhook")).status == 200

    # /logout asks first; its button posts the session's token and the validated target back
    confirm = await browser.get(f"/logout?{urlencode({'rd': rd})}", headers=HTML)
    assert confirm.status == 200 and (await browser.get("/auth/webhook")).status == 200
    form = {name: html.unescape(value) for name, value in
            re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', await confirm.text())}
    out = await browser.gw.client.post("/logout", data=form, allow_redirects=False,
                                       headers={**HTML, "Sec-Fetch-Site": "same-origin", "Origin": "null"})
    assert out.status == 303
    end_session = out.headers["Location"]
    assert end_session.startswith(f"{oidc.base}/logout?")
    assert query_of(end_session) == {"client_id": CLIENT_ID, "post_logout_redirect_uri": comes_back_to}
    assert out.cookies["gw_session"]["max-age"] == "0"
    assert browser.cookie("gw_session") is None
    assert (await browser.get("/auth/webhook")).status == 401
    stolen = {"Authorization": f"Bearer {token}"}
    assert (await browser.get("/auth/webhook", headers=stolen)).status == 401
    assert (await browser.get("/auth/check", headers=stolen)).status == 401
    # the provider ends its session and sends the browser to the validated target
    assert await browser.at_provider(end_session) == comes_back_to
    assert oidc.logout_requests == [{"client_id": CLIENT_ID, "post_logout_redirect_uri": comes_back_to}]


# ---- 7. bearer JWTs on the check path -------------------------------------------------------------------

API_AUDIENCE = "https://api.example.com"


async def test_provider_issued_bearer_jwts(gateway_factory: GatewayFactory, oidc: FakeOIDC,
                                           aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    corp = oidc.config(bearer_audience=API_AUDIENCE)
    gw = await gateway_factory(**settings({"corp": corp}, **{"check.jwt_upstreams": ["corp"]}))
    await feed_live(gw)
    browser = Browser(gw)
    claims = {"email": "alice@example.com", "email_verified": True}
    token = oidc.access_token(aud=API_AUDIENCE, **claims)
    bearer = {"Authorization": f"Bearer {token}"}

    check = await browser.get("/auth/check", headers=bearer)
    assert check.status == 200
    assert check.headers["X-Auth-Request-Email"] == "alice@example.com"
    hits = gw.metric(HITS, event="hit")
    again = await browser.get("/auth/check", headers=bearer)
    assert again.status == 200
    assert gw.metric(HITS, event="hit") == hits + 1  # the verified JWT is cached
    webhook = await browser.get("/auth/webhook", headers=bearer)
    assert webhook.status == 200
    (user,) = await gw.store.list_users()
    assert (user.upstream, user.subject) == ("corp", "user-alice")
    body = await webhook.json()
    assert body["X-Hasura-User-Id"] == str(user.id) and body["X-Hasura-Role"]
    assert browser.cookie("gw_session") is None  # no session was minted for it

    other = await FakeOIDC(users=[fresh(ALICE)]).start(aiohttp_server)
    refused = {
        "wrong-audience": oidc.access_token(**claims),
        "expired": oidc.access_token(aud=API_AUDIENCE, exp=-3600, **claims),
        "alg-none": oidc.access_token(aud=API_AUDIENCE, alg="none", **claims),
        "hs256-with-public-key": oidc.access_token(aud=API_AUDIENCE, alg="HS256-public-key", **claims),
        "forged-iss": oidc.access_token(aud=API_AUDIENCE, iss=OTHER_ISSUER, **claims),
        "another-issuer": other.access_token(aud=API_AUDIENCE, **claims),
    }
    for case, bad in refused.items():
        for endpoint in ("/auth/check", "/auth/webhook"):
            resp = await browser.get(endpoint, headers={"Authorization": f"Bearer {bad}"})
            assert resp.status == 401, (case, endpoint)

    plain = await gateway_factory(**settings({"corp": corp}), database_url=f"sqlite:///{tmp_path}/plain.db")
    for endpoint in ("/auth/check", "/auth/webhook"):
        resp = await plain.client.get(endpoint, headers=bearer)
        assert resp.status == 401, endpoint
    assert await plain.store.list_users() == []


async def test_a_bearer_jwt_does_not_wipe_the_profile_from_the_last_sign_in(gateway_factory: GatewayFactory,
                                                                            oidc: FakeOIDC) -> None:
    gw = await gateway_factory(**settings({"corp": oidc.config(bearer_audience=API_AUDIENCE)},
                                          **{"check.jwt_upstreams": ["corp"], "roles.map": {"eng": ["editor"]},
                                             "roles.passthrough_groups": False}))
    browser = Browser(gw)
    assert (await browser.sign_in()).status == 302
    session = browser.cookie("gw_session")
    (before,) = await gw.store.list_users()
    assert (before.email, before.roles) == ("alice@example.com", ("editor",))
    # what a single-page app of the same user sends: the provider's ordinary access token (no profile claims)
    browser.forget_session()
    api = await browser.get("/auth/check", headers={"Authorization": f"Bearer {oidc.access_token(aud=API_AUDIENCE)}"})
    assert api.status == 200
    gw.clock.advance(gw.settings.cache.ttl + 1)  # the browser session's cache entry runs out
    webhook = await browser.get("/auth/webhook", headers={"Authorization": f"Bearer {session}"})
    assert webhook.status == 200
    body = await webhook.json()
    (after,) = await gw.store.list_users()
    assert (after.email, after.name, after.groups, after.roles) == (before.email, before.name, before.groups,
                                                                    before.roles)
    assert body["X-Hasura-Role"] == "editor" and body["X-Hasura-Email"] == "alice@example.com"


# ---- 8. concurrency -------------------------------------------------------------------------------------

async def test_two_concurrent_first_logins_make_one_user(gateway_factory: GatewayFactory, oidc: FakeOIDC) -> None:
    gw = await gateway_factory(**settings({"corp": oidc.config()}))
    browser = Browser(gw)
    callbacks = []
    for _ in range(2):  # two tabs
        login = await browser.start()
        callbacks.append(await browser.at_provider(login.headers["Location"]))
    results = await asyncio.gather(*(browser.get(url) for url in callbacks))
    assert [r.status for r in results] == [302, 302]
    (user,) = await gw.store.list_users()
    assert (user.upstream, user.subject) == ("corp", "user-alice")
    assert (await browser.get("/auth/webhook")).status == 200
