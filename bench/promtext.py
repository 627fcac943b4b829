"""Read the gateway's ``/metrics`` (Prometheus text).

With ``--workers N`` any worker answers for all of them (``gateway.serving.workermetrics``), its siblings'
numbers at most ``PUBLISH_EVERY`` seconds old; ``gateway_workers`` says how many it covered.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench.procs import http_get
from gateway.serving.workermetrics import PUBLISH_EVERY

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


@dataclass
class Samples:
    """Samples by (metric name, sorted labels); ``workers_seen`` tells how many workers were summed."""

    values: dict[tuple[str, Labels], float] = field(default_factory=dict)
    workers_seen: int = 1

    def total(self, name: str, **labels: str) -> float:
        """Sum of every sample named ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= set(ls))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """``name``'s samples summed per value of ``label``."""
        out: dict[str, float] = {}
        for (n, ls), v in self.values.items():
            if n == name:
                key = dict(ls).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


def parse(text: str) -> Samples:
    """Parse exposition text (comments skipped)."""
    samples = Samples()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if not match:
            continue
        name, raw_labels, raw_value = match.groups()
        if name == "gateway_workers":
            samples.workers_seen = int(float(raw_value))
        labels: Labels = tuple(sorted(_LABEL_RE.findall(raw_labels or "")))
        try:
            samples.values[(name, labels)] = float(raw_value)
        except ValueError:
            continue
    return samples


def scrape(base_url: str) -> Samples | None:
    """One scrape of ``/metrics``, or None when it fails."""
    status, body = http_get(base_url + "/metrics")
    if status != 200:
        return None
    return parse(body.decode(errors="replace"))


def scrape_workers(base_url: str, workers: int, attempts: int = 20) -> Samples:
    """Every worker's metrics, once a scrape covers all ``workers`` (``workers_seen`` says how many it did).

    Call it once the load has stopped: it waits out the siblings' publishing delay first, so counters no
    longer move.
    """
    if workers > 1:
        time.sleep(PUBLISH_EVERY + 0.2)
    samples = Samples(workers_seen=0)
    for _ in range(attempts):
        found = scrape(base_url)
        if found is not None:
            samples = found
            if samples.workers_seen >= workers:
                break
        time.sleep(PUBLISH_EVERY / 4)
    return samples


def feed_up(samples: Samples | None) -> bool:
    """True when the revocation feed is live in every worker the scrape covered (caches use the full TTL)."""
    return samples is not None and samples.total("gateway_revocation_feed_up") >= 1


def summary(samples: Samples) -> Mapping[str, float]:
    """The numbers the report needs: checks by outcome and cache events by kind."""
    out: dict[str, float] = {}
    for outcome, value in samples.by_label("gateway_checks_total", "outcome").items():
        out[f"checks_{outcome}"] = value
    out["checks_total"] = samples.total("gateway_checks_total")
    for event, value in samples.by_label("gateway_session_cache_events_total", "event").items():
        out[f"cache_{event}"] = value
    return out
