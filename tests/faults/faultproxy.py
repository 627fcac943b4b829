"""A TCP proxy between gateways and PostgreSQL that can stall, reset and blackhole connections.

It runs its own event loop in a thread, so it keeps its behaviour whatever the test's loop is doing (or
when a test blocks it). Modes:

- ``pass``: bytes flow both ways;
- ``stall``: connections stay open but no byte moves in either direction (a frozen network); new
  connections are accepted and stall too; bytes held back are delivered when the mode changes back;
- ``blackhole``: like ``stall``, but what is held back is thrown away (a silent partition);
- ``refuse``: new connections are closed at once, existing ones keep flowing.

:meth:`FaultProxy.reset` ends every current connection with a TCP reset, on both sides (or only those
that carried bytes lately: on an idle gateway, that is the revocation feed, which reads the revocation log
every second, whatever version of the gateway it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, Literal, TypeVar

Mode = Literal["pass", "stall", "blackhole", "refuse"]
T = TypeVar("T")


class _Pipe:
    """One proxied connection: the gateway's side and the database's side."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []
        self.active_at = time.monotonic()

    def abort(self) -> None:
        """Close both sides with RST (SO_LINGER 0) and stop copying."""
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """Listens on 127.0.0.1 (:attr:`port`) and forwards to ``target_port``; see the module docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode: Mode = "pass"
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._pipes: set[_Pipe] = set()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None

    # -- control (from the test's thread) ---------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def close(self) -> None:
        """Stop listening, reset every connection and stop the thread."""
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def set_mode(self, mode: Mode) -> None:
        """Switch to ``mode`` for every connection, current and future."""
        self._call(self._set_mode(mode))

    def reset(self, active_within: float | None = None) -> int:
        """Reset every current connection (both sides get an RST), or only those that carried a byte in
        the last ``active_within`` seconds; return how many."""
        return self._call(self._reset(active_within))

    def connections(self) -> int:
        """How many connections are open through the proxy now."""
        return self._call(self._count())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # -- the proxy (on its own loop) -------------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset(None)

    async def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode in ("pass", "refuse"):
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _reset(self, active_within: float | None) -> int:
        now = time.monotonic()
        pipes = [p for p in self._pipes if active_within is None or now - p.active_at <= active_within]
        for pipe in pipes:
            pipe.abort()
            self._pipes.discard(pipe)
        return len(pipes)

    async def _count(self) -> int:
        return len(self._pipes)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pipe = _Pipe(writer, up_writer)
        self._pipes.add(pipe)
        pipe.tasks = [asyncio.ensure_future(self._copy(reader, up_writer, pipe)),
                      asyncio.ensure_future(self._copy(up_reader, writer, pipe))]

    async def _copy(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, pipe: _Pipe) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                if self.mode != "blackhole":
                    await self._flowing.wait()  # a stall holds the bytes until the mode changes
                if self.mode == "blackhole":
                    continue  # dropped; keep reading so the sender never notices
                pipe.active_at = time.monotonic()
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if pipe in self._pipes:
                self._pipes.discard(pipe)
                for writer in (pipe.client, pipe.server):
                    with contextlib.suppress(Exception):
                        writer.close()
                for task in pipe.tasks:
                    if task is not asyncio.current_task():
                        task.cancel()


@contextlib.contextmanager
def fault_proxy(target_port: int) -> Iterator[FaultProxy]:
    """A started :class:`FaultProxy` to ``127.0.0.1:target_port``, closed when the block ends."""
    proxy = FaultProxy(target_port).start()
    try:
        yield proxy
    finally:
        proxy.close()
