"""Start a real agentos server (uvicorn in a subprocess) on 127.0.0.1 for client tests.

The server is a separate process so a test can kill or restart it mid-run, with the same
database and port, the way a deploy or a crash would.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from tests.conftest import free_port

_ROOT = Path(__file__).resolve().parent.parent
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 15.0


class ServerProcess:
    """``agentos serve`` with the demo components, on a fixed port, restartable."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        delay: float = 0.02,
        security_key: str | None = None,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "AGENTOS_DEMO_DELAY": str(delay),
            "AGENTOS_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}",
            "PYTHONPATH": os.pathsep.join(
                [str(_ROOT), str(_ROOT / "clients" / "python"), os.environ.get("PYTHONPATH", "")]
            ),
            **(env or {}),
        }
        if security_key:
            self.env["AGENTOS_SECURITY_KEY"] = security_key
        self.open_files = open_files  # the process's RLIMIT_NOFILE, when given
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agentos",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    def start(self) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=None if self.open_files is None else self._limit_open_files,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"server exited with {self._proc.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not become healthy in {_START_TIMEOUT} s: {self.log()}")

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def stop(self) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it hangs."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """A crash: SIGKILL, no shutdown handlers run."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.kill()
        self._proc.wait(timeout=_STOP_TIMEOUT)

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
