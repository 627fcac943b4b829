"""``/healthz`` (the process is alive), ``/readyz`` (it can serve: database reachable, schema current, not
draining) and ``/metrics`` (Prometheus exposition)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.store.base import Store

log = structlog.get_logger("gateway.health")

_ACTIVE_SESSIONS_REFRESH = 10.0


@dataclass
class RuntimeState:
    """Mutable per-process run state shared by the lifecycle and the health endpoints."""

    draining: bool = False
    schema_current: bool = False
    active_sessions_at: float = 0.0


async def healthz(request: web.Request) -> web.Response:
    """Always 200 while the event loop runs."""
    return web.json_response({"status": "ok"})


class Readiness:
    """``/readyz``: 200 only when this process should receive traffic."""

    def __init__(self, store: Store, state: RuntimeState) -> None:
        self._store = store
        self._state = state

    async def handle(self, request: web.Request) -> web.Response:
        """Ping the database and check migrations; 503 with the reason otherwise."""
        if self._state.draining:
            return web.json_response({"status": "draining"}, status=503)
        try:
            await self._store.ping()
            if not self._state.schema_current:
                pending = await self._store.pending_migrations()
                if pending:
                    log.warning("not ready: migrations pending", pending=pending)
                    return web.json_response({"status": "migrations_pending", "pending": pending}, status=503)
                self._state.schema_current = True
        except StoreUnavailable as exc:
            log.error("not ready: database unavailable", error=str(exc))
            return web.json_response({"status": "database_unavailable"}, status=503)
        return web.json_response({"status": "ready"})


class MetricsEndpoint:
    """``/metrics``: refreshes the active-sessions gauge at most every 10 s, then renders."""

    def __init__(self, store: Store, metrics: Metrics, state: RuntimeState) -> None:
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
