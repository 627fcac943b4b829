"""The revocation log's rules: how long rows are kept, how far a new watcher looks back, how much one read takes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only annotations: gateway.settings may import gateway.store to check its section
    from gateway.settings import CacheSettings

REVOCATION_RETENTION_FLOOR = 600.0
"""Logged revocations are kept at least this many seconds, whatever the cache settings."""


REVOCATION_RETENTION_MARGIN = 60.0
"""Kept this much longer than a cache may serve a session, for clocks that disagree and slow readers."""


REVOCATION_REPLAY = 5.0
"""A watcher starting up also applies the revocations logged this many seconds before it began (clocks
of the gateway and the database may disagree that much), not only those logged after."""


REVOCATION_BATCH = 1000
"""Most logged revocations one catch-up read asks for; a watcher reads again until it has them all."""


def revocation_retention(cache: CacheSettings) -> float:
    """Seconds a logged revocation is kept: longer than any cache may serve a session it revokes.

    A cached session is fresh for at most ``cache.ttl`` and then served stale for at most
    ``cache.stale_if_error`` (while the database cannot be reached), so a revocation older than the sum
    can no longer concern a cached entry. A watcher that was away longer than this catches up on what is
    left, which is everything that can still matter.
    """
    longest = max(float(cache.ttl), float(cache.degraded_ttl)) + float(cache.stale_if_error)
    return max(REVOCATION_RETENTION_FLOOR, longest + REVOCATION_RETENTION_MARGIN)
