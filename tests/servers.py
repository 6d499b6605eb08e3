"""Real servers on 127.0.0.1 for tests: uvicorn in a thread of this process, or ``agentos serve``
in a subprocess.

The subprocess is for what a thread cannot show: a test kills or restarts it mid-run, with the
same database and port, the way a deploy or a crash would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a server process may take to answer /health. Returned from as soon as it does; a
#: start took over 20 s once at load 13 (imports, the schema, the first connection), so the
#: limit only decides how long a server that never comes up is waited for.
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(
    url: str,
    *,
    timeout: float = _START_TIMEOUT,
    alive: Callable[[], bool] = lambda: True,
    log: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``url``/health until it answers 200; fail at once when ``alive()`` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{url} exited: {log()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy in {timeout} s: {log()}")


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


class ServerProcess:
    """``agentos serve`` in a subprocess on a fixed port, restartable; stopped on exit.

    Serves the demo components, or ``app`` (``"module:attribute"``, e.g. ``tests.apps:served``),
    on a SQLite file under ``tmp_path`` unless ``env`` names another database::

        with ServerProcess(tmp_path, delay=0.05) as server:
            httpx.get(server.url + "/health")
            server.kill()  # a crash
            server.start()  # the same port and database
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        app: str | None = None,
        delay: float = 0.02,
        security_key: str | None = None,
        instance_id: str | None = None,
        log_level: str | None = None,
        env: Mapping[str, str] | None = None,
        open_files: int | tuple[int, int] | None = None,
    ) -> None:
        self.app = app
        self.log_level = log_level
        self.instance_id = instance_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "AGENTOS_DEMO_DELAY": str(delay),
            "AGENTOS_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}",
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), str(ROOT / "clients" / "python"), os.environ.get("PYTHONPATH", "")]
            ),
        }
        if security_key:
            self.env["AGENTOS_SECURITY_KEY"] = security_key
        if instance_id:
            self.env["AGENTOS_INSTANCE_ID"] = instance_id
        self.env.update(env or {})
        self.open_files = open_files  # the process's RLIMIT_NOFILE (or soft, hard), when given
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "agentos", "serve"]
        command += [self.app] if self.app else []
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--log-level", self.log_level] if self.log_level else []
        return command

    def launch(self) -> None:
        """Start the process without waiting for it (several can then start side by side)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if self.open_files is None else self._limit_open_files,
            )

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        limits = self.open_files
        resource.setrlimit(
            resource.RLIMIT_NOFILE, limits if isinstance(limits, tuple) else (limits, limits)
        )

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> None:
        try:
            wait_healthy(self.url, timeout=timeout, alive=lambda: self.running, log=self.log)
        except RuntimeError:
            self.kill()
            raise

    def start(self) -> ServerProcess:
        self.launch()
        self.wait_ready()
        return self

    def terminate(self, timeout: float = 30.0) -> bool:
        """SIGTERM and wait; True when it shut down cleanly (uvicorn re-raises the signal after
        its graceful shutdown)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout) in (0, -signal.SIGTERM)

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it hangs."""
        if self.running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(_STOP_TIMEOUT)
            self.kill()

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown handlers run."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=_STOP_TIMEOUT)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait (polling, bounded) until ``predicate()`` is true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
