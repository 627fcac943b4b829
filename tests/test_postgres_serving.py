"""Gateways on a real PostgreSQL: cross-replica revocation and a database outage while serving."""

from __future__ import annotations

import asyncio

import pytest

from gateway.app import CHECKER
from gateway.tokens import mint_token
from tests.harness import Gateway, GatewayFactory
from tests.helpers import PostgresCluster

pytestmark = pytest.mark.postgres

COOKIE = "gw_session"


async def status_of(gw: Gateway, token: str, path: str = "/auth/check") -> int:
    return (await gw.client.get(path, headers={"Cookie": f"{COOKIE}={token}"})).status


async def wait_for_status(gw: Gateway, token: str, expected: int, within: float) -> float:
    """Poll until the gateway answers ``expected``; return how long it took (fails past ``within``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        status = await status_of(gw, token)
        elapsed = loop.time() - started
        if status == expected:
            return elapsed
        assert elapsed < within, f"still {status} after {elapsed:.2f}s"
        await asyncio.sleep(0.02)


async def wait_for_feed(gw: Gateway) -> None:
    for _ in range(250):
        if gw.metric("gateway_revocation_feed_up") == 1:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("revocation feed never came up")


async def test_logout_on_one_replica_is_refused_by_the_other_within_a_second(
        gateway_factory: GatewayFactory, postgres_url: str) -> None:
    a = await gateway_factory(database_url=postgres_url, **{"cache.ttl": "1h"})
    b = await gateway_factory(database_url=postgres_url, **{"cache.ttl": "1h"})
    await asyncio.gather(wait_for_feed(a), wait_for_feed(b))
    token = await a.token("ada@example.com")
    assert await status_of(a, token) == 200
    assert await status_of(b, token) == 200  # now cached on b for up to an hour
    assert await a.app[CHECKER].revoke_token(token, actor="user", reason="logout")
    assert await status_of(a, token) == 401  # local eviction is immediate
    await wait_for_status(b, token, 401, within=1.0)


async def test_revoking_all_sessions_of_a_user_reaches_every_replica(
        gateway_factory: GatewayFactory, postgres_url: str) -> None:
    a = await gateway_factory(database_url=postgres_url, **{"cache.ttl": "1h"})
    b = await gateway_factory(database_url=postgres_url, **{"cache.ttl": "1h"})
    await asyncio.gather(wait_for_feed(a), wait_for_feed(b))
    tokens = [await a.token("grace@example.com") for _ in range(3)]
    for token in tokens:
        assert await status_of(b, token) == 200
    user = a.users["grace@example.com"]
    assert await a.store.revoke_user_sessions(user.id, actor="cli", reason="admin") == 3
    for token in tokens:
        await wait_for_status(b, token, 401, within=1.0)


async def test_database_outage_while_serving(gateway_factory: GatewayFactory, postgres_url: str,
                                             postgres_cluster: PostgresCluster) -> None:
    gw = await gateway_factory(database_url=postgres_url, **{"database.connect_timeout": "1s",
                                                             "database.query_timeout": "1s"})
    await wait_for_feed(gw)
    cached = await gw.token("cached@example.com")
    not_yet_seen = await gw.token("later@example.com")
    assert await status_of(gw, cached) == 200

    postgres_cluster.stop()
    try:
        # the session seen before the outage keeps working from the cache
        assert await status_of(gw, cached) == 200
        assert await status_of(gw, cached, "/auth/webhook") == 200
        # a token we cannot check fails closed: 503 for proxies, 401 for Hasura
        assert await status_of(gw, not_yet_seen) == 503
        assert await status_of(gw, mint_token(), "/auth/webhook") == 401
        assert await status_of(gw, not_yet_seen, "/auth/webhook") == 401
        ready = await gw.client.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["status"] == "database_unavailable"
        assert (await gw.client.get("/healthz")).status == 200
        assert gw.metric("gateway_database_errors_total", operation="lookup_session") >= 1
    finally:
        postgres_cluster.start()

    # the pool and the feed recover by themselves within two seconds: no restart
    await wait_for_status(gw, not_yet_seen, 200, within=2.0)
    await wait_for_feed(gw)
    assert (await gw.client.get("/readyz")).status == 200
    # and revocation works again across the recovered feed
    assert await gw.app[CHECKER].revoke_token(cached, actor="user", reason="logout")
    assert await status_of(gw, cached) == 401


async def test_revocation_lands_within_a_second_even_while_the_listener_is_down(
        gateway_factory: GatewayFactory, postgres_url: str) -> None:
    """Kill only the gateway's LISTEN connection, revoke elsewhere at once: the notice is lost, the
    revocation must still take effect within a second (the cache falls back to a short TTL, and the
    reconnected feed reads the revocation from the log)."""
    import aiopg

    gw = await gateway_factory(database_url=postgres_url, **{"cache.ttl": "1h"})
    await wait_for_feed(gw)
    token = await gw.token("ada@example.com")
    assert await status_of(gw, token) == 200
    async with aiopg.connect(postgres_url) as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND application_name = 'gateway-revocation-feed'")
        assert (await cur.fetchall()) == [(True,)]
    assert await gw.revoke_elsewhere(token)
    await wait_for_status(gw, token, 401, within=1.0)


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "plain"])
async def test_lookups_with_and_without_prepared_statements(gateway_factory: GatewayFactory, postgres_url: str,
                                                            prepared: bool) -> None:
    """Both lookup paths answer alike, including after the pool's connections were replaced."""
    import aiopg

    gw = await gateway_factory(database_url=postgres_url, **{"database.prepared_statements": prepared,
                                                             "cache.ttl": 0, "cache.negative_ttl": 0})
    token = await gw.token("ada@example.com")
    assert await status_of(gw, token) == 200
    assert await status_of(gw, mint_token()) == 401
    async with aiopg.connect(postgres_url) as conn, conn.cursor() as cur:
        await cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    await wait_for_status(gw, token, 200, within=5.0)
