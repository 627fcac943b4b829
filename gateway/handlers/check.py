"""``/auth/check`` and ``/auth/check/{anything}``: the forward-auth endpoint for nginx, Traefik, Caddy, Envoy.

200 with identity headers (always all present) when allowed; 401 with no valid session; 403 when the
session is valid but the policy refuses; 503 when the token could not be checked. In browser mode
(``check.redirect_browsers`` or ``?mode=redirect`` on the check URL) an HTML request without a session
gets a 302 to the sign-in page with the original URL as ``rd``. Bodies are empty.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import structlog
from aiohttp import hdrs, web

from gateway.core import DENY_BAD_ORIGINAL_REQUEST, Checker, Decision, Outcome
from gateway.credentials import Credential, find_credential
from gateway.facts import MalformedOriginalRequest, RequestFacts, TrustedProxies, has_forwarded_headers, request_facts
from gateway.hasura import effective_roles
from gateway.http_errors import ErrorMapper
from gateway.metrics import Metrics
from gateway.settings import Settings

log = structlog.get_logger("gateway.check")

_UNSAFE_HEADER_CHARS = re.compile(r"[\x00-\x1f\x7f]")
IDENTITY_HEADERS = ("X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups",
                    "X-Auth-Request-User-Id")
_EMPTY_IDENTITY = dict.fromkeys(IDENTITY_HEADERS, "")
_ENVOY_PREFIX = "/auth/check/"
_STATUS = {Outcome.ALLOW: 200, Outcome.FORBIDDEN: 403, Outcome.UNAVAILABLE: 503}


def header_safe(value: str) -> str:
    """Drop control characters so an upstream-supplied name can never split a header."""
    return _UNSAFE_HEADER_CHARS.sub("", value)


def identity_headers(decision: Decision, default_role: str) -> dict[str, str]:
    """The ``X-Auth-Request-*`` headers for a decision: every one present, empty when unknown."""
    if decision.active is None:
        return dict(_EMPTY_IDENTITY)
    user = decision.active.user
    return {
        "X-Auth-Request-User": header_safe(user.username or user.email or user.subject),
        "X-Auth-Request-Email": header_safe(user.email),
        "X-Auth-Request-Groups": header_safe(",".join(effective_roles(user, default_role))),
        "X-Auth-Request-User-Id": str(user.id),
    }


class CheckHandler:
    """Adapts aiohttp requests to :meth:`Checker.decide` for the proxy check endpoints."""

    def __init__(self, checker: Checker, settings: Settings, metrics: Metrics, proxies: TrustedProxies,
                 errors: ErrorMapper) -> None:
        self._checker = checker
        self._count = metrics.count_check
        self._errors = errors
        self._proxies = proxies
        self._cookie_name = settings.cookie.name
        self._accept_jwt = bool(settings.check.jwt_upstreams)
        self._default_role = settings.hasura.default_role
        self._redirect_browsers = settings.check.redirect_browsers
        self._login_url = settings.public_url.rstrip("/") + "/login"

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one check request."""
        started = time.perf_counter()
        headers = request.headers
        credential = find_credential(headers.getall(hdrs.COOKIE, ()), headers.getall(hdrs.AUTHORIZATION, ()),
                                     self._cookie_name,
                                     accept_jwt=self._accept_jwt)
        tail = request.match_info.get("tail")
        # On /auth/check/{path} (Envoy) the query string is the end user's: it never selects browser mode.
        query = request.query_string
        redirect = self._redirect_browsers or (
            tail is None and "mode=" in query and request.query.get("mode") == "redirect")
        facts: RequestFacts | None = None
        decision: Decision
        try:
            if redirect or tail is not None or has_forwarded_headers(headers):
                facts = request_facts(headers, peer=request.remote or "", method=request.method,
                                      own_path=self._envoy_path(request) if tail is not None else "",
                                      proxies=self._proxies)
        except MalformedOriginalRequest as exc:
            decision = DENY_BAD_ORIGINAL_REQUEST
            log.info("check denied", outcome=decision.outcome.value, reason=str(exc), client=request.remote,
                     request_id=self._errors.request_id(request))
        else:
            decision = await self._checker.decide(credential, facts)
        response = self._render(decision, facts, redirect)
        if not decision.allowed:
            self._log_denial(request, decision, credential, response.status)
        self._count("check", decision.outcome.value, time.perf_counter() - started)
        return response

    @staticmethod
    def _envoy_path(request: web.Request) -> str:
        """The original path and query Envoy appended to the check prefix, still percent-encoded (decoded
        exactly once later, as the app will); raises MalformedOriginalRequest for an encoded prefix."""
        raw = request.raw_path
        if not raw.startswith(_ENVOY_PREFIX):
            raise MalformedOriginalRequest("check prefix is percent-encoded")
        return raw[len(_ENVOY_PREFIX) - 1:]

    def _render(self, decision: Decision, facts: RequestFacts | None, redirect: bool) -> web.Response:
        status = _STATUS.get(decision.outcome, 401)
        memo = decision.memo
        headers = memo.get("check") if memo is not None else None
        if headers is None:
            headers = identity_headers(decision, self._default_role)
            if memo is not None:
                memo["check"] = headers
        if status == 401 and redirect and facts is not None and facts.wants_html:
            target = self._login_url + ("?rd=" + quote(facts.url, safe="") if facts.url else "")
            return web.Response(status=302, headers={**headers, "Location": target, "Cache-Control": "no-store"})
        return web.Response(status=status, headers=headers)

    def _log_denial(self, request: web.Request, decision: Decision, credential: object, status: int) -> None:
        event = log.error if decision.outcome is Outcome.UNAVAILABLE else log.info
        source = credential.source.value if isinstance(credential, Credential) else None
        event("check denied", endpoint="check", outcome=decision.outcome.value, status=status,
              source=source, client=request.remote,
              user_id=decision.active.user.id if decision.active else None,
              request_id=self._errors.request_id(request))
