"""Signing out: ``GET /logout`` only asks, and only a same-origin POST carrying the session's token revokes.

Cross-site links, ``<img>`` tags and forged forms must change nothing; the gateway's own pages (the
confirmation at ``/logout``, the home page at ``/``) and API clients with a bearer token must still sign
out, everywhere at once, with the cookie cleared and the browser sent to the validated ``rd``.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Mapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import structlog.testing
from aiohttp import ClientResponse
from multidict import CIMultiDict

from gateway.app import CHECKER
from gateway.pages import PAGE_HEADERS
from gateway.sealing import new_key
from gateway.tokens import hash_token
from tests.browsers import PUBLIC as BROWSERS_PUBLIC
from tests.browsers import BrowserFactory
from tests.fakes.oidc import FakeUser, ServerFactory
from tests.harness import Gateway, GatewayFactory
from tests.test_id_token_hint import RecordingOIDC

PUBLIC = "https://auth.example.com"
SETTINGS = {"upstreams": {"dev": {"type": "dev"}}, "cookie.secure": False, "public_url": PUBLIC,
            "login.redirect_hosts": ["app.example.com", ".example.org"], "login.default_redirect": "/welcome"}
"""The gateway at PUBLIC; nginx may also serve /logout on app.example.com and any host under example.org."""
COOKIE = "gw_session"
HTML = {"Accept": "text/html,application/xhtml+xml"}
JSON = {"Accept": "application/json"}
FROM_OUR_PAGE = {**HTML, "Sec-Fetch-Site": "same-origin", "Origin": "null"}
"""What Chromium sends for our own sign-out form (``Origin: null`` because our pages say no-referrer)."""
STRICT_CSP = PAGE_HEADERS["Content-Security-Policy"]
SIGN_OUT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https:; "
                "frame-ancestors 'none'; base-uri 'none'")
"""Pages with the sign-out button let its redirects through (Chromium checks form-action on each one)."""


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory(**SETTINGS)


def with_cookie(token: str, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**(headers or {}), "Cookie": f"{COOKIE}={token}"}


def hidden_fields(page: str) -> dict[str, str]:
    """The hidden inputs of the page's sign-out form."""
    return {name: html.unescape(value)
            for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)}


async def confirm_page(gw: Gateway, token: str, rd: str | None = None) -> tuple[ClientResponse, str]:
    params = {"rd": rd} if rd is not None else {}
    resp = await gw.client.get("/logout", params=params, headers=with_cookie(token, HTML), allow_redirects=False)
    return resp, await resp.text()


async def csrf_token(gw: Gateway, token: str) -> str:
    """The sign-out token as the confirmation page hands it out."""
    _, page = await confirm_page(gw, token)
    return hidden_fields(page)["csrf_token"]


async def alive(gw: Gateway, token: str) -> bool:
    status = (await gw.client.get("/auth/check", headers={"Authorization": f"Bearer {token}"})).status
    assert status in (200, 401)
    return status == 200


async def revoke(gw: Gateway, token: str) -> bool:
    """Revoke as an admin would (the session ends while the browser still holds its cookie)."""
    return await gw.app[CHECKER].revoke_token(token, actor="admin", reason="test")


async def logouts(gw: Gateway) -> int:
    return [a.event for a in await gw.store.list_audit()].count("logout")


def session_cookie_cleared(resp: ClientResponse) -> bool:
    jar: SimpleCookie = SimpleCookie()
    for line in resp.headers.getall("Set-Cookie", []):
        jar.load(line)
    return COOKIE in jar and jar[COOKIE].value == "" and jar[COOKIE]["max-age"] == "0"


def assert_page_headers(resp: ClientResponse, csp: str = SIGN_OUT_CSP) -> None:
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Content-Security-Policy"] == csp
    assert resp.headers["X-Frame-Options"] == "DENY"  # nobody can frame the button to be clicked blindly


# ---- GET never signs out ----------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    pytest.param(HTML, id="link-on-our-site"),
    pytest.param({**HTML, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
                 id="cross-site-link"),
    pytest.param({"Accept": "image/avif,image/webp,*/*", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                  "Sec-Fetch-Dest": "image"}, id="img-tag-on-another-site"),
    pytest.param({**HTML, "Sec-Fetch-Site": "same-origin", "Origin": PUBLIC}, id="same-origin"),
    pytest.param(JSON, id="api-client"),
    pytest.param({"Authorization": "Bearer {token}"}, id="bearer"),
])
async def test_get_never_signs_out(gw: Gateway, headers: dict[str, str]) -> None:
    token = await gw.token()
    sent = {name: value.format(token=token) for name, value in headers.items()}
    for path in ("/logout", "/logout?rd=https://app.example.com/bye"):
        resp = await gw.client.get(path, headers=with_cookie(token, sent), allow_redirects=False)
        assert resp.status == 200, await resp.text()
        assert "Set-Cookie" not in resp.headers
    head = await gw.client.head("/logout", headers=with_cookie(token, sent), allow_redirects=False)
    assert head.status == 200 and "Set-Cookie" not in head.headers
    assert await alive(gw, token)
    assert await logouts(gw) == 0


# ---- the confirmation page --------------------------------------------------------------------------------

@pytest.mark.parametrize(("rd", "kept"), [
    pytest.param("https://app.example.com/bye?x=1", "https://app.example.com/bye?x=1", id="allowed-host"),
    pytest.param("https://docs.example.org/", "https://docs.example.org/", id="allowed-suffix"),
    pytest.param("/after", "/after", id="local-path"),
    pytest.param(None, "/welcome", id="no-rd-default"),
    pytest.param("https://evil.example/", "/welcome", id="other-host-default"),
    pytest.param('/"><script>alert(1)</script>', "/%22%3E%3Cscript%3Ealert(1)%3C/script%3E", id="markup-encoded"),
])
async def test_confirm_page_asks_and_carries_the_validated_target(gw: Gateway, rd: str | None, kept: str) -> None:
    token = await gw.token("ada@example.com", name="Ada Lovelace")
    resp, page = await confirm_page(gw, token, rd)
    assert resp.status == 200 and resp.content_type == "text/html"
    assert_page_headers(resp)
    host = urlsplit(str(resp.url)).netloc
    assert f"<h1>Sign out of {host}?</h1>" in page
    assert "Ada Lovelace" in page and "ada@example.com" in page
    assert re.search(r'<form method="post" action="/logout">', page)
    assert page.count("<form") == 1
    fields = hidden_fields(page)
    assert fields["rd"] == kept
    assert re.fullmatch(r"[0-9a-f]{64}", fields["csrf_token"])
    # the token names the session without revealing it, or what the database stores
    assert token not in page and hash_token(token) not in page
    assert f'href="{html.escape(kept)}">Stay signed in</a>' in page
    assert "<script" not in page


async def test_the_token_is_bound_to_the_session(gw: Gateway) -> None:
    first, second = await gw.token("ada@example.com"), await gw.token("ada@example.com")
    assert await csrf_token(gw, first) == await csrf_token(gw, first)
    assert await csrf_token(gw, first) != await csrf_token(gw, second)


async def test_json_clients_get_the_token_from_get(gw: Gateway) -> None:
    token = await gw.token()
    resp = await gw.client.get("/logout", params={"rd": "/x"}, headers=with_cookie(token, JSON))
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert await resp.json() == {"status": "signed_in", "csrf_token": await csrf_token(gw, token), "location": "/x"}
    anonymous = await gw.client.get("/logout", headers=JSON)
    assert await anonymous.json() == {"status": "signed_out", "location": "/welcome"}


@pytest.mark.parametrize("cookie", [
    pytest.param(None, id="no-cookie"),
    pytest.param("gwt_" + "A" * 43, id="unknown-token"),
    pytest.param("not-a-token", id="malformed"),
    pytest.param("revoked", id="revoked"),
])
async def test_get_without_a_session_says_signed_out(gw: Gateway, cookie: str | None) -> None:
    if cookie == "revoked":
        cookie = await gw.token()
        assert await revoke(gw, cookie)
    headers = with_cookie(cookie, HTML) if cookie else HTML
    resp = await gw.client.get("/logout", params={"rd": "https://app.example.com/"}, headers=headers,
                               allow_redirects=False)
    page = await resp.text()
    assert resp.status == 200 and "You are signed out" in page
    assert '<a class="button" href="https://app.example.com/">Continue</a>' in page
    assert "<form" not in page and "Set-Cookie" not in resp.headers
    assert_page_headers(resp, csp=STRICT_CSP)  # no form here: form-action stays 'self'


# ---- POST: refused unless it comes from our own page ------------------------------------------------------

REFUSALS: list[Any] = [
    pytest.param({}, {}, id="no-csrf-token"),
    pytest.param({"csrf_token": "0" * 64}, {}, id="wrong-token"),
    pytest.param({"csrf_token": "{token}"}, {}, id="the-session-token-itself"),
    pytest.param({"csrf_token": "{hash}"}, {}, id="the-stored-hash"),
    pytest.param({"csrf_token": "{other}"}, {}, id="token-of-another-session"),
    pytest.param({"csrf_token": "{right}"}, {"Origin": "https://evil.example"}, id="evil-origin"),
    pytest.param({"csrf_token": "{right}"}, {"Sec-Fetch-Site": "cross-site", "Origin": "null"},
                 id="cross-site-fetch"),
    pytest.param({"csrf_token": "{right}"}, {"Sec-Fetch-Site": "cross-site"}, id="cross-site-without-origin"),
    pytest.param({"csrf_token": "{right}"}, {"Sec-Fetch-Site": "same-site", "Origin": "https://www.example.com"},
                 id="sibling-subdomain"),
    pytest.param({"csrf_token": "{right}"}, {"Sec-Fetch-Site": "none"}, id="fetch-site-none"),
    pytest.param({"csrf_token": "{right}"}, {"Origin": "http://auth.example.com"}, id="downgraded-origin"),
    pytest.param({"csrf_token": "{right}"}, {"Origin": "https://auth.example.com:8443"}, id="other-port"),
    pytest.param({"csrf_token": "{right}"}, {"Origin": "https://app.example.com.evil.example"},
                 id="lookalike-origin"),
    pytest.param({"csrf_token": "{right}"}, {"Origin": "https://evilexample.org"}, id="suffix-without-boundary"),
    pytest.param({"csrf_token": "{right}"}, {"Origin": "https://auth.example.com/logout"}, id="origin-with-path"),
    pytest.param({"csrf_token": "{right}"}, {"Origin": "https://user@auth.example.com"}, id="origin-with-userinfo"),
]


@pytest.mark.parametrize(("form", "headers"), REFUSALS)
@pytest.mark.parametrize("accept", [pytest.param(HTML, id="browser"), pytest.param(JSON, id="json")])
async def test_refused_post_revokes_nothing(gw: Gateway, form: dict[str, str], headers: dict[str, str],
                                            accept: dict[str, str]) -> None:
    token, other = await gw.token("ada@example.com"), await gw.token("bob@example.com")
    values = {"token": token, "hash": hash_token(token), "right": await csrf_token(gw, token),
              "other": await csrf_token(gw, other)}
    data = {"rd": "https://app.example.com/bye", **{k: v.format(**values) for k, v in form.items()}}
    with structlog.testing.capture_logs() as logs:
        resp = await gw.client.post("/logout", data=data, headers=with_cookie(token, {**accept, **headers}),
                                    allow_redirects=False)
    assert resp.status == 403
    assert "Set-Cookie" not in resp.headers and "Location" not in resp.headers
    if accept is JSON:
        assert (await resp.json())["error"] == "forbidden"
    else:
        page = await resp.text()
        assert "nothing was changed" in page
        assert 'href="/logout?rd=https%3A%2F%2Fapp.example.com%2Fbye"' in page  # the way to sign out for real
        assert_page_headers(resp, csp=resp.headers["Content-Security-Policy"])
    refused = [line for line in logs if line["event"] == "logout refused"]
    assert len(refused) == 1 and refused[0]["log_level"] == "warning" and refused[0]["reason"]
    assert all(secret not in repr(logs) for secret in (token, values["right"]))
    assert await alive(gw, token) and await alive(gw, other)
    assert await logouts(gw) == 0


async def test_two_origin_headers_are_refused(gw: Gateway) -> None:
    token = await gw.token()
    headers = CIMultiDict([("Cookie", f"{COOKIE}={token}"), ("Origin", PUBLIC), ("Origin", "https://evil.example")])
    resp = await gw.client.post("/logout", data={"csrf_token": await csrf_token(gw, token)}, headers=headers)
    assert resp.status == 403 and await alive(gw, token)


async def test_the_token_is_read_from_the_form_only(gw: Gateway) -> None:
    """Never from the query string, where access logs would keep it."""
    token = await gw.token()
    resp = await gw.client.post("/logout", params={"csrf_token": await csrf_token(gw, token)},
                                headers=with_cookie(token, FROM_OUR_PAGE), allow_redirects=False)
    assert resp.status == 403 and await alive(gw, token)


async def test_oversized_form_is_refused(gw: Gateway) -> None:
    token = await gw.token()
    data = {"csrf_token": await csrf_token(gw, token), "rd": "/" + "a" * 5000}
    resp = await gw.client.post("/logout", data=data, headers=with_cookie(token, FROM_OUR_PAGE))
    assert resp.status == 413 and await alive(gw, token)


# ---- POST: signing out --------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    pytest.param(FROM_OUR_PAGE, id="chromium-same-origin-origin-null"),
    pytest.param({**HTML, "Sec-Fetch-Site": "same-origin", "Origin": PUBLIC}, id="public-origin"),
    pytest.param({**HTML, "Sec-Fetch-Site": "same-origin", "Origin": "https://app.example.com"},
                 id="app-host-through-nginx"),
    pytest.param({**HTML, "Sec-Fetch-Site": "same-origin", "Origin": "https://docs.example.org"},
                 id="suffix-host-through-nginx"),
    pytest.param(HTML, id="no-fetch-metadata-old-browser"),
])
async def test_post_from_our_page_signs_out_everywhere(gw: Gateway, headers: dict[str, str]) -> None:
    token = await gw.token()
    data = {"csrf_token": await csrf_token(gw, token), "rd": "https://app.example.com/bye"}
    resp = await gw.client.post("/logout", data=data, headers=with_cookie(token, headers), allow_redirects=False)
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "https://app.example.com/bye"
    assert resp.headers["Referrer-Policy"] == "no-referrer" and resp.headers["Cache-Control"] == "no-store"
    assert session_cookie_cleared(resp), resp.headers.getall("Set-Cookie", [])
    assert not await alive(gw, token)
    assert await logouts(gw) == 1


@pytest.mark.parametrize("rd", ["//evil.com", "/\\evil.com", "/%09/evil.com", "https://evil.com/",
                                "javascript:alert(1)", "https://app.example.com.evil.com/",
                                "https://app.example.com@evil.com/", "http://app.example.com/"])
async def test_logout_redirect_tricks_fall_back_to_the_default(gw: Gateway, rd: str) -> None:
    token = await gw.token()
    _, page = await confirm_page(gw, token, rd)
    assert hidden_fields(page)["rd"] == "/welcome"
    # a forged rd in the form is validated again
    data = {"csrf_token": await csrf_token(gw, token), "rd": rd}
    resp = await gw.client.post("/logout", data=data, headers=with_cookie(token, FROM_OUR_PAGE), allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/welcome"


async def test_rd_in_the_query_still_counts(gw: Gateway) -> None:
    token = await gw.token()
    resp = await gw.client.post("/logout", params={"rd": "/elsewhere"},
                                data={"csrf_token": await csrf_token(gw, token)},
                                headers=with_cookie(token, FROM_OUR_PAGE), allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/elsewhere"
    assert not await alive(gw, token)


async def test_bearer_post_signs_out_without_a_token(gw: Gateway) -> None:
    """An API client revoking its own token: no browser, nothing to forge; the cookie (another session) stays."""
    api, browser = await gw.token("ci@example.com", kind="api"), await gw.token("ada@example.com")
    resp = await gw.client.post("/logout", headers={**JSON, "Authorization": f"Bearer {api}",
                                                    "Cookie": f"{COOKIE}={browser}"})
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert await resp.json() == {"status": "signed_out", "location": "/welcome"}
    assert "Set-Cookie" not in resp.headers
    assert not await alive(gw, api)
    assert await alive(gw, browser)


async def test_cookie_post_as_a_json_client(gw: Gateway) -> None:
    token = await gw.token()
    token_answer = await (await gw.client.get("/logout", headers=with_cookie(token, JSON))).json()
    resp = await gw.client.post("/logout", data={"csrf_token": token_answer["csrf_token"], "rd": "/bye"},
                                headers=with_cookie(token, JSON))
    assert resp.status == 200
    assert await resp.json() == {"status": "signed_out", "location": "/bye"}
    assert session_cookie_cleared(resp)
    assert not await alive(gw, token)
    # without the token, a cookie is never enough, JSON or not
    again = await gw.token()
    assert (await gw.client.post("/logout", headers=with_cookie(again, JSON))).status == 403
    assert await alive(gw, again)


@pytest.mark.parametrize("accept", [pytest.param(HTML, id="browser"), pytest.param(JSON, id="json")])
async def test_post_without_a_session_just_goes_on(gw: Gateway, accept: dict[str, str]) -> None:
    resp = await gw.client.post("/logout", data={"rd": "https://app.example.com/"}, headers={**FROM_OUR_PAGE, **accept},
                                allow_redirects=False)
    if accept is JSON:
        assert resp.status == 200
        assert await resp.json() == {"status": "signed_out", "location": "https://app.example.com/"}
    else:
        assert resp.status == 303 and resp.headers["Location"] == "https://app.example.com/"
    assert await logouts(gw) == 0


async def test_a_page_opened_before_the_session_ended_still_signs_out(gw: Gateway) -> None:
    """A stale tab: the session expired or was revoked meanwhile; its form still clears the cookie."""
    token = await gw.token()
    data = {"csrf_token": await csrf_token(gw, token)}
    assert await revoke(gw, token)
    resp = await gw.client.post("/logout", data=data, headers=with_cookie(token, FROM_OUR_PAGE), allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/welcome"
    assert session_cookie_cleared(resp)


# ---- the whole thing in a browser's cookie jar ---------------------------------------------------------------

async def sign_in(gw: Gateway, email: str = "ada@example.com") -> str:
    """The dev sign-in, with the test client's cookie jar as the browser's; returns the session token."""
    start = await gw.client.get("/login", params={"rd": "/"}, allow_redirects=False)
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    done = await gw.client.get("/callback/dev", params={"state": state, "email": email}, allow_redirects=False)
    assert done.status == 302, await done.text()
    return gw.client.session.cookie_jar.filter_cookies(gw.client.make_url("/"))[COOKIE].value


def jar_session(gw: Gateway) -> str | None:
    morsel = gw.client.session.cookie_jar.filter_cookies(gw.client.make_url("/")).get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


@pytest.mark.parametrize("page_path", [pytest.param("/", id="home-page"),
                                       pytest.param("/logout?rd=https://app.example.com/", id="confirm-page")])
async def test_the_sign_out_button_of_our_pages(gw: Gateway, page_path: str) -> None:
    token = await sign_in(gw)
    page = await gw.client.get(page_path, headers=HTML)
    assert page.status == 200
    assert_page_headers(page)
    text = await page.text()
    action = re.search(r'<form method="post" action="([^"]+)">', text)
    assert action and action.group(1) == "/logout"
    resp = await gw.client.post(action.group(1), data=hidden_fields(text), headers=FROM_OUR_PAGE,
                                allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == ("/welcome" if page_path == "/" else "https://app.example.com/")
    assert jar_session(gw) is None
    assert (await gw.client.get("/auth/webhook")).status == 401
    assert not await alive(gw, token)
    home = await gw.client.get("/", allow_redirects=False)
    assert home.status == 302 and home.headers["Location"] == "/login"


async def test_sign_out_pages_allow_plain_http_redirects_only_for_a_plain_http_gateway(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**{**SETTINGS, "public_url": "http://127.0.0.1:4180"})
    resp, _ = await confirm_page(gw, await gw.token())
    assert "form-action 'self' https: http:;" in resp.headers["Content-Security-Policy"]


# ---- signing out everywhere -----------------------------------------------------------------------------------

EVERYWHERE_BUTTON = '<button type="submit" name="scope" value="everywhere">Sign out everywhere</button>'


async def everyone_of_ada(gw: Gateway) -> tuple[list[str], str]:
    """Two browser sessions and an API token of ada's, and a session of bob's."""
    return ([await gw.token("ada@example.com"), await gw.token("ada@example.com"),
             await gw.token("ada@example.com", kind="api")], await gw.token("bob@example.com"))


async def sign_out_everywhere(gw: Gateway, token: str, headers: Mapping[str, str] = FROM_OUR_PAGE,
                              **form: str) -> ClientResponse:
    data = {"csrf_token": await csrf_token(gw, token), "scope": "everywhere", "rd": "https://app.example.com/bye",
            **form}
    return await gw.client.post("/logout", data=data, headers=with_cookie(token, headers), allow_redirects=False)


async def test_the_confirm_page_offers_to_sign_out_everywhere(gw: Gateway) -> None:
    _, page = await confirm_page(gw, await gw.token())
    assert page.count("<form") == 1 and page.count(EVERYWHERE_BUTTON) == 1
    assert "every device" in page and "API tokens" in page
    home = await (await gw.client.get("/", headers=with_cookie(await gw.token(), HTML))).text()
    assert EVERYWHERE_BUTTON not in home  # the home page keeps the one button


@pytest.mark.parametrize("backend", [pytest.param("sqlite", id="sqlite"),
                                     pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
async def test_sign_out_everywhere_ends_every_session_and_token_of_the_user(
        gateway_factory: GatewayFactory, request: pytest.FixtureRequest, backend: str) -> None:
    gw = await gateway_factory(database_url=str(request.getfixturevalue(f"{backend}_url")), **SETTINGS)
    (here, other_browser, api), bob = await everyone_of_ada(gw)
    assert all([await alive(gw, t) for t in (here, other_browser, api, bob)])  # cached now
    with structlog.testing.capture_logs() as logs:
        resp = await sign_out_everywhere(gw, here)
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == "https://app.example.com/bye"
    assert session_cookie_cleared(resp)
    assert [await alive(gw, t) for t in (here, other_browser, api, bob)] == [False, False, False, True]
    ada = gw.users["ada@example.com"]
    assert await gw.store.list_sessions(ada.id) == []
    revokes = [a for a in await gw.store.list_audit(user_id=ada.id) if a.event == "revoke"]
    assert [(a.actor, a.detail) for a in revokes] == [("user", {"reason": "signed_out_everywhere", "sessions": "3"})]
    assert await logouts(gw) == 1
    [line] = [entry for entry in logs if entry["event"] == "logout everywhere"]
    assert (line["log_level"], line["user_id"], line["revoked"]) == ("info", ada.id, 3)
    assert all(t not in repr(logs) for t in (here, other_browser, api))


async def test_sign_out_everywhere_as_a_json_client(gw: Gateway) -> None:
    (here, other_browser, api), bob = await everyone_of_ada(gw)
    resp = await sign_out_everywhere(gw, here, JSON, rd="/bye")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert await resp.json() == {"status": "signed_out", "scope": "everywhere", "location": "/bye"}
    assert session_cookie_cleared(resp)
    assert [await alive(gw, t) for t in (here, other_browser, api, bob)] == [False, False, False, True]


@pytest.mark.parametrize(("form", "headers"), REFUSALS)
async def test_a_forged_sign_out_everywhere_revokes_nothing(gw: Gateway, form: dict[str, str],
                                                            headers: dict[str, str]) -> None:
    (here, other_browser, api), bob = await everyone_of_ada(gw)
    values = {"token": here, "hash": hash_token(here), "right": await csrf_token(gw, here),
              "other": await csrf_token(gw, bob)}
    data = {"scope": "everywhere", **{k: v.format(**values) for k, v in form.items()}}
    resp = await gw.client.post("/logout", data=data, headers=with_cookie(here, {**HTML, **headers}),
                                allow_redirects=False)
    assert resp.status == 403 and "Set-Cookie" not in resp.headers
    assert all([await alive(gw, t) for t in (here, other_browser, api, bob)])
    assert [a.event for a in await gw.store.list_audit()].count("revoke") == 0


async def test_an_api_token_cannot_sign_out_everywhere(gw: Gateway) -> None:
    """A leaked token must not be a way to end its owner's browser sessions: refused, nothing revoked."""
    (here, other_browser, api), _ = await everyone_of_ada(gw)
    with structlog.testing.capture_logs() as logs:
        resp = await gw.client.post("/logout", data={"scope": "everywhere"},
                                    headers={**JSON, "Authorization": f"Bearer {api}", "Cookie": f"{COOKIE}={here}"})
    assert resp.status == 403 and (await resp.json())["error"] == "forbidden"
    assert "Set-Cookie" not in resp.headers
    assert all([await alive(gw, t) for t in (here, other_browser, api)])
    assert [line["reason"] for line in logs if line["event"] == "logout refused"] == [
        "scope=everywhere with a bearer token"]


async def test_an_ended_session_cannot_sign_out_everywhere(gw: Gateway) -> None:
    """A stale tab, or an old cookie since revoked: it no longer speaks for the user."""
    (here, other_browser, api), _ = await everyone_of_ada(gw)
    data = {"csrf_token": await csrf_token(gw, here), "scope": "everywhere"}
    assert await revoke(gw, here)
    resp = await gw.client.post("/logout", data=data, headers=with_cookie(here, FROM_OUR_PAGE), allow_redirects=False)
    assert resp.status == 401
    assert "Sign in again, then choose Sign out everywhere" in await resp.text()
    assert await alive(gw, other_browser) and await alive(gw, api)
    no_cookie = await gw.client.post("/logout", data={"scope": "everywhere"}, headers=FROM_OUR_PAGE)
    assert no_cookie.status == 401


async def test_an_unknown_scope_is_refused(gw: Gateway) -> None:
    (here, other_browser, _), _ = await everyone_of_ada(gw)
    resp = await sign_out_everywhere(gw, here, scope="everwhere")
    assert resp.status == 400
    assert await alive(gw, here) and await alive(gw, other_browser)


@pytest.mark.postgres
async def test_a_second_replica_refuses_the_users_cached_sessions_within_a_second(
        gateway_factory: GatewayFactory, postgres_url: str) -> None:
    replicas = [await gateway_factory(database_url=postgres_url, **SETTINGS) for _ in range(2)]
    for replica in replicas:
        while replica.metric("gateway_revocation_feed_up") != 1:
            await asyncio.sleep(0.02)
    a, b = replicas
    (here, other_browser, api), bob = await everyone_of_ada(a)
    assert all([await alive(b, t) for t in (other_browser, api, bob)])  # cached by b
    assert (await sign_out_everywhere(a, here)).status == 303
    deadline = time.monotonic() + 1.0
    while await alive(b, other_browser) or await alive(b, api):
        assert time.monotonic() < deadline, "replica b still admits the user's sessions a second later"
        await asyncio.sleep(0.02)
    assert await alive(b, bob)


async def test_sign_out_everywhere_ends_the_upstream_session_too(
        gateway_factory: GatewayFactory, aiohttp_server: ServerFactory, browsers: BrowserFactory) -> None:
    """As a plain sign-out does: on to the provider's end-session endpoint, with the ID token as the hint."""
    oidc = await RecordingOIDC(users=[FakeUser(sub="user-ada", email="ada@example.com")]).start(aiohttp_server)
    gw = await gateway_factory(upstreams={"corp": oidc.config()}, public_url=BROWSERS_PUBLIC,
                               **{"cookie.secure": False, "session.sealing_key": new_key()})
    here, there = browsers(gw), browsers(gw)
    for browser in (here, there):
        assert (await browser.sign_in()).status == 302
    elsewhere = str(there.cookie(COOKIE))
    assert await alive(gw, elsewhere)
    csrf = (await (await here.get("/logout", headers=JSON)).json())["csrf_token"]
    resp = await here.session.post(gw.client.make_url("/logout"), data={"csrf_token": csrf, "scope": "everywhere"},
                                   headers=FROM_OUR_PAGE, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    location = resp.headers["Location"]
    assert location.startswith(f"{oidc.base}/logout?")
    assert parse_qs(urlsplit(location).query)["id_token_hint"] == [oidc.id_tokens[0]]
    assert not await alive(gw, elsewhere)
