"""A tiny app that answers every request with what it received, so tests can see what a proxy forwarded.

Any method, any path: ``200`` with JSON ``{"method", "path", "query", "headers": [[name, value], ...],
"body"}``. Headers are listed in arrival order with their original case, duplicates kept. A websocket
upgrade is accepted and the same JSON is sent as the first text message.

Run it on its own with ``python -m tests.deploy.echo_app --port 8080 [--record FILE]``, or build it
in-process with :func:`make_app`. With ``--record``, every request's method, path (decoded, as the app
routes it) and raw target are appended to FILE as one JSON line before it is answered, so a test can
tell exactly what reached the app, whatever the client was shown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
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


RECORD = web.AppKey("record", Path)


async def echo(request: web.Request) -> web.StreamResponse:
    """Answer with the request as JSON (or, for a websocket, send it as the first message)."""
    record = request.app.get(RECORD)
    if record is not None:
        with record.open("a") as out:
            out.write(json.dumps({"method": request.method, "path": request.path, "raw": request.raw_path}) + "\n")
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


def make_app(record: Path | None = None) -> web.Application:
    """The echo application, for ``web.AppRunner`` or ``aiohttp_server``; ``record``: see the module doc."""
    app = web.Application(client_max_size=MAX_ECHO_BODY * 16)
    if record is not None:
        app[RECORD] = record
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.deploy.echo_app [--host H] --port N``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    web.run_app(make_app(args.record), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
