"""The negative cache: remembered for its TTL, bounded in entries however fast garbage arrives."""

from __future__ import annotations

from gateway.cache import NegativeCache


def test_a_hash_is_remembered_for_the_ttl_and_then_forgotten() -> None:
    cache = NegativeCache(100, 2.0)
    cache.add("a", 1000.0)
    assert cache.holds("a", 1000.0) and cache.holds("a", 1001.4)
    assert not cache.holds("a", 1002.0)
    assert not cache.holds("b", 1000.0)


def test_adding_again_refreshes() -> None:
    cache = NegativeCache(100, 2.0)
    cache.add("a", 1000.0)
    cache.add("a", 1001.9)
    assert cache.holds("a", 1003.0)


def test_old_slices_are_dropped_as_time_passes() -> None:
    cache = NegativeCache(1000, 2.0)
    for i in range(100):
        cache.add(f"h{i}", 1000.0 + i * 0.1)
    assert len(cache) <= 25  # about ttl / 0.1 s, rounded to whole slices
    assert cache.holds("h99", 1009.9) and not cache.holds("h0", 1009.9)


def test_a_flood_stays_within_max_entries() -> None:
    cache = NegativeCache(1000, 60.0)
    for i in range(100_000):
        cache.add(f"h{i}", 1000.0)
        assert len(cache) <= 1000
    assert cache.holds("h99999", 1000.0)
    assert not cache.holds("h0", 1000.0)


def test_zero_ttl_remembers_nothing() -> None:
    cache = NegativeCache(100, 0.0)
    cache.add("a", 1000.0)
    assert len(cache) == 0 and not cache.holds("a", 1000.0)


def test_a_clock_that_steps_back_never_extends_memory() -> None:
    cache = NegativeCache(100, 2.0)
    cache.add("a", 1000.0)
    cache.add("b", 990.0)  # wall clock stepped back
    assert cache.holds("b", 990.5) and not cache.holds("b", 992.0)
