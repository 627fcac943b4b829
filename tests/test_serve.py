"""`gateway serve` as a real process: workers sharing a port, revocation across them, SIGTERM, no secrets in logs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import free_port
from tests.test_fastlane import read_answer

COOKIE = "gw_session"


class Served:
    """A `gateway serve` subprocess and its captured log."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path, env: dict[str, str]) -> None:
        self.proc, self.url, self.log, self.env = proc, url, log, env

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=60, check=False)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _start(database_url: str, tmp_path: Path, workers: int, name: str = "gateway",
           **extra_env: str) -> Iterator[Served]:
    port = free_port()
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_LISTEN": f"127.0.0.1:{port}",
           "GATEWAY_LOG_FORMAT": "json", "GATEWAY_LOG_LEVEL": "debug", "GATEWAY_CACHE_TTL": "1h", **extra_env}
    env.pop("GATEWAY_CONFIG", None)
    log = tmp_path / f"{name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--workers", str(workers)],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    served = Served(proc, f"http://127.0.0.1:{port}", log, env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(served.url + "/readyz", timeout=1) as resp:  # noqa: S310 - our http URL
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, served.log_text()
            assert time.monotonic() < deadline, "gateway never became ready:\n" + served.log_text()
            time.sleep(0.2)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def two_workers(postgres_url: str, tmp_path: Path) -> Iterator[Served]:
    yield from _start(postgres_url, tmp_path, workers=2)


@pytest.fixture
def one_sqlite(sqlite_url: str, tmp_path: Path) -> Iterator[Served]:
    yield from _start(sqlite_url, tmp_path, workers=1)


async def statuses(url: str, token: str, count: int) -> list[int]:
    """``count`` checks, each on a new connection so SO_REUSEPORT spreads them over the workers."""
    async def one() -> int:
        async with (aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
                    session.get(f"{url}/auth/check", headers={"Cookie": f"{COOKIE}={token}"}) as resp):
            return resp.status
    return list(await asyncio.gather(*(one() for _ in range(count))))


@pytest.mark.postgres
async def test_workers_share_the_port_and_revocation_reaches_all_of_them(two_workers: Served) -> None:
    minted = two_workers.cli("tokens", "mint", "--email", "ops@example.com", "--role", "admin")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert await statuses(two_workers.url, token, 40) == [200] * 40  # now cached in both workers

    revoked = two_workers.cli("tokens", "revoke", "-", stdin=token + "\n")
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    while set(await statuses(two_workers.url, token, 40)) != {401}:
        assert time.monotonic() - started < 1.0, "a worker still admits a revoked token after 1 s"
        await asyncio.sleep(0.05)

    started_lines = [line for line in map(json.loads, filter(None, two_workers.log_text().splitlines()))
                     if line.get("event") == "started workers"]
    assert len(started_lines[0]["pids"]) == 2, two_workers.log_text()

    two_workers.proc.send_signal(signal.SIGTERM)
    assert two_workers.proc.wait(30) == 0


async def test_sigterm_stops_cleanly_and_logs_never_hold_secrets(one_sqlite: Served) -> None:
    minted = one_sqlite.cli("tokens", "mint", "--email", "dev@example.com")
    token = minted.stdout.strip()
    garbage = "gwt_" + "Z" * 43
    async with aiohttp.ClientSession() as session:
        for headers in ({"Cookie": f"{COOKIE}={token}"}, {"Authorization": f"Bearer {token}"},
                        {"Cookie": f"{COOKIE}={garbage}"}, {"Cookie": f"{COOKIE}=notatoken-SECRETISH"},
                        {"Authorization": "Bearer SECRETISH-bearer"}):
            async with session.get(f"{one_sqlite.url}/auth/check", headers=headers):
                pass
            async with session.get(f"{one_sqlite.url}/auth/webhook", headers=headers):
                pass
    assert one_sqlite.cli("tokens", "revoke", "-", stdin=token).returncode == 0
    one_sqlite.proc.send_signal(signal.SIGTERM)
    assert one_sqlite.proc.wait(30) == 0
    text = one_sqlite.log_text()
    assert "check denied" in text and "webhook denied" in text
    for secret in (token, token[4:20], garbage[4:20], "SECRETISH"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all("request_id" in line for line in lines if line.get("event") in {"check denied", "webhook denied"})
    assert any(line.get("event") == "stopped" for line in lines)


@pytest.mark.postgres
async def test_three_instances_on_one_database_behave_as_one(postgres_url: str, tmp_path: Path) -> None:
    """Sign in once, get cached on three separate instances, log out on one: all three refuse within 1 s."""
    with contextlib.ExitStack() as stack:
        instances = [stack.enter_context(contextlib.contextmanager(_start)(postgres_url, tmp_path, 1, f"gw{i}"))
                     for i in range(3)]
        minted = instances[0].cli("tokens", "mint", "--email", "trio@example.com")
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        for served in instances:
            assert await statuses(served.url, token, 5) == [200] * 5
        async with (aiohttp.ClientSession() as session,
                    session.post(f"{instances[1].url}/logout", headers={"Authorization": f"Bearer {token}"},
                                 allow_redirects=False) as resp):
            assert resp.status == 200 and (await resp.json())["status"] == "signed_out"
        started = time.monotonic()
        for served in instances:
            while set(await statuses(served.url, token, 3)) != {401}:
                assert time.monotonic() - started < 1.0, f"{served.url} still admits a logged-out token after 1 s"
                await asyncio.sleep(0.05)


async def test_sigterm_fails_readiness_then_finishes_in_flight_requests(sqlite_url: str, tmp_path: Path) -> None:
    """A webhook call whose body is still arriving when SIGTERM lands is answered 200, readiness turns 503
    during the drain delay while new connections are still served (every answer now closing its
    connection: keep-alive is retired from SIGTERM on), and the process exits 0."""
    with contextlib.contextmanager(_start)(sqlite_url, tmp_path, 1, GATEWAY_SHUTDOWN_DELAY="0.6s") as served:
        token = served.cli("tokens", "mint", "--email", "slow@example.com").stdout.strip()
        host, port = served.url.removeprefix("http://").split(":")
        body = json.dumps({"headers": {"Cookie": f"{COOKIE}={token}"}, "request": None}).encode()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /auth/webhook HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body[:10])
        await writer.drain()
        await asyncio.sleep(0.2)
        served.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{served.url}/readyz") as ready:
                assert ready.status == 503
                assert (await ready.json())["status"] == "draining"
                assert ready.headers["Connection"] == "close"
            async with session.get(f"{served.url}/auth/check", headers={"Cookie": f"{COOKIE}={token}"}) as check:
                assert check.status == 200
                assert check.headers["Connection"] == "close"
        writer.write(body[10:])
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert b"X-Hasura-Role" in response
        assert served.proc.wait(30) == 0


async def test_the_served_port_answers_checks_on_the_fast_lane_and_hands_the_rest_to_aiohttp(
        one_sqlite: Served) -> None:
    """The real process (uvloop when installed): pipelined checks, then a hand-over mid-connection."""
    token = one_sqlite.cli("tokens", "mint", "--email", "dev@example.com").stdout.strip()
    host, port = one_sqlite.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    check = f"GET /auth/check HTTP/1.1\r\nHost: gw\r\nCookie: {COOKIE}={token}\r\n\r\n".encode()
    writer.write(check + check + b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n" + check)
    answers = [await read_answer(reader) for _ in range(4)]
    writer.close()
    assert [a.status for a in answers] == [200, 200, 200, 200]
    assert [a.headers["server"].split("/")[0] for a in answers] == \
        ["forward-auth-gateway", "forward-auth-gateway", "Python", "Python"]
    assert answers[3].headers["x-auth-request-email"] == "dev@example.com"
    listening = [json.loads(line) for line in one_sqlite.log_text().splitlines() if "gateway listening" in line]
    assert listening and listening[0]["fast_lane"] is True
    assert listening[0]["event_loop"] == ("uvloop" if importlib.util.find_spec("uvloop") else "asyncio")


def _metrics(url: str) -> dict[str, float]:
    """One scrape on a fresh connection: samples by name and labels as in the exposition."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:  # noqa: S310 - our http URL
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.mark.postgres
async def test_any_worker_answers_metrics_for_all_workers_even_after_one_dies(two_workers: Served) -> None:
    minted = two_workers.cli("tokens", "mint", "--email", "ops@example.com")
    assert minted.returncode == 0, minted.stderr
    allowed = 'gateway_checks_total{endpoint="check",outcome="allow"}'
    assert await statuses(two_workers.url, minted.stdout.strip(), 40) == [200] * 40

    def settled(expected: float) -> list[dict[str, float]]:
        deadline = time.monotonic() + 10
        while True:  # siblings publish every second
            scrapes = [_metrics(two_workers.url) for _ in range(12)]  # fresh connections: both workers answer
            if all(s.get(allowed) == expected and s["gateway_workers"] == 2 for s in scrapes):
                return scrapes
            assert time.monotonic() < deadline, scrapes
            time.sleep(0.3)

    settled(40)
    started = next(line for line in map(json.loads, filter(None, two_workers.log_text().splitlines()))
                   if line.get("event") == "started workers")
    os.kill(started["pids"][0], signal.SIGKILL)  # its counts must stay in the totals
    await asyncio.sleep(1.5)  # restarted after its back-off
    assert await statuses(two_workers.url, minted.stdout.strip(), 10) == [200] * 10
    scrapes = settled(50)
    assert all(s['gateway_revocation_feed_up'] == 1 for s in scrapes)
