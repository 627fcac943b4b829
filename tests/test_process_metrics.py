"""The standard ``process_*`` metrics: exported by every process, merged meaningfully over `--workers N`."""

from __future__ import annotations

import re
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics
from gateway.serving.workermetrics import Snapshot, merge

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="prometheus_client reads process metrics from Linux's /proc only")

PROCESS_METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                   "process_open_fds", "process_max_fds", "process_start_time_seconds")


def _values(text: bytes | str) -> dict[str, float]:
    raw = text.decode() if isinstance(text, bytes) else text
    return {s.name: s.value for family in text_string_to_metric_families(raw) for s in family.samples
            if not s.labels}


def _worker(**process: float) -> str:
    """A real worker's exposition with its process metrics set to ``process`` (name without ``process_``)."""
    text = Metrics().render_own().decode()
    for name, value in process.items():
        text, found = re.subn(rf"^(process_{name}) \S+$", rf"\g<1> {value!r}", text, flags=re.M)
        assert found == 1, name
    return text


def test_a_process_exports_the_standard_process_metrics() -> None:
    values = _values(Metrics().render_own())
    assert set(PROCESS_METRICS) <= values.keys()
    assert values["process_resident_memory_bytes"] > 1_000_000
    assert values["process_open_fds"] >= 3
    assert values["process_start_time_seconds"] > 1_600_000_000


def test_workers_process_metrics_merge_into_totals_and_the_latest_start() -> None:
    first = _worker(cpu_seconds_total=2.0, resident_memory_bytes=100e6, virtual_memory_bytes=300e6,
                    open_fds=20.0, max_fds=4096.0, start_time_seconds=1000.0)
    second = _worker(cpu_seconds_total=3.0, resident_memory_bytes=150e6, virtual_memory_bytes=400e6,
                     open_fds=30.0, max_fds=1024.0, start_time_seconds=2000.0)
    merged = _values(merge([Snapshot(first, live=True, own=True), Snapshot(second, live=True)]))
    assert merged["process_cpu_seconds_total"] == 5.0
    assert merged["process_resident_memory_bytes"] == 250e6
    assert merged["process_virtual_memory_bytes"] == 700e6
    assert merged["process_open_fds"] == 50.0
    assert merged["process_max_fds"] == 1024.0
    assert merged["process_start_time_seconds"] == 2000.0  # a restarted worker reads as a restart


def test_a_dead_workers_cpu_stays_in_the_total_but_its_memory_leaves() -> None:
    live = _worker(cpu_seconds_total=2.0, resident_memory_bytes=100e6, open_fds=20.0, start_time_seconds=3000.0)
    dead = _worker(cpu_seconds_total=7.0, resident_memory_bytes=900e6, open_fds=90.0, start_time_seconds=1000.0)
    merged = _values(merge([Snapshot(live, live=True, own=True), Snapshot(dead, live=False)]))
    assert merged["process_cpu_seconds_total"] == 9.0  # a counter never goes back when a worker dies
    assert merged["process_resident_memory_bytes"] == 100e6
    assert merged["process_open_fds"] == 20.0
    assert merged["process_start_time_seconds"] == 3000.0
