"""The session caches: the negative one remembered for its TTL and bounded in entries however fast garbage
arrives; the positive one bounded in entries, oldest put first out."""

from __future__ import annotations

from gateway.cache import NegativeCache, SessionCache
from gateway.models import ActiveSession, SessionRecord, User


def _active(n: int) -> ActiveSession:
    session = SessionRecord(f"{n:064x}", n, "browser", 0.0, 10_000.0, 0.0, 0.0, None, None, "127.0.0.1", "ua")
    user = User(n, "dev", f"s{n}", f"u{n}@example.com", "", "", (), ("user",), 0.0, 0.0, None)
    return ActiveSession(session, user)


def test_a_full_session_cache_drops_the_session_put_longest_ago() -> None:
    evicted: list[None] = []
    cache = SessionCache(max_entries=3, ttl=60.0, negative_max_entries=10, negative_ttl=2.0, degraded_ttl=1.0,
                         stale_if_error=0.0, clock=lambda: 100.0, on_evict=lambda: evicted.append(None))
    for n in (1, 2, 3):
        cache.put(f"{n:064x}", _active(n), 100.0, cache.generation)
    cache.put(f"{1:064x}", _active(1), 101.0, cache.generation)  # looked up again: now the newest
    cache.put(f"{4:064x}", _active(4), 101.0, cache.generation)
    assert cache.peek(f"{2:064x}") is None
    assert [cache.peek(f"{n:064x}") is not None for n in (1, 3, 4)] == [True, True, True]
    assert len(cache) == 3 and len(evicted) == 1
    assert cache.get(f"{1:064x}", 101.0) is not None and cache.get(f"{1:064x}", 100.0 + 60.0) is not None
    assert cache.get(f"{1:064x}", 101.0 + 60.0) is None  # fresh for the TTL from the latest put


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
