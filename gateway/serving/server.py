"""Run the gateway: one process, or ``--workers N`` processes sharing the port through SO_REUSEPORT.

Each worker is a complete gateway (its own cache, pool and revocation listener on the shared database),
so a revocation reaches every worker the same way it reaches other replicas. On SIGTERM or SIGINT a
worker fails readiness at once and starts draining: every answer from then on says ``Connection:
close``, so keep-alive connections are retired one answered request at a time. It keeps accepting for
``shutdown_delay`` (so load balancers notice), then stops accepting (serving the connections the kernel
had already accepted), lets every request in flight finish (from its first byte: a request whose body is
still arriving is in flight) bounded by ``shutdown_timeout``, closes connections between requests once
they have been quiet a moment, and exits 0. The parent (:mod:`gateway.serving.supervisor`) restarts a
worker that dies unexpectedly, after a back-off that grows with repeated crashes and starts over once a
worker has run healthy. With several
workers, ``/metrics`` on any of them answers for all of them (see :mod:`gateway.serving.workermetrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
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
from gateway.serving.supervisor import supervise
from gateway.serving.workermetrics import share
from gateway.settings import ServingSettings, Settings

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
        return run_worker(settings, reuse_port=False)
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


def runner_options(serving: ServingSettings) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner``: limits and timeouts (tests use the same ones)."""
    return {
        "access_log": logging.getLogger("aiohttp.access") if serving.access_log else None,
        "keepalive_timeout": serving.keepalive_timeout,
        "shutdown_timeout": serving.shutdown_timeout,
        "max_field_size": serving.max_header_bytes,
        "max_line_size": serving.max_header_bytes,
    }


def front_end(app: web.Application, runner: web.AppRunner, serving: ServingSettings) -> FastLane:
    """The protocol factory for the listening socket: the fast lane, handing everything else to aiohttp.

    With ``fast_lane`` off or ``access_log`` on, the fast lane only judges each connection's first head
    (bytes that are not HTTP get a 400 at once, a stalled head is closed after ``keepalive_timeout``) and
    then hands every request to aiohttp, which logs them. Call with the runner set up.
    """
    server = runner.server
    assert server is not None
    return FastLane(app[HOT], protocol_factory(server), app[METRICS], keepalive_timeout=serving.keepalive_timeout,
                    max_head_bytes=serving.max_header_bytes,
                    answers=serving.fast_lane and not serving.access_log)


def run_worker(settings: Settings, *, reuse_port: bool, metrics_file: Path | None = None) -> int:
    """Run one gateway process on a fresh event loop (uvloop when installed) until signalled; its exit code."""
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
    serving = settings.serving
    state = app[STATE]
    app.on_response_prepare.append(_closing_while_draining(state))
    shared = share(app[METRICS], metrics_file) if metrics_file is not None else None
    # The drain below gives requests shutdown_timeout; aiohttp's own shutdown only has to clean up after it.
    options = {**runner_options(serving), "shutdown_timeout": _AIOHTTP_LAST_WAIT}
    runner = web.AppRunner(app, handle_signals=False, **options)
    await runner.setup()
    front = front_end(app, runner, serving)
    host, port = serving.listen_host_port
    try:
        listener = await loop.create_server(front, host, port, reuse_port=reuse_port or None,
                                            reuse_address=True, backlog=2048)
    except OSError as exc:
        log.error("cannot listen", listen=serving.listen, error=exc.strerror or str(exc))
        await runner.cleanup()
        return 1
    gc_policy = GcPolicy(serving.gc_full_interval)
    gc_policy.start()
    publisher = asyncio.ensure_future(shared.publish_periodically()) if shared is not None else None
    log.info("gateway listening", listen=serving.listen, public_url=settings.public_url,
             database=settings.database_url.split(":", 1)[0], reuse_port=reuse_port,
             event_loop=type(loop).__module__.split(".")[0], fast_lane=front.answers)
    await stop.wait()

    log.info("shutting down: readiness off, finishing in-flight requests",
             delay=serving.shutdown_delay, timeout=serving.shutdown_timeout)
    try:
        await _drain(serving, state, listener, front, runner)
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


async def _drain(serving: ServingSettings, state: RuntimeState, listener: asyncio.Server, front: FastLane,
                 runner: web.AppRunner) -> None:
    """Readiness off and keep-alive retired at once; accept for ``shutdown_delay``; then stop accepting and
    let every request in flight finish within ``shutdown_timeout`` (see the module docstring)."""
    state.draining = True
    started = time.monotonic()
    front.begin_draining()
    if serving.shutdown_delay > 0:
        await asyncio.sleep(serving.shutdown_delay)
    await stop_listening(listener, front)
    grace = float(serving.shutdown_timeout)
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
