"""Connections to PostgreSQL, and the one place that decides what a failed connection means.

Whatever way a connection fails (refused, dropped, shut down by an administrator, timed out, an OS
error, or the event loop refusing to watch its socket) the caller learns one thing: the database is
unavailable. :func:`unavailable_errors` turns every such failure into
:class:`gateway.errors.StoreUnavailable`, the driver's first line kept and the password masked; the pool,
the lookup lane and the revocation feed all go through it.

:func:`connect` (and :data:`CONNECTION_OPTIONS` for the pool) also removes a cause of such failures. When
the server drops a connection, libpq closes its socket at once, and uvloop can keep a closed poll handle
registered under that file descriptor's number; the next connection whose socket gets the same number then
fails with ``RuntimeError: unable to perform operation on <UVPoll closed=True>`` before it is even used
(aiopg issues 856 and 909), on every retry, for as long as the process lives. A socket that was just
created has no watcher that is not stale, so every new connection first drops whatever the event loop
still keeps for its descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import aiopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from gateway.errors import StoreUnavailable
from gateway.redaction import scrub as scrub  # re-exported: the pool and the feed mask with it too
from gateway.store.pghosts import HostRoute

UNREACHABLE: tuple[type[BaseException], ...] = (
    psycopg2.OperationalError,   # refused, dropped, admin shutdown, cannot connect now, statement timeout
    psycopg2.InterfaceError,     # connection already closed
    psycopg2.errors.ReadOnlySqlTransaction,  # pointed at a standby during a failover
    OSError,                     # sockets; TimeoutError too (connect, pool wait or query took too long)
    RuntimeError,                # the event loop refusing a socket (uvloop), or aiopg's pool closing
)
"""Failures that mean "cannot talk to the database right now", as opposed to a bug in a statement."""


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means the database could not be reached or could not answer (see :data:`UNREACHABLE`)."""
    return isinstance(exc, UNREACHABLE)


def describe(exc: BaseException) -> str:
    """The first non-blank line of a failure (libpq adds hint lines), or what kind of failure it is."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def raise_unavailable(exc: BaseException, secrets: Sequence[str]) -> NoReturn:
    """Raise StoreUnavailable for ``exc``: its first line, the password masked, the driver error chained
    unless it would print the password."""
    error = StoreUnavailable(f"The session database is unavailable: {scrub(describe(exc), secrets)}")
    if any(secret in str(exc) for secret in secrets):
        raise error from None
    raise error from exc


@contextlib.contextmanager
def unavailable_errors(secrets: Sequence[str], *, connecting: bool = False) -> Iterator[None]:
    """Raise StoreUnavailable for any failure in the block that means the database is unreachable.

    With ``connecting``, every driver error counts (a malformed URL is a ProgrammingError, a wrong
    password an OperationalError: either way there is no database to talk to). Other errors (a bug in a
    statement, a constraint violation) pass through unchanged, and so does cancellation.
    """
    try:
        yield
    except UNREACHABLE as exc:
        raise_unavailable(exc, secrets)
    except psycopg2.Error as exc:
        if not connecting:
            raise
        raise_unavailable(exc, secrets)


class FreshSocketConnection(psycopg2.extensions.connection):  # type: ignore[misc]  # psycopg2 ships no types
    """A psycopg2 connection that, once its socket exists, clears the running loop's watchers of that
    descriptor number: any left there belong to a socket that is closed (see the module docstring)."""

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(dsn, *args, **kwargs)
        forget_stale_watchers(self.fileno())


def forget_stale_watchers(fd: int) -> None:
    """Remove the running event loop's reader and writer for ``fd`` (a descriptor just opened, so any
    registered is stale). Harmless when there is none, or no running loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(fd)
        loop.remove_writer(fd)


APPLICATION_NAMES = {"pool": "gateway", "lookups": "gateway-lookups", "feed": "gateway-revocation-feed"}
"""``application_name`` of each kind of connection (unless the URL sets one), so an operator, or a test,
can tell them apart in ``pg_stat_activity``."""


def connection_options(dsn: str, role: str, route: HostRoute | None = None) -> dict[str, Any]:
    """Keyword arguments for ``aiopg.create_pool`` and ``aiopg.connect``: :data:`CONNECTION_OPTIONS`, and
    the ``application_name`` of ``role`` (a key of :data:`APPLICATION_NAMES`) when the URL names none.
    With a multi-host ``route``, connections go to its current host."""
    options = dict(CONNECTION_OPTIONS)
    if route is not None and route.multi:
        options["connection_factory"] = route.connection_factory(FreshSocketConnection)
    try:
        named = "application_name" in psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        named = True  # a malformed URL: connecting reports it, with its password masked
    if not named:
        options["application_name"] = APPLICATION_NAMES[role]
    return options


CONNECTION_OPTIONS: dict[str, Any] = {
    "connection_factory": FreshSocketConnection,
    "enable_hstore": False,
    "enable_uuid": False,
}
"""Keyword arguments for ``aiopg.create_pool`` and ``aiopg.connect``: fresh sockets, no type probing."""


async def connect(dsn: str, *, role: str, connect_timeout: float, secrets: Sequence[str],
                  route: HostRoute | None = None) -> aiopg.Connection:
    """A new connection outside any pool for ``role`` (see :func:`connection_options`); raises
    StoreUnavailable when none can be made in ``connect_timeout``.

    With a multi-host ``route``: to its current host, and when that fails, to the first listed host that
    accepts (see :func:`locate`).
    """
    try:
        with unavailable_errors(secrets, connecting=True):
            return await aiopg.connect(dsn, timeout=connect_timeout, **connection_options(dsn, role, route))
    except StoreUnavailable:
        if route is None or not await locate(route, dsn, connect_timeout=connect_timeout):
            raise
    with unavailable_errors(secrets, connecting=True):
        return await aiopg.connect(dsn, timeout=connect_timeout, **connection_options(dsn, role, route))


async def locate(route: HostRoute, dsn: str, *, connect_timeout: float) -> bool:
    """Move ``route`` to the first of its hosts that accepts a connection of ``dsn`` (libpq checking its
    ``target_session_attrs``); True when one did. Never raises but CancelledError."""
    async def try_host(single_host_dsn: str) -> bool:
        try:
            conn = await aiopg.connect(single_host_dsn, timeout=connect_timeout, **CONNECTION_OPTIONS)
        except Exception:
            return False
        await close_quietly(conn)
        return True

    return await route.locate(dsn, try_host)


async def close_quietly(conn: aiopg.Connection | None) -> None:
    """Close ``conn`` (a failed one included) without raising: closing is the last thing a caller does."""
    if conn is None:
        return
    with contextlib.suppress(Exception):
        await conn.close()
