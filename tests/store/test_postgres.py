"""PostgreSQL-specific Store behaviour: the LISTEN-based revocation feed across restarts and reconnects,
sequence order under concurrent writers, the connection pool through outages, and password secrecy.

What every Store must do lives in ``test_conformance.py``; lookup batching in ``test_postgres_batching.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest

from gateway.errors import StoreUnavailable
from gateway.settings import Settings
from gateway.store import Store
from tests.helpers import store_for
from tests.store.storekit import VERSIONS, StoreFactory, eventually, make_session, make_user, token_hash, watching


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """The stores ``store_factory`` opens are PostgreSQL ones."""
    return postgres_url


@pytest.mark.postgres
async def test_watcher_survives_a_database_restart(postgres_cluster: Any, postgres_url: str,
                                                   settings_factory: Callable[..., Settings]) -> None:
    watcher_store = store_for(settings_factory(database_url=postgres_url))
    writer = store_for(settings_factory(database_url=postgres_url))
    await watcher_store.open()
    await writer.open()
    try:
        await writer.migrate()
        user_id = await make_user(writer)
        before = await make_session(writer, user_id, "before")
        after = await make_session(writer, user_id, "after")
        async with watching(watcher_store) as (revocations, states):
            await writer.revoke_session(before, actor="t", reason="r")
            hashes = [token_hash("before")]
            assert await eventually(lambda: [r.token_hash for r in revocations] == hashes)

            await asyncio.to_thread(postgres_cluster.stop)
            assert await eventually(lambda: states == [True, False], timeout=3), states
            await asyncio.to_thread(postgres_cluster.start)
            assert await eventually(lambda: states == [True, False, True], timeout=5), states

            await writer.revoke_session(after, actor="t", reason="r")
            hashes.append(token_hash("after"))
            assert await eventually(lambda: [r.token_hash for r in revocations] == hashes), revocations
    finally:
        await watcher_store.close()
        await writer.close()


@pytest.mark.postgres
async def test_watcher_catches_up_on_what_was_revoked_while_its_listener_reconnected(
        postgres_url: str, store_factory: StoreFactory) -> None:
    watcher_store = await store_factory(postgres_url)
    writer = await store_factory(postgres_url)
    await writer.migrate()
    user_id = await make_user(writer)
    hashes = [await make_session(writer, user_id, f"gap{i}") for i in range(20)]
    async with watching(watcher_store) as (revocations, states):
        with contextlib.closing(psycopg2.connect(postgres_url)) as conn, conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'gateway-revocation-feed'")
            assert cur.fetchall() == [(True,)]
        for h in hashes:  # most of these are committed while the listener is away
            assert await writer.revoke_session(h, actor="t", reason="r")
        assert await eventually(lambda: {r.token_hash for r in revocations} == set(hashes), timeout=2.5)
        assert await eventually(lambda: states[-1], timeout=2.5) and False in states
        await asyncio.sleep(1.2)  # a log read later: each session's revocation was delivered once
        assert sorted(r.token_hash for r in revocations if r.token_hash) == sorted(hashes)


@pytest.mark.postgres
async def test_concurrent_revocations_become_visible_in_sequence_order(
        postgres_url: str, store_factory: StoreFactory) -> None:
    """Writers in many transactions at once; a reader paging through the log as fast as it can never
    sees a number appear below one it has already read past (it would have skipped that revocation)."""
    writers = [await store_factory(postgres_url) for _ in range(4)]
    await writers[0].migrate()
    user_id = await make_user(writers[0])
    hashes = [await make_session(writers[0], user_id, f"concurrent{i}") for i in range(200)]
    reader = await store_factory(postgres_url)
    start = 0  # a fresh database: nothing revoked yet
    read: list[int] = []
    done = asyncio.Event()

    async def read_all() -> None:
        last = start
        while True:
            finished = done.is_set()
            for entry in await reader.revocations_since(last, limit=7):
                read.append(entry.seq)
                last = entry.seq
            if finished and not await reader.revocations_since(last):
                return

    async def revoke(writer: Store, mine: list[str]) -> None:
        for h in mine:
            assert await writer.revoke_session(h, actor="t", reason="r")

    reading = asyncio.create_task(read_all())
    await asyncio.gather(*(revoke(w, hashes[i::len(writers)]) for i, w in enumerate(writers)))
    done.set()
    await reading
    everything = [entry.seq for entry in await reader.revocations_since(start, limit=1000)]
    assert read == everything  # nothing skipped, nothing twice, in order
    assert len(everything) == len(hashes)


@pytest.mark.postgres
async def test_pool_recovers_after_a_database_restart(postgres_cluster: Any, postgres_url: str,
                                                      settings_factory: Callable[..., Settings]) -> None:
    store = store_for(settings_factory(database_url=postgres_url))
    await store.open()
    try:
        await store.migrate()
        user_id = await make_user(store)
        await store.ping()

        await asyncio.to_thread(postgres_cluster.stop)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.lookup_session(token_hash("x"))
        with pytest.raises(StoreUnavailable):
            await store.upsert_user("oidc", "bob", email="bob@example.com")

        await asyncio.to_thread(postgres_cluster.start)
        await store.ping()
        assert (await store.get_user(user_id)) is not None
        assert (await store.upsert_user("oidc", "bob", email="bob@example.com")).id != user_id
    finally:
        await store.close()


@pytest.mark.postgres
async def test_open_succeeds_while_the_database_is_down(postgres_cluster: Any, postgres_url: str,
                                                        settings_factory: Callable[..., Settings]) -> None:
    await asyncio.to_thread(postgres_cluster.stop)
    store = store_for(settings_factory(database_url=postgres_url))
    try:
        await store.open()
        with pytest.raises(StoreUnavailable):
            await store.ping()
        await asyncio.to_thread(postgres_cluster.start)
        assert await store.migrate() == VERSIONS
    finally:
        await store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("case", ["refused", "wrong-password", "malformed-password"])
async def test_errors_never_reveal_the_password(postgres_cluster: Any, postgres_url: str,
                                                settings_factory: Callable[..., Settings], case: str) -> None:
    dbname = postgres_url.rsplit("/", 1)[1]
    if case == "refused":
        secret = "s3cret-refused-pw"
        url = postgres_cluster.url(dbname, user=postgres_cluster.password_user, password=secret, port=1)
    elif case == "wrong-password":
        secret = "s3cret-wrong-pw"
        url = postgres_cluster.url(dbname, user=postgres_cluster.password_user, password=secret)
    else:
        # libpq quotes a badly percent-encoded URL component verbatim in its error
        secret = "s3cret%zz"
        url = (f"postgresql://{postgres_cluster.password_user}:{secret}@127.0.0.1:"
               f"{postgres_cluster.port}/{dbname}")
    store = store_for(settings_factory(database_url=url, **{"database.connect_timeout": 2}))
    await store.open()
    try:
        for call in (store.ping, store.migrate, store.list_users):
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            error = caught.value
            assert secret not in str(error)
            assert secret not in error.message
            chained = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
            assert chained is None or secret not in str(chained)
    finally:
        await store.close()


@pytest.mark.postgres
async def test_password_authentication_works(postgres_cluster: Any, postgres_url: str,
                                             settings_factory: Callable[..., Settings]) -> None:
    """The password role really authenticates, so the wrong-password case above tests what it says."""
    dbname = postgres_url.rsplit("/", 1)[1]
    url = postgres_cluster.url(dbname, user=postgres_cluster.password_user,
                               password=postgres_cluster.password)
    store = store_for(settings_factory(database_url=url))
    await store.open()
    try:
        await store.ping()
    finally:
        await store.close()
