"""The run manager: exactly one terminal event per run, whatever cancels it and when."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agentos import Agent, EchoModel, Event, RunManager, RunStatus, Settings
from agentos.components.base import Component
from agentos.context import RunContext
from agentos.events import KINDS
from tests.storage import ScriptedStore


class Held(Component):
    """Returns once ``release`` is set."""

    kind = KINDS["agents"]

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.release = asyncio.Event()

    async def execute(self, ctx: RunContext, message: str) -> str:
        await self.release.wait()
        return "done"


@pytest_asyncio.fixture
async def manager(tmp_path: Path) -> AsyncIterator[RunManager]:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}",
        instance_id="test",
        max_pending_events=2,
        shutdown_grace=1.0,
    )
    manager = RunManager(settings, ScriptedStore(settings.database.url))
    manager.register(Held(id="held"))
    await manager.start()
    yield manager
    manager.store.gate.set()  # type: ignore[attr-defined]
    await manager.aclose()


async def _terminals(manager: RunManager, run_id: str) -> list[Event]:
    return [e for e in await manager.store.read_events(run_id, 0, 100) if e.terminal]


async def test_cancel_before_the_task_starts_still_ends_the_run(manager: RunManager) -> None:
    record = await manager.start_run(manager.component("agents", "held"), "go")
    manager.cancel_nowait(record.run_id)  # before the run's task had its first step
    final = await asyncio.wait_for(manager.wait(record.run_id), 5)
    assert final.status is RunStatus.CANCELLED
    assert [e.name for e in await _terminals(manager, record.run_id)] == ["RunCancelled"]
    buf = manager.buffers.get(record.run_id)
    assert buf is not None and buf.done  # its followers end


async def test_cancel_while_finishing_waits_for_the_terminal_commit(manager: RunManager) -> None:
    store = manager.store
    assert isinstance(store, ScriptedStore)
    held = manager.component("agents", "held")
    assert isinstance(held, Held)
    record = await manager.start_run(held, "go")
    await asyncio.sleep(0.05)
    # A commit blocks, and the queue behind it is full (max_pending_events=2).
    store.gate.clear()
    manager.committer.put("other", Event(0, "RunContent", "{}"))
    await asyncio.sleep(0.05)
    manager.committer.put("other", Event(1, "RunContent", "{}"))
    manager.committer.put("other", Event(2, "RunContent", "{}"))
    held.release.set()  # the run returns; _finish waits for space for its terminal event
    await asyncio.sleep(0.05)
    assert not manager._active[record.run_id].ended
    manager.cancel_nowait(record.run_id)  # e.g. shutdown while _finish waits
    await asyncio.sleep(0.05)
    # Not released before its terminal event is committed: wait() must not report RUNNING.
    assert manager.is_local(record.run_id)
    store.gate.set()
    final = await asyncio.wait_for(manager.wait(record.run_id), 5)
    assert final.status is RunStatus.COMPLETED
    assert [e.name for e in await _terminals(manager, record.run_id)] == ["RunCompleted"]


async def test_a_start_whose_caller_leaves_mid_create_still_ends_its_run(tmp_path: Path) -> None:
    """A socket closed while its run was being created: the run, created all the same, is
    started and cancelled (one terminal event), not left PENDING; its stream slot is given back."""
    manager = RunManager(Settings(db_url=f"sqlite+aiosqlite:///{tmp_path}/c.db", instance_id="t"))
    agent = Agent(id="echo", model=EchoModel(0.01))
    manager.register(agent)
    await manager.start()
    try:
        starting = asyncio.create_task(manager.start_and_follow(agent, "hello there"))
        await asyncio.sleep(0)  # inside the create
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        for _ in range(100):
            runs = await manager.store.list_runs("agents", "echo")
            if runs and all(r.status.ended for r in runs):
                break
            await asyncio.sleep(0.02)
        assert [r.status for r in runs] == [RunStatus.CANCELLED]
        events = await manager.store.read_events(runs[0].run_id, 0, 100)
        assert [e.terminal for e in events].count(True) == 1
        assert manager.open_streams == 0
    finally:
        await manager.aclose()


async def _flood_manager(tmp_path: Path, **settings: object) -> RunManager:
    manager = RunManager(
        Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'flood.db'}", instance_id="t", **settings)
    )
    await manager.start()
    return manager


async def test_a_runs_first_event_is_committed_before_the_run_goes_on(tmp_path: Path) -> None:
    manager = await _flood_manager(tmp_path)
    seen: list[int] = []

    async def producer(message: str, ctx: RunContext) -> AsyncIterator[str]:
        # RunStarted was emitted just before this body: it is already published (committed).
        buf = manager.buffers.get(ctx.run_id)
        seen.append(-1 if buf is None else buf.next_index)
        yield "chunk"

    agent = Agent(id="flood", fn=producer)
    manager.register(agent)
    try:
        record = await manager.start_run(agent, "go")
        final = await asyncio.wait_for(manager.wait(record.run_id), 10)
    finally:
        await manager.aclose()
    assert final.status is RunStatus.COMPLETED
    assert seen == [1]


async def test_a_first_event_behind_other_commits_does_not_hold_its_run(tmp_path: Path) -> None:
    # Waiting for the first event's commit is for a run the committer would write alone: with
    # a group being written, 500 runs started at once would each wait a group or two.
    store = ScriptedStore(f"sqlite+aiosqlite:///{tmp_path / 'gated.db'}")
    manager = RunManager(Settings(db_url=store.url, instance_id="t"), store=store)
    go, done = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def busy(message: str) -> AsyncIterator[str]:
        yield "one"
        await go.wait()
        yield "two"
        await done.wait()

    async def second(message: str) -> AsyncIterator[str]:
        ran.append(message)
        yield "chunk"

    agents = [Agent(id="busy", fn=busy), Agent(id="second", fn=second)]
    for agent in agents:
        manager.register(agent)
    await manager.start()
    try:
        first = await manager.start_run(agents[0], "go")
        while (buf := manager.buffers.get(first.run_id)) is None or buf.next_index < 2:
            await asyncio.sleep(0.01)  # its first events are committed
        store.gate.clear()  # every later commit waits
        go.set()
        while not (manager.committer.writing and manager.committer.pending == 0):
            await asyncio.sleep(0)  # the busy run's next group is being written (held)
        # A client's run id: created outside the group commit, which is held.
        record = await manager.start_run(agents[1], "behind", run_id="second-run")
        async with asyncio.timeout(10):
            while not ran:
                await asyncio.sleep(0.01)
        assert manager.committer.writing  # it went on while the commit was still held
        store.gate.set()
        done.set()
        for run_id in (first.run_id, record.run_id):
            final = await asyncio.wait_for(manager.wait(run_id), 10)
            assert final.status is RunStatus.COMPLETED
    finally:
        store.gate.set()
        done.set()
        await manager.aclose()


async def test_a_runs_end_is_queued_in_the_step_its_component_returns(tmp_path: Path) -> None:
    # Its terminal event and final status go into the group of its last events: queued by the
    # run's own task as the component returns, before any other task or callback runs (from
    # a task of their own, one turn later, they missed that group under load).
    manager = await _flood_manager(tmp_path)
    ended_then: list[bool] = []

    async def producer(message: str, ctx: RunContext) -> AsyncIterator[str]:
        yield "a"
        yield "b"
        # Runs right after the step in which the component returns.
        active = manager._active[ctx.run_id]
        asyncio.get_running_loop().call_soon(lambda: ended_then.append(active.ended))

    agent = Agent(id="ends", fn=producer)
    manager.register(agent)
    try:
        record = await manager.start_run(agent, "go")
        final = await asyncio.wait_for(manager.wait(record.run_id), 10)
        events = await manager.store.read_events(record.run_id, 0, 10)
    finally:
        await manager.aclose()
    assert final.status is RunStatus.COMPLETED
    assert ended_then == [True]
    assert [e.name for e in events] == ["RunStarted", "RunContent", "RunContent", "RunCompleted"]


async def test_a_run_that_never_awaits_lets_other_tasks_in_while_it_emits(tmp_path: Path) -> None:
    # run_time_slice=0: the run lets others in after each event (by default, once a millisecond).
    manager = await _flood_manager(tmp_path, run_time_slice=0.0)
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def producer(message: str) -> AsyncIterator[str]:
        for i in range(1000):  # never awaits anything itself
            if i in (1, 999):
                seen.append(ticks)
            yield "w"

    agent = Agent(id="flood", fn=producer)
    manager.register(agent)
    ticking = asyncio.create_task(ticker())
    try:
        record = await manager.start_run(agent, "go")
        final = await asyncio.wait_for(manager.wait(record.run_id), 30)
    finally:
        ticking.cancel()
        await manager.aclose()
    assert final.status is RunStatus.COMPLETED
    assert seen[1] - seen[0] >= 900  # the ticker ran between the run's events


class Stubborn(Component):
    """Ignores cancellation until ``release`` is set."""

    kind = KINDS["agents"]

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.release = asyncio.Event()

    async def execute(self, ctx: RunContext, message: str) -> str:
        while not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()
        return "done"


async def test_aclose_after_the_drain_gives_no_second_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``agentos serve`` drains (begin_shutdown, then up to shutdown_grace +
    shutdown_cancel_grace) before the lifespan's aclose: aclose waits only for what is left of
    those periods, so a run that ignores its cancel holds the exit once, not twice."""
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}",
        instance_id="test",
        shutdown_grace=0.2,
        shutdown_cancel_grace=0.2,
    )
    manager = RunManager(settings)
    stubborn = Stubborn(id="stubborn")
    manager.register(stubborn)
    await manager.start()
    record = await manager.start_run(stubborn, "go")
    while not manager._active[record.run_id].started:
        await asyncio.sleep(0.01)
    task = manager._tasks[record.run_id]
    manager.begin_shutdown()
    await asyncio.sleep(0.5)  # the drain: the grace and the cancel grace have both passed
    assert manager._active[record.run_id].cancel_reason == "shutdown"
    waits: list[float | None] = []
    wait = asyncio.wait

    async def spy(fs: Any, *, timeout: float | None = None, **kw: Any) -> Any:
        if task in fs:
            waits.append(timeout)
        return await wait(fs, timeout=timeout, **kw)

    monkeypatch.setattr(asyncio, "wait", spy)
    try:
        await manager.aclose()
    finally:
        stubborn.release.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    assert waits and all(timeout is not None and timeout <= 0 for timeout in waits), waits
