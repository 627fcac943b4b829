"""A check-path answer independent of any web framework: status, headers, body.

The hot endpoints build these; each front-end turns them into its own response (aiohttp's
``web.Response``, or the fast lane's bytes). Answers that repeat (a cached session's identity, a
webhook body within one second) are kept in the session's memo, so a front-end may keep its own
serialised form in :attr:`Reply.wire` and reuse it.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web


class Reply:
    """One HTTP answer. Treat as immutable once returned; only a front-end sets :attr:`wire`."""

    __slots__ = ("body", "headers", "status", "wire")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes = b"") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.wire: bytes | None = None
        """The fast lane's serialised status line and headers (without the per-second ``Date``)."""

    def to_response(self) -> web.Response:
        """This answer as an aiohttp response."""
        return web.Response(status=self.status, headers=self.headers, body=self.body)
