"""The event buffer: windows, limits, time to live and waking subscribers."""

from __future__ import annotations

import asyncio

import pytest

from agentos import Event, RunStatus, Settings
from agentos.buffer import EventBuffer


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
