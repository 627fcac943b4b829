"""Gateways on a real PostgreSQL for the database fault tests: processes on a chosen event loop, the
database's own faults (stop in each mode, SIGKILL, terminated backends), sessions, and a fixed-rate client.

A gateway runs as ``python -c`` (one process, the event loop the test names, exactly as ``gateway serve``
would run it) or as ``gateway serve --workers N`` (which picks uvloop when installed, like production).
Its log is JSON; :meth:`PgGateway.stop` sends SIGTERM, waits, and returns the exit code, and
:meth:`PgGateway.problems` lists every log line that shows a leak or a lost error (an unclosed
connection, an exception nobody retrieved, a traceback, a ResourceWarning).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg2

from tests.deploy.stack import REPO, http, unavailable, wait_until
from tests.faults import RUN_ON_LOOP
from tests.helpers import PostgresCluster, free_port

LOOPS = ("uvloop", "asyncio")
"""The event loops every fault test runs under (uvloop is what ``gateway serve`` picks in production)."""

FULL = os.environ.get("GATEWAY_FAULTS_FULL") == "1"
"""The full fault run (10,000 revocations, longer outages); CI runs a lighter one."""

COOKIE = "gw_session"
T = TypeVar("T")

LEAK_MARKS = ("Unclosed", "never retrieved", "Traceback", "ResourceWarning", "Exception ignored",
              "Task was destroyed")
"""Log fragments that mean a connection or a task was leaked, or an error was lost."""


def require_loop(loop: str) -> None:
    """Skip (or fail under GATEWAY_TEST_STRICT=1) when ``loop`` is uvloop and it is not installed."""
    if loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            unavailable("uvloop is not installed (pip install '.[speed]')")


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """``asyncio.Runner``'s loop factory for ``loop``."""
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


RUN_LIMIT = 420.0
"""Seconds :func:`run_on` lets ``main()`` run (the longest full fault run takes about three minutes): past
it, ``main()`` is cancelled and TimeoutError says where it waited, before pytest-timeout's limit ends the
whole test with less to say."""


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion on a new event loop of kind ``loop`` (``uvloop`` or ``asyncio``), for at
    most :data:`RUN_LIMIT` seconds."""
    require_loop(loop)
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(asyncio.wait_for(main(), RUN_LIMIT))


@dataclass
class PgGateway:
    """One gateway process under test."""

    name: str
    loop: str
    url: str
    log: Path
    proc: subprocess.Popen[bytes]
    exit_code: int | None = field(default=None)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def problems(self) -> list[str]:
        """Log lines that show a leaked connection or task, or an exception nobody retrieved."""
        return [line for line in self.log_text().splitlines() if any(mark in line for mark in LEAK_MARKS)]

    def events(self, event: str) -> list[dict[str, object]]:
        """The JSON log lines whose event is ``event``."""
        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == event:
                        found.append(record)
        return found

    def metric(self, name: str) -> float:
        """One unlabelled sample of ``/metrics`` (NaN when absent)."""
        reply = http("GET", self.url + "/metrics", timeout=5)
        for line in reply.body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return float("nan")

    def ready(self) -> tuple[int, str]:
        """``/readyz``: status and the ``status`` field."""
        reply = http("GET", self.url + "/readyz", timeout=5)
        return reply.status, str(json.loads(reply.body or b"{}").get("status", ""))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit, and return its code (killed after ``timeout``: a failure)."""
        if self.exit_code is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = -9
        return self.exit_code


@contextlib.contextmanager
def run_gateway(loop: str, database_url: str, directory: Path, *, name: str = "gateway", workers: int = 1,
                port: int | None = None, **settings: str) -> Iterator[PgGateway]:
    """Run a gateway (``loop``: ``uvloop`` or ``asyncio``; with ``workers`` > 1, ``gateway serve --workers``)
    on ``database_url`` until the block ends; yields once ``/readyz`` answers 200.

    ``settings`` are extra ``GATEWAY_*`` variables (``cache_ttl="1h"`` sets ``GATEWAY_CACHE_TTL``); ``port``
    is a free one unless given (a test that sets ``public_url`` picks it first).
    """
    require_loop(loop)
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({
        "GATEWAY_DATABASE_URL": database_url, "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_LOG_FORMAT": "json", "GATEWAY_LOG_LEVEL": "info", "GATEWAY_CACHE_TTL": "1h",
        "GATEWAY_DATABASE_CONNECT_TIMEOUT": "1s", "GATEWAY_DATABASE_QUERY_TIMEOUT": "1s",
        "GATEWAY_SHUTDOWN_DELAY": "0", "GATEWAY_SHUTDOWN_TIMEOUT": "5s",
        "PYTHONWARNINGS": "always::ResourceWarning",
    })
    env.update({f"GATEWAY_{key.upper()}": value for key, value in settings.items()})
    if workers > 1:
        command = [sys.executable, "-m", "gateway", "serve", "--workers", str(workers)]
    else:
        command = [sys.executable, "-c", RUN_ON_LOOP, loop]
    log = directory / f"{name}.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    gateway = PgGateway(name, loop, f"http://127.0.0.1:{port}", log, proc)
    try:
        def ready() -> bool:
            try:
                return http("GET", gateway.url + "/readyz", timeout=1).status == 200
            except OSError:
                return False

        wait_until(ready, name, proc=proc, log=log, timeout=30)
        yield gateway
    finally:
        gateway.stop()


# -- the database ---------------------------------------------------------------------------------------


def stop_database(cluster: PostgresCluster, mode: str) -> None:
    """Stop the server: ``fast`` or ``immediate`` (pg_ctl modes), or ``kill`` (SIGKILL to the postmaster,
    as the OOM killer would; its backends notice and exit by themselves)."""
    if mode == "kill":
        pid = int((cluster.datadir / "postmaster.pid").read_text().splitlines()[0])
        doomed = [pid, *_children(pid)]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        # a new postmaster must not start while an orphaned backend still holds the shared memory
        while any(_running(p) for p in doomed):
            assert time.monotonic() < deadline, "postgres processes still running after SIGKILL"
            time.sleep(0.05)
        # what a postmaster removes when it exits normally
        (cluster.datadir / "postmaster.pid").unlink(missing_ok=True)
        for name in (f".s.PGSQL.{cluster.port}", f".s.PGSQL.{cluster.port}.lock"):
            (cluster.sockdir / name).unlink(missing_ok=True)
    else:
        command = [str(cluster.bindir / "pg_ctl"), "-D", str(cluster.datadir), "-m", mode, "-w", "-t", "60", "stop"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=90)
    cluster.running = False


def _children(parent: int) -> list[int]:
    """The pids whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def terminate_backends(admin_url: str, application_name: str | None = None) -> int:
    """``pg_terminate_backend`` every other connection to the database of ``admin_url`` (those with
    ``application_name`` only, when given); how many were terminated."""
    with contextlib.closing(psycopg2.connect(admin_url, connect_timeout=5)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND (%(name)s::text IS NULL OR application_name = %(name)s)",
                        {"name": application_name})
            return int(cur.fetchone()[0])


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- clients ---------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a client saw: status counts by kind of request, and every answer past a deadline."""

    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, status: int) -> None:
        by_status = self.statuses.setdefault(kind, {})
        by_status[status] = by_status.get(status, 0) + 1

    def fail(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def of(self, kind: str) -> dict[int, int]:
        return self.statuses.get(kind, {})

    def server_errors(self, kind: str) -> int:
        return sum(n for status, n in self.of(kind).items() if status >= 500)


async def steady_checks(url: str, tokens: list[str], tally: Tally, kind: str, *, rate: float,
                        stop: asyncio.Event, path: str = "/auth/check", timeout: float = 10.0) -> None:
    """Check ``tokens`` round-robin at ``rate`` per second until ``stop`` is set, counting statuses under
    ``kind`` (a request that gets no answer within ``timeout`` counts as an error)."""
    import aiohttp

    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    i = 0
    in_flight: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as client:

        async def one(token: str) -> None:
            try:
                async with client.get(url + path, headers={"Cookie": f"{COOKIE}={token}"}) as response:
                    await response.read()
                    tally.count(kind, response.status)
            except (aiohttp.ClientError, TimeoutError):
                tally.fail(kind)

        while not stop.is_set():
            task = asyncio.ensure_future(one(tokens[i % len(tokens)]))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        if in_flight:
            await asyncio.wait(in_flight)


async def status_of(url: str, token: str, path: str = "/auth/check", timeout: float = 10.0) -> int:
    """One check's status."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as client, \
            client.get(url + path, headers={"Cookie": f"{COOKIE}={token}"}) as response:
        await response.read()
        return response.status
