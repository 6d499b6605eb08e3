"""Server-sent events: a run's stream as an ``EventSourceResponse``.

Frames are made only by sse-starlette's ``ServerSentEvent``. Every event carries its index in
the SSE ``id:`` field (and in its JSON body), so a browser's ``Last-Event-ID`` is a cursor. What
a stream step had ready together goes out in one write (the same frames, fewer sends).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from agentos.events import Event, Meta
from agentos.settings import Settings, StreamSettings
from agentos.streams import RunStream

__all__ = ["event_stream", "sse_frame"]

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
            frame = ServerSentEvent(
                item.data, event=item.name, id=str(item.index), sep=_SEP
            ).encode()
            if len(item.data) <= cache_limit:
                object.__setattr__(item, "sse", frame)  # a cache, not part of the event's value
        return frame
    return ServerSentEvent(item.data, event=item.name, sep=_SEP).encode()


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

    async def frames() -> AsyncIterator[ServerSentEvent | bytes]:
        yield ServerSentEvent(comment="ping", sep=_SEP)
        async for chunk in run_stream.chunks():
            if len(chunk) == 1:
                yield sse_frame(chunk[0], cache_limit)
            else:
                yield b"".join([sse_frame(item, cache_limit) for item in chunk])

    def after_response() -> None:
        # A client gone before the first frame never started the generator: give the slot back
        # and, in the inline mode, cancel the run.
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
