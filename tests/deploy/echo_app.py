"""A tiny app that answers every request with what it received, so tests can see what a proxy forwarded.

Any method, any path: ``200`` with JSON ``{"method", "path", "query", "headers": [[name, value], ...],
"body"}``. Headers are listed in arrival order with their original case, duplicates kept. A websocket
upgrade is accepted and the same JSON is sent as the first text message.

Run it on its own with ``python -m tests.deploy.echo_app --port 8080``, or build it in-process with
:func:`make_app`.
"""

from __future__ import annotations

import argparse
from typing import Any

from aiohttp import WSMsgType, web

MAX_ECHO_BODY = 64 * 1024


def _received(request: web.Request, body: bytes) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in request.raw_headers],
        "body": body[:MAX_ECHO_BODY].decode("utf-8", "replace"),
    }


async def echo(request: web.Request) -> web.StreamResponse:
    """Answer with the request as JSON (or, for a websocket, send it as the first message)."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(_received(request, b""))
        async for message in ws:  # echo text messages until the client closes
            if message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
        return ws
    body = await request.read()
    return web.json_response(_received(request, body))


def make_app() -> web.Application:
    """The echo application, for ``web.AppRunner`` or ``aiohttp_server``."""
    app = web.Application(client_max_size=MAX_ECHO_BODY * 16)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.deploy.echo_app [--host H] --port N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
