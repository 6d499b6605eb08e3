"""Every example the README shows runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agentos import AgentOS
from tests.pgdb import require
from tests.servers import ROOT, ServerProcess
from tests.sse import parse_frames


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1
    return str(blocks[0])


def test_readme_python_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_python(), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("0 RunStarted") and out[-2].startswith(
        "4 RunCompleted hello big world"
    )
    assert out[-1] == "COMPLETED"
    assert (tmp_path / "runs.db").exists()


async def test_in_process_example(tmp_path: Path) -> None:
    from examples import in_process

    names = await in_process.main(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    assert names[0] == "RunStarted" and names[-1] == "RunCompleted"


async def test_tasks_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from examples import tasks

    run_ids = await tasks.main(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    out = capsys.readouterr().out.splitlines()
    assert len(run_ids) == 1 and out[0].startswith("next: 20") and out[0].endswith(":00.000Z")
    assert out[1].startswith("COMPLETED manual:")


async def test_server_example(
    serve: Callable[[AgentOS], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTOS_DB_URL", f"sqlite+aiosqlite:///{tmp_path}/s.db")
    import importlib

    import examples.server

    module = importlib.reload(examples.server)
    url = serve(module.agent_os)
    async with httpx.AsyncClient(base_url=url) as client:
        for path, content in [
            ("/agents/shout", "HI THERE "),
            ("/teams/duo", "hi there\nHI THERE "),
            ("/workflows/count", "2 words"),
        ]:
            run = (
                await client.post(path + "/runs", data={"message": "hi there", "stream": "false"})
            ).json()
            assert run["status"] == "COMPLETED" and run["content"] == content, run


def _walk_through() -> tuple[float, list[list[str]]]:
    """The README's curl walk-through: the demo pace it starts the server at, and its curl
    commands in order (continuation lines joined)."""
    section = (ROOT / "README.md").read_text().split("## Walk-through with curl", 1)[1]
    section = section.split("\n## ", 1)[0]
    pace = re.search(r"^AGENTOS_DEMO_DELAY=([\d.]+) agentos serve$", section, re.M)
    assert pace is not None, "the walk-through starts the server at a human pace"
    commands = re.findall(r"^\$ (curl .*)$", section.replace("\\\n", " "), re.M)
    return float(pace.group(1)), [shlex.split(command) for command in commands]


@pytest.mark.slow
def test_readme_curl_walk_through(tmp_path: Path) -> None:
    """The walk-through by hand, with its own commands: the run is slow enough to interrupt
    curl after two events, the resume shows catch_up, then subscribed while the run goes on,
    and after the end the same resume replays."""
    require("curl", None if shutil.which("curl") else "no curl on the PATH")
    pace, (create, resume, replay) = _walk_through()
    assert pace >= 0.5  # a person can press Ctrl-C between two words

    def at(server: ServerProcess, argv: list[str], run_id: str = "") -> list[str]:
        return [
            arg.replace("http://127.0.0.1:7777", server.url).replace("9b1c...", run_id)
            for arg in argv
        ]

    with ServerProcess(tmp_path, delay=pace) as server:
        with subprocess.Popen(
            at(server, create), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        ) as curl:
            assert curl.stdout is not None
            seen = b""
            while b"\nid: 1\r\n" not in seen and b"\nid: 1\n" not in seen:
                line = curl.stdout.readline()
                assert line, seen.decode()
                seen += line
            seen += curl.stdout.readline()  # event: RunContent
            seen += curl.stdout.readline()  # its data
            curl.send_signal(signal.SIGINT)  # Ctrl-C
        head = seen.decode()
        run_id = re.search(r"^x-run-id: (\S+)", head, re.M | re.I)
        assert run_id is not None, head
        created = parse_frames(head)
        assert [(f.id, f.event) for f in created] == [("0", "RunStarted"), ("1", "RunContent")]

        resumed = subprocess.run(
            at(server, resume, run_id.group(1)), capture_output=True, text=True, timeout=60
        )
        frames = parse_frames(resumed.stdout)
        assert frames[0].event == "catch_up" and frames[0].payload["status"] == "RUNNING"
        subscribed = [f.event for f in frames].index("subscribed")
        assert frames[subscribed].payload["status"] == "RUNNING"
        assert subscribed < len(frames) - 2  # live events came after it
        events = [f for f in frames if not f.is_meta]
        assert [int(f.id or -1) for f in events] == list(range(2, 11))
        assert events[-1].event == "RunCompleted"
        assert events[-1].payload["content"] == "the quick brown fox jumps over the lazy dog"

        replayed = subprocess.run(
            at(server, replay, run_id.group(1)), capture_output=True, text=True, timeout=60
        )
        frames = parse_frames(replayed.stdout)
        assert frames[0].event == "replay"
        assert frames[0].payload["status"] == "COMPLETED"
        assert frames[0].payload["total_events"] == 11
        assert [f.id for f in frames[1:]] == ["8", "9", "10"]


def test_readme_names_existing_files() -> None:
    text = (ROOT / "README.md").read_text()
    for name in re.findall(r"\]\(([^)#]+)\)", text):
        if not name.startswith("http"):
            assert (ROOT / name).exists(), name
    for name in re.findall(
        r"`((?:scripts|examples|bench|agentos|clients|nginx|tests)/[\w./-]+)`", text
    ):
        assert (ROOT / name).exists(), name
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    assert "bash scripts/check" in (ROOT / ".ci" / "run").read_text()


def test_readme_retried_run_survives_a_kill(tmp_path: Path) -> None:
    """The README's "Queue, retries and timeouts" example: kill -9 in the middle of a run with
    two attempts, restart in the same folder, and the run completes in its second attempt."""
    message = "one two three four five six"
    with ServerProcess(tmp_path, delay=0.3) as server:
        created = httpx.post(
            f"{server.url}/agents/echo/runs",
            data={
                "stream": "false",
                "background": "true",
                "message": message,
                "retry_policy": '{"max_attempts": 2, "delay": 0}',
            },
            timeout=10,
        )
        assert created.status_code == 202 and created.json()["status"] == "PENDING"
        run_url = f"{server.url}/agents/echo/runs/{created.json()['run_id']}"
        for _ in range(100):  # until a word or two went out
            if httpx.get(run_url, timeout=10).json()["event_count"] >= 3:
                break
            time.sleep(0.05)
        server.kill()
        server.start()
        resumed = httpx.get(f"{run_url}/resume", timeout=30)
    events = [
        json.loads(line[6:]) for line in resumed.text.splitlines() if line.startswith("data: ")
    ]
    events = [e for e in events if "event_index" in e]
    names = [e["event"] for e in events]
    retrying = names.index("RunRetrying")
    assert events[retrying]["reason"] == "instance_lost" and events[retrying]["next_attempt"] == 2
    assert {e["attempt"] for e in events[:retrying]} == {1}
    assert names[retrying + 1] == "RunStarted" and events[retrying + 1]["attempt"] == 2
    assert names[-1] == "RunCompleted" and events[-1]["content"] == message
    assert [e["event_index"] for e in events] == list(range(len(events)))
