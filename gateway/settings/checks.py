"""Every part of the gateway checks its own section: the list :func:`gateway.settings.load_settings` and
``gateway check-config`` go through.

Each check is handed the whole Settings only to pass each owner the section (or the few values) it
reads; the judging is the owner's. Adding a section means adding its owner's check here.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.access import access_problems, enrolment_problems
from gateway.cache import cache_problems
from gateway.cookies import cookie_problems
from gateway.hasura import hasura_problems
from gateway.logging import logging_problems
from gateway.login import bearer_upstream_problems, login_problems
from gateway.sessions import session_problems
from gateway.settings.sections import DatabaseSettings, Settings, process_problems
from upstreams import upstreams_problems

SettingsCheck = Callable[[Settings], list[str]]
"""One part's check: every problem with the settings it reads, each one line naming the setting."""


def _database_problems(database_url: str, database: DatabaseSettings) -> list[str]:
    """Problems with ``database_url`` and ``[database]`` (messages never repeat a URL: it may hold a
    password)."""
    problems: list[str] = []
    scheme = database_url.split(":", 1)[0].lower()
    if scheme not in {"sqlite", "postgresql", "postgres"}:
        problems.append("database_url: expected sqlite:///PATH or postgresql://USER@HOST/DB")
    elif scheme == "sqlite" and not database_url.startswith("sqlite:///"):
        problems.append("database_url: SQLite URLs look like sqlite:///relative.db or sqlite:////abs/path.db")
    if database.feed_url:
        feed_scheme = database.feed_url.split(":", 1)[0].lower()
        if feed_scheme not in {"postgresql", "postgres"}:
            problems.append("database.feed_url: expected postgresql://USER@HOST/DB (or empty: database_url)")
        elif scheme not in {"postgresql", "postgres"}:
            problems.append("database.feed_url: only for a PostgreSQL database_url (leave it empty for SQLite)")
    if database.lookup_concurrency < 1:
        problems.append("database.lookup_concurrency: must be at least 1")
    if database.pool_min < 0 or database.pool_max < 1 or database.pool_min > database.pool_max:
        problems.append("database.pool_min/pool_max: need 0 <= pool_min <= pool_max and pool_max >= 1")
    if database.query_timeout <= 0 or database.connect_timeout <= 0:
        problems.append("database.query_timeout and database.connect_timeout: must be positive")
    return problems


CHECKS: tuple[SettingsCheck, ...] = (
    process_problems,
    lambda s: logging_problems(s.log_format, s.log_level),
    lambda s: _database_problems(s.database_url, s.database),
    lambda s: cookie_problems(s.cookie),
    lambda s: session_problems(s.session),
    lambda s: cache_problems(s.cache),
    lambda s: hasura_problems(s.hasura),
    lambda s: upstreams_problems(s.upstreams),
    lambda s: login_problems(s.login, session_cookie=s.cookie.name, redirect_hosts=s.redirect_hosts,
                             allow_http=s.public_url.startswith("http://")),
    lambda s: enrolment_problems(s.enrolment.emails, s.enrolment.domains),
    lambda s: bearer_upstream_problems(s.check.jwt_upstreams, s.upstreams),
    lambda s: access_problems(s.access.default, s.access.rules),
)
"""Each part's check, in the order their problems are reported."""


def settings_problems(settings: Settings) -> list[str]:
    """Every problem any part finds with ``settings`` (empty when they can be served)."""
    return [problem for check in CHECKS for problem in check(settings)]
