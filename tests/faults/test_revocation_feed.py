"""The revocation feed loses nothing: several watchers (as several replicas would run) on a real PostgreSQL,
revocations at random paces, listeners killed at random.

Both tests run each watcher on the event loop under test (uvloop and the plain asyncio loop), in this
process. A revocation counts as lost when a watcher has not delivered it 2.5 s after it was committed
(the fault run's threshold: a revoked token still answered 200 then).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.models import Revocation
from gateway.serving.gcpolicy import GcPolicy
from gateway.settings import Settings
from gateway.store.base import Store
from gateway.store.pgconn import APPLICATION_NAMES
from tests.faults.pgstack import FULL, LOOPS, run_on, terminate_backends
from tests.faults.report import Figures
from tests.helpers import store_for

pytestmark = pytest.mark.postgres

def token_hash(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


LOST_AFTER = 2.5
"""Seconds after its commit by which every watcher must have delivered a revocation."""


class Watcher:
    """One store watching the feed, recording when each revocation reached it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seen: dict[str, float] = {}
        self.users: list[tuple[int, float]] = []
        self.states: list[bool] = []
        self.task: asyncio.Task[None] | None = None

    def on_revoke(self, revocation: Revocation) -> None:
        now = time.monotonic()
        if revocation.token_hash is not None:
            self.seen.setdefault(revocation.token_hash, now)
        if revocation.user_id is not None:
            self.users.append((revocation.user_id, now))

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.store.watch_revocations(self.on_revoke, self.states.append))


@contextlib.asynccontextmanager
async def watchers(settings: Settings, count: int) -> AsyncIterator[list[Watcher]]:
    """``count`` watchers, each on a store of its own, live when yielded; stopped and closed afterwards."""
    started = [Watcher(store_for(settings)) for _ in range(count)]
    for watcher in started:
        await watcher.store.open()
        watcher.start()
    try:
        deadline = time.monotonic() + 10
        while not all(w.states and w.states[-1] for w in started):
            assert time.monotonic() < deadline, [w.states for w in started]
            await asyncio.sleep(0.01)
        yield started
    finally:
        for watcher in started:
            assert watcher.task is not None
            watcher.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher.task
            await watcher.store.close()


async def sessions_to_revoke(store: Store, count: int, label: str) -> list[str]:
    """``count`` new sessions of one new user; their hashes."""
    user = await store.upsert_user("faults", label, email=f"{label}@example.com")
    now = time.time()
    hashes = [token_hash(f"{label}:{i}:{random.random()}") for i in range(count)]
    for h in hashes:
        await store.create_session(token_hash=h, user_id=user.id, kind="api", now=now, expires_at=now + 3600,
                                   idle_timeout=0)
    return hashes


def late_or_lost(watcher: Watcher, sent: dict[str, float], within: float) -> list[str]:
    return [h for h, at in sent.items() if watcher.seen.get(h, float("inf")) - at > within]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_read_that_times_out_never_drops_a_notification(loop: str, postgres_url: str,
                                                          settings_factory: Callable[..., Settings],
                                                          figures: Figures) -> None:
    """Revocations exactly one second apart, the pace that lines a notification up with a listener's
    one-second read timeout (logouts paced about one per second lost 1 to 12 % of them when a timed-out
    read discarded the notification it had taken). With nothing failing, every one must arrive at once:
    not even the log read a second later may be what delivers it."""
    settings = settings_factory(database_url=postgres_url)
    count = 40 if FULL else 12

    async def paced_run(writer: Store, label: str) -> tuple[dict[int, int], int, int]:
        """One paced run: late-or-lost count by watcher, revocations sent, watchers."""
        hashes = await sessions_to_revoke(writer, count, label)
        async with watchers(settings, 8) as watching:
            loop_ = asyncio.get_running_loop()
            at = loop_.time()
            sent: dict[str, float] = {}
            for h in hashes:
                at += 1.0
                await asyncio.sleep(max(0.0, at - loop_.time()))
                assert await writer.revoke_session(h, actor="faults", reason="paced")
                sent[h] = time.monotonic()
            deadline = time.monotonic() + LOST_AFTER
            while time.monotonic() < deadline and any(len(w.seen) < len(sent) for w in watching):
                await asyncio.sleep(0.05)
            return ({i: len(late) for i, w in enumerate(watching) if (late := late_or_lost(w, sent, 0.3))},
                    len(sent), len(watching))

    async def main() -> None:
        writer = store_for(settings)
        await writer.open()
        # The collector as a serving gateway runs it (gateway.serving.gcpolicy): what is alive now frozen,
        # no automatic full collections. In CI this test runs after hundreds of others, and a full
        # collection of their leftovers stalled every watcher at once for over 0.3 s, in both runs: a pause
        # of this test process, which serving processes do not take, not a dropped notification.
        collector = GcPolicy(full_interval=3600.0)
        collector.start()
        try:
            await writer.migrate()
            # On a shared 2-core machine a delivery can miss 0.3 s once in a long while for want of CPU, so
            # a noisy run is run again. A read that drops notifications (the bug) misses in every run: the
            # old code lost 1 to 4 per watcher each time.
            for attempt in (1, 2, 3):
                slow, sent_count, watcher_count = await paced_run(writer, f"paced{attempt}")
                if not slow:
                    break
            scene = figures.scenario(
                f"Revocations exactly one second apart, nothing failing ({loop})",
                "The pace that lines a notification up with a listener's one-second read timeout; eight"
                " watchers, each a store of its own.")
            scene.record("revocations x watchers", f"{sent_count} x {watcher_count}")
            scene.record("runs (another only when one was slow)", attempt)
            scene.record("deliveries later than 0.3 s after the commit, or never", sum(slow.values()), goal="0",
                         ok=not slow)
            assert not slow, f"revocations arriving late or never, by watcher: {slow}"
        finally:
            await collector.stop()
            await writer.close()

    run_on(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_no_revocation_is_lost_while_listeners_are_killed_at_random(
        loop: str, postgres_url: str, settings_factory: Callable[..., Settings], figures: Figures) -> None:
    """Thousands of revocations at random paces (bursts, pauses, and gaps near a second) while the watchers'
    LISTEN connections are terminated at random: each reaches each of three watchers within 2.5 s,
    the ones made while a listener was reconnecting included (from the revocation log)."""
    settings = settings_factory(database_url=postgres_url)
    count = 5000 if FULL else 500
    rng = random.Random()

    def pause() -> float:
        roll = rng.random()
        if roll < 0.6:
            return rng.expovariate(1 / 0.003)
        if roll < 0.985:
            return rng.uniform(0.0, 0.05)
        return rng.uniform(0.95, 1.05)

    async def main() -> None:
        writer = store_for(settings)
        await writer.open()
        try:
            await writer.migrate()
            hashes = await sessions_to_revoke(writer, count, "random")
            async with watchers(settings, 3) as watching:
                done = asyncio.Event()
                kills = 0

                async def kill_listeners() -> None:
                    nonlocal kills
                    while not done.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(done.wait(), rng.uniform(0.2, 1.5))
                        if not done.is_set():
                            kills += await asyncio.to_thread(terminate_backends, postgres_url,
                                                             APPLICATION_NAMES["feed"])

                killer = asyncio.ensure_future(kill_listeners())
                sent: dict[str, float] = {}
                try:
                    for h in hashes:
                        await asyncio.sleep(pause())
                        assert await writer.revoke_session(h, actor="faults", reason="random")
                        sent[h] = time.monotonic()
                finally:
                    done.set()
                    await killer
                deadline = time.monotonic() + LOST_AFTER
                while time.monotonic() < deadline and any(len(w.seen) < len(sent) for w in watching):
                    await asyncio.sleep(0.05)
                lost = {i: len(late) for i, w in enumerate(watching) if (late := late_or_lost(w, sent, LOST_AFTER))}
                latencies = sorted(w.seen[h] - at for w in watching for h, at in sent.items() if h in w.seen)
                summary = (f"{len(sent)} revocations x {len(watching)} watchers, {kills} listeners killed;"
                           f" latency p50 {statistics.median(latencies) * 1000:.1f} ms,"
                           f" p99 {latencies[int(len(latencies) * 0.99)] * 1000:.0f} ms,"
                           f" max {latencies[-1] * 1000:.0f} ms")
                print(summary)
                scene = figures.scenario(
                    f"Revocations at random paces, listeners killed at random ({loop})",
                    "Bursts, pauses and gaps near a second, while the watchers' LISTEN connections are"
                    " terminated every 0.2 to 1.5 s. Lost: not delivered to every watcher within 2.5 s.")
                scene.record("revocations made", len(sent), ok=len(sent) == count,
                             goal=f"{count:,}" + (" (10,000 over both event loops)" if FULL else
                                                  " (CI mode; the full run makes 5,000)"))
                scene.record("watchers (each a store of its own, as a replica)", len(watching))
                scene.record("listener connections killed", kills, goal="≥ 3", ok=kills >= 3)
                gone = {h for w in watching for h in late_or_lost(w, sent, LOST_AFTER)}
                scene.record(f"revocations lost (not delivered to every watcher within {LOST_AFTER:g} s)",
                             len(gone), goal="0", ok=not lost)
                for name, at in (("p50", statistics.median(latencies)),
                                 ("p99", latencies[int(len(latencies) * 0.99)]), ("max", latencies[-1])):
                    scene.record(f"delivery latency {name}", at * 1000, unit="ms")
                assert kills >= 3, summary
                assert not lost, f"revocations lost, by watcher: {lost} ({summary})"
                assert all(w.states[-1] for w in watching)
        finally:
            await writer.close()

    run_on(loop, main)
