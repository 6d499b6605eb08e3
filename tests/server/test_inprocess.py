"""The in-process API: agent.arun in the four modes, aresume, aget_run, aattempts,
acancel_run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agentos import (
    Agent,
    AgentOS,
    EchoModel,
    Event,
    Meta,
    RunNotFound,
    RunStatus,
    Settings,
    Team,
    Workflow,
)
from agentos.retries import RetryPolicy, RunOptions


@pytest.fixture
async def agent(tmp_path: Path):
    agent = Agent(id="echo", model=EchoModel(0.01))
    async with AgentOS(
        agents=[agent],
        settings=Settings(db_url=f"sqlite+aiosqlite:///{tmp_path}/a.db", instance_id="t"),
    ):
        yield agent


async def test_four_modes(agent: Agent) -> None:
    run = await agent.arun("one two")
    assert run.status is RunStatus.COMPLETED and run.content == "one two"

    pending = await agent.arun("one two", background=True)
    assert pending.status is RunStatus.PENDING

    events = [e async for e in await agent.arun("one two", stream=True)]
    assert [e.name for e in events] == ["RunStarted", "RunContent", "RunContent", "RunCompleted"]
    assert [e.index for e in events] == [0, 1, 2, 3]

    stream = await agent.arun("a b c d e f", stream=True, background=True, session_id="s")
    first = await anext(stream)
    await stream.aclose()  # a background stream may be dropped...
    resumed = [e async for e in await agent.aresume(first.payload()["run_id"], first.index)]
    assert [e.index for e in resumed] == list(range(1, 8))  # ...and re-attached
    assert resumed[-1].name == "RunCompleted"


async def test_closing_an_inline_stream_cancels(agent: Agent) -> None:
    stream = await agent.arun("a b c d e f g h", stream=True)
    first = await anext(stream)
    await stream.aclose()
    run_id = first.payload()["run_id"]
    for _ in range(100):
        run = await agent.aget_run(run_id)
        if run.status.ended:
            break
        await asyncio.sleep(0.01)
    assert run.status is RunStatus.CANCELLED


async def test_resume_with_meta_and_cancel(agent: Agent) -> None:
    run = await agent.arun(" ".join(["w"] * 50), background=True)
    await asyncio.sleep(0.05)
    items = []
    async for item in await agent.aresume(run.run_id, 0, meta=True):
        items.append(item)
        if isinstance(item, Meta) and item.name == "subscribed":
            cancelled = await agent.acancel_run(run.run_id)
            assert cancelled.status is RunStatus.CANCELLED
    assert isinstance(items[0], Meta) and items[0].name == "catch_up"
    assert isinstance(items[-1], Event) and items[-1].name == "RunCancelled"
    with pytest.raises(RunNotFound):
        await agent.aget_run("missing")


async def test_attempts_and_run_options(agent: Agent) -> None:
    options = RunOptions(retry_policy=RetryPolicy(max_attempts=3), timeout=30, multitask="enqueue")
    run = await agent.arun("one two", options=options)
    (attempt,) = await agent.aattempts(run.run_id)
    assert attempt["attempt"] == 1 and attempt["outcome"] == "COMPLETED"
    assert attempt["error"] is None and attempt["started_at"] <= attempt["ended_at"]
    stored = await agent.aget_run(run.run_id)
    assert stored.retry_policy == RetryPolicy(max_attempts=3).to_json()
    assert (stored.timeout, stored.multitask) == (30, "enqueue")
    with pytest.raises(RunNotFound):
        await agent.aattempts("missing")


async def test_standalone_agent_runs_without_a_server() -> None:
    async with Team(
        id="t", members=[Agent(id="a", model=EchoModel()), Agent(id="b", model=EchoModel())]
    ) as team:
        run = await team.arun("hi")
        assert run.status is RunStatus.COMPLETED and run.content == "hi\nhi"

    async def double(text: str) -> str:
        return text * 2

    flow = Workflow(id="f", steps=[Agent(id="s1", model=EchoModel()), double])
    try:
        events = [e async for e in await flow.arun("ab", stream=True)]
        assert events[-1].name == "WorkflowCompleted" and events[-1].payload()["content"] == "abab"
    finally:
        await flow.aclose()


async def test_component_validation() -> None:
    with pytest.raises(ValueError):
        Agent(id="bad id", model=EchoModel())
    with pytest.raises(ValueError):
        Agent(id="x")

    def not_async(message: str) -> str:
        return message

    with pytest.raises(TypeError):
        Agent(id="x", fn=not_async)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AgentOS(agents=[Agent(id="a", model=EchoModel()), Agent(id="a", model=EchoModel())])
