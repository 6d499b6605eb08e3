"""Server-sent events: a run's stream as an ``EventSourceResponse``.

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

import functools
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from agentos.events import Event, Meta
from agentos.settings import Settings, StreamSettings
from agentos.streams import RunStream

__all__ = ["event_stream", "sse_frame", "sse_writes"]

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
                frame = b"".join((head, str(item.index).encode(), middle, data.encode(), tail))
            if len(data) <= cache_limit:
                object.__setattr__(item, "sse", frame)  # a cache, not part of the event's value
        return frame
    return ServerSentEvent(item.data, event=item.name, sep=_SEP).encode()


@functools.lru_cache(maxsize=1024)
def _frame_parts(name: str) -> tuple[bytes, bytes, bytes] | None:
    """The bytes of an event's frame around its id and its (one-line) data, as
    ``ServerSentEvent`` encodes them for an event named ``name``.

    ``ServerSentEvent.encode`` costs a few microseconds per frame (a StringIO and three regular
    expressions): as much as the rest of an event's way from the run to the socket. Encoded once
    per name, with a NUL (which no event name holds: ``records.check_event_name``) in place of
    the id and the data, the frame is then joined from these parts: the same bytes.
    """
    parts = ServerSentEvent("\0", event=name, id="\0", sep=_SEP).encode().split(b"\0")
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


def event_stream(
    run_stream: RunStream,
    headers: Mapping[str, str],
    settings: Settings,
    *,
    shutdown: anyio.Event,
) -> EventSourceResponse:
    """The SSE response that sends ``run_stream``: a first comment at once, then its events,
    with pings while idle; ``shutdown`` set (SIGTERM) ends it after the grace period."""
    streams = settings.streams
    cache_limit = streams.sse_cache_max_bytes
    max_bytes = max(1, streams.max_queued_bytes)

    async def frames() -> AsyncIterator[ServerSentEvent | bytes]:
        yield ServerSentEvent(comment="ping", sep=_SEP)
        async for chunk in run_stream.chunks():
            for write in sse_writes(chunk, max_bytes, cache_limit):
                yield write

    async def after_response() -> None:
        # A client gone before the first frame never started the generator: give the slot back
        # and, in the inline mode, cancel the run. A coroutine, so Starlette runs it on the event
        # loop: a plain function would go to a worker thread (a thread hop per response, and
        # the run's task cancelled from outside its loop).
        run_stream.release()
        run_stream.abandon()

    return EventSourceResponse(
        frames(),
        background=BackgroundTask(after_response),
        headers=dict(headers),
        ping=streams.ping_interval,
        sep=_SEP,
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep=_SEP),
        send_timeout=streams.send_timeout or None,
        shutdown_event=shutdown,
        shutdown_grace_period=settings.runs.shutdown_grace + streams.shutdown_extra,
    )
