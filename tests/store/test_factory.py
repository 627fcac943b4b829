"""The store factory's registry: which URLs it builds a store for, and what it reports about database settings."""

from __future__ import annotations

import pytest

from gateway.settings import DatabaseSettings, Duration
from gateway.store import BACKENDS, config_problems

NO_PROBLEMS: list[str] = []
SCHEME = "database_url: expected sqlite:///PATH or postgresql://USER@HOST/DB"
SQLITE_SHAPE = "database_url: SQLite URLs look like sqlite:///relative.db or sqlite:////abs/path.db"
FEED_SCHEME = "database.feed_url: expected postgresql://USER@HOST/DB (or empty: database_url)"
FEED_BESIDE_SQLITE = "database.feed_url: only for a PostgreSQL database_url (leave it empty for SQLite)"
POOL = "database.pool_min/pool_max: need 0 <= pool_min <= pool_max and pool_max >= 1"
TIMEOUTS = "database.query_timeout and database.connect_timeout: must be positive"


@pytest.mark.parametrize(("database_url", "database", "expected"), [
    pytest.param("sqlite:///gw.db", DatabaseSettings(), NO_PROBLEMS, id="sqlite-relative"),
    pytest.param("sqlite:////var/lib/gw.db", DatabaseSettings(), NO_PROBLEMS, id="sqlite-absolute"),
    pytest.param("postgresql://gw@db/gw", DatabaseSettings(), NO_PROBLEMS, id="postgresql"),
    pytest.param("postgres://gw@db/gw", DatabaseSettings(), NO_PROBLEMS, id="postgres"),
    pytest.param("postgresql://gw@pgbouncer:6432/gw", DatabaseSettings(feed_url="postgres://gw@db:5432/gw"),
                 NO_PROBLEMS, id="feed-beside-postgres"),
    pytest.param("mysql://root:hunter2@db/gw", DatabaseSettings(), [SCHEME], id="other-scheme"),
    pytest.param("hunter2", DatabaseSettings(), [SCHEME], id="no-scheme"),
    pytest.param("sqlite://gw.db", DatabaseSettings(), [SQLITE_SHAPE], id="sqlite-two-slashes"),
    pytest.param("sqlite:///", DatabaseSettings(), [SQLITE_SHAPE], id="sqlite-no-path"),
    pytest.param("postgresql://gw@db/gw", DatabaseSettings(feed_url="mysql://x:hunter2@db"), [FEED_SCHEME],
                 id="feed-not-postgres"),
    pytest.param("sqlite:///gw.db", DatabaseSettings(feed_url="postgresql://gw@db/gw"), [FEED_BESIDE_SQLITE],
                 id="feed-beside-sqlite"),
    pytest.param("sqlite:///gw.db", DatabaseSettings(feed_url="sqlite:///feed.db"), [FEED_SCHEME], id="feed-sqlite"),
    pytest.param("sqlite:///gw.db", DatabaseSettings(lookup_concurrency=0),
                 ["database.lookup_concurrency: must be at least 1"], id="no-lookup-slots"),
    pytest.param("sqlite:///gw.db", DatabaseSettings(pool_min=3, pool_max=2), [POOL], id="pool-min-over-max"),
    pytest.param("sqlite:///gw.db", DatabaseSettings(pool_max=0, pool_min=0), [POOL], id="empty-pool"),
    pytest.param("sqlite:///gw.db", DatabaseSettings(query_timeout=Duration(0)), [TIMEOUTS], id="no-query-time"),
    pytest.param("redis://hunter2@x", DatabaseSettings(feed_url="postgresql://gw@db/gw", connect_timeout=Duration(-1)),
                 [SCHEME, FEED_BESIDE_SQLITE, TIMEOUTS], id="every-problem-at-once"),
])
def test_config_problems(database_url: str, database: DatabaseSettings, expected: list[str]) -> None:
    problems = config_problems(database_url, database)
    assert problems == expected
    assert not any("hunter2" in problem for problem in problems)


@pytest.mark.parametrize("database_url", ["SQLITE:///gw.db", "PostgreSQL://gw@db/gw", "POSTGRES://gw@db/gw"])
def test_schemes_are_matched_ignoring_case(database_url: str) -> None:
    assert set(BACKENDS) == {"sqlite", "postgresql", "postgres"}
    assert config_problems(database_url, DatabaseSettings()) == []

