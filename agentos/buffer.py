"""The in-process event buffer: committed events of the runs this instance owns.

Events reach a :class:`RunBuffer` only after their group commit, so anything a subscriber reads
here is already in the database. Subscribers hold a cursor, not a queue: each reads the events
after its cursor and waits for the next publication. A slow subscriber therefore costs one integer
and never blocks the run or other subscribers; when its cursor falls below the buffer's window
(events trimmed by the limits below), it reads the missing part from the database instead.

Limits (all settings):

- ``buffer_max_events_per_run`` / ``buffer_max_bytes_per_run``: the oldest events of a run are
  trimmed from memory past either limit.
- ``buffer_max_bytes_total``: past it, buffers of ended runs are dropped (oldest end first), then
  the largest live buffers are halved.
- ``buffer_ttl``: an ended run's buffer is dropped this many seconds after the run ends.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import time
from collections.abc import Callable, Sequence

from agentos.events import Event, RunStatus
from agentos.settings import BufferSettings

__all__ = ["EventBuffer", "RunBuffer"]

_INDEX = operator.attrgetter("index")
_DATA = operator.attrgetter("data")


class RunBuffer:
    """The committed events of one run still held in memory, and a way to wait for more."""

    __slots__ = (
        "_changed",
        "_events",
        "ended_at",
        "first_index",
        "nbytes",
        "next_index",
        "run_id",
        "status",
    )

    def __init__(self, run_id: str, next_index: int = 0) -> None:
        self.run_id = run_id
        self._events: list[Event] = []
        #: Index of the oldest event still in memory (== next_index when empty).
        self.first_index = next_index
        #: Index the next committed event will have: the run's event count so far.
        self.next_index = next_index
        self.nbytes = 0
        self.status = RunStatus.PENDING
        self.ended_at: float | None = None
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.ended_at is not None

    def __len__(self) -> int:
        return len(self._events)

    def read(self, start: int, limit: int) -> list[Event]:
        """Events from index ``start`` on (at most ``limit``); ``start`` must be in the window."""
        offset = start - self.first_index
        if offset < 0:
            raise IndexError(f"event {start} of run {self.run_id} is no longer in memory")
        return self._events[offset : offset + limit]

    async def wait(self, cursor: int) -> None:
        """Wait until an event after ``cursor`` is committed or the run ends."""
        while self.next_index <= cursor + 1 and not self.done:
            await self._changed.wait()

    def _append(self, events: Sequence[Event]) -> int:
        """Add events that continue the run exactly (ValueError, and nothing added, if not)."""
        start = self.next_index
        # Checked and counted in C, not event by event in Python: a group of a run that
        # streams holds hundreds of events.
        if not all(map(operator.eq, map(_INDEX, events), itertools.count(start))):
            expected = start
            for event in events:
                if event.index != expected:
                    raise ValueError(
                        f"run {self.run_id}: event {event.index} published after {expected - 1}"
                    )
                expected += 1
        added = sum(map(len, map(_DATA, events)))
        self._events.extend(events)
        self.next_index = start + len(events)
        self.nbytes += added
        return added

    def _trim(self, max_events: int, max_bytes: int) -> int:
        """Drop the oldest events past the limits; returns the bytes freed."""
        drop, freed = 0, 0
        excess_events = len(self._events) - max_events
        while drop < len(self._events) and (
            drop < excess_events or self.nbytes - freed > max_bytes
        ):
            freed += len(self._events[drop].data)
            drop += 1
        if drop:
            del self._events[:drop]
            self.first_index += drop
            self.nbytes -= freed
        return freed

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class EventBuffer:
    """All run buffers of this instance, with their memory limits and time to live."""

    def __init__(
        self, settings: BufferSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._runs: dict[str, RunBuffer] = {}
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def total_events(self) -> int:
        return sum(len(buf) for buf in self._runs.values())

    @property
    def live_bytes(self) -> int:
        """Bytes held for runs that have not ended: what ``max_bytes_total`` cuts into once the
        ended runs' buffers are gone."""
        return sum(buf.nbytes for buf in self._runs.values() if buf.ended_at is None)

    def open(self, run_id: str, next_index: int = 0) -> RunBuffer:
        """Start buffering a run this instance is about to execute."""
        buf = RunBuffer(run_id, next_index)
        self._drop(run_id)
        self._runs[run_id] = buf
        return buf

    def get(self, run_id: str) -> RunBuffer | None:
        """The run's buffer, or None when it is not (or no longer) held in memory."""
        buf = self._runs.get(run_id)
        if buf is not None and self._expired(buf, self._clock()):
            self._drop(run_id)
            return None
        return buf

    def publish(self, run_id: str, events: list[Event]) -> None:
        """Add committed events of a run and wake its subscribers."""
        buf = self._runs.get(run_id)
        if buf is None:
            return
        self.total_bytes += buf._append(events)
        s = self._settings
        self.total_bytes -= buf._trim(s.max_events_per_run, s.max_bytes_per_run)
        if self.total_bytes > s.max_bytes_total:
            self._shrink(s.max_bytes_total)
        buf._notify()

    def set_status(self, run_id: str, status: RunStatus) -> None:
        """Record a committed status change; an ended run starts its time to live."""
        buf = self._runs.get(run_id)
        if buf is None:
            return
        buf.status = status
        if status.ended and buf.ended_at is None:
            buf.ended_at = self._clock()
        buf._notify()

    def discard(self, run_id: str) -> None:
        """Forget a run's buffer; its followers continue from the database."""
        buf = self._runs.get(run_id)
        if buf is not None and buf.ended_at is None:
            buf.ended_at = self._clock()  # ends the subscribers' wait
        self._drop(run_id)

    def sweep(self) -> int:
        """Drop expired buffers; returns how many were dropped."""
        now = self._clock()
        expired = [run_id for run_id, buf in self._runs.items() if self._expired(buf, now)]
        for run_id in expired:
            self._drop(run_id)
        return len(expired)

    def _expired(self, buf: RunBuffer, now: float) -> bool:
        return buf.ended_at is not None and now - buf.ended_at >= self._settings.ttl

    def _drop(self, run_id: str) -> None:
        buf = self._runs.pop(run_id, None)
        if buf is not None:
            self.total_bytes -= buf.nbytes
            buf._notify()

    def _shrink(self, limit: int) -> None:
        ended = sorted(
            (buf for buf in self._runs.values() if buf.ended_at is not None),
            key=lambda buf: buf.ended_at or 0.0,
        )
        for buf in ended:
            if self.total_bytes <= limit:
                return
            self._drop(buf.run_id)
        while self.total_bytes > limit:
            largest = max(self._runs.values(), key=lambda buf: buf.nbytes, default=None)
            if largest is None or not largest._events:
                return
            freed = largest._trim(len(largest._events) // 2, largest.nbytes // 2)
            self.total_bytes -= freed
