"""The event buffer: windows, limits, time to live and waking subscribers."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

import agentos.buffer
from agentos import Event, RunStatus, Settings
from agentos.buffer import PACK_AFTER, EventBuffer
from agentos.http.sse import sse_frame


def make_events(start: int, n: int, size: int = 10) -> list[Event]:
    return [Event(i, "RunContent", "x" * size) for i in range(start, start + n)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_read_by_cursor_and_window() -> None:
    buffers = EventBuffer(Settings(buffer_max_events_per_run=5).buffer)
    buf = buffers.open("r")
    buffers.publish("r", make_events(0, 8))
    assert buf.next_index == 8 and buf.first_index == 3 and len(buf) == 5
    assert [e.index for e in buf.read(4, 2)] == [4, 5]
    assert buf.read(8, 10) == []
    with pytest.raises(IndexError):
        buf.read(2, 1)


def test_per_run_byte_limit_trims_oldest() -> None:
    buffers = EventBuffer(Settings(buffer_max_bytes_per_run=35).buffer)
    buf = buffers.open("r")
    buffers.publish("r", make_events(0, 10))
    assert buf.nbytes <= 35 and [e.index for e in buf.read(buf.first_index, 10)] == [7, 8, 9]
    assert buffers.total_bytes == buf.nbytes


def test_events_must_arrive_in_order() -> None:
    buffers = EventBuffer(Settings().buffer)
    buffers.open("r")
    buffers.publish("r", make_events(0, 2))
    with pytest.raises(ValueError):
        buffers.publish("r", make_events(3, 1))


@pytest.mark.parametrize("indexes", [[2, 3, 5, 6], [2, 3, 3, 4], [2, 4, 3, 5], [3, 4, 5, 6]])
def test_a_group_with_a_gap_or_a_duplicate_is_refused_whole(indexes: list[int]) -> None:
    buffers = EventBuffer(Settings().buffer)
    buf = buffers.open("r")
    buffers.publish("r", make_events(0, 2))
    with pytest.raises(ValueError, match="published after"):
        buffers.publish("r", [Event(i, "RunContent", "x" * 10) for i in indexes])
    assert (buf.next_index, len(buf), buf.nbytes, buffers.total_bytes) == (2, 2, 20, 20)
    buffers.publish("r", make_events(2, 3))
    assert [e.index for e in buf.read(0, 10)] == [0, 1, 2, 3, 4] and buf.nbytes == 50


def test_total_limit_drops_ended_runs_first_then_halves_largest() -> None:
    buffers = EventBuffer(Settings(buffer_max_bytes_total=100).buffer)
    buffers.open("old")
    buffers.publish("old", make_events(0, 4))
    buffers.set_status("old", RunStatus.COMPLETED)
    live = buffers.open("live")
    buffers.publish("live", make_events(0, 6))
    assert buffers.get("old") is not None and buffers.total_bytes == 100
    buffers.publish("live", make_events(6, 1))
    assert buffers.get("old") is None  # ended run dropped first
    assert buffers.get("live") is live and live.next_index == 7
    buffers.publish("live", make_events(7, 5))
    assert buffers.total_bytes <= 100 and live.first_index > 0 and live.next_index == 12


def test_ended_runs_expire_after_ttl() -> None:
    clock = Clock()
    buffers = EventBuffer(Settings(buffer_ttl=60).buffer, clock=clock)
    buffers.open("r")
    buffers.publish("r", make_events(0, 3))
    clock.now = 1000
    assert buffers.get("r") is not None  # still running: no expiry
    buffers.set_status("r", RunStatus.COMPLETED)
    clock.now = 1059
    assert buffers.sweep() == 0
    clock.now = 1060
    assert buffers.sweep() == 1
    assert buffers.get("r") is None and buffers.total_bytes == 0


async def test_wait_wakes_on_publish_and_on_end() -> None:
    buffers = EventBuffer(Settings().buffer)
    buf = buffers.open("r")
    waiter = asyncio.create_task(buf.wait(-1))
    await asyncio.sleep(0)
    assert not waiter.done()
    buffers.publish("r", make_events(0, 1))
    await asyncio.wait_for(waiter, 1)
    waiter = asyncio.create_task(buf.wait(0))
    await asyncio.sleep(0)
    buffers.set_status("r", RunStatus.CANCELLED)
    await asyncio.wait_for(waiter, 1)
    assert buf.done


def _framed(events: list[Event]) -> list[Event]:
    """``events`` with an SSE frame on every other one, as a stream leaves them."""
    for event in events[::2]:
        sse_frame(event)
    return events


def test_an_ended_runs_events_are_packed_after_a_while_and_read_back_the_same() -> None:
    """Packed (held as exact tuples the garbage collector does not track), an ended run's
    events read back equal, frames included; a live run and a run ended less than PACK_AFTER
    ago stay as they are."""
    clock = Clock()
    buffers = EventBuffer(Settings().buffer, clock=clock)
    ended, live = buffers.open("ended"), buffers.open("live")
    events = _framed(make_events(0, 50))
    buffers.publish("ended", events)
    buffers.publish("live", make_events(0, 3))
    buffers.set_status("ended", RunStatus.COMPLETED)
    clock.now = PACK_AFTER - 0.1
    assert list(buffers.pack_ended()) == [] and not ended.packed

    clock.now = PACK_AFTER
    assert list(buffers.pack_ended()) == [50]
    assert ended.packed and not live.packed and len(ended) == 50
    gc.collect()  # stops tracking the events' tuples
    gc.collect()  # and the one holding them
    assert not gc.is_tracked(ended._packed)  # nothing of it for a collection to walk
    read = ended.read(10, 30)
    assert read == events[10:40]
    assert [event.sse for event in read] == [event.sse for event in events[10:40]]
    assert read[0].sse is not None and read[1].sse is None
    assert [sse_frame(e) for e in ended.read(0, 50)] == [sse_frame(e) for e in events]
    assert list(buffers.pack_ended()) == []  # once


def test_packing_goes_in_slices_and_skips_runs_dropped_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agentos.buffer, "PACK_SLICE", 10)
    clock = Clock()
    buffers = EventBuffer(Settings().buffer, clock=clock)
    for run_id in "abcd":
        buffers.open(run_id)
        buffers.publish(run_id, make_events(0, 6))
        buffers.set_status(run_id, RunStatus.COMPLETED)
    clock.now = PACK_AFTER
    slices = buffers.pack_ended()
    assert next(slices) == 6  # one run (a second would pass PACK_SLICE), then the caller's turn
    buffers.discard("c")
    reopened = buffers.open("d")  # a new buffer of the same run id: not due
    assert list(slices) == [6]  # b's
    assert [buffers.get(r).packed for r in "ab"] == [True, True]  # type: ignore[union-attr]
    assert not reopened.packed and buffers.get("c") is None


def test_limits_still_hold_with_packed_buffers() -> None:
    """The total limit drops ended (packed) runs first; trimming a packed buffer unpacks it."""
    clock = Clock()
    buffers = EventBuffer(Settings(buffer_max_bytes_total=250).buffer, clock=clock)
    buffers.open("old")
    buffers.publish("old", make_events(0, 10))
    buffers.set_status("old", RunStatus.COMPLETED)
    clock.now = PACK_AFTER
    assert list(buffers.pack_ended()) == [10]
    buffers.open("new")
    buffers.publish("new", make_events(0, 20))  # 100 + 200 bytes > 250
    assert buffers.get("old") is None and buffers.total_bytes == 200

    packed = buffers.open("p")
    buffers.publish("p", make_events(0, 4))
    buffers.set_status("p", RunStatus.COMPLETED)
    clock.now = 2 * PACK_AFTER
    list(buffers.pack_ended())
    assert packed.packed
    freed = packed._trim(2, 10**9)
    assert freed == 20 and not packed.packed and [e.index for e in packed.read(2, 5)] == [2, 3]


def test_replays_of_a_packed_run_share_its_events_and_frames_until_the_next_sweep() -> None:
    """Many subscribers replaying a packed run (whose events no stream had framed: a
    background run) share the events a read builds and the frames encoded on them, as they
    would before packing; the next sweep lets them go (untracked again)."""
    clock = Clock()
    buffers = EventBuffer(Settings().buffer, clock=clock)
    buf = buffers.open("r")
    buffers.publish("r", make_events(0, 1000))
    buffers.set_status("r", RunStatus.COMPLETED)
    clock.now = PACK_AFTER
    assert list(buffers.pack_ended()) == [1000]

    first = buf.read(3, 600) + buf.read(603, 500)  # a replay in pages, as a stream reads
    frames = [sse_frame(event) for event in first]
    assert len(first) == 997 and [e.index for e in first] == list(range(3, 1000))
    again = buf.read(0, 1000)  # a second subscriber, its pages not aligned with the first's
    assert again[3:] == first and all(a is b for a, b in zip(again[3:], first, strict=True))
    # ...and the frames the first encoded, not encoded again.
    assert all(sse_frame(e) is f for e, f in zip(again[3:], frames, strict=True))

    held = weakref.ref(first[497])  # event 500
    assert list(buffers.pack_ended()) == []  # the next sweep: nothing left to pack...
    del first, again, frames
    gc.collect()
    assert held() is None  # ...and the events built are no longer held by the buffer
    assert [e.index for e in buf.read(998, 5)] == [998, 999] and len(buf) == 1000


def test_a_packing_slice_holds_at_most_pack_slice_events_unless_one_run_has_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop turns before a run that would take the slice past PACK_SLICE events: runs of
    just under PACK_SLICE events each made slices of nearly twice as many (4 to 8 ms)."""
    monkeypatch.setattr(agentos.buffer, "PACK_SLICE", 10)
    clock = Clock()
    buffers = EventBuffer(Settings().buffer, clock=clock)
    for run_id, n in [("a", 9), ("b", 9), ("c", 3), ("d", 4), ("e", 25), ("f", 2)]:
        buffers.open(run_id)
        buffers.publish(run_id, make_events(0, n))
        buffers.set_status(run_id, RunStatus.COMPLETED)
    clock.now = PACK_AFTER
    assert list(buffers.pack_ended()) == [9, 9, 7, 25, 2]

    for run_id in "ab":  # the run whose turn waits for the loop's is dropped meanwhile
        buffers.open(run_id)
        buffers.publish(run_id, make_events(0, 9))
        buffers.set_status(run_id, RunStatus.COMPLETED)
    clock.now = 2 * PACK_AFTER
    slices = buffers.pack_ended()
    assert next(slices) == 9
    buffers.discard("b")
    assert list(slices) == [] and buffers.get("b") is None
