"""Fixtures: real uvicorn servers on 127.0.0.1 (in a thread, or in a subprocess for restarts)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from agentos import AgentOS, Settings
from tests import apps

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


class ThreadServer:
    """uvicorn serving an app in a thread of this process."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the server's event loop."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        if self.thread.is_alive():
            raise RuntimeError("uvicorn did not stop")


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


@dataclass
class ProcessServer:
    """``agentos serve tests.apps:served`` in a subprocess, restartable on the same port."""

    env: dict[str, str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agentos",
                    "serve",
                    "tests.apps:served",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> bool:
        """SIGTERM and wait; True when it shut down cleanly (uvicorn re-raises the signal)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout) in (0, -signal.SIGTERM)


@pytest.fixture
def process_server(tmp_path: Path) -> Iterator[Callable[..., ProcessServer]]:
    started: list[ProcessServer] = []

    def make(**overrides: str) -> ProcessServer:
        env = {
            **os.environ,
            "AGENTOS_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}",
            "AGENTOS_INSTANCE_ID": "proc",
            "AGENTOS_DEMO_DELAY": "0.02",
            "AGENTOS_SHUTDOWN_GRACE": "2",
            **overrides,
        }
        server = ProcessServer(env, free_port(), tmp_path / "server.log")
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await _maybe_await(predicate()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value
