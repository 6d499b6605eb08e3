"""Model-led teams, and the run engine's guarantees for what models and tools produce: resumes at
random cursors equal the uninterrupted stream, and the database replay equals it byte for byte."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from agentos import Agent, AgentOS, EchoModel, Event, OpenAIChat, Settings, Team
from tests.fake_openai import MODEL, FakeOpenAI, Pause, Reply, chunk, text_reply, tool_reply
from tests.servers import ThreadServer, wait_for
from tests.sse import Frame, collect, events_only, frames


def chat_model(fake: FakeOpenAI) -> OpenAIChat:
    return OpenAIChat(model=MODEL, base_url=fake.base_url, api_key="k")  # type: ignore[attr-defined]


def coordinate_team(fake: FakeOpenAI) -> Team:
    researcher = Agent(id="researcher", model=chat_model(fake), description="finds facts")
    writer = Agent(id="writer", model=EchoModel(prefix="Draft: "))
    return Team(
        id="desk",
        mode="coordinate",
        model=chat_model(fake),
        instructions="Delegate.",
        members=[researcher, writer],
    )


def script_team(fake: FakeOpenAI, pause: float = 0.0) -> None:
    fake.script(
        tool_reply([("d1", "delegate_to_researcher", '{"task": "find the facts"}')]),  # leader
        text_reply(["Facts", " found"], pause=pause),  # researcher
        tool_reply([("d2", "delegate_to_writer", '{"task": "write it up"}')]),  # leader
        text_reply(["All", " done"], reasoning=["hmm"], pause=pause),  # leader's answer
    )


async def test_a_coordinate_team_delegates_to_two_members(
    fake: FakeOpenAI, settings: Settings
) -> None:
    script_team(fake)
    team = coordinate_team(fake)
    async with AgentOS(teams=[team], settings=settings):
        events = [e async for e in await team.arun("report please", stream=True)]
    assert isinstance(events[0], Event)
    payloads = [e.payload() for e in events]
    shape = [(p["event"], p.get("member_id")) for p in payloads]
    assert shape == [
        ("TeamRunStarted", None),
        ("ToolCallStarted", None),
        ("RunStarted", "researcher"),
        ("RunContent", "researcher"),
        ("RunContent", "researcher"),
        ("RunCompleted", "researcher"),
        ("ToolCallCompleted", None),
        ("ToolCallStarted", None),
        ("RunStarted", "writer"),
        *[("RunContent", "writer")] * 4,  # "Draft:", " write", " it", " up"
        ("RunCompleted", "writer"),
        ("ToolCallCompleted", None),
        ("ReasoningContent", None),
        ("TeamRunContent", None),
        ("TeamRunContent", None),
        ("TeamRunCompleted", None),
    ]
    assert [p["event_index"] for p in payloads] == list(range(len(payloads)))
    assert payloads[1]["tool_name"] == "delegate_to_researcher"
    assert payloads[1]["tool_args"] == {"task": "find the facts"}
    assert payloads[2]["input"] == "find the facts"
    assert payloads[5]["metrics"]["model"] == MODEL  # the member's own completed event
    assert payloads[6]["result"] == "Facts found"
    assert payloads[14]["result"] == "Draft: write it up"
    assert payloads[-1]["content"] == "All done"
    assert payloads[-1]["metrics"]["total_tokens"] == 29 + 29 + 18  # the leader's three calls
    leader_tools = [t["function"]["name"] for t in fake.requests[0]["tools"]]
    assert leader_tools == ["delegate_to_researcher", "delegate_to_writer"]
    # The leader's second call holds the researcher's reply as the tool result.
    assert fake.requests[2]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "d1",
        "content": "Facts found",
    }


def _key(frame: Frame) -> tuple[str | None, str | None, str]:
    return (frame.id, frame.event, frame.data)


@pytest.mark.parametrize("kind", ["agents", "teams"])
async def test_model_runs_resume_exactly_and_replay_from_the_database_byte_for_byte(
    kind: str,
    fake: FakeOpenAI,
    settings: Settings,
    serve_thread: Callable[[AgentOS], ThreadServer],
) -> None:
    rng = random.Random(kind)

    def add(a: int, b: int) -> int:
        return a + b

    def upper(text: str) -> str:
        return text.upper()

    if kind == "agents":
        cid = "helper"
        agent = Agent(id=cid, model=chat_model(fake), tools=[add, upper])
        agent_os = AgentOS(agents=[agent], settings=settings.replace(buffer_ttl=0.5))
        fake.script(
            tool_reply(
                [("c1", "add", '{"a": 1, "b": 2}'), ("c2", "upper", '{"text": "ü\\u2028"}')]
            ),
            text_reply([f"w{i} " for i in range(40)], reasoning=["r1", "r2"], pause=0.01),
        )
    else:
        cid = "desk"
        agent_os = AgentOS(teams=[coordinate_team(fake)], settings=settings.replace(buffer_ttl=0.5))
        script_team(fake, pause=0.02)
    url = serve_thread(agent_os).url
    path = f"/{kind}/{cid}/runs"

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def resume(cursor: int) -> list[Frame]:
            async with client.stream(
                "GET", f"{path}/{run_id}/resume", params={"last_event_index": cursor}
            ) as response:
                assert response.status_code == 200
                return events_only(await collect(response))

        live: list[Frame] = []
        resumes: list[tuple[int, asyncio.Task[list[Frame]]]] = []
        async with client.stream(
            "POST", path, data={"message": "go", "background": "true", "stream": "true"}
        ) as response:
            run_id = response.headers["x-run-id"]
            async for frame in frames(response):
                if frame.is_meta:
                    continue
                live.append(frame)
                if rng.random() < 0.3:
                    cursor = rng.randint(-1, len(live) - 1)
                    resumes.append((cursor, asyncio.create_task(resume(cursor))))
        assert live[-1].event in ("RunCompleted", "TeamRunCompleted")
        assert [int(f.id or -1) for f in live] == list(range(len(live)))
        assert len(resumes) >= 3
        for cursor, task in resumes:
            assert [_key(f) for f in await task] == [_key(f) for f in live[cursor + 1 :]]

        for _ in range(100):  # until the buffer has expired
            if agent_os.manager.buffers.get(run_id) is None:
                break
            await asyncio.sleep(0.05)
        async with client.stream("GET", f"{path}/{run_id}/resume") as response:
            replay = await collect(response)
        assert replay[0].payload["source"] == "database"
        assert [_key(f) for f in replay[1:]] == [_key(f) for f in live]
        for cursor in rng.sample(range(-1, len(live) - 1), 5):
            assert [_key(f) for f in await resume(cursor)] == [_key(f) for f in live[cursor + 1 :]]


# -- every member run and tool call that starts ends once --------------------------------------


def check_each_started_part_ends_once(events: list[Event]) -> None:
    """Each member run (by member_run_id) has one end event of its kind, its last; each
    ToolCallStarted one ToolCallCompleted or ToolCallError."""
    by_member: dict[str, list[str]] = {}
    calls: dict[str, list[str]] = {}
    for event in events:
        payload = event.payload()
        member_run = payload.get("member_run_id")
        if member_run is not None:
            by_member.setdefault(member_run, []).append(event.name)
        if event.name == "ToolCallStarted":
            calls.setdefault(payload["tool_call_id"], [])
        elif event.name in ("ToolCallCompleted", "ToolCallError"):
            calls[payload["tool_call_id"]].append(event.name)
    assert by_member
    for member_run, names in by_member.items():
        ends = [n for n in names if n.endswith(("RunCompleted", "RunError", "RunCancelled"))]
        assert len(ends) == 1 and names[-1] == ends[0], (member_run, names)
    assert all(len(ends) == 1 for ends in calls.values()), calls


async def test_a_member_stopped_at_tool_timeout_ends_with_its_cancelled_event(
    fake: FakeOpenAI, settings: Settings
) -> None:
    fake.script(
        tool_reply([("d1", "delegate_to_researcher", '{"task": "dig"}')]),  # leader
        Reply([chunk({"content": "Digging"}), Pause(30)]),  # researcher: stalls
        text_reply(["Gave up"]),  # leader
    )
    team = coordinate_team(fake)
    async with AgentOS(teams=[team], settings=settings.replace(tool_timeout=0.5)):
        events = [e async for e in await team.arun("go", stream=True)]
    shape = [(e.name, e.payload().get("member_id")) for e in events]
    assert shape == [
        ("TeamRunStarted", None),
        ("ToolCallStarted", None),
        ("RunStarted", "researcher"),
        ("RunContent", "researcher"),
        ("RunCancelled", "researcher"),
        ("ToolCallError", None),
        ("TeamRunContent", None),
        ("TeamRunCompleted", None),
    ]
    assert events[4].payload()["reason"] == "cancelled"
    assert events[5].payload()["error"] == "timed out after 0.5 s"
    check_each_started_part_ends_once(events)
    await wait_for(lambda: fake.disconnects == 1)  # the member's model stream was closed


async def test_cancelling_a_coordinate_team_ends_its_member_and_the_leaders_tool_call(
    fake: FakeOpenAI, settings: Settings
) -> None:
    fake.script(
        tool_reply(
            [
                ("d1", "delegate_to_researcher", '{"task": "dig"}'),
                ("d2", "delegate_to_writer", '{"task": "write"}'),
            ]
        ),
        Reply([chunk({"content": "Digging"}), Pause(30)]),  # researcher: stalls
    )
    team = coordinate_team(fake)
    async with AgentOS(teams=[team], settings=settings):
        run = await team.arun("go", background=True)
        stream = await team.aresume(run.run_id)
        events: list[Event] = []
        async for event in stream:
            assert isinstance(event, Event)
            events.append(event)
            if event.name == "RunContent" and event.payload()["member_id"] == "researcher":
                await team.acancel_run(run.run_id)
    names = [(e.name, e.payload().get("member_id")) for e in events]
    assert names[-1] == ("TeamRunCancelled", None)
    assert ("RunCancelled", "researcher") in names
    errors = {e.payload()["tool_call_id"]: e.payload() for e in events if e.name == "ToolCallError"}
    assert errors["d1"]["error"] == "cancelled"
    check_each_started_part_ends_once(events)
    await wait_for(lambda: fake.disconnects == 1)


async def test_a_failing_member_of_a_parallel_team_ends_the_others_with_their_cancel(
    settings: Settings,
) -> None:
    async def slow(message: str) -> AsyncIterator[str]:
        yield "working"
        await asyncio.sleep(30)
        yield "never"

    async def fails(message: str) -> AsyncIterator[str]:
        yield "trying"
        await asyncio.sleep(0.1)
        raise RuntimeError("broke")

    team = Team(
        id="both",
        mode="parallel",
        members=[Agent(id="slow", fn=slow), Agent(id="fails", fn=fails)],
    )
    async with AgentOS(teams=[team], settings=settings):
        events = [e async for e in await team.arun("go", stream=True)]
    ends = {
        e.payload()["member_id"]: (e.name, e.payload())
        for e in events
        if e.name in ("RunError", "RunCancelled")
    }
    assert ends["fails"] == ("RunError", ends["fails"][1])
    assert ends["fails"][1]["error"] == "RuntimeError: broke"
    assert ends["slow"][0] == "RunCancelled"
    assert events[-1].name == "TeamRunError"
    assert events[-1].payload()["error"] == "RuntimeError: broke"
    check_each_started_part_ends_once(events)
