"""The serving process's garbage-collector policy: only young collections automatic, a full one per interval."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from gateway.serving.gcpolicy import GcPolicy
from gateway.settings import SettingsError
from tests.helpers import make_settings


class Node:
    """A cycle-capable object whose death we can observe."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def collections(generation: int) -> int:
    return int(gc.get_stats()[generation]["collections"])


async def test_full_collections_run_on_the_timer_only_and_still_reclaim_cycles(restored_gc: None) -> None:
    policy = GcPolicy(0.2)
    policy.start()
    try:
        assert gc.get_threshold()[1] >= 1 << 30 and gc.get_threshold()[2] >= 1 << 30
        assert gc.get_freeze_count() > 0  # what start-up built is never scanned again
        before = collections(1), collections(2)
        a, b = Node(), Node()
        a.other, b.other = b, a
        dead = weakref.ref(a)
        gc.collect(0)  # the cycle, still alive, leaves the youngest generation...
        del a, b  # ...and dies in the middle one
        for _ in range(50):  # plenty of automatic young collections, none of the older generations
            junk = [[] for _ in range(gc.get_threshold()[0] + 1)]
            del junk
        assert dead() is not None and (collections(1), collections(2)) == before
        for _ in range(50):
            await asyncio.sleep(0.05)
            if dead() is None:
                break
        assert dead() is None, "the timed full collection never reclaimed the cycle"
    finally:
        await policy.stop()
    assert gc.get_threshold()[1] < 1 << 30 and gc.get_threshold()[2] < 1 << 30


async def test_zero_interval_keeps_cpythons_policy(restored_gc: None) -> None:
    thresholds = gc.get_threshold()
    policy = GcPolicy(0)
    policy.start()
    assert gc.get_threshold() == thresholds and gc.get_freeze_count() == 0
    await policy.stop()


def test_interval_is_validated() -> None:
    with pytest.raises(SettingsError, match="gc_full_interval"):
        make_settings({"gc_full_interval": "0.5s"})
    assert make_settings({"gc_full_interval": "0s"}).gc_full_interval == 0
