"""The benchmark's database: a throwaway PostgreSQL cluster, the gateway's schema, and seeded sessions.

The cluster is the test suite's :class:`tests.helpers.PostgresCluster` (started from the PostgreSQL
binaries, as the ``postgres`` OS user when running as root). The schema comes from ``gateway migrate``
run as a subprocess, exactly as an operator would. Users and sessions are loaded with COPY: the tokens
are minted with :func:`gateway.tokens.mint_token`, only their hashes reach the database, and the
plaintext tokens go to a file for the load generator.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from gateway.tokens import hash_token, mint_token
from tests.helpers import PostgresCluster, find_postgres_bindir

SESSION_LIFETIME = 7 * 86400.0
IDLE_TIMEOUT = 12 * 3600.0
"""Seeded sessions are browser sessions with the gateway's default lifetime and idle timeout."""

LOOKUP_SQL_COPY = (
    "SELECT s.token_hash, s.user_id, s.kind, extract(epoch from s.created_at)::float8,"
    " extract(epoch from s.expires_at)::float8, s.idle_timeout, extract(epoch from s.last_seen_at)::float8,"
    " extract(epoch from s.idle_expires_at)::float8, extract(epoch from s.revoked_at)::float8,"
    " s.client_addr, s.user_agent, u.id, u.upstream, u.subject, u.email, u.name, u.username, u.groups,"
    " u.roles, extract(epoch from u.created_at)::float8, extract(epoch from u.updated_at)::float8,"
    " extract(epoch from u.last_login_at)::float8"
    " FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = %s"
)
"""The store's ``lookup_session`` query as copied from ``gateway/store/postgres.py`` (columns expanded)."""


def _store_lookup_sql() -> tuple[str, str]:
    """The point lookup the baselines run, and where its columns came from.

    The store answers a whole batch as one JSON text; a raw point lookup selects the same session and
    user columns (``gateway.store.pgsql.SESSION_COLUMNS_S`` and ``USER_COLUMNS_U``) as one plain
    row for one hash, so the baselines keep reading what the store reads as the schema evolves; else
    the copy.
    """
    try:
        from gateway.store import pgsql
    except ImportError:
        return LOOKUP_SQL_COPY, "bench/database.py (copy)"
    session = getattr(pgsql, "SESSION_COLUMNS_S", None)
    user = getattr(pgsql, "USER_COLUMNS_U", None)
    if isinstance(session, str) and isinstance(user, str) and session.startswith("s.token_hash, s.user_id,"):
        return (f"SELECT {session}, {user} FROM sessions s JOIN users u ON u.id = s.user_id"  # noqa: S608
                " WHERE s.token_hash = %s", "gateway/store/pgsql.py (the store's columns, as a point query)")
    return LOOKUP_SQL_COPY, "bench/database.py (copy; the store's columns were not found)"


LOOKUP_SQL, LOOKUP_SQL_SOURCE = _store_lookup_sql()
"""The lookup the baselines run, and where it was taken from."""


@contextmanager
def cluster() -> Iterator[PostgresCluster]:
    """A running throwaway cluster, stopped and deleted on exit (also on errors and Ctrl-C)."""
    bindir = find_postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install postgresql")
    pg = PostgresCluster(bindir)
    try:
        pg.init()
        yield pg
    finally:
        pg.destroy()


def server_version(pg: PostgresCluster) -> str:
    """``postgres --version`` of the cluster's binaries."""
    try:
        out = subprocess.run([str(pg.bindir / "postgres"), "--version"], capture_output=True, text=True,
                             timeout=10, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def gateway_env(database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment for a gateway command: ours minus any GATEWAY_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_DATABASE_URL"] = database_url
    env.update(extra or {})
    return env


def migrate(database_url: str, cwd: Path) -> None:
    """Apply the gateway's migrations with ``gateway migrate`` (as an operator would)."""
    result = subprocess.run([sys.executable, "-m", "gateway", "migrate"], env=gateway_env(database_url),
                            cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"gateway migrate failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def _ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def seed(database_url: str, count: int, tokens_file: Path) -> float:
    """Insert ``count`` users with one valid browser session each; write the tokens, one per line.

    Returns the seconds it took. Sessions expire in 7 days, their idle deadline is 12 h away.
    """
    started = time.monotonic()
    now = time.time()
    tokens = [mint_token() for _ in range(count)]
    created, expires, idle = _ts(now), _ts(now + SESSION_LIFETIME), _ts(now + IDLE_TIMEOUT)
    users = io.StringIO()
    sessions = io.StringIO()
    for i, token in enumerate(tokens, start=1):
        users.write(f"{i}\tbench\tsubject-{i}\tuser{i}@bench.invalid\tBench User {i}\tuser{i}\t[]\t"
                    f'["user"]\t{created}\t{created}\t{created}\n')
        sessions.write(f"{hash_token(token)}\t{i}\tbrowser\t{created}\t{expires}\t{IDLE_TIMEOUT}\t{created}\t"
                       f"{idle}\t\\N\t127.0.0.1\tbench\n")
    users.seek(0)
    sessions.seek(0)
    with connect(database_url) as conn, conn.cursor() as cur:
        cur.copy_expert("COPY users (id, upstream, subject, email, name, username, groups, roles, created_at,"
                        " updated_at, last_login_at) FROM STDIN", users)
        cur.copy_expert("COPY sessions (token_hash, user_id, kind, created_at, expires_at, idle_timeout,"
                        " last_seen_at, idle_expires_at, revoked_at, client_addr, user_agent) FROM STDIN",
                        sessions)
        cur.execute("SELECT setval(pg_get_serial_sequence('users', 'id'), %s)", (count,))
    with connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        # set hint bits and statistics now, so the first measured reads do not write
        cur.execute("VACUUM (ANALYZE) users")
        cur.execute("VACUUM (ANALYZE) sessions")
    tmp = tokens_file.with_suffix(".tmp")
    tmp.write_text("".join(t + "\n" for t in tokens), encoding="ascii")
    tmp.chmod(0o600)
    tmp.replace(tokens_file)
    return time.monotonic() - started


@contextmanager
def connect(database_url: str, *, autocommit: bool = False) -> Iterator[Any]:
    """A psycopg2 connection, committed (unless autocommit) and closed on exit."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = autocommit
    try:
        if autocommit:
            yield conn  # psycopg2's `with conn` would open a transaction even here (VACUUM refuses one)
        else:
            with conn:
                yield conn
    finally:
        conn.close()


def execute(database_url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement in its own transaction; its rows (empty when it returns none)."""
    with connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(sql, tuple(params))
        return list(cur.fetchall()) if cur.description else []


def mark_sessions_seen(database_url: str, seconds_ago: float) -> None:
    """Set every session's last use to ``seconds_ago`` before now, idle deadline moved to match.

    A check that finds ``now - last_seen >= session.last_seen_grain`` (60 s) writes the use back (an
    UPDATE per session, off the request path); a recent last use means it does not.
    """
    execute(database_url, "UPDATE sessions SET last_seen_at = now() - make_interval(secs => %s),"
                          " idle_expires_at = now() - make_interval(secs => %s) + make_interval(secs => %s)",
            (seconds_ago, seconds_ago, IDLE_TIMEOUT))
    with connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("VACUUM sessions")


def sessions_touched_since(database_url: str, epoch: float) -> int:
    """How many sessions have had their use written back since ``epoch``."""
    rows = execute(database_url, "SELECT count(*) FROM sessions WHERE last_seen_at >= to_timestamp(%s)",
                   (epoch,))
    return int(rows[0][0])


def token_hashes(tokens_file: Path) -> list[str]:
    """SHA-256 hashes of the seeded tokens, in file order."""
    return [hash_token(line) for line in tokens_file.read_text(encoding="ascii").split()]
