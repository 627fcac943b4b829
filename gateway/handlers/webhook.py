"""``GET|POST /auth/webhook``: the Hasura auth webhook, exactly per Hasura's contract.

GET mode reads the client's headers from the request itself; POST mode from the JSON body's
``headers`` (``request`` may be an object, a list or null). 200 with string session variables allows;
401 is the only deny (Hasura turns anything else into an internal error). A database outage answers 401
with an error log, so Hasura refuses the request rather than failing open. Malformed POST bodies are a
protocol error, answered 400 (413 when too large): Hasura never sends them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import cast

import structlog
from aiohttp import hdrs, web

from gateway.core import Checker, Decision, Outcome
from gateway.credentials import Credential, find_credential
from gateway.errors import GatewayError, PayloadTooLarge
from gateway.hasura import anonymous_variables, choose_role, header_lookup, parse_post_body, session_variables
from gateway.http_errors import ErrorMapper
from gateway.metrics import Metrics
from gateway.settings import Settings

log = structlog.get_logger("gateway.webhook")

_DENY_BODY = b'{"error":"unauthenticated"}'


_JSON = {"Content-Type": "application/json"}


def _json(body: Mapping[str, str]) -> bytes:
    return json.dumps(body).encode()


class WebhookHandler:
    """Adapts Hasura's webhook calls to :meth:`Checker.decide`."""

    def __init__(self, checker: Checker, settings: Settings, metrics: Metrics, errors: ErrorMapper,
                 clock: Callable[[], float]) -> None:
        self._checker = checker
        self._count = metrics.count_check
        self._errors = errors
        self._hasura = settings.hasura
        self._default_role = settings.hasura.default_role
        self._anonymous = _json(anonymous_variables(settings.hasura.anonymous_role)) \
            if settings.hasura.anonymous_role else None
        self._cookie_name = settings.cookie.name
        self._accept_jwt = bool(settings.check.jwt_upstreams)
        self._max_body = settings.hasura.max_body_bytes
        self._clock = clock

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one webhook call."""
        started = time.perf_counter()
        if request.method == hdrs.METH_POST:
            try:
                client = header_lookup(parse_post_body(await self._read_body(request)))
            except GatewayError as exc:
                return self._errors.render(request, exc)
            cookies = client.get("cookie", ())
            authorization = client.get("authorization", ())
            roles = client.get("x-hasura-role")
        else:
            headers = request.headers
            cookies = headers.getall(hdrs.COOKIE, ())
            authorization = headers.getall(hdrs.AUTHORIZATION, ())
            roles = headers.getall("X-Hasura-Role", None)
        credential = find_credential(cookies, authorization, self._cookie_name,
                                     accept_jwt=self._accept_jwt)
        decision = await self._checker.decide(credential, None)
        outcome = decision.outcome
        body: bytes | None = None
        if outcome is Outcome.ALLOW and decision.active is not None:
            body = self._allowed_body(decision, roles)
            if body is None:
                outcome = Outcome.FORBIDDEN
        elif outcome is Outcome.MISSING and self._anonymous is not None:
            outcome = Outcome.ALLOW
            body = self._anonymous
        if body is None:
            response = web.Response(status=401, body=_DENY_BODY, headers=_JSON)
            event = log.error if outcome is Outcome.UNAVAILABLE else log.info
            event("webhook denied", endpoint="webhook", outcome=outcome.value,
                  source=credential.source.value if isinstance(credential, Credential) else None,
                  requested_role=roles[-1][:64] if roles else None, client=request.remote,
                  user_id=decision.active.user.id if decision.active else None,
                  request_id=self._errors.request_id(request))
        else:
            response = web.Response(body=body, headers=_JSON)
        self._count("webhook", outcome.value, time.perf_counter() - started)
        return response

    def _allowed_body(self, decision: Decision, roles: list[str] | None) -> bytes | None:
        """The session-variables body for an allowed session, or None when the requested role is not held.

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
                return cast(bytes | None, cached[1])
        active = decision.active
        assert active is not None
        role = choose_role(active.user, requested, self._default_role)
        body = None if role is None else _json(session_variables(active, role, self._hasura, now))
        if memo is not None:
            memo[key] = (second, body)
        return body

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self._max_body:
            raise PayloadTooLarge(f"webhook body over {self._max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(self._max_body + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > self._max_body:
                raise PayloadTooLarge(f"webhook body over {self._max_body} bytes")
        return b"".join(chunks)
