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
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import aiopg
import psycopg2
import psycopg2.errors

from gateway.errors import NotFound, StoreUnavailable
from gateway.models import (
    ActiveSession,
    AuditEvent,
    LoginAttempt,
    Revocation,
    SessionKind,
    SessionRecord,
    User,
)
from gateway.settings import Settings
from gateway.store import (
    BLOCK_FIELDS,
    DEVICE_FIELDS,
    LOGIN_ATTEMPT_FIELDS,
    SESSION_FIELDS,
    USER_AGENT_MAX,
    USER_FIELDS,
    active_session_from_row,
    audit_from_row,
    block_audit,
    block_emails,
    block_from_row,
    check_block_key,
    check_login_failure,
    check_new_device,
    check_new_login_attempt,
    check_new_session,
    device_from_row,
    encode_detail,
    encode_names,
    is_client_addr,
    is_token_hash,
    login_attempt_from_row,
    migration_scripts,
    revocation_retention,
    session_from_row,
    user_from_row,
)
from gateway.store.base import (
    Block,
    BlockKey,
    BlockOutcome,
    Device,
    LoggedRevocation,
    RevocationHandler,
    WatchStateHandler,
)
from gateway.store.pgconn import (
    close_quietly,
    connect,
    connection_options,
    describe,
    locate,
    scrub,
    unavailable_errors,
)
from gateway.store.pgfeed import (
    CHANNEL,
    SELECT_NEWEST,
    RevocationFeed,
    decode_revocation,
    encode_revocation,
    log_revocations,
    read_log,
)
from gateway.store.pghosts import HostRoute
from gateway.store.pglookups import LookupLane

log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[aiopg.Cursor], Awaitable[T]]

MIGRATION_LOCK_KEY = 0x67617465776179
"""``pg_advisory_xact_lock`` key serialising migrations across replicas ("gateway" in ASCII)."""

MIGRATION_TIMEOUT_FLOOR = 60.0
"""Migrations may rewrite tables or wait for another replica's migration: they get at least this long."""

PRUNE_BATCH = 100
"""Most expired login attempts or stale failure counters one call deletes on the side."""

_TIME_FIELDS = frozenset({"created_at", "updated_at", "last_login_at", "expires_at", "last_seen_at",
                          "idle_expires_at", "revoked_at", "at", "window_started_at", "locked_until"})

__all__ = ["CHANNEL", "PostgresStore", "decode_revocation", "encode_revocation", "url_secrets"]


def _columns(fields: Sequence[str], prefix: str = "") -> str:
    """A select list in ``fields`` order, times converted from timestamptz to epoch seconds."""
    out = []
    for name in fields:
        column = prefix + name
        out.append(f"extract(epoch from {column})::float8" if name in _TIME_FIELDS else column)
    return ", ".join(out)


_USER_COLUMNS = _columns(USER_FIELDS)
_USER_COLUMNS_U = _columns(USER_FIELDS, "u.")
_SESSION_COLUMNS = _columns(SESSION_FIELDS)
_SESSION_COLUMNS_S = _columns(SESSION_FIELDS, "s.")
_AUDIT_COLUMNS = _columns(("id", "at", "event", "user_id", "user_key", "actor", "detail"))
_ACTIVE = ("revoked_at IS NULL AND expires_at > to_timestamp(%(now)s)"
           " AND (idle_expires_at IS NULL OR idle_expires_at > to_timestamp(%(now)s))")

# Statements assembled from the constant column lists above (never from input: values are bound).
_SELECT_USERS = f"SELECT {_USER_COLUMNS} FROM users"  # noqa: S608
_SELECT_SESSIONS = f"SELECT {_SESSION_COLUMNS} FROM sessions"  # noqa: S608
_SELECT_AUDIT = f"SELECT {_AUDIT_COLUMNS} FROM audit"  # noqa: S608
_COUNT_ACTIVE = f"SELECT count(*) FROM sessions WHERE {_ACTIVE}"  # noqa: S608
# The lookup answers a whole batch as one JSON text of session-and-user rows (NULL when none exists):
# one cell instead of 23 per session halves the driver's work per row, and a migration that changes a
# column's type cannot change the prepared statement's result type.
_LOOKUP_SESSIONS = (f"SELECT json_agg(json_build_array({_SESSION_COLUMNS_S}, {_USER_COLUMNS_U}))::text"  # noqa: S608
                    " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = ANY(%s)")


_UPSERT_USER = (
    "INSERT INTO users AS u (upstream, subject, email, name, username, groups, roles, created_at,"  # noqa: S608
    " updated_at, last_login_at) VALUES (%(upstream)s, %(subject)s, %(email)s, %(name)s, %(username)s,"
    " %(groups)s::jsonb, %(roles)s::jsonb, to_timestamp(%(now)s), to_timestamp(%(now)s),"
    " to_timestamp(%(login_at)s))"
    " ON CONFLICT (upstream, subject) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name,"
    " username = EXCLUDED.username, groups = EXCLUDED.groups, roles = EXCLUDED.roles,"
    " updated_at = EXCLUDED.updated_at, last_login_at = coalesce(EXCLUDED.last_login_at, u.last_login_at)"
    f" RETURNING {_USER_COLUMNS_U}"
)
_INSERT_SESSION = (
    "INSERT INTO sessions (token_hash, user_id, kind, created_at, expires_at, idle_timeout,"  # noqa: S608
    " last_seen_at, idle_expires_at, client_addr, user_agent, mfa) VALUES (%(token_hash)s, %(user_id)s,"
    " %(kind)s, to_timestamp(%(now)s), to_timestamp(%(expires_at)s), %(idle_timeout)s,"
    " to_timestamp(%(now)s), to_timestamp(%(idle_expires_at)s), %(client_addr)s, %(user_agent)s,"
    " %(mfa)s)"
    f" RETURNING {_SESSION_COLUMNS}"
)
_REVOKE_USER_SESSIONS = ("UPDATE sessions SET revoked_at = to_timestamp(%(now)s)"  # noqa: S608
                         f" WHERE user_id = %(user_id)s AND {_ACTIVE}")
_INSERT_LOGIN_ATTEMPT = (
    "INSERT INTO login_attempts (attempt_hash, upstream, state, nonce, code_verifier, return_to,"
    " client_addr, created_at, expires_at) VALUES (%(attempt_hash)s, %(upstream)s, %(state)s, %(nonce)s,"
    " %(code_verifier)s, %(return_to)s, %(client_addr)s, to_timestamp(%(now)s),"
    " to_timestamp(%(expires_at)s))"
)
# Row locks are taken in one DELETE; several consumers of one attempt queue on its lock and only the
# first finds the row.
_CONSUME_LOGIN_ATTEMPT = ("DELETE FROM login_attempts WHERE attempt_hash = %s"  # noqa: S608
                          f" RETURNING {_columns(LOGIN_ATTEMPT_FIELDS)}")
# SKIP LOCKED: replicas pruning at once (or racing a consume) never wait for, or deadlock on, each other.
_PRUNE_LOGIN_ATTEMPTS = (
    "DELETE FROM login_attempts WHERE attempt_hash IN (SELECT attempt_hash FROM login_attempts"
    " WHERE expires_at < to_timestamp(%(now)s) ORDER BY expires_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)
# One statement, so concurrent failures (any replica) are never lost: ON CONFLICT takes the row lock and
# re-reads the row. In DO UPDATE, ``f.`` is the row as it was; a window older than %(window)s restarts.
_RESTARTS = "f.window_started_at < to_timestamp(%(now)s - %(window)s)"
_COUNT_FAILURE = (
    "INSERT INTO login_failures AS f (client_addr, failures, window_started_at, locked_until)"  # noqa: S608
    " VALUES (%(addr)s, 1, to_timestamp(%(now)s),"
    " CASE WHEN 1 >= %(threshold)s THEN to_timestamp(%(now)s + %(lock_for)s) END)"
    " ON CONFLICT (client_addr) DO UPDATE SET"
    f" failures = CASE WHEN {_RESTARTS} THEN 1 ELSE f.failures + 1 END,"
    f" window_started_at = CASE WHEN {_RESTARTS} THEN to_timestamp(%(now)s) ELSE f.window_started_at END,"
    f" locked_until = CASE WHEN (CASE WHEN {_RESTARTS} THEN 1 ELSE f.failures + 1 END) >= %(threshold)s"
    " THEN greatest(f.locked_until, to_timestamp(%(now)s + %(lock_for)s)) ELSE f.locked_until END"
    " RETURNING f.failures, extract(epoch from f.locked_until)::float8"
)
# Counters whose window has passed and which hold no lock mean nothing any more: the next failure
# would restart them anyway.
_PRUNE_LOGIN_FAILURES = (
    "DELETE FROM login_failures WHERE client_addr IN (SELECT client_addr FROM login_failures"
    " WHERE window_started_at < to_timestamp(%(now)s - %(window)s)"
    " AND (locked_until IS NULL OR locked_until <= to_timestamp(%(now)s))"
    " ORDER BY window_started_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)


_INSERT_BLOCK = (
    "INSERT INTO blocked_subjects (upstream, subject, email, created_at, actor, reason) VALUES (%(upstream)s,"
    " %(subject)s, %(email)s, to_timestamp(%(now)s), %(actor)s, %(reason)s) ON CONFLICT DO NOTHING RETURNING 1"
)
_SELECT_BLOCKS = f"SELECT {_columns(BLOCK_FIELDS)} FROM blocked_subjects"  # noqa: S608
_IS_BLOCKED = (
    "SELECT EXISTS (SELECT 1 FROM blocked_subjects WHERE (upstream = %s AND subject = %s AND email = '')"
    " OR (upstream = '' AND subject = '' AND email = ANY(%s::text[])))"
)
# The rows of the users a block matches are locked first: a session being created for one of them
# (its foreign key check takes a share lock on the user row) then commits before the revocation runs,
# or waits for the block to commit, after which the sign-in sees the block.
_LOCK_USERS_BY_KEY = "SELECT id, upstream, subject FROM users WHERE upstream = %s AND subject = %s FOR UPDATE"
_LOCK_USERS_BY_EMAIL = ("SELECT id, upstream, subject FROM users WHERE lower(email) = lower(%s)"
                        " ORDER BY id FOR UPDATE")
# A device already recorded for another user is left alone (and RETURNING then gives no row).
_REMEMBER_DEVICE = (
    "INSERT INTO login_devices AS d (device_hash, user_id, created_at, expires_at) VALUES (%(hash)s,"
    " %(user_id)s, to_timestamp(%(now)s), to_timestamp(%(expires_at)s)) ON CONFLICT (device_hash)"
    " DO UPDATE SET expires_at = greatest(d.expires_at, EXCLUDED.expires_at) WHERE d.user_id = EXCLUDED.user_id"
    " RETURNING d.user_id"
)
_PRUNE_DEVICES = (
    "DELETE FROM login_devices WHERE device_hash IN (SELECT device_hash FROM login_devices"
    " WHERE expires_at <= to_timestamp(%(now)s) ORDER BY expires_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
)
_FIND_DEVICE = (f"SELECT {_columns(DEVICE_FIELDS)} FROM login_devices"  # noqa: S608
                " WHERE device_hash = %s AND expires_at > to_timestamp(%s)")


def url_secrets(database_url: str) -> tuple[str, ...]:
    """Every spelling of the password in ``database_url`` (raw, decoded, ``?password=``), to scrub."""
    found: set[str] = set()
    try:
        parts = urlsplit(database_url)
        if parts.password:
            found.update({parts.password, unquote(parts.password)})
        for value in parse_qs(parts.query).get("password", []):
            found.update({value, unquote(value)})
    except ValueError:
        pass
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


class PostgresStore:
    """The store on PostgreSQL, for several gateway replicas sharing one database.

    The pool is created by :meth:`open` without connecting; connections are made on demand, and a
    connection the server dropped is discarded, so the store recovers by itself when the database
    comes back. Every statement is bounded by ``database.query_timeout``. Session lookups that arrive
    together, or while the lookup slots are busy, are answered together (see :meth:`lookup_session`).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dsn = settings.database_url
        # the revocation feed may bypass a transaction-pooling PgBouncer, which drops NOTIFY
        self._feed_dsn = settings.database.feed_url or settings.database_url
        self._secrets = tuple(sorted({*url_secrets(settings.database_url), *url_secrets(self._feed_dsn)},
                                     key=len, reverse=True))
        # which host of a multi-host URL new connections go to (aiopg cannot fail over by itself)
        self._route = HostRoute(self._dsn)
        self._feed_route = self._route if self._feed_dsn == self._dsn else HostRoute(self._feed_dsn)
        self._pool: aiopg.Pool | None = None
        self._listeners: set[aiopg.Connection] = set()
        self._closed = False
        # FIFO admission to the pool: aiopg lets newcomers overtake callers already waiting, which
        # stretches the latency tail under load.
        self._gate = asyncio.Semaphore(settings.database.pool_max)
        db = settings.database
        self._retention = revocation_retention(settings)
        self._lookups = LookupLane(functools.partial(self._connect, "lookups"),
                                   concurrency=db.lookup_concurrency, query_timeout=db.query_timeout,
                                   query=_LOOKUP_SESSIONS, prepared=db.prepared_statements,
                                   decode=_active_sessions, secrets=self._secrets)

    @property
    def lookup_queries(self) -> int:
        """How many session lookup queries (point or batched, retries included) this store has sent."""
        return self._lookups.queries

    # -- connections -----------------------------------------------------------------------------

    async def _connect(self, role: str) -> aiopg.Connection:
        """A new connection outside the pool (``lookups``, or ``feed`` on ``database.feed_url`` when set);
        raises StoreUnavailable."""
        dsn, route = (self._feed_dsn, self._feed_route) if role == "feed" else (self._dsn, self._route)
        return await connect(dsn, role=role, connect_timeout=self._settings.database.connect_timeout,
                             secrets=self._secrets, route=route)

    async def open(self) -> None:
        """Create the pool and warm up ``database.pool_min`` connections if the database answers.

        Never raises for an unreachable database: calls raise StoreUnavailable until it is back.
        """
        if self._closed:
            raise StoreUnavailable("The session store is closed.")
        if self._pool is not None:
            return
        db = self._settings.database
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
        and every connection is closed. Never raises: it is the last thing a process does with the store.
        """
        self._closed = True
        for conn in list(self._listeners):
            await close_quietly(conn)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            try:
                async with asyncio.timeout(self._settings.database.query_timeout + 1):
                    await pool.wait_closed()
            except Exception:  # TimeoutError, or a connection that fails to close: close them all anyway
                pool.terminate()
                try:
                    await pool.wait_closed()
                except Exception as exc:
                    log.warning("session database pool did not close cleanly: %s", scrub(describe(exc), self._secrets))
        await self._lookups.close()

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
                                                 connect_timeout=self._settings.database.connect_timeout):
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
        async with conn.cursor(timeout=statement_timeout or self._settings.database.query_timeout) as cur:
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

    async def ping(self) -> None:
        """Return when the database answers ``SELECT 1``; raise StoreUnavailable otherwise."""
        async def work(cur: aiopg.Cursor) -> None:
            await cur.execute("SELECT 1")
            await cur.fetchone()

        await self._run(work, retry=True)

    # -- migrations ------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations in order, each with its version row in one transaction.

        Every step holds a transaction-scoped advisory lock, so replicas starting together apply each
        migration once; each re-reads what is applied after taking the lock.
        """
        scripts = migration_scripts("postgres")
        timeout = max(MIGRATION_TIMEOUT_FLOOR, self._settings.database.query_timeout)

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

    # -- users -----------------------------------------------------------------------------------

    async def upsert_user(self, upstream: str, subject: str, *, email: str, name: str = "",
                          username: str = "", groups: Sequence[str] = (), roles: Sequence[str] = (),
                          login_at: float | None = None) -> User:
        """Create or refresh the user keyed by ``(upstream, subject)`` in one atomic upsert.

        ``created_at`` keeps its first value; ``last_login_at`` changes only when ``login_at`` is given.
        """
        now = time.time()
        params = {"upstream": upstream, "subject": subject, "email": email.strip(), "name": name,
                  "username": username, "groups": encode_names(groups), "roles": encode_names(roles),
                  "now": now, "login_at": login_at}

        async def work(cur: aiopg.Cursor) -> User:
            await cur.execute(_UPSERT_USER, params)
            return user_from_row(await cur.fetchone())

        return await self._run(work)

    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or None."""
        async def work(cur: aiopg.Cursor) -> User | None:
            await cur.execute(_SELECT_USERS + " WHERE id = %s", (user_id,))
            row = await cur.fetchone()
            return None if row is None else user_from_row(row)

        return await self._run(work, retry=True)

    async def get_user_by_key(self, upstream: str, subject: str) -> User | None:
        """The user keyed by ``(upstream, subject)``, or None."""
        async def work(cur: aiopg.Cursor) -> User | None:
            await cur.execute(_SELECT_USERS + " WHERE upstream = %s AND subject = %s", (upstream, subject))
            row = await cur.fetchone()
            return None if row is None else user_from_row(row)

        return await self._run(work, retry=True)

    async def find_users_by_email(self, email: str) -> list[User]:
        """Users whose email equals ``email`` ignoring case and surrounding space, oldest first."""
        wanted = email.strip()
        if not wanted:
            return []
        return await self._users(_SELECT_USERS + " WHERE lower(email) = lower(%s) ORDER BY id", (wanted,))

    async def list_users(self) -> list[User]:
        """Every user, oldest first."""
        return await self._users(_SELECT_USERS + " ORDER BY id", ())

    async def _users(self, sql: str, params: tuple[Any, ...]) -> list[User]:
        async def work(cur: aiopg.Cursor) -> list[User]:
            await cur.execute(sql, params)
            return [user_from_row(row) for row in await cur.fetchall()]

        return await self._run(work, retry=True)

    async def delete_user(self, user_id: int, *, actor: str, block: bool = False, reason: str = "") -> bool:
        """Delete the user and (by cascade) their sessions and devices, audit and broadcast it; with
        ``block``, block their identity in the same transaction. False if unknown."""
        now = time.time()

        async def work(cur: aiopg.Cursor) -> bool:
            await cur.execute("SELECT upstream, subject FROM users WHERE id = %s FOR UPDATE", (user_id,))
            row = await cur.fetchone()
            if row is None:
                return False
            key = BlockKey.for_identity(str(row[0]), str(row[1]))
            if block:
                check_block_key(key, reason)
            user_key = str(key)
            await cur.execute(_COUNT_ACTIVE + " AND user_id = %(user_id)s", {"user_id": user_id, "now": now})
            active = int((await cur.fetchone())[0])
            if active:
                await _audit(cur, now, "revoke", user_id, user_key, actor,
                             {"reason": "user_delete", "sessions": str(active)})
            await cur.execute("DELETE FROM users WHERE id = %s", (user_id,))
            detail = {"sessions": str(active)} | ({"blocked": "true"} if block else {})
            await _audit(cur, now, "user_delete", user_id, user_key, actor, detail)
            if block and await _insert_block(cur, key, now, actor, reason):
                _, block_detail = block_audit(key, reason, active)
                await _audit(cur, now, "user_block", user_id, user_key, actor, block_detail)
            await log_revocations(cur, [Revocation(user_id=user_id)], keep=self._retention)
            return True

        return await self._run(work, transaction=True)

    # -- blocks ----------------------------------------------------------------------------------

    async def block_subject(self, key: BlockKey, *, actor: str, reason: str = "") -> BlockOutcome:
        """Lock the matched users, insert the block and revoke their active sessions in one transaction."""
        check_block_key(key, reason)
        now = time.time()

        async def work(cur: aiopg.Cursor) -> BlockOutcome:
            if key.is_email:
                await cur.execute(_LOCK_USERS_BY_EMAIL, (key.email,))
            else:
                await cur.execute(_LOCK_USERS_BY_KEY, (key.upstream, key.subject))
            matched = list(await cur.fetchall())
            created = await _insert_block(cur, key, now, actor, reason)
            revoked = 0
            for row in matched:
                user_id = int(row[0])
                await cur.execute(_REVOKE_USER_SESSIONS, {"now": now, "user_id": user_id})
                count = int(cur.rowcount)
                if count:
                    await _audit(cur, now, "revoke", user_id, f"{row[1]}:{row[2]}", actor,
                                 {"reason": "user_block", "sessions": str(count)})
                revoked += count
            if created:
                audited = int(matched[0][0]) if matched and not key.is_email else None
                user_key, detail = block_audit(key, reason, revoked)
                await _audit(cur, now, "user_block", audited, user_key, actor, detail)
            # Always: the users' cached sessions include bearer JWTs, which have no row to revoke.
            await log_revocations(cur, [Revocation(user_id=int(row[0])) for row in matched], keep=self._retention)
            return BlockOutcome(created, revoked)

        return await self._run(work, transaction=True)

    async def unblock_subject(self, key: BlockKey, *, actor: str) -> bool:
        """Delete the block and audit it in one transaction; False when there was none."""
        check_block_key(key)
        now = time.time()

        async def work(cur: aiopg.Cursor) -> bool:
            await cur.execute("DELETE FROM blocked_subjects WHERE upstream = %s AND subject = %s AND email = %s"
                              " RETURNING 1", (key.upstream, key.subject, key.email))
            if await cur.fetchone() is None:
                return False
            user_id = None
            if not key.is_email:
                await cur.execute("SELECT id FROM users WHERE upstream = %s AND subject = %s",
                                  (key.upstream, key.subject))
                row = await cur.fetchone()
                user_id = None if row is None else int(row[0])
            user_key, _ = block_audit(key, "", 0)
            await _audit(cur, now, "user_unblock", user_id, user_key, actor,
                         {"email": key.email} if key.is_email else {})
            return True

        return await self._run(work, transaction=True)

    async def is_blocked(self, upstream: str, subject: str, *, emails: Sequence[str] = ()) -> bool:
        """One indexed query over the identity key and the normalised emails."""
        params = (upstream, subject, block_emails(emails))

        async def work(cur: aiopg.Cursor) -> bool:
            await cur.execute(_IS_BLOCKED, params)
            return bool((await cur.fetchone())[0])

        return await self._run(work, retry=True)

    async def list_blocked_subjects(self) -> list[Block]:
        """Every block, oldest first."""
        async def work(cur: aiopg.Cursor) -> list[Block]:
            await cur.execute(_SELECT_BLOCKS + " ORDER BY created_at, upstream, subject, email")
            return [block_from_row(row) for row in await cur.fetchall()]

        return await self._run(work, retry=True)

    # -- sessions --------------------------------------------------------------------------------

    async def create_session(self, *, token_hash: str, user_id: int, kind: SessionKind, now: float,
                             expires_at: float, idle_timeout: float, client_addr: str = "",
                             user_agent: str = "", mfa: bool = False) -> SessionRecord:
        """Insert a new session and return it.

        Raises ValueError for a malformed hash, kind or idle timeout, or a hash already in use, and
        NotFound when the user does not exist (e.g. deleted meanwhile).
        """
        check_new_session(token_hash, kind, expires_at, idle_timeout)
        params = {"token_hash": token_hash, "user_id": user_id, "kind": kind, "now": now,
                  "expires_at": expires_at, "idle_timeout": idle_timeout,
                  "idle_expires_at": now + idle_timeout if idle_timeout > 0 else None,
                  "client_addr": client_addr, "user_agent": user_agent[:USER_AGENT_MAX], "mfa": bool(mfa)}

        async def work(cur: aiopg.Cursor) -> SessionRecord:
            await cur.execute(_INSERT_SESSION, params)
            return session_from_row(await cur.fetchone())

        try:
            return await self._run(work)
        except psycopg2.errors.ForeignKeyViolation:
            raise NotFound(f"No user with id {user_id}.") from None
        except psycopg2.errors.UniqueViolation:
            raise ValueError("a session with this token hash already exists") from None

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

    async def touch_session(self, token_hash: str, *, last_seen_at: float) -> None:
        """Move ``last_seen_at`` (never backwards) and the idle deadline with it.

        Revoked sessions, and sessions whose idle deadline has already passed, are left alone, so a
        late touch never brings a dead session back.
        """
        async def work(cur: aiopg.Cursor) -> None:
            await cur.execute(
                "UPDATE sessions SET last_seen_at = greatest(last_seen_at, to_timestamp(%(t)s)),"
                " idle_expires_at = CASE WHEN idle_timeout > 0 THEN greatest(last_seen_at,"
                " to_timestamp(%(t)s)) + idle_timeout * interval '1 second' END"
                " WHERE token_hash = %(h)s AND revoked_at IS NULL"
                " AND (idle_expires_at IS NULL OR idle_expires_at > to_timestamp(%(t)s))",
                {"t": last_seen_at, "h": token_hash})

        await self._run(work)

    async def touch_sessions(self, touches: Mapping[str, tuple[float, float]]) -> None:
        """Batched uses (``hash -> (first, last)``) in one statement (``unnest``); see the protocol."""
        if not touches:
            return
        hashes = list(touches)
        firsts = [touches[h][0] for h in hashes]
        times = [touches[h][1] for h in hashes]

        async def work(cur: aiopg.Cursor) -> None:
            await cur.execute(
                "UPDATE sessions s SET last_seen_at = greatest(s.last_seen_at, to_timestamp(t.ts)),"
                " idle_expires_at = CASE WHEN s.idle_timeout > 0 THEN greatest(s.last_seen_at,"
                " to_timestamp(t.ts)) + s.idle_timeout * interval '1 second' END"
                " FROM unnest(%s::text[], %s::float8[], %s::float8[]) AS t(h, first_ts, ts)"
                " WHERE s.token_hash = t.h AND s.revoked_at IS NULL"
                " AND (s.idle_expires_at IS NULL OR s.idle_expires_at > to_timestamp(t.first_ts))",
                (hashes, firsts, times))

        await self._run(work)

    async def revoke_session(self, token_hash: str, *, actor: str, reason: str) -> bool:
        """Revoke one session, audit and broadcast it; True only if it was not revoked before."""
        now = time.time()

        async def work(cur: aiopg.Cursor) -> bool:
            await cur.execute(
                "UPDATE sessions s SET revoked_at = to_timestamp(%s) FROM users u"
                " WHERE s.token_hash = %s AND s.revoked_at IS NULL AND u.id = s.user_id"
                " RETURNING s.user_id, u.upstream, u.subject", (now, token_hash))
            row = await cur.fetchone()
            if row is None:
                return False
            await _audit(cur, now, "revoke", int(row[0]), f"{row[1]}:{row[2]}", actor,
                         {"reason": reason, "session": token_hash[:12]})
            await log_revocations(cur, [Revocation(token_hash=token_hash)], keep=self._retention)
            return True

        return await self._run(work, transaction=True)

    async def revoke_user_sessions(self, user_id: int, *, actor: str, reason: str) -> int:
        """Revoke every active session of the user, audit and broadcast it; return how many."""
        now = time.time()

        async def work(cur: aiopg.Cursor) -> int:
            await cur.execute(_REVOKE_USER_SESSIONS, {"now": now, "user_id": user_id})
            count = int(cur.rowcount)
            await cur.execute("SELECT upstream || ':' || subject FROM users WHERE id = %s", (user_id,))
            row = await cur.fetchone()
            await _audit(cur, now, "revoke", user_id, "" if row is None else str(row[0]), actor,
                         {"reason": reason, "sessions": str(count)})
            await log_revocations(cur, [Revocation(user_id=user_id)], keep=self._retention)
            return count

        return await self._run(work, transaction=True)

    async def list_sessions(self, user_id: int, *, include_inactive: bool = False,
                            now: float | None = None) -> list[SessionRecord]:
        """The user's sessions, newest first; only those active at ``now`` unless ``include_inactive``."""
        params = {"user_id": user_id, "now": time.time() if now is None else now}
        sql = _SELECT_SESSIONS + " WHERE user_id = %(user_id)s"
        if not include_inactive:
            sql += " AND " + _ACTIVE
        sql += " ORDER BY created_at DESC, token_hash"

        async def work(cur: aiopg.Cursor) -> list[SessionRecord]:
            await cur.execute(sql, params)
            return [session_from_row(row) for row in await cur.fetchall()]

        return await self._run(work, retry=True)

    async def count_active_sessions(self, now: float) -> int:
        """How many sessions are neither revoked, expired nor idle-expired at ``now``."""
        async def work(cur: aiopg.Cursor) -> int:
            await cur.execute(_COUNT_ACTIVE, {"now": now})
            return int((await cur.fetchone())[0])

        return await self._run(work, retry=True)

    # -- login attempts and failures -------------------------------------------------------------

    async def create_login_attempt(self, *, attempt_hash: str, upstream: str, state: str, nonce: str,
                                   code_verifier: str, return_to: str, client_addr: str, now: float,
                                   expires_at: float) -> None:
        """Insert the attempt, first deleting up to :data:`PRUNE_BATCH` attempts expired before ``now``.

        Raises ValueError for a malformed hash or value, or a hash already in use.
        """
        fields = {"upstream": upstream, "state": state, "nonce": nonce, "code_verifier": code_verifier,
                  "return_to": return_to, "client_addr": client_addr}
        check_new_login_attempt(attempt_hash, fields, now, expires_at)
        params = {"attempt_hash": attempt_hash, "now": now, "expires_at": expires_at, **fields}

        async def work(cur: aiopg.Cursor) -> None:
            # two autocommit statements: the prune needs no atomicity with the insert
            await cur.execute(_PRUNE_LOGIN_ATTEMPTS, {"now": now, "batch": PRUNE_BATCH})
            await cur.execute(_INSERT_LOGIN_ATTEMPT, params)

        try:
            await self._run(work)
        except psycopg2.errors.UniqueViolation:
            raise ValueError("a login attempt with this hash already exists") from None

    async def consume_login_attempt(self, attempt_hash: str, *, now: float) -> LoginAttempt | None:
        """Delete the attempt and return it (one DELETE ... RETURNING); None if unknown or expired.

        Never retried on a lost connection: a retry could not tell "consumed by us" from "by another".
        """
        if not is_token_hash(attempt_hash):
            return None

        async def work(cur: aiopg.Cursor) -> LoginAttempt | None:
            await cur.execute(_CONSUME_LOGIN_ATTEMPT, (attempt_hash,))
            row = await cur.fetchone()
            return None if row is None else login_attempt_from_row(row)

        attempt = await self._run(work)
        return attempt if attempt is not None and now < attempt.expires_at else None

    async def record_login_failure(self, client_addr: str, *, now: float, window: float, threshold: int,
                                   lock_for: float) -> float | None:
        """Count the failure in one upsert; return the lock's end when the window's count reaches
        ``threshold``. Also deletes up to :data:`PRUNE_BATCH` counters that no longer mean anything.
        """
        check_login_failure(client_addr, now, window, threshold, lock_for)
        params = {"addr": client_addr, "now": now, "window": window, "threshold": threshold,
                  "lock_for": lock_for}

        async def work(cur: aiopg.Cursor) -> tuple[int, float | None]:
            await cur.execute(_COUNT_FAILURE, params)
            failures, locked = await cur.fetchone()
            await cur.execute(_PRUNE_LOGIN_FAILURES, {"now": now, "window": window, "batch": PRUNE_BATCH})
            return int(failures), None if locked is None else float(locked)

        failures, locked = await self._run(work)
        return locked if failures >= threshold else None

    async def locked_until(self, client_addr: str, *, now: float) -> float | None:
        """The end of the lock on ``client_addr`` if it is still locked at ``now``, else None."""
        if not is_client_addr(client_addr):
            return None

        async def work(cur: aiopg.Cursor) -> float | None:
            await cur.execute("SELECT extract(epoch from locked_until)::float8 FROM login_failures"
                              " WHERE client_addr = %s AND locked_until > to_timestamp(%s)", (client_addr, now))
            row = await cur.fetchone()
            return None if row is None else float(row[0])

        return await self._run(work, retry=True)

    async def clear_login_failures(self, client_addr: str) -> None:
        """Delete the address's failure counter and lock, if any."""
        if not is_client_addr(client_addr):
            return

        async def work(cur: aiopg.Cursor) -> None:
            await cur.execute("DELETE FROM login_failures WHERE client_addr = %s", (client_addr,))

        await self._run(work)

    # -- login devices ---------------------------------------------------------------------------

    async def remember_device(self, device_hash: str, *, user_id: int, now: float, expires_at: float) -> None:
        """Insert the device or extend it (same user only), first deleting up to :data:`PRUNE_BATCH`
        expired devices."""
        check_new_device(device_hash, now, expires_at)
        params = {"hash": device_hash, "user_id": user_id, "now": now, "expires_at": expires_at}

        async def work(cur: aiopg.Cursor) -> bool:
            # two autocommit statements: the prune needs no atomicity with the upsert
            await cur.execute(_PRUNE_DEVICES, {"now": now, "batch": PRUNE_BATCH})
            await cur.execute(_REMEMBER_DEVICE, params)
            return await cur.fetchone() is not None

        try:
            recorded = await self._run(work)
        except psycopg2.errors.ForeignKeyViolation:
            raise NotFound(f"No user with id {user_id}.") from None
        if not recorded:
            raise ValueError("this device is recorded for another user")

    async def find_device(self, device_hash: str, *, now: float) -> Device | None:
        """The live device with this hash, or None."""
        if not is_token_hash(device_hash):
            return None

        async def work(cur: aiopg.Cursor) -> Device | None:
            await cur.execute(_FIND_DEVICE, (device_hash, now))
            row = await cur.fetchone()
            return None if row is None else device_from_row(row)

        return await self._run(work, retry=True)

    # -- audit -----------------------------------------------------------------------------------

    async def record_audit(self, event: str, *, user_id: int | None, user_key: str = "", actor: str,
                           detail: Mapping[str, str] | None = None) -> None:
        """Append one audit row stamped with the current time."""
        now = time.time()

        async def work(cur: aiopg.Cursor) -> None:
            await _audit(cur, now, event, user_id, user_key, actor, detail)

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

    # -- revocation log and feed ------------------------------------------------------------------

    async def revocation_sequence(self) -> int:
        """The sequence number of the newest logged revocation; 0 when the log is empty."""
        async def work(cur: aiopg.Cursor) -> int:
            await cur.execute(SELECT_NEWEST)
            return int((await cur.fetchone())[0])

        return await self._run(work, retry=True)

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
        db = self._settings.database
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


async def _audit(cur: aiopg.Cursor, at: float, event: str, user_id: int | None, user_key: str, actor: str,
                 detail: Mapping[str, str] | None) -> None:
    await cur.execute(
        "INSERT INTO audit (at, event, user_id, user_key, actor, detail)"
        " VALUES (to_timestamp(%s), %s, %s, %s, %s, %s::jsonb)",
        (at, event, user_id, user_key, actor, encode_detail(detail)))


async def _insert_block(cur: aiopg.Cursor, key: BlockKey, now: float, actor: str, reason: str) -> bool:
    """Insert the block unless it exists; True when it is new."""
    await cur.execute(_INSERT_BLOCK, {"upstream": key.upstream, "subject": key.subject, "email": key.email,
                                      "now": now, "actor": actor, "reason": reason})
    return await cur.fetchone() is not None


async def _release(pool: aiopg.Pool, conn: aiopg.Connection) -> None:
    """Give ``conn`` back to the pool; a connection that cannot be given back is closed instead."""
    try:
        await pool.release(conn)
    except Exception:
        await close_quietly(conn)
