"""The gateway behind PgBouncer in transaction pooling (Debian's ``pgbouncer``), on a real PostgreSQL.

Transaction pooling hands a client's next transaction to any server connection, so the gateway must keep
no session state between transactions (``database.prepared_statements = false``), and NOTIFY does not
reach a listener behind it. Checks, sign-ins and revocations go through PgBouncer; the revocation feed
either connects straight to PostgreSQL (``database.feed_url``, the recommended setup: a revocation lands
at once) or goes through PgBouncer too, where it still lands within about a second because every process
reads the revocation log each second.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.settings import SettingsError, redacted
from tests.deploy.stack import sign_in
from tests.faults.pgbouncer import PgBouncer, dev_sign_in_config, gateway_cli, start_pgbouncer
from tests.faults.pgstack import PgGateway, run_gateway, run_on, status_of
from tests.faults.report import Figures
from tests.helpers import PostgresCluster, free_port, make_settings

pytestmark = pytest.mark.postgres

LOOP = "uvloop"
"""What ``gateway serve`` runs on in production."""

REVOKED_WITHIN = 2.0
"""Seconds by which a revocation made by another process must be refused (the README promises one)."""


def _status(gateway: PgGateway, token: str) -> int:
    return run_on("asyncio", lambda: status_of(gateway.url, token, timeout=5))


def _refused_after(gateway: PgGateway, token: str, revoke_at: float, limit: float = 10.0) -> float:
    """Seconds from ``revoke_at`` until ``gateway`` refuses ``token`` (polled every 20 ms; fails at ``limit``)."""
    while True:
        status = _status(gateway, token)
        elapsed = time.monotonic() - revoke_at
        if status == 401:
            return elapsed
        assert status == 200, status
        assert elapsed < limit, f"a revoked token still passes after {elapsed:.1f}s"
        time.sleep(0.02)


def _mint(database_url: str, email: str) -> str:
    return gateway_cli(database_url, "tokens", "mint", "--email", email, "--role", "user", "--ttl", "1h").strip()


def _revoke(database_url: str, token: str) -> float:
    """Revoke ``token`` with the admin CLI (another process); the monotonic time when the CLI returned."""
    gateway_cli(database_url, "tokens", "revoke", "-", stdin=token + "\n")
    return time.monotonic()


@pytest.fixture
def bouncer(postgres_cluster: PostgresCluster) -> Iterator[PgBouncer]:
    with start_pgbouncer(postgres_cluster, pool_mode="transaction") as running:
        yield running


SCENARIO = "PgBouncer in transaction pooling"
ABOUT = ("One gateway (uvloop) with database_url through Debian's pgbouncer (pool_mode = transaction,"
         " prepared_statements off); tokens minted and revoked by the admin CLI through PgBouncer. Delays from"
         " the CLI's return to the first 401.")


def test_checks_logins_and_revocations_through_pgbouncer(postgres_cluster: PostgresCluster, postgres_url: str,
                                                         bouncer: PgBouncer, tmp_path: Path,
                                                         figures: Figures) -> None:
    """database_url through PgBouncer (transaction pooling), the feed straight to PostgreSQL: tokens minted
    and revoked by the CLI through PgBouncer, and a browser sign-in, all work; a revocation lands at once."""
    pooled = bouncer.url(postgres_cluster, postgres_url)
    port = free_port()
    with run_gateway(LOOP, pooled, tmp_path, port=port, public_url=f"http://127.0.0.1:{port}",
                     config=str(dev_sign_in_config(tmp_path)), database_feed_url=postgres_url,
                     database_prepared_statements="false", cache_ttl="1h") as gateway:
        tokens = [_mint(pooled, f"user{i}@example.com") for i in range(8)]
        # every token is new to the gateway: the lookups go through PgBouncer, several at once
        assert [_status(gateway, token) for token in tokens] == [200] * len(tokens)
        assert [_status(gateway, token) for token in tokens] == [200] * len(tokens)  # cached now

        delays = []
        for token in tokens[:3]:
            delays.append(_refused_after(gateway, token, _revoke(pooled, token)))
        print(f"\nrevocation delay, feed straight to PostgreSQL: {', '.join(f'{d:.3f}s' for d in delays)}")
        figures.scenario(SCENARIO, ABOUT).record(
            "revocation refused, feed straight to PostgreSQL (database.feed_url), slowest of 3", max(delays),
            goal=f"≤ {REVOKED_WITHIN:g} s", ok=max(delays) < REVOKED_WITHIN, unit="s")
        assert max(delays) < REVOKED_WITHIN
        assert [_status(gateway, token) for token in tokens[3:]] == [200] * 5

        signed_in = sign_in(gateway.url, "grace@example.com")
        assert _status(gateway, signed_in.token) == 200
        delay = _refused_after(gateway, signed_in.token, _revoke(pooled, signed_in.token))
        assert delay < REVOKED_WITHIN

        assert gateway.ready() == (200, "ready")
        assert gateway.problems() == []
    assert gateway.exit_code == 0
    # the pooled connections really went through PgBouncer, and nothing there failed
    assert "login attempt" in bouncer.log_text()
    assert "prepared statement" not in bouncer.log_text()


def test_revocations_arrive_with_the_feed_through_pgbouncer(postgres_cluster: PostgresCluster, postgres_url: str,
                                                            bouncer: PgBouncer, tmp_path: Path,
                                                            figures: Figures) -> None:
    """Everything through PgBouncer in transaction pooling, the feed included (not recommended: NOTIFY is
    lost there): revocations still land within about a second, from the revocation log."""
    pooled = bouncer.url(postgres_cluster, postgres_url)
    with run_gateway(LOOP, pooled, tmp_path, config=str(dev_sign_in_config(tmp_path)),
                     database_prepared_statements="false", cache_ttl="1h") as gateway:
        tokens = [_mint(pooled, f"user{i}@example.com") for i in range(5)]
        assert [_status(gateway, token) for token in tokens] == [200] * len(tokens)
        delays = []
        for token in tokens[:4]:
            delays.append(_refused_after(gateway, token, _revoke(pooled, token)))
            time.sleep(0.3)  # spread the revocations over the feed's one-second reads
        print(f"\nrevocation delay, feed through PgBouncer (transaction pooling): "
              f"{', '.join(f'{d:.3f}s' for d in delays)}")
        figures.scenario(SCENARIO, ABOUT).record(
            "revocation refused, feed through PgBouncer too (revocation log read each second), slowest of 4",
            max(delays), goal=f"≤ {REVOKED_WITHIN:g} s", ok=max(delays) < REVOKED_WITHIN, unit="s")
        assert max(delays) < REVOKED_WITHIN
        assert _status(gateway, tokens[4]) == 200
        assert gateway.ready() == (200, "ready")
        assert gateway.problems() == []
    assert gateway.exit_code == 0


def test_prepared_statements_left_on_behind_pgbouncer(postgres_cluster: PostgresCluster, postgres_url: str,
                                                      tmp_path: Path) -> None:
    """The setting forgotten: two gateways prepare their lookup on PgBouncer's one shared server session.
    The second finds it prepared already, the first loses it to the other's session reset; each goes on
    without preparing and says so, and no check fails."""
    with start_pgbouncer(postgres_cluster, pool_mode="transaction", pool_size=1) as bouncer:
        pooled = bouncer.url(postgres_cluster, postgres_url)
        with contextlib.ExitStack() as stack:
            gateways = [stack.enter_context(run_gateway(LOOP, pooled, tmp_path / name, name=name,
                                                        database_prepared_statements="true"))
                        for name in ("gateway-a", "gateway-b")]
            tokens = [_mint(pooled, f"user{i}@example.com") for i in range(6)]
            for gateway in gateways:
                assert [_status(gateway, token) for token in tokens] == [200] * len(tokens)
            warned = [gateway.name for gateway in gateways
                      if "does not survive between statements" in gateway.log_text()]
            assert warned, "no gateway noticed that its prepared statement is shared"
            for gateway in gateways:
                assert gateway.problems() == []
                assert gateway.stop() == 0

@pytest.mark.parametrize(("database_url", "feed_url", "problem"), [
    pytest.param("postgresql://gw@127.0.0.1:6432/gw", "postgresql://gw@127.0.0.1:5432/gw", None, id="direct-feed"),
    pytest.param("postgresql://gw@127.0.0.1:6432/gw", "", None, id="unset"),
    pytest.param("postgresql://gw@127.0.0.1:6432/gw", "mysql://x", "expected postgresql://", id="not-postgres"),
    pytest.param("sqlite:///gw.db", "postgresql://gw@127.0.0.1/gw", "only for a PostgreSQL", id="sqlite"),
])
def test_feed_url_setting(database_url: str, feed_url: str, problem: str | None) -> None:
    """``database.feed_url`` is a PostgreSQL URL beside a PostgreSQL database_url, and never printed."""
    overrides = {"database_url": database_url, "database.feed_url": feed_url}
    if problem is None:
        settings = make_settings(overrides)
        assert settings.database.feed_url == feed_url
        with_password = make_settings({**overrides, "database.feed_url": "postgresql://gw:s3cret@db/gw"})
        assert "s3cret" not in str(redacted(with_password))
    else:
        with pytest.raises(SettingsError, match=problem):
            make_settings(overrides)
