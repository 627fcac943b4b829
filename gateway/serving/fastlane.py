"""The fast lane: a lean HTTP/1.1 front-end for the check path, in front of aiohttp on the same port.

Every connection starts here. A request for ``/auth/check``, ``/auth/check/{anything}`` or
``/auth/webhook`` in the plain form proxies send (HTTP/1.1 or 1.0, ASCII head, ``Content-Length`` framing or
no body) is parsed, decided by the same framework-free endpoints the aiohttp routes use, and answered with
bytes written straight to the transport; a cached session is answered without scheduling anything.
Anything else (another path, chunked bodies, ``Expect``, ``Upgrade``, odd header bytes, a head
or body over the limits) is handed, from the first byte of that request on, to aiohttp's own protocol,
which then owns the connection for the rest of its life. So the fast lane only ever accepts a strict
subset of HTTP and aiohttp answers everything else exactly as it would on its own.

Connections idle (or stuck mid-request) longer than ``keepalive_timeout`` are closed. Draining (see
:meth:`FastLane.begin_draining` and :meth:`FastLane.shutdown`): a request is in flight from its first byte
on, so a connection holding part of one is left to finish it; every answer from then on says
``Connection: close`` and closes its connection, and a connection between requests stays open a moment
before it is closed, so a request already on its way over it is answered rather than met with a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import structlog
from multidict import CIMultiDict

from gateway import __version__
from gateway.handlers.hot import HotEndpoints
from gateway.metrics import Metrics
from gateway.protocol import BAD_REQUEST_TEXT
from gateway.reply import Reply

log = structlog.get_logger("gateway.serving.fastlane")

# Request line and header lines of the strict subset; the blank line is matched by the caller.
_HEAD = re.compile(
    r"([A-Z]{1,16}) (/auth/(?:check|webhook)[!-~]*) HTTP/1\.([01])\r\n"
    r"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~]*\r\n)*)"
)
_HANDOVER_HEADERS = frozenset({"transfer-encoding", "expect", "upgrade", "content-encoding"})
_SERVER = f"forward-auth-gateway/{__version__}"
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_SWEEP_EVERY = 1.0
_DRAIN_POLL = 0.02
_KEEP = b"\r\n"
_KEEP_1_0 = b"Connection: keep-alive\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"


class FastLane:
    """The protocol factory for the listening socket, and the state every connection shares."""

    def __init__(self, endpoints: HotEndpoints, fallback: Callable[[], asyncio.Protocol], metrics: Metrics, *,
                 keepalive_timeout: float, max_head_bytes: int, answers: bool = True) -> None:
        self.check = endpoints.check
        self.webhook = endpoints.webhook
        self.fallback = fallback
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = endpoints.webhook.max_body
        self._keepalive_timeout = keepalive_timeout
        self._accepted = metrics.connections_accepted
        self.counts = metrics.hot.fast_lane
        self.answers = answers
        """False: judge each connection's first head, then hand every request to aiohttp (its access log)."""
        self.internal_error = Reply(500, {"Content-Type": "application/json"}, b'{"error":"internal_error"}')
        self.bad_request = Reply(400, {"Content-Type": "text/plain; charset=utf-8"}, BAD_REQUEST_TEXT.encode())
        self.connections: set[_Connection] = set()
        self.date = b""
        self.draining = False
        self._drain_started = 0.0
        self._sweeper: asyncio.TimerHandle | None = None
        self._tick()

    def __call__(self) -> asyncio.Protocol:
        """A protocol for one new connection."""
        self._accepted.inc()
        conn = _Connection(self)
        if self.draining:
            conn.closing = True
        return conn

    def _tick(self) -> None:
        """Once a second: refresh the ``Date`` header and close connections idle too long."""
        self.date = b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
        deadline = time.monotonic() - self._keepalive_timeout
        for conn in [c for c in self.connections if c.last_active < deadline and c.task is None]:
            conn.close()
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_EVERY, self._tick)

    def begin_draining(self) -> None:
        """From now on every answer, on every connection old or new, says ``Connection: close`` and closes
        its connection: keep-alive connections are retired one answered request at a time (the client
        learns it from the answer, instead of finding the connection closed under its next request)."""
        if self.draining:
            return
        self.draining = True
        self._drain_started = time.monotonic()
        for conn in self.connections:
            conn.closing = True

    async def shutdown(self, grace: float, *, linger: float = 0.0) -> None:
        """Drain and close every connection; call once the listener is closed. Returns within ``grace``.

        A connection holding any part of a request (its first byte counts), or waiting on a check's I/O,
        is in flight: it gets until ``grace`` runs out to receive and answer it (with ``Connection:
        close``). A connection between requests is closed once draining has gone on for ``linger`` seconds
        and it has been quiet that long: a request already on its way is answered, not reset. When
        ``grace`` runs out, whatever is left is closed (an answer still being waited for is dropped).
        """
        self.begin_draining()
        deadline = time.monotonic() + grace
        try:
            while True:
                now = time.monotonic()
                quiet_since = now - linger
                may_close_idle = self._drain_started <= quiet_since
                waiting = False
                for conn in list(self.connections):
                    if conn.transport is None or conn.transport.is_closing():
                        continue
                    if may_close_idle and conn.task is None and not conn.buffer and conn.last_active <= quiet_since:
                        conn.close()
                    else:
                        waiting = True
                if not waiting or now >= deadline:
                    return
                await asyncio.sleep(min(_DRAIN_POLL, deadline - now))
        finally:
            for conn in list(self.connections):
                conn.close()
            if self._sweeper is not None:
                self._sweeper.cancel()


class _Connection(asyncio.Protocol):
    """One client connection while the fast lane owns it."""

    __slots__ = ("buffer", "closing", "lane", "last_active", "peer", "read_paused", "task", "transport",
                 "write_paused")

    def __init__(self, lane: FastLane) -> None:
        self.lane = lane
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buffer = b""
        self.task: asyncio.Future[Reply] | None = None
        self.last_active = time.monotonic()
        self.closing = False
        self.write_paused = False
        self.read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.lane.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # A check in flight runs to its end (as aiohttp's handlers do): other requests for the same
        # token may be waiting on its lookup. Its answer is dropped.
        self.lane.connections.discard(self)
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None:
            self.transport.resume_reading()
            self._process()

    def data_received(self, data: bytes) -> None:
        self.buffer = self.buffer + data if self.buffer else data
        self.last_active = time.monotonic()
        if self.task is None and not self.write_paused:
            self._process()
        elif len(self.buffer) > self.lane.max_head_bytes and self.transport is not None and not self.read_paused:
            # Requests pipelined behind one that waits: stop reading until it is answered.
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        # Half-closed by the client: finish what is in flight, then close (False closes the transport).
        if self.task is None:
            return False
        self.closing = True
        return True

    def close(self) -> None:
        """Close the connection (the answer to a request in flight is dropped)."""
        if self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        """Answer every complete request in the buffer, in order; stop at one that must wait."""
        lane = self.lane
        while self.buffer and self.transport is not None and self.task is None and not self.write_paused:
            buffer = self.buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                # A head ended by bare LFs never contains CRLFCRLF, and bytes that cannot begin the strict
                # subset (TLS, binary, bare CRs) would wait for the keep-alive timeout: let aiohttp judge
                # them now (it answers 400 at once to what is not HTTP).
                if len(buffer) > lane.max_head_bytes or b"\n\n" in buffer or b"\n\r\n" in buffer \
                        or not _could_begin_a_request(buffer):
                    self._hand_over()
                elif _not_a_request_line(buffer):
                    self._refuse_malformed()
                return
            if end > lane.max_head_bytes or (not buffer.isascii() and not buffer[:end].isascii()):
                self._hand_over()
                return
            match = _HEAD.fullmatch(buffer[:end + 2].decode("ascii")) if lane.answers else None
            if match is None:
                if _not_a_request_line(buffer):
                    self._refuse_malformed()
                else:
                    self._hand_over()
                return
            method, target, minor, lines = match.groups()
            headers = CIMultiDict([_split(line) for line in lines.split("\r\n")[:-1]])
            length = 0
            lengths = headers.getall("Content-Length", ())
            if lengths:
                if len(lengths) > 1 or not lengths[0].isdigit() or len(lengths[0]) > 12:
                    self._hand_over()
                    return
                length = int(lengths[0])
            if length > lane.max_body_bytes or any(map(headers.__contains__, _HANDOVER_HEADERS)):
                self._hand_over()
                return
            start = end + 4
            if len(buffer) < start + length:
                return  # wait for the rest of the body
            path = target.partition("?")[0]
            try:
                if path.startswith("/auth/check"):
                    if path != "/auth/check" and not path.startswith("/auth/check/"):
                        self._hand_over()
                        return
                    answer = lane.check.answer(method, target, headers, self.peer, path != "/auth/check")
                elif path == "/auth/webhook" and method in ("GET", "POST"):
                    answer = lane.webhook.answer(method, headers, buffer[start:start + length], self.peer)
                else:
                    self._hand_over()
                    return
            except Exception:  # a bug: fail closed, visibly
                log.exception("check failed unexpectedly", path=path)
                self._send(self.lane.internal_error, _CLOSE)
                return
            self.buffer = buffer[start + length:]
            lane.counts["requests"] += 1
            connection = headers.get("Connection", "").lower()
            if minor == "1":
                persist = _CLOSE if "close" in connection else _KEEP
            else:
                persist = _KEEP_1_0 if "keep-alive" in connection else _CLOSE
            if isinstance(answer, Reply):
                self._send(answer, persist)
            else:
                self._wait_for(answer, persist)

    def _wait_for(self, answer: asyncio.Future[Reply], persist: bytes) -> None:
        """Send an answer that needs I/O when it is ready; later requests on this connection wait for it."""
        task = self.task = answer

        def done(finished: asyncio.Future[Reply]) -> None:
            self.task = None
            if finished.cancelled() or self.transport is None:
                return
            error = finished.exception()
            if error is not None:
                log.error("check failed unexpectedly", exc_info=error)
                self._send(self.lane.internal_error, _CLOSE)
                return
            self._send(finished.result(), persist)
            if self.read_paused and self.transport is not None:
                self.read_paused = False
                self.transport.resume_reading()
            self._process()

        task.add_done_callback(done)

    def _send(self, reply: Reply, persist: bytes) -> None:
        """Write one answer; ``persist`` is the connection header line (:data:`_CLOSE` closes after it)."""
        transport = self.transport
        if transport is None:
            return
        wire = reply.wire
        if wire is None:
            wire = reply.wire = _serialise_head(reply)
        if self.closing:
            persist = _CLOSE
        transport.write(wire + self.lane.date + persist + reply.body)
        if persist is _CLOSE:
            self.buffer = b""
            transport.close()
        self.last_active = time.monotonic()

    def _refuse_malformed(self) -> None:
        """Answer 400 and close: a complete first line that is no HTTP/1.x request line (HTTP/0.9, SMTP,
        ...), which aiohttp would wait on for a head that never comes."""
        log.info("malformed request refused", client=self.peer)
        self._send(self.lane.bad_request, _CLOSE)

    def _hand_over(self) -> None:
        """Give this connection, from the current request on, to aiohttp's protocol."""
        transport = self.transport
        assert transport is not None
        self.lane.counts["handovers"] += 1
        self.lane.connections.discard(self)
        self.transport = None
        protocol = self.lane.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        buffer, self.buffer = self.buffer, b""
        if self.read_paused or self.write_paused:
            with contextlib.suppress(RuntimeError):
                transport.resume_reading()
        protocol.data_received(buffer)


_REQUEST_LINE_START = re.compile(rb"[A-Z]{1,16}(?: [!-~]*(?: [!-~]*)?)?")
_BARE_CR = re.compile(rb"\r(?!\n)")
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


_REQUEST_LINE = re.compile(rb"[A-Z][A-Z_-]{0,19} [!-~]+ HTTP/[0-9]\.[0-9]")


def _not_a_request_line(buffer: bytes) -> bool:
    """True when ``buffer``'s first line is complete and is not ``METHOD SP target SP HTTP/x.y``."""
    end = buffer.find(b"\r\n")
    return end >= 0 and _REQUEST_LINE.fullmatch(buffer, 0, end) is None


def _could_begin_a_request(partial: bytes) -> bool:
    """False when ``partial`` (a head without its blank line yet) can no longer be a request the fast lane
    takes: a first line that is not ``METHOD SP target...``, a byte outside ASCII, a control character
    other than tab, CR and LF, or a CR not followed by LF (one at the very end may still get its LF)."""
    if not partial.isascii() or _CONTROL.search(partial):
        return False
    first = partial.split(b"\r\n", 1)[0]
    if not _REQUEST_LINE_START.fullmatch(first.rstrip(b"\r")):
        return False
    bare = _BARE_CR.search(partial)
    return bare is None or bare.end() == len(partial)


def _split(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name, value.strip(" \t")


def _serialise_head(reply: Reply) -> bytes:
    """Status line and headers (no ``Date``, no final blank line); UTF-8 like aiohttp."""
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in reply.headers.items())
    lines.append(f"Content-Length: {len(reply.body)}\r\nServer: {_SERVER}\r\n")
    return "".join(lines).encode()

