"""The garbage-collector policy of a serving process: young collections as usual, older ones on a timer.

CPython runs a full (generation 2) collection whenever the objects that survived since the last one
reach a quarter of all long-lived objects. A full session cache holds hundreds of thousands of
objects, so under a stream of cache misses that means a stop-the-world pause of tens of milliseconds
every few seconds: the whole latency tail of a miss. Its middle generation costs less but not little:
every tenth young collection scans again everything the last ten let through (each cache miss leaves a
cached session behind), about a millisecond each, 25 times a second under a stream of misses: over a
third of the collector's time, spent on objects that are not garbage.

Here the objects alive at start-up are frozen (never scanned again), only the youngest generation is
collected automatically (survivors wait in the middle one), and one full collection runs every
``gc_full_interval`` instead, so cyclic garbage is still reclaimed but the older generations are
scanned once per interval, not every few seconds. Young collections, which are cheap, stay automatic.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time

import structlog

log = structlog.get_logger("gateway.gc")

_NEVER = 1 << 30
"""A threshold that automatic collection never reaches."""


class GcPolicy:
    """Applies the policy to this process while running; :meth:`stop` restores CPython's defaults."""

    def __init__(self, full_interval: float) -> None:
        self._interval = full_interval
        self._saved = gc.get_threshold()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Freeze what start-up built, switch off automatic collections of the older generations, start
        the timer.

        Call inside the running loop once the application is set up. A zero interval leaves CPython's
        own policy in place.
        """
        if self._interval <= 0:
            return
        gc.collect()
        gc.freeze()
        gc.set_threshold(self._saved[0], _NEVER, _NEVER)
        self._task = asyncio.ensure_future(self._collect_periodically())

    async def _collect_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            started = time.perf_counter()
            found = gc.collect()
            log.debug("full garbage collection", seconds=round(time.perf_counter() - started, 4), collected=found)

    async def stop(self) -> None:
        """Stop the timer and give the process back CPython's thresholds (the frozen objects stay frozen)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        gc.set_threshold(*self._saved)
