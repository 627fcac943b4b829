"""Every part of the gateway checks its own section: the list :func:`gateway.settings.load_settings` and
``gateway check-config`` go through.

Each check is handed the whole Settings only to pass each owner the section (or the few values) it
reads; the judging is the owner's. Adding a section means adding its owner's check here.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.access import access_problems, enrolment_problems
from gateway.apitokens import api_token_problems
from gateway.cache import cache_problems
from gateway.cookies import cookie_problems
from gateway.device import device_grant_problems
from gateway.hasura import hasura_problems
from gateway.logging import logging_problems
from gateway.login import bearer_upstream_problems, login_problems
from gateway.sessions import session_problems
from gateway.settings.sections import Settings, process_problems
from gateway.store import config_problems as store_problems
from upstreams import upstreams_problems

SettingsCheck = Callable[[Settings], list[str]]
"""One part's check: every problem with the settings it reads, each one line naming the setting."""


CHECKS: tuple[SettingsCheck, ...] = (
    process_problems,
    lambda s: logging_problems(s.log_format, s.log_level),
    lambda s: store_problems(s.database_url, s.database),
    lambda s: cookie_problems(s.cookie),
    lambda s: session_problems(s.session),
    lambda s: api_token_problems(s.session),
    lambda s: device_grant_problems(s.session),
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
