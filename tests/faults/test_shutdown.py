"""SIGTERM while requests are still arriving: each is in flight from its first byte, is answered in full with
``Connection: close``, nothing pipelined behind it is taken, and the process exits 0.

The gateway runs with the defaults (``shutdown_delay`` 0: the listener closes at once, which the tests
wait for before they go on), under uvloop and under asyncio's own loop. The connections cover both
front-ends: the fast lane, and aiohttp after a hand-over (``Expect: 100-continue`` is aiohttp's to answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from gateway.serving.server import stop_listening
from tests.deploy.stack import COOKIE, Gateway
from tests.faults import (
    LOOPS,
    Answer,
    Transcript,
    connection_refused,
    log_events,
    read_until_closed,
    require_loop,
    start_gateway_on,
)
from tests.faults.report import Figures
from tests.helpers import free_port

UNKNOWN_TOKEN = "gwt_" + "Z" * 43


def webhook_post(token: str, *, expect_continue: bool = False) -> tuple[bytes, bytes]:
    """A Hasura POST-mode webhook call: its head, and its JSON body."""
    body = json.dumps({"headers": {"Cookie": f"{COOKIE}={token}"}, "request": {"query": "{ me { id } }"}}).encode()
    head = (b"POST /auth/webhook HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % len(body))
    if expect_continue:
        head += b"Expect: 100-continue\r\n"
    return head + b"\r\n", body


def check(token: str) -> bytes:
    return f"GET /auth/check HTTP/1.1\r\nHost: gateway\r\nCookie: {COOKIE}={token}\r\n\r\n".encode()


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Clients:
    """Raw client connections to a gateway, all closed when the test ends."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self, gateway: Gateway) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        self.writers.append(writer)
        return reader, writer


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    opened = Clients()
    yield opened
    for writer in opened.writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def read_one(reader: asyncio.StreamReader) -> bytes:
    """One complete answer with a Content-Length body (keep-alive: the connection stays open)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


async def sigterm_and_wait_for_the_listener_to_close(gateway: Gateway) -> None:
    gateway.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not await connection_refused("127.0.0.1", gateway.port):
        assert time.monotonic() < deadline, "the listener is still open 10 s after SIGTERM"
        await asyncio.sleep(0.01)


def only_answer(transcript: Transcript, what: str) -> Answer:
    assert not transcript.reset, f"{what}: the connection was reset"
    assert len(transcript.answers) == 1, f"{what}: {transcript.answers}"
    answer = transcript.answers[0]
    assert answer.headers.get("connection") == "close", f"{what}: {answer.headers}"
    return answer


SCENARIO = "SIGTERM while requests are in flight"


def answered_in_full(transcript: Transcript, status: int) -> bool:
    """What :func:`only_answer` and the status check demand, as a figure: one whole answer of ``status``
    saying ``Connection: close``, then a clean close."""
    answers = transcript.answers
    return (not transcript.reset and len(answers) == 1 and answers[0].headers.get("connection") == "close"
            and answers[0].status == status)


def record_drain(figures: Figures, case: str, loop: str, transcripts: list[tuple[Transcript, int]],
                 exit_code: int | None) -> None:
    """A SIGTERM case's figures: requests not answered in full (with the status each must get), exit code."""
    figures.scenario(SCENARIO, "A gateway (defaults: shutdown_delay 0) sent SIGTERM while requests are still"
                     f" arriving; their rest arrives {LATE:g} s later. Each must be answered in full with"
                     " `Connection: close`, then a clean close; the process exits 0.")
    short = sum(not answered_in_full(transcript, status) for transcript, status in transcripts)
    figures.record(SCENARIO, f"{case} [{loop}]: requests not answered in full (of {len(transcripts)})", short,
                   goal="0", ok=not short)
    figures.record(SCENARIO, f"{case} [{loop}]: exit code", exit_code, goal="0", ok=exit_code == 0)


LATE = 1.5
"""Seconds after SIGTERM at which the rest of a request arrives: longer than the linger that a connection
between requests gets (1 s), so a request in flight is shown not to be taken for an idle connection."""


@pytest.mark.parametrize("loop", LOOPS)
async def test_requests_still_arriving_at_sigterm_are_answered_in_full(loop: str, tmp_path: Path,
                                                                      clients: Clients, figures: Figures) -> None:
    """On the fast lane: a webhook POST with half its body, one whose token must be looked up (401), and
    one of which only the first bytes of the request line have arrived; each with a check pipelined
    behind it, which is not taken (the answer says ``Connection: close``)."""
    with start_gateway_on(loop, tmp_path, port=free_port()) as gateway:
        token = await asyncio.to_thread(gateway.mint, "slow@example.com")
        head, body = webhook_post(token)
        _, unknown_body = webhook_post(UNKNOWN_TOKEN)
        half_body = await clients.connect(gateway)
        await send(half_body[1], head + body[:20])
        unknown = await clients.connect(gateway)
        await send(unknown[1], head + unknown_body[:20])
        first_bytes = await clients.connect(gateway)
        await send(first_bytes[1], head[:9])
        await asyncio.sleep(0.2)  # every byte so far has reached the gateway

        await sigterm_and_wait_for_the_listener_to_close(gateway)
        await asyncio.sleep(LATE)
        await send(half_body[1], body[20:] + check(token))
        await send(unknown[1], unknown_body[20:] + check(token))
        await send(first_bytes[1], head[9:] + body + check(token))
        transcripts = {name: await read_until_closed(reader) for name, (reader, _) in {
            "half body": half_body, "unknown token": unknown, "first bytes": first_bytes}.items()}
        exit_code = await asyncio.to_thread(gateway.proc.wait, 30)

    record_drain(figures, "fast lane: half a body, a token to look up, first bytes only", loop,
                 [(transcripts["half body"], 200), (transcripts["unknown token"], 401),
                  (transcripts["first bytes"], 200)], exit_code)
    for name in ("half body", "first bytes"):
        answer = only_answer(transcripts[name], name)
        assert answer.status == 200, (name, answer)
        assert json.loads(answer.body)["X-Hasura-Role"], (name, answer)
        assert answer.headers["server"].startswith("forward-auth-gateway/")
    assert only_answer(transcripts["unknown token"], "unknown token").status == 401
    assert exit_code == 0, gateway.log_text()
    assert log_events(gateway, "stopped")


@pytest.mark.parametrize("loop", LOOPS)
async def test_a_request_aiohttp_owns_still_arriving_at_sigterm_is_answered_in_full(loop: str, tmp_path: Path,
                                                                                   clients: Clients,
                                                                                   figures: Figures) -> None:
    """aiohttp answers what the fast lane hands over (here for ``Expect: 100-continue``); its own shutdown
    stops reading at once, which would cut this body off. Nothing is in flight on the fast lane, so the
    drain of aiohttp's connections is what keeps the request alive."""
    with start_gateway_on(loop, tmp_path, port=free_port()) as gateway:
        token = await asyncio.to_thread(gateway.mint, "continue@example.com")
        head, body = webhook_post(token, expect_continue=True)
        handed_over = await clients.connect(gateway)
        await send(handed_over[1], head)
        assert (await asyncio.wait_for(handed_over[0].readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 100")
        await send(handed_over[1], body[:20])
        await asyncio.sleep(0.2)

        await sigterm_and_wait_for_the_listener_to_close(gateway)
        await asyncio.sleep(LATE)
        await send(handed_over[1], body[20:] + check(token))
        transcript = await read_until_closed(handed_over[0])
        exit_code = await asyncio.to_thread(gateway.proc.wait, 30)

    record_drain(figures, "aiohttp: an Expect: 100-continue body still arriving", loop, [(transcript, 200)],
                 exit_code)
    answer = only_answer(transcript, "handed over")
    assert answer.status == 200 and json.loads(answer.body)["X-Hasura-Role"], answer
    assert answer.headers["server"].startswith("Python")  # aiohttp's answer
    assert exit_code == 0, gateway.log_text()


@pytest.mark.parametrize("loop", LOOPS)
async def test_with_the_fast_lane_off_a_request_still_arriving_is_answered_in_full(
        loop: str, tmp_path: Path, clients: Clients, figures: Figures) -> None:
    """With ``fast_lane = false`` (or ``access_log = true``) aiohttp answers every request (the fast lane only
    judges each connection's first head): a body still arriving at SIGTERM is received and answered all
    the same, and so is a request sent right after it over a connection that was between requests."""
    with start_gateway_on(loop, tmp_path, port=free_port(), extra_env={"GATEWAY_FAST_LANE": "false"}) as gateway:
        token = await asyncio.to_thread(gateway.mint, "plain@example.com")
        head, body = webhook_post(token)
        half_body = await clients.connect(gateway)
        await send(half_body[1], head + body[:20])
        pooled = await clients.connect(gateway)
        await send(pooled[1], check(token))
        await read_one(pooled[0])
        await asyncio.sleep(0.2)

        await sigterm_and_wait_for_the_listener_to_close(gateway)
        await send(pooled[1], check(token))
        on_pooled = await read_until_closed(pooled[0])
        await asyncio.sleep(LATE)
        await send(half_body[1], body[20:] + check(token))
        transcript = await read_until_closed(half_body[0])
        exit_code = await asyncio.to_thread(gateway.proc.wait, 30)

    record_drain(figures, "fast lane off: a body still arriving, a pooled connection's next request", loop,
                 [(transcript, 200), (on_pooled, 200)], exit_code)
    answer = only_answer(transcript, "half body")
    assert answer.status == 200 and json.loads(answer.body)["X-Hasura-Role"], answer
    assert answer.headers["server"].startswith("Python")
    assert only_answer(on_pooled, "pooled").status == 200
    assert log_events(gateway, "gateway listening")[0]["fast_lane"] is False
    assert exit_code == 0, gateway.log_text()


@pytest.mark.parametrize("loop", LOOPS)
async def test_a_request_on_a_keepalive_connection_right_after_sigterm_is_answered_with_connection_close(
        loop: str, tmp_path: Path, clients: Clients, figures: Figures) -> None:
    """A proxy may already be sending its next request over a pooled connection when the gateway starts
    draining: it gets an answer saying ``Connection: close``, and then a clean close, not a reset."""
    with start_gateway_on(loop, tmp_path, port=free_port()) as gateway:
        token = await asyncio.to_thread(gateway.mint, "pooled@example.com")
        fast = await clients.connect(gateway)
        await send(fast[1], check(token))
        kept = await read_one(fast[0])
        aiohttp_owned = await clients.connect(gateway)
        await send(aiohttp_owned[1], HEALTHZ)
        await read_one(aiohttp_owned[0])
        assert b"\r\nConnection:" not in kept  # keep-alive before SIGTERM

        await sigterm_and_wait_for_the_listener_to_close(gateway)
        await send(fast[1], check(token))
        await send(aiohttp_owned[1], HEALTHZ)
        on_fast_lane = await read_until_closed(fast[0])
        on_aiohttp = await read_until_closed(aiohttp_owned[0])
        idle = await connect_refused_or_closed(gateway)
        exit_code = await asyncio.to_thread(gateway.proc.wait, 30)

    record_drain(figures, "keep-alive: the next request right after SIGTERM (fast lane, aiohttp)", loop,
                 [(on_fast_lane, 200), (on_aiohttp, 200)], exit_code)
    figures.record(SCENARIO, f"keep-alive [{loop}]: new connections refused after the drain", "yes" if idle else "no",
                   goal="yes", ok=idle)

    assert only_answer(on_fast_lane, "fast lane").status == 200
    assert only_answer(on_aiohttp, "aiohttp").status == 200
    assert idle
    assert exit_code == 0, gateway.log_text()


async def connect_refused_or_closed(gateway: Gateway) -> bool:
    """After the drain: no new connection is possible."""
    return await connection_refused("127.0.0.1", gateway.port)


@pytest.mark.parametrize("loop", LOOPS)
async def test_sigterm_with_only_idle_connections_stops_within_a_second_or_two(loop: str, tmp_path: Path,
                                                                             clients: Clients,
                                                                             figures: Figures) -> None:
    """Connections between requests are closed after a short linger; they never hold the process up for
    shutdown_timeout (10 s)."""
    with start_gateway_on(loop, tmp_path, port=free_port()) as gateway:
        token = await asyncio.to_thread(gateway.mint, "idle@example.com")
        idle = []
        for request in (check(token), HEALTHZ):
            reader, writer = await clients.connect(gateway)
            await send(writer, request)
            await read_one(reader)
            idle.append(reader)
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(gateway.proc.wait, 30)
        took = time.monotonic() - started
        closed = [await read_until_closed(reader) for reader in idle]
    unclean = sum(not (t.answers == [] and not t.reset) for t in closed)
    figures.record(SCENARIO, f"only idle connections [{loop}]: SIGTERM to exit", took, goal="< 5 s", ok=took < 5,
                   unit="s")
    figures.record(SCENARIO, f"only idle connections [{loop}]: idle connections not closed cleanly (of {len(closed)})",
                   unclean, goal="0", ok=not unclean)
    figures.record(SCENARIO, f"only idle connections [{loop}]: exit code", exit_code, goal="0", ok=exit_code == 0)
    assert exit_code == 0, gateway.log_text()
    assert took < 5, f"stopping took {took:.1f} s"
    assert all(t.answers == [] and not t.reset for t in closed), closed


class _AnswerOnce(asyncio.Protocol):
    """Answers the first bytes it receives with ``answered: <bytes>`` and closes the connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"answered: " + data)
        self.transport.close()


async def _queued_connections_are_served() -> tuple[list[bytes], bool]:
    loop = asyncio.get_running_loop()
    # The socket listens and the kernel completes handshakes, but the server never accepts (not serving).
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    listener = await loop.create_server(_AnswerOnce, sock=sock, start_serving=False)
    queued = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    for i, (_, writer) in enumerate(queued):
        writer.write(b"request %d" % i)
        await writer.drain()
    await stop_listening(listener, _AnswerOnce)
    answers = []
    for reader, writer in queued:
        try:
            answers.append(await asyncio.wait_for(reader.read(), 5))
        except ConnectionResetError:
            answers.append(b"<reset>")
        writer.close()
    return answers, await connection_refused("127.0.0.1", port)


@pytest.mark.parametrize("loop", LOOPS)
def test_stopping_to_listen_serves_the_connections_waiting_in_the_accept_queue(loop: str,
                                                                              figures: Figures) -> None:
    """Closing a listening socket resets what waits in its accept queue, requests sent or not; the gateway
    accepts and serves those connections first."""
    require_loop(loop)
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        answers, refused = runner.run(_queued_connections_are_served())
    unserved = sum(answer != b"answered: request %d" % i for i, answer in enumerate(answers))
    figures.record(SCENARIO, f"accept queue at stop_listening [{loop}]: queued connections reset or unanswered"
                   f" (of {len(answers)})", unserved, goal="0",
                   ok=answers == [b"answered: request 0", b"answered: request 1", b"answered: request 2"])
    assert answers == [b"answered: request 0", b"answered: request 1", b"answered: request 2"]
    assert refused
