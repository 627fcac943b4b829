"""The one request middleware: request id on every log line, and every error mapped to HTTP here.

Gateway errors become their status with a JSON body for API clients or a small HTML page for browsers;
anything unexpected is logged with its traceback and answered 500 without internals.
"""

from __future__ import annotations

import itertools
import json
import os
import re

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import GatewayError
from gateway.pages import PAGE_HEADERS, error_page

log = structlog.get_logger("gateway.http")

REQUEST_ID = web.RequestKey("request_id", str)
"""Where the middleware keeps the request id on each request."""

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_TITLES = {400: "Bad request", 401: "Sign-in required", 403: "Not allowed", 404: "Not found",
           405: "Method not allowed", 413: "Request too large", 429: "Too many requests",
           503: "Temporarily unavailable"}


def wants_json(request: web.Request) -> bool:
    """True unless the client asks for HTML (browsers do; API clients and proxies mostly do not)."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept or "text/html" not in accept


def error_response(request: web.Request, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None, *, title: str = "",
                   link: tuple[str, str] | None = None) -> web.Response:
    """Render one error as JSON or HTML by ``Accept``; the only place error bodies are made."""
    request_id = request.get(REQUEST_ID, "")
    if wants_json(request):
        body = json.dumps({"error": code, "message": message, "request_id": request_id})
        return web.Response(status=status, text=body, content_type="application/json", headers=headers)
    title = title or _TITLES.get(status, "Something went wrong")
    out_headers = dict(PAGE_HEADERS)
    out_headers.update(headers or {})
    return web.Response(status=status, text=error_page(title, message, status, request_id, link),
                        content_type="text/html", headers=out_headers)


def make_middleware(trust_request_id: bool = True) -> Middleware:
    """Build the middleware; request ids come from ``X-Request-ID`` when sane, else a process counter."""
    counter = itertools.count(1)
    prefix = f"{os.getpid():x}-"

    @web.middleware
    async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        incoming = request.headers.get("X-Request-ID", "") if trust_request_id else ""
        request_id = incoming if incoming and _REQUEST_ID_RE.fullmatch(incoming) else prefix + str(next(counter))
        request[REQUEST_ID] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            return await handler(request)
        except GatewayError as exc:
            log.info("request refused", path=request.path, status=exc.status, error=exc.code,
                     reason=exc.message)
            return error_response(request, exc.status, exc.code, exc.message, exc.headers, title=exc.title,
                                  link=exc.link)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            log.info("request refused", path=request.path, status=exc.status, error=exc.reason)
            return error_response(request, exc.status, exc.reason.lower().replace(" ", "_"), exc.reason,
                                  {k: v for k, v in exc.headers.items() if k.lower() == "allow"})
        except Exception:
            log.exception("unhandled error", path=request.path)
            return error_response(request, 500, "internal_error", "The gateway hit an unexpected error.")

    return gateway_middleware
