"""What the app sets in its server process while it serves (its lifespan), and gives back."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from agentos import Agent, AgentOS, EchoModel, Settings
from tests.servers import ThreadServer


@pytest.fixture
def python_gc() -> Iterator[tuple[int, int, int]]:
    """Python's thresholds before the test, put back after it whatever happened."""
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def _app(tmp_path: Path, **settings: object) -> AgentOS:
    url = f"sqlite+aiosqlite:///{tmp_path / 'process.db'}"
    return AgentOS(
        agents=[Agent(id="echo", model=EchoModel())],
        settings=Settings(db_url=url, instance_id="process", **settings),
    )


def test_the_young_generation_threshold_is_set_while_serving_and_restored_after(
    tmp_path: Path,
    serve_thread: Callable[[AgentOS], ThreadServer],
    python_gc: tuple[int, int, int],
) -> None:
    server = serve_thread(_app(tmp_path, gc_threshold=12_345))
    run = httpx.post(f"{server.url}/agents/echo/runs", data={"message": "hi", "stream": "false"})
    assert run.status_code == 200, run.text
    assert gc.get_threshold() == (12_345, *python_gc[1:])
    server.stop()
    assert gc.get_threshold() == python_gc


def test_a_threshold_of_0_leaves_pythons_setting_alone(
    tmp_path: Path,
    serve_thread: Callable[[AgentOS], ThreadServer],
    python_gc: tuple[int, int, int],
) -> None:
    gc.set_threshold(701, *python_gc[1:])
    server = serve_thread(_app(tmp_path, gc_threshold=0))
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert gc.get_threshold() == (701, *python_gc[1:])
    server.stop()
    assert gc.get_threshold() == (701, *python_gc[1:])
