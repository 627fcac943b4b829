"""``/auth/check`` and ``/auth/check/{anything}``: the forward-auth endpoint for nginx, Traefik, Caddy, Envoy.

200 with identity headers (always all present) when allowed; 401 with no valid session (with
``X-Auth-Request-Login``, the encoded sign-in URL, when the original URL is known); 403 when the
session is valid but the policy refuses; 503 when the token could not be checked. In browser mode
(``check.redirect_browsers`` or ``?mode=redirect`` on the check URL) an HTML request without a session
gets a 302 to the sign-in page with the original URL as ``rd``. Bodies are empty.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import parse_qsl, quote

import structlog
from aiohttp import hdrs, web
from multidict import MultiMapping

from gateway.access import effective_roles
from gateway.core import DENY_BAD_ORIGINAL_REQUEST, Checker, Decision, Outcome
from gateway.credentials import Credential, CredentialProblem, CredentialSource, find_credential
from gateway.facts import MalformedOriginalRequest, RequestFacts, TrustedProxies, has_forwarded_headers, request_facts
from gateway.metrics import Metrics
from gateway.reply import Reply
from gateway.requestids import RequestIds
from gateway.settings import CheckSettings

log = structlog.get_logger("gateway.check")

_UNSAFE_HEADER_CHARS = re.compile(r"[\x00-\x1f\x7f]")
IDENTITY_HEADERS = ("X-Auth-Request-User", "X-Auth-Request-Email", "X-Auth-Request-Groups",
                    "X-Auth-Request-User-Id")
_EMPTY_IDENTITY = dict.fromkeys(IDENTITY_HEADERS, "")
LOGIN_HEADER = "X-Auth-Request-Login"
"""On a 401 for a known original URL: the sign-in URL with that URL as ``rd``, encoded."""
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


class _Asked(NamedTuple):
    """What a check asked, kept until it is decided: everything the reply and its log line need."""

    facts: RequestFacts | None
    redirect: bool
    credential: Credential | CredentialProblem
    started: float
    peer: str
    headers: MultiMapping[str]


class CheckEndpoint:
    """The check endpoints' logic over plain request parts; every front-end adapts to it."""

    def __init__(self, checker: Checker, check: CheckSettings, *, cookie_name: str, default_role: str,
                 login_url: str, metrics: Metrics, proxies: TrustedProxies, ids: RequestIds,
                 renewal_cookie: Callable[[str, float], str] | None = None, renewal_window: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        """``login_url`` is the gateway's public sign-in page; ``default_role`` the role a session has when
        its user holds none (reported in ``X-Auth-Request-Groups``).

        ``renewal_cookie(token, max_age)`` (with ``session.refresh``) is the ``Set-Cookie`` value that
        puts a session cookie back on the browser: an allowed check by cookie of a session renewed less
        than ``renewal_window`` seconds ago answers with it, so that the cookie's ``Max-Age`` follows the
        renewed session (proxies pass it on to the browser, as nginx's ``auth_request_set`` does)."""
        self._checker = checker
        self._renewal_cookie = renewal_cookie
        self._renewal_window = renewal_window
        self._clock = clock
        self._count = metrics.count_check
        self._request_id = ids.new
        self._proxies = proxies
        self._cookie_name = cookie_name
        self._accept_jwt = bool(check.jwt_upstreams)
        self._default_role = default_role
        self._redirect_browsers = check.redirect_browsers
        self._login_url = login_url
        self._anonymous = {status: Reply(status, _EMPTY_IDENTITY) for status in (401, 503)}
        """Replies that depend on nothing in the request; a front-end may keep their serialised form."""

    def answer(self, method: str, target: str, headers: MultiMapping[str], peer: str,
               envoy: bool) -> Reply | asyncio.Future[Reply]:
        """Answer one check: at once when no I/O is needed (a cached session), else a future.

        ``target`` is the request target as sent (path and query, still percent-encoded); ``envoy`` is
        true when the request was routed to ``/auth/check/{anything}`` (the original path follows the
        prefix). ``headers`` must look names up case-insensitively.
        """
        started = time.perf_counter()
        credential = find_credential(headers.getall(hdrs.COOKIE, ()), headers.getall(hdrs.AUTHORIZATION, ()),
                                     self._cookie_name, accept_jwt=self._accept_jwt)
        # On /auth/check/{path} (Envoy) the query string is the end user's: it never selects browser mode.
        query = target.partition("?")[2]
        redirect = self._redirect_browsers or (not envoy and "mode=" in query and _mode(query) == "redirect")
        facts: RequestFacts | None = None
        try:
            if redirect or envoy or has_forwarded_headers(headers):
                facts = request_facts(headers, peer=peer, method=method,
                                      own_path=_envoy_path(target) if envoy else "", proxies=self._proxies)
        except MalformedOriginalRequest as exc:
            log.info("check denied", outcome=DENY_BAD_ORIGINAL_REQUEST.outcome.value, reason=str(exc),
                     client=peer, request_id=self._request_id(headers.get("X-Request-ID", "")))
            return self._reply(DENY_BAD_ORIGINAL_REQUEST, _Asked(facts, redirect, credential, started, peer, headers))
        return self._checker.check(credential, facts, self._reply,
                                   _Asked(facts, redirect, credential, started, peer, headers))

    def _reply(self, decision: Decision, asked: _Asked) -> Reply:
        """The reply to a decided check: rendered, logged when denied, counted."""
        reply = self._render(decision, asked.facts, asked.redirect)
        if self._renewal_cookie is not None and decision.outcome is Outcome.ALLOW:
            reply = self._with_renewed_cookie(reply, decision, asked.credential)
        if not decision.allowed:
            event = log.error if decision.outcome is Outcome.UNAVAILABLE else log.info
            credential = asked.credential
            event("check denied", endpoint="check", outcome=decision.outcome.value, status=reply.status,
                  source=credential.source.value if isinstance(credential, Credential) else None,
                  client=asked.peer, user_id=decision.active.user.id if decision.active else None,
                  request_id=self._request_id(asked.headers.get("X-Request-ID", "")))
        self._count("check", decision.outcome.value, time.perf_counter() - asked.started)
        return reply

    def _with_renewed_cookie(self, reply: Reply, decision: Decision,
                             credential: Credential | CredentialProblem) -> Reply:
        """``reply`` with the session cookie set again when the session was renewed lately (see __init__)."""
        assert decision.active is not None and self._renewal_cookie is not None  # an ALLOW has its session
        session = decision.active.session
        renewed = session.renewed_at
        if renewed is None or not isinstance(credential, Credential):
            return reply
        if credential.source is not CredentialSource.COOKIE:
            return reply
        now = self._clock()
        if now - renewed >= self._renewal_window:
            return reply
        cookie = self._renewal_cookie(credential.token, session.expires_at - now)
        return Reply(reply.status, {**reply.headers, "Set-Cookie": cookie}, reply.body)

    def _render(self, decision: Decision, facts: RequestFacts | None, redirect: bool) -> Reply:
        status = _STATUS.get(decision.outcome, 401)
        memo = decision.memo
        key = ("check", status)
        if memo is not None:
            cached: Reply | None = memo.get(key)
            if cached is not None:
                return cached
        if status == 401 and facts is not None and (facts.url or (redirect and facts.wants_html)):
            login = self._login_url + ("?rd=" + quote(facts.url, safe="") if facts.url else "")
            if redirect and facts.wants_html:
                return Reply(302, {**_EMPTY_IDENTITY, "Location": login, "Cache-Control": "no-store"})
            # For proxies that redirect to sign-in themselves but cannot URL-encode (nginx).
            return Reply(401, {**_EMPTY_IDENTITY, LOGIN_HEADER: login})
        if decision.active is None:
            # Nothing in these depends on the request: one shared reply, serialised once per front-end.
            anonymous = self._anonymous.get(status)
            if anonymous is not None:
                return anonymous
        reply = Reply(status, identity_headers(decision, self._default_role))
        if memo is not None:
            memo[key] = reply
        return reply


def _mode(query: str) -> str:
    """The first ``mode`` parameter of a query string ('' when absent)."""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "mode":
            return value
    return ""


def _envoy_path(target: str) -> str:
    """The original path and query Envoy appended to the check prefix, still percent-encoded (decoded
    exactly once later, as the app will); raises MalformedOriginalRequest for an encoded prefix."""
    if not target.startswith(_ENVOY_PREFIX):
        raise MalformedOriginalRequest("check prefix is percent-encoded")
    return target[len(_ENVOY_PREFIX) - 1:]


class CheckHandler:
    """Adapts aiohttp requests to :class:`CheckEndpoint`."""

    def __init__(self, endpoint: CheckEndpoint) -> None:
        self._endpoint = endpoint

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one check request."""
        reply = self._endpoint.answer(request.method, request.raw_path, request.headers, request.remote or "",
                                      "tail" in request.match_info)
        if not isinstance(reply, Reply):
            reply = await reply
        return reply.to_response()
