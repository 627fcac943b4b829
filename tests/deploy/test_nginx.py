"""The gateway behind real nginx, configured from the very files users copy: deploy/nginx/*.conf.

Every request below goes through nginx to the echo app (or to the gateway's sign-in pages), so what is
asserted is what a deployment does: redirects, plain 401s, identity headers the app can trust, revocation,
the 403 page and keep-alive to the gateway under load.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.settings import Settings
from tests.deploy.stack import (
    COOKIE,
    NGINX_CONFIGS,
    REVOCATION_DEADLINE,
    SPOOFS,
    Stack,
    app_paths,
    assert_anonymous_api_call_gets_json_401,
    assert_anonymous_browser_sent_to_sign_in,
    assert_api_tokens_are_the_gateways,
    assert_back_channel_logouts_reach_the_gateway,
    assert_device_grant_is_the_gateways,
    assert_only_the_gateways_identity,
    assert_policy_deny_pages,
    assert_session_revoke_refuses_within_a_second,
    assert_sign_in_returns_to_the_page,
    assert_sign_out_refuses_the_cookie_at_once,
    http,
    metric_sum,
    named,
    prepare_nginx,
    raw_exchange,
    refused_within,
    render_site,
    seen_by_app,
    site_substitutions,
    start_nginx,
    start_stack,
)
from tests.helpers import free_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory.mktemp("nginx-stack")) as running:
        yield running


# ---- anonymous ------------------------------------------------------------------------------------------

def test_anonymous_browser_is_sent_to_sign_in_with_the_original_url(stack: Stack) -> None:
    assert_anonymous_browser_sent_to_sign_in(stack)  # nginx cannot URL-encode: the gateway does


def test_anonymous_api_call_gets_a_plain_json_401(stack: Stack) -> None:
    assert_anonymous_api_call_gets_json_401(stack)


def test_garbage_and_spoofed_headers_do_not_get_an_anonymous_caller_in(stack: Stack) -> None:
    spoofed = [("X-Auth-Request-User", "admin"), ("X-User", "admin"), ("Authorization", "Bearer gwt_" + "A" * 43),
               ("X-Original-URL", stack.url + "/login"), ("X-Original-URI", "/login")]
    assert stack.get("/api/items", spoofed, token="gwt_" + "B" * 43).status == 401
    assert stack.get("/dashboard", spoofed, browser=True).status == 302


def test_the_check_location_is_internal(stack: Stack) -> None:
    token = stack.gateway.mint("internal@example.com")
    assert stack.get("/_gateway/check", token=token).status == 404


# ---- signed in -------------------------------------------------------------------------------------------

def test_browser_sign_in_through_nginx_returns_to_the_page_with_a_session_cookie(stack: Stack) -> None:
    assert_sign_in_returns_to_the_page(stack)


def test_back_channel_logouts_reach_the_gateway_not_the_app(stack: Stack) -> None:
    assert_back_channel_logouts_reach_the_gateway(stack)


def test_the_app_sees_the_identity_headers_for_a_minted_token(stack: Stack) -> None:
    token = stack.gateway.mint("ada@example.com", "user", "editor")
    info = stack.get("/auth/userinfo", token=token).json()
    seen = seen_by_app(stack.get("/api/whoami", token=token))
    assert named(seen, "X-Auth-Request-User") == [info["username"] or info["email"]]
    assert named(seen, "X-Auth-Request-Email") == ["ada@example.com"]
    assert named(seen, "X-Auth-Request-Groups") == [",".join(info["roles"])]
    assert named(seen, "X-Auth-Request-User-Id") == [info["user_id"]]


def test_post_body_reaches_the_app_but_not_the_check(stack: Stack) -> None:
    token = stack.gateway.mint("poster@example.com")
    body = json.dumps({"name": "x" * 5000}).encode()
    reply = http("POST", stack.url + "/api/items", [("Cookie", f"{COOKIE}={token}"),
                                                    ("Content-Type", "application/json")], body)
    assert reply.status == 200
    echoed = reply.json()
    assert echoed["method"] == "POST" and echoed["body"] == body.decode()


@pytest.mark.parametrize("path", ["/dashboard", "/api/items"])
def test_client_sent_identity_headers_never_reach_the_app(stack: Stack, path: str) -> None:
    token = stack.gateway.mint("mallory@example.com")
    seen = seen_by_app(stack.get(path, SPOOFS, token=token, browser=path == "/dashboard"))
    assert_only_the_gateways_identity(seen, "mallory@example.com")


def test_client_cannot_redescribe_the_original_request_to_the_check(stack: Stack) -> None:
    token = stack.gateway.mint("sneaky@example.com")
    lies = [("X-Original-URL", stack.url + "/public"), ("X-Original-URI", "/public"),
            ("X-Forwarded-Uri", "/public"), ("X-Forwarded-Host", "elsewhere.example"),
            ("X-Original-Method", "OPTIONS"), ("X-Forwarded-Method", "OPTIONS")]
    assert stack.get("/forbidden/secrets", lies, token=token, browser=True).status == 403
    assert stack.get("/api/forbidden/secrets", lies, token=token).status == 403


@pytest.mark.parametrize("host", [
    "{site}:80#", "{site}:80?", "{site}:@other.example", "{site}:80@public.example.com", "{site}:#",
    "user@{site}", "{site}:80 ", "{site}:8o", "{site},{site}",
], ids=["port-hash", "port-query", "empty-port-userinfo", "port-userinfo-host", "colon-hash", "userinfo",
        "port-space", "port-letter", "comma-list"])
@pytest.mark.parametrize("path", ["/forbidden/secret", "/forbidden/x/..", "/forbidden/%2e", "/forbidden"])
def test_an_authority_that_is_not_host_and_port_never_reaches_a_denied_page(stack: Stack, host: str,
                                                                              path: str) -> None:
    """nginx picks the server from Host up to ":"; the gateway must not read another URL out of the rest."""
    token = stack.gateway.mint("host-tricks@example.com")
    before = len(stack.echo.requests())
    request = (f"GET {path} HTTP/1.1\r\nHost: {host.format(site='127.0.0.1')}\r\n"
               f"Cookie: {COOKIE}={token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n").encode()
    answer = raw_exchange(stack.nginx.port, request)
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
    assert not any(p.startswith("/forbidden") for p in app_paths(stack, before))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:1", "elsewhere.example"])
def test_an_absolute_form_request_line_never_lets_another_host_describe_it(stack: Stack, host: str) -> None:
    """nginx takes the site from an absolute-form request line; the check must not take it from Host."""
    token = stack.gateway.mint("absolute-form@example.com")
    before = len(stack.echo.requests())
    request = (f"GET http://127.0.0.1:{stack.nginx.port}/forbidden/secret HTTP/1.1\r\nHost: {host}\r\n"
               f"Cookie: {COOKIE}={token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n").encode()
    answer = raw_exchange(stack.nginx.port, request)
    status = answer.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 302 Moved Temporarily", b"HTTP/1.1 401 Unauthorized", b"HTTP/1.1 403 Forbidden"), \
        answer[:200]
    assert b"\r\nLocation: /login?" in answer or not status.endswith(b"Temporarily"), answer[:300]
    assert app_paths(stack, before) == []


@pytest.mark.parametrize("path", ["/forbidden", "/forbidden/", "/forbidden/x/..", "/forbidden/.", "/forbidden/%2e",
                                  "/forbidden/x/%2e%2e", "/forbidden/x/.%2E", "//forbidden/x", "/%66orbidden/x",
                                  "/forbidden;x/y", "/public/../forbidden/x", "/forbidden%2fx"])
def test_dot_segments_and_escapes_never_reach_a_denied_page(stack: Stack, path: str) -> None:
    token = stack.gateway.mint("paths@example.com")
    before = len(stack.echo.requests())
    reply = stack.get(path, token=token)
    assert reply.status in (400, 401, 403), (reply.status, reply.text)
    assert not any(p.startswith("/forbidden") for p in app_paths(stack, before))


# ---- policy deny -----------------------------------------------------------------------------------------

def test_policy_deny_shows_the_403_page_not_a_sign_in_loop(stack: Stack) -> None:
    assert_policy_deny_pages(stack)


# ---- logout and revocation ------------------------------------------------------------------------------

def test_logout_through_nginx_refuses_the_same_cookie_at_once(stack: Stack) -> None:
    assert_sign_out_refuses_the_cookie_at_once(stack)


def test_admin_token_revoke_refuses_the_cookie_within_a_second(stack: Stack) -> None:
    token = stack.gateway.mint("revoked@example.com")
    assert stack.get("/dashboard", token=token, browser=True).status == 200  # cached by the gateway now
    stack.gateway.cli("tokens", "revoke", "-", stdin=token + "\n")
    refused_within(stack, token, REVOCATION_DEADLINE, time.monotonic())


def test_admin_session_revoke_refuses_a_browser_session_within_a_second(stack: Stack) -> None:
    assert_session_revoke_refuses_within_a_second(stack)


# ---- the config itself -----------------------------------------------------------------------------------

def config_text() -> str:
    return (NGINX_CONFIGS / "protect-app.conf").read_text()


def test_the_config_copies_set_cookie_from_the_check() -> None:
    text = config_text()
    assert re.search(r"^\s*auth_request_set \$auth_cookie\s+\$upstream_http_set_cookie;", text, re.M)
    assert re.search(r"^\s*add_header Set-Cookie \$auth_cookie;", text, re.M)


def test_the_gateway_keeps_connections_longer_than_nginx() -> None:
    upstream = re.search(r"upstream gateway \{(.*?)\}", config_text(), re.S)
    assert upstream, "protect-app.conf has no `upstream gateway` block"
    nginx_timeout = re.search(r"^\s*keepalive_timeout (\d+)s;", upstream.group(1), re.M)
    assert nginx_timeout and re.search(r"^\s*keepalive \d+;", upstream.group(1), re.M)
    assert Settings().keepalive_timeout > int(nginx_timeout.group(1))


# ---- keep-alive under load -------------------------------------------------------------------------------

async def test_nginx_reuses_its_connections_to_the_gateway_under_load(stack: Stack) -> None:
    """Keep-alive to the gateway, and every check on its fast lane even after sign-ins went through
    nginx (the sign-in pages have their own upstream pool, so they never take over a check connection)."""
    token = await asyncio.to_thread(stack.gateway.mint, "load@example.com")
    for i in range(3):
        await asyncio.to_thread(stack.sign_in, f"pages{i}@example.com")
    requests, concurrency = 500, 20
    before = await asyncio.to_thread(stack.gateway.metrics)

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        async with session.get(f"{stack.url}/api/items/{i}", headers={"Cookie": f"{COOKIE}={token}"}) as resp:
            await resp.read()
            return resp.status

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        statuses = await asyncio.gather(*(one(session, i) for i in range(requests)))
    assert statuses == [200] * requests

    after = await asyncio.to_thread(stack.gateway.metrics)
    checks = (metric_sum(after, "gateway_checks_total", endpoint="check")
              - metric_sum(before, "gateway_checks_total", endpoint="check"))
    opened = (metric_sum(after, "gateway_connections_accepted_total")
              - metric_sum(before, "gateway_connections_accepted_total"))
    assert checks >= requests
    assert opened < 50, f"nginx opened {opened:.0f} connections to the gateway for {requests} checks"
    fast = (metric_sum(after, "gateway_fast_lane_requests_total")
            - metric_sum(before, "gateway_fast_lane_requests_total"))
    assert fast >= requests, f"only {fast:.0f} of {requests} checks were answered on the fast lane"
    assert metric_sum(after, "gateway_fast_lane_handovers_total") >= 3  # the sign-in pages
    assert "prematurely closed" not in stack.nginx.error_log()


# ---- Hasura behind nginx ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hasura_site(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """deploy/nginx/hasura.conf in front of the same gateway, the echo app standing in for Hasura."""
    port = free_port()
    text = render_site("hasura.conf", site_substitutions(listen_port=port, gateway_port=stack.gateway.port,
                                                          app_port=stack.echo.port))
    with start_nginx(tmp_path_factory.mktemp("nginx-hasura"), text, port) as nginx:
        yield nginx.url


def test_hasura_config_is_accepted_by_nginx(tmp_path: Path) -> None:
    text = render_site("hasura.conf", site_substitutions(listen_port=free_port(), gateway_port=free_port(),
                                                         app_port=free_port()))
    prepare_nginx(tmp_path, text)  # runs nginx -t


def test_hasura_site_serves_sign_in_and_proxies_graphql_with_the_cookie(stack: Stack, hasura_site: str) -> None:
    # The gateway's public_url is the protect-app site; here we only need /login to be the gateway's.
    start = http("GET", hasura_site + "/login?rd=/", [("Accept", "text/html")])
    assert start.status == 302 and "/login/dev/dev?state=" in (start.header("Location") or "")

    token = stack.gateway.mint("hasura@example.com")
    body = json.dumps({"query": "{ __typename }"}).encode()
    reply = http("POST", hasura_site + "/v1/graphql",
                 [("Cookie", f"{COOKIE}={token}"), ("Content-Type", "application/json"),
                  ("X-Hasura-Admin-Secret", "guessed"), ("X-Hasura-Role", "editor")], body)
    seen = seen_by_app(reply)
    assert reply.json()["path"] == "/v1/graphql"
    assert named(seen, "Cookie") == [f"{COOKIE}={token}"]      # Hasura forwards it to the webhook
    assert named(seen, "X-Hasura-Role") == ["editor"]          # the webhook decides whether to grant it
    assert named(seen, "X-Hasura-Admin-Secret") == []          # never from the public site
    assert named(seen, "Connection") == []                     # keep-alive to Hasura


async def test_hasura_site_passes_websocket_upgrades(stack: Stack, hasura_site: str) -> None:
    token = await asyncio.to_thread(stack.gateway.mint, "subscriber@example.com")
    async with (aiohttp.ClientSession() as session,
                session.ws_connect(hasura_site + "/v1/graphql", headers={"Cookie": f"{COOKIE}={token}"}) as ws):
        first = await asyncio.wait_for(ws.receive_json(), 10)
        seen = [(k, v) for k, v in first["headers"]]
        assert named(seen, "Upgrade") == ["websocket"]
        assert named(seen, "Connection") == ["upgrade"]
        assert named(seen, "Cookie") == [f"{COOKIE}={token}"]
        await ws.send_str("ping")
        assert await asyncio.wait_for(ws.receive_str(), 10) == "ping"


def test_people_mint_use_and_revoke_their_own_api_tokens_through_the_proxy(stack: Stack) -> None:
    assert_api_tokens_are_the_gateways(stack.url, lambda: [r["path"] for r in stack.echo.requests()])


def test_a_cli_signs_in_with_a_device_code_through_the_proxy(stack: Stack) -> None:
    assert_device_grant_is_the_gateways(stack.url, lambda: [r["path"] for r in stack.echo.requests()])
