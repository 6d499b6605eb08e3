"""Several instances on one database, in one process: tailing, cancel, leases and the reaper.

Each "instance" is a RunManager with its own instance id and its own engine (and, on PostgreSQL,
its own LISTEN connection) on a shared database. The multi-process version with nginx in front is
``test_scaleout.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.util import await_

from agentos import Agent, Component, EchoModel, Event, RunManager, RunStatus, Settings
from agentos.backends.base import Store
from agentos.backends.sql import SQLStore
from agentos.errors import InstanceIdInUse, StoreUnavailable
from agentos.events import Meta
from agentos.leases import Leases, _this_host
from agentos.records import RunRecord, RunUpdate
from agentos.retries import RetryPolicy, RunOptions
from tests.apps import words
from tests.managers import MakeManager, manager_factory
from tests.pgdb import db_url, pg_url
from tests.servers import wait_for
from tests.storage import run_record

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest


@pytest_asyncio.fixture
async def make_manager(db_url: str) -> AsyncIterator[MakeManager]:
    def components() -> list[Component]:
        return [Agent(id="echo", model=EchoModel(0.02))]

    async with manager_factory(db_url, components, tail_poll_interval=0.2) as make:
        yield make


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


async def _expire_lease(store: SQLStore, run_id: str) -> None:
    """The run's lease runs out now (its owner stalled, as far as any reaper can tell)."""
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE agentos_runs SET lease_until = 0 WHERE run_id = :r"), {"r": run_id}
        )


class _Attempts:
    """The ``gated`` agent of the claim-back tests: ``calls`` counts its attempts; the first
    one stops after its first chunk (``blocked`` is set then) until ``gate`` is set. Every
    attempt marks its words ``@<attempt>``."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.blocked = asyncio.Event()
        self.calls = 0

    def components(self) -> list[Component]:
        async def blocks_first(message: str) -> AsyncIterator[str]:
            self.calls += 1
            attempt = self.calls
            yield f"attempt {attempt} "
            if attempt == 1:
                self.blocked.set()
                await self.gate.wait()
            for word in message.split():
                await asyncio.sleep(0.005)
                yield f"{word}@{attempt} "

        return [Agent(id="gated", fn=blocks_first)]


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
    await _expire_lease(store, record.run_id)  # the lease runs out
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


class _Gate:
    """Holds the owner's next commit of one run's events (numbered, not yet committed) until
    ``release`` is set; ``held`` are the indexes it holds, ``done`` is set once it returns."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.run_id = run_id
        self.held: list[int] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.done = asyncio.Event()
        self._commit = store.commit
        store.commit = self._gated  # type: ignore[method-assign]  # what the committer calls

    async def _gated(
        self,
        events: Sequence[tuple[str, Event]],
        updates: Sequence[RunUpdate],
        *,
        owner: str | None = None,
        attempts: Mapping[str, int] | None = None,
        runs: Sequence[RunRecord] = (),
    ) -> None:
        mine = [event.index for run_id, event in events if run_id == self.run_id]
        if not mine or self.holding.is_set():
            return await self._commit(events, updates, owner=owner, attempts=attempts, runs=runs)
        self.held = mine
        self.holding.set()
        await self.release.wait()
        try:
            await self._commit(events, updates, owner=owner, attempts=attempts, runs=runs)
        finally:
            self.done.set()


async def test_the_claim_fences_out_the_owner(make_manager: MakeManager) -> None:
    """The race of a reaper with a live owner that lost its lease, made to happen every time:
    the owner's commit of events it has numbered goes on while the reaper takes the run over
    (after the reaper looked at the last event, before it wrote the terminal one). None of the
    owner's events land; the run has one terminal event, the reaper's, with no gap before it;
    the owner stops the run at once (not at its next lease renewal, which never comes here)."""
    owner = await make_manager("a", lease_renew_interval=30.0, lease_ttl=60.0)
    reaper = await make_manager("b")
    record = await _start(owner, words(300))
    gate = _Gate(owner.store, record.run_id)
    await asyncio.wait_for(gate.holding.wait(), 10)
    store = reaper.store
    assert isinstance(store, SQLStore)
    await _expire_lease(store, record.run_id)  # the owner's lease runs out

    def owner_commits_now(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # Runs inside SQLAlchemy's greenlet, so it may wait for a coroutine (await_): the owner
        # commits while the reaper is between reading the last event and writing its own.
        if "ORDER BY agentos_events.event_index DESC" in statement and not gate.release.is_set():
            gate.release.set()
            await_(_wait_briefly(gate.done, 1.0))

    sa_event.listen(store.engine.sync_engine, "before_cursor_execute", owner_commits_now)
    try:
        assert await reaper.leases.reap_once() == [record.run_id]
    finally:
        sa_event.remove(store.engine.sync_engine, "before_cursor_execute", owner_commits_now)
    await asyncio.wait_for(owner.wait(record.run_id), 5)  # the owner stopped the run
    stored = await store.read_events(record.run_id, 0, 10_000)
    assert [e.index for e in stored] == list(range(len(stored)))
    assert [e.terminal for e in stored].count(True) == 1
    assert stored[-1].payload()["error"] == "instance_lost"
    assert stored[-1].index == gate.held[0]  # none of the held events landed
    got = await store.get_run(record.run_id)
    assert got is not None and got.status is RunStatus.ERROR and got.error == "instance_lost"
    assert got.event_count == len(stored)
    items = await _collect(owner, record.run_id)  # followers on the former owner see the same
    assert [(e.index, e.data) for e in _events(items)] == [(e.index, e.data) for e in stored]


async def _wait_briefly(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event``, at most ``seconds`` (a fenced owner waits for the reaper's lock)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


class _Outage:
    """Makes a store's reads fail as during a database outage while ``down`` is True."""

    def __init__(self, store: Store) -> None:
        self.down = False
        self.failed = 0
        for name in ("read_events", "get_run"):
            setattr(store, name, self._failing(getattr(store, name)))

    def _failing(self, read: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def failing(*args: Any) -> Any:
            if self.down:
                self.failed += 1
                raise StoreUnavailable("the database cannot be reached: OSError")
            return await read(*args)

        return failing


async def test_a_tail_rides_out_a_database_outage(make_manager: MakeManager) -> None:
    owner = await make_manager("a")
    other = await make_manager("b", tail_poll_interval=0.05, tail_retry_max_delay=0.2)
    outage = _Outage(other.store)
    record = await _start(owner, words(120))
    follower = asyncio.create_task(_collect(other, record.run_id))
    await wait_for(lambda: owner.buffers.get(record.run_id).next_index > 10)  # type: ignore[union-attr]
    outage.down = True
    await wait_for(lambda: outage.failed >= 3)
    outage.down = False
    items = await asyncio.wait_for(follower, 20)
    assert not [i for i in items if isinstance(i, Meta) and i.name == "error"]
    stored = await owner.store.read_events(record.run_id, 0, 10_000)
    assert [(e.index, e.data) for e in _events(items)] == [(e.index, e.data) for e in stored]
    assert stored[-1].name == "RunCompleted"


async def test_a_tail_ends_cleanly_when_the_outage_lasts_and_resumes(
    make_manager: MakeManager,
) -> None:
    owner = await make_manager("a")
    other = await make_manager("b", tail_poll_interval=0.05, tail_outage_budget=0.5)
    outage = _Outage(other.store)
    record = await _start(owner, words(120))
    follower = asyncio.create_task(_collect(other, record.run_id))
    await wait_for(lambda: owner.buffers.get(record.run_id).next_index > 10)  # type: ignore[union-attr]
    outage.down = True
    first = await asyncio.wait_for(follower, 20)
    last = first[-1]
    assert isinstance(last, Meta) and last.name == "error"
    assert last.fields["code"] == "database_unavailable"
    outage.down = False
    seen = _events(first)
    rest = _events(await _collect(other, record.run_id, after=seen[-1].index if seen else -1))
    stored = await owner.store.read_events(record.run_id, 0, 10_000)
    assert [(e.index, e.data) for e in seen + rest] == [(e.index, e.data) for e in stored]
    assert stored[-1].name == "RunCompleted"


async def test_a_run_this_instance_no_longer_executes_is_ended(make_manager: MakeManager) -> None:
    # e.g. its terminal commit failed for good: the row says RUNNING, owned by "a", but no task
    # runs it. Renewal must not keep it alive forever.
    owner = await make_manager("a", lease_renew_interval=60.0, lease_ttl=120.0)
    live = await _start(owner, words(300))
    async with asyncio.timeout(10):  # the run's RUNNING status has committed: it executes
        while (await owner.get_run(live.run_id)).status is not RunStatus.RUNNING:
            await asyncio.sleep(0.01)
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


async def _hold_elsewhere(store: Store, name: str, until: float) -> None:
    """A process on another host holds the lease ``name`` from now on (its pid cannot be
    checked); ``now`` far ahead takes it whoever held it."""
    assert await store.take_lease(name, "elsewhere.example:1:abc", time.time() + 1e9, until)


async def test_an_instance_id_held_elsewhere_is_taken_once_its_lease_lapses(
    make_manager: MakeManager,
) -> None:
    """A crashed instance on another host still holds the id until its lease expires; a
    restart there (or here) waits for that, then holds the id itself and recovers."""
    first = await make_manager("first")
    await _hold_elsewhere(first.store, "instance:twin", time.time() + 1.0)
    twin = await make_manager("twin")  # waits about a second, then starts
    found = await first.store.read_lease("instance:twin")
    assert found is not None
    assert found[0].startswith(f"{_this_host()}:{os.getpid()}:")
    assert found[1] > time.time()
    await twin.aclose()
    released = await first.store.read_lease("instance:twin")
    assert released is not None and released[1] == 0.0  # a restart takes it at once


async def test_an_instance_id_a_live_process_holds_refuses_to_start(
    make_manager: MakeManager,
) -> None:
    """Two processes serving with one id would end each other's runs (restart recovery, strays):
    the second does not start while the first keeps renewing, and it touched none of its runs."""
    first = await make_manager("first")
    run = await _start(first, "a b c")
    # The id is held elsewhere from now on, by a live holder renewing while the second waits.
    renewing = True

    async def renew() -> None:
        while renewing:
            await _hold_elsewhere(first.store, "instance:first", time.time() + 2.0)
            await asyncio.sleep(0.3)

    renewer = asyncio.create_task(renew())
    try:
        with pytest.raises(InstanceIdInUse) as refused:
            await make_manager("first")
    finally:
        renewing = False
        await renewer
    assert "elsewhere.example:1:abc" in str(refused.value)
    items = await _collect(first, run.run_id)
    assert _events(items)[-1].name == "RunCompleted"  # not "interrupted" by the second


async def test_two_processes_taking_over_a_dead_holder_at_once_one_gets_the_id(
    make_manager: MakeManager,
) -> None:
    """A crashed holder on this host is taken over at once; when two processes restart at once
    (uvicorn --workers after a crash, a unit and a manual start), both see the dead holder, but
    only the first take-over may win: the second sees the first's live process and gives up."""
    first = await make_manager("first")
    name = "instance:twin"
    settings = first.settings.replace(instance_id="twin", lease_ttl=0.6, lease_renew_interval=0.2)
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()  # a pid of this host that is gone
    assert await first.store.take_lease(
        name, f"{_this_host()}:{dead.pid}:dead", time.time(), time.time() + 60
    )
    takers = [
        Leases(first.store, first, settings.leases, instance_id="twin", page_size=10)
        for _ in range(2)
    ]
    for n, leases in enumerate(takers):  # two live processes of this host (not this one)
        leases._holder = f"{_this_host()}:{os.getppid()}:live{n}"
    both_read = asyncio.Barrier(2)
    read_lease = first.store.read_lease

    async def read_together(lease: str) -> tuple[str, float] | None:
        found = await read_lease(lease)
        if lease == name and not both_read.broken:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await both_read.wait()
        return found

    first.store.read_lease = read_together  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(
            *(leases.hold_identity() for leases in takers), return_exceptions=True
        )
    finally:
        del first.store.read_lease
    assert sorted(type(r).__name__ for r in results) == ["InstanceIdInUse", "NoneType"], results
    found = await first.store.read_lease(name)
    winner = takers[results.index(None)]
    assert found is not None and found[0] == winner._holder


async def test_two_run_managers_of_one_process_cannot_share_an_instance_id(
    make_manager: MakeManager,
) -> None:
    """Several RunManagers in one process (two AgentOS apps on one database, tests) with one id
    would end each other's runs like two processes would: the second one refuses to start."""
    first = await make_manager("same")
    run = await _start(first, words(60))
    with pytest.raises(InstanceIdInUse):
        await make_manager("same")
    items = await _collect(first, run.run_id)
    assert _events(items)[-1].name == "RunCompleted"  # not "interrupted" by the second


async def test_a_process_whose_id_was_taken_over_does_not_end_the_new_holders_runs(
    make_manager: MakeManager,
) -> None:
    """A process paused past its lease (SIGSTOP, a VM paused, a clock jump) finds its id held by
    the process that took over meanwhile; the runs owned by the id are that process's now, and
    must not be ended here as strays (nor their leases renewed by a process that lost the id)."""
    owner = await make_manager("a", lease_renew_interval=60.0, lease_ttl=120.0)
    await _hold_elsewhere(owner.store, "instance:a", time.time() + 60)  # the successor
    theirs = run_record("theirs", instance_id="a", lease_until=time.time() + 60)
    await owner.store.create_run(theirs)  # the successor executes it
    await owner.leases.renew_once()
    await owner.leases.renew_once()
    assert (await owner.get_run("theirs")).status is RunStatus.RUNNING


async def test_a_start_that_fails_after_taking_the_id_lets_it_go(
    make_manager: MakeManager, db_url: str
) -> None:
    """Restart recovery failing (the database went away mid-way, a bug) ends the start; the id
    is let go and the store closed, so that a retry starts at once instead of waiting."""
    first = await make_manager("first")
    manager = RunManager(Settings(db_url=db_url, instance_id="flaky", lease_ttl=60.0))

    async def broken() -> None:
        raise RuntimeError("recovery failed")

    manager.leases.recover = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await manager.start()
    found = await first.store.read_lease("instance:flaky")
    assert found is not None and found[1] == 0.0
    retry = await make_manager("flaky")  # at once: not InstanceIdInUse after 60 s
    assert retry.settings.instance_id == "flaky"


async def test_a_run_requeued_while_still_executing_here_is_not_run_twice(
    make_manager: MakeManager,
) -> None:
    """A slow owner's lease runs out and the run goes back to the queue (its retry policy
    allows it) while the owner still executes it; the owner's own claimer takes it back before
    its renewal noticed. The old attempt stops, the new one runs alone: contiguous indexes, one
    terminal event, and the committer keeps going."""
    owner = await make_manager("a", lease_renew_interval=1.9)
    component = owner.component("agents", "echo")
    record = await owner.start_run(
        component, words(150), options=RunOptions(retry_policy=RetryPolicy(2, delay=0, jitter=0))
    )
    await asyncio.sleep(0.5)  # well into its first attempt
    store = owner.store
    assert isinstance(store, SQLStore)
    await _expire_lease(store, record.run_id)  # the lease runs out
    # The reaper of an instance without this agent: it cannot claim the run itself.
    reaper = await make_manager("b", agents=False)
    assert await reaper.leases.reap_once() == [record.run_id]  # requeued: instance_lost
    ended = await asyncio.wait_for(owner.wait(record.run_id), 30)
    assert ended.status is RunStatus.COMPLETED, ended
    stored = await store.read_events(record.run_id, 0, 10_000)
    assert [e.index for e in stored] == list(range(len(stored)))
    assert [e.terminal for e in stored].count(True) == 1
    assert [e.name for e in stored].count("RunRetrying") == 1
    assert owner.committer.running
    again = await owner.start_run(component, "still committing")
    assert (await asyncio.wait_for(owner.wait(again.run_id), 10)).status is RunStatus.COMPLETED


async def test_a_run_claimed_back_while_its_old_attempt_is_blocked_here_runs_once(
    db_url: str,
) -> None:
    """The unusual path of the test above: the old attempt is blocked (a tool, a model call)
    when its lease runs out, another instance requeues the run, and this instance claims it
    back before the old attempt wrote anything. The owner alone does not tell the two attempts
    apart: the old one is fenced on its attempt too, so it stops without writing, and the new
    one runs alone: contiguous indexes, one terminal event, the new attempt's content."""
    attempts = _Attempts()
    policy = RunOptions(retry_policy=RetryPolicy(2, delay=0, jitter=0))
    quiet = {"lease_ttl": 120.0, "lease_renew_interval": 60.0}  # no renewal in the test
    async with manager_factory(db_url, attempts.components, **quiet) as make:
        owner = await make("a")
        component = owner.component("agents", "gated")
        record = await owner.start_run(component, words(20), options=policy)
        await asyncio.wait_for(attempts.blocked.wait(), 10)
        first = await owner.store.read_events(record.run_id, 0, 100)
        await owner.committer.flush()
        store = owner.store
        assert isinstance(store, SQLStore)
        await _expire_lease(store, record.run_id)  # the lease runs out
        reaper = await make("b", agents=False)
        assert await reaper.leases.reap_once() == [record.run_id]  # requeued: instance_lost
        # This instance takes it back at once (its claimer may have, woken by the requeue).
        await owner.claim_once()
        claimed: list[RunRecord] = []

        async def claimed_here() -> None:
            while not claimed:
                found = await store.get_run(record.run_id)
                if found is not None and found.attempt == 2 and found.instance_id == "a":
                    claimed.append(found)
                else:
                    await asyncio.sleep(0.02)

        await asyncio.wait_for(claimed_here(), 10)
        attempts.gate.set()  # the old attempt goes on
        ended = await asyncio.wait_for(owner.wait(record.run_id), 30)
        assert attempts.calls == 2, attempts.calls
        stored = await store.read_events(record.run_id, 0, 10_000)
        assert [e.index for e in stored] == list(range(len(stored)))
        assert [e.terminal for e in stored].count(True) == 1
        assert [e.name for e in stored].count("RunRetrying") == 1
        assert ended.status is RunStatus.COMPLETED, ended
        assert ended.attempt == 2
        later = stored[len(first) + 1 :]  # after the requeue: the new attempt's only
        assert not any("@1" in e.data for e in later), [e.data for e in later]
        assert ended.content is not None and "@1" not in ended.content
        assert owner.committer.running
        assert owner.active_runs == 0


async def test_an_old_attempts_commit_refused_later_does_not_stop_the_new_one(
    db_url: str,
) -> None:
    """The old attempt's events are in a group commit already being written when the run is
    requeued and claimed back here: the new attempt starts (the old one is stopped) and queues
    its events behind that group. The group is refused (the row is at attempt 2 now); only the
    old attempt's writes are dropped, and the new attempt goes on to complete the run."""
    go = asyncio.Event()
    blocked = asyncio.Event()
    calls = 0

    async def holds_first(message: str) -> AsyncIterator[str]:
        nonlocal calls
        calls += 1
        attempt = calls
        yield f"attempt {attempt} "
        if attempt == 1:
            blocked.set()
            await go.wait()
            yield "held@1 "  # its commit is held in flight (the gate)
            await asyncio.Event().wait()  # stopped by the claim back
        for word in message.split():
            yield f"{word}@{attempt} "

    def components() -> list[Component]:
        return [Agent(id="gated", fn=holds_first)]

    policy = RunOptions(retry_policy=RetryPolicy(2, delay=0, jitter=0))
    quiet = {"lease_ttl": 120.0, "lease_renew_interval": 60.0}  # no renewal in the test
    async with manager_factory(db_url, components, **quiet) as make:
        owner = await make("a")
        component = owner.component("agents", "gated")
        record = await owner.start_run(component, words(20), options=policy)
        await asyncio.wait_for(blocked.wait(), 10)
        await owner.committer.flush()
        gate = _Gate(owner.store, record.run_id)
        go.set()
        await asyncio.wait_for(gate.holding.wait(), 10)
        store = owner.store
        assert isinstance(store, SQLStore)
        await _expire_lease(store, record.run_id)  # the lease runs out
        reaper = await make("b", agents=False)
        assert await reaper.leases.reap_once() == [record.run_id]
        await owner.claim_once()  # (or its claimer, woken by the requeue, did)
        await wait_for(lambda: calls == 2)  # the new attempt started, its events queued
        gate.release.set()
        ended = await asyncio.wait_for(owner.wait(record.run_id), 30)
        assert ended.status is RunStatus.COMPLETED and ended.attempt == 2, ended
        stored = await store.read_events(record.run_id, 0, 10_000)
        assert [e.index for e in stored] == list(range(len(stored)))
        assert [e.terminal for e in stored].count(True) == 1
        assert [e.name for e in stored].count("RunRetrying") == 1
        assert stored[gate.held[0]].name == "RunRetrying"  # none of the held events landed
        assert not any("@1" in e.data for e in stored)
        assert owner.committer.running and owner.active_runs == 0


async def test_a_start_waits_for_a_locked_database_within_the_id_s_wait(
    make_manager: MakeManager,
) -> None:
    """Another process holding SQLite's write lock past the busy timeout (``agentos db upgrade``,
    the previous process finishing its shutdown) does not fail a start at once: taking the id
    is retried for as long as a live holder would be waited for, then the error is raised."""
    first = await make_manager("first")
    settings = first.settings.replace(lease_ttl=0.6, lease_renew_interval=0.2).leases
    take_lease = first.store.take_lease
    failures = 2

    async def locked(*args: Any, **kwargs: Any) -> bool:
        nonlocal failures
        if failures > 0:
            failures -= 1
            raise StoreUnavailable("the database cannot commit now")
        return await take_lease(*args, **kwargs)

    first.store.take_lease = locked  # type: ignore[method-assign]
    try:
        leases = Leases(first.store, first, settings, instance_id="locked", page_size=10)
        await leases.hold_identity()
        found = await first.store.read_lease("instance:locked")
        assert found is not None and found[0] == leases._holder
        failures = 10**6  # locked for good
        other = Leases(first.store, first, settings, instance_id="never", page_size=10)
        with pytest.raises(StoreUnavailable):
            await other.hold_identity()
    finally:
        del first.store.take_lease


async def test_a_renewal_that_began_before_a_claim_back_does_not_stop_the_new_attempt(
    db_url: str,
) -> None:
    """A lease renewal reads the runs executing here, then renews in the database: the run,
    requeued meanwhile by another instance, is not renewed. While that UPDATE is out, this
    instance claims the run back and its new attempt starts (the old one stopped). The
    renewal's verdict is about the old attempt only: the new one goes on and completes."""
    attempts = _Attempts()
    policy = RunOptions(retry_policy=RetryPolicy(2, delay=0, jitter=0))
    quiet = {"lease_ttl": 120.0, "lease_renew_interval": 60.0}  # renewed by the test only
    async with manager_factory(db_url, attempts.components, **quiet) as make:
        owner = await make("a")
        component = owner.component("agents", "gated")
        record = await owner.start_run(component, words(20), options=policy)
        run_id = record.run_id
        await asyncio.wait_for(attempts.blocked.wait(), 10)
        await owner.committer.flush()
        store = owner.store
        assert isinstance(store, SQLStore)
        await _expire_lease(store, run_id)  # the lease runs out
        claim_once = owner.claim_once

        async def not_yet() -> int:
            return 0

        # This instance's claimer (woken by the requeue) claims the run back only during the
        # renewal's UPDATE, below.
        owner.claim_once = not_yet  # type: ignore[method-assign]
        reaper = await make("b", agents=False)
        assert await reaper.leases.reap_once() == [run_id]  # requeued: instance_lost
        renew_leases = store.renew_leases

        async def claimed_back_meanwhile(*args: Any, **kwargs: Any) -> dict[str, bool]:
            renewed = await renew_leases(*args, **kwargs)
            assert run_id not in renewed  # QUEUED when the UPDATE ran
            assert await claim_once() == 1
            # The old attempt stops; the new one starts in its place.
            await wait_for(lambda: run_id in owner.executing() and attempts.calls == 2)
            return renewed

        store.renew_leases = claimed_back_meanwhile  # type: ignore[method-assign]
        try:
            await owner.leases.renew_once()
        finally:
            del store.renew_leases
            del owner.claim_once
        ended = await asyncio.wait_for(owner.wait(run_id), 30)
        assert ended.status is RunStatus.COMPLETED, ended
        assert ended.attempt == 2
        stored = await store.read_events(run_id, 0, 10_000)
        assert [e.index for e in stored] == list(range(len(stored)))
        assert [e.terminal for e in stored].count(True) == 1


async def test_a_claim_back_that_starts_during_shutdown_is_waited_for(db_url: str) -> None:
    """The old attempt of a run claimed back here takes a while to stop (its code cleans up
    after the cancel), and shutdown begins meanwhile: the new attempt starts only once the old
    one has stopped, during shutdown's wait for the runs. Shutdown waits for it too: it goes
    back to the queue for another instance (reason "shutdown") before the committer closes,
    instead of being left RUNNING here until its lease expires."""
    blocked = asyncio.Event()
    calls = 0

    async def slow_to_stop(message: str) -> AsyncIterator[str]:
        nonlocal calls
        calls += 1
        attempt = calls
        yield f"attempt {attempt} "
        if attempt == 1:
            blocked.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.sleep(0.5)  # cleaning up
                raise
        for word in message.split():
            await asyncio.sleep(0.01)
            yield f"{word}@{attempt} "

    def components() -> list[Component]:
        return [Agent(id="slow", fn=slow_to_stop)]

    policy = RunOptions(retry_policy=RetryPolicy(3, delay=0, jitter=0))
    quiet = {"lease_ttl": 120.0, "lease_renew_interval": 60.0}  # no renewal in the test
    async with manager_factory(db_url, components, **quiet) as make:
        owner = await make("a", shutdown_grace=0.05, shutdown_cancel_grace=10.0)
        component = owner.component("agents", "slow")
        record = await owner.start_run(component, words(200), options=policy)
        run_id = record.run_id
        await asyncio.wait_for(blocked.wait(), 10)
        await owner.committer.flush()
        store = owner.store
        assert isinstance(store, SQLStore)
        await _expire_lease(store, run_id)  # the lease runs out
        reaper = await make("b", agents=False)
        assert await reaper.leases.reap_once() == [run_id]
        await owner.claim_once()  # (or its claimer did): the old attempt is stopping
        await owner.aclose()
        assert not owner._tasks
        found = await reaper.store.get_run(run_id)
        assert found is not None
        assert found.status is RunStatus.QUEUED, found
        stored = await reaper.store.read_events(run_id, 0, 10_000)
        assert [e.index for e in stored] == list(range(len(stored)))
        assert [e.name for e in stored].count("RunRetrying") == 2
