"""Failover: a primary and a streaming standby, two gateways given both hosts in one URL.

``database_url = postgresql://…@127.0.0.1:P1,127.0.0.1:P2/db?target_session_attrs=read-write``. The primary
is stopped (immediate: a crash, as far as clients can tell) and the standby promoted with ``pg_ctl
promote``. Both gateways must follow within seconds: an unknown token is looked up on the new primary,
a revocation made after the failover reaches both, and a revocation made before it stays in force. The
seconds to recovery are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from gateway.store.pghosts import HostRoute
from tests.deploy.stack import sign_in
from tests.faults.pgbouncer import dev_sign_in_config, gateway_cli
from tests.faults.pgstack import PgGateway, run_gateway, run_on, status_of, stop_database
from tests.faults.replication import primary_and_standby, promote, query, wait_replayed
from tests.faults.report import Figures
from tests.helpers import free_port

pytestmark = pytest.mark.postgres

LOOP = "uvloop"
"""What ``gateway serve`` runs on in production."""

RECOVERED_WITHIN = 10.0
"""Seconds from the primary's crash (promotion included) by which both gateways must serve unknown tokens."""

REVOKED_WITHIN = 2.0
"""Seconds by which a revocation made after the failover must be refused by both gateways."""


def _status(gateway: PgGateway, token: str) -> int:
    return run_on("asyncio", lambda: status_of(gateway.url, token, timeout=5))


def _mint(url: str, email: str) -> str:
    return gateway_cli(url, "tokens", "mint", "--email", email, "--role", "user", "--ttl", "1h").strip()


def _revoke(url: str, token: str) -> float:
    """Revoke ``token`` with the admin CLI (another process); the monotonic time when the CLI returned."""
    gateway_cli(url, "tokens", "revoke", "-", stdin=token + "\n")
    return time.monotonic()


def _until(gateways: list[PgGateway], token: str, want: int, since: float, limit: float) -> float:
    """Seconds from ``since`` until every gateway answers ``token`` with ``want`` (fails after ``limit``)."""
    pending = list(gateways)
    while pending:
        pending = [gateway for gateway in pending if _status(gateway, token) != want]
        elapsed = time.monotonic() - since
        assert elapsed < limit, f"still not {want} after {elapsed:.1f}s on {[g.name for g in pending]}"
        if pending:
            time.sleep(0.05)
    return time.monotonic() - since


def test_gateways_follow_a_promoted_standby(tmp_path: Path, figures: Figures) -> None:
    scene = figures.scenario(
        "Failover to a promoted standby",
        "Two gateways (uvloop) on a primary and a streaming standby listed in one URL with"
        " target_session_attrs=read-write; the primary stopped with -m immediate, the standby promoted with"
        " pg_ctl promote. Times from the primary's stop.")
    with primary_and_standby() as (primary, standby), contextlib.ExitStack() as stack:
        dbname = primary.create_database().rsplit("/", 1)[1]
        url = (f"postgresql://{primary.superuser}@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{dbname}"
               "?target_session_attrs=read-write")
        gateways = []
        for name in ("gateway-a", "gateway-b"):
            port = free_port()
            gateways.append(stack.enter_context(run_gateway(
                LOOP, url, tmp_path / name, name=name, port=port, public_url=f"http://127.0.0.1:{port}",
                config=str(dev_sign_in_config(tmp_path / name)), cache_ttl="1h")))
        revoked_before = _mint(url, "before@example.com")
        cached = _mint(url, "cached@example.com")
        revoked_after = _mint(url, "after@example.com")
        unseen = [_mint(url, f"unseen{i}@example.com") for i in range(2)]
        for gateway in gateways:
            assert [_status(gateway, t) for t in (revoked_before, cached, revoked_after)] == [200, 200, 200]
        _until(gateways, revoked_before, 401, _revoke(url, revoked_before), REVOKED_WITHIN)
        wait_replayed(primary, standby, dbname)

        crashed = time.monotonic()
        stop_database(primary, "immediate")
        promote(standby)
        promoted = time.monotonic() - crashed
        assert query(standby.url(dbname), "SELECT pg_is_in_recovery()") is False
        # cached sessions keep passing throughout (from the cache, then from the new primary)
        assert [_status(gateway, cached) for gateway in gateways] == [200, 200]
        # an unknown token needs the database: each gateway looks one up on the new primary
        recovered = max(_until([gateway], token, 200, crashed, RECOVERED_WITHIN)
                        for gateway, token in zip(gateways, unseen, strict=True))
        ready = _until_ready(gateways, crashed, RECOVERED_WITHIN)

        revoked_at = _revoke(url, revoked_after)
        delay = _until(gateways, revoked_after, 401, revoked_at, REVOKED_WITHIN)
        scene.record("pg_ctl promote, from the primary's stop", promoted, unit="s")
        scene.record("unknown tokens looked up again on both gateways", recovered,
                     goal=f"≤ {RECOVERED_WITHIN:g} s", ok=recovered <= RECOVERED_WITHIN, unit="s")
        scene.record("both gateways ready (lookups and revocation feed)", ready,
                     goal=f"≤ {RECOVERED_WITHIN:g} s", ok=ready <= RECOVERED_WITHIN, unit="s")
        scene.record("a revocation made after the failover refused by both", delay,
                     goal=f"≤ {REVOKED_WITHIN:g} s", ok=delay <= REVOKED_WITHIN, unit="s")
        print(f"\nfailover: promotion took {promoted:.2f}s; lookups of unknown tokens served again "
              f"{recovered:.2f}s after the primary crashed, both gateways ready after {ready:.2f}s; "
              f"a revocation made after the failover refused by both within {delay:.3f}s")

        # a sign-in writes through each gateway's pool, whose idle connections went down with the primary
        for gateway in gateways:
            assert _status(gateway, sign_in(gateway.url, f"{gateway.name}@example.com").token) == 200
        before = [_status(gateway, revoked_before) for gateway in gateways]
        scene.record("a token revoked before the failover, on both gateways", " · ".join(map(str, before)),
                     goal="401 · 401", ok=before == [401, 401])
        assert before == [401, 401]  # revoked before the failover: stays revoked
        for gateway in gateways:
            assert _status(gateway, cached) == 200
            assert gateway.problems() == []
        for gateway in gateways:
            code = gateway.stop()
            scene.record(f"{gateway.name}: exit code at SIGTERM", code, goal="0", ok=code == 0)
            assert code == 0


def _until_ready(gateways: list[PgGateway], since: float, limit: float) -> float:
    """Seconds from ``since`` until every gateway's ``/readyz`` answers 200 (its revocation feed is back)."""
    while True:
        if all(gateway.ready()[0] == 200 for gateway in gateways):
            return time.monotonic() - since
        assert time.monotonic() - since < limit, [gateway.ready() for gateway in gateways]
        time.sleep(0.05)


@pytest.mark.parametrize(("url", "hosts", "pinned"), [
    pytest.param("postgresql://gw@db1:5432,db2:5433/gw?target_session_attrs=read-write",
                 (("db1", "5432"), ("db2", "5433")),
                 "user=gw dbname=gw host=db1 target_session_attrs=read-write port=5432", id="url"),
    pytest.param("host=db1,db2 port=6000 dbname=gw", (("db1", "6000"), ("db2", "6000")),
                 "dbname=gw host=db1 port=6000", id="keywords-one-port"),
    pytest.param("postgresql://gw@db1/gw", (), "postgresql://gw@db1/gw", id="one-host-untouched"),
    pytest.param("host=a,b port=1,2,3", (), "host=a,b port=1,2,3", id="mismatched-left-to-libpq"),
])
def test_host_route_pins_one_host(url: str, hosts: tuple[tuple[str, str], ...], pinned: str) -> None:
    """A multi-host URL is split into its hosts, and connections are pinned to one of them, every other
    parameter kept; anything else is passed to libpq untouched."""
    route = HostRoute(url)
    assert route.hosts == hosts
    assert route.pin(url) == pinned


async def test_host_route_moves_to_the_first_host_that_accepts() -> None:
    route = HostRoute("host=a,b,c dbname=gw")
    tried: list[str] = []

    async def try_host(dsn: str) -> bool:
        tried.append(dsn)
        return "host=c" in dsn

    assert await route.locate("host=a,b,c dbname=gw", try_host)
    assert route.current == "c"
    assert route.pin("host=a,b,c dbname=gw application_name=x") == "dbname=gw host=c application_name=x"
    assert len(tried) == 3
