"""A per-key token bucket (per client address on /login and /callback), bounded in memory.

In-process: each replica limits on its own (the lockout after repeated failures is shared through the
database). Keys not seen for two minutes are forgotten, and at most ``max_keys`` are tracked; under a
flood of distinct addresses the oldest buckets are dropped first.
"""

from __future__ import annotations

from collections.abc import Callable

from cachetools import TTLCache


class RateLimiter:
    """Allows ``per_minute`` requests per key with bursts up to the same number."""

    def __init__(self, per_minute: int, clock: Callable[[], float], max_keys: int = 100_000) -> None:
        self._capacity = float(per_minute)
        self._refill = per_minute / 60.0
        self._clock = clock
        self._buckets: TTLCache[str, list[float]] = TTLCache(max_keys, ttl=120, timer=clock)

    def take(self, key: str) -> float:
        """Spend one token for ``key``: 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [self._capacity - 1, now]
            return 0.0
        tokens = min(self._capacity, bucket[0] + (now - bucket[1]) * self._refill)
        if tokens < 1:
            bucket[0], bucket[1] = tokens, now
            return (1 - tokens) / self._refill
        self._buckets[key] = [tokens - 1, now]
        return 0.0

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may spend a token (0.0: it may now), spending nothing: for limits that count
        only failures, checked before the attempt and spent (:meth:`take`) when it fails."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self._capacity, bucket[0] + (self._clock() - bucket[1]) * self._refill)
        return 0.0 if tokens >= 1 else (1 - tokens) / self._refill
