"""``GET|POST /auth/webhook``: the Hasura auth webhook, exactly per Hasura's contract.

GET mode reads the client's headers from the request itself; POST mode from the JSON body's
``headers`` (``request`` may be an object, a list or null). 200 with string session variables allows;
401 is the only deny (Hasura turns anything else into an internal error). A database outage answers 401
with an error log, so Hasura refuses the request rather than failing open. Malformed POST bodies are a
protocol error, answered 400 (413 when too large): Hasura never sends them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import NamedTuple, cast

import structlog
from aiohttp import hdrs, web
from multidict import MultiMapping

from gateway.access import choose_role
from gateway.core import Checker, Decision, Outcome
from gateway.credentials import Credential, CredentialProblem, find_credential
from gateway.errors import GatewayError, PayloadTooLarge
from gateway.hasura import (
    anonymous_variables,
    encode_variables,
    header_lookup,
    parse_post_body,
    session_variables,
)
from gateway.http_errors import error_reply
from gateway.metrics import Metrics
from gateway.reply import Reply
from gateway.requestids import RequestIds
from gateway.settings import HasuraSettings

log = structlog.get_logger("gateway.webhook")

_JSON = {"Content-Type": "application/json"}


class _Asked(NamedTuple):
    """What a webhook call asked, kept until it is decided: everything the reply and its log line need."""

    credential: Credential | CredentialProblem
    roles: list[str] | None
    started: float
    peer: str
    headers: MultiMapping[str]


class WebhookEndpoint:
    """The webhook's logic over plain request parts; every front-end adapts to it."""

    def __init__(self, checker: Checker, hasura: HasuraSettings, *, cookie_name: str, accept_jwt: bool,
                 metrics: Metrics, ids: RequestIds, clock: Callable[[], float]) -> None:
        """``accept_jwt`` admits upstream-issued bearer JWTs (``check.jwt_upstreams`` is set)."""
        self._checker = checker
        self._count = metrics.count_check
        self._request_id = ids.new
        self._hasura = hasura
        self._default_role = hasura.default_role
        self._anonymous = Reply(200, _JSON, encode_variables(anonymous_variables(hasura.anonymous_role))) \
            if hasura.anonymous_role else None
        self._cookie_name = cookie_name
        self._accept_jwt = accept_jwt
        self.max_body = hasura.max_body_bytes
        """POST bodies longer than this are refused (413) by the front-end before they are read."""
        self._clock = clock
        self._deny = Reply(401, _JSON, b'{"error":"unauthenticated"}')

    def answer(self, method: str, headers: MultiMapping[str], body: bytes, peer: str) -> Reply | asyncio.Future[Reply]:
        """Answer one webhook call: at once when no I/O is needed (a cached session), else a future.

        ``body`` is the whole POST body (ignored for GET); ``headers`` must look names up case-insensitively.
        """
        started = time.perf_counter()
        if method == hdrs.METH_POST:
            try:
                client = header_lookup(parse_post_body(body))
            except GatewayError as exc:
                return self.refuse(exc, headers)
            cookies = client.get("cookie", ())
            authorization = client.get("authorization", ())
            roles = client.get("x-hasura-role")
        else:
            cookies = headers.getall(hdrs.COOKIE, ())
            authorization = headers.getall(hdrs.AUTHORIZATION, ())
            roles = headers.getall("X-Hasura-Role", None)
        credential = find_credential(cookies, authorization, self._cookie_name, accept_jwt=self._accept_jwt)
        return self._checker.check(credential, None, self._reply, _Asked(credential, roles, started, peer, headers))

    def refuse(self, exc: GatewayError, headers: MultiMapping[str]) -> Reply:
        """Log and answer a malformed call (Hasura never sends one)."""
        request_id = self._request_id(headers.get("X-Request-ID", ""))
        log.info("request refused", path="/auth/webhook", status=exc.status, error=exc.code, reason=exc.message,
                 request_id=request_id)
        return error_reply(headers.get("Accept", ""), request_id, exc.status, exc.code, exc.message, exc.headers,
                           title=exc.title, link=exc.link)

    def _reply(self, decision: Decision, asked: _Asked) -> Reply:
        """The reply to a decided call: session variables or the deny, logged when denied, counted."""
        roles = asked.roles
        outcome = decision.outcome
        reply: Reply | None = None
        if outcome is Outcome.ALLOW and decision.active is not None:
            reply = self._allowed(decision, roles)
            if reply is None:
                outcome = Outcome.FORBIDDEN
        elif outcome is Outcome.MISSING and self._anonymous is not None:
            outcome = Outcome.ALLOW
            reply = self._anonymous
        if reply is None:
            reply = self._deny
            event = log.error if outcome is Outcome.UNAVAILABLE else log.info
            credential = asked.credential
            event("webhook denied", endpoint="webhook", outcome=outcome.value,
                  source=credential.source.value if isinstance(credential, Credential) else None,
                  requested_role=roles[-1][:64] if roles else None, client=asked.peer,
                  user_id=decision.active.user.id if decision.active else None,
                  request_id=self._request_id(asked.headers.get("X-Request-ID", "")))
        self._count("webhook", outcome.value, time.perf_counter() - asked.started)
        return reply

    def _allowed(self, decision: Decision, roles: list[str] | None) -> Reply | None:
        """The session-variables answer for an allowed session, or None when the requested role is not held.

        Rendered once per session, role and second (max-age counts down by the second) and kept in the
        cached session's memo: repeated calls for a known token do no JSON work.
        """
        # Several X-Hasura-Role headers are ambiguous: refuse rather than guess.
        if roles and len(roles) > 1:
            return None
        requested = roles[0] if roles else None
        now = self._clock()
        second = int(now)
        memo = decision.memo
        key = ("webhook", requested)
        if memo is not None:
            cached = memo.get(key)
            if cached is not None and cached[0] == second:
                return cast(Reply | None, cached[1])
        active = decision.active
        assert active is not None
        role = choose_role(active.user, requested, self._default_role)
        reply = None
        if role is not None:
            reply = Reply(200, _JSON, encode_variables(session_variables(active, role, self._hasura, now)))
        if memo is not None:
            memo[key] = (second, reply)
        return reply


class WebhookHandler:
    """Adapts aiohttp requests to :class:`WebhookEndpoint`."""

    def __init__(self, endpoint: WebhookEndpoint) -> None:
        self._endpoint = endpoint

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one webhook call."""
        body = b""
        if request.method == hdrs.METH_POST:
            try:
                body = await self._read_body(request)
            except GatewayError as exc:
                return self._endpoint.refuse(exc, request.headers).to_response()
        reply = self._endpoint.answer(request.method, request.headers, body, request.remote or "")
        if not isinstance(reply, Reply):
            reply = await reply
        return reply.to_response()

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._endpoint.max_body
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"webhook body over {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"webhook body over {limit} bytes")
        return b"".join(chunks)
