"""Log lines: the run's context on each line, JSON for machines, and no secrets or bodies."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentos.logs import (
    ContextFilter,
    FloodFilter,
    JSONFormatter,
    TextFormatter,
    bind_run,
    error_summary,
)
from tests.servers import ServerProcess
from tests.storage import run_record

KEY = "log-secret-key-0f3a9"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter("inst-1"))
    logger = logging.getLogger("agentos.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_json_lines_carry_the_bound_run(
    captured: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JSONFormatter())

    async def run_task() -> None:
        bind_run(run_record("r-1", session_id="s-1"))
        logger.info("inside\nthe run \u2028 \udc80")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")

    async def main() -> None:
        await asyncio.create_task(run_task())
        logger.info("outside")  # the binding ended with the run's task

    asyncio.run(main())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # one line per record, whatever the message holds
    inside, failed, outside = (json.loads(line) for line in lines)
    assert inside["message"] == "inside\nthe run \u2028 \udc80"
    for line in (inside, failed):
        assert line["run_id"] == "r-1" and line["session_id"] == "s-1"
        assert line["component"] == "agents/echo" and line["instance"] == "inst-1"
        assert line["logger"] == "agentos.test-logs" and line["time"].endswith("Z")
    assert failed["level"] == "ERROR" and "ValueError: boom" in failed["exc"]
    assert "run_id" not in outside and outside["instance"] == "inst-1"


def test_text_lines_are_readable_with_context(
    captured: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter())
    logger.info("run ended", extra={"run_id": "r-2", "component": "teams/t"})
    line = stream.getvalue().strip()
    assert line.endswith("INFO agentos.test-logs: run ended run_id=r-2 component=teams/t")


def test_error_summary_keeps_driver_text_out() -> None:
    from agentos.errors import DataRejected

    assert error_summary(RuntimeError("INSERT ... parameters: ('the user message',)")) == (
        "RuntimeError"
    )
    summary = error_summary(DataRejected("the database refuses a value of this request"))
    assert summary == "DataRejected: the database refuses a value of this request"


@pytest.mark.slow
def test_serve_writes_json_lines_without_secrets(tmp_path: Path) -> None:
    body = f"zebra-{uuid.uuid4().hex} quokka-{uuid.uuid4().hex}"
    server = ServerProcess(
        tmp_path,
        security_key=KEY,
        log_level="info",
        env={"AGENTOS_LOG_FORMAT": "json", "AGENTOS_INSTANCE_ID": "logs-1"},
    )
    with server:
        auth = {"Authorization": f"Bearer {KEY}"}
        created = httpx.post(
            f"{server.url}/agents/echo/runs",
            data={"message": body, "stream": "false", "background": "true"},
            headers=auth,
            timeout=10,
        )
        assert created.status_code == 202
        run_id, token = created.json()["run_id"], created.json()["resume_token"]
        # The resume token in a URL, as a browser's EventSource sends it.
        resumed = httpx.get(
            f"{server.url}/agents/echo/runs/{run_id}/resume",
            params={"token": token, "last_event_index": "-1"},
            timeout=10,
        )
        assert resumed.status_code == 200 and "RunCompleted" in resumed.text
        assert (
            httpx.get(f"{server.url}/agents", headers={"Authorization": "Bearer nope"}).status_code
            == 403
        )
        assert server.terminate()
    text = server.log_path.read_text()
    assert KEY not in text
    assert token not in text and token.split(".")[1] not in text
    for secret in body.split():
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for record in records:
        assert {"time", "level", "logger", "message", "instance"} <= set(record), record
        assert record["instance"] == "logs-1"
    about_run = [r for r in records if r.get("run_id") == run_id]
    messages = [r["message"] for r in about_run]
    assert "run started" in messages and any(m.startswith("run ended: COMPLETED") for m in messages)
    for record in about_run:
        assert record["component"] == "agents/echo" and record["session_id"]
    access = [r["message"] for r in records if r["logger"] == "uvicorn.access"]
    assert any("token=[redacted]" in line for line in access), access


def test_a_flood_from_one_place_is_cut_and_counted(
    captured: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, handler = captured
    now = 0.0
    handler.addFilter(FloodFilter(3, 10.0, clock=lambda: now))
    handler.setFormatter(JSONFormatter())

    def same_error(n: int) -> None:
        logger.warning("accept failed: %d", n)  # one place, whatever the text

    for n in range(1000):
        same_error(n)
    logger.error("another place")  # its own allowance
    for n in range(50):
        logger.info("the access log: never cut %d", n)
    now = 10.0  # a new window: the next line says how many were left out
    same_error(1000)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    flood = [line for line in lines if line["message"].startswith("accept failed")]
    assert [line["message"] for line in flood] == [
        "accept failed: 0",
        "accept failed: 1",
        "accept failed: 2",
        "accept failed: 1000",
    ]
    assert "suppressed" not in flood[0] and flood[-1]["suppressed"] == 997
    assert sum(line["message"] == "another place" for line in lines) == 1
    assert sum(line["level"] == "INFO" for line in lines) == 50

    handler.setFormatter(TextFormatter())
    now = 20.0
    for _ in range(5):
        same_error(0)
    now = 30.0
    same_error(0)
    assert stream.getvalue().splitlines()[-1].endswith("accept failed: 0 (2 more like it left out)")


def test_a_filter_with_no_limit_lets_everything_through() -> None:
    unlimited = FloodFilter(0, 10.0)
    record = logging.LogRecord("x", logging.ERROR, "f.py", 1, "boom", (), None)
    assert all(unlimited.filter(record) for _ in range(100))


@pytest.mark.slow
def test_serve_cuts_a_flood_of_malformed_requests(tmp_path: Path) -> None:
    """uvicorn warns once per malformed request: 300 of them log 3 lines, and the access log of
    good requests goes on."""
    env = {"AGENTOS_LOG_FLOOD_LINES": "3", "AGENTOS_LOG_FLOOD_INTERVAL": "3600"}
    server = ServerProcess(tmp_path, log_level="info", env=env)
    with server:
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(b"NOT HTTP \x00\x01\r\n\r\n")
                assert sock.recv(100).startswith(b"HTTP/1.1 400")
        for _ in range(20):
            assert httpx.get(f"{server.url}/agents", timeout=10).status_code == 200
        assert server.terminate()
    lines = server.log_path.read_text().splitlines()
    assert sum("Invalid HTTP request" in line for line in lines) == 3
    assert sum('"GET /agents HTTP/1.1" 200' in line for line in lines) == 20
