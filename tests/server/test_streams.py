"""RunStream: events in chunks, as a server sends them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentos import Agent, AgentOS, EchoModel, Event, Settings
from agentos.backends.base import Notifier
from agentos.backends.sql import SQLStore
from agentos.buffer import EventBuffer
from agentos.errors import EventsUnavailable
from agentos.streams import RunStream, StreamSlots, StreamSource
from tests.apps import words
from tests.storage import run_record


async def test_chunks_flatten_to_the_events(tmp_path: Path) -> None:
    agent = Agent(id="echo", model=EchoModel(0))
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path}/a.db", instance_id="t")
    async with AgentOS(agents=[agent], settings=settings) as agent_os:
        run = await agent.arun(words(300))
        stream = await agent_os.manager.open_stream(run.run_id, 10)
        assert stream is not None
        chunks = [chunk async for chunk in stream.chunks()]
        items = [item for chunk in chunks for item in chunk]
        assert items[0].name == "replay"
        indices = [item.index for item in items[1:] if isinstance(item, Event)]
        assert indices == list(range(11, 302)) and items[-1].name == "RunCompleted"
        assert len(chunks) < len(items)  # ready events come together


async def _stream_of(
    tmp_path: Path, events: list[Event], *, buffered: bool, meta: bool = True
) -> list[list[str]]:
    """The chunks (as ``index``/meta names) of a stream of one run whose events are
    ``events``, read from the run's buffer or from the database."""
    tmp_path.mkdir(exist_ok=True)
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path}/s.db", instance_id="t")
    store = SQLStore(settings.database.url)
    await store.open()
    try:
        record = run_record("r1")
        await store.commit([("r1", event) for event in events], [], runs=[record])
        buffers = EventBuffer(settings.buffer)
        if buffered:
            buffers.open("r1")
            buffers.publish("r1", events)
        source = StreamSource(
            buffers, store, Notifier(), settings.streams, StreamSlots(1), lambda: False
        )
        source.slots.reserve()
        stream = RunStream(source, record, -1, len(events), ended=False, meta=meta)
        return [
            [str(item.index) if isinstance(item, Event) else item.name for item in chunk]
            async for chunk in stream.chunks()
        ]
    finally:
        await store.close()


def _events(indexes: list[int], terminal: int | None = None) -> list[Event]:
    return [Event(i, "RunContent", f'{{"i":{i}}}', i == terminal) for i in indexes]


@pytest.mark.parametrize("meta", [True, False])
@pytest.mark.parametrize("buffered", [True, False])
async def test_a_stream_ends_right_after_the_terminal_event(
    tmp_path: Path, buffered: bool, meta: bool
) -> None:
    events = _events(list(range(6)), terminal=5)
    chunks = await _stream_of(tmp_path, events, buffered=buffered, meta=meta)
    items = [item for chunk in chunks for item in chunk]
    assert items == ["catch_up"] * meta + ["0", "1", "2", "3", "4", "5"]
    assert all(chunks)


async def test_a_gap_read_from_the_database_ends_the_stream_with_an_error(tmp_path: Path) -> None:
    # 0 to 2, then 4 (3 is missing) and 5: the first and last index of a page do not match
    # its length, so the stream goes event by event and stops at the gap.
    chunks = await _stream_of(tmp_path, _events([0, 1, 2, 4, 5], terminal=5), buffered=False)
    items = [item for chunk in chunks for item in chunk]
    assert items[:4] == ["catch_up", "0", "1", "2"] and items[4:] == ["error"]
    with pytest.raises(EventsUnavailable):  # a stream without meta events raises instead
        events = _events([0, 1, 2, 4, 5], terminal=5)
        await _stream_of(tmp_path / "no-meta", events, buffered=False, meta=False)
