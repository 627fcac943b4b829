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

import structlog
from aiohttp import hdrs, web

from gateway.core import Checker, Outcome
from gateway.credentials import Credential, find_credential
from gateway.errors import PayloadTooLarge
from gateway.hasura import anonymous_variables, choose_role, header_lookup, parse_post_body, session_variables
from gateway.metrics import Metrics
from gateway.settings import Settings

log = structlog.get_logger("gateway.webhook")

_DENY_BODY = b'{"error":"unauthenticated"}'


def _json(body: Mapping[str, str], status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


class WebhookHandler:
    """Adapts Hasura's webhook calls to :meth:`Checker.decide`."""

    def __init__(self, checker: Checker, settings: Settings, metrics: Metrics, clock: Callable[[], float]) -> None:
        self._checker = checker
        self._metrics = metrics
        self._hasura = settings.hasura
        self._cookie_name = settings.cookie.name
        self._max_body = settings.hasura.max_body_bytes
        self._clock = clock

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one webhook call."""
        started = time.perf_counter()
        if request.method == hdrs.METH_POST:
            client = header_lookup(parse_post_body(await self._read_body(request)))
            cookies = client.get("cookie", ())
            authorization = client.get("authorization", ())
            roles = client.get("x-hasura-role")
        else:
            headers = request.headers
            cookies = headers.getall(hdrs.COOKIE, ())
            authorization = headers.getall(hdrs.AUTHORIZATION, ())
            roles = headers.getall("X-Hasura-Role", None)
        credential = find_credential(cookies, authorization, self._cookie_name)
        decision = await self._checker.decide(credential, None)
        outcome = decision.outcome
        response: web.Response | None = None
        if decision.active is not None and outcome is Outcome.ALLOW:
            # Several X-Hasura-Role headers are ambiguous: refuse rather than guess.
            role = None if roles and len(roles) > 1 else choose_role(
                decision.active.user, roles[0] if roles else None, self._hasura.default_role)
            if role is None:
                outcome = Outcome.FORBIDDEN
            else:
                response = _json(session_variables(decision.active, role, self._hasura, self._clock()))
        elif outcome is Outcome.MISSING and self._hasura.anonymous_role:
            outcome = Outcome.ALLOW
            response = _json(anonymous_variables(self._hasura.anonymous_role))
        if response is None:
            response = web.Response(status=401, body=_DENY_BODY, content_type="application/json")
            event = log.error if outcome is Outcome.UNAVAILABLE else log.info
            event("webhook denied", endpoint="webhook", outcome=outcome.value,
                  source=credential.source.value if isinstance(credential, Credential) else None,
                  requested_role=roles[-1][:64] if roles else None, client=request.remote,
                  user_id=decision.active.user.id if decision.active else None)
        self._metrics.count_check("webhook", outcome.value, time.perf_counter() - started)
        return response

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
