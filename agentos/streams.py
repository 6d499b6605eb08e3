"""Following a run: the events after a cursor, each exactly once, in order, then live ones.

A :class:`RunStream` reads by cursor from wherever the next event is::

    cursor+1 in the buffer's window ──▶ RunBuffer.read      (memory; wait there when caught up)
    cursor+1 below the window       ──▶ Store.read_events   (trimmed or expired events)
    run not in this instance's buffer ─▶ Store.read_events   (then wait for a notification
                                                              or tail_poll_interval; notify.py)

Events reach the buffer only after their commit, so the database always holds everything the
buffer does and the two can be mixed freely. The cursor only moves forward by exactly one per
event, so there is no gap and no duplicate whatever the buffer does meanwhile. The stream ends
right after the terminal event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from agentos.errors import EventsUnavailable
from agentos.events import Event, Meta, RunStatus
from agentos.store import RunRecord

if TYPE_CHECKING:
    from agentos.runs import RunManager

__all__ = ["RunStream"]


class RunStream:
    """The events of one run after ``after``, preceded by meta events when ``meta`` is set."""

    def __init__(
        self,
        manager: RunManager,
        record: RunRecord,
        after: int,
        count: int,
        *,
        ended: bool,
        meta: bool = True,
    ) -> None:
        self._manager = manager
        self.record = record
        self.run_id = record.run_id
        self.after = after
        self.count = count
        self.ended = ended
        self.meta = meta
        self.terminal_sent = False

    def first_meta(self) -> Meta:
        """``replay`` for an ended run, ``catch_up`` for a live one."""
        status = self.record.status.value
        if self.ended:
            buf = self._manager.buffers.get(self.run_id)
            in_buffer = buf is not None and buf.first_index <= self.after + 1
            return Meta(
                "replay",
                {
                    "run_id": self.run_id,
                    "status": status,
                    "total_events": self.count,
                    "source": "buffer" if in_buffer else "database",
                },
            )
        return Meta(
            "catch_up",
            {
                "run_id": self.run_id,
                "status": status,
                "missed_events": self.count - 1 - self.after,
                "current_event_count": self.count,
            },
        )

    async def events(self, *, cancel_on_close: bool = False) -> AsyncIterator[Event | Meta]:
        """Yield meta events (if asked) and events until the terminal one.

        With ``cancel_on_close``, closing the iterator before the terminal event cancels the run
        (the inline streaming mode).
        """
        async for chunk in self.chunks(cancel_on_close=cancel_on_close):
            for item in chunk:
                yield item

    async def chunks(self, *, cancel_on_close: bool = False) -> AsyncIterator[list[Event | Meta]]:
        """Like :meth:`events`, in lists: everything that was ready at once comes together.

        A server sends each list in one write; a burst of events then costs one send, not one
        per event, and a subscriber that fell behind catches up in large steps.
        """
        self._manager.open_streams += 1
        try:
            if self.meta:
                yield [self.first_meta()]
            async for chunk in self._follow():
                if self.meta:
                    yield chunk
                    continue
                events: list[Event | Meta] = [item for item in chunk if isinstance(item, Event)]
                if events:
                    yield events
                for item in chunk:
                    if isinstance(item, Meta) and item.name == "error":
                        raise EventsUnavailable(item.fields["error"], self.run_id)
        finally:
            self._manager.open_streams -= 1
            if cancel_on_close and not self.terminal_sent:
                self._manager.cancel_nowait(self.run_id)

    async def _follow(self) -> AsyncIterator[list[Event | Meta]]:
        manager = self._manager
        page = manager.settings.replay_page_size
        cursor = self.after
        subscribed = self.ended or not self.meta
        while True:
            buf = manager.buffers.get(self.run_id)
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
                signal = manager.notifier.watch(self.run_id)
                batch = await manager.store.read_events(self.run_id, cursor + 1, page)
                if not batch:
                    buf = manager.buffers.get(self.run_id)
                    if buf is not None and cursor + 1 >= buf.first_index:
                        continue  # the run's buffer appeared meanwhile: read from it
                    record = await manager.store.get_run(self.run_id)
                    if record is None or (record.status.ended and record.event_count <= cursor + 1):
                        yield [
                            self._error(
                                "the run's events are no longer available", "events_unavailable"
                            )
                        ]
                        return
                    if manager.closing:
                        return  # a draining instance stops tailing; the client resumes elsewhere
                    if not subscribed:
                        subscribed = True
                        yield [self._subscribed(cursor + 1, record.status)]
                    await manager.notifier.wait(signal, manager.settings.tail_poll_interval)
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

    def _subscribed(self, count: int, status: RunStatus) -> Meta:
        return Meta(
            "subscribed",
            {"run_id": self.run_id, "status": status.value, "current_event_count": count},
        )

    def _error(self, message: str, code: str) -> Meta:
        return Meta("error", {"error": message, "code": code, "run_id": self.run_id})
