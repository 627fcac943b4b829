"""``SQLiteStore``: the ``Store`` protocol on one aiosqlite connection (WAL), revocations fed by polling."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiosqlite

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
    REVOCATION_BATCH,
    REVOCATION_REPLAY,
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
    logged_revocation_from_row,
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

log = logging.getLogger(__name__)

PRUNE_EVERY = 60.0
"""Seconds between prunes of the revocation feed by one watcher."""

PRUNE_BATCH = 100
"""Most expired login attempts or stale failure counters one call deletes on the side."""

_USER_COLUMNS = ", ".join(USER_FIELDS)
_USER_COLUMNS_U = ", ".join("u." + c for c in USER_FIELDS)
_SESSION_COLUMNS = ", ".join(SESSION_FIELDS)
_SESSION_COLUMNS_S = ", ".join("s." + c for c in SESSION_FIELDS)
_AUDIT_COLUMNS = "id, at, event, user_id, user_key, actor, detail"
_ACTIVE = "revoked_at IS NULL AND expires_at > ? AND (idle_expires_at IS NULL OR idle_expires_at > ?)"

# Statements assembled from the constant column lists above (never from input: values are bound).
_SELECT_USERS = f"SELECT {_USER_COLUMNS} FROM users"  # noqa: S608
_SELECT_SESSIONS = f"SELECT {_SESSION_COLUMNS} FROM sessions"  # noqa: S608
_SELECT_AUDIT = f"SELECT {_AUDIT_COLUMNS} FROM audit"  # noqa: S608
_COUNT_ACTIVE = f"SELECT count(*) FROM sessions WHERE {_ACTIVE}"  # noqa: S608
_LOOKUP_SESSION = (f"SELECT {_SESSION_COLUMNS_S}, {_USER_COLUMNS_U} FROM sessions s"  # noqa: S608
                   " JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?")
_UPSERT_USER = (
    "INSERT INTO users (upstream, subject, email, name, username, groups, roles, created_at, updated_at,"  # noqa: S608
    " last_login_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (upstream, subject) DO UPDATE SET email = excluded.email, name = excluded.name,"
    " username = excluded.username, groups = excluded.groups, roles = excluded.roles,"
    " updated_at = excluded.updated_at, last_login_at = coalesce(excluded.last_login_at, users.last_login_at)"
    f" RETURNING {_USER_COLUMNS}"
)
_INSERT_SESSION = (f"INSERT INTO sessions ({_SESSION_COLUMNS})"  # noqa: S608
                   f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?) RETURNING {_SESSION_COLUMNS}")
_REVOKE_USER_SESSIONS = (f"UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND {_ACTIVE}"  # noqa: S608
                         " RETURNING token_hash")
_LOGIN_ATTEMPT_COLUMNS = ", ".join(LOGIN_ATTEMPT_FIELDS)
_INSERT_LOGIN_ATTEMPT = (f"INSERT INTO login_attempts ({_LOGIN_ATTEMPT_COLUMNS})"  # noqa: S608
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_CONSUME_LOGIN_ATTEMPT = ("DELETE FROM login_attempts WHERE attempt_hash = ?"  # noqa: S608
                          f" RETURNING {_LOGIN_ATTEMPT_COLUMNS}")
_PRUNE_LOGIN_ATTEMPTS = (
    "DELETE FROM login_attempts WHERE attempt_hash IN"
    " (SELECT attempt_hash FROM login_attempts WHERE expires_at < :now ORDER BY expires_at LIMIT :batch)"
)
# One statement, so concurrent failures (other connections, other processes) are never lost. In DO
# UPDATE, bare column names are the row as it was; a window older than :window restarts at :now.
_RESTARTS = "login_failures.window_started_at < :now - :window"
_COUNT_FAILURE = (
    "INSERT INTO login_failures (client_addr, failures, window_started_at, locked_until)"  # noqa: S608
    " VALUES (:addr, 1, :now, CASE WHEN 1 >= :threshold THEN :now + :lock_for END)"
    " ON CONFLICT (client_addr) DO UPDATE SET"
    f" failures = CASE WHEN {_RESTARTS} THEN 1 ELSE login_failures.failures + 1 END,"
    f" window_started_at = CASE WHEN {_RESTARTS} THEN :now ELSE login_failures.window_started_at END,"
    f" locked_until = CASE WHEN (CASE WHEN {_RESTARTS} THEN 1 ELSE login_failures.failures + 1 END)"
    " >= :threshold THEN max(coalesce(login_failures.locked_until, :now + :lock_for), :now + :lock_for)"
    " ELSE login_failures.locked_until END"
    " RETURNING failures, locked_until"
)
# Counters whose window has passed and which hold no lock mean nothing any more: the next failure
# would restart them anyway.
_PRUNE_LOGIN_FAILURES = (
    "DELETE FROM login_failures WHERE client_addr IN (SELECT client_addr FROM login_failures"
    " WHERE window_started_at < :now - :window AND (locked_until IS NULL OR locked_until <= :now)"
    " ORDER BY window_started_at LIMIT :batch)"
)
_INSERT_BLOCK = ("INSERT INTO blocked_subjects (upstream, subject, email, created_at, actor, reason)"
                 " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1")
_SELECT_BLOCKS = f"SELECT {', '.join(BLOCK_FIELDS)} FROM blocked_subjects"  # noqa: S608
_IS_BLOCKED = "SELECT 1 FROM blocked_subjects WHERE (upstream = ? AND subject = ? AND email = '')"
_DEVICE_COLUMNS = ", ".join(DEVICE_FIELDS)
# A device already recorded for another user is left alone (and RETURNING then gives no row).
_REMEMBER_DEVICE = (
    f"INSERT INTO login_devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?)"  # noqa: S608
    " ON CONFLICT (device_hash) DO UPDATE SET expires_at = max(login_devices.expires_at, excluded.expires_at)"
    " WHERE login_devices.user_id = excluded.user_id RETURNING user_id"
)
_PRUNE_DEVICES = (
    "DELETE FROM login_devices WHERE device_hash IN"
    " (SELECT device_hash FROM login_devices WHERE expires_at <= :now ORDER BY expires_at LIMIT :batch)"
)


def sqlite_path(database_url: str) -> str:
    """The file path in ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:``.

    Raises ValueError for any other shape.
    """
    prefix = "sqlite:///"
    if not database_url.lower().startswith(prefix) or len(database_url) == len(prefix):
        raise ValueError("database_url: SQLite URLs look like sqlite:///relative.db or sqlite:////abs/path.db")
    return database_url[len(prefix):]


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


class SQLiteStore:
    """The store on a local SQLite file, for single-host deployments and development.

    One connection serves every call (an asyncio lock keeps transactions from interleaving); several
    processes may share the file: WAL lets readers proceed during a write and ``busy_timeout`` makes
    writers queue instead of failing.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._path = sqlite_path(settings.database_url)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    # -- connection and transactions -------------------------------------------------------------

    async def _connect(self) -> aiosqlite.Connection:
        busy_ms = max(1, int(self._settings.database.query_timeout * 1000))
        conn = aiosqlite.connect(self._path, isolation_level=None,
                                 timeout=self._settings.database.query_timeout)
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

    # -- migrations ------------------------------------------------------------------------------

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

    # -- users -----------------------------------------------------------------------------------

    async def upsert_user(self, upstream: str, subject: str, *, email: str, name: str = "",
                          username: str = "", groups: Sequence[str] = (), roles: Sequence[str] = (),
                          login_at: float | None = None) -> User:
        """Create or refresh the user keyed by ``(upstream, subject)`` in one atomic upsert.

        ``created_at`` keeps its first value; ``last_login_at`` changes only when ``login_at`` is given.
        """
        now = time.time()
        async with self._use(write=True) as conn:
            rows = await conn.execute_fetchall(
                _UPSERT_USER,
                (upstream, subject, email.strip(), name, username, encode_names(groups), encode_names(roles),
                 now, now, login_at),
            )
        return user_from_row(_one(rows))

    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or None."""
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(_SELECT_USERS + " WHERE id = ?", (user_id,)))
        return user_from_row(rows[0]) if rows else None

    async def get_user_by_key(self, upstream: str, subject: str) -> User | None:
        """The user keyed by ``(upstream, subject)``, or None."""
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(_SELECT_USERS + " WHERE upstream = ? AND subject = ?",
                                                    (upstream, subject)))
        return user_from_row(rows[0]) if rows else None

    async def find_users_by_email(self, email: str) -> list[User]:
        """Users whose email equals ``email`` ignoring case and surrounding space, oldest first."""
        wanted = email.strip()
        if not wanted:
            return []
        async with self._use() as conn:
            rows = await conn.execute_fetchall(
                _SELECT_USERS + " WHERE lower(email) = lower(?) ORDER BY id", (wanted,))
        return [user_from_row(r) for r in rows]

    async def list_users(self) -> list[User]:
        """Every user, oldest first."""
        async with self._use() as conn:
            rows = await conn.execute_fetchall(_SELECT_USERS + " ORDER BY id")
        return [user_from_row(r) for r in rows]

    async def delete_user(self, user_id: int, *, actor: str, block: bool = False, reason: str = "") -> bool:
        """Delete the user and (by cascade) their sessions and devices, audit and broadcast it; with
        ``block``, block their identity in the same transaction. False if unknown."""
        now = time.time()
        async with self._use(write=True) as conn:
            found = list(await conn.execute_fetchall("SELECT upstream, subject FROM users WHERE id = ?",
                                                     (user_id,)))
            if not found:
                return False
            key = BlockKey.for_identity(str(found[0][0]), str(found[0][1]))
            if block:
                check_block_key(key, reason)
            user_key = str(key)
            active = _one(await conn.execute_fetchall(_COUNT_ACTIVE + " AND user_id = ?",
                                                      (now, now, user_id)))[0]
            if active:
                await self._audit(conn, now, "revoke", user_id, user_key, actor,
                                  {"reason": "user_delete", "sessions": str(active)})
            await conn.execute("DELETE FROM users WHERE id = ?", (user_id,))
            detail = {"sessions": str(active)} | ({"blocked": "true"} if block else {})
            await self._audit(conn, now, "user_delete", user_id, user_key, actor, detail)
            if block and await self._insert_block(conn, key, now, actor, reason):
                _, block_detail = block_audit(key, reason, int(active))
                await self._audit(conn, now, "user_block", user_id, user_key, actor, block_detail)
            await self._broadcast(conn, now, Revocation(user_id=user_id))
        return True

    # -- blocks ----------------------------------------------------------------------------------

    async def block_subject(self, key: BlockKey, *, actor: str, reason: str = "") -> BlockOutcome:
        """Insert the block and revoke every matched user's active sessions in one IMMEDIATE transaction."""
        check_block_key(key, reason)
        now = time.time()
        async with self._use(write=True) as conn:
            created = await self._insert_block(conn, key, now, actor, reason)
            if key.is_email:
                matched = await conn.execute_fetchall(
                    "SELECT id, upstream, subject FROM users WHERE lower(email) = lower(?) ORDER BY id",
                    (key.email,))
            else:
                matched = await conn.execute_fetchall(
                    "SELECT id, upstream, subject FROM users WHERE upstream = ? AND subject = ?",
                    (key.upstream, key.subject))
            user_ids = [int(row[0]) for row in matched]
            revoked = 0
            for row in matched:
                user_id = int(row[0])
                count = len(list(await conn.execute_fetchall(_REVOKE_USER_SESSIONS, (now, user_id, now, now))))
                if count:
                    await self._audit(conn, now, "revoke", user_id, f"{row[1]}:{row[2]}", actor,
                                      {"reason": "user_block", "sessions": str(count)})
                # Always: the user's cached sessions include bearer JWTs, which have no row to revoke.
                await self._broadcast(conn, now, Revocation(user_id=user_id))
                revoked += count
            if created:
                audited = user_ids[0] if user_ids and not key.is_email else None
                user_key, detail = block_audit(key, reason, revoked)
                await self._audit(conn, now, "user_block", audited, user_key, actor, detail)
        return BlockOutcome(created, revoked)

    async def unblock_subject(self, key: BlockKey, *, actor: str) -> bool:
        """Delete the block and audit it; False when there was none."""
        check_block_key(key)
        now = time.time()
        async with self._use(write=True) as conn:
            deleted = list(await conn.execute_fetchall(
                "DELETE FROM blocked_subjects WHERE upstream = ? AND subject = ? AND email = ? RETURNING 1",
                (key.upstream, key.subject, key.email)))
            if not deleted:
                return False
            user_id = None
            if not key.is_email:
                found = list(await conn.execute_fetchall(
                    "SELECT id FROM users WHERE upstream = ? AND subject = ?", (key.upstream, key.subject)))
                user_id = int(found[0][0]) if found else None
            user_key, _ = block_audit(key, "", 0)
            await self._audit(conn, now, "user_unblock", user_id, user_key, actor,
                              {"email": key.email} if key.is_email else {})
        return True

    async def is_blocked(self, upstream: str, subject: str, *, emails: Sequence[str] = ()) -> bool:
        """One indexed query over the identity key and the normalised emails."""
        wanted = block_emails(emails)
        sql = _IS_BLOCKED
        if wanted:
            sql += f" OR (upstream = '' AND subject = '' AND email IN ({', '.join('?' * len(wanted))}))"
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(sql + " LIMIT 1", (upstream, subject, *wanted)))
        return bool(rows)

    async def list_blocked_subjects(self) -> list[Block]:
        """Every block, oldest first."""
        async with self._use() as conn:
            rows = await conn.execute_fetchall(_SELECT_BLOCKS + " ORDER BY created_at, upstream, subject, email")
        return [block_from_row(r) for r in rows]

    @staticmethod
    async def _insert_block(conn: aiosqlite.Connection, key: BlockKey, now: float, actor: str,
                            reason: str) -> bool:
        """Insert the block unless it exists; True when it is new."""
        rows = await conn.execute_fetchall(_INSERT_BLOCK, (key.upstream, key.subject, key.email, now, actor,
                                                           reason))
        return bool(list(rows))

    # -- sessions --------------------------------------------------------------------------------

    async def create_session(self, *, token_hash: str, user_id: int, kind: SessionKind, now: float,
                             expires_at: float, idle_timeout: float, client_addr: str = "",
                             user_agent: str = "", mfa: bool = False) -> SessionRecord:
        """Insert a new session and return it.

        Raises ValueError for a malformed hash, kind or idle timeout, or a hash already in use, and
        NotFound when the user does not exist (e.g. deleted meanwhile).
        """
        check_new_session(token_hash, kind, expires_at, idle_timeout)
        idle_expires_at = now + idle_timeout if idle_timeout > 0 else None
        try:
            async with self._use(write=True) as conn:
                rows = await conn.execute_fetchall(
                    _INSERT_SESSION,
                    (token_hash, user_id, kind, now, expires_at, idle_timeout, now, idle_expires_at,
                     client_addr, user_agent[:USER_AGENT_MAX], bool(mfa)),
                )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"No user with id {user_id}.") from None
            raise ValueError("a session with this token hash already exists") from None
        return session_from_row(_one(rows))

    async def lookup_session(self, token_hash: str) -> ActiveSession | None:
        """The session and its user in one primary-key join, whatever its state; None when unknown."""
        if not is_token_hash(token_hash):
            return None
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(_LOOKUP_SESSION, (token_hash,)))
        if not rows:
            return None
        return active_session_from_row(tuple(rows[0]))

    async def touch_session(self, token_hash: str, *, last_seen_at: float) -> None:
        """Move ``last_seen_at`` (never backwards) and the idle deadline with it.

        Revoked sessions, and sessions whose idle deadline has already passed, are left alone, so a
        late touch never brings a dead session back.
        """
        async with self._use(write=True) as conn:
            await conn.execute(
                "UPDATE sessions SET last_seen_at = max(last_seen_at, ?),"
                " idle_expires_at = CASE WHEN idle_timeout > 0 THEN max(last_seen_at, ?) + idle_timeout END"
                " WHERE token_hash = ? AND revoked_at IS NULL"
                " AND (idle_expires_at IS NULL OR idle_expires_at > ?)",
                (last_seen_at, last_seen_at, token_hash, last_seen_at),
            )

    async def touch_sessions(self, touches: Mapping[str, tuple[float, float]]) -> None:
        """Batched uses (``hash -> (first, last)``) in one transaction; see the protocol."""
        if not touches:
            return
        async with self._use(write=True) as conn:
            await conn.executemany(
                "UPDATE sessions SET last_seen_at = max(last_seen_at, ?),"
                " idle_expires_at = CASE WHEN idle_timeout > 0 THEN max(last_seen_at, ?) + idle_timeout END"
                " WHERE token_hash = ? AND revoked_at IS NULL"
                " AND (idle_expires_at IS NULL OR idle_expires_at > ?)",
                [(last, last, h, first) for h, (first, last) in touches.items()],
            )

    async def revoke_session(self, token_hash: str, *, actor: str, reason: str) -> bool:
        """Revoke one session, audit and broadcast it; True only if it was not revoked before."""
        now = time.time()
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(
                "UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL"
                " RETURNING user_id", (now, token_hash)))
            if not rows:
                return False
            user_id = int(rows[0][0])
            await self._audit(conn, now, "revoke", user_id, await self._user_key(conn, user_id), actor,
                              {"reason": reason, "session": token_hash[:12]})
            await self._broadcast(conn, now, Revocation(token_hash=token_hash))
        return True

    async def revoke_user_sessions(self, user_id: int, *, actor: str, reason: str) -> int:
        """Revoke every active session of the user, audit and broadcast it; return how many."""
        now = time.time()
        async with self._use(write=True) as conn:
            rows = await conn.execute_fetchall(_REVOKE_USER_SESSIONS, (now, user_id, now, now))
            count = len(list(rows))
            await self._audit(conn, now, "revoke", user_id, await self._user_key(conn, user_id), actor,
                              {"reason": reason, "sessions": str(count)})
            await self._broadcast(conn, now, Revocation(user_id=user_id))
        return count

    async def list_sessions(self, user_id: int, *, include_inactive: bool = False,
                            now: float | None = None) -> list[SessionRecord]:
        """The user's sessions, newest first; only those active at ``now`` unless ``include_inactive``."""
        at = time.time() if now is None else now
        sql = _SELECT_SESSIONS + " WHERE user_id = ?"
        params: tuple[Any, ...] = (user_id,)
        if not include_inactive:
            sql += " AND " + _ACTIVE
            params += (at, at)
        async with self._use() as conn:
            rows = await conn.execute_fetchall(sql + " ORDER BY created_at DESC, token_hash", params)
        return [session_from_row(r) for r in rows]

    async def count_active_sessions(self, now: float) -> int:
        """How many sessions are neither revoked, expired nor idle-expired at ``now``."""
        async with self._use() as conn:
            rows = await conn.execute_fetchall(_COUNT_ACTIVE, (now, now))
        return int(_one(rows)[0])

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
        try:
            async with self._use(write=True) as conn:
                await conn.execute(_PRUNE_LOGIN_ATTEMPTS, {"now": now, "batch": PRUNE_BATCH})
                await conn.execute(_INSERT_LOGIN_ATTEMPT,
                                   (attempt_hash, upstream, state, nonce, code_verifier, return_to,
                                    client_addr, now, expires_at))
        except sqlite3.IntegrityError:
            raise ValueError("a login attempt with this hash already exists") from None

    async def consume_login_attempt(self, attempt_hash: str, *, now: float) -> LoginAttempt | None:
        """Delete the attempt and return it (one DELETE ... RETURNING); None if unknown or expired."""
        if not is_token_hash(attempt_hash):
            return None
        async with self._use(write=True) as conn:
            rows = list(await conn.execute_fetchall(_CONSUME_LOGIN_ATTEMPT, (attempt_hash,)))
        if not rows:
            return None
        attempt = login_attempt_from_row(rows[0])
        return attempt if now < attempt.expires_at else None

    async def record_login_failure(self, client_addr: str, *, now: float, window: float, threshold: int,
                                   lock_for: float) -> float | None:
        """Count the failure in one upsert; return the lock's end when the window's count reaches
        ``threshold``. Also deletes up to :data:`PRUNE_BATCH` counters that no longer mean anything.
        """
        check_login_failure(client_addr, now, window, threshold, lock_for)
        params = {"addr": client_addr, "now": now, "window": window, "threshold": threshold,
                  "lock_for": lock_for}
        async with self._use(write=True) as conn:
            failures, locked = _one(await conn.execute_fetchall(_COUNT_FAILURE, params))
            await conn.execute(_PRUNE_LOGIN_FAILURES, {"now": now, "window": window, "batch": PRUNE_BATCH})
        return float(locked) if int(failures) >= threshold and locked is not None else None

    async def locked_until(self, client_addr: str, *, now: float) -> float | None:
        """The end of the lock on ``client_addr`` if it is still locked at ``now``, else None."""
        if not is_client_addr(client_addr):
            return None
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(
                "SELECT locked_until FROM login_failures WHERE client_addr = ? AND locked_until > ?",
                (client_addr, now)))
        return float(rows[0][0]) if rows else None

    async def clear_login_failures(self, client_addr: str) -> None:
        """Delete the address's failure counter and lock, if any."""
        if not is_client_addr(client_addr):
            return
        async with self._use(write=True) as conn:
            await conn.execute("DELETE FROM login_failures WHERE client_addr = ?", (client_addr,))

    # -- login devices ---------------------------------------------------------------------------

    async def remember_device(self, device_hash: str, *, user_id: int, now: float, expires_at: float) -> None:
        """Insert the device or extend it (same user only), first deleting up to :data:`PRUNE_BATCH`
        expired devices."""
        check_new_device(device_hash, now, expires_at)
        try:
            async with self._use(write=True) as conn:
                await conn.execute(_PRUNE_DEVICES, {"now": now, "batch": PRUNE_BATCH})
                rows = list(await conn.execute_fetchall(_REMEMBER_DEVICE, (device_hash, user_id, now, expires_at)))
                if not rows:
                    raise ValueError("this device is recorded for another user")
        except sqlite3.IntegrityError:
            raise NotFound(f"No user with id {user_id}.") from None

    async def find_device(self, device_hash: str, *, now: float) -> Device | None:
        """The live device with this hash, or None."""
        if not is_token_hash(device_hash):
            return None
        async with self._use() as conn:
            rows = list(await conn.execute_fetchall(
                f"SELECT {_DEVICE_COLUMNS} FROM login_devices WHERE device_hash = ? AND expires_at > ?",  # noqa: S608
                (device_hash, now)))
        return device_from_row(rows[0]) if rows else None

    # -- audit -----------------------------------------------------------------------------------

    async def record_audit(self, event: str, *, user_id: int | None, user_key: str = "", actor: str,
                           detail: Mapping[str, str] | None = None) -> None:
        """Append one audit row stamped with the current time."""
        async with self._use(write=True) as conn:
            await self._audit(conn, time.time(), event, user_id, user_key, actor, detail)

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

    @staticmethod
    async def _audit(conn: aiosqlite.Connection, at: float, event: str, user_id: int | None, user_key: str,
                     actor: str, detail: Mapping[str, str] | None) -> None:
        await conn.execute(
            "INSERT INTO audit (at, event, user_id, user_key, actor, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (at, event, user_id, user_key, actor, encode_detail(detail)))

    @staticmethod
    async def _user_key(conn: aiosqlite.Connection, user_id: int) -> str:
        rows = list(await conn.execute_fetchall("SELECT upstream, subject FROM users WHERE id = ?",
                                                (user_id,)))
        return f"{rows[0][0]}:{rows[0][1]}" if rows else ""

    # -- revocation feed -------------------------------------------------------------------------

    @staticmethod
    async def _broadcast(conn: aiosqlite.Connection, at: float, revocation: Revocation) -> None:
        await conn.execute("INSERT INTO revocations (token_hash, user_id, at) VALUES (?, ?, ?)",
                           (revocation.token_hash, revocation.user_id, at))

    async def revocation_sequence(self) -> int:
        """The id of the newest row of the ``revocations`` log; 0 when it is empty."""
        async with self._use() as conn:
            return int(_one(await conn.execute_fetchall("SELECT coalesce(max(id), 0) FROM revocations"))[0])

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
        interval = max(0.01, float(self._settings.database.sqlite_poll_interval))
        since = time.time() - REVOCATION_REPLAY
        last_id: int | None = None
        live: bool | None = None
        next_prune = time.monotonic() + PRUNE_EVERY
        while not self._closed:
            try:
                rows: list[LoggedRevocation] = []
                if last_id is None:
                    async with self._use() as conn:
                        last_id = int(_one(await conn.execute_fetchall(
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
            await self.prune_revocations(before=time.time() - revocation_retention(self._settings))
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


def _one(rows: Iterable[Any]) -> Sequence[Any]:
    for row in rows:
        return tuple(row)
    raise RuntimeError("query returned no row")


def _describe(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
