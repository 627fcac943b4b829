"""Every error mapped to HTTP here: JSON for API clients, a small HTML page for browsers.

Cold-path handlers are wrapped by :meth:`ErrorMapper.guard`, which binds the request id to every log line
and turns GatewayErrors (and anything unexpected: logged, 500 without internals) into responses. The two
check-path handlers are not wrapped, because an aiohttp middleware or wrapper costs a measurable share
of a cached check: they never raise for an outcome, and render their few errors through the same
:meth:`ErrorMapper.render`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import GatewayError, OAuthError
from gateway.pages import PAGE_HEADERS, error_page
from gateway.reply import Reply
from gateway.requestids import REQUEST_ID, RequestIds

log = structlog.get_logger("gateway.http")

_TITLES = {400: "Bad request", 401: "Sign-in required", 403: "Not allowed", 404: "Not found",
           405: "Method not allowed", 411: "Length required", 413: "Request too large", 429: "Too many requests",
           503: "Temporarily unavailable"}


def wants_json(request: web.Request) -> bool:
    """True unless the client asks for HTML (browsers do; API clients and proxies mostly do not)."""
    return accepts_json(request.headers.get("Accept", ""))


def accepts_json(accept: str) -> bool:
    """:func:`wants_json` for a raw ``Accept`` value."""
    return "application/json" in accept or "text/html" not in accept


def error_reply(accept: str, request_id: str, status: int, code: str, message: str,
                headers: Mapping[str, str] | None = None, *, title: str = "",
                link: tuple[str, str] | None = None, oauth: bool = False) -> Reply:
    """Render one error as JSON or HTML by ``Accept``; the only place error bodies are made.

    With ``oauth`` (an OAuth 2.0 endpoint's error, RFC 6749 §5.2) always JSON, the message also as
    ``error_description``, and never cached.
    """
    if oauth:
        body = json.dumps({"error": code, "error_description": message, "message": message,
                           "request_id": request_id})
        return Reply(status, {**(headers or {}), "Cache-Control": "no-store",
                              "Content-Type": "application/json; charset=utf-8"}, body.encode())
    if accepts_json(accept):
        body = json.dumps({"error": code, "message": message, "request_id": request_id})
        return Reply(status, {**(headers or {}), "Content-Type": "application/json; charset=utf-8"},
                     body.encode())
    title = title or _TITLES.get(status, "Something went wrong")
    out_headers = dict(PAGE_HEADERS)
    out_headers.update(headers or {})
    out_headers["Content-Type"] = "text/html; charset=utf-8"
    return Reply(status, out_headers, error_page(title, message, status, request_id, link).encode())


def error_response(request: web.Request, status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None, *, title: str = "",
                   link: tuple[str, str] | None = None, oauth: bool = False) -> web.Response:
    """:func:`error_reply` for an aiohttp request, as an aiohttp response."""
    return error_reply(request.headers.get("Accept", ""), request.get(REQUEST_ID, ""), status, code, message,
                       headers, title=title, link=link, oauth=oauth).to_response()


class ErrorMapper:
    """Renders GatewayErrors for aiohttp requests, each with its request id (from ``ids``)."""

    def __init__(self, ids: RequestIds) -> None:
        self.request_id = ids.of

    def render(self, request: web.Request, exc: GatewayError) -> web.Response:
        """Log and render one GatewayError."""
        log.info("request refused", path=request.path, status=exc.status, error=exc.code, reason=exc.message,
                 request_id=self.request_id(request))
        return error_response(request, exc.status, exc.code, exc.message, exc.headers, title=exc.title,
                              link=exc.link, oauth=isinstance(exc, OAuthError))

    def guard(self, handler: Handler) -> Handler:
        """Wrap a cold-path handler: request id on every log line, every error mapped to a response."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=self.request_id(request))
            try:
                return await handler(request)
            except GatewayError as exc:
                return self.render(request, exc)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                log.info("request refused", path=request.path, status=exc.status, error=exc.reason)
                return error_response(request, exc.status, exc.reason.lower().replace(" ", "_"), exc.reason,
                                      {k: v for k, v in exc.headers.items() if k.lower() == "allow"})
            except Exception:
                log.exception("unhandled error", path=request.path)
                return error_response(request, 500, "internal_error", "The gateway hit an unexpected error.")

        return guarded


async def not_found(request: web.Request) -> web.Response:
    """The catch-all route: 405 with ``Allow`` when another route has this path, else 404."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.canonical == "/{tail}":
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    raise web.HTTPNotFound()
