"""The pool every PostgreSQL store call but lookups and the feed runs on: admission, retries, failure mapping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiopg
import psycopg2

from gateway.errors import StoreUnavailable
from gateway.redaction import url_secrets
from gateway.settings import DatabaseSettings
from gateway.store.pgconn import close_quietly, connect, locate, unavailable_errors
from gateway.store.pghosts import HostRoute

T = TypeVar("T")
Work = Callable[[aiopg.Cursor], Awaitable[T]]
"""One piece of work on a pooled cursor."""


class PooledStore:
    """The connections of a PostgreSQL store: the pool, routed to one host of the URL, and connections of
    their own for lookups and the revocation feed. The role classes run their statements through :meth:`_run`.

    Nothing connects here; :class:`gateway.store.postgres.PostgresStore` opens and closes the pool.
    """

    def __init__(self, database_url: str, database: DatabaseSettings, *, revocation_retention: float) -> None:
        self._database = database
        self._dsn = database_url
        # the revocation feed may bypass a transaction-pooling PgBouncer, which drops NOTIFY
        self._feed_dsn = database.feed_url or database_url
        self._secrets = url_secrets(database_url, self._feed_dsn)
        # which host of a multi-host URL new connections go to (aiopg cannot fail over by itself)
        self._route = HostRoute(self._dsn)
        self._feed_route = self._route if self._feed_dsn == self._dsn else HostRoute(self._feed_dsn)
        self._pool: aiopg.Pool | None = None
        self._closed = False
        # FIFO admission to the pool: aiopg lets newcomers overtake callers already waiting, which
        # stretches the latency tail under load.
        self._gate = asyncio.Semaphore(database.pool_max)
        self._retention = revocation_retention

    async def _connect(self, role: str) -> aiopg.Connection:
        """A new connection outside the pool (``lookups``, or ``feed`` on ``database.feed_url`` when set);
        raises StoreUnavailable."""
        dsn, route = (self._feed_dsn, self._feed_route) if role == "feed" else (self._dsn, self._route)
        return await connect(dsn, role=role, connect_timeout=self._database.connect_timeout,
                             secrets=self._secrets, route=route)

    def _open_pool(self) -> aiopg.Pool:
        """The pool; raises StoreUnavailable before :meth:`open` and after :meth:`close`."""
        if self._closed or self._pool is None:
            raise StoreUnavailable("The session store is closed." if self._closed
                                   else "The session store is not open.")
        return self._pool

    async def _run(self, work: Work[T], *, transaction: bool = False, retry: bool = False,
                   statement_timeout: float | None = None) -> T:
        """Run ``work`` with a pooled cursor (in one transaction if asked) and map driver failures.

        A connection found already closed is replaced once (nothing was sent on it). With ``retry``
        (read-only work), any lost connection is retried once on a fresh one. Raises StoreUnavailable.
        """
        self._open_pool()
        async with self._gate:
            # checked again: the store may have been closed while this call waited at the gate
            return await self._run_admitted(self._open_pool(), work, transaction, retry, statement_timeout)

    async def _run_admitted(self, pool: aiopg.Pool, work: Work[T], transaction: bool, retry: bool,
                            statement_timeout: float | None) -> T:
        for attempt in (1, 2):
            if self._closed:
                raise StoreUnavailable("The session store is closed.")
            # any error while connecting (an invalid URL is a ProgrammingError) means no database
            try:
                with unavailable_errors(self._secrets, connecting=True):
                    conn = await pool.acquire()
            except StoreUnavailable:
                # a multi-host URL: the host in use may be gone, another may have taken over
                if attempt == 1 and await locate(self._route, self._dsn,
                                                 connect_timeout=self._database.connect_timeout):
                    continue
                raise
            try:
                with unavailable_errors(self._secrets):
                    try:
                        return await self._attempt(conn, work, transaction, statement_timeout)
                    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                        unsent = isinstance(exc, psycopg2.InterfaceError) and conn.closed
                        if attempt == 1 and (retry or unsent):
                            continue
                        raise
            finally:
                await _release(pool, conn)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _attempt(self, conn: aiopg.Connection, work: Work[T], transaction: bool,
                       statement_timeout: float | None) -> T:
        """One try of :meth:`_run` on ``conn``; leaves it idle (committed or rolled back) or closed."""
        async with conn.cursor(timeout=statement_timeout or self._database.query_timeout) as cur:
            try:
                if not transaction:
                    return await work(cur)
                await cur.execute("BEGIN")
                try:
                    result = await work(cur)
                    await cur.execute("COMMIT")
                except BaseException:
                    # aiopg closes the connection itself on a timeout or cancellation
                    if not conn.closed:
                        try:
                            await cur.execute("ROLLBACK")
                        except BaseException:
                            await conn.close()
                            raise
                    raise
                return result
            finally:
                # aiopg's Cursor and its Transaction refer to each other: break the cycle so the pair
                # (and the psycopg2 cursor) dies with the call instead of waiting for a full collection.
                vars(cur).pop("_transaction", None)


async def _release(pool: aiopg.Pool, conn: aiopg.Connection) -> None:
    """Give ``conn`` back to the pool; a connection that cannot be given back is closed instead."""
    try:
        await pool.release(conn)
    except Exception:
        await close_quietly(conn)
