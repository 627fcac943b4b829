"""Batched session lookups of ``PostgresStore``: under load, many lookups share few queries."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiopg
import pytest

from gateway.errors import StoreUnavailable
from gateway.models import ActiveSession
from gateway.store.pglookups import LOOKUP_BATCH_MAX
from gateway.store.postgres import PostgresStore
from tests.helpers import PostgresCluster, make_settings

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000.0

StoreFactory = Callable[..., Awaitable[PostgresStore]]


def token_hash(label: str) -> str:
    """A distinct, well-formed session key per label."""
    return hashlib.sha256(label.encode()).hexdigest()


@pytest.fixture(params=[True, False], ids=["prepared", "plain"])
def prepared(request: pytest.FixtureRequest) -> bool:
    """Run each test with server-side prepared statements and with plain statements."""
    return bool(request.param)


@pytest.fixture
async def open_store(postgres_url: str, prepared: bool) -> AsyncIterator[StoreFactory]:
    """Open migrated stores on the test's database; after the test, close them and make sure no
    future or task was left with an exception nobody retrieved (asyncio only logs those)."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    stores: list[PostgresStore] = []

    async def factory(url: str | None = None, **overrides: Any) -> PostgresStore:
        settings = make_settings({"database_url": url or postgres_url,
                                  "database.prepared_statements": prepared, **overrides})
        store = PostgresStore(settings.database_url, settings.database, revocation_retention=600.0)
        stores.append(store)
        await store.open()
        if url is None:
            await store.migrate()
        return store

    try:
        yield factory
        for store in stores:
            await store.close()
        gc.collect()
        await asyncio.sleep(0)
        assert unhandled == []
    finally:
        loop.set_exception_handler(None)


async def add_sessions(store: PostgresStore, labels: Iterable[str]) -> dict[str, int]:
    """Create one session per label (one user each); their token hashes with the owner's id."""
    made: dict[str, int] = {}
    for label in labels:
        user = await store.upsert_user("oidc", label, email=f"{label}@example.com")
        h = token_hash(label)
        await store.create_session(token_hash=h, user_id=user.id, kind="browser", now=NOW,
                                   expires_at=NOW + 3600, idle_timeout=0)
        made[h] = user.id
    return made


def check_answers(hashes: list[str], results: list[ActiveSession | None], known: dict[str, int]) -> None:
    """Each lookup got the session of its own hash (with its owner), or None for an unknown hash."""
    for h, found in zip(hashes, results, strict=True):
        if h in known:
            assert found is not None, h
            assert found.session.token_hash == h
            assert found.user.id == known[h] == found.session.user_id
        else:
            assert found is None, h


async def lock_tables(url: str, *tables: str) -> aiopg.Connection:
    """A connection holding ACCESS EXCLUSIVE locks on ``tables`` until it rolls back."""
    conn = await aiopg.connect(url)
    async with conn.cursor() as cur:
        await cur.execute("BEGIN")
        await cur.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE")
    return conn


async def unlock(conn: aiopg.Connection) -> None:
    async with conn.cursor() as cur:
        await cur.execute("ROLLBACK")
    await conn.close()


async def queries_waiting_for_a_lock(url: str) -> int:
    """How many other backends of the database wait for a lock now."""
    async with aiopg.connect(url) as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                          " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
        return int((await cur.fetchone())[0])


async def until_a_query_waits_for_a_lock(url: str, timeout: float = 5.0, count: int = 1) -> None:
    """Return once ``count`` other backends of the database wait for a lock."""
    deadline = time.monotonic() + timeout
    while True:
        if await queries_waiting_for_a_lock(url) >= count:
            return
        assert time.monotonic() < deadline, "no query waits for a lock"
        await asyncio.sleep(0.01)


# -- answers and round trips -------------------------------------------------------------------------


async def test_many_concurrent_lookups_share_few_queries(open_store: StoreFactory) -> None:
    store = await open_store(**{"database.pool_max": 2})
    known = await add_sessions(store, (f"user{i}" for i in range(20)))
    unknown = [token_hash(f"nobody{i}") for i in range(300)]
    hashes = [*known, *known, *known, *unknown, *unknown[:100], *[next(iter(known))] * 40]
    random.Random(7).shuffle(hashes)
    assert len(hashes) == 500
    before = store.lookup_queries

    results = await asyncio.gather(*(store.lookup_session(h) for h in hashes))

    check_answers(hashes, results, known)
    # lookups made in one turn of the event loop all queue: one query per LOOKUP_BATCH_MAX distinct hashes
    distinct = len(set(hashes))
    assert store.lookup_queries - before == math.ceil(distinct / LOOKUP_BATCH_MAX)


async def test_a_batch_asks_for_at_most_the_cap_of_hashes(open_store: StoreFactory) -> None:
    store = await open_store(**{"database.pool_max": 1})
    known = await add_sessions(store, ["first", "last"])
    queued = [token_hash(f"nobody{i}") for i in range(2 * LOOKUP_BATCH_MAX + 10)]
    hashes = [token_hash("first"), *queued, token_hash("last")]
    before = store.lookup_queries

    results = await asyncio.gather(*(store.lookup_session(h) for h in hashes))

    check_answers(hashes, results, known)
    # the queued hashes in batches of the cap
    assert store.lookup_queries - before == math.ceil(len(hashes) / LOOKUP_BATCH_MAX)


async def test_duplicate_and_malformed_hashes_in_one_batch(open_store: StoreFactory) -> None:
    store = await open_store(**{"database.pool_max": 1})
    known = await add_sessions(store, ["ada"])
    ada = token_hash("ada")
    hashes = [token_hash("busy"), ada, ada, token_hash("ghost"), ada, token_hash("ghost")]
    before = store.lookup_queries

    results = await asyncio.gather(*(store.lookup_session(h) for h in hashes),
                                   store.lookup_session("not-a-hash"), store.lookup_session(ada.upper()))

    check_answers(hashes, list(results[:-2]), known)
    assert results[-2:] == [None, None]  # never sent to the database
    assert store.lookup_queries - before == 1  # one batch for everything queued


async def test_at_low_load_a_lookup_is_one_query_at_once(open_store: StoreFactory, postgres_url: str) -> None:
    store = await open_store(**{"database.pool_max": 3, "database.lookup_concurrency": 3})
    known = await add_sessions(store, ["ada", "bob", "cy"])
    hashes = list(known)
    for h in [*hashes, token_hash("ghost")]:
        before = store.lookup_queries
        check_answers([h], [await store.lookup_session(h)], known)
        assert store.lookup_queries == before + 1

    # a lookup made while another is in flight takes a free slot at once: it does not wait behind it
    lock = await lock_tables(postgres_url, "sessions")
    try:
        first = asyncio.ensure_future(store.lookup_session(hashes[0]))
        await until_a_query_waits_for_a_lock(postgres_url)
        second = asyncio.ensure_future(store.lookup_session(hashes[1]))
        await until_a_query_waits_for_a_lock(postgres_url, count=2)
    finally:
        await unlock(lock)
    check_answers(hashes[:2], [await first, await second], known)


async def test_lookups_beyond_lookup_concurrency_queue_even_with_connections_free(
        open_store: StoreFactory, postgres_url: str) -> None:
    store = await open_store(**{"database.pool_max": 10, "database.lookup_concurrency": 1})
    known = await add_sessions(store, ["ada", "bob", "cy", "dee"])
    hashes = [*known, token_hash("ghost")] * 8
    before = store.lookup_queries
    lock = await lock_tables(postgres_url, "sessions")
    try:
        first = asyncio.ensure_future(store.lookup_session(hashes[0]))
        await until_a_query_waits_for_a_lock(postgres_url)
        rest = [asyncio.ensure_future(store.lookup_session(h)) for h in hashes[1:]]
        await asyncio.sleep(0.1)
        assert await queries_waiting_for_a_lock(postgres_url) == 1  # the others wait for the one slot
    finally:
        await unlock(lock)
    check_answers(hashes, list(await asyncio.gather(first, *rest)), known)
    assert store.lookup_queries - before == 2  # the first lookup alone, then everyone who queued behind it


# -- failures ------------------------------------------------------------------------------------------


async def test_every_waiter_gets_store_unavailable_when_the_database_is_down(
        open_store: StoreFactory, postgres_cluster: PostgresCluster) -> None:
    store = await open_store(**{"database.pool_max": 2, "database.pool_min": 2,
                                "database.connect_timeout": 1})
    known = await add_sessions(store, ["ada"])
    hashes = [token_hash(f"h{i % 30}") for i in range(100)]
    await asyncio.to_thread(postgres_cluster.stop)
    try:
        results = await asyncio.gather(*(store.lookup_session(h) for h in hashes), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results), results
    finally:
        await asyncio.to_thread(postgres_cluster.start)
    # the store recovers by itself
    ada = next(iter(known))
    results = await asyncio.gather(*(store.lookup_session(h) for h in [ada] * 10))
    check_answers([ada] * 10, list(results), known)


async def test_every_waiter_gets_store_unavailable_from_a_closed_port(open_store: StoreFactory,
                                                                      postgres_url: str) -> None:
    unreachable = postgres_url.replace(postgres_url.split("@")[1].split("/")[0], "127.0.0.1:1")
    store = await open_store(unreachable, **{"database.pool_max": 2})
    results = await asyncio.gather(*(store.lookup_session(token_hash(f"h{i}")) for i in range(50)),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results


async def test_close_answers_queued_lookups(open_store: StoreFactory, postgres_url: str) -> None:
    store = await open_store(**{"database.lookup_concurrency": 1})
    locker = await lock_tables(postgres_url, "sessions")
    try:
        first = asyncio.ensure_future(store.lookup_session(token_hash("h0")))  # holds the only lookup slot
        await until_a_query_waits_for_a_lock(postgres_url)
        lookups = [asyncio.ensure_future(store.lookup_session(token_hash(f"h{i}"))) for i in range(1, 20)]
        await asyncio.sleep(0)
        closing = asyncio.create_task(store.close())
        await asyncio.sleep(0.05)
    finally:
        await unlock(locker)
    await asyncio.wait_for(closing, timeout=5)
    assert await first is None  # the query in flight was answered
    results = await asyncio.gather(*lookups, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    with pytest.raises(StoreUnavailable):
        await store.lookup_session(token_hash("late"))


# -- cancellation ----------------------------------------------------------------------------------------


async def test_cancelled_waiters_leave_the_batch_to_the_others(open_store: StoreFactory,
                                                                postgres_url: str) -> None:
    store = await open_store()
    known = await add_sessions(store, (f"user{i}" for i in range(10)))
    hashes = [*known, *known, *(token_hash(f"nobody{i}") for i in range(40))]
    lookup_lock = await lock_tables(postgres_url, "sessions")
    try:
        # made in one turn of the event loop: every lookup queues for one batch, which leaves next turn
        lookups = [asyncio.ensure_future(store.lookup_session(h)) for h in hashes]
        for task in lookups[::5]:  # cancelled while queued
            task.cancel()
        # the batch query now waits for the lock on sessions
        await until_a_query_waits_for_a_lock(postgres_url)
        for task in lookups[1::5]:  # cancelled while their batch is in flight
            task.cancel()
        await asyncio.sleep(0.05)
    finally:
        await unlock(lookup_lock)
    results = await asyncio.gather(*lookups, return_exceptions=True)

    kept_hashes: list[str] = []
    kept_results: list[ActiveSession | None] = []
    for i, (h, result) in enumerate(zip(hashes, results, strict=True)):
        if i % 5 in (0, 1):
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert not isinstance(result, BaseException)
            kept_hashes.append(h)
            kept_results.append(result)
    check_answers(kept_hashes, kept_results, known)
    assert store.lookup_queries == 1  # one batch for everyone


async def test_cancelled_waiters_of_a_failing_batch_leave_no_unretrieved_error(
        open_store: StoreFactory, postgres_url: str) -> None:
    store = await open_store(**{"database.lookup_concurrency": 1, "database.query_timeout": 0.5})
    lookup_lock = await lock_tables(postgres_url, "sessions")
    try:
        # the first lookup and then the batch queued behind it both time out on the lock: StoreUnavailable
        lookups = [asyncio.ensure_future(store.lookup_session(token_hash("h0")))]
        await until_a_query_waits_for_a_lock(postgres_url)
        lookups += [asyncio.ensure_future(store.lookup_session(token_hash(f"h{i}"))) for i in range(1, 30)]
        await asyncio.sleep(0)
        for task in lookups[1::3]:
            task.cancel()
        await asyncio.sleep(0.7)  # the first query has timed out, the batch is in flight
        for task in lookups[2::3]:
            task.cancel()
        results = await asyncio.gather(*lookups, return_exceptions=True)
    finally:
        await unlock(lookup_lock)
    for i, result in enumerate(results):
        expected = StoreUnavailable if i % 3 == 0 else asyncio.CancelledError
        assert isinstance(result, expected), (i, result)


# -- the lookup connections ----------------------------------------------------------------------------


async def terminate_other_backends(url: str) -> int:
    async with aiopg.connect(url) as conn, conn.cursor() as cur:
        await cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return int((await cur.fetchone())[0])


async def test_a_lost_lookup_connection_is_replaced_without_failing_a_lookup(open_store: StoreFactory,
                                                                             postgres_url: str) -> None:
    store = await open_store(**{"database.lookup_concurrency": 1})
    known = await add_sessions(store, ["ada"])
    ada = token_hash("ada")
    check_answers([ada], [await store.lookup_session(ada)], known)
    assert await terminate_other_backends(postgres_url) >= 1
    before = store.lookup_queries
    check_answers([ada], [await store.lookup_session(ada)], known)
    assert store.lookup_queries - before == 2  # the lost connection, then a fresh one


async def test_a_migration_that_changes_a_looked_up_column_type_fails_no_lookup(
        open_store: StoreFactory, postgres_url: str) -> None:
    store = await open_store(**{"database.lookup_concurrency": 1})
    known = await add_sessions(store, ["ada"])
    ada = token_hash("ada")
    check_answers([ada], [await store.lookup_session(ada)], known)
    # a later schema version changes the type of a column the lookup returns: the prepared statement's
    # result (one JSON text) keeps its type, so PostgreSQL plans it again in place
    async with aiopg.connect(postgres_url) as conn, conn.cursor() as cur:
        await cur.execute("ALTER TABLE users ALTER COLUMN name TYPE varchar(1000)")
        await cur.execute("ALTER TABLE sessions ALTER COLUMN idle_timeout TYPE numeric")
    before = store.lookup_queries
    check_answers([ada], [await store.lookup_session(ada)], known)
    assert store.lookup_queries - before == 1


async def test_lookups_use_their_own_connections_beside_the_pool(open_store: StoreFactory,
                                                                 postgres_url: str) -> None:
    store = await open_store(**{"database.pool_max": 1, "database.lookup_concurrency": 2})
    known = await add_sessions(store, ["ada"])
    lock = await lock_tables(postgres_url, "login_failures")
    try:
        blocker = asyncio.create_task(store.locked_until("192.0.2.1", now=NOW))  # holds the pool's connection
        await until_a_query_waits_for_a_lock(postgres_url)
        ada = token_hash("ada")
        check_answers([ada], [await asyncio.wait_for(store.lookup_session(ada), timeout=5)], known)
    finally:
        await unlock(lock)
    assert await blocker is None
