"""Sessions' last use, written back to the store in batches, off the request path.

The check core decides when a use is worth recording (once per ``session.last_seen_grain``) and notes it
here; this module keeps the first and last unwritten use of each session and writes them in one
statement per :data:`BATCH_DELAY`, :data:`CHUNK` sessions per statement. It is best effort: under a
flood it keeps at most :data:`MAX_PENDING` sessions, and a database that cannot answer loses the
batch (later uses are recorded by later notes; a use is a minute-grained fact, not a revocation).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.store.base import SessionLookups

log = structlog.get_logger("gateway.lastseen")

MAX_PENDING = 10_000
"""Most sessions with an unwritten use; further sessions' uses are dropped until a batch is written."""
CHUNK = 500
"""Most uses one statement carries: building a statement holds the event loop (~3 us a use)."""
BATCH_DELAY = 0.5
"""Uses are written back in one batch per this many seconds (the grain is a minute: nothing is lost)."""


class LastSeenWriter:
    """Batches session uses into ``store.touch_sessions`` calls; one per check core."""

    def __init__(self, store: SessionLookups, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._pending: dict[str, tuple[float, float]] = {}  # hash -> (first, last) unwritten use
        self._flusher: asyncio.Task[None] | None = None

    def note(self, token_hash: str, now: float) -> None:
        """Record a use of the session at ``now``; written to the store within :data:`BATCH_DELAY`.

        Never blocks and never raises; must be called from the event loop's thread.
        """
        pending = self._pending
        earlier = pending.get(token_hash)
        if earlier is not None:
            pending[token_hash] = (earlier[0], max(now, earlier[1]))
        elif len(pending) < MAX_PENDING:
            pending[token_hash] = (now, now)
        else:
            return  # best effort: under a flood, later uses are recorded by later notes
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        """Write pending uses in batches, one round trip per :data:`BATCH_DELAY`; never raises (a
        background task whose exception nobody would retrieve)."""
        while self._pending:
            await asyncio.sleep(BATCH_DELAY)
            try:
                await self.flush()
            except Exception:
                log.exception("could not record session use")

    async def flush(self) -> None:
        """Write every pending use now, :data:`CHUNK` per statement, so checks are served between
        statements; a database failure is logged and counted, and what is left is dropped."""
        batch, self._pending = self._pending, {}
        uses = list(batch.items())
        for start in range(0, len(uses), CHUNK):
            try:
                await self._store.touch_sessions(dict(uses[start:start + CHUNK]))
            except StoreUnavailable as exc:
                self._metrics.db_errors.labels("touch_sessions").inc()
                log.warning("could not record session use", sessions=len(uses) - start, error=str(exc))
                return

    async def drain(self) -> None:
        """Stop the batch writer and write what is pending (at shutdown, and in tests)."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
