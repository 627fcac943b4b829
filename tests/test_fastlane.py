"""The fast lane over raw sockets: framing, pipelining, hand-over to aiohttp, timeouts, and parity.

Every test talks bytes to a real listening socket served by ``gateway.serving.server.front_end``. The parity
table sends the same raw requests to a gateway with the fast lane and to one without it (aiohttp
alone) and requires the same status and identity headers from both.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import pytest

from gateway.facts import RequestFacts
from gateway.handlers.check import IDENTITY_HEADERS
from gateway.models import ActiveSession
from tests.harness import Gateway, GatewayFactory


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """One HTTP/1.x response with a Content-Length body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("utf-8").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body)


async def open_raw(gw: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = gw.client.make_url("/")
    assert url.host is not None and url.port is not None
    return await asyncio.open_connection(url.host, url.port)


async def exchange(gw: Gateway, raw: bytes, count: int = 1) -> list[Answer]:
    """Send ``raw`` on a new connection and read ``count`` answers."""
    reader, writer = await open_raw(gw)
    try:
        writer.write(raw)
        return [await read_answer(reader) for _ in range(count)]
    finally:
        writer.close()


def get(path: str, token: str = "", extra: str = "", version: str = "1.1") -> bytes:
    cookie = f"Cookie: gw_session={token}\r\n" if token else ""
    return f"GET {path} HTTP/{version}\r\nHost: gw\r\n{cookie}{extra}\r\n".encode()


def post_webhook(token: str, *, chunked: bool = False) -> bytes:
    body = json.dumps({"headers": {"Cookie": f"gw_session={token}"}, "request": None}).encode()
    if chunked:
        half = len(body) // 2
        framed = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
        return b"POST /auth/webhook HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + framed
    return (b"POST /auth/webhook HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


async def test_answers_come_from_the_fast_lane(gw: Gateway) -> None:
    token = await gw.token()
    check, webhook = await exchange(gw, get("/auth/check", token) + get("/auth/webhook", token), 2)
    assert check.status == 200 and check.headers["server"].startswith("forward-auth-gateway/")
    assert check.headers["x-auth-request-email"] == "ada@example.com"
    assert webhook.status == 200 and json.loads(webhook.body)["X-Hasura-User-Id"] == str(gw.users["ada@example.com"].id)
    assert "date" in check.headers and check.headers["content-length"] == "0"


async def test_pipelined_requests_are_answered_in_order_even_when_the_first_waits_for_the_database(
        gw: Gateway) -> None:
    slow, fast = await gw.token("slow@example.com"), await gw.token("fast@example.com")
    [warm] = await exchange(gw, get("/auth/check", fast))
    assert warm.status == 200
    gw.flush_cache()
    await exchange(gw, get("/auth/check", fast))  # cache `fast` again; `slow` stays a miss
    raw = get("/auth/check", slow) + get("/auth/check", fast) + get("/auth/check", "gwt_" + "A" * 43) + \
        get("/auth/check")
    answers = await exchange(gw, raw, 4)
    assert [a.status for a in answers] == [200, 200, 401, 401]
    assert [a.headers["x-auth-request-email"] for a in answers[:2]] == ["slow@example.com", "fast@example.com"]


async def test_a_request_split_into_single_bytes_is_answered(gw: Gateway) -> None:
    token = await gw.token()
    reader, writer = await open_raw(gw)
    for raw in (get("/auth/check", token), post_webhook(token)):
        for i in range(len(raw)):
            writer.write(raw[i:i + 1])
            await writer.drain()
        answer = await read_answer(reader)
        assert answer.status == 200
    writer.close()


async def test_other_paths_are_handed_to_aiohttp_which_then_keeps_the_connection(gw: Gateway) -> None:
    token = await gw.token()
    raw = get("/auth/check", token) + get("/healthz") + get("/auth/check", token) + get("/nowhere")
    first, health, again, missing = await exchange(gw, raw, 4)
    assert first.status == 200 and first.headers["server"].startswith("forward-auth-gateway/")
    assert health.status == 200 and "aiohttp" in health.headers["server"]
    assert again.status == 200 and again.headers["x-auth-request-email"] == "ada@example.com"
    assert "aiohttp" in again.headers["server"]
    assert missing.status == 404


@pytest.mark.parametrize(("name", "raw", "status"), [
    ("chunked webhook body", None, 411),
    ("duplicate content-length", b"POST /auth/webhook HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n"
                                 b"Content-Length: 3\r\n\r\n{}", 400),
    ("signed content-length", b"POST /auth/webhook HTTP/1.1\r\nHost: gw\r\nContent-Length: +2\r\n\r\n{}", 400),
    ("webhook body over the limit", b"POST /auth/webhook HTTP/1.1\r\nHost: gw\r\n"
                                    b"Content-Length: 99999999\r\n\r\n", 413),
    ("webhook with another method", b"PUT /auth/webhook HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n", 405),
    ("space before colon", b"GET /auth/check HTTP/1.1\r\nHost : gw\r\n\r\n", 400),
    ("obsolete line folding", b"GET /auth/check HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n  2\r\n\r\n", 400),
    ("bare LF line ends", b"GET /auth/check HTTP/1.1\nHost: gw\n\n", 400),
    ("bare LF ending the head", b"GET /auth/check HTTP/1.1\r\nHost: gw\n\n", 400),
    ("non-UTF-8 cookie bytes", b"GET /auth/check HTTP/1.1\r\nHost: gw\r\nCookie: gw_session=\xff\xfe\r\n\r\n", 401),
    ("UTF-8 header value", "GET /auth/check HTTP/1.1\r\nHost: gw\r\nX-Name: José\r\n\r\n".encode(), 401),
    ("header line over max_header_bytes", b"GET /auth/check HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 20000
                                          + b"\r\n\r\n", 400),
    ("percent-encoded check path", b"GET /auth/%63heck HTTP/1.1\r\nHost: gw\r\n\r\n", 401),
    ("check path prefix of another", b"GET /auth/checkpoint HTTP/1.1\r\nHost: gw\r\n\r\n", 404),
    ("absolute-form target", b"GET http://gw/auth/check HTTP/1.1\r\nHost: gw\r\n\r\n", 401),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
])
async def test_requests_outside_the_strict_subset_get_aiohttps_answer(gw: Gateway, name: str, raw: bytes | None,
                                                                      status: int) -> None:
    token = await gw.token()
    if raw is None:
        raw = post_webhook(token, chunked=True)
    [answer] = await exchange(gw, raw)
    assert answer.status == status, name
    assert "aiohttp" in answer.headers.get("server", ""), name


async def test_http_1_0_is_served_and_closed_unless_kept_alive(gw: Gateway) -> None:
    token = await gw.token()
    reader, writer = await open_raw(gw)
    writer.write(get("/auth/check", token, version="1.0"))
    answer = await read_answer(reader)
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()

    reader, writer = await open_raw(gw)
    raw = get("/auth/check", token, "Connection: keep-alive\r\n", version="1.0")
    writer.write(raw + raw)
    answers = [await read_answer(reader), await read_answer(reader)]
    assert [a.headers["connection"] for a in answers] == ["keep-alive", "keep-alive"]
    writer.close()


async def test_connection_close_is_honoured(gw: Gateway) -> None:
    token = await gw.token()
    reader, writer = await open_raw(gw)
    writer.write(get("/auth/check", token, "Connection: close\r\n") + get("/auth/check", token))
    answer = await read_answer(reader)
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the pipelined second request is never answered
    writer.close()


async def test_idle_and_stalled_connections_are_closed_after_the_keepalive_timeout(
        gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(keepalive_timeout="1s")
    token = await gw.token()
    idle_reader, idle_writer = await open_raw(gw)
    idle_writer.write(get("/auth/check", token))
    assert (await read_answer(idle_reader)).status == 200
    stalled_reader, stalled_writer = await open_raw(gw)
    stalled_writer.write(b"GET /auth/check HTTP/1.1\r\nHost: gw\r\nCookie: gw_se")
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""
    assert await asyncio.wait_for(stalled_reader.read(), 5) == b""
    idle_writer.close()
    stalled_writer.close()


async def test_a_client_that_half_closes_still_gets_its_answer(gw: Gateway) -> None:
    token = await gw.token()
    gw.flush_cache()
    reader, writer = await open_raw(gw)
    writer.write(get("/auth/check", token))
    writer.write_eof()
    answer = await read_answer(reader)
    assert answer.status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_many_pipelined_cached_checks_in_one_write(gw: Gateway) -> None:
    token = await gw.token()
    await exchange(gw, get("/auth/check", token))
    answers = await exchange(gw, get("/auth/check", token) * 500, 500)
    assert {a.status for a in answers} == {200}
    assert gw.metric("gateway_checks_total", endpoint="check", outcome="allow") == 501


_PARITY = [
    ("plain cached", "GET /auth/check HTTP/1.1\r\nHost: gw\r\nCookie: gw_session={token}\r\n\r\n"),
    ("bearer", "GET /auth/check HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n"),
    ("bearer wins over cookie", "GET /auth/check HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer gwt_x\r\n"
                                "Cookie: gw_session={token}\r\n\r\n"),
    ("no credential", "GET /auth/check HTTP/1.1\r\nHost: gw\r\n\r\n"),
    ("unknown token", "GET /auth/check HTTP/1.1\r\nHost: gw\r\nCookie: gw_session=gwt_" + "B" * 43 + "\r\n\r\n"),
    ("cookie names in any case", "GET /auth/check HTTP/1.1\r\nHost: gw\r\ncOOKIE: gw_session={token}\r\n\r\n"),
    ("two cookie headers", "GET /auth/check HTTP/1.1\r\nHost: gw\r\nCookie: a=b\r\nCookie: gw_session={token}\r\n\r\n"),
    ("redirect mode, browser", "GET /auth/check?mode=redirect HTTP/1.1\r\nHost: gw\r\nAccept: text/html\r\n"
                               "X-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example.com\r\n"
                               "X-Forwarded-Uri: /a?b=c\r\n\r\n"),
    ("redirect mode, API", "GET /auth/check?mode=redirect HTTP/1.1\r\nHost: gw\r\nAccept: application/json\r\n\r\n"),
    ("both forwarded families", "GET /auth/check HTTP/1.1\r\nHost: gw\r\nCookie: gw_session={token}\r\n"
                                "X-Original-URI: /a\r\nX-Forwarded-Uri: /b\r\n\r\n"),
    ("envoy path", "POST /auth/check/some/path?q=1 HTTP/1.1\r\nHost: app\r\nCookie: gw_session={token}\r\n"
                   "Content-Length: 0\r\n\r\n"),
    ("envoy path with body", "PUT /auth/check/x HTTP/1.1\r\nHost: app\r\nCookie: gw_session={token}\r\n"
                             "Content-Length: 5\r\n\r\nhello"),
    ("envoy bad encoding", "GET /auth/check/%ff HTTP/1.1\r\nHost: app\r\nCookie: gw_session={token}\r\n\r\n"),
    ("webhook GET", "GET /auth/webhook HTTP/1.1\r\nHost: gw\r\nCookie: gw_session={token}\r\n\r\n"),
    ("webhook GET, role not held", "GET /auth/webhook HTTP/1.1\r\nHost: gw\r\nCookie: gw_session={token}\r\n"
                                   "X-Hasura-Role: admin\r\n\r\n"),
    ("webhook GET, two roles", "GET /auth/webhook HTTP/1.1\r\nHost: gw\r\nCookie: gw_session={token}\r\n"
                               "X-Hasura-Role: user\r\nx-hasura-role: user\r\n\r\n"),
    ("webhook GET anonymous", "GET /auth/webhook HTTP/1.1\r\nHost: gw\r\n\r\n"),
    ("webhook POST with query", "POST /auth/webhook?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: {length}\r\n"
                                "\r\n{body}"),
    ("webhook POST invalid JSON", "POST /auth/webhook HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n\r\n{{"),
    ("webhook POST wrong type", 'POST /auth/webhook HTTP/1.1\r\nHost: gw\r\nContent-Length: 13\r\n\r\n{{"headers":1}}'),
]


@pytest.mark.parametrize(("name", "template"), _PARITY, ids=[name for name, _ in _PARITY])
async def test_the_fast_lane_answers_exactly_as_aiohttp_does(gateway_factory: GatewayFactory, name: str,
                                                             template: str) -> None:
    answers = {}
    for fast_lane in (True, False):
        gw = await gateway_factory(fast_lane=fast_lane)
        token = await gw.token(roles=["user", "editor"])
        body = json.dumps({"headers": {"Cookie": f"gw_session={token}"}})
        raw = template.format(token=token, body=body, length=len(body)).replace(
            "\r\n", "\r\nX-Request-ID: parity\r\n", 1).encode()
        first, cached = await exchange(gw, raw + raw, 2)
        assert (first.status, first.body) == (cached.status, cached.body), name
        answers[fast_lane] = first
    fast, plain = answers[True], answers[False]
    assert fast.status == plain.status, name
    assert fast.body == plain.body, name
    for header in (*[h.lower() for h in IDENTITY_HEADERS], "location", "cache-control", "content-type"):
        assert fast.headers.get(header) == plain.headers.get(header), (name, header)



class _BuggyPolicy:
    """A policy with a bug: every check that reaches it raises."""

    def allows(self, active: ActiveSession, facts: RequestFacts | None) -> bool:
        raise RuntimeError("boom")


async def test_a_bug_in_the_check_fails_closed_with_a_500(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(policy=_BuggyPolicy())
    token = await gw.token()
    # the first check reaches the bug after the lookup, the second straight from the cache
    for path in ("/auth/webhook", "/auth/check", "/auth/check", "/auth/webhook"):
        [answer] = await exchange(gw, get(path, token))
        assert answer.status == 500 and answer.headers["connection"] == "close", path
    assert gw.metric("gateway_session_cache_events_total", event="miss") == 1
    assert gw.metric("gateway_session_cache_events_total", event="hit") == 3
