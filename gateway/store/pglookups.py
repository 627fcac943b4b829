"""The session-lookup lane of the PostgreSQL store: batched lookups on connections of their own.

Every lookup joins a queue. Up to ``database.lookup_concurrency`` lookup slots each own one aiopg
connection with one long-lived cursor (and, unless turned off, the prepared lookup statement), beside
the store's pool. A free slot takes everything queued (up to :data:`LOOKUP_BATCH_MAX` distinct hashes)
and answers it with one ``= ANY(...)`` query, so concurrent misses share round trips; on an idle lane a
lookup leaves on the next turn of the event loop. Skipping the pool's acquire and release and a cursor
per query halves the gateway's CPU per query, which is most of a miss's cost when batches are small.

A connection pooler that shares server sessions between clients (PgBouncer in transaction pooling)
loses prepared statements between statements. The lane notices (the statement vanished, or preparing
found it there already), logs a warning once and goes on without preparing.

Failures never reach the event loop: every caller of a failed batch gets the same StoreUnavailable (what
counts as the database being unavailable is decided by :mod:`gateway.store.pgconn`). A connection that
fails is closed and replaced on the next use; a lost connection is retried once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiopg
import psycopg2
import psycopg2.errors

from gateway.errors import StoreUnavailable
from gateway.models import ActiveSession
from gateway.store.pgconn import close_quietly, unavailable_errors

log = logging.getLogger("gateway.store.postgres")

LOOKUP_BATCH_MAX = 256
"""Most distinct token hashes one batched session lookup asks for; more wait for the next batch."""

LookupWaiters = dict[str, list[asyncio.Future[ActiveSession | None]]]
"""Queued session lookups: each token hash with the futures of the callers waiting for it."""

_RETRY_FRESH = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.errors.InvalidSqlStatementName)
"""Failures of a used connection that a fresh one may not have: lost, or its prepared statement gone."""

ResultDecoder = Callable[[list[tuple[Any, ...]]], Iterable[ActiveSession]]
Connect = Callable[[], Awaitable[aiopg.Connection]]


class _Slot:
    """One lookup slot: its connection and cursor, opened on first use and after a failure."""

    __slots__ = ("conn", "cur")

    def __init__(self) -> None:
        self.conn: aiopg.Connection | None = None
        self.cur: aiopg.Cursor | None = None

    async def close(self) -> None:
        conn, self.conn, self.cur = self.conn, None, None
        await close_quietly(conn)


class LookupLane:
    """Batched session lookups on dedicated connections; see the module docstring."""

    def __init__(self, connect: Connect, *, concurrency: int, query_timeout: float, query: str, prepared: bool,
                 decode: ResultDecoder, secrets: Sequence[str]) -> None:
        """``connect`` opens a connection (raising StoreUnavailable); ``query`` looks up the sessions of
        ``%s``, a text array of hashes, and ``decode`` turns its rows into those sessions; ``secrets`` are
        masked in errors."""
        self._connect = connect
        self._query_timeout = query_timeout
        self._decode = decode
        self._secrets = secrets
        parts = query.split("%s")
        numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        self._query_text = query
        self._prepare = f"PREPARE gateway_lookup_sessions(text[]) AS {numbered}" if prepared else None
        self._execute = "EXECUTE gateway_lookup_sessions(%s)" if prepared else query
        self._free = [_Slot() for _ in range(concurrency)]
        self._gate = asyncio.Semaphore(concurrency)
        # Lookups waiting for the next batch, in arrival order. Invariant: while it is not empty,
        # exactly one batch task waits at the gate to take it.
        self._queued: LookupWaiters = {}
        self._batches: set[asyncio.Task[None]] = set()  # strong references to running batches
        self._slots = list(self._free)
        self._closed = False
        self.queries = 0
        """How many lookup queries this lane has sent (retries included)."""

    def lookup(self, token_hash: str) -> asyncio.Future[ActiveSession | None]:
        """Queue a lookup of a well-formed hash for the next batch; its future."""
        waiter: asyncio.Future[ActiveSession | None] = asyncio.get_running_loop().create_future()
        if self._closed:
            waiter.set_exception(StoreUnavailable("The session store is closed."))
            return waiter
        if not self._queued:
            self._start_batch()
        self._queued.setdefault(token_hash, []).append(waiter)
        return waiter

    async def close(self) -> None:
        """Answer queued lookups with StoreUnavailable, let batches in flight end, close the connections."""
        self._closed = True
        if self._batches:
            await asyncio.wait(set(self._batches))
        for slot in self._slots:
            await slot.close()

    def _start_batch(self) -> None:
        """Start the task that will take the queued lookups once it passes the gate."""
        task = asyncio.create_task(self._answer_batch())
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _take_batch(self, limit: int = LOOKUP_BATCH_MAX) -> LookupWaiters:
        """Take up to ``limit`` queued hashes that someone still waits for, oldest first.

        Starts the task for the next batch when lookups remain queued, keeping the queue's invariant.
        """
        queued = self._queued
        batch: LookupWaiters = {}
        while queued and len(batch) < limit:
            token_hash = next(iter(queued))
            waiters = [waiter for waiter in queued.pop(token_hash) if not waiter.done()]  # not cancelled
            if waiters:
                batch[token_hash] = waiters
        if queued:
            self._start_batch()
        return batch

    async def _answer_batch(self) -> None:
        """The body of a batch task: wait at the gate, take the queued lookups, answer them in one query.

        Never raises to the event loop, except when cancelled itself (then its lookups get
        StoreUnavailable): every failure is handed to the waiting callers instead.
        """
        batch: LookupWaiters | None = None
        try:
            async with self._gate:
                batch = self._take_batch()
                if not batch:
                    return
                if self._closed:
                    raise StoreUnavailable("The session store is closed.")
                slot = self._free.pop()
                try:
                    found = await self._query(slot, list(batch))
                finally:
                    self._free.append(slot)
        except BaseException as exc:
            if batch is None:  # cancelled at the gate: this task still owns the whole queue
                batch = self._take_batch(len(self._queued))
            if isinstance(exc, Exception):
                _fail(batch, exc)
                return
            _fail(batch, StoreUnavailable("The session lookup was abandoned."))
            raise
        for token_hash, waiters in batch.items():
            result = found.get(token_hash)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(result)

    async def _query(self, slot: _Slot, hashes: list[str]) -> dict[str, ActiveSession]:
        """The sessions of those ``hashes`` that exist, by hash; one retry on a fresh connection when a
        used one was lost (or lost its prepared statement)."""
        for attempt in (1, 2):
            cur = slot.cur
            fresh = cur is None
            if cur is None:
                cur = await self._open(slot)
            with unavailable_errors(self._secrets):  # a bug in the statement passes through as it is
                try:
                    self.queries += 1
                    await cur.execute(self._execute, (hashes,))
                    rows = await cur.fetchall()
                except BaseException as exc:
                    await slot.close()  # never reuse a connection in an unknown state
                    if isinstance(exc, psycopg2.errors.InvalidSqlStatementName) and self._prepare is not None:
                        self._stop_preparing()
                        fresh = False  # the retry goes without the statement
                    if attempt == 1 and not fresh and isinstance(exc, _RETRY_FRESH):
                        continue
                    raise
            return {active.session.token_hash: active for active in self._decode(rows)}
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _open(self, slot: _Slot) -> aiopg.Cursor:
        """Connect ``slot`` (and prepare the lookup); its cursor. Raises StoreUnavailable."""
        conn = await self._connect()
        try:
            # preparing is part of connecting: any driver error means no usable connection
            with unavailable_errors(self._secrets, connecting=True):
                cur = await conn.cursor(timeout=self._query_timeout)
                if self._prepare is not None:
                    try:
                        await cur.execute(self._prepare)
                    except psycopg2.errors.DuplicatePreparedStatement:
                        self._stop_preparing()  # a new session that has it already: shared by a pooler
        except BaseException:
            await close_quietly(conn)
            raise
        slot.conn, slot.cur = conn, cur
        return cur

    def _stop_preparing(self) -> None:
        """Go on without the prepared statement: the server sessions behind these connections are shared."""
        if self._prepare is not None:
            log.warning("session lookups: the prepared lookup statement does not survive between statements"
                        " (PgBouncer in transaction pooling?); going on without it. Set"
                        " database.prepared_statements = false behind such a pooler")
        self._prepare, self._execute = None, self._query_text


def _fail(batch: LookupWaiters, error: BaseException) -> None:
    """Hand ``error`` to every caller of ``batch`` still waiting (a cancelled caller wants nothing)."""
    for waiters in batch.values():
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
