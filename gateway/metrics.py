"""Prometheus metrics, one registry per application (no global registry, so tests and workers stay apart).

The check path counts into plain integers (no locks, no label lookups: one event loop per process owns
them) and a custom collector turns them into counters and a histogram at scrape time. Cold-path metrics
use prometheus_client's own types, and the standard ``process_*`` metrics (CPU, memory, file descriptors,
start time; Linux only) come from prometheus_client's ``ProcessCollector``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CACHE_EVENTS = ("hit", "miss", "negative_hit", "coalesced", "stale_hit", "eviction")
DEVICE_GRANT_OUTCOMES = ("issued", "approved", "denied", "token_issued", "pending", "slow_down", "access_denied",
                         "expired", "invalid_grant", "invalid_request", "wrong_user_code", "rate_limited",
                         "forbidden")
"""Outcomes of the device authorization grant (``gateway_device_grants_total``), all exported from the start."""


class HotCounters(Collector):
    """Check-path counts kept as plain numbers, exported as Prometheus families on scrape."""

    def __init__(self) -> None:
        self.checks: dict[tuple[str, str], int] = {}
        self.latency: dict[str, list[float]] = {}  # per endpoint: bucket counts..., +Inf count, sum
        self.cache = dict.fromkeys(CACHE_EVENTS, 0)
        self.fast_lane = {"requests": 0, "handovers": 0}
        """Requests the fast lane answered, and connections it handed to aiohttp."""

    def count_check(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Record one decision and how long it took."""
        key = (endpoint, outcome)
        self.checks[key] = self.checks.get(key, 0) + 1
        row = self.latency.get(endpoint)
        if row is None:
            row = self.latency[endpoint] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        row[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        """Render the current numbers (called by the registry at scrape time)."""
        checks = CounterMetricFamily("gateway_checks", "Check decisions by endpoint and outcome.",
                                     labels=["endpoint", "outcome"])
        for (endpoint, outcome), count in sorted(self.checks.items()):
            checks.add_metric([endpoint, outcome], count)
        yield checks
        latency = HistogramMetricFamily("gateway_check_duration_seconds", "Time to decide a check, by endpoint.",
                                        labels=["endpoint"])
        for endpoint, row in sorted(self.latency.items()):
            running = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, in_bucket in zip((*LATENCY_BUCKETS, float("inf")), row[:-1], strict=True):
                running += in_bucket
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            latency.add_metric([endpoint], buckets, row[-1])
        yield latency
        cache = CounterMetricFamily("gateway_session_cache_events", "Session cache lookups and evictions.",
                                    labels=["event"])
        for event, count in self.cache.items():
            cache.add_metric([event], count)
        yield cache
        yield CounterMetricFamily("gateway_fast_lane_requests", "Check-path requests answered by the fast lane.",
                                  value=self.fast_lane["requests"])
        yield CounterMetricFamily("gateway_fast_lane_handovers",
                                  "Connections the fast lane handed to aiohttp (a request it does not serve).",
                                  value=self.fast_lane["handovers"])


SESSION_REFRESH_OUTCOMES = ("renewed", "refused", "provider_unavailable", "unavailable", "elsewhere", "unsupported",
                            "gone", "unreadable", "error")
"""Every outcome ``gateway_session_refreshes_total`` counts (each exported from the start, at 0)."""


class Metrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hot = HotCounters()
        r.register(self.hot)
        ProcessCollector(registry=r)  # reads /proc/self at scrape time: each process reports itself
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
        self.backchannel_logouts = Counter(
            "gateway_backchannel_logouts", "Back-channel logout requests by upstream and outcome (revoked, "
            "invalid, replayed, unavailable, not_found, bad_request, too_large).", ["upstream", "outcome"], registry=r)
        self.api_tokens = Counter(
            "gateway_api_tokens", "Self-service API token requests by action (mint, revoke) and outcome (ok, "
            "limit, invalid, not_found, forbidden).", ["action", "outcome"], registry=r)
        self.session_refreshes = Counter(
            "gateway_session_refreshes", "Refreshes of sessions with the upstream (session.refresh) by outcome: "
            "renewed; refused (the upstream no longer vouches: the session ended); provider_unavailable and "
            "unavailable (the upstream or the database could not be asked: tried again later); elsewhere (another "
            "process holds the refresh); unsupported (no refresh token kept); gone (revoked or ended meanwhile); "
            "unreadable (sealed with a key no longer configured); error (a bug).", ["outcome"], registry=r)
        for outcome in SESSION_REFRESH_OUTCOMES:
            self.session_refreshes.labels(outcome)
        self.device_grants = Counter(
            "gateway_device_grants", "Device authorization grant (RFC 8628) events by outcome: codes issued, "
            "approved and denied; polls answered token_issued, pending, slow_down, access_denied, expired, "
            "invalid_grant or invalid_request; approval-page refusals wrong_user_code, rate_limited, forbidden.",
            ["outcome"], registry=r)
        for outcome in DEVICE_GRANT_OUTCOMES:
            self.device_grants.labels(outcome)
        self.render: Callable[[], bytes] = self.render_own
        """The exposition text for ``/metrics``: this process's own, unless the serving machinery sets it
        to every worker's (``gateway serve --workers N``, see :mod:`gateway.serving.workermetrics`)."""

    def count_check(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Record one decision and how long it took."""
        self.hot.count_check(endpoint, outcome, seconds)

    def cache_event(self, event: str) -> None:
        """Count one session-cache event (one of :data:`CACHE_EVENTS`)."""
        self.hot.cache[event] += 1

    def render_own(self) -> bytes:
        """The exposition text of this process's own metrics."""
        return generate_latest(self.registry)
