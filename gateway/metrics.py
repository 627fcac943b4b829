"""Prometheus metrics, one registry per application (no global registry, so tests and workers stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric the gateway exports. Label children on the hot path are bound once and reused."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.checks = Counter("gateway_checks", "Check decisions by endpoint and outcome.",
                              ["endpoint", "outcome"], registry=r)
        self.check_latency = Histogram("gateway_check_duration_seconds",
                                       "Time to decide a check, by endpoint.", ["endpoint"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.cache_events = Counter("gateway_session_cache_events",
                                    "Session cache lookups and evictions.", ["event"], registry=r)
        self.db_errors = Counter("gateway_database_errors", "Database calls that failed.", ["operation"],
                                 registry=r)
        self.active_sessions = Gauge("gateway_active_sessions",
                                     "Active sessions in the database (refreshed at scrape).", registry=r)
        self.revocation_feed_up = Gauge("gateway_revocation_feed_up",
                                        "1 while the cross-process revocation feed is live.", registry=r)
        self.revocations_received = Counter("gateway_revocations_received",
                                            "Revocation notices received from the feed.", registry=r)
        self.connections_accepted = Counter("gateway_connections_accepted",
                                            "TCP connections accepted by this process.", registry=r)
        self.logins = Counter("gateway_logins", "Login attempts by upstream and outcome.",
                              ["upstream", "outcome"], registry=r)
        self.cache_hit = self.cache_events.labels("hit")
        self.cache_miss = self.cache_events.labels("miss")
        self.cache_negative_hit = self.cache_events.labels("negative_hit")
        self.cache_eviction = self.cache_events.labels("eviction")
        self.cache_coalesced = self.cache_events.labels("coalesced")
        self.cache_stale_hit = self.cache_events.labels("stale_hit")
        self._children: dict[tuple[str, str], MetricWrapperBase] = {}
        self._latency_children: dict[str, MetricWrapperBase] = {}

    def count_check(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Record one decision and how long it took."""
        key = (endpoint, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.checks.labels(endpoint, outcome)
        child.inc()  # type: ignore[attr-defined]
        latency = self._latency_children.get(endpoint)
        if latency is None:
            latency = self._latency_children[endpoint] = self.check_latency.labels(endpoint)
        latency.observe(seconds)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        """The exposition text for ``/metrics``."""
        return generate_latest(self.registry)
