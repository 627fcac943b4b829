"""Baselines, each run as its own process by the benchmark: ``python -m bench.servers MODE ...``.

- ``bare``: a minimal aiohttp app, one GET handler answering a small JSON 200, no middleware.
- ``rawhttp``: the same app whose handler does the raw session lookup (token from the cookie, SHA-256,
  the store's query on an aiopg pool of ``database.pool_max``) and answers the user id as JSON.
- ``loop``: no HTTP at all: ``--concurrency`` coroutines doing that lookup back to back on one pool for
  ``--warmup`` + ``--duration`` seconds; prints lookups/s, latency percentiles and its own CPU time in
  the measured window as JSON.

Servers run like the gateway's: uvloop when installed, ``web.AppRunner`` with the gateway's
:func:`gateway.serving.server.runner_options` for default settings, ``backlog=2048``, and with ``--workers N``
N processes sharing the port through SO_REUSEPORT. ``loop`` splits its concurrency over N processes, each
with its own pool, as N gateway workers would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiopg
from aiohttp import web

from bench.database import LOOKUP_SQL
from gateway.serving.server import runner_options
from gateway.settings import Settings
from gateway.tokens import hash_token

SETTINGS = Settings()
"""The gateway's defaults: pool size, keep-alive and header limits come from here."""

_BODY = json.dumps({"X-Hasura-User-Id": "12345", "X-Hasura-Role": "user", "Cache-Control": "max-age=43199"})
"""A body shaped like the gateway's webhook answer."""


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when installed, as the gateway's server does."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


async def _create_pool(dsn: str) -> aiopg.Pool:
    """A pool sized and configured like the gateway's PostgresStore."""
    db = SETTINGS.database
    return await aiopg.create_pool(dsn, minsize=0, maxsize=db.pool_max, timeout=db.connect_timeout,
                                   enable_hstore=False, enable_uuid=False)


async def lookup(pool: aiopg.Pool, token_hash: str) -> Any:
    """One raw point lookup: acquire, execute, fetch one row, release."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(LOOKUP_SQL, (token_hash,))
        return await cur.fetchone()


# --- servers ----------------------------------------------------------------------------------------------


def bare_app() -> web.Application:
    """One GET handler, no middleware."""
    body = _BODY.encode()

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/auth/webhook", handle)
    return app


POOL = web.AppKey("pool", aiopg.Pool)


def rawhttp_app(dsn: str) -> web.Application:
    """One GET handler doing the raw lookup for the request's cookie token."""
    cookie = SETTINGS.cookie.name

    async def handle(request: web.Request) -> web.Response:
        token = request.cookies.get(cookie, "")
        row = await lookup(request.app[POOL], hash_token(token))
        if row is None:
            return web.Response(status=401, body=b'{"error":"unauthenticated"}', content_type="application/json")
        body = json.dumps({"X-Hasura-User-Id": str(row[1]), "X-Hasura-Role": "user"})
        return web.Response(body=body.encode(), content_type="application/json")

    async def pool_ctx(app: web.Application) -> Any:
        app[POOL] = await _create_pool(dsn)
        yield
        app[POOL].close()
        await app[POOL].wait_closed()

    app = web.Application()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/auth/webhook", handle)
    return app


async def _serve(mode: str, host: str, port: int, dsn: str, reuse_port: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = bare_app() if mode == "bare" else rawhttp_app(dsn)
    runner = web.AppRunner(app, handle_signals=False, **runner_options(SETTINGS.serving))
    await runner.setup()
    factory = runner.server
    assert factory is not None
    listener = await loop.create_server(factory, host, port, reuse_port=reuse_port or None, reuse_address=True,
                                        backlog=2048)
    await stop.wait()
    listener.close()
    await runner.cleanup()


def _serve_worker(mode: str, host: str, port: int, dsn: str, reuse_port: bool) -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(mode, host, port, dsn, reuse_port))


def serve(mode: str, listen: str, workers: int, dsn: str) -> int:
    """Serve ``mode`` until SIGTERM; with several workers, supervise them (no restarts)."""
    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    if workers == 1:
        _serve_worker(mode, host, port, dsn, False)
        return 0
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_serve_worker, args=(mode, host, port, dsn, True)) for _ in range(workers)]
    stopping = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for proc in procs:
        proc.start()
    try:
        while not stopping.is_set() and all(p.exitcode is None for p in procs):
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.exitcode is None:
                proc.terminate()
        for proc in procs:
            proc.join(10)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
    return 0


# --- the lookup loop --------------------------------------------------------------------------------------


def _percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    if not ordered:
        return {}
    out: dict[str, float] = {}
    for pct in (50, 75, 90, 99):
        index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
        out[str(pct)] = ordered[index]
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _loop(dsn: str, hashes: Sequence[str], start: int, stride: int, concurrency: int, warmup: float,
                duration: float, started_file: str) -> tuple[int, float, list[float]]:
    """Lookups back to back; returns (lookups in the window, this process's CPU seconds in it, latencies)."""
    pool = await _create_pool(dsn)
    latencies: list[float] = []
    counter = [start]
    clock = time.perf_counter
    measure_from = clock() + warmup
    measure_until = measure_from + duration
    cpu: list[float] = []

    async def mark() -> None:
        await asyncio.sleep(max(0.0, measure_from - clock()))
        cpu.append(_cpu())
        if started_file:
            Path(started_file).write_text("measuring\n", encoding="ascii")
        await asyncio.sleep(max(0.0, measure_until - clock()))
        cpu.append(_cpu())

    async def worker() -> None:
        while True:
            began = clock()
            if began >= measure_until:
                return
            position = counter[0]
            counter[0] = position + stride
            row = await lookup(pool, hashes[position % len(hashes)])
            if row is None:
                raise RuntimeError("a seeded session was not found")
            if began >= measure_from:
                ended = clock()
                if ended <= measure_until:
                    latencies.append((ended - began) * 1000.0)

    try:
        await asyncio.gather(mark(), *(worker() for _ in range(concurrency)))
    finally:
        pool.close()
        await pool.wait_closed()
    return len(latencies), cpu[1] - cpu[0], latencies


def _loop_worker(dsn: str, hashes_file: str, index: int, workers: int, concurrency: int, warmup: float,
                 duration: float, started_file: str) -> tuple[int, float, list[float]]:
    hashes = Path(hashes_file).read_text(encoding="ascii").split()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_loop(dsn, hashes, index, workers, concurrency, warmup, duration, started_file))


def run_loop(dsn: str, hashes_file: str, workers: int, concurrency: int, warmup: float, duration: float,
             started_file: str = "") -> dict[str, Any]:
    """Run the lookup loop in ``workers`` processes sharing ``concurrency``; merged results.

    ``started_file`` is written when the first process starts measuring (so the caller can time its own
    measurements of the database's CPU to the same window).
    """
    shares = [concurrency // workers + (1 if i < concurrency % workers else 0) for i in range(workers)]
    if workers == 1:
        results = [_loop_worker(dsn, hashes_file, 0, 1, concurrency, warmup, duration, started_file)]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
            results = pool.starmap(_loop_worker, [(dsn, hashes_file, i, workers, shares[i], warmup, duration,
                                                   started_file if i == 0 else "") for i in range(workers)])
    count = sum(r[0] for r in results)
    latencies = [ms for r in results for ms in r[2]]
    return {"lookups": count, "seconds": duration, "rps": count / duration, "percentiles_ms": _percentiles(latencies),
            "cpu_seconds": sum(r[1] for r in results), "concurrency": concurrency, "workers": workers,
            "pool_max": SETTINGS.database.pool_max}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``bare|rawhttp --listen H:P --workers N [--database-url URL]`` or ``loop ...``."""
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("mode", choices=("bare", "rawhttp", "loop"))
    parser.add_argument("--listen", default="127.0.0.1:8080")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--hashes", default="", help="loop: file of token hashes, one per line")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--out", default="", help="loop: write the JSON result here (default: stdout)")
    parser.add_argument("--started", default="", help="loop: file to create when measuring starts")
    args = parser.parse_args(argv)
    if args.mode == "loop":
        result = run_loop(args.database_url, args.hashes, args.workers, args.concurrency, args.warmup,
                          args.duration, args.started)
        text = json.dumps(result)
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
        else:
            print(text)
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        return serve(args.mode, args.listen, args.workers, args.database_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
