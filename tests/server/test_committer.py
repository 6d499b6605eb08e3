"""Group commit: nothing is visible before it is durable; failures and conflicts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agentos import Agent, AgentOS, EchoModel, Event, RunStatus, Settings
from agentos.backends.sql import SQLStore
from agentos.buffer import EventBuffer
from agentos.committer import GroupCommitter
from agentos.errors import CommitterStopped, StoreUnavailable, WriteConflict
from agentos.records import RunUpdate
from tests.storage import ScriptedStore, run_record


async def test_events_are_published_only_after_commit_and_in_groups(tmp_path: Path) -> None:
    store = ScriptedStore(f"sqlite+aiosqlite:///{tmp_path}/c.db", [StoreUnavailable("gone")] * 2)
    await store.open()
    await store.create_run(run_record("r"))
    buffers = EventBuffer(Settings().buffer)
    buf = buffers.open("r")
    committer = GroupCommitter(store, buffers, Settings().commit, owner="test")
    committer.start()
    for i in range(500):
        committer.put("r", Event(i, "RunContent", f'{{"i":{i}}}'))
    committer.update(RunUpdate("r", status=RunStatus.COMPLETED, event_count=500))
    await asyncio.sleep(0.02)
    assert buf.next_index == 0  # the first commits failed: nothing visible yet
    await asyncio.wait_for(committer.flush(), 10)
    assert buf.next_index == 500 and buf.status is RunStatus.COMPLETED
    assert sum(store.batches) == 500 and len(store.batches) < 10  # grouped, not one per event
    assert len(await store.read_events("r", 0, 1000)) == 500
    assert (await store.get_run("r")).status is RunStatus.COMPLETED  # type: ignore[union-attr]
    await committer.aclose()
    await store.close()


async def test_a_conflicting_run_is_dropped_and_others_commit(tmp_path: Path) -> None:
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    for run_id in ("ok", "taken"):
        await store.create_run(run_record(run_id))
    await store.commit([("taken", Event(0, "RunError", '{"error":"instance_lost"}', True))], [])
    buffers = EventBuffer(Settings().buffer)
    ok, taken = buffers.open("ok"), buffers.open("taken")
    conflicts: list[str] = []
    committer = GroupCommitter(
        store,
        buffers,
        Settings().commit,
        owner="test",
        on_conflict=lambda run_id, _: conflicts.append(run_id),
    )
    committer.start()
    committer.put("ok", Event(0, "RunStarted", "{}"))
    committer.put("taken", Event(0, "RunStarted", "{}"))
    committer.put("ok", Event(1, "RunContent", "{}"))
    await asyncio.wait_for(committer.flush(), 10)
    assert conflicts == ["taken"]
    assert ok.next_index == 2 and taken.next_index == 0
    assert [e.name for e in await store.read_events("taken", 0, 10)] == ["RunError"]
    # the committer keeps working for everyone else
    committer.put("ok", Event(2, "RunContent", "{}"))
    await asyncio.wait_for(committer.flush(), 10)
    assert ok.next_index == 3
    await committer.aclose()
    await store.close()


async def test_an_earlier_attempts_writes_are_dropped_not_the_later_ones(tmp_path: Path) -> None:
    """Writes of two attempts of one run (the run manager lets an attempt start only once the
    one before it stopped, so only a stray write of the earlier one could do this): the earlier
    attempt's are dropped and reported; the later attempt's commit, fenced on it."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    await store.create_run(run_record("r", instance_id="test", attempt=2))
    buffers = EventBuffer(Settings().buffer)
    buf = buffers.open("r")
    conflicts: list[tuple[str, int | None]] = []
    committer = GroupCommitter(
        store,
        buffers,
        Settings().commit,
        owner="test",
        on_conflict=lambda run_id, attempt: conflicts.append((run_id, attempt)),
    )
    committer.start()
    committer.put("r", Event(0, "RunStarted", '{"attempt":1}'), 1)
    committer.put("r", Event(0, "RunStarted", '{"attempt":2}'), 2)
    committer.update(RunUpdate("r", content="two"), 2)
    committer.update(RunUpdate("r", content="one"), 1)  # an earlier attempt's: dropped
    await asyncio.wait_for(committer.flush(), 10)
    assert conflicts == [("r", 1)]
    assert [e.data for e in await store.read_events("r", 0, 10)] == ['{"attempt":2}']
    assert buf.next_index == 1
    assert (await store.get_run("r")).content == "two"  # type: ignore[union-attr]
    # A stray write of attempt 1 alone reaches the store, whose fence refuses it; reported,
    # and attempt 2 goes on.
    committer.put("r", Event(1, "RunContent", '{"attempt":1}'), 1)
    await asyncio.wait_for(committer.flush(), 10)
    assert conflicts == [("r", 1), ("r", 1)]
    committer.put("r", Event(1, "RunContent", '{"attempt":2}'), 2)
    await asyncio.wait_for(committer.flush(), 10)
    assert [e.data for e in await store.read_events("r", 0, 10)][-1] == '{"attempt":2}'
    await committer.aclose()
    await store.close()


async def test_backpressure_bounds_pending_events(tmp_path: Path) -> None:
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    await store.create_run(run_record("r"))
    settings = Settings(max_pending_events=10)
    buffers = EventBuffer(settings.buffer)
    buffers.open("r")
    committer = GroupCommitter(store, buffers, settings.commit, owner="test")
    peak = 0
    for i in range(10):
        committer.put("r", Event(i, "RunContent", "{}"))
    waiting = asyncio.create_task(committer.wait_for_space())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # full: the producer waits (the committer is not started yet)
    committer.start()
    await asyncio.wait_for(waiting, 5)
    for i in range(10, 200):
        await committer.wait_for_space()
        committer.put("r", Event(i, "RunContent", "{}"))
        peak = max(peak, committer.pending)
    await committer.flush()
    assert peak <= 10
    assert len(await store.read_events("r", 0, 1000)) == 200
    await committer.aclose()
    await store.close()


async def test_runs_started_together_share_transactions(tmp_path: Path) -> None:
    agent = Agent(id="echo", model=EchoModel(0))
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path}/a.db", instance_id="t")
    async with AgentOS(agents=[agent], settings=settings) as agent_os:
        before = agent_os.manager.committer.commits
        runs = await asyncio.gather(*(agent.arun("hi", background=True) for _ in range(50)))
        assert agent_os.manager.committer.commits - before < 10
        for run in runs:  # each is durable once arun returns
            assert await agent_os.manager.store.get_run(run.run_id) is not None


async def test_events_queued_behind_a_conflict_are_dropped_too(tmp_path: Path) -> None:
    # Another writer ended the run at index 0; this instance's later events (one per group here)
    # must not land after that terminal event.
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    await store.create_run(run_record("taken"))
    await store.commit([("taken", Event(0, "RunError", '{"error":"instance_lost"}', True))], [])
    settings = Settings(max_batch_events=1)
    buffers = EventBuffer(settings.buffer)
    buffers.open("taken")
    conflicts: list[str] = []
    committer = GroupCommitter(
        store,
        buffers,
        settings.commit,
        owner="test",
        on_conflict=lambda run_id, _: conflicts.append(run_id),
    )
    committer.start()
    committer.put("taken", Event(0, "RunStarted", "{}"))
    committer.put("taken", Event(1, "RunContent", "{}"))
    committer.put("taken", Event(2, "RunCompleted", "{}", True))
    committer.update(RunUpdate("taken", status=RunStatus.COMPLETED, event_count=3))
    await asyncio.wait_for(committer.flush(), 10)
    assert conflicts == ["taken"]
    assert [e.name for e in await store.read_events("taken", 0, 10)] == ["RunError"]
    await committer.aclose()
    await store.close()


async def test_a_passing_error_while_committing_run_by_run_is_retried(tmp_path: Path) -> None:
    conflict = WriteConflict("duplicate key")
    store = ScriptedStore(
        f"sqlite+aiosqlite:///{tmp_path}/c.db", [conflict, StoreUnavailable("gone")]
    )
    await store.open()
    await store.create_run(run_record("r"))
    buffers = EventBuffer(Settings().buffer)
    buf = buffers.open("r")
    committer = GroupCommitter(store, buffers, Settings().commit, owner="test")
    committer.start()
    committer.put("r", Event(0, "RunStarted", "{}"))
    await asyncio.wait_for(committer.flush(), 10)  # the committer did not die
    assert buf.next_index == 1
    committer.put("r", Event(1, "RunContent", "{}"))
    await asyncio.wait_for(committer.flush(), 10)
    assert len(await store.read_events("r", 0, 10)) == 2
    await committer.aclose()
    await store.close()


async def test_aclose_after_a_failed_commit_does_not_raise(tmp_path: Path) -> None:
    store = ScriptedStore(f"sqlite+aiosqlite:///{tmp_path}/c.db", [StoreUnavailable("gone")] * 100)
    await store.open()
    await store.create_run(run_record("r"))
    buffers = EventBuffer(Settings().buffer)
    buffers.open("r")
    committer = GroupCommitter(store, buffers, Settings().commit, owner="test")
    committer.start()
    committer.put("r", Event(0, "RunStarted", "{}"))
    await asyncio.sleep(0.01)
    await committer.aclose()  # gives up after its retries; the caller goes on closing
    await store.close()


async def test_emitters_do_not_wait_forever_on_a_stopped_committer(tmp_path: Path) -> None:
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    await store.create_run(run_record("r"))
    settings = Settings(max_pending_events=2)
    buffers = EventBuffer(settings.buffer)
    buffers.open("r")
    committer = GroupCommitter(store, buffers, settings.commit, owner="test")
    committer.start()
    await committer.aclose()  # stopped (as if its task had died)
    committer.put("r", Event(0, "RunStarted", "{}"))
    committer.put("r", Event(1, "RunContent", "{}"))
    with pytest.raises(CommitterStopped, match="not running"):
        await asyncio.wait_for(committer.wait_for_space(), 5)
    await store.close()


async def test_health_recovers_when_the_database_answers_again_with_a_conflict(
    tmp_path: Path,
) -> None:
    """After an outage, a group whose runs all conflict (another instance ended them) still
    shows the database is back: commits are no longer 'failing'."""
    store = ScriptedStore(
        f"sqlite+aiosqlite:///{tmp_path}/c.db",
        [StoreUnavailable("gone"), WriteConflict("taken"), WriteConflict("taken")],
    )
    await store.open()
    await store.create_run(run_record("r"))
    buffers = EventBuffer(Settings().buffer)
    buffers.open("r")
    settings = Settings(commit_retry_delay=0.01)
    committer = GroupCommitter(store, buffers, settings.commit, owner="test")
    committer.start()
    committer.put("r", Event(0, "RunStarted", "{}"))
    await asyncio.wait_for(committer.flush(), 10)
    assert committer.failing_for() == 0 and committer.failing_since is None
    await committer.aclose()
    await store.close()


async def test_a_commit_hung_past_create_timeout_counts_as_failing(tmp_path: Path) -> None:
    """A database that hangs (no error, no answer) is not healthy: after create_timeout the
    waiting commit counts as failing, and once it goes through, nothing fails any more."""
    store = ScriptedStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    await store.create_run(run_record("r"))
    buffers = EventBuffer(Settings().buffer)
    buffers.open("r")
    committer = GroupCommitter(store, buffers, Settings(create_timeout=0.2).commit, owner="test")
    committer.start()
    store.gate.clear()  # the next commit hangs
    committer.put("r", Event(0, "RunStarted", "{}"))
    await asyncio.sleep(0.1)
    assert committer.failing_for() == 0  # slow, not yet failing
    await asyncio.sleep(0.3)
    assert committer.failing_for() > 0.2
    store.gate.set()
    await asyncio.wait_for(committer.flush(), 10)
    assert committer.failing_for() == 0
    await committer.aclose()
    await store.close()


async def test_committed_waits_for_the_events_group_only(tmp_path: Path) -> None:
    store = ScriptedStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    for run_id in ("r", "taken"):
        await store.create_run(run_record(run_id))
    await store.commit([("taken", Event(0, "RunError", '{"error":"lost"}', True))], [])
    buffers = EventBuffer(Settings().buffer)
    buf = buffers.open("r")
    buffers.open("taken")
    committer = GroupCommitter(store, buffers, Settings().commit, owner="test")
    committer.start()
    first = Event(0, "RunStarted", "{}")
    committer.put("r", first)
    waiting = asyncio.create_task(committer.committed(first))
    while committer.pending:  # until the commit task has taken the first event's group
        await asyncio.sleep(0)
    store.gate.clear()  # every later commit waits
    for i in range(1, 4):
        committer.put("r", Event(i, "RunContent", "{}"))
    await asyncio.wait_for(waiting, 10)
    assert buf.next_index == 1  # the later events wait for their commit (held)

    # An event dropped with its run (another writer holds its index): its waiter is cancelled.
    store.gate.set()
    lost = Event(0, "RunStarted", "{}")
    committer.put("taken", lost)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(committer.committed(lost), 10)
    await asyncio.wait_for(committer.flush(), 10)
    assert buf.next_index == 4

    # A stopped committer fails the waiter.
    await committer.aclose()
    with pytest.raises(CommitterStopped):
        await committer.committed(Event(4, "RunContent", "{}"))
    await store.close()


async def test_events_out_of_order_for_a_buffer_do_not_stop_the_committer(tmp_path: Path) -> None:
    """Committed events that do not follow a run's buffer (two attempts of one run writing at
    once) drop that buffer, whose followers go to the database; other runs go on committing."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    for run_id in ("r", "other"):
        await store.create_run(run_record(run_id))
    buffers = EventBuffer(Settings().buffer)
    buffers.open("r", next_index=2)  # a newer attempt's buffer: it expects event 2
    other = buffers.open("other")
    committer = GroupCommitter(store, buffers, Settings().commit, owner="test")
    committer.start()
    committer.put("r", Event(0, "RunStarted", "{}"))
    await asyncio.wait_for(committer.flush(), 10)
    assert committer.running
    assert buffers.get("r") is None  # dropped: followed from the database
    assert [e.index for e in await store.read_events("r", 0, 10)] == [0]
    committer.put("other", Event(0, "RunStarted", "{}"))
    await asyncio.wait_for(committer.flush(), 10)
    assert other.next_index == 1
    await committer.aclose()
    await store.close()


async def test_a_taken_run_id_fails_its_create_alone_and_the_group_commits_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run whose id is taken (an occurrence fired again after a timeout) fails its own
    create with RunAlreadyExists; the rest of its group (other new runs, other runs' events)
    commits in one more transaction, not run by run."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    await store.create_run(run_record("taken", input="first"))
    await store.create_run(run_record("ok"))
    buffers = EventBuffer(Settings().buffer)
    ok = buffers.open("ok")
    committer = GroupCommitter(store, buffers, Settings().commit, owner="test")
    transactions: list[int] = []
    commit = store.commit

    async def counted(events: Any, updates: Any, **kwargs: Any) -> None:
        transactions.append(len(kwargs.get("runs", ())))
        await commit(events, updates, **kwargs)

    monkeypatch.setattr(store, "commit", counted)
    new = [run_record(f"new-{i}", status=RunStatus.PENDING) for i in range(5)]
    committer.start()  # its task takes a group once woken: all that follows, in one turn
    creates = [
        asyncio.ensure_future(committer.create(record, 10))
        for record in [*new[:2], run_record("taken", input="again"), *new[2:]]
    ]
    committer.put("ok", Event(0, "RunStarted", "{}"))
    committer.put("ok", Event(1, "RunContent", "{}"))
    results = await asyncio.wait_for(asyncio.gather(*creates, return_exceptions=True), 10)
    assert [type(r).__name__ for r in results] == ["NoneType"] * 2 + ["RunAlreadyExists"] + [
        "NoneType"
    ] * 3
    assert transactions == [6, 5]  # the group, then the group without "taken"
    assert ok.next_index == 2
    for record in new:
        assert await store.get_run(record.run_id) is not None
    taken = await store.get_run("taken")
    assert taken is not None and taken.input == "first"
    await committer.aclose()
    await store.close()


async def _stream(
    committer: GroupCommitter,
    run_id: str,
    turns: int,
    per_turn: int,
    stop: asyncio.Event | None = None,
) -> None:
    """A run streaming at full speed: ``per_turn`` events, then a turn of the loop; for
    ``turns`` turns or until ``stop`` is set."""
    index = 0
    for _ in range(turns):
        if stop is not None and stop.is_set():
            return
        for _ in range(per_turn):
            committer.put(run_id, Event(index, "RunContent", f'{{"i":{index}}}'))
            index += 1
        await asyncio.sleep(0)


@pytest.mark.parametrize("linger", [0.0, 5.0])
async def test_groups_grow_while_a_run_streams_and_linger_bounds_them(
    tmp_path: Path, linger: float
) -> None:
    """While groups commit back to back, the next one waits for more events as long as each
    turn of the loop brings some: a run streaming 3,000 events makes a few groups of up to
    ``max_batch_events`` instead of one per turn (linger 0). Every event commits, in order."""
    store = ScriptedStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    await store.create_run(run_record("r"))
    buffers = EventBuffer(Settings().buffer)
    buf = buffers.open("r")
    settings = Settings(commit_linger=linger, max_batch_events=1_000).commit
    committer = GroupCommitter(store, buffers, settings, owner="test")
    committer.start()
    await _stream(committer, "r", turns=300, per_turn=10)
    await asyncio.wait_for(committer.flush(), 10)
    assert buf.next_index == 3_000
    assert [e.index for e in await store.read_events("r", 0, 5_000)] == list(range(3_000))
    if linger:
        assert len(store.batches) <= 6 and max(store.batches) <= 1_000, store.batches
    else:
        assert len(store.batches) >= 100, store.batches
    await committer.aclose()
    await store.close()


async def test_nothing_anyone_waits_for_lingers(tmp_path: Path) -> None:
    """With a linger far longer than the test, a quiet committer's first group, a flush, a
    run waiting for one of its events, a create and a run's first event all commit at once,
    even while another run streams and groups follow each other."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    await store.create_run(run_record("busy"))
    await store.create_run(run_record("r"))
    buffers = EventBuffer(Settings().buffer)
    buffers.open("busy")
    buf = buffers.open("r")
    # Groups as large as the stream: without a waiter, a group would wait for all of it.
    settings = Settings(commit_linger=60.0, max_batch_events=2_000_000).commit
    committer = GroupCommitter(store, buffers, settings, owner="test")
    committer.start()

    committer.put("r", Event(0, "RunStarted", "{}"))  # a quiet committer: at once
    committer.put("r", Event(1, "RunContent", "{}"))
    for _ in range(100):
        await asyncio.sleep(0)
    assert buf.next_index == 2

    stop = asyncio.Event()
    streaming = asyncio.ensure_future(_stream(committer, "busy", 1_000_000, 1, stop))
    await asyncio.sleep(0.05)  # groups of "busy" follow each other, lingering
    event = Event(2, "RunContent", "{}")
    committer.put("r", event)
    async with asyncio.timeout(5):  # awaited here: it waits before the committer's next turn
        await committer.committed(event)
    assert buf.next_index == 3
    committer.put("r", Event(3, "RunContent", "{}"))
    await asyncio.wait_for(committer.flush(), 5)
    assert buf.next_index == 4
    await asyncio.wait_for(committer.create(run_record("new"), 5), 5)
    assert await store.get_run("new") is not None
    # A new run's first event, which its run does not wait for while groups are written.
    other = buffers.open("other")
    await store.create_run(run_record("other"))
    committer.put("other", Event(0, "RunStarted", "{}"))
    for _ in range(500):
        if other.next_index == 1:
            break
        await asyncio.sleep(0.01)
    assert other.next_index == 1
    assert not streaming.done()  # all of it happened while "busy" streamed
    stop.set()
    await streaming
    await asyncio.wait_for(committer.flush(), 10)
    await committer.aclose()
    await store.close()


async def test_a_run_dropped_while_its_group_lingers_costs_no_empty_transaction(
    tmp_path: Path,
) -> None:
    """A run lost while the next group gathers takes its queued events away: with nothing left
    to write, the committer goes back to sleep instead of committing an empty transaction."""
    store = ScriptedStore(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await store.open()
    await store.create_run(run_record("r"))
    buffers = EventBuffer(Settings().buffer)
    buffers.open("r")
    settings = Settings(commit_linger=60.0, max_batch_events=2_000_000).commit
    committer = GroupCommitter(store, buffers, settings, owner="test")
    committer.start()
    stop = asyncio.Event()
    streaming = asyncio.ensure_future(_stream(committer, "r", 1_000_000, 1, stop))
    await asyncio.sleep(0.05)  # groups of "r" follow each other, lingering
    stop.set()
    committer.drop("r")
    await streaming
    for _ in range(100):
        await asyncio.sleep(0)
    assert not committer.writing
    assert store.batches and 0 not in store.batches, store.batches
    await committer.aclose()
    await store.close()
