"""Shared fixtures: settings, a throwaway PostgreSQL cluster per test session, fresh database URLs."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import pwd
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from gateway.settings import Settings
from tests.browsers import browsers  # noqa: F401 - one cookie jar per browser, for the sign-in tests
from tests.harness import frontend, gateway_factory, gw  # noqa: F401 - fixtures shared by the endpoint tests
from tests.helpers import PostgresCluster, find_postgres_bindir, make_settings

STALL_SECONDS = 300.0
"""A test (setup, call and teardown) still running after this long is reported as stalled: every thread's
stack and every asyncio task's are written to stderr, so a hang in CI says where it waits."""


def _dump_stall(item: pytest.Item) -> None:
    """Write every thread's and asyncio task's stack to the real stderr (pytest's capture suspended: a
    captured dump of a test that never ends would never be shown)."""
    capture = item.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(f"\n=== {item.nodeid} has run for {STALL_SECONDS:.0f} s: threads and asyncio tasks ===",
              file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr)
        try:
            tasks = asyncio.all_tasks(asyncio.get_running_loop())
        except RuntimeError:
            tasks = set()
        for task in tasks:
            print(f"--- {task!r}", file=sys.stderr)
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """Report a stalled test's stacks (see :data:`STALL_SECONDS`); the test itself goes on until
    pytest-timeout's limit (``timeout`` in pyproject.toml) fails it."""
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: _dump_stall(item))
    main = threading.main_thread().ident
    timer = threading.Timer(STALL_SECONDS, signal.pthread_kill, (main, signal.SIGUSR2))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR2, previous)


def _unavailable(reason: str) -> None:
    """Skip a test that needs PostgreSQL, or fail it when GATEWAY_TEST_STRICT=1 demands every test run."""
    if os.environ.get("GATEWAY_TEST_STRICT") == "1":
        pytest.fail(f"{reason} (GATEWAY_TEST_STRICT=1)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL server for the whole test session, stopped and deleted at the end.

    Tests may ``stop()`` and ``start()`` it (same port and data) but must leave it running.
    """
    bindir = find_postgres_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
    assert bindir is not None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root but there is no 'postgres' OS user to run the server as")
    cluster = PostgresCluster(bindir)
    try:
        cluster.init()
    except Exception as exc:
        cluster.destroy()
        _unavailable(f"could not start a PostgreSQL cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    """:func:`tests.helpers.make_settings` as a fixture (dotted overrides, or ``a__b=`` keywords)."""
    return make_settings


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL for a new SQLite file in this test's temporary directory."""
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster, request: pytest.FixtureRequest) -> str:
    """A URL for a new, empty PostgreSQL database; the cluster is restarted if a test left it down."""
    if not postgres_cluster.running:
        postgres_cluster.start()

    def ensure_running() -> None:
        if not postgres_cluster.running:
            postgres_cluster.start()

    request.addfinalizer(ensure_running)
    return postgres_cluster.create_database()
