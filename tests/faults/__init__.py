"""Fault tests: real ``gateway`` processes stopped and restarted under real clients (and real nginx).

Shared here: starting a gateway process on a chosen event loop, and reading raw HTTP/1.1 answers off a
socket until the server closes it, so a test can tell a clean close (FIN after the last answer) from a
reset or a missing answer.

Event loops: ``gateway serve`` picks uvloop whenever it is installed (``gateway.serving.server._new_event_loop``)
and has no setting to choose. :func:`start_gateway_on` therefore runs the very function ``serve`` runs,
:func:`gateway.serving.server.run_until_signalled`, from ``python -c`` with the loop a test asks for, and checks the
process's own "gateway listening" log line names that loop. ``loop="serve"`` runs ``gateway serve`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.stack import (
    DEFAULT_ACCESS_TOML,
    Gateway,
    start_gateway,
    unavailable,
)

LOOPS = ("uvloop", "asyncio")
"""The event loops a fault test runs under (uvloop is what production uses when it is installed)."""

RUN_ON_LOOP = """\
import asyncio, sys
from gateway.logging import configure_logging
from gateway.serving.server import run_until_signalled
from gateway.settings import load_or_raise

settings = load_or_raise()
configure_logging(settings.log_format, settings.log_level)
if sys.argv[1] == "uvloop":
    import uvloop
    factory = uvloop.new_event_loop
else:
    factory = asyncio.new_event_loop
with asyncio.Runner(loop_factory=factory) as runner:
    sys.exit(runner.run(run_until_signalled(settings)))
"""
"""``python -c RUN_ON_LOOP uvloop|asyncio``: one gateway process on the chosen event loop (settings from the
environment)."""


def require_loop(loop: str) -> None:
    """Skip (or fail under GATEWAY_TEST_STRICT=1) when ``loop`` is uvloop and it is not installed."""
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        unavailable("uvloop is not installed (pip install '.[speed]')")


@contextlib.contextmanager
def start_gateway_on(loop: str, directory: Path, *, port: int, public_url: str = "http://127.0.0.1",
                     redirect_hosts: Sequence[str] = ("127.0.0.1",), access_toml: str = DEFAULT_ACCESS_TOML,
                     extra_toml: str = "", database: Path | None = None,
                     extra_env: Mapping[str, str] | None = None) -> Iterator[Gateway]:
    """Run one gateway process (``loop``: ``"uvloop"``, ``"asyncio"`` or ``"serve"``) until the block ends.

    The config is :func:`tests.deploy.stack.gateway_toml` (SQLite ``database``, by default in ``directory``)
    plus ``extra_env`` (``GATEWAY_*`` settings); returns once ``/readyz`` answers 200. On exit the process
    is sent SIGTERM if it still runs.
    """
    require_loop(loop)
    command = None if loop == "serve" else [sys.executable, "-c", RUN_ON_LOOP, loop]
    with start_gateway(directory, port=port, public_url=public_url, redirect_hosts=redirect_hosts,
                       access_toml=access_toml, extra_toml=extra_toml, database=database, env=extra_env,
                       command=command) as gateway:
        if loop != "serve":
            assert log_events(gateway, "gateway listening")[0]["event_loop"] == loop
        yield gateway


def log_events(gateway: Gateway, event: str) -> list[dict[str, object]]:
    """Every JSON log line of ``gateway`` whose event is ``event``, oldest first."""
    lines = [json.loads(line) for line in gateway.log_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


@dataclass
class Answer:
    """One HTTP/1.1 response read off the wire (header names lower-cased)."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Transcript:
    """Everything a server sent on one connection until it closed it."""

    answers: list[Answer]
    reset: bool
    """True when the connection ended in a reset instead of a clean close."""


def parse_answers(data: bytes) -> list[Answer]:
    """The responses in ``data``: each a head and a ``Content-Length`` body (1xx responses included)."""
    answers = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        assert len(rest) >= length, f"truncated body: {data[:200]!r}"
        answers.append(Answer(int(lines[0].split(" ")[1]), headers, rest[:length]))
        data = rest[length:]
    return answers


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 15.0) -> Transcript:
    """Read until the server closes the connection (or ``timeout`` passes: a failure)."""
    chunks: list[bytes] = []
    reset = False
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                break
            chunks.append(chunk)
    return Transcript(parse_answers(b"".join(chunks)), reset)


async def connection_refused(host: str, port: int) -> bool:
    """True when nothing accepts connections on ``host:port`` any more."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False
