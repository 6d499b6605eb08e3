"""Tasks in-process: each schedule kind, overlap and session policies, pause and resume, catchup
after downtime, delete while a run is active, trigger, and the options a task gives its runs.

Most tests drive the scheduler by hand (``fire_due(now)`` with the scheduler loop off) with a
controllable clock; the interval test uses real time. SQLite and PostgreSQL (``db_url``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentos import Agent, AgentOS, EchoModel, Event, RunStatus, Settings
from agentos.errors import InvalidRequest, TaskNotFound, WaitTimeout
from agentos.events import Meta
from agentos.schedules import occurrence_id
from agentos.tasks import DEFAULT_RETRY_POLICY
from tests.apps import flaky
from tests.pgdb import db_url, pg_url  # noqa: F401
from tests.servers import wait_for

T0 = 1_900_000_000.0  # a whole number of seconds, far in the future


class _Gate:
    """Runs of the ``slow`` agent wait until the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started = 0

    async def slow(self, message: str) -> AsyncIterator[str]:
        self.started += 1
        await self.open.wait()
        yield "done"


def _os(url: str, gate: _Gate, **settings: Any) -> AgentOS:
    values: dict[str, Any] = {
        "db_url": url,
        "instance_id": "one",
        "shutdown_grace": 1.0,
        "task_scheduler": False,
        "task_misfire_grace": 30.0,
        **settings,
    }
    return AgentOS(
        agents=[
            Agent(id="echo", model=EchoModel(0)),
            Agent(id="slow", fn=gate.slow),
            Agent(id="flaky", fn=flaky(failures=1)),
            Agent(id="broken", fn=flaky(failures=99)),
            Agent(id="slow-first", fn=flaky(failures=0, slow_first=30.0)),
        ],
        settings=Settings(**values),
    )


class _Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gate() -> _Gate:
    return _Gate()


@pytest.fixture
async def agent_os(db_url: str, gate: _Gate) -> AsyncIterator[AgentOS]:  # noqa: F811
    async with _os(db_url, gate) as served:
        served.tasks.clock = _Clock()
        yield served
        gate.open.set()


def _clock(agent_os: AgentOS) -> _Clock:
    clock = agent_os.tasks.clock
    assert isinstance(clock, _Clock)
    return clock


async def _interval(agent_os: AgentOS, agent: str = "slow", **fields: Any) -> str:
    task = await agent_os.tasks.create(
        {
            "component_id": agent,
            "message": "tick",
            "schedule": {"kind": "interval", "every_seconds": 10, "start_at": T0},
            **fields,
        }
    )
    return task.task_id


async def _statuses(agent_os: AgentOS, task_id: str) -> list[tuple[str | None, RunStatus]]:
    runs = await agent_os.tasks.runs(task_id)
    return sorted((r.occurrence, r.status) for r in runs)


async def test_interval_runs_fire_in_real_time(db_url: str, gate: _Gate) -> None:  # noqa: F811
    async with _os(db_url, gate, task_scheduler=True, task_tick=0.1) as served:
        task = await served.tasks.create(
            {
                "component_id": "echo",
                "message": "héllo 🌍",
                "schedule": {"kind": "interval", "every_seconds": 0.3},
            }
        )

        async def three() -> bool:
            return len(await served.tasks.runs(task.task_id)) >= 3

        for _ in range(100):
            if await three():
                break
            await asyncio.sleep(0.1)
        runs = await served.tasks.runs(task.task_id)
        assert len(runs) >= 3
        assert len({r.occurrence for r in runs}) == len(runs)
        assert {r.session_id for r in runs} == {task.session_id}  # session_policy task
        assert all(r.task_id == task.task_id and r.input == "héllo 🌍" for r in runs)
        await served.tasks.pause(task.task_id)
        done = await served.manager.wait(runs[0].run_id, 10)
        assert done.status is RunStatus.COMPLETED


async def test_skip_if_running(agent_os: AgentOS, gate: _Gate) -> None:
    tasks = agent_os.tasks
    task_id = await _interval(agent_os, overlap_policy="skip_if_running")
    await tasks.fire_due(T0 + 10)
    await tasks.fire_due(T0 + 20)  # the first still runs: skipped
    assert [o for o, _ in await _statuses(agent_os, task_id)] == [occurrence_id(T0 + 10)]
    assert (await tasks.get(task_id)).skipped == 1
    gate.open.set()
    runs = await tasks.runs(task_id)
    await agent_os.manager.wait(runs[0].run_id, 10)
    await tasks.fire_due(T0 + 30)
    assert [o for o, _ in await _statuses(agent_os, task_id)] == [
        occurrence_id(T0 + 10),
        occurrence_id(T0 + 30),
    ]


async def test_queue_next_keeps_one_occurrence_waiting(agent_os: AgentOS, gate: _Gate) -> None:
    tasks = agent_os.tasks
    task_id = await _interval(agent_os, overlap_policy="queue_next")
    await tasks.fire_due(T0 + 10)
    await tasks.fire_due(T0 + 20)  # waits for the first run
    await tasks.fire_due(T0 + 30)  # one waits already: skipped
    task = await tasks.get(task_id)
    assert task.to_dict()["queued_occurrence"] == occurrence_id(T0 + 20)
    assert task.skipped == 1
    assert len(await tasks.runs(task_id)) == 1
    gate.open.set()
    first = (await tasks.runs(task_id))[0]
    await agent_os.manager.wait(first.run_id, 10)
    await tasks.fire_due(T0 + 31)
    occurrences = [o for o, _ in await _statuses(agent_os, task_id)]
    assert occurrences == [occurrence_id(T0 + 10), occurrence_id(T0 + 20)]
    assert (await tasks.get(task_id)).queued_at is None


async def test_cancel_previous(agent_os: AgentOS, gate: _Gate) -> None:
    tasks = agent_os.tasks
    task_id = await _interval(agent_os, overlap_policy="cancel_previous")
    await tasks.fire_due(T0 + 10)
    first = (await tasks.runs(task_id))[0]
    await tasks.fire_due(T0 + 20)
    ended = await agent_os.manager.wait(first.run_id, 10)
    assert ended.status is RunStatus.CANCELLED
    runs = await tasks.runs(task_id)
    assert [r.occurrence for r in runs] == [occurrence_id(T0 + 20), occurrence_id(T0 + 10)]
    assert not runs[0].status.ended


async def test_allow_parallel_and_session_per_run(agent_os: AgentOS, gate: _Gate) -> None:
    tasks = agent_os.tasks
    task_id = await _interval(agent_os, overlap_policy="allow_parallel", session_policy="run")
    await tasks.fire_due(T0 + 10)
    await tasks.fire_due(T0 + 20)
    runs = await tasks.runs(task_id)
    assert len(runs) == 2 and not any(r.status.ended for r in runs)
    assert len({r.session_id for r in runs}) == 2
    await wait_for(lambda: gate.started == 2)


async def test_fixed_session(agent_os: AgentOS) -> None:
    task_id = await _interval(agent_os, "echo", session_policy="fixed", session_id="my-session")
    await agent_os.tasks.fire_due(T0 + 10)
    run = (await agent_os.tasks.runs(task_id))[0]
    assert run.session_id == "my-session"


async def test_pause_stops_firing_and_resume_starts_at_the_next_occurrence(
    agent_os: AgentOS,
) -> None:
    tasks = agent_os.tasks
    clock = _clock(agent_os)
    task_id = await _interval(agent_os, "echo")
    await tasks.fire_due(T0 + 10)
    await tasks.pause(task_id)
    await tasks.fire_due(T0 + 20)
    await tasks.fire_due(T0 + 35)
    [first] = await tasks.runs(task_id)
    # Ended before T0 + 50, or skip_if_running would skip that occurrence.
    await agent_os.manager.wait(first.run_id, 10)
    clock.now = T0 + 45
    task = await tasks.resume(task_id)
    assert task.next_fire_at == T0 + 50  # no burst of the missed ones (catchup skip)
    await tasks.fire_due(T0 + 46)
    assert len(await tasks.runs(task_id)) == 1
    await tasks.fire_due(T0 + 50)
    assert [r.occurrence for r in await tasks.runs(task_id)] == [
        occurrence_id(T0 + 50),
        occurrence_id(T0 + 10),
    ]


async def test_resume_with_catchup_latest_runs_the_latest_missed_once(agent_os: AgentOS) -> None:
    tasks = agent_os.tasks
    clock = _clock(agent_os)
    task_id = await _interval(agent_os, "echo", catchup="latest")
    await tasks.pause(task_id)
    clock.now = T0 + 45
    await tasks.resume(task_id)
    await tasks.fire_due(T0 + 45)
    assert [r.occurrence for r in await tasks.runs(task_id)] == [occurrence_id(T0 + 40)]


async def test_a_paused_component_skips_occurrences(agent_os: AgentOS) -> None:
    tasks = agent_os.tasks
    task_id = await _interval(agent_os, "echo")
    await agent_os.manager.lifecycle.set_paused("agents", "echo", True)
    await tasks.fire_due(T0 + 10)
    task = await tasks.get(task_id)
    assert task.skipped == 1 and task.next_fire_at == T0 + 20
    await agent_os.manager.lifecycle.set_paused("agents", "echo", False)
    await tasks.fire_due(T0 + 20)
    assert len(await tasks.runs(task_id)) == 1


async def test_delete_while_a_run_is_active(agent_os: AgentOS, gate: _Gate) -> None:
    tasks = agent_os.tasks
    task_id = await _interval(agent_os)
    await tasks.fire_due(T0 + 10)
    run = (await tasks.runs(task_id))[0]
    await tasks.delete(task_id)
    with pytest.raises(TaskNotFound):
        await tasks.get(task_id)
    await tasks.fire_due(T0 + 20)  # nothing to fire, nothing breaks
    gate.open.set()
    ended = await agent_os.manager.wait(run.run_id, 10)
    assert ended.status is RunStatus.COMPLETED and ended.task_id == task_id
    with pytest.raises(TaskNotFound):
        await tasks.delete(task_id)


async def test_once_fires_once_and_manual_never(agent_os: AgentOS) -> None:
    tasks = agent_os.tasks
    once = await tasks.create(
        {"component_id": "echo", "message": "m", "schedule": {"kind": "once", "at": T0 + 5}}
    )
    manual = await tasks.create({"component_id": "echo", "message": "m"})
    await tasks.fire_due(T0 + 6)
    await tasks.fire_due(T0 + 100)
    assert [r.occurrence for r in await tasks.runs(once.task_id)] == [occurrence_id(T0 + 5)]
    assert (await tasks.get(once.task_id)).next_fire_at is None
    assert await tasks.runs(manual.task_id) == []


async def test_trigger_wait_and_its_timeout(agent_os: AgentOS, gate: _Gate) -> None:
    tasks = agent_os.tasks
    echo = await tasks.create({"component_id": "echo", "message": "a b c"})
    run = await tasks.trigger(echo.task_id, wait=10)
    assert run.status is RunStatus.COMPLETED and run.content == "a b c"
    assert run.occurrence is not None and run.occurrence.startswith("manual:")
    slow = await tasks.create({"component_id": "slow", "message": "x"})
    with pytest.raises(WaitTimeout) as caught:
        await tasks.trigger(slow.task_id, wait=0.2)
    gate.open.set()
    ended = await agent_os.manager.wait(caught.value.run_id, 10)
    assert ended.status is RunStatus.COMPLETED


async def test_runs_carry_the_task_retry_policy_and_timeout(agent_os: AgentOS) -> None:
    task_id = await _interval(
        agent_os,
        "echo",
        timeout_seconds=30,
        retry_policy={"max_attempts": 3, "delay": 0.1, "retry_on": ["exception"]},
    )
    await agent_os.tasks.fire_due(T0 + 10)
    run = (await agent_os.tasks.runs(task_id))[0]
    assert run.timeout == 30
    assert run.retry_policy is not None and '"max_attempts":3' in run.retry_policy


async def test_update_changes_the_schedule_and_unknown_component_is_422(agent_os: AgentOS) -> None:
    tasks = agent_os.tasks
    task_id = await _interval(agent_os, "echo")
    task = await tasks.update(
        task_id,
        {
            "schedule": {"kind": "cron", "cron": "0 9 * * *", "timezone": "Europe/Berlin"},
            "tags": ["daily"],
        },
    )
    assert task.schedule.kind == "cron" and task.next_fire_at is not None and task.next_fire_at > T0
    assert [t.task_id for t in await tasks.list_tasks(tag="daily")] == [task_id]
    assert await tasks.list_tasks(tag="dail") == []
    with pytest.raises(InvalidRequest, match="component_id"):
        await tasks.create({"component_id": "nobody", "message": "m"})
    with pytest.raises(InvalidRequest, match="component_id"):
        await tasks.update(task_id, {"component_id": "nobody"})


@pytest.mark.parametrize(
    ("catchup", "expected"),
    [
        ("skip", []),
        ("latest", [970.0]),  # the latest occurrence at least the grace (30 s) old ...
        ("all", [910.0, 920.0, 930.0, 940.0, 950.0, 960.0, 970.0]),  # ... or all within 95 s
    ],
)
async def test_restart_after_downtime_follows_catchup(
    tmp_path: Path, gate: _Gate, catchup: str, expected: list[float]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'down.db'}"
    async with _os(url, gate) as served:
        served.tasks.clock = _Clock()
        task_id = await _interval(
            served,
            "echo",
            catchup=catchup,
            catchup_window_seconds=95,
            overlap_policy="allow_parallel",  # one pass fires several: none is skipped
        )
        await served.tasks.fire_due(T0 + 10)
    # Every instance down from T0 + 15 to T0 + 1000; the occurrences due within the grace
    # (T0 + 980, 990, 1000) are on time and fire whatever catchup says.
    async with _os(url, gate) as served:
        await served.tasks.fire_due(T0 + 1000)
        runs = await served.tasks.runs(task_id)
        fired = sorted(r.occurrence for r in runs)
        on_time = [occurrence_id(T0 + t) for t in (10.0, 980.0, 990.0, 1000.0)]
        assert fired == sorted([*on_time, *(occurrence_id(T0 + t) for t in expected)])
        assert (await served.tasks.get(task_id)).next_fire_at == T0 + 1010


# -- retries, timeouts, the events of a task run --------------------------------------------


async def _events(agent_os: AgentOS, run_id: str) -> list[Event]:
    """A run's events, followed to its end (across its attempts)."""
    stream = await agent_os.manager.open_stream(run_id, -1, meta=False)
    assert stream is not None
    found: list[Event] = []
    async with asyncio.timeout(30):
        async for item in stream.events():
            assert not isinstance(item, Meta)
            found.append(item)
    assert [e.index for e in found] == list(range(len(found)))
    assert [e.terminal for e in found].count(True) == 1 and found[-1].terminal
    return found


async def _fire_one(agent_os: AgentOS, agent: str, **fields: Any) -> str:
    """Fire one occurrence (T0 + 10) of a new task; the id of its run."""
    task_id = await _interval(agent_os, agent, **fields)
    await agent_os.tasks.fire_due(T0 + 10)
    [run] = await agent_os.tasks.runs(task_id)
    return run.run_id


async def test_a_failed_task_run_is_retried_then_succeeds(agent_os: AgentOS) -> None:
    policy = {"max_attempts": 3, "delay": 0, "jitter": 0, "retry_on": ["exception"]}
    run_id = await _fire_one(agent_os, "flaky", retry_policy=policy)
    events = await _events(agent_os, run_id)
    names = [e.name for e in events]
    assert names == [
        "RunStarted", "RunContent", "RunRetrying", "RunStarted", "RunContent", "RunContent",
        "RunCompleted",
    ]  # fmt: skip
    retrying = events[2].payload()
    assert retrying["reason"] == "exception" and retrying["next_attempt"] == 2
    final = await agent_os.manager.get_run(run_id)
    assert final.status is RunStatus.COMPLETED and final.attempt == 2
    assert final.content == "attempt 2 done" and final.occurrence == occurrence_id(T0 + 10)
    # Still one run for the occurrence, and the task counts one firing.
    assert len(await agent_os.tasks.runs(final.task_id or "")) == 1
    assert (await agent_os.tasks.get(final.task_id or "")).fired == 1


async def test_a_task_run_whose_attempts_run_out_ends_in_error(agent_os: AgentOS) -> None:
    policy = {"max_attempts": 2, "delay": 0, "jitter": 0}
    run_id = await _fire_one(agent_os, "broken", retry_policy=policy)
    events = await _events(agent_os, run_id)
    assert [e.name for e in events].count("RunRetrying") == 1
    last = events[-1].payload()
    assert events[-1].name == "RunError" and last["attempt"] == 2
    assert [a["outcome"] for a in last["attempts"]] == ["exception", "ERROR"]
    final = await agent_os.manager.get_run(run_id)
    assert final.status is RunStatus.ERROR and final.attempt == 2
    assert "upstream gone (2)" in (final.error or "")


async def test_a_task_run_times_out_and_its_retry_completes(agent_os: AgentOS) -> None:
    # Without retries on timeouts: one attempt, ended by the task's timeout.
    once = await _fire_one(agent_os, "slow", timeout_seconds=0.3)
    events = await _events(agent_os, once)
    assert events[-1].name == "RunError" and events[-1].payload()["error"] == "timeout"
    assert "RunRetrying" not in [e.name for e in events]
    # With them: the first attempt (30 s slow) times out, the second completes.
    policy = {"max_attempts": 2, "delay": 0, "retry_on": ["timeout"]}
    retried = await _fire_one(agent_os, "slow-first", timeout_seconds=1, retry_policy=policy)
    events = await _events(agent_os, retried)
    reasons = [e.payload()["reason"] for e in events if e.name == "RunRetrying"]
    assert reasons == ["timeout"] and events[-1].name == "RunCompleted"
    assert (await agent_os.manager.get_run(retried)).attempt == 2


async def test_a_task_run_without_a_policy_retries_a_lost_instance(agent_os: AgentOS) -> None:
    run_id = await _fire_one(agent_os, "echo")
    run = await agent_os.manager.get_run(run_id)
    assert run.retry_policy == DEFAULT_RETRY_POLICY.to_json()
    assert set(DEFAULT_RETRY_POLICY.retry_on) == {"instance_lost", "shutdown"}
    # An exception is not retried by default: one attempt.
    events = await _events(agent_os, await _fire_one(agent_os, "flaky"))
    assert events[-1].name == "RunError" and "RunRetrying" not in [e.name for e in events]


async def test_started_events_say_when_the_run_was_scheduled_queued_and_claimed(
    db_url: str,  # noqa: F811
    gate: _Gate,
) -> None:
    # One run at a time here: the second occurrence waits in the run queue.
    async with _os(db_url, gate, max_active_runs=1, queue_poll_interval=0.1) as served:
        served.tasks.clock = _Clock()
        busy = await _fire_one(served, "slow", overlap_policy="allow_parallel")
        policy = {"max_attempts": 2, "delay": 0, "jitter": 0, "retry_on": ["exception"]}
        task = await served.tasks.create(
            {"component_id": "flaky", "message": "m", "schedule": {"kind": "once", "at": T0 + 5},
             "retry_policy": policy}
        )  # fmt: skip
        await served.tasks.fire_due(T0 + 6)
        [queued] = await served.tasks.runs(task.task_id)
        assert queued.status is RunStatus.QUEUED
        gate.open.set()
        first = (await _events(served, busy))[0].payload()
        busy_run = await served.manager.get_run(busy)
        events = await _events(served, queued.run_id)
        run = await served.manager.get_run(queued.run_id)
    # Created here at once: scheduled and claimed (its start), never queued.
    assert first["scheduled_at"] == T0 + 10 and "queued_at" not in first
    assert first["claimed_at"] == round(busy_run.created_at, 3)
    started = [e.payload() for e in events if e.name == "RunStarted"]
    assert [s["attempt"] for s in started] == [1, 2]
    assert {s["scheduled_at"] for s in started} == {T0 + 5}
    # Attempt 1 waited in the queue from its creation; attempt 2 from attempt 1's end.
    attempts = run.attempt_list()
    assert started[0]["queued_at"] == round(queued.created_at, 3)
    assert started[0]["claimed_at"] == round(attempts[0]["started_at"], 3)
    assert started[1]["queued_at"] == round(attempts[0]["ended_at"], 3)
    assert started[1]["claimed_at"] == round(attempts[1]["started_at"], 3)
    assert started[0]["queued_at"] <= started[0]["claimed_at"] <= started[1]["queued_at"]
    assert started[1]["queued_at"] <= started[1]["claimed_at"]


async def test_a_trigger_run_is_scheduled_at_its_trigger(agent_os: AgentOS) -> None:
    task = await agent_os.tasks.create({"component_id": "echo", "message": "now"})
    run = await agent_os.tasks.trigger(task.task_id, wait=10)
    first = (await _events(agent_os, run.run_id))[0].payload()
    assert first["scheduled_at"] == T0  # the scheduler's clock at the trigger
    assert "queued_at" not in first and first["claimed_at"] == round(run.created_at, 3)


# -- a claim whose instance died ---------------------------------------------------------------


async def test_an_occurrence_claimed_by_a_dead_instance_fires_once_elsewhere(
    db_url: str,  # noqa: F811
    gate: _Gate,
) -> None:
    async with _os(db_url, gate) as a, _os(db_url, gate, instance_id="two") as b:
        for served in (a, b):
            served.tasks.clock = _Clock()
        task_id = await _interval(a, "echo", overlap_policy="allow_parallel")
        # "one" claims the due task and dies before it creates the run (no release).
        claimed = await a.manager.store.claim_tasks("one", T0 + 10, T0 + 20, 10)
        assert [t.task_id for t in claimed] == [task_id]
        assert await b.tasks.fire_due(T0 + 11) == 0  # the claim holds until T0 + 20
        assert await b.tasks.runs(task_id) == []
        assert await b.tasks.fire_due(T0 + 21) == 1  # expired: "two" fires it (and T0 + 20)
        # "one" comes back from the dead with what it claimed: the run exists, nothing more.
        release = await a.tasks._fire(claimed[0], T0 + 10, [])
        await a.manager.store.release_tasks("one", [release])
        runs = await b.tasks.runs(task_id)
        assert sorted(r.occurrence or "" for r in runs) == [
            occurrence_id(T0 + 10),
            occurrence_id(T0 + 20),
        ]
        task = await b.tasks.get(task_id)
        assert task.next_fire_at == T0 + 30 and task.claimed_by is None


# -- batches -------------------------------------------------------------------------------------


async def test_a_pass_fires_full_batches_together_each_task_once(
    db_url: str,  # noqa: F811
    gate: _Gate,
) -> None:
    async with _os(db_url, gate, task_claim_batch=2) as served:
        clock = served.tasks.clock = _Clock()
        ids = [await _interval(served, "echo", overlap_policy="allow_parallel") for _ in range(5)]
        clock.now = T0 + 10
        store = served.tasks.store
        steps: list[str] = []
        all_claimed = asyncio.Event()
        claim, release = store.claim_tasks, store.release_tasks

        async def claims(*args: Any) -> Any:
            claimed = await claim(*args)
            steps.append(f"claim {len(claimed)}")
            if len(claimed) < 2:
                all_claimed.set()
            return claimed

        async def releases(instance_id: str, done: Any) -> None:
            # A batch is released only once every batch has been claimed: a pass that waited
            # for a batch's release before claiming the next would never get here in time.
            try:
                await asyncio.wait_for(all_claimed.wait(), 5)
            except TimeoutError:
                steps.append("timed out waiting for the next claim")
            await release(instance_id, done)
            steps.append(f"release {len(done)}")

        store.claim_tasks, store.release_tasks = claims, releases  # type: ignore[method-assign]
        await served.tasks._pass()
        # Three batches (2, 2, 1), the next claimed while the one before is being fired.
        assert steps[:3] == ["claim 2", "claim 2", "claim 1"]
        assert sorted(steps[3:]) == ["release 1", "release 2", "release 2"]
        for task_id in ids:
            assert [r.occurrence for r in await served.tasks.runs(task_id)] == [
                occurrence_id(T0 + 10)
            ]
            task = await served.tasks.get(task_id)
            assert task.next_fire_at == T0 + 20 and task.claimed_by is None
        clock.now = T0 + 19
        await served.tasks._pass()  # nothing due: nothing more
        assert steps[6:] == ["claim 0"]


# -- metrics -------------------------------------------------------------------------------------


async def test_the_scheduler_counts_occurrences_and_their_lag(agent_os: AgentOS) -> None:
    tasks = agent_os.tasks
    lags: list[float] = []
    tasks.observer = lags.append
    clock = _clock(agent_os)
    task_id = await _interval(agent_os, "slow")
    clock.now = T0 + 10.25
    await tasks.fire_due()
    await tasks.fire_due(T0 + 20)  # the first still runs: skipped
    assert tasks.occurrences == {"fired": 1, "skipped": 1, "missed": 0}
    assert lags == [0.25]
    # Every instance down from T0 + 25 to T0 + 100 (the grace is 30 s): 30 ... 70 are missed
    # (catchup skip); 80, 90 and 100, within the grace, fire late.
    task = await tasks.update(task_id, {"overlap_policy": "allow_parallel"})
    assert task.next_fire_at == T0 + 30
    clock.now = T0 + 100
    await tasks.fire_due()
    assert tasks.occurrences == {"fired": 4, "skipped": 1, "missed": 5}
    assert lags[1:] == [20.0, 10.0, 0.0]
    runs = await tasks.runs(task_id)
    assert json.loads(runs[0].retry_policy or "{}")["retry_on"] == ["instance_lost", "shutdown"]
