"""Following a run: the events after a cursor, each exactly once, in order, then live ones.

A :class:`RunStream` reads by cursor from wherever the next event is::

    cursor+1 in the buffer's window ──▶ RunBuffer.read      (memory; wait there when caught up)
    cursor+1 below the window       ──▶ Store.read_events   (trimmed or expired events)
    run not in this instance's buffer ─▶ Store.read_events   (then wait for a notification
                                                              or tail_poll_interval; backends/base.py)

Events reach the buffer only after their commit, so the database always holds everything the
buffer does and the two can be mixed freely. The cursor only moves forward by exactly one per
event, so there is no gap and no duplicate whatever the buffer does meanwhile. The stream ends
right after the terminal event.

A database outage (``StoreUnavailable``) does not break a stream that reads the database: the
read is retried with backoff (from ``tail_poll_interval`` up to ``tail_retry_max_delay``) and the
stream goes on where it was. An outage longer than ``tail_outage_budget`` ends the stream with
the ``error`` meta event ``database_unavailable`` (the client resumes by cursor later); on a
draining instance it ends without one, as tails there do.

Memory per stream is bounded by ``stream_max_queued_bytes``: a page read from the database holds
about that many bytes of events (its size follows the largest event the stream has seen; the
first page is one event), and streams that read the same events at the same time share one copy
of each (:class:`SharedEvents`), so many subscribers replaying a large run cost it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import operator
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from agentos.backends.base import Notifier, Store
from agentos.buffer import EventBuffer
from agentos.errors import EventsUnavailable, Overloaded, StoreUnavailable
from agentos.events import Event, Meta, RunStatus
from agentos.records import RunRecord
from agentos.settings import StreamSettings

__all__ = ["RunStream", "SharedEvents", "StreamSlots", "StreamSource", "replay_meta"]

logger = logging.getLogger("agentos.streams")

_T = TypeVar("_T")

_TERMINAL = operator.attrgetter("terminal")
_EVENTS_ONLY = {Event}


class StreamSlots:
    """How many streams this instance serves, against ``max_streams``.

    A slot is taken by :meth:`reserve`, with no ``await`` between the check and the count, so
    concurrent requests can never open more streams than the limit; the stream gives it back when
    it ends (or is dropped unread).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def reserve(self) -> None:
        """Take a slot; Overloaded when none is left."""
        if self.count >= self.limit:
            raise Overloaded(f"this instance already serves {self.count} streams")
        self.count += 1

    def release(self) -> None:
        self.count -= 1


class SharedEvents:
    """Events read from the database, one copy per event while any stream holds it.

    Streams that ask for the same page at the same time wait for one read; a page's events
    that another stream still holds are replaced by that stream's copy (an ``event_index``
    never names two different events of a run), and the page's own copies are freed at once.
    """

    def __init__(self) -> None:
        self._events: weakref.WeakValueDictionary[tuple[str, int], Event] = (
            weakref.WeakValueDictionary()
        )
        self._reads: dict[tuple[str, int, int], asyncio.Future[list[Event]]] = {}

    async def read(self, store: Store, run_id: str, start: int, limit: int) -> list[Event]:
        """``store.read_events(run_id, start, limit)``, shared as above."""
        key = (run_id, start, limit)
        read = self._reads.get(key)
        if read is None:
            read = asyncio.ensure_future(store.read_events(run_id, start, limit))
            self._reads[key] = read
            read.add_done_callback(lambda done: self._read_done(key, done))
        # One waiter's cancellation must not cancel the others' read.
        return self.share(run_id, await asyncio.shield(read))

    def _read_done(self, key: tuple[str, int, int], read: asyncio.Future[list[Event]]) -> None:
        self._reads.pop(key, None)
        if not read.cancelled():
            read.exception()  # retrieved here: every waiter may have been cancelled meanwhile

    def share(self, run_id: str, events: list[Event]) -> list[Event]:
        shared: list[Event] = []
        for event in events:
            key = (run_id, event.index)
            known = self._events.get(key)
            if known is None:
                self._events[key] = known = event
            shared.append(known)
        return shared


@dataclass(frozen=True)
class StreamSource:
    """What every stream of one instance reads from and counts against."""

    buffers: EventBuffer
    store: Store
    notifier: Notifier
    settings: StreamSettings
    slots: StreamSlots
    #: True while the instance drains: tails of other instances' runs end (clients go elsewhere).
    draining: Callable[[], bool]
    shared: SharedEvents = field(default_factory=SharedEvents)


def replay_meta(run_id: str, status: RunStatus, total_events: int, *, from_buffer: bool) -> Meta:
    """The ``replay`` meta event: the run has ended; ``total_events`` events in all."""
    return Meta(
        "replay",
        {
            "run_id": run_id,
            "status": status.value,
            "total_events": total_events,
            "source": "buffer" if from_buffer else "database",
        },
    )


class RunStream:
    """The events of one run after ``after``, preceded by meta events when ``meta`` is set.

    The stream holds a slot of ``source.slots``, taken before it was made: it gives the slot back
    when iterating ends, or when it is dropped without being iterated. It keeps the run's status
    from ``record``, not the record: a run's input and content can be large, and a stream may
    stay open for long.
    """

    def __init__(
        self,
        source: StreamSource,
        record: RunRecord,
        after: int,
        count: int,
        *,
        ended: bool,
        meta: bool = True,
        on_abandon: Callable[[str], None] | None = None,
    ) -> None:
        self._source = source
        self._on_abandon = on_abandon
        self._holds_slot = True
        self.status = record.status
        self.run_id = record.run_id
        self.after = after
        self.count = count
        self.ended = ended
        self.meta = meta
        self.terminal_sent = False

    def release(self) -> None:
        """Give the stream's slot back (once); iterating to the end does it too."""
        if getattr(self, "_holds_slot", False):
            self._holds_slot = False
            self._source.slots.release()

    def __del__(self) -> None:
        # A stream made but never iterated (the client left before the response started).
        self.release()

    def first_meta(self) -> Meta:
        """``replay`` for an ended run, ``catch_up`` for a live one."""
        status = self.status.value
        if self.ended:
            buf = self._source.buffers.get(self.run_id)
            in_buffer = buf is not None and buf.first_index <= self.after + 1
            return replay_meta(self.run_id, self.status, self.count, from_buffer=in_buffer)
        return Meta(
            "catch_up",
            {
                "run_id": self.run_id,
                "status": status,
                "missed_events": self.count - 1 - self.after,
                "current_event_count": self.count,
            },
        )

    async def events(self) -> AsyncGenerator[Event | Meta, None]:
        """Yield meta events (if asked) and events until the terminal one.

        Closing the iterator before the terminal event calls ``on_abandon(run_id)`` when the
        stream has one (the inline streaming mode cancels its run so).
        """
        async for chunk in self.chunks():
            for item in chunk:
                yield item

    async def chunks(self) -> AsyncGenerator[list[Event | Meta], None]:
        """Like :meth:`events`, in lists: everything that was ready at once comes together.

        A server sends each list in one write; a burst of events then costs one send, not one
        per event, and a subscriber that fell behind catches up in large steps.
        """
        try:
            if self.meta:
                yield [self.first_meta()]
            async for chunk in self._follow():
                if self.meta:
                    yield chunk
                    continue
                if set(map(type, chunk)) == _EVENTS_ONLY:
                    yield chunk
                    continue
                events: list[Event | Meta] = [item for item in chunk if isinstance(item, Event)]
                if events:
                    yield events
                for item in chunk:
                    if isinstance(item, Meta) and item.name == "error":
                        if item.fields["code"] == StoreUnavailable.code:
                            raise StoreUnavailable(item.fields["error"])
                        raise EventsUnavailable(item.fields["error"], self.run_id)
        finally:
            self.release()
            self.abandon()

    def abandon(self) -> None:
        """The client is gone: tell ``on_abandon`` unless the terminal event was sent."""
        if self._on_abandon is not None and not self.terminal_sent:
            on_abandon, self._on_abandon = self._on_abandon, None
            on_abandon(self.run_id)

    async def _follow(self) -> AsyncIterator[list[Event | Meta]]:
        source = self._source
        try:
            async with contextlib.aclosing(self._read_on()) as chunks:
                async for chunk in chunks:
                    yield chunk
        except StoreUnavailable:
            if not source.draining():
                logger.warning("run %s: the database stayed unavailable; stream ended", self.run_id)
                yield [
                    self._error("the database is unavailable; resume later", "database_unavailable")
                ]

    async def _read_on(self) -> AsyncGenerator[list[Event | Meta]]:
        source = self._source
        page = source.settings.replay_page_size
        max_bytes = source.settings.max_queued_bytes
        db_page = 1  # until the stream has seen how large its events are
        largest = 0
        cursor = self.after
        subscribed = self.ended or not self.meta
        while True:
            buf = source.buffers.get(self.run_id)
            if buf is not None and cursor + 1 >= buf.first_index:
                batch = buf.read(cursor + 1, page)
                if not batch:
                    if buf.done:
                        # Ended and fully read without a terminal event: only possible when
                        # events were lost; say so rather than hang.
                        yield [self._error("the run ended without a terminal event", "no_terminal")]
                        return
                    if not subscribed:
                        subscribed = True
                        yield [self._subscribed(buf.next_index, buf.status)]
                    await buf.wait(cursor)
                    continue
            else:
                # Taken before the read, so a notification between read and wait still counts.
                signal = source.notifier.watch(self.run_id)
                read = functools.partial(
                    source.shared.read, source.store, self.run_id, cursor + 1, db_page
                )
                batch = await self._retry(read)
                if batch:
                    largest = max(largest, *(len(event.data) for event in batch))
                    db_page = max(1, min(page, max_bytes // max(1, largest)))
                if not batch:
                    buf = source.buffers.get(self.run_id)
                    if buf is not None and cursor + 1 >= buf.first_index:
                        continue  # the run's buffer appeared meanwhile: read from it
                    record = await self._retry(functools.partial(source.store.get_run, self.run_id))
                    if record is None or (record.status.ended and record.event_count <= cursor + 1):
                        yield [
                            self._error(
                                "the run's events are no longer available", "events_unavailable"
                            )
                        ]
                        return
                    status = record.status
                    del record  # its input and content can be large, and a tail waits long
                    if source.draining():
                        return  # a draining instance stops tailing; the client resumes elsewhere
                    if not subscribed:
                        subscribed = True
                        yield [self._subscribed(cursor + 1, status)]
                    await source.notifier.wait(signal, source.settings.tail_poll_interval)
                    continue
            if (
                batch[0].index == cursor + 1
                and batch[-1].index == cursor + len(batch)
                and not any(map(_TERMINAL, batch))
            ):
                # The common case, checked in C: indexes only grow (the buffer and the database
                # both keep them unique and ordered), so first and last in place means no gap.
                cursor = batch[-1].index
                yield list(batch)
                continue
            ready: list[Event | Meta] = []
            for event in batch:
                if event.index != cursor + 1:
                    ready.append(
                        self._error(
                            f"event {cursor + 1} is no longer available", "events_unavailable"
                        )
                    )
                    yield ready
                    return
                cursor = event.index
                ready.append(event)
                if event.terminal:
                    self.terminal_sent = True
                    yield ready
                    return
            yield ready

    async def _retry(self, read: Callable[[], Awaitable[_T]]) -> _T:
        """``read()``, retried with backoff while the database is unavailable; the last
        StoreUnavailable once the outage outlasts ``tail_outage_budget`` or the instance drains."""
        settings = self._source.settings
        loop = asyncio.get_running_loop()
        delay = min(settings.tail_poll_interval, settings.tail_retry_max_delay)
        give_up: float | None = None
        while True:
            try:
                return await read()
            except StoreUnavailable as exc:
                now = loop.time()
                if give_up is None:
                    give_up = now + settings.tail_outage_budget
                    logger.info(
                        "run %s: reading the database failed (%s); retrying", self.run_id, exc
                    )
                if now >= give_up or self._source.draining():
                    raise
                await asyncio.sleep(min(delay, give_up - now))
                delay = min(delay * 2, settings.tail_retry_max_delay)

    def _subscribed(self, count: int, status: RunStatus) -> Meta:
        return Meta(
            "subscribed",
            {"run_id": self.run_id, "status": status.value, "current_event_count": count},
        )

    def _error(self, message: str, code: str) -> Meta:
        return Meta("error", {"error": message, "code": code, "run_id": self.run_id})
