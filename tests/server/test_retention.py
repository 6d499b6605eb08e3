"""Retention: old ended runs go with their events and messages, in bounded batches, by one
instance at a time; active and recent runs stay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest_asyncio

from agentos import Agent, AgentOS, EchoModel
from agentos.backends.base import Store, open_backend
from agentos.errors import RunNotFound
from agentos.events import Event, RunStatus
from agentos.retention import Retention
from agentos.sessions import MessageRecord
from agentos.settings import RetentionSettings, Settings
from tests.pgdb import db_url, pg_url
from tests.storage import run_record

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest

DAY = 86_400.0
ENDED = (RunStatus.COMPLETED, RunStatus.ERROR, RunStatus.CANCELLED)


@pytest_asyncio.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    store = open_backend(Settings(db_url=db_url)).store
    await store.open()
    yield store
    await store.close()


async def _add(store: Store, run_id: str, status: RunStatus, age_days: float) -> None:
    created = time.time() - age_days * DAY
    run = run_record(run_id, status=status, session_id=f"s-{run_id}", created_at=created)
    await store.create_run(run)
    events = [(run_id, Event(i, "RunContent", f'{{"i":{i}}}', False)) for i in range(3)]
    await store.commit(events, [])
    await store.add_messages(
        [MessageRecord(f"s-{run_id}", run_id, 0, "user", "hi", created_at=created)]
    )


async def _old_and_new(store: Store, old: int) -> None:
    for n in range(old):
        await _add(store, f"old-{n}", ENDED[n % 3], 10)
    await _add(store, "old-running", RunStatus.RUNNING, 10)
    await _add(store, "old-pending", RunStatus.PENDING, 10)
    await _add(store, "old-queued", RunStatus.QUEUED, 10)
    await _add(store, "recent", RunStatus.COMPLETED, 1)


async def test_old_ended_runs_go_in_bounded_batches_and_active_or_recent_runs_stay(
    store: Store,
) -> None:
    await _old_and_new(store, 7)
    batches: list[int] = []
    delete = store.delete_ended_runs

    async def counted(created_before: float, limit: int) -> int:
        gone = await delete(created_before, limit)
        batches.append(gone)
        return gone

    store.delete_ended_runs = counted  # type: ignore[method-assign]
    retention = Retention(store, RetentionSettings(days=7, batch_size=3), "instance-a")
    assert await retention.run_once() == 7
    assert batches == [3, 3, 1]
    for n in range(7):
        assert await store.get_run(f"old-{n}") is None
        assert await store.read_events(f"old-{n}", 0, 10) == []
        assert await store.session_messages(f"s-old-{n}") == []
    for kept in ("old-running", "old-pending", "old-queued", "recent"):
        assert await store.get_run(kept) is not None
        assert len(await store.read_events(kept, 0, 10)) == 3
        assert len(await store.session_messages(f"s-{kept}")) == 1
    assert await retention.run_once() == 0


async def test_zero_days_keeps_everything(store: Store) -> None:
    await _old_and_new(store, 2)
    assert await Retention(store, RetentionSettings(days=0), "a").run_once() == 0
    assert await store.get_run("old-0") is not None


async def test_two_instances_never_both_delete(db_url: str) -> None:
    stores = [open_backend(Settings(db_url=db_url)).store for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        await _old_and_new(stores[0], 12)
        settings = RetentionSettings(days=7, batch_size=2)
        a, b = (Retention(s, settings, name) for s, name in zip(stores, "ab", strict=True))
        results = await asyncio.gather(a.run_once(), b.run_once())
        # One holds the lease and deletes everything; the other finds it taken.
        assert sorted(results, key=lambda r: r is None) == [12, None]
        assert a.deleted + b.deleted == 12
        # The holder keeps its lease for the next pass; the other still cannot take it.
        loser = b if results[1] is None else a
        assert await loser.run_once() is None
    finally:
        for store in stores:
            await store.close()


async def test_an_expired_lease_is_taken_over(store: Store) -> None:
    now = time.time()
    assert await store.take_lease("retention", "a", now, now + 60)
    assert not await store.take_lease("retention", "b", now, now + 60)
    assert await store.take_lease("retention", "a", now, now + 60)  # the holder extends it
    assert await store.take_lease("retention", "b", now + 61, now + 120)
    assert not await store.take_lease("retention", "a", now + 62, now + 120)


async def test_a_serving_instance_deletes_ended_runs_and_leaves_going_ones_alone(
    db_url: str,
) -> None:
    """Runs older than retention_days (one second here) on a serving instance: the ended one
    goes at the next pass; one RUNNING and one QUEUED stay, events and all, pass after pass,
    until they end."""
    settings = Settings(
        db_url=db_url,
        instance_id="retention",
        retention_days=1 / DAY,
        retention_interval=0.05,
        max_active_runs=1,
    )
    agent_os = AgentOS(agents=[Agent(id="echo", model=EchoModel(0.02))], settings=settings)
    async with agent_os:
        manager, store = agent_os.manager, agent_os.manager.store
        passes = 0
        delete = store.delete_ended_runs

        async def counted(created_before: float, limit: int) -> int:
            nonlocal passes
            passes += 1
            return await delete(created_before, limit)

        store.delete_ended_runs = counted  # type: ignore[method-assign]
        echo = manager.component("agents", "echo")
        ended = await manager.start_run(echo, "short")
        await manager.wait(ended.run_id)
        running = await manager.start_run(echo, " ".join(["word"] * 5000))  # 100 s
        queued = await manager.start_run(echo, "waits for room")
        assert queued.status is RunStatus.QUEUED
        while await store.get_run(ended.run_id) is not None:
            await asyncio.sleep(0.02)  # the test's timeout bounds the wait
        seen = passes
        while passes < seen + 10:  # ten more passes, all past the cutoff
            await asyncio.sleep(0.02)
        got = await store.get_run(running.run_id)
        assert got is not None and got.status is RunStatus.RUNNING
        assert time.time() - got.created_at > DAY * settings.retention.days
        assert len(await store.read_events(running.run_id, 0, 10)) == 10
        got = await store.get_run(queued.run_id)
        assert got is not None and got.status is RunStatus.QUEUED
        for run in (running, queued):
            # Its last pass may delete it before cancel reads it back (a pass every 0.05 s).
            with contextlib.suppress(RunNotFound):
                await manager.cancel(run.run_id)
        for run in (running, queued):  # ended now: they go like any other
            while await store.get_run(run.run_id) is not None:
                await asyncio.sleep(0.02)
        assert manager.retention.deleted == 3
