"""Model-led teams, and the run engine's guarantees for what models and tools produce: resumes at
random cursors equal the uninterrupted stream, and the database replay equals it byte for byte."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx
import pytest

from agentos import Agent, AgentOS, EchoModel, Event, OpenAIChat, Settings, Team
from tests.fake_openai import MODEL, FakeOpenAI, text_reply, tool_reply
from tests.servers import ThreadServer
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
