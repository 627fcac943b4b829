"""Run the gateway: one process, or ``--workers N`` processes sharing the port through SO_REUSEPORT.

Each worker is a complete gateway (its own cache, pool and revocation listener on the shared database),
so a revocation reaches every worker the same way it reaches other replicas. On SIGTERM or SIGINT a
worker fails readiness at once and starts draining: every answer from then on says ``Connection:
close``, so keep-alive connections are retired one answered request at a time. It keeps accepting for
``shutdown_delay`` (so load balancers notice), then stops accepting (serving the connections the kernel
had already accepted), lets every request in flight finish (from its first byte: a request whose body is
still arriving is in flight) bounded by ``shutdown_timeout``, closes connections between requests once
they have been quiet a moment, and exits 0. The parent restarts a worker that dies unexpectedly, after a
back-off that grows with repeated crashes and starts over once a worker has run healthy. With several
workers, ``/metrics`` on any of them answers for all of them (see :mod:`gateway.serving.workermetrics`).
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.app import HOT, METRICS, STATE, create_app
from gateway.handlers.health import RuntimeState
from gateway.logging import configure_logging
from gateway.protocol import protocol_factory
from gateway.serving.fastlane import FastLane
from gateway.serving.gcpolicy import GcPolicy
from gateway.serving.workermetrics import LIVE_SUFFIX, retire, share
from gateway.settings import Settings

log = structlog.get_logger("gateway.serving.server")

_IDLE_LINGER = 1.0
"""Draining: how long a connection between requests stays open (and is answered) before it is closed."""
_DRAIN_POLL = 0.02
_AIOHTTP_LAST_WAIT = 1.0
"""After the drain, what aiohttp's own shutdown still gives a handler that outlived ``shutdown_timeout``."""


def serve(settings: Settings) -> int:
    """Serve until told to stop; return the process exit code. Settings must already be validated."""
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers == 1:
        return _run_worker(settings, reuse_port=False)
    if not hasattr(socket, "SO_REUSEPORT"):
        log.error("--workers needs SO_REUSEPORT, which this platform lacks")
        return 2
    return supervise(settings)


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


def front_end(app: web.Application, runner: web.AppRunner, settings: Settings) -> FastLane:
    """The protocol factory for the listening socket: the fast lane, handing everything else to aiohttp.

    With ``fast_lane`` off or ``access_log`` on, the fast lane only judges each connection's first head
    (bytes that are not HTTP get a 400 at once, a stalled head is closed after ``keepalive_timeout``) and
    then hands every request to aiohttp, which logs them. Call with the runner set up.
    """
    server = runner.server
    assert server is not None
    return FastLane(app[HOT], protocol_factory(server), app[METRICS], keepalive_timeout=settings.keepalive_timeout,
                    max_head_bytes=settings.max_header_bytes,
                    answers=settings.fast_lane and not settings.access_log)


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
    state = app[STATE]
    app.on_response_prepare.append(_closing_while_draining(state))
    shared = share(app[METRICS], metrics_file) if metrics_file is not None else None
    # The drain below gives requests shutdown_timeout; aiohttp's own shutdown only has to clean up after it.
    options = {**runner_options(settings), "shutdown_timeout": _AIOHTTP_LAST_WAIT}
    runner = web.AppRunner(app, handle_signals=False, **options)
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
             event_loop=type(loop).__module__.split(".")[0], fast_lane=front.answers)
    await stop.wait()

    log.info("shutting down: readiness off, finishing in-flight requests",
             delay=settings.shutdown_delay, timeout=settings.shutdown_timeout)
    try:
        await _drain(settings, state, listener, front, runner)
    except Exception:  # a bug in draining must not keep the process from cleaning up and stopping
        log.exception("draining failed; closing what is left")
        listener.close()
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


async def _drain(settings: Settings, state: RuntimeState, listener: asyncio.Server, front: FastLane,
                 runner: web.AppRunner) -> None:
    """Readiness off and keep-alive retired at once; accept for ``shutdown_delay``; then stop accepting and
    let every request in flight finish within ``shutdown_timeout`` (see the module docstring)."""
    state.draining = True
    started = time.monotonic()
    front.begin_draining()
    if settings.shutdown_delay > 0:
        await asyncio.sleep(settings.shutdown_delay)
    await stop_listening(listener, front)
    grace = float(settings.shutdown_timeout)
    linger = min(_IDLE_LINGER, grace)
    deadline = time.monotonic() + grace
    await front.shutdown(grace, linger=linger)
    server = runner.server
    if server is not None:
        await _finish_aiohttp_requests(server, drain_started=started, deadline=deadline, linger=linger)


async def stop_listening(listener: asyncio.Server, front: Callable[[], asyncio.Protocol]) -> None:
    """Close the listening sockets, but serve the connections already waiting in their accept queues.

    Closing a listening socket resets every connection the kernel completed and nobody accepted yet,
    although its client may have sent a whole request (a POST is then lost: proxies retry only idempotent
    requests). So each queue is emptied first, through a duplicate of the socket that keeps it open while
    the server's own handle closes, and those connections are served like any other (draining).
    """
    loop = asyncio.get_running_loop()
    spares: list[socket.socket] = []
    for sock in listener.sockets:
        with contextlib.suppress(OSError):
            spares.append(socket.socket(fileno=os.dup(sock.fileno())))
    listener.close()
    accepted: list[socket.socket] = []
    for spare in spares:
        with spare:
            spare.setblocking(False)
            while True:
                try:
                    conn, _ = spare.accept()
                except OSError:  # BlockingIOError: the queue is empty
                    break
                accepted.append(conn)
    for conn in accepted:
        conn.setblocking(False)
        try:
            await loop.connect_accepted_socket(front, conn)
        except OSError:
            conn.close()
    if accepted:
        log.info("served connections still queued at the listener", connections=len(accepted))


def _closing_while_draining(state: RuntimeState) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: while draining, aiohttp's answers say ``Connection: close`` and close
    their connection, as the fast lane's do."""
    async def close_after_answer(request: web.Request, response: web.StreamResponse) -> None:
        if state.draining:
            response.force_close()
            response.headers["Connection"] = "close"
    return close_after_answer


async def _finish_aiohttp_requests(server: web.Server, *, drain_started: float, deadline: float,
                                   linger: float) -> None:
    """Wait until no connection aiohttp owns (after a hand-over) has a request in flight, until ``deadline``.

    aiohttp's own shutdown stops reading at once, so a request whose body is still arriving would never be
    completed and would be cut off at its timeout: it runs only after this, for what is left. A request
    in flight here is answered with ``Connection: close`` (see :func:`_closing_while_draining`), after
    which aiohttp closes the connection itself; a connection between requests is closed once draining
    has gone on for ``linger``. A request whose head aiohttp has begun but not finished parsing cannot
    be told from a quiet connection: it gets the linger to arrive.
    """
    while True:
        now = time.monotonic()
        waiting = False
        for handler in server.connections:
            if handler.transport is None or handler.transport.is_closing():
                continue
            if now - drain_started >= linger and _between_requests(handler):
                handler.force_close()
                continue
            waiting = True
        if not waiting or now >= deadline:
            return
        await asyncio.sleep(min(_DRAIN_POLL, deadline - now))


def _between_requests(handler: RequestHandler) -> bool:
    """True while aiohttp waits for the next request on this connection (none queued, none being handled).

    aiohttp has no public way to ask, so this reads its handler's state, and errs on the side of "in
    flight" (waiting for the deadline) should those attributes ever change.
    """
    waiter = getattr(handler, "_waiter", None)
    return waiter is not None and not waiter.done() and not getattr(handler, "_messages", True)


def _worker_main(settings: Settings, metrics_file: Path | None) -> None:
    configure_logging(settings.log_format, settings.log_level)
    # The parent decides when workers stop; ignore the terminal's Ctrl-C burst and wait for its SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(_run_worker(settings, reuse_port=True, metrics_file=metrics_file))


class RestartBackoff:
    """How long the supervisor waits before restarting a worker that exited, for one worker slot.

    ``first`` seconds after a crash, doubling with each further crash up to ``most``; a worker that ran
    ``healthy_after`` seconds or longer before it exited was serving, not crash-looping, so its restart
    starts over at ``first``. (Uptime is the test because the supervisor cannot ask one worker for
    ``/readyz``: the workers share the port.)
    """

    def __init__(self, first: float = 0.5, most: float = 10.0, healthy_after: float = 30.0) -> None:
        self.first = first
        self.most = most
        self.healthy_after = healthy_after
        self._next = first

    def after_exit(self, ran_for: float) -> float:
        """The delay before restarting a worker that ran ``ran_for`` seconds; call once per exit."""
        if ran_for >= self.healthy_after:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.most)
        return delay


@dataclass
class _Slot:
    """One of the supervisor's workers: the process now running in it, or the time it restarts at."""

    proc: BaseProcess
    metrics_file: Path | None
    started: float
    backoff: RestartBackoff
    restart_at: float | None = None


def supervise(settings: Settings, backoff: Callable[[], RestartBackoff] = RestartBackoff) -> int:
    """Start ``settings.workers`` worker processes and keep them running until SIGTERM/SIGINT; return the
    exit code (0 when every worker stopped cleanly). ``backoff`` makes each slot's restart policy."""
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

    signalled: list[BaseProcess] = []
    try:
        slots = [_Slot(*start(), time.monotonic(), backoff()) for _ in range(settings.workers)]
        log.info("started workers", workers=settings.workers, pids=[slot.proc.pid for slot in slots])
        while not stopping:
            time.sleep(0.2)
            for slot in slots:
                if stopping:
                    break
                now = time.monotonic()
                if slot.restart_at is not None:
                    if now >= slot.restart_at:
                        slot.proc, slot.metrics_file = start()
                        slot.started, slot.restart_at = now, None
                        log.info("worker restarted", pid=slot.proc.pid)
                elif slot.proc.exitcode is not None:
                    ran_for = now - slot.started
                    delay = slot.backoff.after_exit(ran_for)
                    log.error("worker exited; restarting", pid=slot.proc.pid, exitcode=slot.proc.exitcode,
                              ran_for=round(ran_for, 1), backoff=delay)
                    if slot.metrics_file is not None:
                        retire(slot.metrics_file)
                    slot.restart_at = now + delay

        # Slots waiting out a back-off have no worker to stop; their crash was logged when it happened.
        signalled = [slot.proc for slot in slots if slot.restart_at is None]
        for proc in signalled:
            if proc.exitcode is None and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + settings.shutdown_delay + settings.shutdown_timeout + 5
        for proc in signalled:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    codes = [p.exitcode for p in signalled]
    log.info("workers stopped", exitcodes=codes)
    # -SIGTERM: a worker still starting up (its handler is set before it listens) had served nothing.
    return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1
