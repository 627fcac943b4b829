"""Request ids: one per request, on every log line about it and in every error it is shown.

The client's (or proxy's) ``X-Request-ID`` is kept when it is sane (1 to 128 of ``[A-Za-z0-9._:-]``), so
one id follows a request through nginx, the gateway and the app; otherwise the id is this process's pid
and a counter, unique per process and cheap enough for the check path.
"""

from __future__ import annotations

import itertools
import os
import re

from aiohttp import web

REQUEST_ID = web.RequestKey("request_id", str)
"""Where an aiohttp request keeps its id once assigned."""

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """Hands out request ids (see the module docstring)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._prefix = f"{os.getpid():x}-"

    def new(self, incoming: str) -> str:
        """An id for a request that sent ``incoming`` as its ``X-Request-ID`` (empty when it sent none)."""
        if incoming and _REQUEST_ID_RE.fullmatch(incoming):
            return incoming
        return self._prefix + str(next(self._counter))

    def of(self, request: web.Request) -> str:
        """``request``'s id, assigned on first use and the same ever after."""
        request_id = request.get(REQUEST_ID)
        if request_id is None:
            request_id = request[REQUEST_ID] = self.new(request.headers.get("X-Request-ID", ""))
        return request_id
