"""Server-sent events: a run's stream as a :class:`RunEventResponse`.

Frames are made only by sse-starlette's ``ServerSentEvent``. Every event carries its index in
the SSE ``id:`` field (and in its JSON body), so a browser's ``Last-Event-ID`` is a cursor.

What a stream step had ready together goes out in as few writes as fit
``stream_max_queued_bytes`` each (the same frames, fewer sends). uvicorn waits for a write to
drain before it takes the next one when the client does not read, so a stream holds at most one
such write in flight: a client that never reads costs the bound, not the run's size. An event
larger than the bound is sent in slices of its JSON text, encoded one slice at a time, so no
subscriber holds its own copy of a large event's frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from typing import Any

from sse_starlette import ServerSentEvent
from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agentos.events import Event, Meta
from agentos.settings import Settings, StreamSettings
from agentos.streams import RunStream

__all__ = ["OpenStreams", "RunEventResponse", "event_stream", "sse_frame", "sse_writes"]

_SEP = "\n"


def sse_frame(item: Event | Meta, cache_limit: int = StreamSettings.sse_cache_max_bytes) -> bytes:
    """The encoded SSE frame of an event or meta event.

    The frame of an event whose JSON text is at most ``cache_limit`` bytes is encoded once and
    kept on the event, so every subscriber of a run (and every replay from the buffer) sends the
    same bytes without encoding them again. Larger events are encoded per send, so that the
    buffer does not hold their payload twice.
    """
    if isinstance(item, Event):
        frame = item.sse
        if frame is None:
            data = item.data
            parts = _frame_parts(item.name)
            if parts is None or "\n" in data or "\r" in data:
                # Not compact JSON text (sse-starlette splits its lines), or a name it cannot
                # take apart: encoded whole.
                frame = ServerSentEvent(
                    data, event=item.name, id=str(item.index), sep=_SEP
                ).encode()
            else:
                head, middle, tail = parts
                frame = f"{head}{item.index}{middle}{data}{tail}".encode()
            if len(data) <= cache_limit:
                _SET_SSE(item, frame)  # a cache, not part of the event's value
        return frame
    return ServerSentEvent(item.data, event=item.name, sep=_SEP).encode()


#: Sets an event's cached frame (its slot's own setter: the dataclass is frozen).
_SET_SSE = vars(Event)["sse"].__set__


@functools.lru_cache(maxsize=1024)
def _frame_parts(name: str) -> tuple[str, str, str] | None:
    """The text of an event's frame around its id and its (one-line) data, as
    ``ServerSentEvent`` encodes it for an event named ``name`` (the frame is this text
    joined and encoded once: fewer copies than joining encoded parts).

    ``ServerSentEvent.encode`` costs a few microseconds per frame (a StringIO and three regular
    expressions): as much as the rest of an event's way from the run to the socket. Encoded once
    per name, with a NUL (which no event name holds: ``records.check_event_name``) in place of
    the id and the data, the frame is then joined from these parts: the same bytes.
    """
    parts = ServerSentEvent("\0", event=name, id="\0", sep=_SEP).encode().decode().split("\0")
    if len(parts) != 3:
        return None
    head, middle, tail = parts
    return head, middle, tail


def sse_writes(
    items: Sequence[Event | Meta], max_bytes: int, cache_limit: int = 512
) -> Iterator[bytes]:
    """The SSE frames of ``items`` as writes of at most ``max_bytes`` each.

    Frames go together while they fit; a frame that does not fit starts the next write. An
    event whose JSON text is longer than ``max_bytes`` is sent as its frame's head, slices of
    its text (each at most ``max_bytes`` once encoded) and the frame's end: the bytes on the
    wire are the frame's all the same. (A frame smaller than that but over ``max_bytes`` once
    encoded, from characters beyond ASCII, goes whole in one write.)
    """
    pending: list[bytes] = []
    size = 0
    for item in items:
        if len(item.data) > max_bytes and isinstance(item, Event):
            if pending:
                yield b"".join(pending)
                pending, size = [], 0
            yield from _sliced_frame(item, max_bytes)
            continue
        frame = sse_frame(item, cache_limit)
        if pending and size + len(frame) > max_bytes:
            yield b"".join(pending)
            pending, size = [], 0
        pending.append(frame)
        size += len(frame)
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


def _sliced_frame(event: Event, max_bytes: int) -> Iterator[bytes]:
    data = event.data
    if "\n" in data or "\r" in data:  # not compact JSON text: let sse-starlette split the lines
        yield sse_frame(event, 0)
        return
    # The frame of an empty data line is head + b"data: " + sep + sep; the event's frame is the
    # same with its text in the data line.
    empty = ServerSentEvent("", event=event.name, id=str(event.index), sep=_SEP).encode()
    end = len(_SEP.encode()) * 2
    yield empty[:-end]
    # Characters per slice: at most 4 bytes each in UTF-8, exactly 1 in ASCII.
    step = max_bytes if data.isascii() else max(1, max_bytes // 4)
    for start in range(0, len(data), step):
        yield data[start : start + step].encode("utf-8")
    yield empty[-end:]


class OpenStreams:
    """The SSE responses open on one app, so that shutdown can end them after a grace period.

    One registry and one timer per response at shutdown, instead of a task per stream that
    waits for the exit signal (sse-starlette's ``EventSourceResponse`` runs four per stream).
    """

    def __init__(self) -> None:
        self._open: set[RunEventResponse] = set()
        self._grace: float | None = None

    def __len__(self) -> int:
        return len(self._open)

    def shutdown(self, grace: float) -> None:
        """The server is stopping: every open stream (and any opened from now on) ends at the
        latest ``grace`` seconds from now."""
        if self._grace is None:
            self._grace = grace
            for response in list(self._open):
                response.stop_later(grace)

    def add(self, response: RunEventResponse) -> None:
        self._open.add(response)
        if self._grace is not None:
            response.stop_later(self._grace)

    def discard(self, response: RunEventResponse) -> None:
        self._open.discard(response)


class RunEventResponse(Response):
    """The SSE response of a run's stream, on the request's own task plus one watcher task.

    The request's task sends: a first comment at once, then the stream's events as they are
    ready. The watcher waits for the client's disconnect (then the request's task is cancelled,
    so a stream in the inline mode cancels its run), sends a ping when nothing was sent for
    ``ping`` seconds, and ends a stream whose send has waited for more than ``send_timeout``
    (checked at each ping: so it ends within ``send_timeout + ping`` seconds). Shutdown goes
    through :class:`OpenStreams`. sse-starlette's ``EventSourceResponse`` does the same with an
    anyio task group of four tasks per stream and a cancel scope per send: most of an idle
    stream's memory, and a tenth of the CPU of many short runs (bench/NOTES.md). Frames are
    still ``ServerSentEvent``'s.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        *,
        headers: Mapping[str, str],
        ping: float,
        send_timeout: float | None,
        streams: OpenStreams,
        after: Callable[[], None],
    ) -> None:
        self._frames = frames
        self._ping = ping
        self._send_timeout = send_timeout
        self._streams = streams
        self._after = after
        all_headers = MutableHeaders(headers=dict(headers))
        # As EventSourceResponse sets them.
        all_headers.setdefault("Cache-Control", "no-store")
        all_headers["Connection"] = "keep-alive"
        all_headers["X-Accel-Buffering"] = "no"
        self.status_code = 200
        self.background = None
        self.init_headers(all_headers)
        self._task: asyncio.Task[Any] | None = None
        #: Why the response ended (disconnect, send timeout, shutdown, or ended).
        self._stopped: str | None = None
        #: Whether _stop cancelled the request's task.
        self._cancelled = False
        #: When the send in progress began (loop time), None between sends.
        self._sending: float | None = None
        self._last_send = 0.0
        self._stop_handle: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        if scope["method"] == "HEAD":  # headers only: a stream would never end
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await self._frames.aclose()
            self._after()
            return
        loop = asyncio.get_running_loop()
        task = self._task = asyncio.current_task()
        assert task is not None
        await send(start)
        watcher = loop.create_task(self._watch(receive, send))
        self._streams.add(self)
        try:
            async with contextlib.aclosing(self._frames) as frames:
                async for frame in frames:
                    self._sending = loop.time()
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                    self._last_send = loop.time()
                    self._sending = None
            watcher.cancel()
            self._stopped = self._stopped or "ended"
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # Stopped by this response (see _stop) and by nothing else: it ends as it should.
            if not self._cancelled or task.uncancel() > 0:
                raise
            self._sending = None
            if self._stopped == "shutdown":  # the client is there: end the response cleanly
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._send_timeout):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._streams.discard(self)
            if self._stop_handle is not None:
                self._stop_handle.cancel()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._after()

    async def _watch(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        ping = self._ping if self._ping > 0 else None
        period = ping or self._send_timeout
        self._last_send = loop.time()
        while True:
            wait = None if period is None else max(0.0, self._last_send + period - loop.time())
            try:
                async with asyncio.timeout(wait):
                    message = await receive()
            except TimeoutError:
                pass
            else:
                if message["type"] == "http.disconnect":
                    self._stop("disconnect")
                    return
                continue
            now = loop.time()
            sending = self._sending
            if sending is not None:
                if self._send_timeout is not None and now - sending > self._send_timeout:
                    self._stop("send_timeout")
                    return
                self._last_send = now  # a send is on its way: no ping beside it
            elif ping is None:
                self._last_send = now
            elif now - self._last_send >= ping:
                try:
                    async with asyncio.timeout(self._send_timeout):
                        await send({"type": "http.response.body", "body": _PING, "more_body": True})
                except TimeoutError:
                    self._stop("send_timeout")
                    return
                self._last_send = loop.time()

    def stop_later(self, delay: float) -> None:
        """End the stream in ``delay`` seconds unless it has ended (shutdown)."""
        if self._stop_handle is None:
            loop = asyncio.get_running_loop()
            self._stop_handle = loop.call_later(delay, self._stop, "shutdown")

    def _stop(self, reason: str) -> None:
        if self._stopped is None and self._task is not None:
            self._stopped = reason
            self._cancelled = True
            self._task.cancel()


_PING = ServerSentEvent(comment="ping", sep=_SEP).encode()


def event_stream(
    run_stream: RunStream,
    headers: Mapping[str, str],
    settings: Settings,
    *,
    streams: OpenStreams,
) -> RunEventResponse:
    """The SSE response that sends ``run_stream``: a first comment at once, then its events,
    with pings while idle; on shutdown it ends after the grace period at the latest."""
    stream_settings = settings.streams
    cache_limit = stream_settings.sse_cache_max_bytes
    max_bytes = max(1, stream_settings.max_queued_bytes)

    async def frames() -> AsyncGenerator[bytes, None]:
        yield _PING
        async for chunk in run_stream.chunks():
            for write in sse_writes(chunk, max_bytes, cache_limit):
                yield write

    def after_response() -> None:
        # A client gone before the first frame never started the generator: give the slot back
        # and, in the inline mode, cancel the run.
        run_stream.release()
        run_stream.abandon()

    return RunEventResponse(
        frames(),
        headers=headers,
        ping=stream_settings.ping_interval,
        send_timeout=stream_settings.send_timeout or None,
        streams=streams,
        after=after_response,
    )
