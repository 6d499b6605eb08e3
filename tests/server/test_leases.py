"""Several instances on one database, in one process: tailing, cancel, leases and the reaper.

Each "instance" is a RunManager with its own instance id and its own engine (and, on PostgreSQL,
its own LISTEN connection) on a shared database. The multi-process version with nginx in front is
``test_scaleout.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from agentos import Agent, EchoModel, Event, RunManager, RunStatus, Settings
from agentos.backends.sql import SQLStore
from agentos.events import Meta
from agentos.records import RunRecord
from tests.apps import words
from tests.pgdb import db_url, pg_url
from tests.storage import run_record

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest


MakeManager = Callable[..., Awaitable[RunManager]]


@pytest_asyncio.fixture
async def make_manager(db_url: str) -> AsyncIterator[MakeManager]:
    managers: list[RunManager] = []

    async def make(instance_id: str, **overrides: Any) -> RunManager:
        values: dict[str, Any] = {
            "db_url": db_url,
            "instance_id": instance_id,
            "tail_poll_interval": 0.2,
            "lease_ttl": 2.0,
            "lease_renew_interval": 0.5,
            "reaper_interval": 60.0,  # tests call reap_once themselves unless they say otherwise
            "shutdown_grace": 1.0,
        }
        values.update(overrides)
        manager = RunManager(Settings(**values))
        manager.register(Agent(id="echo", model=EchoModel(0.02)))
        await manager.start()
        managers.append(manager)
        return manager

    yield make
    for manager in reversed(managers):
        await manager.aclose()


async def _collect(manager: RunManager, run_id: str, after: int = -1) -> list[Event | Meta]:
    stream = await manager.open_stream(run_id, after)
    assert stream is not None
    items: list[Event | Meta] = []
    async with asyncio.timeout(20):
        async for item in stream.events():
            items.append(item)
    return items


def _events(items: list[Event | Meta]) -> list[Event]:
    return [i for i in items if isinstance(i, Event)]


async def _start(manager: RunManager, message: str, run_id: str | None = None) -> RunRecord:
    return await manager.start_run(manager.component("agents", "echo"), message, run_id=run_id)


@pytest.mark.parametrize("notify", [True, False], ids=["notify", "poll"])
async def test_tail_from_another_instance(make_manager: MakeManager, notify: bool) -> None:
    owner = await make_manager("a")
    other = await make_manager("b", tail_notify=notify)
    assert other.notifier.listening == (
        notify and other.settings.database.url.startswith("postgresql")
    )
    record = await _start(owner, words(30))
    await asyncio.sleep(0.1)
    remote, local = await asyncio.gather(
        _collect(other, record.run_id), _collect(owner, record.run_id)
    )
    assert isinstance(remote[0], Meta) and remote[0].name == "catch_up"
    assert any(isinstance(i, Meta) and i.name == "subscribed" for i in remote)
    assert [(e.index, e.data) for e in _events(remote)] == [
        (e.index, e.data) for e in _events(local)
    ]
    assert [e.index for e in _events(remote)] == list(range(len(_events(remote))))
    assert _events(remote)[-1].name == "RunCompleted"
    # Resuming mid-way from the other instance: exactly the rest.
    tail = _events(await _collect(other, record.run_id, after=10))
    assert [e.index for e in tail] == list(range(11, len(_events(local))))


async def test_cancel_from_another_instance(make_manager: MakeManager) -> None:
    owner = await make_manager("a")
    other = await make_manager("b")
    record = await _start(owner, words(500))
    await asyncio.sleep(0.2)
    began = time.monotonic()
    final = await other.cancel(record.run_id)
    assert final.status is RunStatus.CANCELLED
    assert time.monotonic() - began < 3.0
    events = _events(await _collect(other, record.run_id))
    assert events[-1].name == "RunCancelled"
    assert sum(e.terminal for e in events) == 1


async def test_owner_renews_its_leases(make_manager: MakeManager) -> None:
    owner = await make_manager("a")
    record = await _start(owner, words(200))
    first = record.lease_until
    assert first is not None
    await asyncio.sleep(1.2)
    got = await owner.store.get_run(record.run_id)
    assert got is not None and got.lease_until is not None and got.lease_until > first
    await owner.cancel(record.run_id)


async def _orphan(store: SQLStore, run_id: str, events: int) -> None:
    """A run whose owner died after ``events`` events: RUNNING, lease expired long ago."""
    await store.create_run(run_record(run_id, instance_id="dead", lease_until=time.time() - 5))
    data = '{"event":"RunContent","event_index":%d,"run_id":"%s","content":"x"}'
    await store.commit(
        [(run_id, Event(i, "RunContent", data % (i, run_id))) for i in range(events)], []
    )


async def test_reaper_ends_orphans_and_their_followers(make_manager: MakeManager) -> None:
    survivor = await make_manager("b", reaper_interval=0.3)
    store = survivor.store
    assert isinstance(store, SQLStore)
    await _orphan(store, "orphan", 3)
    follower = asyncio.create_task(_collect(survivor, "orphan"))
    items = await asyncio.wait_for(follower, 10)
    events = _events(items)
    assert [e.index for e in events] == [0, 1, 2, 3]
    assert events[-1].name == "RunError" and events[-1].payload()["error"] == "instance_lost"
    got = await store.get_run("orphan")
    assert got is not None and got.status is RunStatus.ERROR and got.error == "instance_lost"
    assert got.event_count == 4


async def test_racing_reapers_end_each_orphan_once(make_manager: MakeManager) -> None:
    reapers = [await make_manager(f"r{i}") for i in range(3)]
    store = reapers[0].store
    assert isinstance(store, SQLStore)
    for i in range(10):
        await _orphan(store, f"orphan{i}", i % 3)
    rounds = await asyncio.gather(*(r.leases.reap_once() for r in reapers))
    ended = [run_id for round_ in rounds for run_id in round_]
    assert sorted(ended) == sorted(f"orphan{i}" for i in range(10))  # each by exactly one
    for i in range(10):
        events = await store.read_events(f"orphan{i}", 0, 100)
        assert [e.index for e in events] == list(range(i % 3 + 1))
        assert [e.terminal for e in events].count(True) == 1
    assert await asyncio.gather(*(r.leases.reap_once() for r in reapers)) == [[], [], []]


async def test_live_owner_that_lost_its_lease_stops(make_manager: MakeManager) -> None:
    """The owner is alive but was too slow to renew: the run is ended by the other instance,
    the owner stops it, and every follower ends with the one terminal event."""
    owner = await make_manager("a", lease_renew_interval=1.9)
    other = await make_manager("b")
    record = await _start(owner, words(300))
    await asyncio.sleep(0.3)
    on_owner = asyncio.create_task(_collect(owner, record.run_id))
    on_other = asyncio.create_task(_collect(other, record.run_id))
    await asyncio.sleep(0.2)
    store = other.store
    assert isinstance(store, SQLStore)
    async with store.engine.begin() as conn:  # the lease runs out
        from sqlalchemy import text

        await conn.execute(
            text("UPDATE agentos_runs SET lease_until = 0 WHERE run_id = :r"), {"r": record.run_id}
        )
    assert await other.leases.reap_once() == [record.run_id]
    seen_owner, seen_other = await asyncio.wait_for(asyncio.gather(on_owner, on_other), 15)
    for items in (seen_owner, seen_other):
        events = _events(items)
        assert [e.index for e in events] == list(range(len(events)))
        assert events[-1].name == "RunError"
        assert events[-1].payload()["error"] == "instance_lost"
    stored = await store.read_events(record.run_id, 0, 10_000)
    assert [e.terminal for e in stored].count(True) == 1
    await asyncio.wait_for(owner.wait(record.run_id), 5)
    got = await store.get_run(record.run_id)
    assert got is not None and got.status is RunStatus.ERROR


async def test_a_run_this_instance_no_longer_executes_is_ended(make_manager: MakeManager) -> None:
    # e.g. its terminal commit failed for good: the row says RUNNING, owned by "a", but no task
    # runs it. Renewal must not keep it alive forever.
    owner = await make_manager("a", lease_renew_interval=60.0, lease_ttl=120.0)
    live = await _start(owner, words(300))
    stray = run_record("stray", instance_id="a", lease_until=time.time() + 60)
    await owner.store.create_run(stray)
    await owner.leases.renew_once()  # first sighting: could be a run being created right now
    assert (await owner.get_run("stray")).status is RunStatus.RUNNING
    await owner.leases.renew_once()
    ended = await owner.get_run("stray")
    assert ended.status is RunStatus.ERROR and ended.error == "interrupted"
    events = _events(await _collect(owner, "stray"))
    assert [e.name for e in events] == ["RunError"] and events[0].terminal
    assert (await owner.get_run(live.run_id)).status is RunStatus.RUNNING  # the live run goes on
    await owner.cancel(live.run_id)
