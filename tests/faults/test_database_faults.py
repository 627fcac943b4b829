"""Gateways on a real PostgreSQL through database faults, under uvloop and the plain asyncio loop: no
promise broken (README, "When the database is down").

- A session a gateway has seen keeps passing through every fault: never a 5xx, on /auth/check or
  /auth/webhook.
- A token the gateway cannot check gets 503 on /auth/check and 401 on /auth/webhook; never 200, never 500.
- ``/readyz`` is 503 while the database is away, 200 again once it answers and the revocation feed is live;
  ``gateway_revocation_feed_up`` says 0 while the feed is down and 1 once it is back.
- Lookups, the feed and readiness are back within 2 s of the database, without a restart, every time; a
  revocation made anywhere stops its token within 2.5 s (once the gateway can reach the database).
- No log line shows a leaked connection or an exception nobody retrieved, and SIGTERM ends with exit 0.

The faults: the server stopped in ``fast`` and ``immediate`` mode and killed with SIGKILL, then started
again; every backend of the gateways terminated (``pg_terminate_backend``); and, through a TCP proxy, every
connection reset, stalled, and blackholed. Gateways run as processes (``python -c`` on the loop under test;
under uvloop the second replica is ``gateway serve --workers 2``, as in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.errors import StoreUnavailable
from gateway.sessions import start_session
from gateway.settings import Settings
from gateway.store.base import Store
from tests.faults.faultproxy import FaultProxy, fault_proxy
from tests.faults.pgstack import (
    COOKIE,
    FULL,
    LOOPS,
    PgGateway,
    Tally,
    require_loop,
    run_gateway,
    run_on,
    steady_checks,
    stop_database,
    terminate_backends,
    token_hash,
)
from tests.faults.report import Figures, Scenario
from tests.helpers import PostgresCluster, store_for

pytestmark = pytest.mark.postgres

RECOVERY = 2.0
"""Seconds after the database is back (or the fault healed) by which lookups, feed and readiness must be."""

WORKERS_PUBLISH = 1.0
"""With ``--workers``, a worker's feed metric reaches the merged ``/metrics`` up to a second late."""

LOST_AFTER = 2.5
OUTAGE = 10.0 if FULL else 1.0


# -- clients ---------------------------------------------------------------------------------------------


async def status(gateway: PgGateway, token: str, path: str = "/auth/check") -> int:
    """One request on a new connection (with ``--workers``, any worker may answer)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client, \
            client.get(gateway.url + path, headers={"Cookie": f"{COOKIE}={token}"}) as response:
        await response.read()
        return response.status


async def readiness(gateway: PgGateway) -> tuple[int, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client, \
            client.get(gateway.url + "/readyz") as response:
        body = await response.json(content_type=None)
        return response.status, str(body.get("status", ""))


async def feed_up(gateway: PgGateway) -> float:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client, \
            client.get(gateway.url + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("gateway_revocation_feed_up "):
                return float(line.split()[1])
    return float("nan")


class Findings:
    """Broken promises, collected so that one run reports all of them (not only the first)."""

    def __init__(self) -> None:
        self.broken: list[str] = []

    def expect(self, holds: bool, what: str) -> bool:
        if not holds:
            self.broken.append(what)
        return holds


async def eventually(probe: Callable[[], Awaitable[bool]], within: float) -> float | None:
    """Poll ``probe`` until it holds; how long that took, or None when it did not within ``within`` s."""
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started >= within:
            return None
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def recovered(gateway: PgGateway, token: str) -> bool:
    """An unseen token passes, the feed is live and the gateway is ready."""
    if await status(gateway, token) != 200:
        return False
    if await feed_up(gateway) != 1:
        return False
    return (await readiness(gateway))[0] == 200


class Tokens:
    """Sessions minted on the database directly (as the CLI would), never seen by a gateway until used."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._user_id: int | None = None

    async def mint(self, count: int) -> list[str]:
        if self._user_id is None:
            self._user_id = (await self._store.upsert_user("faults", "ada", email="ada@example.com")).id
        minted = []
        for _ in range(count):
            token, _ = await start_session(self._store, self._settings.session, user_id=self._user_id, kind="api",
                                           now=time.time())
            minted.append(token)
        return minted


async def seen_by(gateways: list[PgGateway], tokens: list[str]) -> None:
    """Check every token on every gateway once (several times with workers), so each caches it."""
    for gateway in gateways:
        for token in tokens:
            for _ in range(4 if gateway.name.endswith("workers") else 1):
                assert await status(gateway, token) == 200


def exit_cleanly(gateways: list[PgGateway], findings: Findings, scene: Scenario) -> None:
    """SIGTERM each gateway: exit code 0, and no log line showing a leak or a lost exception."""
    for gateway in gateways:
        code = gateway.stop()
        scene.record(f"{gateway.name}: exit code at SIGTERM", code, goal="0", ok=code == 0)
        findings.expect(code == 0, f"{gateway.name}: exit code {code} at SIGTERM")
        problems = gateway.problems()
        scene.record(f"{gateway.name}: log lines showing a leak or a lost exception", len(problems), goal="0",
                     ok=not problems)
        findings.expect(not problems, f"{gateway.name}: {len(problems)} log lines of leaks or lost exceptions,"
                                      f" e.g. {problems[:2]}")


# -- the server stopped, restarted and killed ------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_database_stopped_restarted_and_killed(loop: str, postgres_cluster: PostgresCluster, postgres_url: str,
                                               settings_factory: Callable[..., Settings], tmp_path: Path,
                                               figures: Figures) -> None:
    """Two replicas through a fast stop, an immediate stop and a SIGKILL of the server, each followed by a
    restart, under steady load on cached sessions."""
    require_loop(loop)
    settings = settings_factory(database_url=postgres_url)
    second = {"workers": 2, "name": "b-workers"} if loop == "uvloop" else {"name": "b"}
    with run_gateway(loop, postgres_url, tmp_path, name="a") as a, \
            run_gateway(loop, postgres_url, tmp_path, **second) as b:
        gateways = [a, b]

        findings = Findings()
        scene = figures.scenario(
            f"Database stopped, restarted and killed ({loop})",
            f"Replica a ({loop}) and replica {second['name']} on one PostgreSQL, each under 100 requests a second"
            f" on cached sessions; the server stopped (fast, then immediate) and SIGKILLed, down {OUTAGE:g} s each"
            " time, then started again. Recovery: from the server's start to an unseen token passing, the feed"
            " metric at 1 and /readyz 200 (with --workers, +1 s for the merged metrics).")

        async def main() -> list[str]:
            store = store_for(settings)
            await store.open()
            report = []
            try:
                tokens = Tokens(store, settings)
                cached = await tokens.mint(6)
                await seen_by(gateways, cached)
                for mode in ("fast", "immediate", "kill"):
                    report.append(await outage(mode, gateways, store, tokens, cached, postgres_cluster, findings,
                                               scene))
            finally:
                await store.close()
            return report

        report = run_on("asyncio", main)
        print(f"[{loop}] " + "; ".join(report))
        exit_cleanly(gateways, findings, scene)
        assert not findings.broken, "\n".join(findings.broken)


async def outage(mode: str, gateways: list[PgGateway], store: Store, tokens: Tokens, cached: list[str],
                 cluster: PostgresCluster, findings: Findings, scene: Scenario) -> str:
    """One outage of ``mode`` under load, every promise checked; a line for the report."""
    label = {"fast": "fast stop", "immediate": "immediate stop", "kill": "SIGKILL"}[mode]
    unseen = await tokens.mint(2)
    victims = await tokens.mint(1)
    await seen_by(gateways, victims)
    tally = Tally()
    stop = asyncio.Event()
    loads = [asyncio.ensure_future(steady_checks(g.url, cached, tally, "check", rate=80, stop=stop))
             for g in gateways]
    loads += [asyncio.ensure_future(steady_checks(g.url, cached, tally, "webhook", rate=20, stop=stop,
                                                  path="/auth/webhook")) for g in gateways]
    took: dict[str, float | None] = {}
    try:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(stop_database, cluster, mode)
        for gateway in gateways:
            slack = WORKERS_PUBLISH if gateway.name.endswith("workers") else 0.0
            findings.expect(await eventually(lambda g=gateway: _is(feed_up(g), 0), 2.5 + slack) is not None,
                            f"{mode}: {gateway.name}'s feed metric still says 1")
            # an unseen token cannot be checked: fail closed, 503 for proxies and 401 for Hasura
            answers = [await status(gateway, unseen[0]), await status(gateway, unseen[0], "/auth/webhook")]
            scene.record(f"{label}: {gateway.name}: uncached token on /auth/check · /auth/webhook, database away",
                         " · ".join(map(str, answers)), goal="503 · 401", ok=answers == [503, 401])
            findings.expect(answers == [503, 401], f"{mode}: {gateway.name} answered an unseen token {answers}")
            ready = await readiness(gateway)
            findings.expect(ready == (503, "database_unavailable"), f"{mode}: {gateway.name} /readyz {ready}")
        await asyncio.sleep(OUTAGE)
        await asyncio.to_thread(cluster.start)
        up = time.monotonic()
        for gateway in gateways:
            slack = WORKERS_PUBLISH if gateway.name.endswith("workers") else 0.0
            back = await eventually(lambda g=gateway: recovered(g, unseen[1]), RECOVERY + slack + 3.0)
            took[gateway.name] = None if back is None else time.monotonic() - up
            in_time = findings.expect(back is not None and time.monotonic() - up <= RECOVERY + slack,
                            f"{mode}: {gateway.name} not back (lookups, feed, readiness) within {RECOVERY + slack} s"
                            f" of the database: {took[gateway.name]}")
            scene.record(f"{label}: {gateway.name}: lookups, feed and readiness back after the database",
                         took[gateway.name], goal=f"≤ {RECOVERY + slack:g} s", ok=in_time, unit="s")
        # and a revocation reaches every replica again
        assert await store.revoke_session(token_hash(victims[0]), actor="faults", reason="after restart")
        for gateway in gateways:
            landed = await eventually(lambda g=gateway: _is(status(g, victims[0]), 401), LOST_AFTER)
            scene.record(f"{label}: {gateway.name}: a revocation made after the restart stops its token",
                         landed, goal=f"≤ {LOST_AFTER:g} s", ok=landed is not None, unit="s")
            findings.expect(landed is not None, f"{mode}: a revocation did not reach {gateway.name}")
    finally:
        stop.set()
        await asyncio.gather(*loads)
    for kind in ("check", "webhook"):
        findings.expect(bool(tally.of(kind)) and set(tally.of(kind)) == {200},
                        f"{mode}: cached sessions on {kind}: {tally.of(kind)}")
    findings.expect(not tally.errors, f"{mode}: requests without an answer: {tally.errors}")
    answered = sum(sum(by.values()) for by in tally.statuses.values())
    record_cached_sessions(scene, f"{label}: ", tally)
    return f"{mode}: {answered} cached checks, back in " + \
        ", ".join(f"{name} {'never' if t is None else f'{t:.2f} s'}" for name, t in took.items())


def record_cached_sessions(scene: Scenario, prefix: str, tally: Tally) -> None:
    """The figures of the steady load on cached sessions: 5xx, and any answer but 200 (or none)."""
    answered = sum(sum(by.values()) for by in tally.statuses.values())
    fivexx = sum(tally.server_errors(kind) for kind in ("check", "webhook"))
    other = sum(n for kind in ("check", "webhook") for status, n in tally.of(kind).items() if status != 200)
    other += sum(tally.errors.values())
    scene.record(f"{prefix}5xx on cached sessions ({answered:,} /auth/check and /auth/webhook answers)", fivexx,
                 goal="0", ok=fivexx == 0)
    scene.record(f"{prefix}cached sessions answered other than 200, or not at all", other, goal="0",
                 ok=other == 0 and all(tally.of(kind) for kind in ("check", "webhook")))


async def _is(value: Awaitable[float], expected: float) -> bool:
    return await value == expected


# -- backends terminated; connections reset, stalled and blackholed --------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_feed_cut_off_backends_terminated_and_connections_reset_stalled_blackholed(
        loop: str, postgres_cluster: PostgresCluster, postgres_url: str,
        settings_factory: Callable[..., Settings], tmp_path: Path, figures: Figures) -> None:
    """One gateway reaching PostgreSQL through a fault proxy, under steady load on cached sessions, with
    revocations at random paces made directly on the database (as another replica would) all along."""
    require_loop(loop)
    settings = settings_factory(database_url=postgres_url)
    stall = 6.0 if FULL else 2.5
    findings = Findings()
    scene = figures.scenario(
        f"Feed cut off; backends terminated; connections reset, stalled, blackholed ({loop})",
        f"One gateway ({loop}) reaching PostgreSQL through a fault proxy, under 100 requests a second on cached"
        " sessions, while revocations are made on the database at random paces: first only its feed is cut"
        " off, then all its backends are terminated, its connections reset, stalled and blackholed"
        f" ({stall:g} s each).")
    with fault_proxy(postgres_cluster.port) as proxy:
        through_proxy = postgres_url.replace(f":{postgres_cluster.port}/", f":{proxy.port}/")
        with run_gateway(loop, through_proxy, tmp_path, name="proxied") as gateway:

            async def main() -> str:
                store = store_for(settings)
                await store.open()
                try:
                    tokens = Tokens(store, settings)
                    cached = await tokens.mint(6)
                    victims = await tokens.mint(40)
                    await seen_by([gateway], cached + victims)
                    report = [await feed_cut_off(gateway, proxy, store, tokens, findings, scene)]
                    revoker = Revoker(store, victims)
                    tally, stop = Tally(), asyncio.Event()
                    loads = [asyncio.ensure_future(steady_checks(gateway.url, cached, tally, "check", rate=80,
                                                                 stop=stop)),
                             asyncio.ensure_future(steady_checks(gateway.url, cached, tally, "webhook", rate=20,
                                                                 stop=stop, path="/auth/webhook")),
                             asyncio.ensure_future(revoker.run(stop))]
                    try:
                        for fault in ("terminate", "reset", "stall", "blackhole"):
                            report.append(await proxied_fault(fault, gateway, proxy, tokens, revoker, stall,
                                                              postgres_url, findings, scene))
                    finally:
                        stop.set()
                        await asyncio.gather(*loads)
                    record_cached_sessions(scene, "every fault: ", tally)
                    for kind in ("check", "webhook"):
                        findings.expect(bool(tally.of(kind)) and set(tally.of(kind)) == {200},
                                        f"cached sessions on {kind}: {tally.of(kind)}")
                    findings.expect(not tally.errors, f"requests without an answer: {tally.errors}")
                    # every revoked token stopped passing in time (probed at its due time)
                    passing = 0
                    for token in revoker.revoked:
                        await asyncio.sleep(max(0.0, revoker.due(token) - time.monotonic()))
                        passing += await status(gateway, token) == 200
                    scene.record(f"every fault: revoked tokens still passing when due"
                                 f" (of {len(revoker.revoked)} revoked at random paces)", passing,
                                 goal="0", ok=not passing)
                    findings.expect(not passing, f"{passing} revoked tokens still pass")
                    return "; ".join(report) + f"; {len(revoker.revoked)} revocations, {passing} lost"
                finally:
                    await store.close()

            print(f"[{loop}] " + run_on("asyncio", main))
            exit_cleanly([gateway], findings, scene)
    assert not findings.broken, "\n".join(findings.broken)


async def feed_cut_off(gateway: PgGateway, proxy: FaultProxy, store: Store, tokens: Tokens,
                       findings: Findings, scene: Scenario) -> str:
    """Only the revocation feed loses the database (new connections refused, the feed's reset; the pool and
    the lookups keep theirs): the gateway still serves every check correctly, but is not ready until the
    feed is back, and says so; a revocation still lands (cached sessions are re-checked meanwhile)."""
    unseen = await tokens.mint(2)
    victim = (await tokens.mint(1))[0]
    await seen_by([gateway], [victim, unseen[0]])  # leaves a lookup connection open
    await asyncio.sleep(2.0)  # quiet: only the feed talks to the database now (every second)
    await asyncio.to_thread(proxy.set_mode, "refuse")
    cut = await asyncio.to_thread(proxy.reset, 1.2)
    try:
        findings.expect(cut >= 1, "no connection carried the feed")
        findings.expect(await eventually(lambda: _is(feed_up(gateway), 0), 2.0) is not None,
                        "feed cut off: the feed metric still says 1")
        ready = await readiness(gateway)
        scene.record("feed cut off: /readyz", f"{ready[0]} {ready[1]}", goal="503 revocation_feed_down",
                     ok=ready == (503, "revocation_feed_down"))
        findings.expect(ready == (503, "revocation_feed_down"), f"feed cut off: /readyz {ready}")
        assert await store.revoke_session(token_hash(victim), actor="faults", reason="feed cut off")
        landed = await eventually(lambda: _is(status(gateway, victim), 401), 1.5)
        scene.record("feed cut off: a revocation still stops its token", landed, goal="≤ 1.5 s",
                     ok=landed is not None, unit="s")
        findings.expect(landed is not None,
                        "feed cut off: a revocation did not land within 1.5 s")
    finally:
        await asyncio.to_thread(proxy.set_mode, "pass")
    took = await eventually(lambda: recovered(gateway, unseen[1]), RECOVERY)
    scene.record("feed cut off: feed and readiness back after the database", took, goal=f"≤ {RECOVERY:g} s",
                 ok=took is not None, unit="s")
    findings.expect(took is not None, f"feed cut off: not back within {RECOVERY} s of the database")
    return f"feed cut off: /readyz {ready[0]} {ready[1]}, back in {took:.2f} s" if took is not None else \
        f"feed cut off: /readyz {ready}, never back"


class Revoker:
    """Revokes cached tokens at random paces; knows when each must have stopped passing."""

    def __init__(self, store: Store, victims: list[str]) -> None:
        self._store = store
        self._left = list(victims)
        self.revoked: dict[str, float] = {}
        self.cut_off: list[tuple[float, float]] = []
        """Spans when the gateway could not reach the database (a revocation made then lands after)."""
        self._cut_since: float | None = None

    def cut(self) -> None:
        self._cut_since = time.monotonic()

    def heal(self) -> None:
        assert self._cut_since is not None
        self.cut_off.append((self._cut_since, time.monotonic()))
        self._cut_since = None

    def due(self, token: str) -> float:
        """When ``token`` must be refused: 2.5 s after its revocation, or after the gateway could reach the
        database again (a gateway cut off from it can learn nothing)."""
        due = self.revoked[token] + LOST_AFTER
        for start, end in self.cut_off:
            if start <= due and end + RECOVERY + LOST_AFTER > due:
                due = end + RECOVERY + LOST_AFTER
        return due

    async def run(self, stop: asyncio.Event) -> None:
        while self._left and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), random.uniform(0.1, 0.5))
            token = self._left.pop()
            self.revoked[token] = time.monotonic()
            for attempt in range(5):
                try:
                    # False on a retry: the first attempt committed after all
                    assert await self._store.revoke_session(token_hash(token), actor="faults",
                                                            reason="random") or attempt
                    break
                except StoreUnavailable:  # this store's own connections were terminated too
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("could not revoke")


async def proxied_fault(fault: str, gateway: PgGateway, proxy: FaultProxy, tokens: Tokens, revoker: Revoker,
                        stall: float, admin_url: str, findings: Findings, scene: Scenario) -> str:
    """One fault, healed: the gateway fails closed meanwhile and is back in time."""
    unseen = await tokens.mint(2)
    within = RECOVERY
    noticed: float | None = None
    if fault == "terminate":
        findings.expect(await asyncio.to_thread(terminate_backends, admin_url) >= 3, "fewer than 3 backends")
    elif fault == "reset":
        findings.expect(await asyncio.to_thread(proxy.reset) >= 3, "fewer than 3 connections")
    else:
        revoker.cut()
        await asyncio.to_thread(proxy.set_mode, "stall" if fault == "stall" else "blackhole")
        started = time.monotonic()
        # the feed metric tells the truth: its connection is probed every second, given a second to answer
        noticed = await eventually(lambda: _is(feed_up(gateway), 0), 3.0)
        scene.record(f"{fault}: the feed metric says the feed is down", noticed, goal="≤ 3 s",
                     ok=noticed is not None, unit="s")
        findings.expect(noticed is not None, f"{fault}: the feed metric still says 1 after 3 s")
        answers = await asyncio.gather(status(gateway, unseen[0]), status(gateway, unseen[0], "/auth/webhook"),
                                       readiness(gateway))
        scene.record(f"{fault}: uncached token on /auth/check · /auth/webhook; /readyz",
                     f"{answers[0]} · {answers[1]}; {answers[2][0]} {answers[2][1]}",
                     goal="503 · 401; 503 database_unavailable",
                     ok=answers == [503, 401, (503, "database_unavailable")])
        findings.expect(answers == [503, 401, (503, "database_unavailable")],
                        f"{fault}: unseen token and /readyz answered {answers}")
        await asyncio.sleep(max(0.0, stall - (time.monotonic() - started)))
        await asyncio.to_thread(proxy.set_mode, "pass")
        revoker.heal()
        if fault == "blackhole":
            # a connection attempt caught in the blackhole has to time out first (database.connect_timeout)
            within += 1.0
    took = await eventually(lambda: recovered(gateway, unseen[1]), within)
    scene.record(f"{fault}: lookups, feed and readiness back after the fault heals", took,
                 goal=f"≤ {within:g} s" + (" (a blackholed connect times out first)" if fault == "blackhole" else ""),
                 ok=took is not None, unit="s")
    findings.expect(took is not None, f"{fault}: not back within {within} s")
    detail = "" if noticed is None else f", feed down noticed in {noticed:.2f} s"
    return f"{fault}: back in " + ("never" if took is None else f"{took:.2f} s") + detail
