"""A rolling restart behind real nginx fails no request, however soon each replica stops after the one
before it is ready again.

Two gateway replicas (``gateway serve``, defaults: no ``shutdown_delay``; one SQLite database) sit behind
nginx running ``deploy/nginx/protect-app.conf`` itself, with its commented replica lines switched on as its
comment says (:func:`render_for_replicas`), in front of the echo app. A client on loopback sends requests
at a fixed rate, bounded in count and time, through nginx: a signed-in page (200), an API call without a
session (401), a browser without a session (302 to sign in), and through the gateway_pages upstream a
sign-in page without a session (401) and a sign-out form POST without a session (303), which nginx never
retries once sent. Meanwhile replica A is restarted (SIGTERM, exit 0, started again on
its port, /readyz 200), then at once B, and that twice more. Every answer must be the expected one: no
5xx, no connection error.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.deploy.stack import (
    COOKIE,
    NGINX_CONFIGS,
    Gateway,
    find_nginx,
    site_substitutions,
    start_echo,
    start_nginx,
    unavailable,
)
from tests.faults import start_gateway_on
from tests.faults.report import Figures
from tests.helpers import free_port

RATE = 200
"""Requests per second the client sends (open loop: on schedule, whatever the answers take)."""
MAX_REQUESTS = 12_000
MAX_SECONDS = 45.0
ROUNDS = 3
"""Each replica is restarted this many times, alternating A, B, A, B, A, B."""

_UPSTREAM = re.compile(r"^upstream (gateway|gateway_pages) \{\n.*?^\}", re.M | re.S)
_SWITCHED_OFF = re.compile(r"^( +)# (server 127\.0\.0\.1:418[01](?: backup max_fails=0)?;)$", re.M)


def render_for_replicas(name: str, *, listen_port: int, app_port: int, replica_ports: tuple[int, int]) -> str:
    """``deploy/nginx/<name>`` for two replicas, as its comment tells operators: in the ``gateway`` and
    ``gateway_pages`` upstreams the commented ``server`` lines are switched on, and 127.0.0.1:4180 and
    127.0.0.1:4181 become the replicas' ports; the other placeholders as in ``tests/deploy/stack.py``."""
    text = (NGINX_CONFIGS / name).read_text()
    blocks = 0

    def switch_on(block: re.Match[str]) -> str:
        nonlocal blocks
        blocks += 1
        lines, switched = _SWITCHED_OFF.subn(r"\1\2", block.group(0))
        assert switched == 3, f"{name}: upstream {block.group(1)} should offer 3 commented replica lines"
        first, second = replica_ports
        return lines.replace("server 127.0.0.1:4180", f"server 127.0.0.1:{first}").replace(
            "server 127.0.0.1:4181", f"server 127.0.0.1:{second}")

    text = _UPSTREAM.sub(switch_on, text)
    assert blocks == 2, f"{name}: expected the upstreams gateway and gateway_pages"
    for placeholder, value in site_substitutions(listen_port=listen_port, gateway_port=0, app_port=app_port).items():
        if placeholder != "server 127.0.0.1:4180;":
            assert text.count(placeholder) == 1, (name, placeholder)
            text = text.replace(placeholder, value)
    directives = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in directives if re.search(r"127\.0\.0\.1:418[01]\b", line)], text
    return text


@dataclass(frozen=True)
class Kind:
    """One kind of request in the load, and the only status it may get."""

    name: str
    path: str
    headers: tuple[tuple[str, str], ...]
    expected: int
    method: str = "GET"
    body: bytes | None = None


@dataclass
class Outcome:
    kind: str
    sent: float
    status: int | None = None
    error: str | None = None


async def one(session: aiohttp.ClientSession, url: str, kind: Kind, outcome: Outcome) -> Outcome:
    try:
        async with session.request(kind.method, url + kind.path, headers=dict(kind.headers), data=kind.body,
                                   allow_redirects=False) as response:
            await response.read()
            outcome.status = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    return outcome


async def fixed_rate_load(url: str, kinds: list[Kind], stop: asyncio.Event) -> list[Outcome]:
    """Send ``RATE`` requests a second, cycling through ``kinds``, until ``stop`` (or the bounds)."""
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200), timeout=timeout) as session:
        pending: list[asyncio.Task[Outcome]] = []
        started = loop.time()
        while not stop.is_set() and len(pending) < MAX_REQUESTS and loop.time() - started < MAX_SECONDS:
            kind = kinds[len(pending) % len(kinds)]
            pending.append(asyncio.create_task(one(session, url, kind, Outcome(kind.name, time.monotonic()))))
            await asyncio.sleep(max(0.0, started + len(pending) / RATE - loop.time()))
        return list(await asyncio.gather(*pending))


@dataclass
class Restart:
    replica: str
    sigterm: float
    exited: int
    ready: float


def record_rolling_restart(figures: Figures, outcomes: list[Outcome], failed: list[Outcome],
                           restarts: list[Restart]) -> None:
    """The test's figures, held against the goals its assertions state."""
    scene = figures.scenario(
        "Rolling restart of two replicas behind nginx",
        "deploy/nginx/protect-app.conf with two replicas (`gateway serve`, one SQLite database); each replica"
        f" restarted {ROUNDS} times in turn (SIGTERM, exit, start, /readyz 200), the next one at once, under"
        f" {RATE} requests a second: signed-in pages, API calls and browsers without a session, sign-in"
        " pages and sign-out POSTs.")
    scene.record(f"requests sent through nginx ({RATE} a second, 5 kinds)", len(outcomes), goal=f"≥ {RATE * 3:,}",
                 ok=len(outcomes) >= RATE * 3)
    bad_exits = sum(r.exited != 0 for r in restarts)
    scene.record(f"replica exits other than 0 at SIGTERM (of {len(restarts)} restarts)", bad_exits, goal="0",
                 ok=[r.exited for r in restarts] == [0] * (2 * ROUNDS))
    during = [[o for o in outcomes if r.sigterm <= o.sent <= r.ready] for r in restarts]
    thin = sum(len(sent) < max(10, RATE * (r.ready - r.sigterm) / 2) for r, sent in zip(restarts, during, strict=True))
    scene.record("restarts the load did not run through", thin, goal="0", ok=not thin)
    scene.record("requests sent during restarts (SIGTERM to /readyz 200)", sum(map(len, during)))
    scene.record("longest restart (SIGTERM to /readyz 200)", max((r.ready - r.sigterm for r in restarts), default=0.0),
                 unit="s")
    in_restarts = sum(any(r.sigterm <= o.sent <= r.ready for r in restarts) for o in failed)
    scene.record("failed requests during restarts", in_restarts, goal="0", ok=not in_restarts)
    fivexx = sum(o.status is not None and o.status >= 500 for o in failed)
    scene.record("5xx answers", fivexx, goal="0", ok=not fivexx)
    errors = sum(o.error is not None for o in failed)
    scene.record("connection errors or timeouts", errors, goal="0", ok=not errors)
    scene.record("failed requests in all (5xx, another status than expected, or no answer)", len(failed), goal="0",
                 ok=not failed)


async def test_a_rolling_restart_of_two_replicas_behind_nginx_fails_no_request(tmp_path: Path,
                                                                               figures: Figures) -> None:
    if find_nginx() is None:
        unavailable("nginx not found (apt-get install nginx)")
    nginx_port = free_port()
    ports = {"a": free_port(), "b": free_port()}
    url = f"http://127.0.0.1:{nginx_port}"
    database = tmp_path / "shared.db"
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(start_echo(tmp_path))

        def start(replica: str, incarnation: int) -> Gateway:
            return stack.enter_context(start_gateway_on(
                "serve", tmp_path / f"{replica}{incarnation}", port=ports[replica], public_url=url,
                redirect_hosts=[f"127.0.0.1:{nginx_port}"], database=database))

        replicas = {name: start(name, 0) for name in ports}
        site = render_for_replicas("protect-app.conf", listen_port=nginx_port, app_port=echo.port,
                                   replica_ports=(ports["a"], ports["b"]))
        nginx = stack.enter_context(start_nginx(tmp_path / "nginx", site, nginx_port))
        token = replicas["a"].mint("rolling@example.com")
        kinds = [
            Kind("signed in", "/app/page", (("Cookie", f"{COOKIE}={token}"), ("Accept", "text/html")), 200),
            Kind("api without session", "/api/items", (("Accept", "application/json"),), 401),
            Kind("browser without session", "/app/other", (("Accept", "text/html"),), 302),
            Kind("sign-in page without session", "/auth/userinfo", (("Accept", "application/json"),), 401),
            # A POST, which nginx never sends again once it has sent it: the gateway must answer it.
            Kind("sign-out form without session", "/logout", (("Accept", "text/html"),
                 ("Content-Type", "application/x-www-form-urlencoded")), 303, "POST", b"rd=%2Fbye"),
        ]

        def restart_in_turn() -> list[Restart]:
            """A, B, A, B, ...: each stopped as soon as the one before it answers /readyz 200 again."""
            done = []
            for incarnation in range(1, ROUNDS + 1):
                for name in ("a", "b"):
                    sigterm = time.monotonic()
                    replicas[name].proc.send_signal(signal.SIGTERM)
                    exited = replicas[name].proc.wait(30)
                    replicas[name] = start(name, incarnation)  # returns once /readyz answers 200
                    done.append(Restart(name, sigterm, exited, time.monotonic()))
            return done

        stop = asyncio.Event()
        load = asyncio.create_task(fixed_rate_load(url, kinds, stop))
        try:
            await asyncio.sleep(1.0)
            restarts = await asyncio.to_thread(restart_in_turn)
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            outcomes = await load
        error_log = nginx.error_log()

    expected = {kind.name: kind.expected for kind in kinds}
    failed = [o for o in outcomes if o.error is not None or o.status != expected[o.kind]]
    summary = Counter(f"{o.kind}: {o.error or o.status}" for o in failed)
    record_rolling_restart(figures, outcomes, failed, restarts)
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {dict(summary)}\n" + \
        "\n".join(line for line in error_log.splitlines() if "[error]" in line)[-3000:]
    assert [r.exited for r in restarts] == [0] * (2 * ROUNDS), restarts
    for restart in restarts:  # the load really ran through every restart
        during = [o for o in outcomes if restart.sigterm <= o.sent <= restart.ready]
        assert len(during) >= max(10, RATE * (restart.ready - restart.sigterm) / 2), (restart, len(during))
    assert len(outcomes) >= RATE * 3
