"""A PostgreSQL primary and a streaming standby on this machine, for the failover test.

The primary is a :class:`tests.helpers.PostgresCluster` (``wal_level = replica`` is PostgreSQL's default)
whose ``pg_hba.conf`` also trusts replication connections from 127.0.0.1; the standby is cloned from it
with ``pg_basebackup -R`` (which writes ``standby.signal`` and ``primary_conninfo``) and started as a
cluster of its own on another free port. Server commands run as the ``postgres`` OS user when the tests
run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence

import psycopg2

from tests.deploy.stack import unavailable
from tests.helpers import PostgresCluster, find_postgres_bindir


def _run(args: Sequence[str], *, timeout: float = 120) -> None:
    command = [*(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def query(url: str, statement: str) -> object:
    """The first cell of ``statement``'s first row, run on ``url`` outside a transaction."""
    with contextlib.closing(psycopg2.connect(url, connect_timeout=5)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
            row = cur.fetchone()
            return None if row is None else row[0]


@contextlib.contextmanager
def primary_and_standby() -> Iterator[tuple[PostgresCluster, PostgresCluster]]:
    """A running primary and a standby streaming from it; both stopped and deleted afterwards."""
    bindir = find_postgres_bindir()
    if bindir is None:
        unavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup) not found")
    assert bindir is not None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root but there is no 'postgres' OS user to run the server as")
    primary = PostgresCluster(bindir)
    standby = PostgresCluster(bindir)
    try:
        primary.init()
        hba = primary.datadir / "pg_hba.conf"
        hba.write_text(hba.read_text() + "host replication all 127.0.0.1/32 trust\n")
        _run([str(bindir / "pg_ctl"), "-D", str(primary.datadir), "reload"])
        standby.sockdir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(standby.root, "postgres", "postgres")
            shutil.chown(standby.sockdir, "postgres", "postgres")
        _run([str(bindir / "pg_basebackup"), "-D", str(standby.datadir), "-h", "127.0.0.1", "-p", str(primary.port),
              "-U", primary.superuser, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
        standby.start()
        deadline = time.monotonic() + 30
        while query(standby.url(), "SELECT status FROM pg_stat_wal_receiver") != "streaming":
            assert time.monotonic() < deadline, "the standby does not stream from the primary"
            time.sleep(0.1)
        yield primary, standby
    finally:
        with contextlib.suppress(Exception):
            standby.destroy()
        primary.destroy()


def wait_replayed(primary: PostgresCluster, standby: PostgresCluster, dbname: str, timeout: float = 30) -> None:
    """Return once the standby has replayed everything the primary has written so far."""
    lsn = query(primary.url(dbname), "SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + timeout
    while not query(standby.url(dbname), f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"):
        assert time.monotonic() < deadline, "the standby lags behind the primary"
        time.sleep(0.05)


def promote(standby: PostgresCluster) -> None:
    """``pg_ctl promote``: the standby becomes a primary (waits until it accepts writes)."""
    _run([str(standby.bindir / "pg_ctl"), "-D", str(standby.datadir), "-w", "-t", "60", "promote"])
