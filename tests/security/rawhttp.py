"""Bytes on a socket, answers with a deadline: the corpus's HTTP client.

Every case sends exactly the bytes it means (duplicate or malformed headers, absolute-form targets, bare CRs,
binary garbage, pipelined requests) and reads what comes back within a budget (2 s). The outcome says how
many responses arrived, whether the server closed the connection, and whether it hung: neither a first
response nor a close within the budget.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.deploy.stack import Reply

BUDGET = 2.0
"""Seconds a server gets to answer (or close) before the case counts as a hang."""


class Response(Reply):
    """One HTTP/1.x response as received (headers in arrival order, names as sent), with a report line.

    Set-Cookie values are taken as sent (tokens are never quoted).
    """

    def short(self) -> str:
        """``status``, the Location if any, and a little of the body, for reports."""
        out = str(self.status)
        location = self.header("Location")
        if location is not None:
            out += f" -> {location!r}"
        body = self.text.replace("\n", " ")
        return f"{out} {body[:80]!r}" if body else out


@dataclass
class Exchange:
    """What one connection brought back."""

    responses: list[Response] = field(default_factory=list)
    closed: bool = False
    """The server closed (or reset) the connection."""
    hang: bool = False
    """Nothing at all within the budget: no response and no close."""
    elapsed: float = 0.0
    error: str = ""
    """Bytes that did not parse as a response, or a connect error."""

    @property
    def first(self) -> Response | None:
        """The first response, if any."""
        return self.responses[0] if self.responses else None

    def statuses(self) -> list[int]:
        """Every response's status, in order."""
        return [r.status for r in self.responses]

    def short(self) -> str:
        """The outcome in a few words, for reports."""
        parts = [r.short() for r in self.responses]
        if self.hang:
            parts.append(f"HANG ({self.elapsed:.1f} s)")
        elif self.closed:
            parts.append("closed")
        if self.error:
            parts.append(self.error)
        return ", ".join(parts) or "nothing"


class _Incomplete(Exception):
    """More bytes are needed to finish the response."""


def _parse_one(buffer: bytes, head_only: bool) -> tuple[Response, int]:
    """Parse one response from the start of ``buffer``; return it and the bytes consumed."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > 256 * 1024:
            raise ValueError("response head too long")
        raise _Incomplete
    lines = buffer[:end].decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:60]!r}")
    status = int(status_line[1])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    response = Response(status, headers, b"")
    start = end + 4
    if head_only or status in (204, 304) or 100 <= status < 200:
        return response, start
    if any(v.lower() == "chunked" for v in response.all("Transfer-Encoding")):
        pos, body = start, b""
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                raise _Incomplete
            size = int(buffer[pos:line_end].split(b";")[0].strip() or b"0", 16)
            pos = line_end + 2
            if size == 0:
                trailer_end = buffer.find(b"\r\n", pos)
                while trailer_end >= 0 and trailer_end != pos:  # skip trailer lines
                    pos = trailer_end + 2
                    trailer_end = buffer.find(b"\r\n", pos)
                if trailer_end < 0:
                    raise _Incomplete
                response.body = body
                return response, pos + 2
            if len(buffer) < pos + size + 2:
                raise _Incomplete
            body += buffer[pos:pos + size]
            pos += size + 2
    length = response.header("Content-Length")
    if length is not None:
        size = int(length)
        if len(buffer) < start + size:
            raise _Incomplete
        response.body = buffer[start:start + size]
        return response, start + size
    raise _Incomplete  # body until close


def _last_response(buffer: bytes, head_only: bool, out: Exchange) -> None:
    """The connection closed with ``buffer`` unparsed: a response whose body ran until the close, or junk."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        out.error = "truncated response"
        return
    try:
        response, _ = _parse_one(buffer[:end + 4], True)
    except (ValueError, _Incomplete) as exc:
        out.error = str(exc) or "truncated response"
        return
    declared = response.header("Content-Length")
    response.body = buffer[end + 4:]
    if head_only:
        response.body = b""
    elif declared is not None and declared.isdigit() and len(response.body) < int(declared):
        out.error = "truncated response"
    out.responses.append(response)


def exchange(port: int, data: bytes | Sequence[bytes], *, expect: int = 1, budget: float = BUDGET,
             source: str | None = None, head_only: bool = False, pause: float = 0.0,
             host: str = "127.0.0.1") -> Exchange:
    """Connect to ``host:port`` (from ``source`` when given), send ``data`` and read up to ``expect`` responses.

    ``data`` may be a list of pieces sent ``pause`` seconds apart. Reading stops at ``expect`` responses, at
    a close, or when ``budget`` seconds have passed since the last byte was sent; only a connection that
    gave neither a response nor a close by then counts as a hang. ``head_only``: the responses answer HEAD
    requests (no bodies).
    """
    pieces = [data] if isinstance(data, bytes) else list(data)
    out = Exchange()
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=budget,
                                        source_address=(source, 0) if source else None)
    except OSError as exc:
        out.error = f"connect failed: {exc}"
        out.closed = True
        return out
    buffer = b""
    try:
        try:
            for i, piece in enumerate(pieces):
                if i and pause:
                    time.sleep(pause)
                sock.sendall(piece)
        except OSError:
            out.closed = True  # the server closed (or reset) while we were still sending
        deadline = time.monotonic() + budget
        while len(out.responses) < expect:
            try:
                response, used = _parse_one(buffer, head_only)
            except _Incomplete:
                pass
            except ValueError as exc:
                out.error = str(exc)
                break
            else:
                buffer = buffer[used:]
                if 100 <= response.status < 200 and response.status != 101:
                    continue
                out.responses.append(response)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                out.hang = not out.responses and not out.closed
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                out.closed = True
                if buffer:
                    _last_response(buffer, head_only, out)
                break
            buffer += chunk
        if len(out.responses) >= expect and not out.closed:
            # Did the server close right after its last answer? Look briefly, without waiting long.
            sock.settimeout(0.05)
            try:
                out.closed = sock.recv(1) == b""
            except (TimeoutError, BlockingIOError):
                pass
            except OSError:
                out.closed = True
    finally:
        out.elapsed = time.monotonic() - started
        sock.close()
    return out


def request(method: str, target: str, headers: Sequence[tuple[str, str]] = (), body: bytes | None = None, *,
            version: str = "1.1", host: str | None = "127.0.0.1") -> bytes:
    """One request's bytes: ``Host`` first (unless ``host`` is None), then ``headers`` exactly as given."""
    lines = [f"{method} {target} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    return head + (body or b"")
