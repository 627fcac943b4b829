"""Metrics shared by the workers of one `gateway serve --workers N`: how snapshots merge, and files."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics
from gateway.serving.workermetrics import Snapshot, merge, retire, share


def _samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    raw = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(raw) for s in family.samples}


def _worker(checks: int, *, feed_up: bool, active: int, evictions: int = 0) -> Metrics:
    metrics = Metrics()
    for _ in range(checks):
        metrics.count_check("webhook", "allow", 0.003)
    metrics.count_check("check", "unknown", 0.2)
    for _ in range(evictions):
        metrics.cache_event("eviction")
    metrics.db_errors.labels("lookup_session").inc(checks)
    metrics.revocation_feed_up.set(1 if feed_up else 0)
    metrics.active_sessions.set(active)
    return metrics


def test_counters_and_histograms_add_up_and_gauges_follow_their_rules() -> None:
    own = _worker(3, feed_up=True, active=10, evictions=1)
    sibling = _worker(4, feed_up=False, active=99)
    merged = _samples(merge([Snapshot(own.render_own().decode(), live=True, own=True),
                             Snapshot(sibling.render_own().decode(), live=True)]))

    assert merged[("gateway_checks_total", (("endpoint", "webhook"), ("outcome", "allow")))] == 7
    assert merged[("gateway_checks_total", (("endpoint", "check"), ("outcome", "unknown")))] == 2
    assert merged[("gateway_check_duration_seconds_bucket", (("endpoint", "webhook"), ("le", "0.005")))] == 7
    assert merged[("gateway_check_duration_seconds_bucket", (("endpoint", "check"), ("le", "0.1")))] == 0
    assert merged[("gateway_check_duration_seconds_count", (("endpoint", "check"),))] == 2
    assert merged[("gateway_session_cache_events_total", (("event", "eviction"),))] == 1
    assert merged[("gateway_database_errors_total", (("operation", "lookup_session"),))] == 7
    created = merged[("gateway_database_errors_created", (("operation", "lookup_session"),))]
    assert created == min(_samples(m.render_own())[("gateway_database_errors_created",
                                                    (("operation", "lookup_session"),))] for m in (own, sibling))
    assert merged[("gateway_active_sessions", ())] == 10  # the scraped worker refreshed it; the other's is old
    assert merged[("gateway_revocation_feed_up", ())] == 0  # one worker's feed is down
    assert merged[("gateway_workers", ())] == 2


def test_a_dead_worker_keeps_its_counts_in_the_totals_but_not_its_gauges() -> None:
    own = _worker(1, feed_up=True, active=5)
    dead = _worker(6, feed_up=False, active=50)
    merged = _samples(merge([Snapshot(own.render_own().decode(), live=True, own=True),
                             Snapshot(dead.render_own().decode(), live=False)]))
    assert merged[("gateway_checks_total", (("endpoint", "webhook"), ("outcome", "allow")))] == 7
    assert merged[("gateway_revocation_feed_up", ())] == 1
    assert merged[("gateway_workers", ())] == 1


def test_one_snapshot_merges_to_itself() -> None:
    own = _worker(2, feed_up=True, active=3).render_own()
    merged = _samples(merge([Snapshot(own.decode(), live=True, own=True)]))
    assert merged == {**_samples(own), ("gateway_workers", ()): 1}


def test_each_worker_answers_for_all_from_the_shared_directory(tmp_path: Path) -> None:
    first, second, third = _worker(1, feed_up=True, active=1), _worker(2, feed_up=True, active=1), \
        _worker(4, feed_up=False, active=1)
    shared = [share(m, tmp_path / f"worker-{i}.prom") for i, m in enumerate((first, second, third), 1)]
    shared[1].publish()
    shared[2].publish()
    retire(tmp_path / "worker-3.prom")  # died after publishing: counts stay, gauges go
    (tmp_path / "unrelated.txt").write_text("not metrics")

    for metrics in (first, second):
        answer = _samples(metrics.render())
        assert answer[("gateway_checks_total", (("endpoint", "webhook"), ("outcome", "allow")))] == 7
        assert answer[("gateway_workers", ())] == 2
        assert answer[("gateway_revocation_feed_up", ())] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.txt", "worker-1.prom", "worker-2.prom",
                                                          "worker-3.dead"]


def test_an_unwritable_directory_answers_with_this_workers_own_metrics(tmp_path: Path) -> None:
    metrics = _worker(2, feed_up=True, active=1)
    share(metrics, tmp_path / "missing" / "worker-1.prom")
    answered, own = _samples(metrics.render()), _samples(metrics.render_own())
    # process_* are read at each render (CPU time moves on between the two): compare which, not their values
    moving = {key for key in own if key[0].startswith("process_")}
    assert moving and moving == {key for key in answered if key[0].startswith("process_")}
    assert {k: v for k, v in answered.items() if k not in moving} == {k: v for k, v in own.items() if k not in moving}


def test_a_directory_removed_under_a_worker_answers_with_its_own_metrics(tmp_path: Path) -> None:
    metrics = _worker(2, feed_up=True, active=1)
    directory = tmp_path / "shared"
    directory.mkdir()
    share(metrics, directory / "worker-1.prom")
    (directory / "worker-2.prom").write_bytes(b"\xff\xfe not text")  # unreadable: skipped
    assert _samples(metrics.render())[("gateway_workers", ())] == 1
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    answered, own = _samples(metrics.render()), _samples(metrics.render_own())
    # process_* are read at each render (CPU time moves on between the two): compare which, not their values
    moving = {key for key in own if key[0].startswith("process_")}
    assert moving and moving == {key for key in answered if key[0].startswith("process_")}
    assert {k: v for k, v in answered.items() if k not in moving} == {k: v for k, v in own.items() if k not in moving}
