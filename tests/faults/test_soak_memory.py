"""Soak: memory per distinct session levels off.

A steady stream of new sessions, each checked a few times and never again (as a soak with many clients
produces), through the real front-end, on a clock the test moves. The cache holds a session only while
it may still be served (fresh for ``cache.ttl``, then stale for ``cache.stale_if_error``), so the number
of entries, and the process's memory, stop growing one such window after the start. Before, entries
that could never be served again stayed until ``cache.max_entries`` (100,000 by default) pushed them out.
"""

from __future__ import annotations

import gc
import time
import tracemalloc

import aiohttp

from gateway.app import CHECKER
from tests.faults.report import Figures
from tests.harness import GatewayFactory

TTL = 5.0
STALE_IF_ERROR = 30.0
WINDOW = TTL + STALE_IF_ERROR
NEW_PER_SECOND = 25


async def test_memory_per_distinct_session_levels_off(gateway_factory: GatewayFactory, figures: Figures) -> None:
    gw = await gateway_factory(**{"cache.ttl": f"{TTL}s", "cache.stale_if_error": f"{STALE_IF_ERROR}s"})
    cache = gw.app[CHECKER].cache
    await gw.user("soak@example.com")

    # a plain client: the test client keeps every response it ever got, which would be the test's growth
    client = aiohttp.ClientSession()
    check_url = gw.client.make_url("/auth/check")

    async def one_second() -> None:
        for _ in range(NEW_PER_SECOND):
            token = await gw.token("soak@example.com")
            for _ in range(2):
                async with client.get(check_url, headers={"Cookie": f"gw_session={token}"}) as response:
                    assert response.status == 200
                    await response.read()
        gw.clock.advance(1.0)

    for _ in range(5):  # warm up: first-use allocations are not per-session costs
        await one_second()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        samples: list[tuple[int, int]] = []  # (entries, bytes above base) at the end of each window
        started = time.monotonic()
        for _ in range(4):
            for _ in range(int(WINDOW)):
                await one_second()
            gc.collect()
            samples.append((len(cache), tracemalloc.get_traced_memory()[0] - base))
    finally:
        tracemalloc.stop()
        await client.close()
    per_session = samples[0][1] / samples[0][0]
    print(f"entries and bytes at the end of each {WINDOW:.0f} s window: {samples};"
          f" ~{per_session:.0f} B per cached session; {time.monotonic() - started:.1f} s")
    steady = NEW_PER_SECOND * WINDOW
    record_soak(figures, samples, per_session, steady)
    for entries, _ in samples:
        assert entries <= steady + NEW_PER_SECOND * 2, samples  # only what may still be served
    first, *later = [grown for _, grown in samples]
    assert all(grown < first * 1.15 for grown in later), f"memory still growing after a window: {samples}"


def record_soak(figures: Figures, samples: list[tuple[int, int]], per_session: float, steady: float) -> None:
    """The soak's figures, held against the bounds its assertions state."""
    scene = figures.scenario(
        "Soak: memory per distinct session",
        f"New sessions through the real front-end on a clock the test moves, for four windows of cache.ttl +"
        f" cache.stale_if_error ({WINDOW:g} s); traced memory above the start, after warm-up.")
    scene.record("new sessions a second, each checked twice and never again", NEW_PER_SECOND)
    bound = steady + NEW_PER_SECOND * 2
    scene.record(f"cache entries at the end of each {WINDOW:.0f} s window (fresh + stale-if-error)",
                 ", ".join(f"{entries:,}" for entries, _ in samples), goal=f"each ≤ {bound:,.0f}",
                 ok=all(entries <= bound for entries, _ in samples))
    first, *later = [grown for _, grown in samples]
    growth = (max(later) / first - 1) * 100 if first and later else float("nan")
    scene.record("memory after later windows, above the first window's", growth, goal="< 15 %",
                 ok=all(grown < first * 1.15 for grown in later), unit="%")
    scene.record("memory per cached session", round(per_session), unit="bytes")
