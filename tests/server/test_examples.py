"""Every example the README shows runs."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agentos import AgentOS
from tests.servers import ROOT


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
