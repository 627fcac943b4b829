"""In-process session cache: bounded TTL caches of good sessions and of known-bad token hashes.

Good sessions live in :class:`_Entries`, a dict bounded in entries and dropped oldest put first, with the
TTL kept per entry (a session's TTL is capped by its own expiry, so one global timer would not do; and a
plain dict lookup is ~10x cheaper than ``TTLCache``'s, which matters on every request). Known-bad hashes
live in :class:`NegativeCache`, time slices of plain sets. A positive entry is *fresh* for the configured
TTL (``degraded_ttl`` while the cross-process revocation feed is down) and never past its session's
expiry or idle deadline. A stale entry is kept a while longer (``stale_if_error``) only so that it can
still be served while the database is unreachable: nobody can revoke a session then. Past that, an entry
can never be served again and is dropped (a few at every put, oldest first), so memory follows the
sessions seen in the last ``ttl + stale_if_error`` rather than filling up to ``max_entries`` with the
dead. A generation counter lets a lookup that raced a revocation notice that its result is outdated and
must not be cached.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

from gateway.models import ActiveSession
from gateway.settings import CacheSettings

DROP_PER_PUT = 2
"""Dead entries (past ``stale_if_error`` or their session's end) dropped at most per put: more than one,
so the dead never pile up faster than they are dropped."""


class CacheEntry:
    """A cached good session plus what this process learned since (last use, moved idle deadline)."""

    __slots__ = ("active", "fresh_until", "idle_deadline", "last_seen", "memo")

    def __init__(self, active: ActiveSession, fresh_until: float) -> None:
        self.active = active
        self.fresh_until = fresh_until
        session = active.session
        self.last_seen = session.last_seen_at
        self.idle_deadline = session.idle_expires_at
        self.memo: dict[Any, Any] = {}
        """Front-ends may keep what they render for this session here; it goes with the entry."""


class _Entries:
    """Good entries by token hash, bounded: when full, the one put longest ago goes (reported to
    ``on_evict``). Putting a hash again makes it the newest. Lookups are one plain dict ``get``."""

    __slots__ = ("_data", "_max", "_on_evict", "_order", "get")

    def __init__(self, maxsize: int, on_evict: Callable[[], None]) -> None:
        self._data: dict[str, CacheEntry] = {}
        self._order: OrderedDict[str, None] = OrderedDict()  # oldest put first
        self._max = maxsize
        self._on_evict = on_evict
        self.get = self._data.get

    def __len__(self) -> int:
        return len(self._data)

    def put(self, token_hash: str, entry: CacheEntry) -> None:
        """Store ``entry`` as the newest; make room first (oldest out) when full."""
        data = self._data
        if token_hash in data:
            self._order.move_to_end(token_hash)
        else:
            while len(data) >= self._max and data:
                oldest, _ = self._order.popitem(last=False)
                del data[oldest]
                self._on_evict()
            self._order[token_hash] = None
        data[token_hash] = entry

    def pop(self, token_hash: str) -> CacheEntry | None:
        """Remove and return the entry for ``token_hash`` (None when absent)."""
        entry = self._data.pop(token_hash, None)
        if entry is not None:
            del self._order[token_hash]
        return entry

    def drop_oldest_while(self, dead: Callable[[CacheEntry], bool], limit: int) -> None:
        """Drop up to ``limit`` entries, oldest put first, while ``dead`` holds for the oldest."""
        data, order = self._data, self._order
        for _ in range(limit):
            if not order:
                return
            oldest = next(iter(order))
            if not dead(data[oldest]):
                return
            del order[oldest]
            del data[oldest]

    def items(self) -> Iterator[tuple[str, CacheEntry]]:
        """A snapshot of the entries (safe to change the cache while iterating)."""
        return iter(list(self._data.items()))

    def clear(self) -> None:
        self._data.clear()
        self._order.clear()


class NegativeCache:
    """Token hashes recently found to admit nobody, kept in time slices.

    A hash is remembered for at most ``ttl`` (at least ``ttl`` minus one slice); slices are dropped
    whole once too old, or oldest first when more than ``max_entries`` hashes are held. Sets of strings
    cost a fraction of an ordered mapping per entry, need no per-entry timestamp, are invisible to the
    garbage collector, and free their memory together, so a flood of distinct garbage tokens keeps
    memory flat.
    """

    SLICES = 4

    def __init__(self, max_entries: int, ttl: float) -> None:
        self._ttl = ttl
        self._width = ttl / self.SLICES
        self._max = max_entries
        self._slice_max = max(1, max_entries // self.SLICES)
        self._slices: deque[tuple[float, set[str]]] = deque()  # (start, members), oldest first
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, token_hash: str, now: float) -> None:
        """Remember ``token_hash`` from ``now`` on."""
        if self._ttl <= 0:
            return
        slices = self._slices
        if (not slices or not slices[-1][0] <= now < slices[-1][0] + self._width
                or len(slices[-1][1]) >= self._slice_max):
            slices.append((now, set()))
        members = slices[-1][1]
        if token_hash not in members:
            members.add(token_hash)
            self._size += 1
        while len(slices) > 1 and (self._size > self._max or now >= slices[0][0] + self._ttl):
            self._size -= len(slices.popleft()[1])

    def holds(self, token_hash: str, now: float) -> bool:
        """True when ``token_hash`` was added less than ``ttl`` ago (slices round that down)."""
        ttl = self._ttl
        return any(token_hash in members and now < start + ttl for start, members in self._slices)


class SessionCache:
    """Positive and negative caches keyed by token hash. Not thread-safe: one event loop per process."""

    def __init__(self, *, max_entries: int, ttl: float, negative_max_entries: int, negative_ttl: float,
                 degraded_ttl: float, stale_if_error: float, clock: Callable[[], float],
                 on_evict: Callable[[], None] = lambda: None) -> None:
        self._ttl = ttl
        self._degraded_ttl = degraded_ttl
        self._stale_if_error = stale_if_error
        self._clock = clock
        self._good = _Entries(max_entries, on_evict)
        self._bad = NegativeCache(negative_max_entries, negative_ttl)
        self.degraded = False
        self.generation = 0

    @property
    def ttl(self) -> float:
        """The TTL now in force for new positive entries."""
        return min(self._ttl, self._degraded_ttl) if self.degraded else self._ttl

    def __len__(self) -> int:
        return len(self._good)

    def get(self, token_hash: str, now: float) -> CacheEntry | None:
        """The fresh entry for this hash, or None (absent, stale, or past its idle deadline)."""
        entry = self._good.get(token_hash)
        if entry is None:
            return None
        if now >= entry.fresh_until or (entry.idle_deadline is not None and now >= entry.idle_deadline):
            return None
        return entry

    def peek(self, token_hash: str) -> CacheEntry | None:
        """The entry for this hash whatever its freshness, or None."""
        return self._good.get(token_hash)

    def get_stale(self, token_hash: str, now: float) -> CacheEntry | None:
        """An entry past its freshness but within ``stale_if_error`` and its session's limits, or None.

        Only for answering while the database is unreachable.
        """
        entry = self._good.get(token_hash)
        if entry is None or now >= entry.fresh_until + self._stale_if_error:
            return None
        session = entry.active.session
        if now >= session.expires_at or (entry.idle_deadline is not None and now >= entry.idle_deadline):
            return None
        return entry

    def is_known_bad(self, token_hash: str, now: float) -> bool:
        """True when this hash was recently found unknown, expired or revoked."""
        return self._bad.holds(token_hash, now)

    def put(self, token_hash: str, active: ActiveSession, now: float, generation: int) -> None:
        """Cache a good session, unless a revocation arrived since ``generation`` was read."""
        if generation != self.generation:
            return
        ttl = self.ttl
        if ttl <= 0:
            return
        # The idle deadline is checked on every get (it moves with use); the absolute expiry never moves.
        fresh_until = min(now + ttl, active.session.expires_at)
        if fresh_until > now:  # a key put again moves to the back of the eviction order
            self._good.put(token_hash, CacheEntry(active, fresh_until))
        self._good.drop_oldest_while(lambda entry: self._is_dead(entry, now), DROP_PER_PUT)

    def _is_dead(self, entry: CacheEntry, now: float) -> bool:
        """True when ``entry`` can never be served again, fresh or stale."""
        if now >= entry.fresh_until + self._stale_if_error:
            return True
        idle_deadline = entry.idle_deadline
        return now >= entry.active.session.expires_at or (idle_deadline is not None and now >= idle_deadline)

    def put_bad(self, token_hash: str, now: float) -> None:
        """Remember briefly that this hash admits nobody."""
        self._bad.add(token_hash, now)

    def evict(self, token_hash: str) -> None:
        """Forget one session now (it was revoked)."""
        self.generation += 1
        self._good.pop(token_hash)
        self.put_bad(token_hash, self._clock())

    def evict_user(self, user_id: int) -> None:
        """Forget every cached session of one user (revocations of a whole user are rare: a scan is fine)."""
        self.generation += 1
        stale = [h for h, e in self._good.items() if e.active.user.id == user_id]
        for token_hash in stale:
            self._good.pop(token_hash)

    def mark_all_stale(self, now: float) -> None:
        """Make every entry stale (revocations may have been missed): each is re-checked on next use,
        but can still be served from :meth:`get_stale` while the database is unreachable."""
        self.generation += 1
        for _, entry in self._good.items():
            entry.fresh_until = min(entry.fresh_until, now)

    def flush(self) -> None:
        """Forget every positive entry."""
        self.generation += 1
        self._good.clear()


def cache_problems(cache: CacheSettings) -> list[str]:
    """Problems with ``[cache]``: room for at least one entry, and a degraded TTL short enough that a
    revocation made elsewhere still takes effect within a second while the feed is down."""
    problems: list[str] = []
    if cache.max_entries < 1 or cache.negative_max_entries < 1:
        problems.append("cache.max_entries and cache.negative_max_entries: must be at least 1")
    if cache.degraded_ttl > 1:
        problems.append("cache.degraded_ttl: must be at most 1s to keep the revocation promise")
    return problems
