"""The backends by URL scheme: building a store for a database URL, and what is wrong with the database settings."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from gateway.store.base import Store

if TYPE_CHECKING:  # only annotations: gateway.settings may import gateway.store to check its section
    from gateway.settings import DatabaseSettings

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}")

SQLITE_URL_SHAPE = "database_url: SQLite URLs look like sqlite:///relative.db or sqlite:////abs/path.db"
"""The problem reported for a ``sqlite:`` URL that names no file."""


def sqlite_path(database_url: str) -> str:
    """The file path in ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or ``sqlite:///:memory:``.

    Raises ValueError (:data:`SQLITE_URL_SHAPE`) for any other shape.
    """
    prefix = "sqlite:///"
    if not database_url.lower().startswith(prefix) or len(database_url) == len(prefix):
        raise ValueError(SQLITE_URL_SHAPE)
    return database_url[len(prefix):]


def _sqlite_url_problem(database_url: str) -> str | None:
    try:
        sqlite_path(database_url)
    except ValueError as exc:
        return str(exc)
    return None


def _no_url_problem(database_url: str) -> str | None:
    # libpq parses the rest (and reports it when connecting, password masked)
    return None


def _sqlite_store(database_url: str, database: DatabaseSettings, revocation_retention: float) -> Store:
    # imported on demand so a deployment only loads the driver it uses
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore(database_url, database, revocation_retention=revocation_retention)


def _postgres_store(database_url: str, database: DatabaseSettings, revocation_retention: float) -> Store:
    from gateway.store.postgres import PostgresStore

    return PostgresStore(database_url, database, revocation_retention=revocation_retention)


@dataclass(frozen=True, slots=True)
class Backend:
    """One store implementation as the registry knows it, without loading its driver."""

    build: Callable[[str, DatabaseSettings, float], Store]
    """Builds the store (unopened) from the URL, the database settings and the revocation retention."""
    example: str
    """What its URLs look like, for problem messages."""
    url_problem: Callable[[str], str | None]
    """What is wrong with a URL of this scheme beyond the scheme, or None."""
    separate_feed: bool
    """Whether ``database.feed_url`` may give the revocation feed a connection of its own."""


_SQLITE = Backend(_sqlite_store, "sqlite:///PATH", _sqlite_url_problem, separate_feed=False)
_POSTGRES = Backend(_postgres_store, "postgresql://USER@HOST/DB", _no_url_problem, separate_feed=True)

BACKENDS: Mapping[str, Backend] = MappingProxyType({
    "sqlite": _SQLITE,
    "postgresql": _POSTGRES,
    "postgres": _POSTGRES,
})
"""Every URL scheme a store is built for (lower case), and its backend."""


def _backend(database_url: str) -> Backend | None:
    scheme, colon, _ = database_url.partition(":")
    return BACKENDS.get(scheme.lower()) if colon else None


def make_store(database_url: str, database: DatabaseSettings, *, revocation_retention: float) -> Store:
    """Build the store for ``database_url`` by its scheme, without connecting.

    ``revocation_retention`` is how many seconds logged revocations are kept (see
    :func:`gateway.store.revocation_retention`). Call ``await store.open()`` before use and
    ``await store.close()`` at shutdown. Raises ValueError for an unsupported scheme or a URL of the wrong
    shape (the message never repeats the URL, which may hold a password).
    """
    backend = _backend(database_url)
    if backend is None:
        scheme, colon, _ = database_url.partition(":")
        shown = f" {scheme!r}" if colon and _SCHEME_RE.fullmatch(scheme) else ""
        raise ValueError(f"database_url: unsupported scheme{shown} (expected one of "
                         f"{', '.join(sorted(BACKENDS))})")
    return backend.build(database_url, database, revocation_retention)


def config_problems(database_url: str, database: DatabaseSettings) -> list[str]:
    """Every problem with ``database_url`` and the ``database`` settings, each one line; empty when none.

    The URL must name a registered backend (:data:`BACKENDS`) in the shape that backend accepts;
    ``database.feed_url``, when set, must be a URL of a backend with a separate feed, beside a
    ``database_url`` of such a backend. Pool sizes, timeouts and lookup slots must make sense. Messages
    never repeat a URL (it may hold a password).
    """
    problems: list[str] = []
    backend = _backend(database_url)
    if backend is None:
        examples = dict.fromkeys(b.example for b in BACKENDS.values())
        problems.append(f"database_url: expected {' or '.join(examples)}")
    elif (problem := backend.url_problem(database_url)) is not None:
        problems.append(problem)
    if database.feed_url:
        feed_backend = _backend(database.feed_url)
        if feed_backend is None or not feed_backend.separate_feed:
            feed_examples = dict.fromkeys(b.example for b in BACKENDS.values() if b.separate_feed)
            problems.append(f"database.feed_url: expected {' or '.join(feed_examples)} (or empty: database_url)")
        elif backend is None or not backend.separate_feed:
            problems.append("database.feed_url: only for a PostgreSQL database_url (leave it empty for SQLite)")
    if database.lookup_concurrency < 1:
        problems.append("database.lookup_concurrency: must be at least 1")
    if database.pool_min < 0 or database.pool_max < 1 or database.pool_min > database.pool_max:
        problems.append("database.pool_min/pool_max: need 0 <= pool_min <= pool_max and pool_max >= 1")
    if database.query_timeout <= 0 or database.connect_timeout <= 0:
        problems.append("database.query_timeout and database.connect_timeout: must be positive")
    return problems
