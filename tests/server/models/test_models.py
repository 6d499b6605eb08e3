"""Real agents: OpenAIChat through the openai SDK over HTTP against a local fake server.

The fake server (``tests/fake_openai.py``) streams the real wire shapes of chat completion
chunks; agentos runs in-process (``AgentOS`` as a context manager) on a SQLite file.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agentos import Agent, AgentOS, Event, OpenAIChat, RunStatus, Settings, tool
from agentos.tools import Tool
from tests.fake_openai import (
    MODEL,
    Cut,
    FakeOpenAI,
    Pause,
    Reply,
    chunk,
    error_reply,
    text_reply,
    tool_reply,
)
from tests.proxy import TCPProxy
from tests.servers import wait_for
from tests.storage import ScriptedStore


def model(fake: FakeOpenAI) -> OpenAIChat:
    return OpenAIChat(model=MODEL, base_url=fake.base_url, api_key="test-key")  # type: ignore[attr-defined]


@pytest.fixture
def model_settings(settings: Settings) -> Settings:
    return settings.replace(
        model_retry_delay=0.01, model_retry_max_delay=2.0, model_read_timeout=5.0
    )


async def run_events(
    agent: Agent, settings: Settings, message: str = "hi", **kw: Any
) -> list[Event]:
    async with AgentOS(agents=[agent], settings=settings):
        return [e async for e in await agent.arun(message, stream=True, **kw)]  # type: ignore[misc]


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


# -- 1, 2: streamed output -------------------------------------------------------------------


async def test_content_and_reasoning_deltas_become_events_and_metrics(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    fake.script(text_reply(["Hel", "lo", " world"], reasoning=["let me ", "think"]))
    agent = Agent(id="a", model=model(fake), instructions="Be brief.")
    events = await run_events(agent, model_settings, "hello")

    assert names(events) == [
        "RunStarted",
        "ReasoningContent",
        "ReasoningContent",
        "RunContent",
        "RunContent",
        "RunContent",
        "RunCompleted",
    ]
    assert [e.payload()["content"] for e in events[1:6]] == [
        "let me ",
        "think",
        "Hel",
        "lo",
        " world",
    ]
    assert [e.index for e in events] == list(range(7))
    done = events[-1].payload()
    assert done["content"] == "Hello world"
    metrics = done["metrics"]
    assert metrics["input_tokens"] == 11
    assert metrics["output_tokens"] == 7
    assert metrics["total_tokens"] == 18
    assert metrics["model"] == MODEL
    assert 0 <= metrics["time_to_first_token"] <= metrics["duration"]
    request = fake.requests[0]
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert "tools" not in request


async def test_missing_api_key_is_a_clear_error_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIChat(model="m")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert OpenAIChat(model="m").name == "m"


# -- 3: tools --------------------------------------------------------------------------------


def test_tool_schema_comes_from_signature_hints_and_docstring() -> None:
    @tool(name="sum_up", timeout=3)
    def add(a: float, b: float = 1.0, tags: list[str] | None = None) -> float:
        """Add two numbers.

        Args:
            a: the first number
            b: the second
                number
        """
        return a + b

    assert isinstance(add, Tool)
    assert add.name == "sum_up"
    assert add.description == "Add two numbers."
    params = add.parameters
    assert params["type"] == "object"
    assert params["required"] == ["a"]
    assert params["properties"]["a"]["type"] == "number"
    assert params["properties"]["a"]["description"] == "the first number"
    assert params["properties"]["b"]["description"] == "the second number"
    assert params["properties"]["b"]["default"] == 1.0
    assert params["additionalProperties"] is False


async def test_split_tool_call_deltas_run_concurrently_and_feed_back(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    both_running = asyncio.Event()
    running = 0

    async def meet() -> None:
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        await asyncio.wait_for(both_running.wait(), 5)  # only if both run at once

    @tool
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        await meet()
        return a + b

    @tool
    async def shout(text: str) -> dict[str, str]:
        """Upper-case a text."""
        await meet()
        return {"loud": text.upper()}

    fake.script(
        tool_reply(
            [
                ("call_add", "add", '{"a": 20, "b": 22}'),
                ("call_shout", "shout", '{"text": "h\\u00e9llo"}'),
            ],
            piece=2,
        ),
        text_reply(["42 and HÉLLO"]),
    )
    agent = Agent(id="a", model=model(fake), tools=[add, shout])
    events = await run_events(agent, model_settings)

    assert names(events)[:3] == ["RunStarted", "ToolCallStarted", "ToolCallStarted"]
    started = [e.payload() for e in events if e.name == "ToolCallStarted"]
    assert [(s["tool_call_id"], s["tool_name"], s["tool_args"]) for s in started] == [
        ("call_add", "add", {"a": 20, "b": 22}),
        ("call_shout", "shout", {"text": "héllo"}),
    ]
    completed = {
        e.payload()["tool_call_id"]: e.payload() for e in events if e.name == "ToolCallCompleted"
    }
    assert completed["call_add"]["result"] == "42"
    assert json.loads(completed["call_shout"]["result"]) == {"loud": "HÉLLO"}
    assert all(c["duration"] >= 0 for c in completed.values())
    assert events[-1].name == "RunCompleted"
    assert events[-1].payload()["content"] == "42 and HÉLLO"
    assert events[-1].payload()["metrics"]["total_tokens"] == 29 + 18

    first, second = fake.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["add", "shout"]
    assert first["tools"][0]["function"]["parameters"]["properties"]["a"]["type"] == "integer"
    assistant, tool_a, tool_b = second["messages"][-3:]
    assert assistant["role"] == "assistant"
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_add", "call_shout"]
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"a": 20, "b": 22}'
    assert tool_a == {"role": "tool", "tool_call_id": "call_add", "content": "42"}
    assert tool_b["tool_call_id"] == "call_shout"


async def test_tool_errors_go_back_to_the_model_and_the_run_goes_on(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    def broken(x: int) -> int:
        raise ValueError("no such thing")

    @tool(timeout=0.2)
    async def slow() -> str:
        await asyncio.sleep(30)
        return "late"

    def add(a: int, b: int) -> int:
        return a + b

    fake.script(
        tool_reply(
            [
                ("c1", "broken", '{"x": 1}'),
                ("c2", "slow", "{}"),
                ("c3", "add", '{"a": "not a number", "b": 2}'),
                ("c4", "missing", "{}"),
                ("c5", "add", '{"a": 1'),
            ]
        ),
        text_reply(["recovered"]),
    )
    agent = Agent(id="a", model=model(fake), tools=[broken, slow, add])
    events = await run_events(agent, model_settings)

    errors = {
        e.payload()["tool_call_id"]: e.payload()["error"]
        for e in events
        if e.name == "ToolCallError"
    }
    assert errors["c1"] == "ValueError: no such thing"
    assert errors["c2"] == "timed out after 0.2 s"
    assert errors["c3"].startswith("invalid arguments: a:")
    assert "no tool named 'missing'" in errors["c4"]
    assert errors["c5"].startswith("arguments are not valid JSON")
    assert events[-1].name == "RunCompleted"
    assert events[-1].payload()["content"] == "recovered"
    fed_back = {
        m["tool_call_id"]: m["content"] for m in fake.requests[1]["messages"] if m["role"] == "tool"
    }
    assert fed_back["c1"] == "Error: ValueError: no such thing"
    assert fed_back["c2"] == "Error: timed out after 0.2 s"


async def test_tool_results_are_cut_to_tool_result_bytes(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    def big() -> str:
        return "é" * 100

    fake.script(tool_reply([("c1", "big", "{}")]), text_reply(["ok"]))
    agent = Agent(id="a", model=model(fake), tools=[big])
    events = await run_events(agent, model_settings.replace(tool_result_bytes=11))
    result = next(e.payload()["result"] for e in events if e.name == "ToolCallCompleted")
    assert result == "é" * 5 + "\n[truncated: 189 more bytes]"


async def test_tool_rounds_are_limited(fake: FakeOpenAI, model_settings: Settings) -> None:
    def ping() -> str:
        return "pong"

    fake.script(*(tool_reply([(f"c{i}", "ping", "{}")]) for i in range(3)))
    agent = Agent(id="a", model=model(fake), tools=[ping])
    events = await run_events(agent, model_settings.replace(max_tool_rounds=2))
    assert events[-1].name == "RunError"
    assert events[-1].payload()["error"].startswith("ToolRoundsExceeded")
    assert len(fake.requests) == 3


async def test_tool_calls_per_turn_are_limited_and_the_stream_closed_at_once(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    def ping() -> str:
        return "pong"

    two = tool_reply([("c1", "ping", "{}"), ("c2", "ping", "{}")])
    fake.script(two, text_reply(["two were fine"]))
    agent = Agent(id="a", model=model(fake), tools=[ping])
    settings = model_settings.replace(max_tool_calls=2)
    events = await run_events(agent, settings)
    assert names(events).count("ToolCallCompleted") == 2
    assert events[-1].name == "RunCompleted"

    # A third call, then a stream that would go on for 30 s: the run ends at the third call.
    fake.requests.clear()
    three = list(tool_reply([(f"c{i}", "ping", "{}") for i in range(3)]).items)
    fake.script(Reply([*three[:-2], Pause(30), *three[-2:]]))
    events = await run_events(agent, settings)
    assert names(events) == ["RunStarted", "RunError"]
    assert events[-1].payload()["error"] == (
        "ToolCallsExceeded: the model asked for more than 2 tool calls in one turn (max_tool_calls)"
    )
    assert len(fake.requests) == 1
    await wait_for(lambda: fake.disconnects == 1)


async def test_tool_arguments_past_tool_argument_bytes_are_refused_and_the_run_goes_on(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    calls: list[str] = []

    def note(text: str) -> str:
        calls.append(text)
        return "noted"

    exactly = '{"text": "abcdefgh"}'  # 20 bytes: at the limit, accepted
    too_big = '{"text": "' + "é" * 20 + '"}'  # 52 bytes
    fake.script(
        tool_reply([("c1", "note", exactly), ("c2", "note", too_big)], piece=4),
        text_reply(["done"]),
    )
    agent = Agent(id="a", model=model(fake), tools=[note])
    events = await run_events(agent, model_settings.replace(tool_argument_bytes=20))

    started = {
        e.payload()["tool_call_id"]: e.payload() for e in events if e.name == "ToolCallStarted"
    }
    assert started["c1"]["tool_args"] == {"text": "abcdefgh"}
    assert started["c2"]["tool_args"] == {}
    error = next(e.payload() for e in events if e.name == "ToolCallError")
    assert error["tool_call_id"] == "c2"
    assert error["error"] == (
        "the arguments were 52 bytes; at most 20 are accepted (tool_argument_bytes)"
    )
    assert calls == ["abcdefgh"]
    assert events[-1].name == "RunCompleted"
    assistant, result_1, result_2 = fake.requests[1]["messages"][-3:]
    assert [c["function"]["arguments"] for c in assistant["tool_calls"]] == [exactly, "{}"]
    assert result_1["content"] == "noted"
    assert result_2["content"] == f"Error: {error['error']}"


async def test_a_reply_past_model_reply_bytes_ends_the_run_and_closes_the_stream_at_once(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    # 8 bytes of reasoning and 12 of content fit in 24 (ö is 2 bytes); the next piece does not,
    # and the stream would then pause for 30 s.
    reply = list(text_reply(["hello ", "wörld", "!!!!!", "never"], reasoning=["thinking"]).items)
    fake.script(Reply([*reply[:5], Pause(30), *reply[5:]]))
    agent = Agent(id="a", model=model(fake))
    settings = model_settings.replace(model_reply_bytes=24)
    events = await run_events(agent, settings)
    assert names(events) == [
        "RunStarted",
        "ReasoningContent",
        "RunContent",
        "RunContent",
        "RunError",
    ]
    assert [e.payload()["content"] for e in events[1:-1]] == ["thinking", "hello ", "wörld"]
    assert events[-1].payload()["error"] == (
        "ReplyTooLarge: the model's reply passed 24 bytes (model_reply_bytes)"
    )
    await wait_for(lambda: fake.disconnects == 1)
    assert len(fake.requests) == 1  # not retried

    # Tool calls count too (id, name, arguments): the call never runs.
    ran: list[str] = []

    def note(text: str) -> str:
        ran.append(text)
        return "noted"

    fake.script(tool_reply([("c1", "note", '{"text": "' + "x" * 40 + '"}')]))
    agent = Agent(id="a", model=model(fake), tools=[note])
    events = await run_events(agent, settings)
    assert names(events) == ["RunStarted", "RunError"]
    assert events[-1].payload()["error"].startswith("ReplyTooLarge")
    assert ran == []

    # 0: no limit.
    fake.script(text_reply(["x" * 100, "y" * 100]))
    events = await run_events(agent, model_settings.replace(model_reply_bytes=0))
    assert events[-1].payload()["content"] == "x" * 100 + "y" * 100


# -- 6: failures -----------------------------------------------------------------------------


async def test_connection_errors_are_retried(fake: FakeOpenAI, model_settings: Settings) -> None:
    port = int(fake.base_url.rsplit(":", 1)[1].split("/")[0])  # type: ignore[attr-defined]
    with TCPProxy(port) as proxy:
        proxy.set_mode("refuse")  # every connection closed before any answer
        agent = Agent(
            id="a", model=OpenAIChat(model=MODEL, base_url=proxy.url + "/v1", api_key="k")
        )
        events = await run_events(agent, model_settings.replace(model_retry_attempts=2))
        assert names(events) == ["RunStarted", "RunError"]
        assert events[-1].payload()["error"].startswith("ModelUnavailable")
        assert proxy.connections == 3  # the first try and two retries
        assert fake.requests == []

        # Refused at first, then the server is back: a retry succeeds.
        fake.script(text_reply(["back"]))
        settings = model_settings.replace(model_retry_delay=0.5, model_retry_max_delay=2.0)
        agent_os = AgentOS(agents=[agent], settings=settings)
        async with agent_os:
            run = await agent.arun("hi", background=True)
            await wait_for(lambda: proxy.connections >= 4)
            proxy.set_mode("forward")
            record = await agent_os.manager.wait(run.run_id, timeout=20)
        assert record.status is RunStatus.COMPLETED
        assert record.content == "back"
        assert len(fake.requests) == 1


async def test_429_honours_retry_after_then_succeeds(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    fake.script(
        error_reply(429, "slow down", {"retry-after": "0.3"}),
        text_reply(["fine"]),
    )
    agent = Agent(id="a", model=model(fake))
    events = await run_events(agent, model_settings)
    assert names(events) == ["RunStarted", "RunContent", "RunCompleted"]
    assert len(fake.requests) == 2
    # model_retry_delay is 0.01: only Retry-After explains the wait.
    assert fake.request_times[1] - fake.request_times[0] >= 0.29


async def test_a_retry_after_beyond_the_max_delay_is_not_waited_for(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    fake.script(error_reply(429, "come back tomorrow", {"retry-after": "86400"}))
    agent = Agent(id="a", model=model(fake))
    events = await run_events(agent, model_settings)
    assert names(events) == ["RunStarted", "RunError"]
    assert "429" in events[-1].payload()["error"]
    assert len(fake.requests) == 1


async def test_500_before_output_is_retried_and_bounded(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    fake.script(error_reply(500, "oops"), text_reply(["ok"]))
    agent = Agent(id="a", model=model(fake))
    events = await run_events(agent, model_settings)
    assert names(events) == ["RunStarted", "RunContent", "RunCompleted"]
    assert len(fake.requests) == 2

    fake.requests.clear()
    fake.script(*(error_reply(503, "down") for _ in range(5)))
    events = await run_events(agent, model_settings.replace(model_retry_attempts=2))
    assert names(events) == ["RunStarted", "RunError"]
    assert (
        events[-1].payload()["error"].startswith("ModelUnavailable: the model server answered 503")
    )
    assert len(fake.requests) == 3


async def test_400_is_not_retried(fake: FakeOpenAI, model_settings: Settings) -> None:
    fake.script(error_reply(400, "bad model"), text_reply(["never"]))
    agent = Agent(id="a", model=model(fake))
    events = await run_events(agent, model_settings)
    assert names(events) == ["RunStarted", "RunError"]
    assert events[-1].payload()["error"] == "ModelError: the model server answered 400"
    assert len(fake.requests) == 1


async def test_failure_after_output_ends_the_run_without_duplicates(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    server_error = {"error": {"message": "upstream 500", "type": "server_error", "code": 500}}
    fake.script(
        Reply(
            [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hal"}), server_error]
        ),
        text_reply(["never"]),
    )
    agent = Agent(id="a", model=model(fake))
    events = await run_events(agent, model_settings)
    assert names(events) == ["RunStarted", "RunContent", "RunError"]
    assert events[1].payload()["content"] == "Hal"
    assert events[-1].payload()["error"] == "ModelError: the model server failed"  # text: log
    assert len(fake.requests) == 1


async def test_mid_stream_disconnect_before_and_after_output(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    fake.script(
        Reply([chunk({"role": "assistant", "content": ""}), Cut()]),  # nothing out yet: retried
        text_reply(["one", " two"]),
    )
    agent = Agent(id="a", model=model(fake))
    events = await run_events(agent, model_settings)
    assert names(events) == ["RunStarted", "RunContent", "RunContent", "RunCompleted"]
    assert len(fake.requests) == 2

    fake.requests.clear()
    fake.script(Reply([chunk({"content": "par"}), Cut()]), text_reply(["never"]))
    events = await run_events(agent, model_settings)
    assert names(events) == ["RunStarted", "RunContent", "RunError"]
    assert events[-1].payload()["error"].startswith("ModelUnavailable")
    assert len(fake.requests) == 1


async def test_a_stream_ended_without_finish_reason_is_cut_short(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    fake.script(Reply([chunk({"content": "half"})], done=False))
    agent = Agent(id="a", model=model(fake))
    events = await run_events(agent, model_settings)
    assert names(events) == ["RunStarted", "RunContent", "RunError"]
    assert "before the model finished" in events[-1].payload()["error"]


async def test_a_stalled_model_ends_the_run_and_its_stream_is_closed(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    fake.script(Reply([chunk({"content": "wait"}), Pause(30)]))
    agent = Agent(id="a", model=model(fake))
    events = await run_events(agent, model_settings.replace(model_read_timeout=0.3))
    assert names(events) == ["RunStarted", "RunContent", "RunError"]
    assert events[-1].payload()["error"] == (
        "ModelTimeout: the model sent nothing for 0.3 s (model_read_timeout)"
    )
    await wait_for(lambda: fake.disconnects == 1)


async def test_cancelling_a_run_closes_the_upstream_stream_at_once(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    fake.script(text_reply([f"w{i} " for i in range(500)], pause=0.02))
    agent = Agent(id="a", model=model(fake))
    async with AgentOS(agents=[agent], settings=model_settings):
        run = await agent.arun("go", background=True)
        stream = await agent.aresume(run.run_id)
        seen: list[Event] = []
        async for event in stream:
            assert isinstance(event, Event)
            seen.append(event)
            if event.name == "RunContent" and len(seen) == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        assert fake.disconnects == 0
        record = await agent.acancel_run(run.run_id)
        assert record.status is RunStatus.CANCELLED
        await wait_for(lambda: fake.disconnects == 1, timeout=5)
        assert fake.completed == 0


class _HoldStarted(ScriptedStore):
    """Commits of a group holding a ``RunStarted`` event wait until ``started_gate`` is set."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.started_gate = asyncio.Event()

    async def commit(self, events: Any, updates: Any, **kw: Any) -> None:
        if any(event.name == "RunStarted" for _, event in events):
            await self.started_gate.wait()
        await super().commit(events, updates, **kw)


async def test_the_model_call_goes_out_while_the_started_event_commits(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    """The first model call does not wait for the run's first commit; what the model sends is
    visible only after that event committed (durable before visible)."""
    fake.script(text_reply(["Hel", "lo"]))
    agent = Agent(id="a", model=model(fake), instructions="Be brief.")
    store = _HoldStarted(model_settings.database.url)
    async with AgentOS(agents=[agent], settings=model_settings, store=store) as agent_os:
        run = await agent.arun("hi", background=True)
        await wait_for(lambda: len(fake.requests) == 1)  # sent, RunStarted still uncommitted
        assert fake.requests[0]["messages"][-1] == {"role": "user", "content": "hi"}
        await asyncio.sleep(0.1)  # the model's reply has had time to arrive: nothing shows
        assert await store.read_events(run.run_id, 0, 100) == []
        buffer = agent_os.manager.buffers.get(run.run_id)
        assert buffer is not None and len(buffer) == 0
        store.started_gate.set()
        events = [e async for e in await agent.aresume(run.run_id)]  # type: ignore[union-attr]
    assert names(events) == ["RunStarted", "RunContent", "RunContent", "RunCompleted"]
    assert events[-1].payload()["content"] == "Hello"


async def test_a_run_cancelled_while_its_started_event_commits_closes_the_early_call(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    fake.script(text_reply([f"w{i} " for i in range(500)], pause=0.02))
    agent = Agent(id="a", model=model(fake))
    store = _HoldStarted(model_settings.database.url)
    async with AgentOS(agents=[agent], settings=model_settings, store=store):
        run = await agent.arun("go", background=True)
        await wait_for(lambda: len(fake.requests) == 1)
        cancelling = asyncio.ensure_future(agent.acancel_run(run.run_id))
        await wait_for(lambda: fake.disconnects == 1, timeout=5)
        store.started_gate.set()
        record = await cancelling
        events = [e async for e in await agent.aresume(run.run_id)]  # type: ignore[union-attr]
    assert record.status is RunStatus.CANCELLED
    assert names(events) == ["RunStarted", "RunCancelled"]
    assert fake.completed == 0


async def test_tool_call_shapes_of_other_servers(
    fake: FakeOpenAI, model_settings: Settings
) -> None:
    """A name repeated in every delta (some servers), a call with no index (others)."""

    def add(a: int, b: int) -> int:
        return a + b

    def call(index: int | None, **function: str) -> dict[str, object]:
        part: dict[str, object] = {"function": function}
        if index is not None:
            part["index"] = index
            part["id"] = f"id{index}"
        return chunk({"tool_calls": [part]})

    fake.script(
        Reply(
            [
                call(0, name="add", arguments='{"a": '),
                call(0, name="add", arguments="1, "),
                call(0, name="add", arguments='"b": 2}'),
                call(None, name="add", arguments='{"a": 3, "b": 4}'),
                chunk({}, "tool_calls"),
            ]
        ),
        text_reply(["done"]),
    )
    agent = Agent(id="a", model=model(fake), tools=[add])
    events = await run_events(agent, model_settings)
    results = [e.payload()["result"] for e in events if e.name == "ToolCallCompleted"]
    assert results == ["3", "7"]
    assert events[-1].payload()["metrics"]["input_tokens"] == 11  # only the second call's usage
