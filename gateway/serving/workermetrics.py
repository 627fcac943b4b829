"""One ``/metrics`` for all the workers of ``gateway serve --workers N``.

Each worker keeps its own registry, and the kernel spreads connections (scrapes too) over the workers,
so alone each scrape would see one worker's counts: counters would jump between workers' values and
Prometheus would read every jump down as a counter reset. So with more than one worker the supervisor
gives each worker a file of its own in one private directory. A worker writes its exposition there
(atomically) every :data:`PUBLISH_EVERY` seconds, right before it answers a scrape, and when it stops;
a scrape answers with the merge of every file:

- counters and histograms are summed over every worker that ever ran, so a worker that died (and was
  restarted under a new file) keeps its counts in the totals, and totals never go back;
- gauges come from live workers only, each by its own rule (:data:`GAUGE_RULES`);
- ``gateway_workers`` tells how many live workers the answer covers.

A sibling's numbers are at most :data:`PUBLISH_EVERY` seconds old.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics

log = structlog.get_logger("gateway.metrics")

PUBLISH_EVERY = 1.0
"""Seconds between a worker's snapshots of its own metrics."""

LIVE_SUFFIX = ".prom"
DEAD_SUFFIX = ".dead"

OWN = "own"
"""Gauge rule: the scraped worker's own value (for gauges it refreshes when scraped)."""

GAUGE_RULES: dict[str, str | Callable[[Iterable[float]], float]] = {
    "gateway_active_sessions": OWN,      # one database count, refreshed by the worker that is scraped
    "gateway_revocation_feed_up": min,   # 1 only while every live worker's feed is live
    "process_start_time_seconds": max,   # the latest start: a restarted worker shows as a restart
    "process_max_fds": min,              # the tightest limit any live worker has
}
"""How live workers' values of a gauge combine; gauges not listed are summed (so memory and open file
descriptors are the live workers' total, and ``process_cpu_seconds_total``, a counter, every worker's)."""


class Snapshot:
    """One worker's exposition as read from the shared directory."""

    __slots__ = ("live", "own", "text")

    def __init__(self, text: str, *, live: bool, own: bool = False) -> None:
        self.text = text
        self.live = live
        self.own = own


def merge(snapshots: Iterable[Snapshot]) -> bytes:
    """The exposition text of several workers' snapshots combined (see the module docstring)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, bool]]]] = {}
    live_workers = 0
    for snapshot in snapshots:
        live_workers += snapshot.live
        for family in text_string_to_metric_families(snapshot.text):
            if family.type == "gauge" and not snapshot.live:
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples.setdefault(key, []).append((sample.value, snapshot.own))
    for name, family in families.items():
        rule = GAUGE_RULES.get(name, sum) if family.type == "gauge" else sum
        for (sample_name, labels), found in values[name].items():
            numbers = [value for value, _ in found]
            if sample_name.endswith("_created"):
                value = min(numbers)
            elif rule == OWN:
                own = [value for value, is_own in found if is_own]
                if not own:
                    continue
                value = own[0]
            else:
                assert callable(rule)
                value = rule(numbers)
            family.add_sample(sample_name, dict(labels), value)
    workers = Metric("gateway_workers", "Live worker processes whose metrics this answer includes.", "gauge")
    workers.add_sample("gateway_workers", {}, live_workers)
    collected = [*families.values(), workers]

    class _Merged:
        def collect(self) -> list[Metric]:
            return collected

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


class WorkerMetrics:
    """One worker's side: publish its own snapshot to ``path``; answer scrapes with everyone's merged."""

    def __init__(self, path: Path, render_own: Callable[[], bytes]) -> None:
        self._path = path
        self._render_own = render_own

    def publish(self) -> bytes:
        """Write this worker's snapshot (atomically); its text."""
        text = self._render_own()
        temporary = self._path.with_suffix(".tmp")
        temporary.write_bytes(text)
        os.replace(temporary, self._path)
        return text

    def render(self) -> bytes:
        """Every worker's metrics merged; this worker's own alone if the directory cannot be read."""
        try:
            own = self.publish()
            siblings = sorted(self._path.parent.iterdir())
        except OSError as exc:
            log.error("cannot share metrics with the other workers", error=str(exc))
            return self._render_own()
        snapshots = [Snapshot(own.decode(), live=True, own=True)]
        for path in siblings:
            if path == self._path or path.suffix not in (LIVE_SUFFIX, DEAD_SUFFIX):
                continue
            text = _read(path)
            if text is None and path.suffix == LIVE_SUFFIX:  # its worker died while we listed
                path = path.with_suffix(DEAD_SUFFIX)
                text = _read(path)
            if text is not None:
                snapshots.append(Snapshot(text, live=path.suffix == LIVE_SUFFIX))
        try:
            return merge(snapshots)
        except ValueError as exc:  # a snapshot that does not parse: a bug, never a 500 on /metrics
            log.error("cannot merge the workers' metrics", error=str(exc))
            return own

    async def publish_periodically(self) -> None:
        """Publish every :data:`PUBLISH_EVERY` seconds until cancelled (failures are logged, not raised)."""
        while True:
            await asyncio.sleep(PUBLISH_EVERY)
            try:
                self.publish()
            except OSError as exc:
                log.error("cannot share metrics with the other workers", error=str(exc))


def retire(path: Path) -> None:
    """Mark a dead worker's snapshot: its counters stay in the totals, its gauges leave them."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path.with_suffix(DEAD_SUFFIX))


def _read(path: Path) -> str | None:
    """A snapshot's text, or None when it is gone (renamed as its worker died) or unreadable."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.error("cannot read another worker's metrics", file=path.name, error=str(exc))
        return None


def share(metrics: Metrics, path: Path) -> WorkerMetrics:
    """Make ``metrics`` answer scrapes for every worker, publishing its own to ``path`` (a file in the
    directory the supervisor gave all its workers). Returns the worker's side, to publish periodically."""
    worker = WorkerMetrics(path, metrics.render_own)
    metrics.render = worker.render
    return worker
