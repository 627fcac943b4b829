"""Run the gateway: one process, or ``--workers N`` processes sharing the port through SO_REUSEPORT.

Each worker is a complete gateway (its own cache, pool and revocation listener on the shared database),
so a revocation reaches every worker the same way it reaches other replicas. On SIGTERM or SIGINT a
worker fails readiness at once, keeps accepting for ``shutdown_delay`` (so load balancers notice), stops
accepting, lets in-flight requests finish (bounded by ``shutdown_timeout``) and exits 0. The parent
restarts a worker that dies unexpectedly. With several workers, ``/metrics`` on any of them answers for
all of them (see :mod:`gateway.workermetrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from gateway.app import HOT, METRICS, STATE, create_app
from gateway.fastlane import FastLane
from gateway.gcpolicy import GcPolicy
from gateway.logging import configure_logging
from gateway.protocol import protocol_factory
from gateway.settings import Settings
from gateway.workermetrics import LIVE_SUFFIX, retire

log = structlog.get_logger("gateway.server")

_RESTART_BACKOFF_MAX = 10.0


def serve(settings: Settings) -> int:
    """Serve until told to stop; return the process exit code. Settings must already be validated."""
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers == 1:
        return _run_worker(settings, reuse_port=False)
    if not hasattr(socket, "SO_REUSEPORT"):
        log.error("--workers needs SO_REUSEPORT, which this platform lacks")
        return 2
    return _supervise(settings)


def _new_event_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def runner_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner``: limits and timeouts (tests use the same ones)."""
    return {
        "access_log": logging.getLogger("aiohttp.access") if settings.access_log else None,
        "keepalive_timeout": settings.keepalive_timeout,
        "shutdown_timeout": settings.shutdown_timeout,
        "max_field_size": settings.max_header_bytes,
        "max_line_size": settings.max_header_bytes,
    }


def front_end(app: web.Application, runner: web.AppRunner, settings: Settings) -> Callable[[], asyncio.Protocol]:
    """The protocol factory for the listening socket: the fast lane (handing everything else to aiohttp),
    or aiohttp alone when ``fast_lane`` is off or ``access_log`` is on. Call with the runner set up."""
    server = runner.server
    assert server is not None
    metrics = app[METRICS]
    aiohttp_protocol = protocol_factory(server)
    if settings.fast_lane and not settings.access_log:
        return FastLane(app[HOT], aiohttp_protocol, metrics, keepalive_timeout=settings.keepalive_timeout,
                        max_head_bytes=settings.max_header_bytes)

    def counting_factory() -> asyncio.Protocol:
        metrics.connections_accepted.inc()
        return aiohttp_protocol()

    return counting_factory


def _run_worker(settings: Settings, *, reuse_port: bool, metrics_file: Path | None = None) -> int:
    with asyncio.Runner(loop_factory=_new_event_loop()) as runner:
        return runner.run(run_until_signalled(settings, reuse_port=reuse_port, metrics_file=metrics_file))


async def run_until_signalled(settings: Settings, *, reuse_port: bool = False,
                              stop: asyncio.Event | None = None, metrics_file: Path | None = None) -> int:
    """Serve one gateway process until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully.

    ``metrics_file``: a worker's file in the directory its supervisor shares among all its workers.
    """
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(RuntimeError):  # no running loop's signal support: rely on `stop`
            loop.add_signal_handler(signum, stop.set)

    app = create_app(settings)
    shared = app[METRICS].share(metrics_file) if metrics_file is not None else None
    runner = web.AppRunner(app, handle_signals=False, **runner_options(settings))
    await runner.setup()
    front = front_end(app, runner, settings)
    host, port = settings.listen_host_port
    try:
        listener = await loop.create_server(front, host, port, reuse_port=reuse_port or None,
                                            reuse_address=True, backlog=2048)
    except OSError as exc:
        log.error("cannot listen", listen=settings.listen, error=exc.strerror or str(exc))
        await runner.cleanup()
        return 1
    gc_policy = GcPolicy(settings.gc_full_interval)
    gc_policy.start()
    publisher = asyncio.ensure_future(shared.publish_periodically()) if shared is not None else None
    log.info("gateway listening", listen=settings.listen, public_url=settings.public_url,
             database=settings.database_url.split(":", 1)[0], reuse_port=reuse_port,
             event_loop=type(loop).__module__.split(".")[0], fast_lane=isinstance(front, FastLane))
    await stop.wait()

    log.info("shutting down: readiness off, finishing in-flight requests",
             delay=settings.shutdown_delay, timeout=settings.shutdown_timeout)
    app[STATE].draining = True
    if settings.shutdown_delay > 0:
        await asyncio.sleep(settings.shutdown_delay)
    listener.close()
    if isinstance(front, FastLane):
        await front.shutdown(settings.shutdown_timeout)
    await runner.cleanup()
    await gc_policy.stop()
    if publisher is not None and shared is not None:
        publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publisher
        with contextlib.suppress(OSError):
            shared.publish()  # the last counts, for the totals the other workers keep answering with
    log.info("stopped")
    return 0


def _worker_main(settings: Settings, metrics_file: Path | None) -> None:
    configure_logging(settings.log_format, settings.log_level)
    # The parent decides when workers stop; ignore the terminal's Ctrl-C burst and wait for its SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(_run_worker(settings, reuse_port=True, metrics_file=metrics_file))


def _supervise(settings: Settings) -> int:
    """Start ``settings.workers`` worker processes and keep them running until SIGTERM/SIGINT."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:
        metrics_dir: Path | None = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
    except OSError as exc:
        metrics_dir = None
        log.error("cannot share metrics among workers: each answers /metrics for itself", error=str(exc))
    started = 0

    def start() -> tuple[BaseProcess, Path | None]:
        """A new worker and its metrics file (a new file for every worker, restarts included)."""
        nonlocal started
        started += 1
        file = metrics_dir / f"worker-{started}{LIVE_SUFFIX}" if metrics_dir is not None else None
        proc = ctx.Process(target=_worker_main, args=(settings, file), daemon=False)
        proc.start()
        return proc, file

    try:
        running = [start() for _ in range(settings.workers)]
        backoff = [0.5] * len(running)
        log.info("started workers", workers=settings.workers, pids=[proc.pid for proc, _ in running])
        while not stopping:
            time.sleep(0.2)
            for i, (proc, file) in enumerate(running):
                if not stopping and proc.exitcode is not None:
                    log.error("worker exited; restarting", pid=proc.pid, exitcode=proc.exitcode,
                              backoff=backoff[i])
                    if file is not None:
                        retire(file)
                    time.sleep(backoff[i])
                    backoff[i] = min(backoff[i] * 2, _RESTART_BACKOFF_MAX)
                    running[i] = start()

        workers = [proc for proc, _ in running]
        for proc in workers:
            if proc.exitcode is None and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + settings.shutdown_timeout + 5
        for proc in workers:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = [p.exitcode for p in workers]
    log.info("workers stopped", exitcodes=codes)
    return 0 if all(c == 0 for c in codes) else 1
