"""The one connection of a SQLite store: opened on first use, with one transaction at a time, failures mapped."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import aiosqlite

from gateway.errors import StoreUnavailable
from gateway.settings import DatabaseSettings
from gateway.store.factory import sqlite_path


class ConnectedStore:
    """The connection of a SQLite store, shared by its role classes through :meth:`_use`.

    Nothing is opened here; the file is opened on first use. :class:`gateway.store.sqlite.SQLiteStore`
    closes it.
    """

    def __init__(self, database_url: str, database: DatabaseSettings, *, revocation_retention: float) -> None:
        self._database = database
        self._retention = revocation_retention
        self._path = sqlite_path(database_url)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def _connect(self) -> aiosqlite.Connection:
        busy_ms = max(1, int(self._database.query_timeout * 1000))
        conn = aiosqlite.connect(self._path, isolation_level=None,
                                 timeout=self._database.query_timeout)
        try:
            await conn
        except BaseException:
            # On a failed connect aiosqlite stops its worker thread without waiting for it; wait here, or
            # the thread may report back to an event loop that has been closed meanwhile.
            worker = getattr(conn, "_thread", None)
            if isinstance(worker, threading.Thread) and worker.is_alive():
                await asyncio.to_thread(worker.join, 5)
            raise
        try:
            # busy_timeout first: switching to WAL needs a lock another process may hold
            for pragma in (f"busy_timeout = {busy_ms}", "journal_mode = WAL", "foreign_keys = ON",
                           "synchronous = NORMAL"):
                await conn.execute_fetchall("PRAGMA " + pragma)
        except BaseException:
            await conn.close()
            raise
        return conn

    @asynccontextmanager
    async def _use(self, *, write: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the connection for one operation; with ``write``, inside one IMMEDIATE transaction.

        Connects on first use (and again after a failed connect). SQLite failures to reach or lock the
        file become StoreUnavailable; the transaction is rolled back on any error.
        """
        async with self._lock:
            if self._closed:
                raise StoreUnavailable("The session store is closed.")
            try:
                if self._conn is None:
                    self._conn = await self._connect()
                conn = self._conn
                if not write:
                    yield conn
                    return
                if conn.in_transaction:  # left open by a failure we could not roll back
                    await conn.execute("ROLLBACK")
                # IMMEDIATE takes the write lock up front, so two processes never deadlock upgrading
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    await conn.execute("COMMIT")
                except BaseException:
                    with suppress(sqlite3.Error, ValueError):
                        await conn.execute("ROLLBACK")
                    raise
            except (sqlite3.OperationalError, sqlite3.InterfaceError) as exc:
                raise StoreUnavailable(f"The session database is unavailable ({_describe(exc)}).") from exc
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                    raise
                # e.g. "file is not a database", "database disk image is malformed"
                raise StoreUnavailable(f"The session database is unusable ({_describe(exc)}).") from exc


def _describe(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
