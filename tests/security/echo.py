"""The protected app for the security corpus: answers like :mod:`tests.deploy.echo_app` and records every request.

The corpus judges what the app behind the proxy was served, so the app must say what it received even when
the answer never reaches the client (a smuggled request, a response dropped by the proxy). Every request on
the app port is answered with the JSON of :mod:`tests.deploy.echo_app` plus ``raw_path`` (the request
target's path exactly as received, still percent-encoded) and ``version``, and appended to a log. The log is
read on a second port that only the tests talk to, so nothing proxied can read or reset it:

- ``GET /seen?since=N``: ``{"count": total, "requests": [records N..]}``.

Every answer carries ``X-Corpus-Echo: 1`` so a test can tell the app's answers from the proxy's.

Run it with ``python -m tests.security.echo --port N --control-port M``.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

from tests.deploy.echo_app import MAX_ECHO_BODY

ECHO_MARKER = "X-Corpus-Echo"


def received(request: web.Request, body: bytes) -> dict[str, Any]:
    """What the app received, as the corpus judges it."""
    return {
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path.partition("?")[0],
        "query": request.query_string,
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in request.raw_headers],
        "body": body[:MAX_ECHO_BODY].decode("utf-8", "replace"),
    }


def make_apps() -> tuple[web.Application, web.Application]:
    """The app (every method, every path) and its control app, sharing one log."""
    log: list[dict[str, Any]] = []

    async def echo(request: web.Request) -> web.Response:
        record = received(request, await request.read())
        log.append(record)
        return web.json_response(record, headers={ECHO_MARKER: "1"})

    async def seen(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"count": len(log), "requests": log[since:]})

    app = web.Application(client_max_size=MAX_ECHO_BODY * 16)
    app.router.add_route("*", "/{tail:.*}", echo)
    control = web.Application()
    control.router.add_get("/seen", seen)
    return app, control


async def serve(host: str, port: int, control_port: int) -> None:
    """Serve both apps until cancelled."""
    app, control = make_apps()
    runners = [web.AppRunner(app, access_log=None), web.AppRunner(control, access_log=None)]
    for runner, listen_port in zip(runners, (port, control_port), strict=True):
        await runner.setup()
        await web.TCPSite(runner, host, listen_port).start()
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.security.echo [--host H] --port N --control-port M``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.control_port))


if __name__ == "__main__":
    main()
