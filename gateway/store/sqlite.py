"""``SQLiteStore``: the ``Store`` protocol on one aiosqlite connection (WAL), revocations fed by polling.

Its roles live beside it, one module each (:mod:`gateway.store.sqlitesessions`, :mod:`gateway.store.sqliteusers`,
:mod:`gateway.store.sqlitelogin`), over the connection of :mod:`gateway.store.sqliteconn`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from gateway.errors import StoreUnavailable
from gateway.models import AuditEvent, Revocation
from gateway.store.base import LoggedRevocation, RevocationHandler, WatchStateHandler
from gateway.store.revlog import REVOCATION_BATCH, REVOCATION_REPLAY
from gateway.store.rows import audit_from_row, logged_revocation_from_row
from gateway.store.schema import migration_scripts
from gateway.store.sqliteadmin import AdminTables
from gateway.store.sqliteconn import ConnectedStore
from gateway.store.sqlitedevice import DeviceTables
from gateway.store.sqlitelogin import LoginTables
from gateway.store.sqlitesecrets import SecretTables
from gateway.store.sqlitesessions import SessionTables
from gateway.store.sqlitesql import insert_audit, one
from gateway.store.sqlitetokens import TokenTables
from gateway.store.sqliteusers import UserTables

log = logging.getLogger(__name__)

PRUNE_EVERY = 60.0
"""Seconds between prunes of the revocation feed by one watcher."""


_AUDIT_COLUMNS = "id, at, event, user_id, user_key, actor, detail"


_SELECT_AUDIT = f"SELECT {_AUDIT_COLUMNS} FROM audit"  # noqa: S608


def _split_statements(script: str) -> list[str]:
    """Split a migration script into complete statements (comments and triggers handled by SQLite)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if any(line.strip() and not line.strip().startswith("--") for line in buffer.splitlines()):
        raise ValueError("migration script ends with an incomplete statement")
    return statements


class SQLiteStore(SessionTables, UserTables, LoginTables, AdminTables, TokenTables, DeviceTables, SecretTables,
                  ConnectedStore):
    """The store on a local SQLite file, for single-host deployments and development.

    One connection serves every call (an asyncio lock keeps transactions from interleaving); several
    processes may share the file: WAL lets readers proceed during a write and ``busy_timeout`` makes
    writers queue instead of failing.
    """

    async def open(self) -> None:
        """Open the file now if possible; a failure is not raised here but by the next call."""
        try:
            async with self._use():
                pass
        except StoreUnavailable as exc:
            log.warning("session store not reachable at start: %s", exc.message)

    async def close(self) -> None:
        """Close the connection; later calls raise StoreUnavailable. Safe to call twice."""
        async with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                with suppress(sqlite3.Error, ValueError):
                    await conn.close()

    async def ping(self) -> None:
        """Return when the file answers ``SELECT 1``; raise StoreUnavailable otherwise."""
        async with self._use() as conn:
            await conn.execute_fetchall("SELECT 1")

    # -- migrations ----------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations in order, each with its version row in one IMMEDIATE transaction.

        The write lock serialises concurrent processes: each re-reads what is applied after taking it.
        """
        applied_now: list[str] = []
        scripts = migration_scripts("sqlite")
        while True:
            async with self._use(write=True) as conn:
                await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                                   "(version TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
                done = {str(r[0]) for r in await conn.execute_fetchall("SELECT version FROM schema_migrations")}
                pending = [(v, sql) for v, sql in scripts if v not in done]
                if not pending:
                    return applied_now
                version, script = pending[0]
                for statement in _split_statements(script):
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                                   (version, time.time()))
                applied_now.append(version)

    async def pending_migrations(self) -> list[str]:
        """Versions not yet applied (every version when the database is empty)."""
        async with self._use() as conn:
            exists = await conn.execute_fetchall(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
            done: set[str] = set()
            if exists:
                done = {str(r[0]) for r in await conn.execute_fetchall("SELECT version FROM schema_migrations")}
        return [v for v, _ in migration_scripts("sqlite") if v not in done]

    # -- audit ---------------------------------------------------------------------------------

    async def record_audit(self, event: str, *, user_id: int | None, user_key: str = "", actor: str,
                           detail: Mapping[str, str] | None = None) -> None:
        """Append one audit row stamped with the current time."""
        async with self._use(write=True) as conn:
            await insert_audit(conn, time.time(), event, user_id, user_key, actor, detail)

    async def list_audit(self, *, user_id: int | None = None, limit: int = 100) -> list[AuditEvent]:
        """Newest audit rows first (by insertion order), optionally only those about ``user_id``."""
        sql = _SELECT_AUDIT
        params: tuple[Any, ...] = ()
        if user_id is not None:
            sql += " WHERE user_id = ?"
            params = (user_id,)
        async with self._use() as conn:
            rows = await conn.execute_fetchall(sql + " ORDER BY id DESC LIMIT ?", (*params, max(0, limit)))
        return [audit_from_row(r) for r in rows]

    # -- revocation feed -----------------------------------------------------------------------

    async def revocations_since(self, seq: int, *, limit: int = 1000) -> list[LoggedRevocation]:
        """Logged revocations with an id above ``seq``, oldest first, at most ``limit``.

        Ids are handed out in commit order (one writer at a time, AUTOINCREMENT never reuses one).
        """
        async with self._use() as conn:
            rows = await conn.execute_fetchall(
                "SELECT id, at, token_hash, user_id FROM revocations WHERE id > ? ORDER BY id LIMIT ?",
                (seq, max(0, limit)))
        return [logged_revocation_from_row(row) for row in rows]

    async def prune_revocations(self, *, before: float) -> int:
        """Delete logged revocations written before ``before``; return how many."""
        async with self._use(write=True) as conn:
            cursor = await conn.execute("DELETE FROM revocations WHERE at < ?", (before,))
            return int(cursor.rowcount)

    async def watch_revocations(self, on_revoke: RevocationHandler, on_state: WatchStateHandler) -> None:
        """Poll the ``revocations`` log every ``database.sqlite_poll_interval`` seconds until cancelled.

        Starts with the rows written a few seconds before it was called (:data:`REVOCATION_REPLAY`);
        calls ``on_state(True)`` once the first read succeeds, ``on_state(False)`` when the file cannot
        be read and True again when it can (rows written meanwhile are still delivered: they stay in the
        log for :func:`gateway.store.revocation_retention` seconds, pruned every minute by each watcher).
        Returns when the store is closed; never raises but CancelledError.
        """
        interval = max(0.01, float(self._database.sqlite_poll_interval))
        since = time.time() - REVOCATION_REPLAY
        last_id: int | None = None
        live: bool | None = None
        next_prune = time.monotonic() + PRUNE_EVERY
        while not self._closed:
            try:
                rows: list[LoggedRevocation] = []
                if last_id is None:
                    async with self._use() as conn:
                        last_id = int(one(await conn.execute_fetchall(
                            "SELECT coalesce(max(id), 0) FROM revocations WHERE at < ?", (since,)))[0])
                while True:
                    batch = await self.revocations_since(last_id, limit=REVOCATION_BATCH)
                    rows.extend(batch)
                    if batch:
                        last_id = batch[-1].seq
                    if len(batch) < REVOCATION_BATCH:
                        break
            except StoreUnavailable as exc:
                if self._closed:
                    return
                if live is not False:
                    log.warning("revocation feed lost: %s", exc.message)
                    live = False
                    _tell_state(on_state, False)
            except Exception:
                log.exception("revocation feed failed; retrying")
            else:
                if live is not True:
                    live = True
                    _tell_state(on_state, True)
                for row in rows:
                    _deliver(on_revoke, row.revocation)
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY
                    await self._prune_revocations()
            await asyncio.sleep(interval)

    async def _prune_revocations(self) -> None:
        """Drop log rows older than the retention; a busy file just means next time."""
        try:
            await self.prune_revocations(before=time.time() - self._retention)
        except StoreUnavailable as exc:
            log.info("revocation log not pruned: %s", exc.message)


def _deliver(on_revoke: RevocationHandler, revocation: Revocation) -> None:
    """Call the handler; its bugs are logged, never allowed to stop the feed."""
    try:
        on_revoke(revocation)
    except Exception:
        log.exception("revocation handler failed")


def _tell_state(on_state: WatchStateHandler, live: bool) -> None:
    """Call the state handler; its bugs are logged, never allowed to stop the feed."""
    try:
        on_state(live)
    except Exception:
        log.exception("revocation feed state handler failed")
