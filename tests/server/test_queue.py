"""The run queue in one process: admission, claims, attempts, retries, timeouts, multitask.

Each "instance" is a RunManager with its own instance id on a shared database (SQLite file or the
scratch PostgreSQL database). The multi-process tests (kill -9, SIGSTOP, rolling restarts) are in
``test_queue_processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from agentos import Agent, Component, EchoModel, Event, RunManager, RunStatus
from agentos.errors import QueueFull, SessionBusy
from agentos.events import Meta
from agentos.records import RunRecord
from agentos.retries import RetryPolicy, RunOptions
from tests.apps import flaky, words
from tests.managers import MakeManager, manager_factory
from tests.pgdb import db_url, pg_url
from tests.storage import run_record

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest

#: Retry at once, up to three attempts.
RETRY = RetryPolicy(max_attempts=3, delay=0, jitter=0)


@pytest_asyncio.fixture
async def make_manager(db_url: str) -> AsyncIterator[MakeManager]:
    def components() -> list[Component]:
        return [
            Agent(id="echo", model=EchoModel(0.01)),
            Agent(id="flaky", fn=flaky(failures=1)),
            Agent(id="broken", fn=flaky(failures=99)),
            Agent(id="slow-first", fn=flaky(failures=0, slow_first=5.0)),
        ]

    async with manager_factory(
        db_url, components, tail_poll_interval=0.1, queue_poll_interval=0.2
    ) as make:
        yield make


async def _start(manager: RunManager, agent: str, message: str, **options: Any) -> RunRecord:
    component = manager.component("agents", agent)
    session_id = options.pop("session_id", None)
    return await manager.start_run(
        component, message, session_id=session_id, options=RunOptions(**options)
    )


async def _collect(manager: RunManager, run_id: str, after: int = -1) -> list[Event]:
    stream = await manager.open_stream(run_id, after, meta=False)
    assert stream is not None
    items: list[Event] = []
    async with asyncio.timeout(30):
        async for item in stream.events():
            assert not isinstance(item, Meta)
            items.append(item)
    return items


def _check_numbering(events: list[Event]) -> None:
    assert [e.index for e in events] == list(range(len(events)))
    assert [e.terminal for e in events].count(True) == 1 and events[-1].terminal


async def test_a_full_instance_queues_and_starts_runs_as_room_frees(
    make_manager: MakeManager,
) -> None:
    manager = await make_manager("a", max_active_runs=2)
    records = [await _start(manager, "echo", words(20, f"r{i}")) for i in range(5)]
    assert [r.status for r in records] == [RunStatus.PENDING] * 2 + [RunStatus.QUEUED] * 3
    assert [r.attempt for r in records] == [1, 1, 0, 0, 0]
    finals = [await manager.wait(r.run_id, 30) for r in records]
    assert all(f.status is RunStatus.COMPLETED and f.attempt == 1 for f in finals)
    for record in records:
        events = await _collect(manager, record.run_id)
        _check_numbering(events)
        assert {e.payload()["attempt"] for e in events} == {1}
    assert manager.runs_queued == 3 and manager.runs_claimed == 3


async def test_a_full_queue_refuses_and_creates_nothing(make_manager: MakeManager) -> None:
    manager = await make_manager("a", max_active_runs=1, max_queued_runs=2)
    await _start(manager, "echo", words(200, "busy"))
    for i in range(2):
        assert (await _start(manager, "echo", f"queued {i}")).status is RunStatus.QUEUED
    with pytest.raises(QueueFull):
        await _start(manager, "echo", "one too many")
    runs = await manager.list_runs("agents", "echo", limit=100)
    assert len(runs) == 3 and "one too many" not in {r.input for r in runs}


async def test_another_instance_with_room_claims_a_queued_run(make_manager: MakeManager) -> None:
    full = await make_manager("full", max_active_runs=1)
    await make_manager("other")
    await _start(full, "echo", words(300, "busy"))
    queued = await _start(full, "echo", words(5))
    assert queued.status is RunStatus.QUEUED
    final = await full.wait(queued.run_id, 20)
    assert final.status is RunStatus.COMPLETED and final.instance_id == "other"
    _check_numbering(await _collect(full, queued.run_id))


async def test_a_failed_attempt_is_retried_and_the_stream_goes_on(
    make_manager: MakeManager,
) -> None:
    manager = await make_manager("a")
    record = await _start(manager, "flaky", "hello", retry_policy=RETRY)
    events = await _collect(manager, record.run_id)  # follows across the attempts
    _check_numbering(events)
    names = [e.name for e in events]
    retrying = names.index("RunRetrying")
    assert names[-1] == "RunCompleted" and names.count("RunRetrying") == 1
    assert [e.payload()["attempt"] for e in events[: retrying + 1]] == [1] * (retrying + 1)
    assert {e.payload()["attempt"] for e in events[retrying + 1 :]} == {2}
    fields = events[retrying].payload()
    assert fields["reason"] == "exception" and "upstream gone (1)" in fields["error"]
    assert fields["next_attempt"] == 2 and fields["max_attempts"] == 3
    final = await manager.get_run(record.run_id)
    assert final.status is RunStatus.COMPLETED and final.content == "attempt 2 done"
    attempts = final.attempt_list()
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "exception"), (2, "COMPLETED")]
    assert all(a["instance_id"] == "a" for a in attempts)
    # The database replays exactly what was streamed live.
    stored = await manager.store.read_events(record.run_id, 0, 1000)
    assert [(e.index, e.data) for e in stored] == [(e.index, e.data) for e in events]


async def test_when_attempts_run_out_the_error_lists_them(make_manager: MakeManager) -> None:
    manager = await make_manager("a")
    record = await _start(manager, "broken", "hi", retry_policy=RETRY)
    events = await _collect(manager, record.run_id)
    _check_numbering(events)
    assert [e.name for e in events].count("RunRetrying") == 2
    last = events[-1].payload()
    assert events[-1].name == "RunError" and last["attempt"] == 3
    assert [a["outcome"] for a in last["attempts"]] == ["exception", "exception", "ERROR"]
    final = await manager.get_run(record.run_id)
    assert final.status is RunStatus.ERROR and final.attempt == 3


async def test_the_default_policy_is_one_attempt(make_manager: MakeManager) -> None:
    manager = await make_manager("a")
    record = await _start(manager, "flaky", "hi")
    events = await _collect(manager, record.run_id)
    assert [e.name for e in events][-1] == "RunError"
    assert "RunRetrying" not in [e.name for e in events]
    assert "attempts" not in events[-1].payload()


async def test_only_the_named_errors_are_retried(make_manager: MakeManager) -> None:
    manager = await make_manager("a")
    only_timeouts = RetryPolicy(max_attempts=3, delay=0, retry_on=("timeout",))
    events = await _collect(
        manager, (await _start(manager, "flaky", "x", retry_policy=only_timeouts)).run_id
    )
    assert "RunRetrying" not in [e.name for e in events]
    by_class = RetryPolicy(max_attempts=3, delay=0, retry_on=("OSError",))  # a base class
    events = await _collect(
        manager, (await _start(manager, "flaky", "y", retry_policy=by_class)).run_id
    )
    assert [e.name for e in events].count("RunRetrying") == 1 and events[-1].name == "RunCompleted"


async def test_a_timed_out_attempt_is_retried(make_manager: MakeManager) -> None:
    manager = await make_manager("a")
    began = time.monotonic()
    record = await _start(manager, "slow-first", "z", retry_policy=RETRY, timeout=0.3)
    events = await _collect(manager, record.run_id)
    assert time.monotonic() - began < 4  # not the 5 s of the first attempt
    retrying = [e.payload() for e in events if e.name == "RunRetrying"]
    assert [r["reason"] for r in retrying] == ["timeout"]
    assert events[-1].name == "RunCompleted"


async def test_a_retry_waits_for_its_delay(make_manager: MakeManager) -> None:
    manager = await make_manager("a")
    policy = RetryPolicy(max_attempts=2, delay=0.6, jitter=0)
    record = await _start(manager, "flaky", "later", retry_policy=policy)
    events = await _collect(manager, record.run_id)
    retrying = next(e for e in events if e.name == "RunRetrying")
    second = next(e for e in events if e.payload()["attempt"] == 2)
    waited = second.payload()["created_at"] - retrying.payload()["created_at"]
    assert waited >= 0.55
    assert retrying.payload()["next_attempt_at"] <= second.payload()["created_at"] + 0.01


async def test_a_queued_run_can_be_cancelled(make_manager: MakeManager) -> None:
    manager = await make_manager("a", max_active_runs=1)
    busy = await _start(manager, "echo", words(300, "busy"))
    queued = await _start(manager, "echo", "never")
    final = await manager.cancel(queued.run_id)
    assert final.status is RunStatus.CANCELLED
    events = await _collect(manager, queued.run_id)
    assert [e.name for e in events] == ["RunCancelled"]
    await manager.cancel(busy.run_id)


async def test_multitask_reject_and_interrupt(make_manager: MakeManager) -> None:
    manager = await make_manager("a")
    first = await _start(manager, "echo", words(300), session_id="s1")
    with pytest.raises(SessionBusy):
        await _start(manager, "echo", "no", session_id="s1", multitask="reject")
    other_session = await _start(manager, "echo", "yes", session_id="s2", multitask="reject")
    assert other_session.status is RunStatus.PENDING
    second = await _start(manager, "echo", "now", session_id="s1", multitask="interrupt")
    assert (await manager.get_run(first.run_id)).status is RunStatus.CANCELLED
    assert (await manager.wait(second.run_id, 10)).status is RunStatus.COMPLETED


async def test_multitask_reject_lets_one_of_many_racing_creates_in(
    make_manager: MakeManager,
) -> None:
    """Twenty creates for one idle session at once, on two instances: exactly one run goes in,
    every other one is refused; the session never has two active runs."""
    managers = [await make_manager("a"), await make_manager("b")]
    for attempt in range(3):
        session = f"race-{attempt}"
        results = await asyncio.gather(
            *(
                _start(managers[n % 2], "echo", words(3000), session_id=session, multitask="reject")
                for n in range(20)
            ),
            return_exceptions=True,
        )
        made = [r for r in results if isinstance(r, RunRecord)]
        refused = [r for r in results if isinstance(r, SessionBusy)]
        assert (len(made), len(refused)) == (1, 19), results
        await managers[0].cancel(made[0].run_id)


async def test_multitask_enqueue_runs_a_session_one_run_at_a_time(
    make_manager: MakeManager,
) -> None:
    manager = await make_manager("a")
    records = [
        await _start(manager, "echo", words(10, f"r{i}"), session_id="s", multitask="enqueue")
        for i in range(4)
    ]
    finals = [await manager.wait(r.run_id, 30) for r in records]
    assert all(f.status is RunStatus.COMPLETED for f in finals)
    spans = []
    for record in records:
        events = await _collect(manager, record.run_id)
        times = [e.payload()["created_at"] for e in events]
        spans.append((min(times), max(times)))
    # Each started after the one before it ended, in the order they were created.
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end


async def test_runs_ending_with_the_queue_empty_make_no_claims(
    make_manager: MakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No poll during the test: only wake-ups (a run queued, room freed) make claims.
    manager = await make_manager("a", queue_poll_interval=60.0, max_active_runs=1)
    claims = 0
    claim_runs = manager.store.claim_runs

    async def counted(*args: Any, **kwargs: Any) -> list[RunRecord]:
        nonlocal claims
        claims += 1
        return await claim_runs(*args, **kwargs)

    monkeypatch.setattr(manager.store, "claim_runs", counted)
    first = await _start(manager, "echo", words(3, "first"))
    await manager.wait(first.run_id, 20)  # the claimer has looked (start-up, this release)
    await asyncio.sleep(0.1)
    looked = claims
    for i in range(10):
        record = await _start(manager, "echo", words(3, f"r{i}"))
        assert record.status is RunStatus.PENDING
        assert (await manager.wait(record.run_id, 20)).status is RunStatus.COMPLETED
    await asyncio.sleep(0.1)
    assert claims == looked  # an empty queue: a run's end looks at it no more

    # A run queued for want of room is still claimed as soon as room frees.
    busy = await _start(manager, "echo", words(20, "busy"))
    queued = await _start(manager, "echo", words(3, "queued"))
    assert busy.status is RunStatus.PENDING and queued.status is RunStatus.QUEUED
    final = await manager.wait(queued.run_id, 20)
    assert final.status is RunStatus.COMPLETED and final.attempt == 1


async def test_a_sessions_enqueued_runs_start_as_each_ends_without_the_poll(
    make_manager: MakeManager,
) -> None:
    manager = await make_manager("a", queue_poll_interval=60.0)
    records = [
        await _start(manager, "echo", words(5, f"r{i}"), session_id="s", multitask="enqueue")
        for i in range(3)
    ]
    # Each waits in the queue for the one before it: the release of that run claims it.
    for record in records:
        assert (await manager.wait(record.run_id, 10)).status is RunStatus.COMPLETED


async def test_a_queued_create_wakes_another_instance_without_its_poll(
    make_manager: MakeManager, db_url: str
) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("another process's queued run is found by the poll on SQLite")
    full = await make_manager("full", max_active_runs=0)
    other = await make_manager("other", queue_poll_interval=60.0)
    await asyncio.sleep(0.2)  # past the claim other makes when its LISTEN connection is up
    for i in range(3):
        # The create's one statement inserts the run and notifies (pg_notify in a CTE).
        queued = await _start(full, "echo", words(3, f"q{i}"))
        assert queued.status is RunStatus.QUEUED
        final = await full.wait(queued.run_id, 10)
        assert final.status is RunStatus.COMPLETED and final.instance_id == "other"
        _check_numbering(await _collect(full, queued.run_id))
    assert other.runs_claimed == 3


async def test_racing_instances_claim_each_queued_run_once(
    make_manager: MakeManager, db_url: str
) -> None:
    creator = await make_manager("creator", max_active_runs=0)
    component = creator.component("agents", "echo")
    created = []
    for i in range(200):
        record = await creator.start_run(component, f"m{i}")
        assert record.status is RunStatus.QUEUED
        created.append(record.run_id)
    # Three instances wake at once and race for the runs.
    racers = [await make_manager(f"racer{i}", claim_batch=7) for i in range(3)]
    finals = [await creator.wait(run_id, 60) for run_id in created]
    assert all(f.status is RunStatus.COMPLETED and f.attempt == 1 for f in finals)
    assert sum(r.runs_claimed for r in racers) == 200
    for run_id in created[:20]:
        events = await creator.store.read_events(run_id, 0, 100)
        _check_numbering(events)
        assert [e.name for e in events].count("RunStarted") == 1


async def test_a_lost_instance_s_run_is_retried_elsewhere(make_manager: MakeManager) -> None:
    survivor = await make_manager("b", reaper_interval=0.2)
    store = survivor.store
    policy = RetryPolicy(max_attempts=2, delay=0).to_json()
    orphan = run_record(
        "orphan",
        input="hello again",
        instance_id="dead",
        lease_until=time.time() - 5,
        retry_policy=policy,
    )
    await store.create_run(orphan)
    data = '{"event":"RunStarted","event_index":0,"run_id":"orphan","attempt":1}'
    await store.commit([("orphan", Event(0, "RunStarted", data))], [])
    events = await _collect(survivor, "orphan")
    _check_numbering(events)
    names = [e.name for e in events]
    assert names[:2] == ["RunStarted", "RunRetrying"] and names[-1] == "RunCompleted"
    assert events[1].payload()["reason"] == "instance_lost"
    final = await survivor.get_run("orphan")
    assert final.status is RunStatus.COMPLETED and final.instance_id == "b"
    assert [(a["instance_id"], a["outcome"]) for a in final.attempt_list()] == [
        ("dead", "instance_lost"),
        ("b", "COMPLETED"),
    ]


async def test_shutdown_hands_retryable_runs_to_another_instance(
    make_manager: MakeManager,
) -> None:
    leaving = await make_manager("leaving", shutdown_grace=0.3)
    staying = await make_manager("staying")
    policy = RetryPolicy(max_attempts=2, delay=0)
    handed = await _start(leaving, "echo", words(60, "h"), retry_policy=policy)
    plain = await _start(leaving, "echo", words(60, "p"))
    await asyncio.sleep(0.1)
    await leaving.aclose()
    final = await staying.wait(handed.run_id, 20)
    assert final.status is RunStatus.COMPLETED and final.instance_id == "staying"
    events = await _collect(staying, handed.run_id)
    _check_numbering(events)
    retrying = [e.payload() for e in events if e.name == "RunRetrying"]
    assert [r["reason"] for r in retrying] == ["shutdown"]
    # Without a retry left, shutdown cancels as before.
    assert (await staying.get_run(plain.run_id)).status is RunStatus.CANCELLED


async def test_an_abandoned_inline_stream_cancels_its_queued_run(
    make_manager: MakeManager,
) -> None:
    manager = await make_manager("a", max_active_runs=1)
    busy = await _start(manager, "echo", words(300, "busy"))
    component = manager.component("agents", "echo")
    record, stream = await manager.start_and_follow(component, "later", cancel_on_close=True)
    assert record.status is RunStatus.QUEUED
    events = stream.events()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.3):
            async for _ in events:
                pass
    await events.aclose()  # the client left before its run started
    for _ in range(100):
        if (await manager.get_run(record.run_id)).status is RunStatus.CANCELLED:
            break
        await asyncio.sleep(0.05)
    assert (await manager.get_run(record.run_id)).status is RunStatus.CANCELLED
    await manager.cancel(busy.run_id)


async def test_multitask_interrupt_starts_while_the_interrupted_run_is_still_ending(
    make_manager: MakeManager,
) -> None:
    """The active run was asked to cancel but has not ended within ``cancel_wait`` (its owner
    crashed and its lease has not lapsed yet; a tool that does not stop at once): the
    interrupting run starts all the same; only a run that got in meanwhile keeps it out."""
    manager = await make_manager("a", cancel_wait=0.2)
    hung = run_record("hung", instance_id="gone", lease_until=time.time() + 60, session_id="s")
    await manager.store.create_run(hung)
    record = await _start(manager, "echo", "now", session_id="s", multitask="interrupt")
    assert (await manager.wait(record.run_id, 10)).status is RunStatus.COMPLETED
