"""A TCP proxy on 127.0.0.1 that a test can break on purpose.

It runs its own event loop in a daemon thread, so it keeps relaying while the test's loop is
busy (or blocked in a sync client), and every control call waits until it has taken effect::

    with TCPProxy(server_port) as proxy:
        client = AsyncClient(proxy.url)
        ...
        proxy.cut()               # drop every open connection now (the client sees a reset)
        proxy.set_mode("503")     # new connections get "HTTP/1.1 503" and are closed
        proxy.set_mode("refuse")  # new connections are closed before any answer
        proxy.set_mode("blackhole")  # requests reach the server, answers are dropped
        proxy.stall()             # open connections stay up but relay nothing
        proxy.set_mode("forward") # back to normal

Modes apply to new connections; ``cut`` and ``stall`` to the open ones.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar

Mode = Literal["forward", "503", "refuse", "blackhole"]
T = TypeVar("T")

_BODY_503 = b'{"detail":"proxy says the upstream is unavailable","code":"unavailable"}'
_RESPONSE_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: "
    + str(len(_BODY_503)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + _BODY_503
)


@dataclass(eq=False)
class _Pipe:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    stalled: bool = False
    drop_down: bool = False


class TCPProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.mode: Mode = "forward"
        self.port = 0
        #: Connections accepted, and bytes relayed from the server to clients, so far.
        self.connections = 0
        self.bytes_down = 0
        #: Connections answered with the canned 503 (mode "503").
        self.answered_503 = 0
        self._pipes: set[_Pipe] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TCPProxy:
        self._thread.start()
        self._server = self._run(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> TCPProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def set_mode(self, mode: Mode) -> None:
        self._call(lambda: setattr(self, "mode", mode))

    def cut(self) -> int:
        """Abort every open connection; return how many there were."""
        return self._call(self._cut)

    def stall(self) -> None:
        """Keep the open connections up but stop relaying on them, in both directions."""

        def stall_all() -> None:
            for pipe in self._pipes:
                pipe.stalled = True

        self._call(stall_all)

    # -- inside the proxy's loop --------------------------------------------------------

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _call(self, fn: Callable[[], T]) -> T:
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    async def _listen(self) -> asyncio.base_events.Server:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _shutdown(self) -> None:
        self._cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _cut(self) -> int:
        pipes = list(self._pipes)
        for pipe in pipes:
            for writer in pipe.writers:
                writer.transport.abort()
        self._pipes.clear()
        return len(pipes)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "503":
            self.answered_503 += 1
            await self._read_request(reader)
            writer.write(_RESPONSE_503)
            await self._close(writer)
            return
        if self.mode == "refuse":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()  # upstream down: like a reset
            return
        pipe = _Pipe(writers=[writer, up_writer], drop_down=self.mode == "blackhole")
        self._pipes.add(pipe)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, pipe, down=False),
                self._pump(up_reader, writer, pipe, down=True),
            )
        finally:
            self._pipes.discard(pipe)
            for w in pipe.writers:
                w.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pipe: _Pipe,
        *,
        down: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if pipe.stalled or (down and pipe.drop_down):
                    continue
                if down:
                    self.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass  # the other side or a cut() closed the pipe; the finally above cleans up

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> None:
        """Read one request so that closing afterwards does not reset the connection."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    await asyncio.wait_for(reader.readexactly(int(value)), timeout=5)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a malformed or slow request still gets its 503

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        try:
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
