"""What a failed PostgreSQL connection means (one place: ``gateway.store.pgconn``), and new connections that
survive what uvloop keeps of the closed ones."""

from __future__ import annotations

import asyncio
import gc
import socket

import aiopg
import psycopg2
import psycopg2.errors
import pytest

from gateway.errors import StoreUnavailable
from gateway.store.pgconn import connect, forget_stale_watchers, unavailable_errors
from tests.faults.pgstack import LOOPS, run_on
from tests.helpers import free_port

SECRET = "s3cret-pw"

UNREACHABLE = [
    pytest.param(psycopg2.OperationalError("server closed the connection unexpectedly"), id="dropped"),
    pytest.param(psycopg2.errors.AdminShutdown("terminating connection due to administrator command"),
                 id="admin-shutdown"),
    pytest.param(psycopg2.InterfaceError("connection already closed"), id="closed"),
    pytest.param(psycopg2.errors.ReadOnlySqlTransaction("read-only"), id="standby"),
    pytest.param(ConnectionRefusedError(111, "Connection refused"), id="refused"),
    pytest.param(OSError(9, "Bad file descriptor"), id="os-error"),
    pytest.param(TimeoutError(), id="timeout"),
    pytest.param(RuntimeError("unable to perform operation on <UVPoll closed=True 0x7f>; the handler is closed"),
                 id="uvloop-closed-poll"),
    pytest.param(RuntimeError("Cannot acquire connection after closing pool"), id="pool-closing"),
]


@pytest.mark.parametrize("failure", UNREACHABLE)
@pytest.mark.parametrize("connecting", [False, True], ids=["using", "connecting"])
def test_every_way_a_connection_fails_means_unavailable(failure: BaseException, connecting: bool) -> None:
    with pytest.raises(StoreUnavailable) as caught, unavailable_errors((), connecting=connecting):
        raise failure
    assert caught.value.message.startswith("The session database is unavailable: ")
    assert caught.value.__cause__ is failure


def test_a_bug_in_a_statement_is_not_an_outage_but_a_bad_url_is() -> None:
    bug = psycopg2.errors.UndefinedColumn('column "nope" does not exist')
    with pytest.raises(psycopg2.errors.UndefinedColumn), unavailable_errors(()):
        raise bug
    with pytest.raises(StoreUnavailable), unavailable_errors((), connecting=True):
        raise psycopg2.ProgrammingError('invalid dsn: invalid percent-encoded token: "s3cret%zz"')


def test_the_password_is_never_shown_nor_chained() -> None:
    with pytest.raises(StoreUnavailable) as caught, unavailable_errors((SECRET,), connecting=True):
        raise psycopg2.OperationalError(f'password authentication failed for "{SECRET}"\nDETAIL: more')
    assert SECRET not in str(caught.value) and "***" in caught.value.message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_cancellation_is_not_an_outage() -> None:
    with pytest.raises(asyncio.CancelledError), unavailable_errors(()):
        raise asyncio.CancelledError


async def _stale_watcher_on_next_descriptor() -> int:
    """Leave the running loop a watcher on a closed socket whose number the next socket will get, the way
    a refused libpq connection leaves it: uvloop closes its poll handle on the error but keeps it."""
    loop = asyncio.get_running_loop()
    doomed = socket.socket()
    doomed.setblocking(False)
    doomed.connect_ex(("127.0.0.1", free_port()))  # refused
    fired = asyncio.Event()
    loop.add_reader(doomed.fileno(), fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    fd = doomed.fileno()
    doomed.close()  # never removed from the loop, as aiopg leaves a failed connection
    return fd


@pytest.mark.parametrize("loop", LOOPS)
def test_forgetting_stale_watchers_lets_a_new_socket_be_watched(loop: str) -> None:
    async def main() -> None:
        fd = await _stale_watcher_on_next_descriptor()
        fresh = socket.socket()
        try:
            assert fresh.fileno() == fd
            forget_stale_watchers(fresh.fileno())
            asyncio.get_running_loop().add_reader(fresh.fileno(), lambda: None)
            asyncio.get_running_loop().remove_reader(fresh.fileno())
        finally:
            fresh.close()

    run_on(loop, main)


@pytest.mark.postgres
@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_after_a_refused_one_still_connects(loop: str, postgres_url: str) -> None:
    """Under uvloop a plain ``aiopg.connect`` fails with RuntimeError ("<UVPoll closed=True>") here, and
    would on every retry; the store's connections clear the stale watcher and connect."""
    async def main() -> str:
        await _stale_watcher_on_next_descriptor()
        conn = await connect(postgres_url, role="feed", connect_timeout=5, secrets=())
        try:
            async with conn.cursor() as cur:
                await cur.execute("SELECT current_setting('application_name')")
                return str((await cur.fetchone())[0])
        finally:
            await conn.close()

    assert run_on(loop, main) == "gateway-revocation-feed"


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Unclosed connection:ResourceWarning")
def test_without_clearing_uvloop_refuses_the_next_connection(postgres_url: str) -> None:
    """The failure the store's connections avoid, shown with aiopg alone (so the test above means something):
    the connection is refused by the event loop, and leaked (aiopg's "Unclosed connection")."""
    async def main() -> None:
        await _stale_watcher_on_next_descriptor()
        with pytest.raises(RuntimeError, match="closed=True"):
            await aiopg.connect(postgres_url, timeout=5)
        gc.collect()  # the leaked connection is reported while its loop still runs

    run_on("uvloop", main)
