"""``PostgresStore``: the ``Store`` protocol on an aiopg pool, revocations fed by LISTEN/NOTIFY and a log.

Session lookups are batched on connections of their own (:mod:`gateway.store.pglookups`); the revocation
feed has its own connection too (:mod:`gateway.store.pgfeed`); everything else runs on the pool. What a
failed connection means is decided in one place, :mod:`gateway.store.pgconn`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import aiopg

from gateway.errors import StoreUnavailable
from gateway.models import ActiveSession, AuditEvent
from gateway.settings import DatabaseSettings
from gateway.store.base import LoggedRevocation, RevocationHandler, WatchStateHandler
from gateway.store.checks import is_token_hash
from gateway.store.pgadmin import AdminTables
from gateway.store.pgconn import close_quietly, connection_options, describe, scrub, unavailable_errors
from gateway.store.pgdevice import DeviceTables
from gateway.store.pgfeed import CHANNEL, RevocationFeed, decode_revocation, encode_revocation, read_log
from gateway.store.pglogin import LoginTables
from gateway.store.pglookups import LookupLane
from gateway.store.pgpool import PooledStore
from gateway.store.pgsecrets import SecretTables
from gateway.store.pgsessions import SessionTables
from gateway.store.pgsql import SESSION_COLUMNS_S, USER_COLUMNS_U, columns, insert_audit
from gateway.store.pgtokens import TokenTables
from gateway.store.pgusers import UserTables
from gateway.store.rows import active_session_from_row, audit_from_row
from gateway.store.schema import migration_scripts

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x67617465776179
"""``pg_advisory_xact_lock`` key serialising migrations across replicas ("gateway" in ASCII)."""


MIGRATION_TIMEOUT_FLOOR = 60.0
"""Migrations may rewrite tables or wait for another replica's migration: they get at least this long."""


__all__ = ["CHANNEL", "PostgresStore", "decode_revocation", "encode_revocation"]


_AUDIT_COLUMNS = columns(("id", "at", "event", "user_id", "user_key", "actor", "detail"))


_SELECT_AUDIT = f"SELECT {_AUDIT_COLUMNS} FROM audit"  # noqa: S608


# The lookup answers a whole batch as one JSON text of session-and-user rows (NULL when none exists):
# one cell instead of 23 per session halves the driver's work per row, and a migration that changes a
# column's type cannot change the prepared statement's result type.
_LOOKUP_SESSIONS = (f"SELECT json_agg(json_build_array({SESSION_COLUMNS_S}, {USER_COLUMNS_U}))::text"  # noqa: S608
                    " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ANY(%s)")


class PostgresStore(SessionTables, UserTables, LoginTables, AdminTables, TokenTables, DeviceTables, SecretTables,
                    PooledStore):
    """The store on PostgreSQL, for several gateway replicas sharing one database.

    The pool is created by :meth:`open` without connecting; connections are made on demand, and a
    connection the server dropped is discarded, so the store recovers by itself when the database
    comes back. Every statement is bounded by ``database.query_timeout``. Session lookups that arrive
    together, or while the lookup slots are busy, are answered together (see :meth:`lookup_session`).
    """

    def __init__(self, database_url: str, database: DatabaseSettings, *, revocation_retention: float) -> None:
        super().__init__(database_url, database, revocation_retention=revocation_retention)
        self._listeners: set[aiopg.Connection] = set()
        self._lookups = LookupLane(functools.partial(self._connect, "lookups"),
                                   concurrency=database.lookup_concurrency, query_timeout=database.query_timeout,
                                   query=_LOOKUP_SESSIONS, prepared=database.prepared_statements,
                                   decode=_active_sessions, secrets=self._secrets)

    @property
    def lookup_queries(self) -> int:
        """How many session lookup queries (point or batched, retries included) this store has sent."""
        return self._lookups.queries

    async def open(self) -> None:
        """Create the pool and warm up ``database.pool_min`` connections if the database answers.

        Never raises for an unreachable database: calls raise StoreUnavailable until it is back.
        """
        if self._closed:
            raise StoreUnavailable("The session store is closed.")
        if self._pool is not None:
            return
        db = self._database
        # minsize=0: creating the pool connects nothing, so a database that is down cannot fail open()
        self._pool = await aiopg.create_pool(self._dsn, minsize=0, maxsize=db.pool_max,
                                             timeout=db.connect_timeout,
                                             **connection_options(self._dsn, "pool", self._route))
        warm: list[aiopg.Connection] = []
        try:
            with unavailable_errors(self._secrets, connecting=True):
                async with asyncio.timeout(db.connect_timeout):
                    for _ in range(min(db.pool_min, db.pool_max)):
                        warm.append(await self._pool.acquire())
        except StoreUnavailable as exc:
            log.warning("session database not reachable at start: %s", exc.message)
        finally:
            for conn in warm:
                await self._pool.release(conn)

    async def close(self) -> None:
        """Close the pool (waiting briefly for queries in flight), the lookup slots and any listener.

        Returns once every queued session lookup is answered (those still queued get StoreUnavailable)
        and every connection is closed, or once each step has had its bound (a query's timeout, a
        connection's) and been left behind with a warning. Never raises: it is the last thing a process
        does with the store.
        """
        self._closed = True
        for conn in list(self._listeners):
            await close_quietly(conn)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            try:
                async with asyncio.timeout(self._database.query_timeout + 1):
                    await pool.wait_closed()
            except Exception:  # TimeoutError, or a connection that fails to close: close them all anyway
                pool.terminate()
                try:
                    # bounded too: a connection still being opened holds wait_closed until it is
                    async with asyncio.timeout(self._database.connect_timeout + 1):
                        await pool.wait_closed()
                except Exception as exc:
                    log.warning("session database pool did not close cleanly: %s", scrub(describe(exc), self._secrets))
        try:
            async with asyncio.timeout(self._database.query_timeout + 1):
                await self._lookups.close()
        except TimeoutError:
            log.warning("session database pool did not close cleanly: %s", "lookups still running")

    async def ping(self) -> None:
        """Return when the database answers ``SELECT 1``; raise StoreUnavailable otherwise."""
        async def work(cur: aiopg.Cursor) -> None:
            await cur.execute("SELECT 1")
            await cur.fetchone()

        await self._run(work, retry=True)

    # -- migrations ----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations in order, each with its version row in one transaction.

        Every step holds a transaction-scoped advisory lock, so replicas starting together apply each
        migration once; each re-reads what is applied after taking the lock.
        """
        scripts = migration_scripts("postgres")
        timeout = max(MIGRATION_TIMEOUT_FLOOR, self._database.query_timeout)

        async def step(cur: aiopg.Cursor) -> str | None:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            await cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY,"
                              " applied_at timestamptz NOT NULL DEFAULT now())")
            await cur.execute("SELECT version FROM schema_migrations")
            done = {str(row[0]) for row in await cur.fetchall()}
            pending = [(version, sql) for version, sql in scripts if version not in done]
            if not pending:
                return None
            version, script = pending[0]
            await cur.execute(script)
            await cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            return version

        applied: list[str] = []
        while (version := await self._run(step, transaction=True, statement_timeout=timeout)) is not None:
            applied.append(version)
        return applied

    async def pending_migrations(self) -> list[str]:
        """Versions not yet applied (every version when the database is empty)."""
        async def work(cur: aiopg.Cursor) -> set[str]:
            await cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            if not (await cur.fetchone())[0]:
                return set()
            await cur.execute("SELECT version FROM schema_migrations")
            return {str(row[0]) for row in await cur.fetchall()}

        done = await self._run(work, retry=True)
        return [version for version, _ in migration_scripts("postgres") if version not in done]

    # -- session lookups -----------------------------------------------------------------------

    def lookup_session(self, token_hash: str) -> asyncio.Future[ActiveSession | None]:
        """The session and its user, whatever its state; None when unknown or not a well-formed hash.

        Lookups are batched on connections of their own (see :mod:`gateway.store.pglookups`): those made
        together, or while every lookup slot is busy, share one query; on an idle store a lookup leaves
        on the next turn of the event loop. The future fails with StoreUnavailable when the database
        cannot answer. A caller that cancels its future gives up its own answer only.
        """
        if not is_token_hash(token_hash):
            return _answered(None)
        try:
            self._open_pool()
        except StoreUnavailable as exc:
            return _answered(None, exc)
        return self._lookups.lookup(token_hash)

    # -- audit ---------------------------------------------------------------------------------

    async def record_audit(self, event: str, *, user_id: int | None, user_key: str = "", actor: str,
                           detail: Mapping[str, str] | None = None) -> None:
        """Append one audit row stamped with the current time."""
        now = time.time()

        async def work(cur: aiopg.Cursor) -> None:
            await insert_audit(cur, now, event, user_id, user_key, actor, detail)

        await self._run(work)

    async def list_audit(self, *, user_id: int | None = None, limit: int = 100) -> list[AuditEvent]:
        """Newest audit rows first (by insertion order), optionally only those about ``user_id``."""
        sql = _SELECT_AUDIT
        params: dict[str, Any] = {"limit": max(0, limit)}
        if user_id is not None:
            sql += " WHERE user_id = %(user_id)s"
            params["user_id"] = user_id
        sql += " ORDER BY id DESC LIMIT %(limit)s"

        async def work(cur: aiopg.Cursor) -> list[AuditEvent]:
            await cur.execute(sql, params)
            return [audit_from_row(row) for row in await cur.fetchall()]

        return await self._run(work, retry=True)

    # -- revocation log and feed ---------------------------------------------------------------

    async def revocations_since(self, seq: int, *, limit: int = 1000) -> list[LoggedRevocation]:
        """Logged revocations numbered above ``seq``, oldest first, at most ``limit``."""
        async def work(cur: aiopg.Cursor) -> list[LoggedRevocation]:
            return await read_log(cur, seq, limit)

        return await self._run(work, retry=True)

    async def prune_revocations(self, *, before: float) -> int:
        """Delete logged revocations written before ``before``; return how many."""
        async def work(cur: aiopg.Cursor) -> int:
            await cur.execute("DELETE FROM revocations WHERE at < to_timestamp(%s)", (before,))
            return int(cur.rowcount)

        return await self._run(work)

    async def watch_revocations(self, on_revoke: RevocationHandler, on_state: WatchStateHandler) -> None:
        """LISTEN for revocations on a dedicated connection and read the revocation log, until cancelled
        or the store is closed (see :mod:`gateway.store.pgfeed`).

        Calls ``on_state(True)`` once listening and caught up, ``on_state(False)`` as soon as the
        connection is lost (or its log read takes over a second), then reconnects with backoff from
        0.1 s to 1 s, forever, catches up on what it missed and calls ``on_state(True)`` again.
        """
        db = self._database
        feed = RevocationFeed(connect=functools.partial(self._connect, "feed"), listeners=self._listeners,
                              closed=lambda: self._closed, query_timeout=db.query_timeout, secrets=self._secrets,
                              on_revoke=on_revoke, on_state=on_state)
        await feed.run()


def _active_sessions(rows: list[tuple[Any, ...]]) -> Iterable[ActiveSession]:
    """The sessions of a lookup's result: one row whose one cell is a JSON array of lookup rows, or NULL."""
    found = rows[0][0] if rows else None
    return () if found is None else map(active_session_from_row, json.loads(found))


def _answered(result: ActiveSession | None, error: BaseException | None = None) -> asyncio.Future[ActiveSession | None]:
    """A lookup future that is already done."""
    future: asyncio.Future[ActiveSession | None] = asyncio.get_running_loop().create_future()
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
    return future
