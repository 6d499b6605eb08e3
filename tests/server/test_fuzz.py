"""Fuzzing every text field with any Unicode: the server answers each request (never a 500,
never a hang) and still commits and serves afterwards, on SQLite and PostgreSQL.

The text includes lone surrogates, NUL, non-characters (U+FFFE, U+FFFF, U+10FFFF), line and
paragraph separators, NEL, the BOM and private-use characters, through every way text enters:
JSON and form bodies, query parameters and headers, WebSocket frames and the in-process API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from agentos import Agent, AgentOS, EchoModel, InvalidRequest, RunStatus, Settings, Workflow
from tests.pgdb import db_url, pg_url
from tests.servers import ThreadServer

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest

SPECIAL = "\x00\ud800\udfff\ufffe\uffff\U0010ffff\u2028\u2029\x85\ufeff\r\n\u200b\ue000"
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(SPECIAL),
        st.characters(blacklist_categories=()),  # every code point, surrogates included
    ),
    max_size=40,
)
FIELDS = ("message", "user_id", "session_id", "run_id")
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# What a request with a fuzzed field may get: created (stream or not), 409 a taken run id,
# 413, 422 a field refused. Never a 500.
ANSWERS = {200, 202, 409, 422}


def _components() -> dict[str, Any]:
    return {
        "agents": [Agent(id="echo", model=EchoModel())],
        "workflows": [Workflow(id="wf", steps=[Agent(id="step", model=EchoModel())])],
    }


def _still_serves(client: httpx.Client) -> None:
    r = client.post("/agents/echo/runs", data={"message": "still here", "stream": "false"})
    assert r.status_code == 200 and r.json()["status"] == "COMPLETED", r.text
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "running", health.text
    assert client.get("/agents/echo/runs").status_code == 200


def _raw(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"))


def test_fuzz_http_and_websocket_fields(
    db_url: str, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    agent_os = AgentOS(**_components(), settings=Settings(db_url=db_url, instance_id="fuzz"))
    server = serve_thread(agent_os)
    ws_url = server.url.replace("http://", "ws://") + "/workflows/ws"

    with httpx.Client(base_url=server.url, timeout=10) as client:

        @EXAMPLES
        @given(
            text=TEXT,
            field=st.sampled_from(FIELDS),
            how=st.sampled_from(["json", "form", "query", "header", "websocket"]),
            stream=st.booleans(),
        )
        def check(text: str, field: str, how: str, stream: bool) -> None:
            fields: dict[str, Any] = {"message": "hello there", field: text, "stream": stream}
            if how == "websocket":
                frame = {"action": "start-workflow", "workflow_id": "wf", **fields}
                with connect(ws_url, open_timeout=10) as ws:
                    assert json.loads(ws.recv(10))["event"] == "connected"
                    ws.send(json.dumps(frame))
                    answer = json.loads(ws.recv(10))
                    assert answer["event"] != "error" or answer["code"] != "internal_error"
                return
            if how == "json":
                body = json.dumps(fields)  # escapes: any code point survives the wire
                r = client.post(
                    "/agents/echo/runs", content=body, headers={"content-type": "application/json"}
                )
            elif how == "form":
                body = "&".join(f"{k}={_raw(str(v))}" for k, v in fields.items())
                headers = {"content-type": "application/x-www-form-urlencoded"}
                r = client.post("/agents/echo/runs", content=body, headers=headers)
            elif how == "query":
                # the run id in the query string, the cursor of a resume in a query string
                r = client.post(f"/agents/echo/runs?run_id={_raw(text)}", data={"message": "x"})
                assert r.status_code in ANSWERS, r.text
                r = client.get(f"/agents/echo/runs/never-made/resume?last_event_index={_raw(text)}")
                assert r.status_code in {404, 422}, r.text
                return
            else:
                value = text.encode("utf-8", "surrogatepass")
                headers = {"x-run-id": value.decode("latin-1"), "last-event-id": "0"}
                try:
                    r = client.post("/agents/echo/runs", data={"message": "x"}, headers=headers)
                except (httpx.LocalProtocolError, UnicodeEncodeError):
                    return  # not a header a client can send (CR, LF, NUL)
            assert r.status_code in ANSWERS, r.text
            if r.status_code >= 400:
                assert r.json()["code"] != "internal_error"

        check()
        _still_serves(client)


@EXAMPLES
@given(text=TEXT, field=st.sampled_from(FIELDS))
def test_fuzz_in_process_fields(text: str, field: str) -> None:
    async def main() -> None:
        async with Agent(id="echo", model=EchoModel()) as agent:
            kwargs: dict[str, Any] = {field: text} if field != "message" else {}
            message = text if field == "message" else "hello"
            try:
                run = await agent.arun(message, **kwargs)
            except InvalidRequest:
                pass
            else:
                assert run.status is RunStatus.COMPLETED
            again = await agent.arun("still here")
            assert again.status is RunStatus.COMPLETED

    asyncio.run(main())
