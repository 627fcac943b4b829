"""The open-loop load generator (``bench/openloop.c`` via ``bench/openloop.py``) against tiny aiohttp servers.

Each run is about 2 s: counts and the offered rate, one token per request, latency measured from the
scheduled time (a server stall shows up in full, also for the requests queued behind it), reconnects
and unsupported responses.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from bench import openloop
from tests.helpers import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the compiled generator (built once for the module)."""
    if shutil.which("gcc") is None:
        if os.environ.get("GATEWAY_TEST_STRICT") == "1":
            pytest.fail("gcc not found (GATEWAY_TEST_STRICT=1)", pytrace=False)
        pytest.skip("gcc not found: cannot build bench/openloop.c")
    directory = tmp_path_factory.mktemp("openloop")
    openloop.build(directory)
    return directory


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    """Serve ``handler`` for every GET on 127.0.0.1; yields the port."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_counts_rate_and_one_token_per_request(build_dir: Path, tmp_path: Path) -> None:
    tokens = [f"tok{i:05d}" for i in range(2000)]
    tokens_file = tmp_path / "tokens.txt"
    tokens_file.write_text("\n".join(tokens) + "\n", encoding="ascii")
    cookies: list[str] = []
    extra: set[str | None] = set()

    async def handler(request: web.Request) -> web.Response:
        cookies.append(request.cookies.get("gw_session", ""))
        extra.add(request.headers.get("X-Bench"))
        return web.Response(text="ok")

    async with serve(handler) as port:
        result = await asyncio.to_thread(
            openloop.run, "127.0.0.1", port, rate=500, duration=2.0, warmup=0.5, path="/auth/webhook",
            headers={"X-Bench": "yes"}, tokens_file=tokens_file, token_header="Cookie: gw_session=%s",
            token_offset=100, workdir=build_dir)
    assert (result.scheduled, result.sent, result.completed, result.errors) == (1000, 1000, 1000, 0)
    assert result.status["2xx"] == 1000 and result.non_2xx == 0
    assert result.warmup == {"scheduled": 250, "sent": 250, "completed": 250, "errors": 0}
    assert abs(result.rate_achieved - 500) <= 25, result
    assert sorted(cookies) == tokens[100:1350]  # every request its own line, from the offset on
    assert extra == {"yes"}
    assert not result.tokens_wrapped
    assert 0 < result.p(50) <= result.p(99) <= result.latency_ms["max"] < 5000
    assert not math.isnan(result.service_p(99.9))


def stalling_every_50th() -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler that sleeps 200 ms on every 50th request."""
    count = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        if count % 50 == 0:
            await asyncio.sleep(0.2)
        return web.Response(text="ok")

    return handler


async def test_a_slow_request_counts_in_full(build_dir: Path) -> None:
    """Every 50th request sleeps 200 ms: 2% of the latencies are at least that."""
    async with serve(stalling_every_50th()) as port:
        result = await asyncio.to_thread(openloop.run, "127.0.0.1", port, rate=500, duration=2.0, warmup=0.2,
                                         path="/", workdir=build_dir)
    assert result.completed == result.scheduled == 1000 and result.errors == 0
    assert result.p(99) >= 150, result
    assert abs(result.rate_achieved - 500) <= 25, result


async def test_latency_is_measured_from_the_scheduled_time(build_dir: Path) -> None:
    """One connection, a 200 ms stall every 50th request: the ~20 requests due during the stall queue in the
    generator. From their scheduled time they are slow; from their actual send they are fast. A closed-loop
    tool (or one timing from the send) would report only the stalled request itself."""
    async with serve(stalling_every_50th()) as port:
        result = await asyncio.to_thread(openloop.run, "127.0.0.1", port, rate=100, duration=2.0, warmup=0.0,
                                         connections=1, path="/", workdir=build_dir)
    assert result.completed == result.scheduled == 200 and result.errors == 0
    assert result.max_queue >= 10, result
    assert result.p(90) >= 100, result  # ~20% of requests waited 100 ms or more behind a stall
    assert result.p(99) >= 150, result
    assert result.service_p(90) < 50, result  # ...yet once sent, nine in ten were answered fast


async def test_reconnects_and_unsupported_responses(build_dir: Path) -> None:
    count = 0

    async def closing(request: web.Request) -> web.Response:
        nonlocal count
        count += 1
        response = web.Response(text="ok")
        if count % 10 == 0:
            response.force_close()
        return response

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"chunk")
        await response.write_eof()
        return response

    async with serve(closing) as port:
        closed = await asyncio.to_thread(openloop.run, "127.0.0.1", port, rate=400, duration=0.5, warmup=0.0,
                                         connections=8, path="/", workdir=build_dir)
    assert closed.completed == closed.scheduled == 200 and closed.errors == 0
    assert closed.reconnects >= 15, closed
    async with serve(chunked) as port:
        bad = await asyncio.to_thread(openloop.run, "127.0.0.1", port, rate=200, duration=0.5, warmup=0.0,
                                      connections=4, path="/", workdir=build_dir)
    assert bad.completed == 0 and bad.errors == bad.error_kinds["parse"] == bad.scheduled == 100
    assert math.isnan(bad.p(50))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        openloop.command(tmp_path / "x", "127.0.0.1", 1, rate=1, duration=1, warmup=0, tokens_file=tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        openloop.command(tmp_path / "x", "127.0.0.1", 1, rate=1, duration=1, warmup=0, tokens_file=tmp_path,
                         token_header="Cookie: a=%s%s")
    with pytest.raises(ValueError, match="not an openloop report"):
        openloop.parse("{}")


def test_nothing_listening(build_dir: Path) -> None:
    with pytest.raises(openloop.OpenLoopError, match="could not connect"):
        openloop.run("127.0.0.1", free_port(), rate=10, duration=1, warmup=0, path="/", workdir=build_dir,
                     timeout=0.5)
