"""``/healthz`` (the process is alive), ``/readyz`` (it can serve checks correctly: not draining, database
reachable, schema current, revocation feed live) and ``/metrics`` (Prometheus exposition)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.store.base import Schema, Sessions

log = structlog.get_logger("gateway.health")

_ACTIVE_SESSIONS_REFRESH = 10.0

FEED_START_GRACE = 10.0
"""Seconds after start during which readiness does not wait for the revocation feed's first connect
(until then the cache keeps sessions only ``cache.degraded_ttl``, so checks are still correct)."""


@dataclass
class RuntimeState:
    """Mutable per-process run state shared by the lifecycle and the health endpoints."""

    draining: bool = False
    schema_current: bool = False
    active_sessions_at: float = 0.0
    feed_live: bool = False
    """True while the revocation feed is live (set by the store lifecycle)."""
    feed_ever_live: bool = False
    """True once the feed has been live: from then on its start-up grace is over."""
    started_at: float = field(default_factory=time.monotonic)

    def in_feed_grace(self) -> bool:
        """True while the process is starting and its feed has not been live yet (:data:`FEED_START_GRACE`)."""
        return not self.feed_ever_live and time.monotonic() - self.started_at < FEED_START_GRACE


async def healthz(request: web.Request) -> web.Response:
    """Always 200 while the event loop runs."""
    return web.json_response({"status": "ok"})


class Readiness:
    """``/readyz``: 200 only when this process should receive traffic, i.e. it can serve checks correctly.

    Ready means all of: not draining; the database answers (so an unknown token can be checked, not
    only the cached ones); the schema is current; and the revocation feed is live (so a session revoked
    anywhere stops passing here within a second), or the process is still in its start-up grace
    (:data:`FEED_START_GRACE`, until the feed's first connect). Otherwise 503 with the first reason that
    applies: ``draining``, ``database_unavailable``, ``migrations_pending``, ``revocation_feed_down``.
    """

    def __init__(self, store: Schema, state: RuntimeState) -> None:
        self._store = store
        self._state = state

    async def handle(self, request: web.Request) -> web.Response:
        """Ping the database, check migrations and the feed; 503 with the reason otherwise."""
        state = self._state
        if state.draining:
            return web.json_response({"status": "draining"}, status=503)
        try:
            await self._store.ping()
            if not state.schema_current:
                pending = await self._store.pending_migrations()
                if pending:
                    log.warning("not ready: migrations pending", pending=pending)
                    return web.json_response({"status": "migrations_pending", "pending": pending}, status=503)
                state.schema_current = True
        except StoreUnavailable as exc:
            log.error("not ready: database unavailable", error=str(exc))
            return web.json_response({"status": "database_unavailable"}, status=503)
        if not state.feed_live and not state.in_feed_grace():
            log.warning("not ready: revocation feed down")
            return web.json_response({"status": "revocation_feed_down"}, status=503)
        return web.json_response({"status": "ready"})


class MetricsEndpoint:
    """``/metrics``: refreshes the active-sessions gauge at most every 10 s, then renders."""

    def __init__(self, store: Sessions, metrics: Metrics, state: RuntimeState) -> None:
        self._store = store
        self._metrics = metrics
        self._state = state

    async def handle(self, request: web.Request) -> web.Response:
        """Render the exposition text."""
        now = time.time()
        if now - self._state.active_sessions_at >= _ACTIVE_SESSIONS_REFRESH:
            try:
                self._metrics.active_sessions.set(await self._store.count_active_sessions(now))
                self._state.active_sessions_at = now
            except StoreUnavailable:
                self._metrics.db_errors.labels("count_active_sessions").inc()
        response = web.Response(body=self._metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
