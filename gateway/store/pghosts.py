"""Failover across the hosts of a multi-host PostgreSQL URL, which aiopg cannot follow by itself.

libpq accepts ``postgresql://u@a:5432,b:5432/db?target_session_attrs=read-write`` and tries the hosts in
turn, but aiopg watches the socket of the first attempt only: when the first host refuses and libpq opens
a socket for the next one, aiopg never sees it and the connect waits out its timeout. So the gateway picks
the host itself. A :class:`HostRoute` sends every new connection (pool, lookup slots, revocation feed) to
one host of the list, by rewriting the connection string to that single host (keeping
``target_session_attrs``, so libpq still refuses a standby when asked for read-write). When connecting to
it fails, :meth:`HostRoute.locate` tries the listed hosts in order, one single-host connection at a time,
and moves the route to the first that accepts. A URL with one host is passed through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2
import psycopg2.extensions

log = logging.getLogger("gateway.store.postgres")

TryHost = Callable[[str], Awaitable[bool]]
"""Connects to one single-host connection string; True when the host accepted (and served what was asked)."""


class HostRoute:
    """Which host of a connection string new connections go to; see the module docstring."""

    def __init__(self, dsn: str) -> None:
        self.hosts: tuple[tuple[str, str], ...] = _hosts(dsn)
        """``(host, port)`` of each listed host, in order; empty for a single-host connection string."""
        self._current = 0
        self._generation = 0
        self._lock: asyncio.Lock | None = None

    @property
    def multi(self) -> bool:
        """True when the connection string lists several hosts."""
        return len(self.hosts) > 1

    @property
    def current(self) -> str:
        """``host:port`` new connections go to (for logs)."""
        host, port = self.hosts[self._current] if self.hosts else ("", "")
        return f"{host}:{port}" if port else host

    def pin(self, dsn: str, index: int | None = None) -> str:
        """``dsn`` with its host list replaced by the current host (or host ``index``); any other connection
        string unchanged."""
        if not self.multi:
            return dsn
        try:
            params = psycopg2.extensions.parse_dsn(dsn)
        except psycopg2.Error:
            return dsn  # connecting reports it, password masked
        if "," not in params.get("host", ""):
            return dsn
        host, port = self.hosts[self._current if index is None else index]
        params["host"] = host
        params.pop("port", None)  # an empty port is libpq's default
        if port:
            params["port"] = port
        params.pop("hostaddr", None)
        return str(psycopg2.extensions.make_dsn(**params))

    async def locate(self, dsn: str, try_host: TryHost) -> bool:
        """Move the route to the first listed host that accepts a connection of ``dsn`` (tried in order by
        ``try_host``); True when a host was found. Concurrent callers share one search: a caller that
        waited while another searched takes that result."""
        if not self.multi:
            return False
        if self._lock is None:
            self._lock = asyncio.Lock()
        seen = self._generation
        async with self._lock:
            if self._generation != seen:
                return True
            before = self._current
            for index in range(len(self.hosts)):
                if await try_host(self.pin(dsn, index)):
                    self._current = index
                    self._generation += 1
                    if index != before:
                        log.warning("session database: connecting to %s now", self.current)
                    return True
            return False

    def connection_factory(self, base: type[Any]) -> type[Any]:
        """A subclass of the psycopg2 connection class ``base`` whose connections go to the current host."""
        route = self

        class Routed(base):  # type: ignore[misc]  # psycopg2 ships no types
            def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
                super().__init__(route.pin(dsn), *args, **kwargs)

        return Routed


def _hosts(dsn: str) -> tuple[tuple[str, str], ...]:
    """The ``(host, port)`` pairs of a multi-host connection string; empty when it has one host (or cannot
    be read: connecting reports that)."""
    params: dict[str, str] = {}
    with contextlib.suppress(psycopg2.Error):
        params = psycopg2.extensions.parse_dsn(dsn)
    hosts = params.get("host", "").split(",")
    if len(hosts) < 2:
        return ()
    ports = params.get("port", "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        return ()  # libpq refuses it with its own message
    return tuple(zip(hosts, ports, strict=True))
