"""The SQLite writer (``backends/sqlite_writer.py``): a group commit as one call in its thread,
with the errors, atomicity and fence of the SQLAlchemy path it replaces for database files."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agentos.backends.sql import SQLStore
from agentos.errors import DataRejected, RunAlreadyExists, StoreUnavailable, WriteConflict
from agentos.events import Event, RunStatus
from agentos.records import RunUpdate
from agentos.sessions import MessageRecord
from tests.storage import run_record


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLStore]:
    s = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", timeout=0.3)
    await s.open()
    assert s._writer is not None  # a database file: commits go through the writer
    try:
        yield s
    finally:
        await s.close()


def _event(index: int, text: str = "x") -> Event:
    return Event(index, "RunContent", f'{{"content":"{text}"}}', False)


async def test_new_runs_events_and_updates_commit_together(store: SQLStore) -> None:
    record = run_record("r1", input="hé ✓", instance_id="me")
    await store.commit([("r1", _event(0))], [], owner="me", runs=[record])
    await store.commit(
        [("r1", _event(1))],
        [RunUpdate("r1", status=RunStatus.COMPLETED, content="done", event_count=2)],
        owner="me",
    )
    got = await store.get_run("r1")
    assert got is not None and got.input == "hé ✓" and got.instance_id == "me"
    assert got.status is RunStatus.COMPLETED and got.content == "done" and got.event_count == 2
    assert [e.index for e in await store.read_events("r1", 0, 10)] == [0, 1]
    with pytest.raises(WriteConflict):
        await store.commit([], [], runs=[record])  # a taken run id
    with pytest.raises(RunAlreadyExists):
        await store.create_run(record)


async def test_a_refused_value_writes_nothing_and_the_writer_goes_on(store: SQLStore) -> None:
    await store.create_run(run_record("r1", instance_id="me"))
    with pytest.raises(DataRejected):
        await store.commit(
            [("r1", _event(0)), ("r1", _event(1, "\ud800"))],  # SQLite cannot hold a surrogate
            [RunUpdate("r1", content="never")],
            owner="me",
        )
    assert await store.read_events("r1", 0, 10) == []
    got = await store.get_run("r1")
    assert got is not None and got.content is None
    await store.commit([("r1", _event(0))], [], owner="me")
    assert len(await store.read_events("r1", 0, 10)) == 1


async def test_the_fence_refuses_events_of_a_run_another_instance_owns(store: SQLStore) -> None:
    await store.create_run(run_record("r1", instance_id="other"))
    with pytest.raises(WriteConflict):
        await store.commit([("r1", _event(0))], [], owner="me")
    assert await store.read_events("r1", 0, 10) == []
    # An update alone applies only to runs the committer owns.
    await store.commit([], [RunUpdate("r1", content="mine?")], owner="me")
    got = await store.get_run("r1")
    assert got is not None and got.content is None


async def test_a_locked_database_is_unavailable_until_released(
    store: SQLStore, tmp_path: Path
) -> None:
    await store.create_run(run_record("r1", instance_id="me"))
    lock = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable):
            await store.commit([("r1", _event(0))], [], owner="me")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    await store.commit([("r1", _event(0))], [], owner="me")
    assert len(await store.read_events("r1", 0, 10)) == 1


async def test_session_messages_go_through_the_writer(store: SQLStore) -> None:
    await store.create_run(run_record("r1", session_id="s", status=RunStatus.COMPLETED))
    calls = [{"id": "c1", "name": "add", "arguments": '{"a": 1}'}]
    messages = [
        MessageRecord("s", "r1", 0, "user", "hi"),
        MessageRecord("s", "r1", 1, "assistant", None, tool_calls=calls),
        MessageRecord("s", "r1", 2, "tool", "2", tool_call_id="c1", name="add"),
    ]
    await store.add_messages(messages)
    got = await store.session_messages("s")
    assert [(m.role, m.content, m.tool_calls, m.tool_call_id) for m in got] == [
        ("user", "hi", None, None),
        ("assistant", None, calls, None),
        ("tool", "2", None, "c1"),
    ]
    with pytest.raises(WriteConflict):
        await store.add_messages(messages[:1])


async def test_a_closed_store_is_unavailable(store: SQLStore) -> None:
    writer = store._writer
    assert writer is not None
    await store.close()
    with pytest.raises(StoreUnavailable):
        await writer.commit([], [], owner=None, runs=[])
    await store.close()  # closing twice is harmless


def test_only_a_database_file_gets_a_writer() -> None:
    assert SQLStore("sqlite+aiosqlite://")._database_file() is None
    assert SQLStore("sqlite+aiosqlite:///:memory:")._database_file() is None
    assert SQLStore("sqlite+aiosqlite:///a.db")._database_file() == "a.db"
    assert SQLStore("sqlite+aiosqlite:////tmp/a.db")._database_file() == "/tmp/a.db"
