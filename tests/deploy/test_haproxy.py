"""The gateway behind a REAL HAProxy, configured from the very files users copy: deploy/haproxy/.

HAProxy runs ``deploy/haproxy/haproxy.cfg`` (only its placeholders substituted) with
``deploy/haproxy/auth-request.lua``; every request goes through it to the recording echo app or to the
gateway's sign-in pages, and what is asserted is what the app received. A second HAProxy asks a fake
gateway that misbehaves on demand (5xx, hangs, odd statuses, identity headers twice) and records what the
check was sent; a third asks a gateway that is not there. Each of those must end in a 503, never in a
request reaching the app.

Needs the ``haproxy`` binary with Lua (Debian: ``apt-get install haproxy``); skipped without it, failed
under GATEWAY_TEST_STRICT=1.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.deploy.stack import (
    COOKIE,
    HAPROXY_CONFIGS,
    IDENTITY,
    SPOOFS,
    HAProxy,
    HAProxyStack,
    app_paths,
    assert_anonymous_api_call_gets_json_401,
    assert_anonymous_browser_sent_to_sign_in,
    assert_api_tokens_are_the_gateways,
    assert_back_channel_logouts_reach_the_gateway,
    assert_device_grant_is_the_gateways,
    assert_only_the_gateways_identity,
    assert_policy_deny_pages,
    assert_renewed_cookie_reaches_the_browser,
    assert_session_revoke_refuses_within_a_second,
    assert_sign_in_returns_to_the_page,
    assert_sign_out_refuses_the_cookie_at_once,
    http,
    metric_sum,
    named,
    raw_exchange,
    refresh_toml,
    render_haproxy,
    seen_by_app,
    start_haproxy,
    start_haproxy_stack,
)
from tests.helpers import free_port

FAIL_CLOSED_WITHIN = 6.0
"""Seconds until HAProxy answers 503 for a gateway that is down (~3 s: three retries a second apart) or
hangs (4 attempts of auth-request.lua's 1 s)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HAProxyStack]:
    with start_haproxy_stack(tmp_path_factory.mktemp("haproxy-stack")) as running:
        yield running


@pytest.fixture(scope="module")
def token(stack: HAProxyStack) -> str:
    """An API token the access rules let in everywhere but /forbidden/** and /api/forbidden/**."""
    return stack.gateway.mint("tricks@example.com")


def raw_get(port: int, target: str, host: str | None, token: str, *extra: str) -> bytes:
    """A GET as exact bytes (``host`` None sends no Host header), closing the connection after."""
    lines = [f"GET {target} HTTP/1.1", *([f"Host: {host}"] if host is not None else []), *extra,
             f"Cookie: {COOKIE}={token}", "Accept: application/json", "Connection: close"]
    return raw_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP answer (0 for no answer)."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


# ---- anonymous ------------------------------------------------------------------------------------------

def test_anonymous_browser_is_sent_to_sign_in_with_the_original_url(stack: HAProxyStack) -> None:
    assert_anonymous_browser_sent_to_sign_in(stack)


def test_anonymous_api_call_gets_a_plain_json_401(stack: HAProxyStack) -> None:
    before = len(stack.echo.requests())
    assert_anonymous_api_call_gets_json_401(stack)
    assert app_paths(stack, before) == []


def test_garbage_and_spoofed_headers_do_not_get_an_anonymous_caller_in(stack: HAProxyStack) -> None:
    spoofed = [*SPOOFS, ("Authorization", "Bearer gwt_" + "A" * 43), ("X-Original-URL", stack.url + "/login"),
               ("X-Original-URI", "/login"), ("X-Forwarded-Uri", "/login")]
    assert stack.get("/api/items", spoofed, token="gwt_" + "B" * 43).status == 401
    assert stack.get("/dashboard", spoofed, browser=True).status == 302


# ---- signed in -------------------------------------------------------------------------------------------

def test_browser_sign_in_through_haproxy_returns_to_the_page_with_a_session_cookie(stack: HAProxyStack) -> None:
    assert_sign_in_returns_to_the_page(stack)


def test_back_channel_logouts_reach_the_gateway_not_the_app(stack: HAProxyStack) -> None:
    assert_back_channel_logouts_reach_the_gateway(stack)


def test_the_app_sees_the_identity_the_gateway_answers(stack: HAProxyStack) -> None:
    token = stack.gateway.mint("ada@example.com", "user", "editor")
    check = http("GET", stack.gateway.url + "/auth/check", [("Authorization", f"Bearer {token}")])
    assert check.status == 200
    for credential in (("Cookie", f"theme=dark; {COOKIE}={token}"), ("Authorization", f"Bearer {token}")):
        reply = stack.get("/api/whoami?x=1", [credential])
        seen = seen_by_app(reply)
        assert (reply.json()["method"], reply.json()["path"], reply.json()["query"]) == ("GET", "/api/whoami", "x=1")
        for name in IDENTITY:
            assert named(seen, name) == [check.header(name)], name
        assert named(seen, "X-Forwarded-For") == ["127.0.0.1"]


def test_post_body_and_method_reach_the_app_but_not_the_check(stack: HAProxyStack) -> None:
    token = stack.gateway.mint("poster@example.com")
    body = json.dumps({"name": "x" * 5000}).encode()
    for method in ("POST", "PUT", "DELETE"):
        reply = http(method, stack.url + "/api/items", [("Cookie", f"{COOKIE}={token}"),
                                                        ("Content-Type", "application/json")], body)
        assert reply.status == 200, (method, reply.status, reply.text)
        assert (reply.json()["method"], reply.json()["body"]) == (method, body.decode())


@pytest.mark.parametrize("path", ["/dashboard", "/api/items"])
def test_client_sent_identity_headers_never_reach_the_app(stack: HAProxyStack, path: str) -> None:
    token = stack.gateway.mint("mallory@example.com")
    # oauth2-proxy's other names too: an app moved from it may still read them
    others = [("X-Auth-Request-Preferred-Username", "SPOOFED-admin"), ("X-Auth-Request-Access-Token", "SPOOFED")]
    seen = seen_by_app(stack.get(path, [*SPOOFS, *others], token=token, browser=path == "/dashboard"))
    assert_only_the_gateways_identity(seen, "mallory@example.com")


def test_client_sent_forwarded_headers_never_reach_the_app(stack: HAProxyStack) -> None:
    token = stack.gateway.mint("forwarded@example.com")
    sent = [("X-Forwarded-Host", "evil.example"), ("X-Forwarded-For", "203.0.113.9"), ("X-Real-IP", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"), ("X-Original-URL", "http://evil.example/"), ("X-Request-ID", "mine"),
            ("X-Rewrite-URL", "/forbidden/x"), ("Forwarded", "for=203.0.113.9;host=evil.example;proto=https")]
    seen = seen_by_app(stack.get("/dashboard", sent, token=token))
    assert named(seen, "X-Forwarded-For") == ["127.0.0.1"] and named(seen, "X-Real-IP") == ["127.0.0.1"]
    assert named(seen, "X-Forwarded-Proto") == ["http"]
    for name in ("X-Forwarded-Host", "X-Original-URL", "X-Rewrite-URL", "Forwarded"):
        assert named(seen, name) == [], name
    assert len(named(seen, "X-Request-ID")) == 1 and named(seen, "X-Request-ID") != ["mine"]


def test_client_cannot_redescribe_the_original_request_to_the_check(stack: HAProxyStack) -> None:
    token = stack.gateway.mint("sneaky@example.com")
    lies = [("X-Original-URL", stack.url + "/public"), ("X-Original-URI", "/public"),
            ("X-Forwarded-Uri", "/public"), ("X-Forwarded-Host", "elsewhere.example"),
            ("X-Original-Method", "OPTIONS"), ("X-Forwarded-Method", "OPTIONS"), ("X_Forwarded_Uri", "/public")]
    before = len(stack.echo.requests())
    assert stack.get("/forbidden/secrets", lies, token=token, browser=True).status == 403
    assert stack.get("/api/forbidden/secrets", lies, token=token).status == 403
    assert app_paths(stack, before) == []


def test_a_method_override_naming_another_method_is_refused(stack: HAProxyStack) -> None:
    token = stack.gateway.mint("override@example.com")
    before = len(stack.echo.requests())
    reply = stack.get("/api/items", [("X-HTTP-Method-Override", "DELETE")], token=token)
    assert reply.status == 401  # the gateway refuses a check it cannot judge as the app would run it
    assert app_paths(stack, before) == []
    assert stack.get("/api/items", [("X-HTTP-Method-Override", "GET")], token=token).status == 200


# ---- Host, request line, paths, framing -----------------------------------------------------------------

@pytest.mark.parametrize("host", [
    "{site}:80#", "{site}:80?", "{site}:@other.example", "{site}:80@public.example.com", "{site}:#",
    "user@{site}", "{site}:8o", "{site},{site}", "{site}:99999", "",
], ids=["port-hash", "port-query", "empty-port-userinfo", "port-userinfo-host", "colon-hash", "userinfo",
        "port-letter", "comma-list", "port-out-of-range", "empty"])
@pytest.mark.parametrize("path", ["/forbidden/secret", "/forbidden/x/..", "/forbidden/%2e", "/forbidden"])
def test_an_authority_that_is_not_host_and_port_never_reaches_a_denied_page(stack: HAProxyStack, token: str, host: str,
                                                                              path: str) -> None:
    before = len(stack.echo.requests())
    answer = raw_get(stack.haproxy.port, path, host.format(site="127.0.0.1"), token)
    assert status_of(answer) in (302, 400, 401, 403), answer[:200]
    assert not any(p.startswith("/forbidden") for p in app_paths(stack, before))


@pytest.mark.parametrize(("hosts", "status"), [
    ([], 400),                                                   # HTTP/1.1 without Host
    ([""], 400),                                                 # an empty one: no site at all
    (["127.0.0.1", "localhost"], 400),                           # two sites at once
    (["127.0.0.1", "127.0.0.1"], 403),                           # the same one twice: one Host, judged
], ids=["none", "empty", "two-different", "two-same"])
def test_a_request_must_name_exactly_one_site(stack: HAProxyStack, token: str, hosts: list[str], status: int) -> None:
    before = len(stack.echo.requests())
    answer = raw_get(stack.haproxy.port, "/forbidden/x", None, token, *(f"Host: {h}" for h in hosts))
    assert status_of(answer) == status, answer[:200]
    assert app_paths(stack, before) == []


def test_an_http_1_0_request_without_host_is_refused(stack: HAProxyStack, token: str) -> None:
    before = len(stack.echo.requests())
    answer = raw_exchange(stack.haproxy.port, f"GET /dashboard HTTP/1.0\r\nCookie: {COOKIE}={token}\r\n\r\n".encode())
    assert status_of(answer) == 400, answer[:200]
    assert app_paths(stack, before) == []


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:1", "elsewhere.example"])
def test_an_absolute_form_request_line_naming_another_host_is_refused(stack: HAProxyStack, token: str,
                                                                      host: str) -> None:
    before = len(stack.echo.requests())
    answer = raw_get(stack.haproxy.port, f"http://127.0.0.1:{stack.haproxy.port}/dashboard", host, token)
    assert status_of(answer) == 400, answer[:200]
    assert app_paths(stack, before) == []


@pytest.mark.parametrize("authority", ["{site}", "u@{site}", "{upper}"], ids=["plain", "userinfo", "upper-case"])
def test_an_absolute_form_request_line_reaches_the_app_as_the_path_the_gateway_judged(stack: HAProxyStack, token: str,
                                                                                    authority: str) -> None:
    site = f"127.0.0.1:{stack.haproxy.port}"
    target = "http://" + authority.format(site=site, upper=f"LOCALHOST:{stack.haproxy.port}")
    host = f"localhost:{stack.haproxy.port}" if "upper" in authority else site
    before = len(stack.echo.requests())
    assert status_of(raw_get(stack.haproxy.port, target + "/forbidden/x", host, token)) == 403
    answer = raw_get(stack.haproxy.port, target + "/docs/a?b=c", host, token)
    assert status_of(answer) == 200, answer[:300]
    assert [entry["raw"] for entry in stack.echo.requests()[before:]] == ["/docs/a?b=c"]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["headers"][0] == ["host", host]


@pytest.mark.parametrize("path", ["/forbidden", "/forbidden/", "/forbidden/x/..", "/forbidden/.", "/forbidden/%2e",
                                  "/forbidden/x/%2e%2e", "/forbidden/x/.%2E", "//forbidden/x", "/%66orbidden/x",
                                  "/forbidden;x/y", "/public/../forbidden/x", "/forbidden%2fx",
                                  "/public/..%2fforbidden", "/public/..;/forbidden/x", "/public\\..\\forbidden\\x",
                                  "/forbidden/x?/../../ok",
                                  "/login/../forbidden/x", "/forbidden%00/x"])
def test_dot_segments_and_escapes_never_reach_a_denied_page(stack: HAProxyStack, token: str, path: str) -> None:
    before = len(stack.echo.requests())
    answer = raw_get(stack.haproxy.port, path, "127.0.0.1", token)
    assert status_of(answer) in (302, 400, 401, 403, 404), answer[:200]
    assert not any("forbidden" in p for p in app_paths(stack, before))


def test_a_smuggled_request_is_checked_on_its_own(stack: HAProxyStack) -> None:
    """Content-Length and Transfer-Encoding at once: HAProxy goes by the chunks, so the bytes after the last
    chunk are a request of their own, checked like any other (it carries no session: refused)."""
    token = stack.gateway.mint("smuggler@example.com")
    smuggled = "GET /forbidden/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
    body = "0\r\n\r\n" + smuggled
    outer = (f"POST /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {COOKIE}={token}\r\n"
             f"Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
    before = len(stack.echo.requests())
    answer = raw_exchange(stack.haproxy.port, outer.encode())
    assert not any(p.startswith("/forbidden") for p in app_paths(stack, before)), answer[:400]
    # a chunked body on its own reaches the app whole
    chunked = (f"POST /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {COOKIE}={token}\r\n"
               "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    answer = raw_exchange(stack.haproxy.port, chunked.encode())
    assert status_of(answer) == 200 and json.loads(answer.partition(b"\r\n\r\n")[2])["body"] == "hello", answer


# ---- policy deny -----------------------------------------------------------------------------------------

def test_policy_deny_shows_the_403_page_not_a_sign_in_loop(stack: HAProxyStack) -> None:
    assert_policy_deny_pages(stack)


# ---- logout and revocation ------------------------------------------------------------------------------

def test_logout_through_haproxy_refuses_the_same_cookie_at_once(stack: HAProxyStack) -> None:
    assert_sign_out_refuses_the_cookie_at_once(stack)


def test_admin_session_revoke_refuses_a_browser_session_within_a_second(stack: HAProxyStack) -> None:
    assert_session_revoke_refuses_within_a_second(stack)


# ---- the gateway down, slow or odd: fail closed -----------------------------------------------------------

@dataclass
class FakeGateway:
    """A check endpoint that answers as the original request's path says, recording what it was sent."""

    port: int
    asked: list[dict[str, list[str]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


FAKE_SESSION_COOKIE = f"{COOKIE}=fake-renewed; HttpOnly; Max-Age=5; Path=/; SameSite=Lax"
FAKE_COOKIES = {
    "session": [FAKE_SESSION_COOKIE],
    "other": ["tracker=1; Path=/"],
    "mixed": ["tracker=1; Path=/", FAKE_SESSION_COOKIE],
    "two": [FAKE_SESSION_COOKIE, f"{COOKIE}=another; Max-Age=5; Path=/"],
    "lookalike": [f"{COOKIE}x=1; Path=/"],
}
"""The fake gateway's Set-Cookie lines for /fake/<status>/<kind>/...: which one HAProxy passes is tested."""


def _fake_handler(fake: FakeGateway) -> type[BaseHTTPRequestHandler]:
    class Answer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            headers: dict[str, list[str]] = {}
            for name, value in self.headers.items():
                headers.setdefault(name.lower(), []).append(value)
            headers[":target"] = [self.path]
            fake.asked.append(headers)
            how = (self.headers.get("X-Forwarded-Uri") or "").split("/")[2:3] or [""]
            if how[0] == "hang":
                time.sleep(FAIL_CLOSED_WITHIN + 2)
            if how[0] == "close":
                self.close_connection = True
                return
            status = int(how[0]) if how[0].isdigit() else 200
            self.send_response(status)
            for name in IDENTITY:
                self.send_header(name, "fake-admin")
            if how[0] == "twice":
                self.send_header("X-Auth-Request-User", "fake-other")
            kind = (self.headers.get("X-Forwarded-Uri") or "").split("?")[0].split("/")[3:4] or [""]
            for cookie in FAKE_COOKIES.get(kind[0], ()):
                self.send_header("Set-Cookie", cookie)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Answer


@contextlib.contextmanager
def serve_fake_gateway() -> Iterator[FakeGateway]:
    fake = FakeGateway(free_port())
    server = ThreadingHTTPServer(("127.0.0.1", fake.port), _fake_handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-gateway", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def odd(stack: HAProxyStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HAProxy, FakeGateway]]:
    """HAProxy with the shipped config, checking with the fake gateway (the app is the stack's echo app)."""
    with serve_fake_gateway() as fake:
        port = free_port()
        config = render_haproxy(listen_port=port, gateway_url=fake.url, gateway_port=fake.port,
                                app_port=stack.echo.port)
        with start_haproxy(tmp_path_factory.mktemp("haproxy-odd"), config, port) as haproxy:
            yield haproxy, fake


@pytest.fixture(scope="module")
def no_gateway(stack: HAProxyStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HAProxy]:
    """HAProxy with the shipped config and no gateway where it points."""
    port, dead = free_port(), free_port()
    config = render_haproxy(listen_port=port, gateway_url=f"http://127.0.0.1:{dead}", gateway_port=dead,
                            app_port=stack.echo.port)
    with start_haproxy(tmp_path_factory.mktemp("haproxy-down"), config, port) as haproxy:
        yield haproxy


def test_the_check_is_sent_the_request_as_the_app_gets_it_and_nothing_the_client_made_up(
        stack: HAProxyStack, odd: tuple[HAProxy, FakeGateway]) -> None:
    haproxy, fake = odd
    sent = [("Cookie", f"{COOKIE}=abc"), ("Authorization", "Bearer xyz"), ("Accept", "text/html"),
            ("X-Requested-With", "XMLHttpRequest"), ("X-HTTP-Method-Override", "PATCH"), ("User-Agent", "probe"),
            ("X-Original-URL", "http://evil.example/"), ("X-Original-Method", "GET"), ("X-Forwarded-Uri", "/x"),
            ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Method", "GET"), ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-For", "203.0.113.9"), ("X-Real-IP", "203.0.113.9")]
    before = len(fake.asked)
    reply = http("DELETE", haproxy.url + "/fake/ok/a%2e?q=1&r=%26", sent, b"{}")
    assert reply.status == 200, reply.text
    assert reply.json()["path"] == "/fake/ok/a." and named(seen_by_app(reply), "X-Auth-Request-User") == ["fake-admin"]
    [asked] = fake.asked[before:]
    assert asked.pop(":target") == ["/auth/check"]
    assert asked.pop("x-request-id")[0] == named(seen_by_app(reply), "X-Request-ID")[0]
    assert asked == {
        "host": [f"127.0.0.1:{fake.port}"], "user-agent": ["HAProxy"],  # the HTTP client's own
        "cookie": [f"{COOKIE}=abc"], "authorization": ["Bearer xyz"], "accept": ["text/html"],
        "x-requested-with": ["XMLHttpRequest"], "x-http-method-override": ["PATCH"],
        "x-forwarded-method": ["DELETE"], "x-forwarded-proto": ["http"],
        "x-forwarded-host": [f"127.0.0.1:{haproxy.port}"], "x-forwarded-uri": ["/fake/ok/a%2e?q=1&r=%26"],
        "x-forwarded-for": ["127.0.0.1"], "x-real-ip": ["127.0.0.1"],
    }


@pytest.mark.parametrize("how", ["500", "502", "503", "504", "201", "204", "302", "404", "407", "twice", "close"])
def test_anything_but_a_clean_200_from_the_check_is_a_503(stack: HAProxyStack, odd: tuple[HAProxy, FakeGateway],
                                                          how: str) -> None:
    haproxy, _ = odd
    before = len(stack.echo.requests())
    for browser in (True, False):
        reply = http("GET", f"{haproxy.url}/fake/{how}/page",
                     [("Accept", "text/html" if browser else "application/json")])
        assert reply.status == 503, (how, reply.status, reply.text)
        assert reply.header("Cache-Control") == "no-store"
    assert app_paths(stack, before) == []


def test_a_hung_gateway_is_a_503_within_seconds(stack: HAProxyStack, odd: tuple[HAProxy, FakeGateway]) -> None:
    haproxy, _ = odd
    before = len(stack.echo.requests())
    started = time.monotonic()
    reply = http("GET", f"{haproxy.url}/fake/hang/page", [("Accept", "text/html")], timeout=FAIL_CLOSED_WITHIN + 5)
    assert reply.status == 503
    assert time.monotonic() - started < FAIL_CLOSED_WITHIN
    assert app_paths(stack, before) == []


def test_a_gateway_that_is_down_is_a_503_and_its_pages_too(stack: HAProxyStack, no_gateway: HAProxy) -> None:
    token = stack.gateway.mint("nobody-home@example.com")
    before = len(stack.echo.requests())
    started = time.monotonic()
    reply = http("GET", no_gateway.url + "/dashboard", [("Cookie", f"{COOKIE}={token}")])
    assert reply.status == 503 and time.monotonic() - started < FAIL_CLOSED_WITHIN
    assert http("GET", no_gateway.url + "/login?rd=/", [("Accept", "text/html")]).status == 503
    assert app_paths(stack, before) == []


def test_haproxy_keeps_its_connections_to_the_gateway_open(stack: HAProxyStack, token: str) -> None:
    """HAProxy's HTTP client reuses its connections: checks do not cost a TCP handshake each, and all of
    them are answered on the gateway's fast lane."""
    before = stack.gateway.metrics()
    for i in range(100):
        assert stack.get(f"/api/items/{i}", token=token).status == 200
    after = stack.gateway.metrics()
    opened = (metric_sum(after, "gateway_connections_accepted_total")
              - metric_sum(before, "gateway_connections_accepted_total"))
    fast = (metric_sum(after, "gateway_fast_lane_requests_total")
            - metric_sum(before, "gateway_fast_lane_requests_total"))
    assert opened < 10, f"HAProxy opened {opened:.0f} connections to the gateway for 100 checks"
    assert fast >= 100


def test_a_failing_lua_action_is_a_503(stack: HAProxyStack, tmp_path: Path) -> None:
    """The HTTP client cannot even start (a check URL that is no URL): the action fails, the app is not asked."""
    token = stack.gateway.mint("lua-error@example.com")
    port = free_port()
    config = render_haproxy(listen_port=port, gateway_url="not-a-url", gateway_port=stack.gateway.port,
                            app_port=stack.echo.port)
    before = len(stack.echo.requests())
    with start_haproxy(tmp_path, config, port) as haproxy:
        assert http("GET", haproxy.url + "/dashboard", [("Cookie", f"{COOKIE}={token}")]).status == 503
        assert "auth_request: asking the gateway failed" in haproxy.log_text()
    assert app_paths(stack, before) == []


# ---- the config itself -----------------------------------------------------------------------------------

def test_the_shipped_config_names_each_placeholder_once() -> None:
    render_haproxy(listen_port=1, gateway_url="http://127.0.0.1:2", gateway_port=2, app_port=3)
    text = (HAPROXY_CONFIGS / "haproxy.cfg").read_text()
    code = [line.split("#", 1)[0] for line in text.splitlines()]
    assert "option http-restrict-req-hdr-names delete" in "\n".join(code)
    assert not any("normalize-uri" in line for line in code)  # the app must get the path the gateway judged


def test_sign_in_form_posts_and_userinfo_go_to_the_gateway_not_the_app(stack: HAProxyStack) -> None:
    before = len(stack.echo.requests())
    for path in ("/login?rd=/", "/login/dev/dev", "/callback/dev?" + urlencode({"state": "x"}), "/logout",
                 "/auth/userinfo", "/logout/"):
        stack.get(path, browser=True)
    assert app_paths(stack, before) == []
    assert stack.get("/loginx", token=stack.gateway.mint("pages@example.com")).status == 200  # the app's


def test_paths_reach_the_app_as_sent_so_as_the_check_saw_them(stack: HAProxyStack, token: str) -> None:
    """HAProxy normalises nothing (the check is sent the same path: see the fake gateway's record above)."""
    before = len(stack.echo.requests())
    for path in ("/a/./b", "/a/%2e/c", "/a//d", "/e;x"):
        stack.get(path, token=token)
    assert [entry["raw"] for entry in stack.echo.requests()[before:]] == ["/a/./b", "/a/%2e/c", "/a//d", "/e;x"]


def test_people_mint_use_and_revoke_their_own_api_tokens_through_the_proxy(stack: HAProxyStack) -> None:
    assert_api_tokens_are_the_gateways(stack.url, lambda: [r["path"] for r in stack.echo.requests()])


def test_a_cli_signs_in_with_a_device_code_through_the_proxy(stack: HAProxyStack) -> None:
    assert_device_grant_is_the_gateways(stack.url, lambda: [r["path"] for r in stack.echo.requests()])


@pytest.fixture(scope="module")
def refreshing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HAProxyStack]:
    """The same stack, its gateway renewing sessions (session.refresh)."""
    with start_haproxy_stack(tmp_path_factory.mktemp("haproxy-refresh"), extra_toml=refresh_toml()) as running:
        yield running


def test_a_renewed_sessions_cookie_reaches_the_browser_and_only_from_an_allowed_check(
        refreshing: HAProxyStack) -> None:
    assert_renewed_cookie_reaches_the_browser(refreshing.url, refreshing.directory / "gateway.db",
                                              email="renewed@example.com", forbidden_path="/forbidden/page")


@pytest.mark.parametrize(("how", "kind", "passed"), [
    ("200", "session", [FAKE_SESSION_COOKIE]),
    ("200", "mixed", [FAKE_SESSION_COOKIE]),
    ("200", "other", []),
    ("200", "lookalike", []),
    ("200", "two", []),  # ambiguous: neither
    ("401", "session", []),
    ("403", "session", []),
    ("500", "session", []),
])
def test_only_an_allowed_checks_one_session_cookie_reaches_the_client(
        stack: HAProxyStack, odd: tuple[HAProxy, FakeGateway], how: str, kind: str, passed: list[str]) -> None:
    haproxy, _ = odd
    for accept in ("text/html", "application/json"):
        reply = http("GET", f"{haproxy.url}/fake/{how}/{kind}/page",
                     [("Accept", accept), ("Set-Cookie", f"{COOKIE}=from-the-client; Max-Age=99999")])
        assert reply.status == {"200": 200, "401": 302, "403": 403}.get(how, 503)  # the path is not under /api/
        assert reply.all("Set-Cookie") == passed, (how, kind, reply.headers)
