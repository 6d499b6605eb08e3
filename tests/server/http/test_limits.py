"""Connection limits of ``agentos serve`` (``http/server.py``) and the request-body deadline
(``forms.read_fields``), against a real server process over real sockets: slowloris heads, a
stalled body, and the long SSE streams and WebSockets these deadlines must never cut.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from agentos.http.server import AcceptErrorFilter, open_files_warning
from tests.servers import ServerProcess

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
# Beyond a deadline, how long a server on a loaded machine may take to act on it.
MARGIN = 10.0
# Seconds per word of the demo model: longer than the head deadline, so a stream is idle
# (no event, no ping) for longer than that deadline between two events.
WORD_DELAY = HEADER_TIMEOUT * 1.5
LIMITS = {
    "AGENTOS_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "AGENTOS_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("limits"), delay=WORD_DELAY, env=LIMITS) as srv:
        yield srv


def _open(server: ServerProcess, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=MARGIN)
    sock.sendall(first_bytes)
    return sock


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Read until the server closes the connection; False if the deadline passes first."""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def _read_response(sock: socket.socket, deadline: float) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        assert chunk, f"closed before a complete response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.partition(b":")[2])
    return 0


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_slowloris_is_closed_and_health_answers_at_the_open_file_limit(
    tmp_path: Path, log_format: str
) -> None:
    """More unfinished request heads than the process has file descriptors: the server stays
    reachable, closes them after the head deadline, and logs a line, not megabytes (in either
    log format)."""
    open_files, attackers = 256, 400
    env = {"AGENTOS_HTTP_HEADER_TIMEOUT": "1", "AGENTOS_LOG_FORMAT": log_format}
    srv = ServerProcess(tmp_path, env=env, open_files=open_files)
    socks: list[socket.socket] = []
    with srv:
        try:
            for _ in range(attackers):
                socks.append(_open(srv, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "))
            health = None
            for _ in range(5):
                try:
                    health = httpx.get(srv.url + "/health", timeout=3.0).status_code
                    break
                except httpx.TransportError:
                    continue
            deadline = time.monotonic() + HEADER_TIMEOUT + MARGIN
            still_open = sum(not _closed_by_server(sock, deadline) for sock in socks)
        finally:
            for sock in socks:
                sock.close()
    log_bytes = srv.log_path.stat().st_size
    assert log_bytes < 4_000, f"{log_bytes} bytes of log: {srv.log()[-1500:]}"
    assert health == 200
    assert still_open == 0


def _open_file_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc")
def test_serve_raises_its_open_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Each stream is a socket: a soft limit of 256 under a hard one of 1,024 would cap the
    server at about 130 streams (the cap leaves 128 for files)."""
    env = {"AGENTOS_MAX_STREAMS": "500"}
    with ServerProcess(tmp_path, env=env, open_files=(256, 1024)) as srv:
        assert srv.proc is not None
        assert _open_file_limits(srv.proc.pid) == (1024, 1024)
    assert "max_streams" not in srv.log()


def test_serve_warns_when_max_streams_cannot_fit_under_the_open_file_limit(
    tmp_path: Path,
) -> None:
    env = {"AGENTOS_MAX_STREAMS": "5000"}
    with ServerProcess(tmp_path, env=env, open_files=(256, 512)) as srv:
        assert httpx.get(srv.url + "/health", timeout=10).status_code == 200
    assert "max_streams is 5,000 but at most 384 connections can be open" in srv.log()
    assert "at least 5,128" in srv.log()


def test_max_streams_past_http_max_connections_is_named() -> None:
    assert open_files_warning(10, 50) is None
    warning = open_files_warning(100, 50)
    assert warning is not None and "http_max_connections lets only 50" in warning


def test_a_request_head_unfinished_after_a_response_is_closed(server: ServerProcess) -> None:
    # uvicorn's keep-alive timer stops at the first byte of the next request.
    sock = _open(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    with sock:
        status, _, _ = _read_response(sock, time.monotonic() + MARGIN)
        assert status == 200
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        assert _closed_by_server(sock, time.monotonic() + HEADER_TIMEOUT + MARGIN)


def test_a_stalled_body_gets_408_and_the_connection_is_closed(server: ServerProcess) -> None:
    sock = _open(
        server,
        b"POST /agents/echo/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"message": ',
    )
    with sock:
        deadline = time.monotonic() + BODY_TIMEOUT + MARGIN
        status, headers, body = _read_response(sock, deadline)
        assert status == 408
        assert json.loads(body)["code"] == "request_timeout"
        assert headers["connection"] == "close"
        assert _closed_by_server(sock, deadline)


def test_a_stream_idle_for_longer_than_the_head_deadline_is_not_cut(
    server: ServerProcess,
) -> None:
    words = "one two three"
    events = []
    with httpx.stream(
        "POST", server.url + "/agents/echo/runs", data={"message": words}, timeout=MARGIN
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:")))
    assert events[-1]["event"] == "RunCompleted"
    assert events[-1]["content"] == words


async def test_an_idle_websocket_is_not_cut(server: ServerProcess) -> None:
    ws_url = server.url.replace("http://", "ws://") + "/workflows/ws"
    async with connect(ws_url, open_timeout=MARGIN, ping_interval=None) as ws:
        time.sleep(HEADER_TIMEOUT * 2)  # blocks this client only; the server runs apart
        await ws.send(json.dumps({"action": "ping"}))
        frames = [json.loads(await ws.recv(decode=True)) for _ in range(2)]
        assert [frame["event"] for frame in frames] == ["connected", "pong"]


def test_accept_errors_are_logged_once_then_one_counted_line_per_interval() -> None:
    now = 0.0
    accept_errors = AcceptErrorFilter(10.0, clock=lambda: now)
    message = "socket.accept() out of system resource\nsocket: <asyncio.TransportSocket fd=9>"

    def record(msg: str) -> logging.LogRecord:
        error = OSError(24, "Too many open files")
        return logging.LogRecord(
            "asyncio", logging.ERROR, __file__, 1, msg, None, (OSError, error, None)
        )

    first = record(message)
    assert accept_errors.filter(first)
    assert first.exc_info is not None  # the first one keeps its traceback
    assert not any(accept_errors.filter(record(message)) for _ in range(1000))
    now = 10.0
    summary = record(message)
    assert accept_errors.filter(summary)
    assert summary.getMessage() == (
        "socket.accept() out of system resource (1000 more since the last such line)"
    )
    assert summary.exc_info is None
    assert not accept_errors.filter(record(message))
    assert accept_errors.filter(record("Task exception was never retrieved"))
