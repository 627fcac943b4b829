"""The PostgreSQL revocation feed: NOTIFY for speed, the sequenced revocation log for certainty.

Writers append every revocation to the ``revocations`` log, in the transaction that makes it, and
announce it with NOTIFY (:func:`log_revocations`). Each writer appends under one advisory lock, taken as
the transaction's last step, so sequence numbers become visible in the order they were drawn: a reader
that has seen number ``n`` will never see a smaller one appear later.

A watcher (:class:`RevocationFeed`) keeps one dedicated connection that LISTENs. It applies each
notification as it arrives, and reads the log past the last sequence number it saw (``seq > $last``)
right after every (re)connect and every :data:`CATCH_UP_EVERY` seconds, applying what it had not applied
yet. So a notification that never arrives (a listener killed, the gap while it reconnects, a server
restart) delays a revocation by at most a second; it is never lost. The periodic read doubles as the
liveness probe of the connection: a stalled connection is declared lost within two seconds.

Notifications are read by one pending ``get()`` that is never cancelled while the connection lives:
cancelling a read (as ``wait_for`` does on a timeout) can discard a notification it had already taken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import aiopg
import psycopg2

from gateway.errors import StoreUnavailable
from gateway.models import Revocation
from gateway.store.base import LoggedRevocation, RevocationHandler, WatchStateHandler
from gateway.store.checks import is_token_hash
from gateway.store.pgconn import close_quietly, describe, scrub, unavailable_errors
from gateway.store.revlog import REVOCATION_BATCH, REVOCATION_REPLAY
from gateway.store.rows import logged_revocation_from_row

log = logging.getLogger("gateway.store.postgres")

CHANNEL = "gateway_revocations"
"""The NOTIFY channel; payloads are ``s:<token_hash>`` (one session), ``u:<user_id>`` (a user's) or
:data:`EVERYTHING` (every session of everyone)."""

EVERYTHING = "*"
"""The NOTIFY payload of :attr:`Revocation.everything` (logged as a row with neither hash nor user)."""

LOG_LOCK_KEY = 0x6777726576
"""``pg_advisory_xact_lock`` key serialising appends to the revocation log ("gwrev" in ASCII)."""

PRUNE_BATCH = 100
"""Most expired log rows one revoking transaction deletes on the side."""

CATCH_UP_EVERY = 1.0
"""Seconds between reads of the revocation log while the feed is live (also the connection's probe)."""

CATCH_UP_TIMEOUT = 1.0
"""A read of the log that takes longer (or ``database.query_timeout``, if shorter) means the connection is lost."""

RECONNECT_BACKOFF = (0.1, 1.0)
"""First and longest pause between reconnection attempts of the listener (doubling in between)."""

ONCE_TTL = 60.0
"""Seconds a token hash applied by one path (notification or log) is remembered, so the other skips it."""

ONCE_MAX = 100_000
"""Most token hashes remembered per path; the oldest are forgotten first (the other path then applies
the revocation again, which is harmless)."""

_COLUMNS = "seq, extract(epoch from at)::float8, token_hash, user_id"
_APPEND = "INSERT INTO revocations (token_hash, user_id) VALUES (%s, %s)"
_NOTIFY = "SELECT pg_notify(%s, %s)"
_PRUNE = ("DELETE FROM revocations WHERE seq IN (SELECT seq FROM revocations"
          " WHERE at < clock_timestamp() - %(keep)s * interval '1 second' ORDER BY at LIMIT %(batch)s)")
SELECT_SINCE = f"SELECT {_COLUMNS} FROM revocations WHERE seq > %s ORDER BY seq LIMIT %s"  # noqa: S608
SELECT_NEWEST = "SELECT coalesce(max(seq), 0) FROM revocations"
_SELECT_START = "SELECT coalesce(max(seq), 0) FROM revocations WHERE at < to_timestamp(%s)"


def encode_revocation(revocation: Revocation) -> str:
    """The NOTIFY payload for a revocation: ``s:<token_hash>``, ``u:<user_id>`` or :data:`EVERYTHING`."""
    if revocation.token_hash is not None:
        return "s:" + revocation.token_hash
    if revocation.user_id is not None:
        return f"u:{revocation.user_id}"
    return EVERYTHING


def decode_revocation(payload: str) -> Revocation | None:
    """The revocation a NOTIFY payload announces; None for anything malformed."""
    if payload == EVERYTHING:
        return Revocation()
    kind, _, value = payload.partition(":")
    if kind == "s" and is_token_hash(value):
        return Revocation(token_hash=value)
    if kind == "u" and value.isdigit():
        return Revocation(user_id=int(value))
    return None


async def log_revocations(cur: aiopg.Cursor, revocations: Iterable[Revocation], *, keep: float) -> None:
    """Append ``revocations`` to the log and announce them: the last statements of a revoking transaction.

    The advisory lock is held until the transaction ends, so appends are numbered in commit order. Also
    deletes up to :data:`PRUNE_BATCH` rows older than ``keep`` seconds. NOTIFY is delivered to listeners
    when (and only if) the transaction commits, like the rows.
    """
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOG_LOCK_KEY,))
    for revocation in revocations:
        await cur.execute(_APPEND, (revocation.token_hash, revocation.user_id))
        await cur.execute(_NOTIFY, (CHANNEL, encode_revocation(revocation)))
    await cur.execute(_PRUNE, {"keep": keep, "batch": PRUNE_BATCH})


class _AppliedOnce:
    """Token hashes applied by one path (notification or log) and not yet seen on the other.

    A session is revoked at most once, so its hash arrives at most once on each path: the second arrival
    is skipped. Revocations of a whole user may repeat and are always applied (an eviction is idempotent).
    Forgetting a hash early only means applying it twice, never missing it.
    """

    def __init__(self) -> None:
        self._by_notify: dict[str, float] = {}
        self._by_log: dict[str, float] = {}

    def first(self, token_hash: str, *, from_log: bool, now: float) -> bool:
        """True when ``token_hash`` was not applied yet by the other path (and remember it for this one)."""
        mine, other = (self._by_log, self._by_notify) if from_log else (self._by_notify, self._by_log)
        if other.pop(token_hash, None) is not None:
            return False
        mine[token_hash] = now
        for seen in (mine, other):
            while seen and (len(seen) > ONCE_MAX or next(iter(seen.values())) < now - ONCE_TTL):
                del seen[next(iter(seen))]
        return True


class RevocationFeed:
    """One watch of the revocation feed (see the module docstring); :meth:`run` until cancelled."""

    def __init__(self, *, connect: Callable[[], Awaitable[aiopg.Connection]], listeners: set[aiopg.Connection],
                 closed: Callable[[], bool], query_timeout: float, secrets: Sequence[str],
                 on_revoke: RevocationHandler, on_state: WatchStateHandler) -> None:
        """``connect`` opens a connection (raising StoreUnavailable); ``listeners`` holds the connection in
        use, so that closing the store can close it; ``closed`` says whether the store was closed."""
        self._connect = connect
        self._listeners = listeners
        self._closed = closed
        self._catch_up_timeout = min(float(query_timeout), CATCH_UP_TIMEOUT)
        self._secrets = secrets
        self._on_revoke = on_revoke
        self._on_state = on_state
        self._since = time.time() - REVOCATION_REPLAY
        self.last_seq: int | None = None
        """The newest sequence number read from the log (None before the first read)."""
        self._once = _AppliedOnce()

    async def run(self) -> None:
        """Watch until cancelled or the store is closed; never raises but CancelledError."""
        first, longest = RECONNECT_BACKOFF
        backoff = first
        live: bool | None = None
        while not self._closed():
            conn: aiopg.Connection | None = None
            try:
                conn = await self._connect()
                self._listeners.add(conn)
                with unavailable_errors(self._secrets):
                    async with conn.cursor(timeout=self._catch_up_timeout) as cur:
                        await cur.execute(f"LISTEN {CHANNEL}")
                # Listening first: a revocation committed from now on is notified, one before is in the log.
                await self._catch_up(conn)
                if live is not True:
                    live = True
                    self._tell_state(True)
                backoff = first
                await self._pump(conn)
            except (StoreUnavailable, psycopg2.Error) as exc:
                # a driver error here is e.g. the log table missing while migrations are pending
                if not self._closed():
                    # warn once per outage; the retries after that are routine
                    message = exc.message if isinstance(exc, StoreUnavailable) else scrub(describe(exc), self._secrets)
                    log.log(logging.WARNING if live is not False else logging.DEBUG,
                            "revocation feed lost: %s", message)
            except Exception:
                log.exception("revocation feed failed; reconnecting")
            finally:
                if conn is not None:
                    self._listeners.discard(conn)
                    await close_quietly(conn)
            if self._closed():
                return
            if live is not False:
                live = False
                self._tell_state(False)
            await asyncio.sleep(backoff)
            backoff = min(longest, backoff * 2)

    async def _pump(self, conn: aiopg.Connection) -> None:
        """Apply notifications as they come and read the log every second, until the connection fails."""
        loop = asyncio.get_running_loop()
        due = loop.time() + CATCH_UP_EVERY
        reading: asyncio.Future[Any] | None = None
        try:
            while True:
                if reading is None:
                    reading = asyncio.ensure_future(conn.notifies.get())
                remaining = due - loop.time()
                if remaining > 0 and not reading.done():
                    # waits without cancelling the read: whatever it takes is applied below
                    await asyncio.wait((reading,), timeout=remaining)
                if reading.done():
                    done, reading = reading, None
                    with unavailable_errors(self._secrets):
                        notify = done.result()
                    self._notified(str(notify.payload))
                if loop.time() >= due:
                    await self._catch_up(conn)
                    due = loop.time() + CATCH_UP_EVERY
        finally:
            if reading is not None:
                if reading.done() and not reading.cancelled() and reading.exception() is None:
                    self._notified(str(reading.result().payload))
                reading.cancel()
                reading.add_done_callback(_retrieve)

    async def _catch_up(self, conn: aiopg.Connection) -> None:
        """Apply every logged revocation past :attr:`last_seq` (on the first read: since the watch began)."""
        with unavailable_errors(self._secrets):
            async with conn.cursor(timeout=self._catch_up_timeout) as cur:
                if self.last_seq is None:
                    await cur.execute(_SELECT_START, (self._since,))
                    self.last_seq = int((await cur.fetchone())[0])
                while True:
                    await cur.execute(SELECT_SINCE, (self.last_seq, REVOCATION_BATCH))
                    rows = await cur.fetchall()
                    for row in rows:
                        logged = logged_revocation_from_row(row)
                        self.last_seq = logged.seq
                        self._apply(logged.revocation, from_log=True)
                    if len(rows) < REVOCATION_BATCH:
                        return

    def _notified(self, payload: str) -> None:
        revocation = decode_revocation(payload)
        if revocation is None:
            log.warning("ignoring malformed revocation notification")
            return
        self._apply(revocation, from_log=False)

    def _apply(self, revocation: Revocation, *, from_log: bool) -> None:
        token_hash = revocation.token_hash
        if token_hash is not None and not self._once.first(token_hash, from_log=from_log, now=time.monotonic()):
            return
        try:
            self._on_revoke(revocation)
        except Exception:
            log.exception("revocation handler failed")

    def _tell_state(self, live: bool) -> None:
        try:
            self._on_state(live)
        except Exception:
            log.exception("revocation feed state handler failed")


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of an abandoned read as seen (no "exception was never retrieved" at exit)."""
    if not future.cancelled():
        future.exception()


async def read_log(cur: aiopg.Cursor, seq: int, limit: int) -> list[LoggedRevocation]:
    """The logged revocations after ``seq``, oldest first, at most ``limit`` (for :meth:`Store.revocations_since`)."""
    await cur.execute(SELECT_SINCE, (seq, max(0, limit)))
    return [logged_revocation_from_row(row) for row in await cur.fetchall()]
