"""Sessions with history: three runs of one conversation, over HTTP (Python client) and in-process."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from agentos_client import APIStatusError, AsyncClient

from agentos import Agent, AgentOS, OpenAIChat, RunStatus, SessionActive, SessionNotFound, Settings
from agentos.errors import StoreUnavailable
from agentos.records import RunUpdate
from tests.fake_openai import (
    MODEL,
    FakeOpenAI,
    Pause,
    Reply,
    chunk,
    error_reply,
    text_reply,
    tool_reply,
)
from tests.pgdb import db_url, pg_url
from tests.servers import ThreadServer

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest


def make_agent(fake: FakeOpenAI, **kw: object) -> Agent:
    def lookup(city: str) -> str:
        """Look up a city's weather."""
        return f"sunny in {city}"

    model = OpenAIChat(model=MODEL, base_url=fake.base_url, api_key="k")  # type: ignore[attr-defined]
    return Agent(id="chat", model=model, instructions="Be kind.", tools=[lookup], **kw)  # type: ignore[arg-type]


def script_three_runs(fake: FakeOpenAI) -> None:
    fake.script(
        text_reply(["Hello", " Ada"]),  # run 1
        tool_reply([("call_1", "lookup", '{"city": "Paris"}')]),  # run 2, round 1
        text_reply(["Sunny."]),  # run 2, round 2
        text_reply(["Bye Ada"]),  # run 3
    )


def roles(messages: list[dict[str, object]]) -> list[str]:
    return [str(m["role"]) for m in messages]


def check_history(fake: FakeOpenAI) -> None:
    run1, run2a, run2b, run3 = (r["messages"] for r in fake.requests[:4])
    assert roles(run1) == ["system", "user"]
    assert roles(run2a) == ["system", "user", "assistant", "user"]
    assert run2a[1:3] == [
        {"role": "user", "content": "I am Ada"},
        {"role": "assistant", "content": "Hello Ada"},
    ]
    assert roles(run2b) == ["system", "user", "assistant", "user", "assistant", "tool"]
    assert roles(run3) == [
        "system",
        *("user", "assistant"),
        *("user", "assistant", "tool", "assistant"),
        "user",
    ]
    assert run3[4]["tool_calls"][0]["function"] == {  # type: ignore[index]
        "name": "lookup",
        "arguments": '{"city": "Paris"}',
    }
    assert run3[5] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny in Paris"}
    assert run3[6] == {"role": "assistant", "content": "Sunny."}
    assert run3[-1] == {"role": "user", "content": "bye"}


async def test_session_history_over_http_and_the_session_routes(
    fake: FakeOpenAI,
    settings: Settings,
    serve_thread: Callable[[AgentOS], ThreadServer],
) -> None:
    script_three_runs(fake)
    agent_os = AgentOS(agents=[make_agent(fake)], settings=settings)
    url = serve_thread(agent_os).url
    async with AsyncClient(url) as client:
        for message in ("I am Ada", "weather in Paris?", "bye"):
            run = await client.arun("agents", "chat", message, session_id="s1", user_id="ada")
            assert run.status.value == "COMPLETED"
        await client.arun("agents", "chat", "other", session_id="s2", user_id="bob")
        check_history(fake)

        listed = await client.list_sessions(user_id="ada")
        assert [(s["session_id"], s["run_count"], s["component_id"]) for s in listed] == [
            ("s1", 3, "chat")
        ]
        assert {s["session_id"] for s in await client.list_sessions(component_id="chat")} == {
            "s1",
            "s2",
        }
        assert await client.list_sessions(kind="teams") == []

        session = await client.get_session("s1")
        assert [r["input"] for r in session["runs"]] == ["I am Ada", "weather in Paris?", "bye"]
        assert [m["role"] for m in session["messages"]] == [
            *("user", "assistant"),
            *("user", "assistant", "tool", "assistant"),
            *("user", "assistant"),
        ]
        assert session["messages"][3]["tool_calls"] == [
            {"id": "call_1", "name": "lookup", "arguments": '{"city": "Paris"}'}
        ]
        run_id = session["runs"][0]["run_id"]

        assert agent_os.manager.buffers.get(run_id) is not None
        await client.delete_session("s1")
        assert agent_os.manager.buffers.get(run_id) is None  # its events are gone from memory too
        with pytest.raises(APIStatusError) as missing:
            await client.get_session("s1")
        assert (missing.value.status_code, missing.value.code) == (404, "session_not_found")
        with pytest.raises(APIStatusError) as gone:
            await client.get_run("agents", "chat", run_id)
        assert gone.value.status_code == 404
        async with httpx.AsyncClient(base_url=url) as http:
            resumed = await http.get(f"/agents/chat/runs/{run_id}/resume")
            assert resumed.status_code == 404
            assert (await http.delete("/sessions/s1")).status_code == 404
            assert (await http.get("/sessions", params={"kind": "nope"})).status_code == 422
        assert [s["session_id"] for s in await client.list_sessions()] == ["s2"]


async def test_session_history_in_process_with_a_run_limit(
    fake: FakeOpenAI, settings: Settings
) -> None:
    script_three_runs(fake)
    agent = make_agent(fake)
    async with AgentOS(agents=[agent], settings=settings):
        for message in ("I am Ada", "weather in Paris?", "bye"):
            run = await agent.arun(message, session_id="s1")
            assert run.status is RunStatus.COMPLETED
        check_history(fake)

        assert [(s.session_id, s.run_count) for s in await agent.alist_sessions()] == [("s1", 3)]
        session = await agent.aget_session("s1")
        assert len(session.runs) == 3
        assert session.messages[0].role == "user"

        # history_runs=1 (setting): the next run sees only the last run's messages.
        fake.requests.clear()
        fake.script(text_reply(["ok"]))
    async with AgentOS(agents=[agent], settings=settings.replace(history_runs=1)):
        await agent.arun("again", session_id="s1")
        assert roles(fake.requests[0]["messages"]) == ["system", "user", "assistant", "user"]
        await agent.adelete_session("s1")
        with pytest.raises(SessionNotFound):
            await agent.aget_session("s1")


async def test_a_session_made_for_its_run_reads_no_history_and_the_next_run_sees_it(
    fake: FakeOpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run without a session_id gets a new session: its history is not read (there is none
    to read); a run given that session id reads it and sees the first run."""
    reads: list[str] = []
    fake.script(text_reply(["Hello", " Ada"]), text_reply(["Hi again"]))
    agent = make_agent(fake)
    async with AgentOS(agents=[agent], settings=settings) as agent_os:
        store = agent_os.manager.store
        read = store.session_messages

        async def counted(session_id: str, **kw: object) -> object:
            reads.append(session_id)
            return await read(session_id, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "session_messages", counted)
        first = await agent.arun("I am Ada")
        assert first.status is RunStatus.COMPLETED
        assert reads == []
        second = await agent.arun("again", session_id=first.session_id)
        assert second.status is RunStatus.COMPLETED
        assert reads == [first.session_id]
    assert roles(fake.requests[1]["messages"]) == ["system", "user", "assistant", "user"]
    assert fake.requests[1]["messages"][1:3] == [
        {"role": "user", "content": "I am Ada"},
        {"role": "assistant", "content": "Hello Ada"},
    ]


async def test_a_database_that_cannot_commit_the_messages_now_is_retried(
    fake: FakeOpenAI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's lock held past db_timeout by other writers (many runs ending at once) fails a
    session's save now and then: it is retried like a group commit, and the run completes."""
    fake.script(text_reply(["Hello", " Ada"]), text_reply(["Hi again"]))
    agent = make_agent(fake)
    async with AgentOS(agents=[agent], settings=settings) as agent_os:
        store = agent_os.manager.store
        add = store.add_messages
        failures = [StoreUnavailable("the database cannot commit now")] * 2

        async def flaky(messages: object, **fence: object) -> None:
            if failures:
                raise failures.pop()
            await add(messages, **fence)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "add_messages", flaky)
        first = await agent.arun("I am Ada", session_id="s")
        assert first.status is RunStatus.COMPLETED
        assert failures == []
        second = await agent.arun("again", session_id="s")
        assert second.status is RunStatus.COMPLETED
    assert fake.requests[1]["messages"][1:3] == [
        {"role": "user", "content": "I am Ada"},
        {"role": "assistant", "content": "Hello Ada"},
    ]


async def test_history_runs_argument_and_failed_runs_leave_no_history(
    fake: FakeOpenAI, settings: Settings
) -> None:
    fake.script(
        text_reply(["one"]),
        Reply([chunk({"content": "half"})], done=False),  # fails after output: RunError
        text_reply(["two"]),
        text_reply(["three"]),
    )
    agent = make_agent(fake, history_runs=0)
    remembering = make_agent(fake)
    remembering.id = "remembering"
    async with AgentOS(agents=[agent], settings=settings):
        await agent.arun("a", session_id="s")
        assert roles(fake.requests[0]["messages"]) == ["system", "user"]
    async with AgentOS(agents=[remembering], settings=settings):
        failed = await remembering.arun("b", session_id="t")
        assert failed.status is RunStatus.ERROR
        await remembering.arun("c", session_id="t")
        await remembering.arun("d", session_id="t")
    # The failed run "b" is not history; "c" is.
    assert [m.get("content") for m in fake.requests[3]["messages"]] == [
        "Be kind.",
        "c",
        "two",
        "d",
    ]


async def test_a_session_with_a_running_run_cannot_be_deleted(
    fake: FakeOpenAI, settings: Settings
) -> None:
    fake.script(Reply([chunk({"content": "x"}), Pause(30)]))
    agent = make_agent(fake)
    async with AgentOS(agents=[agent], settings=settings):
        run = await agent.arun("go", session_id="busy", background=True)
        with pytest.raises(SessionActive):
            await agent.adelete_session("busy")
        await agent.acancel_run(run.run_id)
        await agent.adelete_session("busy")


# -- the store contract, on SQLite and PostgreSQL ----------------------------------------------


async def test_session_storage_on_each_backend(db_url: str) -> None:
    import time
    import uuid

    from agentos.backends.base import open_backend
    from agentos.events import Event
    from agentos.records import RunRecord
    from agentos.sessions import MessageRecord

    store = open_backend(Settings(db_url=db_url)).store
    await store.open()
    try:
        session, user = f"s-{uuid.uuid4().hex}", f"u-{uuid.uuid4().hex}"
        now = time.time()
        statuses = [RunStatus.COMPLETED, RunStatus.ERROR, RunStatus.COMPLETED, RunStatus.RUNNING]
        runs = [
            RunRecord(
                run_id=f"{session}-{i}",
                kind="agents",
                component_id="chat",
                session_id=session,
                status=status,
                input=f"m{i}",
                user_id=user,
                created_at=now + i,
                updated_at=now + i,
            )
            for i, status in enumerate(statuses)
        ]
        for run in runs:
            await store.create_run(run)
        await store.commit([(runs[0].run_id, Event(0, "RunStarted", '{"x":1}'))], [])
        for i, run in enumerate(runs[:3]):
            await store.add_messages(
                [
                    MessageRecord(session, run.run_id, 0, "user", f"q{i} \u2028 ✓"),
                    MessageRecord(
                        session,
                        run.run_id,
                        1,
                        "assistant",
                        None,
                        tool_calls=[{"id": "c", "name": "t", "arguments": "{}"}],
                    ),
                    MessageRecord(session, run.run_id, 2, "tool", "r", tool_call_id="c", name="t"),
                ]
            )
        everything = await store.session_messages(session)
        assert [(m.run_id[-1], m.position) for m in everything] == [
            (str(i), p) for i in range(3) for p in range(3)
        ]
        assert everything[0].content == "q0 \u2028 ✓"
        assert everything[1].tool_calls == [{"id": "c", "name": "t", "arguments": "{}"}]
        assert everything[2].to_chat() == {
            "role": "tool",
            "content": "r",
            "tool_call_id": "c",
            "name": "t",
        }
        # History: completed runs only (run 1 failed), the last N, created before the new run.
        history = await store.session_messages(session, last_runs=5, before=now + 3)
        assert sorted({m.run_id[-1] for m in history}) == ["0", "2"]
        history = await store.session_messages(session, last_runs=1, before=now + 3)
        assert {m.run_id[-1] for m in history} == {"2"}
        assert await store.session_messages(session, last_runs=5, before=now + 1) == [
            m for m in everything if m.run_id.endswith("-0")
        ]

        listed = await store.list_sessions(user_id=user)
        assert [(s.session_id, s.run_count, s.component_id) for s in listed] == [
            (session, 4, "chat")
        ]
        assert listed[0].created_at == now and listed[0].updated_at == now + 3
        assert await store.list_sessions(user_id=user, kind="teams") == []
        assert [r.run_id for r in await store.session_runs(session)] == [r.run_id for r in runs]

        with pytest.raises(SessionActive):
            await store.delete_session(session)  # run 3 is RUNNING
        assert len(await store.session_runs(session)) == 4
        await store.commit([], [RunUpdate(runs[3].run_id, status=RunStatus.CANCELLED)])
        assert await store.delete_session(session) is True
        assert await store.session_runs(session) == []
        assert await store.session_messages(session) == []
        assert await store.read_events(runs[0].run_id, 0, 10) == []
        assert await store.get_run(runs[0].run_id) is None
        assert await store.delete_session(session) is False
    finally:
        await store.close()


async def test_history_is_per_user_and_other_users_cannot_push_it_out(
    fake: FakeOpenAI, settings: Settings
) -> None:
    """Session ids are client-chosen: two users in one session id share nothing, and another
    user's many runs there do not take the places of the history limit."""
    fake.script(text_reply(["Hi Ada"]), *(text_reply(["Hi Bob"]) for _ in range(4)))
    fake.script(text_reply(["Still Ada"]))
    agent = make_agent(fake)
    async with AgentOS(agents=[agent], settings=settings.replace(history_runs=2)):
        await agent.arun("I am Ada", session_id="shared", user_id="ada")
        for _ in range(4):
            await agent.arun("I am Bob", session_id="shared", user_id="bob")
        await agent.arun("who am I?", session_id="shared", user_id="ada")
    bob_saw = fake.requests[1]["messages"]
    assert "I am Ada" not in str(bob_saw)
    ada_saw = fake.requests[-1]["messages"]
    assert roles(ada_saw) == ["system", "user", "assistant", "user"]
    assert ada_saw[1] == {"role": "user", "content": "I am Ada"} and "Bob" not in str(ada_saw)


async def test_text_no_database_can_hold_is_stored_safely(fake: FakeOpenAI, db_url: str) -> None:
    """A model's NUL or lone surrogate ends nothing: the events carry the text exactly, the
    session's messages a copy every database can store (PostgreSQL refuses NUL)."""
    fake.script(text_reply(["a\x00b", " c\ud800"]))
    agent = make_agent(fake)
    settings = Settings(db_url=db_url, instance_id="odd")
    async with AgentOS(agents=[agent], settings=settings):
        run = await agent.arun("go", session_id="odd-text")
        assert run.status is RunStatus.COMPLETED, run.error
        events = [e async for e in await agent.aresume(run.run_id)]
        assert events[-1].payload()["content"] == "a\x00b c\ud800"
        session = await agent.aget_session("odd-text")
        assert session.messages[-1].content == "a\ufffdb c\ufffd"


async def test_a_large_session_comes_in_pages_within_the_byte_budget(
    fake: FakeOpenAI, settings: Settings, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    fake.script(*(text_reply(["x" * 20_000]) for _ in range(5)))
    agent_os = AgentOS(
        agents=[make_agent(fake)], settings=settings.replace(list_max_bytes=50_000, history_runs=0)
    )
    url = serve_thread(agent_os).url
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for i in range(5):
            body = {"message": f"m{i}", "session_id": "big", "stream": False}
            assert (await http.post("/agents/chat/runs", json=body)).status_code == 200
        seen: list[str] = []
        offset: str | None = "0"
        while offset is not None:
            page = await http.get("/sessions/big", params={"offset": offset})
            assert page.status_code == 200 and len(page.content) <= 50_000 + 25_000
            inputs = [r["input"] for r in page.json()["runs"]]
            assert inputs == sorted(inputs)  # oldest first within a page
            runs = {r["run_id"] for r in page.json()["runs"]}
            assert {m["run_id"] for m in page.json()["messages"]} <= runs
            seen = inputs + seen
            offset = page.headers.get("x-next-offset")
        assert seen == [f"m{i}" for i in range(5)]


async def test_history_is_cut_to_history_bytes_whole_runs_oldest_first(
    fake: FakeOpenAI, settings: Settings
) -> None:
    script_three_runs(fake)
    agent = make_agent(fake)
    async with AgentOS(agents=[agent], settings=settings):
        for message in ("I am Ada", "weather in Paris?", "bye"):
            await agent.arun(message, session_id="s1")
        session = await agent.aget_session("s1")
    by_run: dict[str, list[dict[str, object]]] = {}
    for m in session.messages:
        by_run.setdefault(m.run_id, []).append(m.to_chat())
    run1, run2, run3 = (by_run[r.run_id] for r in session.runs)
    assert roles(run2) == ["user", "assistant", "tool", "assistant"]

    def size(messages: list[dict[str, object]]) -> int:
        return sum(len(json.dumps(m, ensure_ascii=False).encode()) for m in messages)

    async def history_seen(agent: Agent, settings: Settings) -> list[dict[str, object]]:
        """The history the model gets; the run then fails, so it adds none of its own."""
        fake.script(error_reply(400, "enough"))
        async with AgentOS(agents=[agent], settings=settings):
            failed = await agent.arun("again", session_id="s1")
        assert failed.status is RunStatus.ERROR
        sent: list[dict[str, object]] = fake.requests[-1]["messages"]
        assert sent[0]["role"] == "system" and sent[-1] == {"role": "user", "content": "again"}
        return sent[1:-1]

    def as_sent(messages: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in m.items() if k != "name"} for m in messages]

    budgets = [
        (size(run1 + run2 + run3), run1 + run2 + run3),
        (size(run2 + run3), run2 + run3),  # exactly fits
        (size(run2 + run3) - 1, run3),  # run 2 does not fit: its tool call and result go whole
        (size(run3) - 1, []),  # not even the last run fits
    ]
    for budget, expected in budgets:
        seen = await history_seen(agent, settings.replace(history_bytes=budget))
        assert seen == as_sent(expected), budget

    # The Agent's argument goes before the setting.
    by_argument = make_agent(fake, history_bytes=size(run3))
    seen = await history_seen(by_argument, settings.replace(history_bytes=0))
    assert seen == as_sent(run3)
