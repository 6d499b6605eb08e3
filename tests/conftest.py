"""Fixtures: real uvicorn servers on 127.0.0.1 (in a thread, or in a subprocess for restarts).

The helpers behind them live in ``tests/servers.py`` (servers), ``tests/apps.py`` (what they
serve), ``tests/sse.py`` (an SSE reader), ``tests/storage.py`` (run records and a store double),
``tests/proxy.py`` (a TCP proxy to break) and ``tests/pgdb.py`` (PostgreSQL scratch databases).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from agentos import AgentOS, Settings
from tests import apps
from tests.servers import ServerProcess, ThreadServer


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Test settings: a fresh SQLite database, a small per-word delay."""
    return Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}",
        instance_id="test",
        demo_delay=0.01,
        ping_interval=5.0,
        shutdown_grace=2.0,
        buffer_sweep_interval=0.2,
    )


@pytest.fixture
def serve_thread() -> Iterator[Callable[[AgentOS], ThreadServer]]:
    """Serve an AgentOS with uvicorn on 127.0.0.1 in a thread; stopped after the test."""
    servers: list[ThreadServer] = []

    def start(agent_os: AgentOS) -> ThreadServer:
        server = ThreadServer(agent_os.app)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def serve(serve_thread: Callable[[AgentOS], ThreadServer]) -> Callable[[AgentOS], str]:
    """Like serve_thread, returning the base URL."""
    return lambda agent_os: serve_thread(agent_os).url


@pytest.fixture
def server(serve: Callable[[AgentOS], str], settings: Settings) -> str:
    """The test components served on 127.0.0.1; the base URL."""
    return serve(apps.build(settings))


@pytest.fixture
async def client(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server, timeout=httpx.Timeout(30.0)) as http:
        yield http


@pytest.fixture
def process_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``agentos serve tests.apps:served`` in a subprocess with some AGENTOS_* variables set;
    killed after the test."""
    started: list[ServerProcess] = []

    def make(**overrides: str) -> ServerProcess:
        server = ServerProcess(
            tmp_path,
            app="tests.apps:served",
            instance_id="proc",
            log_level="warning",
            env={"AGENTOS_SHUTDOWN_GRACE": "2", **overrides},
        )
        started.append(server.start())
        return server

    yield make
    for server in started:
        server.kill()
