"""aiohttp's HTTP protocol, hardened for a gateway: what it answers to bad bytes, and chunked requests.

Two guards, applied to every connection aiohttp serves (alone, or after the fast lane hands one over):

- **A malformed request is answered without quoting it.** aiohttp's own 400 quotes the offending line
  back, and its log line carries it with a traceback; that line is often ``Cookie: gw_session=<token>``.
  Here the answer is a fixed ``400 Bad Request`` naming only the kind of problem, the log line has no
  request bytes, and the connection is closed.
- **A request with a ``Transfer-Encoding`` is refused with 411 and the connection closed.** aiohttp's C
  parser (3.14.5, the newest) carries a chunked request's last trailer into the *next* request on the
  connection (see docs/aiohttp-trailer-carry-over.md): a trailer ``Cookie: gw_session=<token>`` would
  sign in the next, credential-less request. Nothing the gateway serves needs a chunked body (proxies
  send none with a check; Hasura, browsers and API clients send ``Content-Length``), so the request is
  refused, and closing the connection drops anything parsed after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.http_errors import error_response

log = structlog.get_logger("gateway.protocol")

BAD_REQUEST_TEXT = "400 Bad Request: the request is not well-formed HTTP/1.1.\n"
"""The body of every 400 for bytes that do not parse as HTTP (both front-ends): it never quotes them."""
_SERVER_ERROR = "500 Internal Server Error\n"


class GatewayRequestHandler(RequestHandler):
    """aiohttp's protocol with an answer to unparseable requests that never echoes them."""

    __slots__ = ()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A fixed plain-text answer for ``status``, one log line without request bytes; closes afterwards."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:
            log.error("request failed", status=status, error=type(exc).__name__ if exc else None,
                      client=request.remote)
            text = _SERVER_ERROR
        else:
            log.info("malformed request refused", status=status, error=type(exc).__name__ if exc else None,
                     client=request.remote)
            text = BAD_REQUEST_TEXT if status == 400 else f"{status}\n"
        response = web.Response(status=status, text=text, content_type="text/plain")
        response.force_close()
        return response


def protocol_factory(server: web.Server) -> Callable[[], asyncio.Protocol]:
    """A factory of :class:`GatewayRequestHandler` for ``server`` (what ``server()`` would make, hardened).

    Call with the loop running. aiohttp has no public hook for its protocol class, so this repeats what
    ``web.Server.__call__`` does with the server's own keyword arguments.
    """
    loop = asyncio.get_running_loop()
    kwargs = dict(server._kwargs)

    def make() -> asyncio.Protocol:
        return GatewayRequestHandler(server, loop=loop, **kwargs)

    return make


@web.middleware
async def refuse_transfer_encoding(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a request that has a ``Transfer-Encoding`` with 411 and close the connection (see above)."""
    if hdrs.TRANSFER_ENCODING in request.headers:
        log.warning("request with a transfer coding refused", path=request.path, client=request.remote)
        response = error_response(request, 411, "length_required",
                                  "Send the request body with Content-Length, not chunked.")
        response.force_close()
        return response
    return await handler(request)
