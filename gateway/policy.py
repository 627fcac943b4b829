"""Who may pass where: the ``Policy`` seam consulted after a session is found valid.

The rule engine (ordered allow/deny rules) plugs in here; the default admits every valid session.
"""

from __future__ import annotations

from typing import Protocol

from gateway.facts import RequestFacts
from gateway.models import ActiveSession


class Policy(Protocol):
    """Decides whether a valid session may make this request. Must be fast and must not block."""

    def allows(self, active: ActiveSession, facts: RequestFacts | None) -> bool:
        """True to admit. ``facts`` is None when the caller described no original request."""


class AllowAll:
    """Admit every valid session (the default until access rules are configured)."""

    def allows(self, active: ActiveSession, facts: RequestFacts | None) -> bool:
        """Always True."""
        return True


class DenyAll:
    """Refuse every session: for maintenance windows and for testing the 403 path."""

    def allows(self, active: ActiveSession, facts: RequestFacts | None) -> bool:
        """Always False."""
        return False
