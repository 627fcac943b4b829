"""Who is asking, for the pages people use on their own behalf (``/tokens``, ``/device``).

One place answers the questions those pages share: which session a request carries (the session cookie,
or first a bearer token where one is accepted), whether it is a browser session sent as the cookie (only
those may change anything: a leaked API token must not mint tokens or approve devices), and whether a
changing request comes from our own pages (:mod:`gateway.csrf`: our own origin, and the session-bound
token for that page's purpose). What a refusal says, and how it is counted, stays with each page.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from gateway.core import Checker, Outcome
from gateway.credentials import Credential, CredentialSource, find_credential
from gateway.csrf import cross_site_problem, token_problem
from gateway.errors import StoreUnavailable
from gateway.facts import TrustedProxies, client_address
from gateway.models import ActiveSession
from gateway.redirects import RedirectPolicy

_SIGNED_IN = (Outcome.ALLOW, Outcome.FORBIDDEN)
"""Outcomes with a live session behind them (the access rules do not apply to these pages)."""


class Requesters:
    """Finds and judges the person behind a self-service request; one per page handler."""

    def __init__(self, checker: Checker, proxies: TrustedProxies, redirects: RedirectPolicy, *,
                 cookie_name: str) -> None:
        """``redirects`` says which origins are ours (those a sign-in may return to)."""
        self._checker = checker
        self._proxies = proxies
        self._redirects = redirects
        self._cookie_name = cookie_name

    def client(self, request: web.Request) -> str:
        """The client's address (the forwarded one only from trusted proxies), for logs and audit rows."""
        return client_address(request.headers, request.remote or "", self._proxies)[:64]

    def cookie_credential(self, request: web.Request) -> Credential | None:
        """The session cookie's credential, or None."""
        found = find_credential(request.headers.getall(hdrs.COOKIE, ()), (), self._cookie_name)
        return found if isinstance(found, Credential) else None

    async def session(self, credential: Credential) -> ActiveSession | None:
        """The credential's live session (any kind), or None; StoreUnavailable when it cannot be told."""
        decision = await self._checker.decide(credential, None)
        if decision.outcome is Outcome.UNAVAILABLE:
            raise StoreUnavailable()
        return decision.active if decision.active is not None and decision.outcome in _SIGNED_IN else None

    async def browser_session(self, request: web.Request) -> tuple[Credential | None, ActiveSession | None]:
        """The session cookie and its live browser session, or Nones (no cookie, or not a browser's)."""
        credential = self.cookie_credential(request)
        if credential is None:
            return None, None
        active = await self.session(credential)
        if active is None or active.session.kind != "browser":
            return None, None
        return credential, active

    async def any_session(self, request: web.Request) -> tuple[Credential | None, ActiveSession | None]:
        """The request's credential (a bearer token first, else the cookie) and its live session, or Nones."""
        found = find_credential(request.headers.getall(hdrs.COOKIE, ()),
                                request.headers.getall(hdrs.AUTHORIZATION, ()), self._cookie_name)
        if not isinstance(found, Credential):
            return None, None
        active = await self.session(found)
        return (found, active) if active is not None else (None, None)

    @staticmethod
    def is_browser(credential: Credential, active: ActiveSession) -> bool:
        """True for a browser session sent as the session cookie: the only kind that may change anything."""
        return credential.source is CredentialSource.COOKIE and active.session.kind == "browser"

    def forgery_problem(self, request: web.Request, credential: Credential, sent_token: str,
                        purpose: bytes) -> str | None:
        """Why a changing request may not be ours (another site, or a missing or wrong CSRF token for
        ``purpose``), for the log line; None when it comes from our page."""
        refusal = cross_site_problem(request.headers.getall("Sec-Fetch-Site", ()),
                                     request.headers.getall(hdrs.ORIGIN, ()), self._redirects)
        return refusal if refusal is not None else token_problem(credential.token, sent_token, purpose)
