"""``agentos serve`` with AGENTOS_MODEL: the demo's ``assistant`` agent on an OpenAI-compatible
server (the fake one), with its clock and calculator; without it, the echo demo only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentos.demo import calculate
from tests.fake_openai import MODEL, FakeOpenAI, text_reply, tool_reply
from tests.servers import ROOT, ServerProcess, ThreadServer, free_port


@pytest.fixture
def fake() -> Iterator[tuple[FakeOpenAI, str]]:
    server = FakeOpenAI()
    thread = ThreadServer(server.app)
    thread.start()
    yield server, thread.url + "/v1"
    thread.stop()


def test_the_demo_serves_an_assistant_when_a_model_is_configured(
    tmp_path: Path, fake: tuple[FakeOpenAI, str]
) -> None:
    server, base_url = fake
    server.script(
        tool_reply([("c1", "calculate", '{"expression": "6 * 7"}')]),
        text_reply(["It is", " 42."]),
    )
    env = {"AGENTOS_MODEL": MODEL, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "k"}
    with ServerProcess(tmp_path, env=env) as agentos:
        config = httpx.get(agentos.url + "/config").json()
        agents = {a["id"]: a for a in config["agents"]}
        assert set(agents) == {"echo", "assistant"}
        assert agents["assistant"]["tools"] == ["calculate", "current_time"]
        run = httpx.post(
            agentos.url + "/agents/assistant/runs",
            data={"message": "what is 6 times 7?", "stream": "false"},
            timeout=30,
        ).json()
    assert run["status"] == "COMPLETED"
    assert run["content"] == "It is 42."
    assert server.requests[1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": "42",
    }


def test_the_demo_without_a_model_is_the_echo_demo(tmp_path: Path) -> None:
    env = {"AGENTOS_MODEL": ""}
    with ServerProcess(tmp_path, env=env) as agentos:
        config = httpx.get(agentos.url + "/config").json()
    assert [a["id"] for a in config["agents"]] == ["echo"]


def test_a_model_without_an_api_key_stops_the_server_at_start_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env |= {
        "AGENTOS_MODEL": MODEL,
        "AGENTOS_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "agentos", "serve", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "AGENTOS_MODEL is set, but OpenAIChat needs an API key" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_calculator_is_arithmetic_only() -> None:
    assert calculate("(2 + 3) * 4") == "20"
    for bad in ('__import__("os")', "9 ** 9 ** 9", "x + 1", "True + 1"):
        with pytest.raises(ValueError):
            calculate(bad)


async def test_the_assistant_example_runs_a_tool_on_the_model(
    fake: tuple[FakeOpenAI, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from agentos import Settings
    from examples import assistant

    server, base_url = fake
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    server.script(
        tool_reply([("c1", "word_count", '{"text": "one two three"}')]),
        text_reply(["3 words"]),
    )
    agent_os = assistant.build(MODEL, Settings(db_url=f"sqlite+aiosqlite:///{tmp_path}/x.db"))
    counter = agent_os.manager.component("agents", "counter")
    async with agent_os:
        run = await counter.arun("count: one two three")
    assert run.content == "3 words"
    assert server.requests[1]["messages"][-1]["content"] == "3"
