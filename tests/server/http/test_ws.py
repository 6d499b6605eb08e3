"""The ``/workflows/ws`` WebSocket over a real uvicorn on 127.0.0.1 (PROTOCOL.md, WebSocket details)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from agentos import Agent, AgentOS, EchoModel, Settings, Workflow
from agentos.backends.base import open_backend
from tests import sse
from tests.apps import words
from tests.servers import ThreadServer, free_port
from tests.sse import iter_frames

T = TypeVar("T")

MESSAGE = words(12)
TERMINAL = {"WorkflowCompleted", "WorkflowError", "WorkflowCancelled"}
KEY = "s3cret-key"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Server:
    base: str
    agent_os: AgentOS

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/workflows/ws"


def _build(settings: Settings, delay: float) -> AgentOS:
    workflow = Workflow(
        id="wf",
        steps=[
            Agent(id="draft", model=EchoModel(delay)),
            Agent(id="review", model=EchoModel(delay, prefix="Reviewed: ")),
        ],
    )
    echo = Agent(id="echo", model=EchoModel())
    return AgentOS(agents=[echo], workflows=[workflow], settings=settings)


@pytest.fixture
def make_server(
    serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings, tmp_path: Path
) -> Callable[..., Server]:
    """Serve the test workflow (about 1 s a run) with some settings changed; stopped after the test."""

    def make(delay: float = 0.03, **overrides: Any) -> Server:
        db = tmp_path / f"ws-{uuid.uuid4().hex[:8]}.db"
        agent_os = _build(settings.replace(db_url=f"sqlite+aiosqlite:///{db}", **overrides), delay)
        return Server(serve_thread(agent_os).url, agent_os)

    return make


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


# -- helpers ---------------------------------------------------------------------------------------


async def recv(ws: ClientConnection, within: float = 10.0) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), within)
    assert isinstance(frame, str)
    data: dict[str, Any] = json.loads(frame)
    return data


async def recv_text(ws: ClientConnection, within: float = 10.0) -> str:
    frame = await asyncio.wait_for(ws.recv(), within)
    assert isinstance(frame, str)
    return frame


@contextlib.asynccontextmanager
async def opened(server: Server, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A socket past its greeting."""
    async with connect(server.ws_url, open_timeout=10, **kwargs) as ws:
        greeting = await recv(ws)
        assert greeting["event"] == "connected"
        yield ws


async def start(ws: ClientConnection, message: str = MESSAGE, **fields: Any) -> dict[str, Any]:
    """Start a run; returns its first frame (WorkflowStarted)."""
    await ws.send(
        json.dumps({"action": "start-workflow", "workflow_id": "wf", "message": message, **fields})
    )
    first = await recv(ws)
    assert first["event"] == "WorkflowStarted", first
    assert first["event_index"] == 0
    return first


async def until_terminal(ws: ClientConnection) -> list[str]:
    """Frame texts up to and including the terminal event."""
    frames = []
    while True:
        text = await recv_text(ws)
        frames.append(text)
        if json.loads(text)["event"] in TERMINAL:
            return frames


async def next_control(ws: ClientConnection, events: list[str]) -> dict[str, Any]:
    """The next frame that is not a run's event; the events before it go to ``events``."""
    while True:
        text = await recv_text(ws)
        payload: dict[str, Any] = json.loads(text)
        if "event_index" not in payload:
            return payload
        events.append(text)


def sse_frames(server: Server, run_id: str, after: int = -1) -> list[tuple[str | None, str, str]]:
    """``(id, event, data)`` of every frame of a resume over SSE."""
    url = f"{server.base}/workflows/wf/runs/{run_id}/resume"
    with httpx.stream("GET", url, params={"last_event_index": after}, timeout=20) as response:
        assert response.status_code == 200, response.read()
        return [(f.id, f.event or "", f.data) for f in iter_frames(response)]


def reference(server: Server, run_id: str) -> list[str]:
    """The data of every event of an ended run, from an SSE replay."""
    return [data for sid, _, data in sse_frames(server, run_id) if sid is not None]


def wait_ended(server: Server, run_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = httpx.get(
            f"{server.base}/workflows/wf/runs/{run_id}", timeout=10
        ).json()
        if body["status"] not in ("PENDING", "RUNNING"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def index_of(text: str) -> int:
    value: int = json.loads(text)["event_index"]
    return value


# -- the basics ------------------------------------------------------------------------------------


def test_greeting_and_ping(server: Server) -> None:
    async def main() -> None:
        async with connect(server.ws_url) as ws:
            assert await recv(ws) == {"event": "connected", "requires_auth": False}
            await ws.send(json.dumps({"action": "ping"}))
            assert await recv(ws) == {"event": "pong"}

    run(main())


def test_start_workflow_streams_the_same_frames_as_sse(server: Server) -> None:
    async def main() -> tuple[str, list[str]]:
        async with opened(server) as ws:
            await ws.send(
                json.dumps({"action": "start-workflow", "workflow_id": "wf", "message": MESSAGE})
            )
            frames = await until_terminal(ws)
            return json.loads(frames[0])["run_id"], frames

    run_id, frames = run(main())
    assert json.loads(frames[0])["event"] == "WorkflowStarted"
    assert [index_of(f) for f in frames] == list(range(len(frames)))
    assert json.loads(frames[-1])["event"] == "WorkflowCompleted"
    assert len(frames) > 10
    assert frames == reference(server, run_id)  # byte for byte the SSE data


# -- reconnect -------------------------------------------------------------------------------------


def test_drop_at_random_points_and_reconnect_on_new_sockets(server: Server) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)

    async def main() -> tuple[str, list[str], list[str]]:
        seen: list[str] = []
        metas: list[str] = []
        async with opened(server) as ws:
            seen.append(json.dumps(await start(ws), separators=(",", ":")))
            for _ in range(rng.randint(0, 6)):
                seen.append(await recv_text(ws))
            run_id = json.loads(seen[0])["run_id"]
        # the socket is gone; the run goes on. Reconnect three times, dropping again each time.
        for drop in range(3):
            async with opened(server) as ws:
                last = index_of(seen[-1])
                await ws.send(
                    json.dumps({"action": "reconnect", "run_id": run_id, "last_event_index": last})
                )
                meta = await recv(ws)
                metas.append(meta["event"])
                assert meta["run_id"] == run_id
                if meta["event"] == "replay":
                    assert meta["total_events"] > last
                else:
                    assert meta["event"] == "catch_up", meta
                    assert meta["missed_events"] == meta["current_event_count"] - 1 - last
                budget = rng.randint(1, 8) if drop < 2 else 10_000
                while budget:
                    text = await recv_text(ws)
                    payload = json.loads(text)
                    if "event_index" not in payload:
                        assert payload["event"] == "subscribed", payload
                        metas.append("subscribed")
                        continue
                    seen.append(text)
                    budget -= 1
                    if payload["event"] in TERMINAL:
                        break
                if json.loads(seen[-1])["event"] in TERMINAL:
                    break
        return run_id, seen, metas

    run_id, seen, metas = run(main())
    assert json.loads(seen[-1])["event"] == "WorkflowCompleted", f"seed {seed}"
    assert [index_of(t) for t in seen] == list(range(len(seen))), f"seed {seed}"
    assert seen == reference(server, run_id), f"seed {seed}"
    assert metas[0] == "catch_up", f"seed {seed}: the run lasts long enough to be caught up live"


def test_reconnect_to_an_ended_run_replays_from_the_buffer(server: Server) -> None:
    async def main() -> tuple[str, dict[int, list[str]], list[dict[str, Any]]]:
        async with opened(server) as ws:
            first = await start(ws)
            await until_terminal(ws)
            run_id = first["run_id"]
            answers, replays = [], {}
            for cursor in (-1, 4):
                await ws.send(
                    json.dumps(
                        {
                            "action": "reconnect",
                            "run_id": run_id,
                            "workflow_id": "wf",
                            "session_id": first["session_id"],
                            "last_event_index": cursor,
                        }
                    )
                )
                answers.append(await recv(ws))
                replays[cursor] = await until_terminal(ws)
            return run_id, replays, answers

    run_id, replays, answers = run(main())
    full = reference(server, run_id)
    assert replays[-1] == full
    assert replays[4] == full[5:]
    for answer in answers:
        assert answer == {
            "event": "replay",
            "run_id": run_id,
            "status": "COMPLETED",
            "total_events": len(full),
            "source": "buffer",
        }


def test_reconnect_at_the_terminal_event_sends_only_replay(server: Server) -> None:
    async def main() -> None:
        async with opened(server) as ws:
            run_id = (await start(ws))["run_id"]
            last = index_of((await until_terminal(ws))[-1])
            await ws.send(
                json.dumps({"action": "reconnect", "run_id": run_id, "last_event_index": last})
            )
            assert await recv(ws) == {
                "event": "replay",
                "run_id": run_id,
                "status": "COMPLETED",
                "total_events": last + 1,
                "source": "buffer",
            }
            await ws.send(json.dumps({"action": "ping"}))
            assert await recv(ws) == {"event": "pong"}  # nothing came in between

    run(main())


def test_reconnect_after_the_buffer_expired_reads_the_database(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(buffer_ttl=0.2)

    async def main() -> tuple[str, list[str], dict[str, Any]]:
        async with opened(server) as ws:
            run_id = (await start(ws))["run_id"]
            await until_terminal(ws)
        await asyncio.sleep(0.5)
        async with opened(server) as ws:
            await ws.send(
                json.dumps({"action": "reconnect", "run_id": run_id, "last_event_index": -1})
            )
            meta = await recv(ws)
            return run_id, await until_terminal(ws), meta

    run_id, frames, meta = run(main())
    assert meta["event"] == "replay" and meta["source"] == "database", meta
    assert meta["total_events"] == len(frames)
    assert [index_of(t) for t in frames] == list(range(len(frames)))
    assert frames == reference(server, run_id)


# -- SSE <-> WebSocket -----------------------------------------------------------------------------


def test_sse_resumes_a_run_started_over_websocket(server: Server) -> None:
    async def main() -> list[str]:
        async with opened(server) as ws:
            seen = [json.dumps(await start(ws), separators=(",", ":"))]
            for _ in range(3):
                seen.append(await recv_text(ws))
        return seen

    seen = run(main())
    run_id = json.loads(seen[0])["run_id"]
    frames = sse_frames(server, run_id, index_of(seen[-1]))
    assert frames[0][1] == "catch_up", "the run is still running when resumed"
    events = [(sid, data) for sid, _, data in frames if sid is not None]
    assert [int(sid) for sid, _ in events] == [index_of(d) for _, d in events]
    assert seen + [data for _, data in events] == reference(server, run_id)


def test_websocket_resumes_a_run_started_over_sse(server: Server) -> None:
    url = f"{server.base}/workflows/wf/runs"
    seen: list[str] = []
    with httpx.stream(
        "POST", url, json={"message": MESSAGE, "background": True}, timeout=20
    ) as response:
        assert response.status_code == 200
        run_id = response.headers["x-run-id"]
        for line in sse.iter_lines(response):
            if line.startswith("data:"):
                seen.append(line[5:].strip())
                if len(seen) == 3:
                    break

    async def main() -> tuple[dict[str, Any], list[str]]:
        async with opened(server) as ws:
            await ws.send(
                json.dumps(
                    {
                        "action": "reconnect",
                        "run_id": run_id,
                        "workflow_id": "wf",
                        "last_event_index": index_of(seen[-1]),
                    }
                )
            )
            meta = await recv(ws)
            frames = [t for t in await until_terminal(ws) if "event_index" in json.loads(t)]
            return meta, frames

    meta, frames = run(main())
    assert meta["event"] == "catch_up", meta
    assert seen + frames == reference(server, run_id)


# -- several runs, several sockets -----------------------------------------------------------------


def test_two_sockets_follow_one_run(server: Server) -> None:
    async def main() -> tuple[str, list[str], list[str]]:
        async with opened(server) as a, opened(server) as b:
            first = await start(a)
            await b.send(json.dumps({"action": "reconnect", "run_id": first["run_id"]}))
            meta = await recv(b)
            assert meta["event"] == "catch_up", meta
            frames_a, frames_b = await asyncio.gather(until_terminal(a), until_terminal(b))
            a_all = [json.dumps(first, separators=(",", ":")), *frames_a]
            b_events = [t for t in frames_b if "event_index" in json.loads(t)]
            return first["run_id"], a_all, b_events

    run_id, a_all, b_events = run(main())
    assert a_all == b_events == reference(server, run_id)


def test_one_socket_follows_several_runs(server: Server) -> None:
    async def main() -> dict[str, list[str]]:
        runs: dict[str, list[str]] = {}
        async with opened(server) as ws:
            for n in range(3):
                await ws.send(
                    json.dumps(
                        {
                            "action": "start-workflow",
                            "workflow_id": "wf",
                            "message": f"run {n} {MESSAGE}",
                        }
                    )
                )
            ended = 0
            while ended < 3:
                text = await recv_text(ws)
                payload = json.loads(text)
                runs.setdefault(payload["run_id"], []).append(text)
                ended += payload["event"] in TERMINAL
        return runs

    runs = run(main())
    assert len(runs) == 3
    for run_id, frames in runs.items():
        assert frames == reference(server, run_id)


def test_a_closed_socket_does_not_stop_its_runs(server: Server) -> None:
    async def main() -> str:
        async with opened(server) as ws:
            return str((await start(ws))["run_id"])

    run_id = run(main())
    assert wait_ended(server, run_id)["status"] == "COMPLETED"
    assert json.loads(reference(server, run_id)[-1])["event"] == "WorkflowCompleted"


def test_a_socket_that_does_not_read_blocks_neither_the_run_nor_other_sockets(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(ws_max_queued_frames=2)
    big = " ".join(["x" * 1500] * 30)  # every event repeats the input: the idle socket fills up

    async def main() -> tuple[str, float, list[str]]:
        async with connect(server.ws_url, max_queue=1) as idle, opened(server) as reader:
            await idle.send(
                json.dumps({"action": "start-workflow", "workflow_id": "wf", "message": big})
            )
            run_id = ""
            async with httpx.AsyncClient(base_url=server.base) as http:
                for _ in range(100):  # the reader finds the run through the list of runs
                    listed = (await http.get("/workflows/wf/runs")).json()
                    if listed:
                        run_id = listed[0]["run_id"]
                        break
                    await asyncio.sleep(0.05)
            assert run_id, "the idle socket's run did not start"
            began = time.monotonic()
            await reader.send(json.dumps({"action": "reconnect", "run_id": run_id}))
            frames = [t for t in await until_terminal(reader) if "event_index" in json.loads(t)]
            took = time.monotonic() - began
            idle.transport.abort()  # a polite close would wait for the unread frames
            return run_id, took, frames

    run_id, took, frames = run(main())
    assert json.loads(frames[-1])["event"] == "WorkflowCompleted"
    assert frames == reference(server, run_id)
    assert took < 10


# -- bad frames and limits -------------------------------------------------------------------------

BAD_FRAMES: list[tuple[str, str | bytes, str]] = [
    ("not JSON", "{nope", "invalid_json"),
    # json.loads raises RecursionError, not ValueError, on this: it must still be invalid_json.
    ("nested too deep", "[" * 60_000, "invalid_json"),
    ("an object nested too deep", '{"a":' * 12_000, "invalid_json"),
    ("a list", "[1, 2]", "invalid_frame"),
    ("a string", '"start-workflow"', "invalid_frame"),
    ("binary", b'{"action": "ping"}', "invalid_frame"),
    ("no action", "{}", "unknown_action"),
    ("unknown action", '{"action": "fly"}', "unknown_action"),
    ("action not a string", '{"action": 5}', "unknown_action"),
    ("start: no workflow_id", '{"action": "start-workflow", "message": "hi"}', "invalid_request"),
    (
        "start: workflow_id a number",
        '{"action": "start-workflow", "workflow_id": 1, "message": "hi"}',
        "invalid_request",
    ),
    ("start: no message", '{"action": "start-workflow", "workflow_id": "wf"}', "invalid_request"),
    (
        "start: message a number",
        '{"action": "start-workflow", "workflow_id": "wf", "message": 3}',
        "invalid_request",
    ),
    (
        "start: message blank",
        '{"action": "start-workflow", "workflow_id": "wf", "message": "  "}',
        "invalid_request",
    ),
    (
        "start: session_id a list",
        '{"action": "start-workflow", "workflow_id": "wf", "message": "hi", "session_id": []}',
        "invalid_request",
    ),
    (
        "start: unknown workflow",
        '{"action": "start-workflow", "workflow_id": "nope", "message": "hi"}',
        "component_not_found",
    ),
    (
        "start: an agent's id",
        '{"action": "start-workflow", "workflow_id": "echo", "message": "hi"}',
        "component_not_found",
    ),
    (
        "start: retry_policy not an object",
        '{"action": "start-workflow", "workflow_id": "wf", "message": "hi", "retry_policy": 3}',
        "invalid_request",
    ),
    (
        "start: retry_policy with a bad field",
        '{"action": "start-workflow", "workflow_id": "wf", "message": "hi",'
        ' "retry_policy": {"max_attempts": 0}}',
        "invalid_request",
    ),
    (
        "start: timeout_seconds negative",
        '{"action": "start-workflow", "workflow_id": "wf", "message": "hi", "timeout_seconds": -1}',
        "invalid_request",
    ),
    (
        "start: unknown multitask",
        '{"action": "start-workflow", "workflow_id": "wf", "message": "hi", "multitask": "x"}',
        "invalid_request",
    ),
    ("reconnect: no run_id", '{"action": "reconnect"}', "invalid_request"),
    ("reconnect: run_id a number", '{"action": "reconnect", "run_id": 7}', "invalid_request"),
    ("reconnect: unknown run", '{"action": "reconnect", "run_id": "nope"}', "run_not_found"),
    (
        "reconnect: cursor a string",
        '{"action": "reconnect", "run_id": "nope", "last_event_index": "3"}',
        "invalid_cursor",
    ),
    (
        "reconnect: cursor a bool",
        '{"action": "reconnect", "run_id": "nope", "last_event_index": true}',
        "invalid_cursor",
    ),
    ("oversized", json.dumps({"action": "ping", "pad": "x" * 70_000}), "frame_too_large"),
]


@pytest.mark.parametrize(
    ("frame", "code"), [(f, c) for _, f, c in BAD_FRAMES], ids=[n for n, _, _ in BAD_FRAMES]
)
def test_bad_frames_get_an_error_and_the_socket_stays_usable(
    server: Server, frame: str | bytes, code: str
) -> None:
    async def main() -> None:
        async with opened(server) as ws:
            for _ in range(2):  # twice: the first bad frame changed nothing
                await ws.send(frame)
                error = await recv(ws)
                assert error["event"] == "error", error
                assert error["code"] == code, error
                assert isinstance(error["error"], str) and error["error"]
                await ws.send(json.dumps({"action": "ping"}))
                assert await recv(ws) == {"event": "pong"}

    run(main())


def test_start_workflow_takes_run_options(server: Server) -> None:
    policy = {"max_attempts": 2, "delay": 0.1}

    async def main() -> str:
        async with opened(server) as ws:
            first = await start(
                ws, "a b", retry_policy=policy, timeout_seconds=60, multitask="parallel"
            )
            await until_terminal(ws)
            run_id: str = first["run_id"]
            return run_id

    run_id = run(main())
    record = run(_stored(server, run_id))
    assert record.retry_policy is not None and json.loads(record.retry_policy)["max_attempts"] == 2
    assert (record.timeout, record.multitask) == (60.0, "parallel")


async def _stored(server: Server, run_id: str) -> Any:
    """The run as the database has it (a store of its own on the server's file)."""
    store = open_backend(server.agent_os.settings).store
    await store.open()
    try:
        return await store.get_run(run_id)
    finally:
        await store.close()


def test_bad_runs_and_cursors_of_real_runs(server: Server) -> None:
    agent_run = httpx.post(
        f"{server.base}/agents/echo/runs", json={"message": "hi", "stream": False}, timeout=20
    )
    agent_run_id = agent_run.json()["run_id"]

    async def main() -> None:
        async with opened(server) as ws:
            first = await start(ws)
            run_id = first["run_id"]
            frames = await until_terminal(ws)
            cases = [
                ({"run_id": agent_run_id}, "run_not_found"),  # not a workflow run
                ({"run_id": run_id, "workflow_id": "other"}, "run_not_found"),
                ({"run_id": run_id, "session_id": "other"}, "run_not_found"),
                ({"run_id": run_id, "last_event_index": -2}, "invalid_cursor"),
                ({"run_id": run_id, "last_event_index": len(frames) + 1}, "invalid_cursor"),
            ]
            for fields, code in cases:
                await ws.send(json.dumps({"action": "reconnect", **fields}))
                error = await recv(ws)
                assert (error["event"], error["code"], error["action"]) == (
                    "error",
                    code,
                    "reconnect",
                ), fields
                assert error["run_id"] == fields["run_id"]
            await ws.send(
                json.dumps(
                    {
                        "action": "start-workflow",
                        "workflow_id": "wf",
                        "message": "hi",
                        "run_id": run_id,
                    }
                )
            )
            error = await recv(ws)
            assert (error["code"], error["run_id"]) == ("run_exists", run_id)

    run(main())


def test_limits_on_runs_per_socket(make_server: Callable[..., Server]) -> None:
    server = make_server(ws_max_runs_per_socket=1)

    async def main() -> None:
        async with opened(server) as ws:
            run_id = (await start(ws))["run_id"]
            events: list[str] = []
            await ws.send(json.dumps({"action": "reconnect", "run_id": run_id}))
            error = await next_control(ws, events)
            assert error["code"] == "already_following", error
            await ws.send(
                json.dumps({"action": "start-workflow", "workflow_id": "wf", "message": "hi"})
            )
            error = await next_control(ws, events)
            assert error["code"] == "too_many_runs", error
            if not any(json.loads(t)["event"] in TERMINAL for t in events):
                await until_terminal(ws)
            await asyncio.sleep(0.1)  # the run ended: room for another one
            await start(ws)

    run(main())


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        ({"max_streams": 0}, "overloaded"),
        ({"max_active_runs": 0, "max_queued_runs": 0}, "queue_full"),
    ],
    ids=["max_streams", "max_queued_runs"],
)
def test_a_start_refused_for_want_of_room_creates_no_run(
    make_server: Callable[..., Server], limits: dict[str, int], code: str
) -> None:
    """With no room for a stream, or for a run here or in the queue, start-workflow is refused
    before its run exists."""
    server = make_server(**limits)

    async def main() -> None:
        async with opened(server) as ws:
            for run_id in ("refused-1", None):
                frame = {"action": "start-workflow", "workflow_id": "wf", "message": "hi"}
                if run_id is not None:
                    frame["run_id"] = run_id
                await ws.send(json.dumps(frame))
                error = await recv(ws)
                assert (error["event"], error["code"]) == ("error", code), error
        await asyncio.sleep(0.5)  # a run started anyway would have ended by now
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as client:
            runs = (await client.get("/workflows/wf/runs")).json()
            assert runs == []
            assert (await client.get("/workflows/wf/runs/refused-1")).status_code == 404

    run(main())


def test_an_idle_socket_is_closed(make_server: Callable[..., Server]) -> None:
    """No frame and no followed run for ws_idle_timeout: closed (it held a connection slot)."""
    server = make_server(ws_idle_timeout=0.5)

    async def main() -> None:
        async with opened(server) as ws:
            await start(ws, message="a b")  # following a run keeps it open past the timeout
            await until_terminal(ws)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "idle")

    run(main())


def test_a_flood_is_refused_then_closed(make_server: Callable[..., Server]) -> None:
    server = make_server(ws_max_frames_per_second=5)
    ping = json.dumps({"action": "ping"})

    async def main() -> None:
        async with opened(server) as ws:
            for _ in range(8):
                await ws.send(ping)
            answers = [(await recv(ws))["event"] for _ in range(8)]
            assert answers.count("pong") >= 5 and answers.count("error") >= 1, answers
            await asyncio.sleep(1.2)  # the bucket refills: usable again
            await ws.send(ping)
            assert await recv(ws) == {"event": "pong"}
            for _ in range(30):
                await ws.send(ping)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    run(main())


# -- authentication --------------------------------------------------------------------------------


def test_authentication_required_refused_and_accepted(make_server: Callable[..., Server]) -> None:
    server = make_server(security_key=KEY)
    start_frame = json.dumps({"action": "start-workflow", "workflow_id": "wf", "message": MESSAGE})

    async def main() -> None:
        async with connect(server.ws_url) as ws:
            assert await recv(ws) == {"event": "connected", "requires_auth": True}
            for frame in (start_frame, json.dumps({"action": "reconnect", "run_id": "x"})):
                await ws.send(frame)
                answer = await recv(ws)
                assert answer["event"] == "auth_error", answer
            await ws.send(json.dumps({"action": "ping"}))
            assert (await recv(ws))["event"] == "auth_error"  # nothing before authenticate
            for token in ("wrong", 5, None):
                await ws.send(json.dumps({"action": "authenticate", "token": token}))
                assert (await recv(ws))["event"] == "auth_error"
            await ws.send(start_frame)
            assert (await recv(ws))["event"] == "auth_error", "a refused token did not authenticate"
            await ws.send(json.dumps({"action": "authenticate", "token": KEY}))
            assert await recv(ws) == {"event": "authenticated"}
            await ws.send(json.dumps({"action": "ping"}))
            assert await recv(ws) == {"event": "pong"}
            await ws.send(start_frame)
            assert (await recv(ws))["event"] == "WorkflowStarted"

    run(main())


def test_authentication_by_header(make_server: Callable[..., Server]) -> None:
    server = make_server(security_key=KEY)

    async def main() -> None:
        async with connect(
            server.ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}
        ) as ws:
            assert await recv(ws) == {"event": "connected", "requires_auth": False}
            await start(ws)
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with connect(server.ws_url, additional_headers={"Authorization": "Bearer wrong"}):
                pass
        assert refused.value.response.status_code == 403

    run(main())


async def _origin_served(server: Server, origin: str | None) -> bool:
    """Whether a handshake with this Origin (None: no header) is served; else it must be 403."""
    try:
        async with connect(server.ws_url, origin=origin) as ws:  # type: ignore[arg-type]
            assert (await recv(ws))["event"] == "connected"
            await ws.send(json.dumps({"action": "ping"}))
            assert await recv(ws) == {"event": "pong"}
            return True
    except websockets.InvalidStatus as refused:
        assert refused.response.status_code == 403
        return False


def test_only_the_servers_own_origin_by_default(make_server: Callable[..., Server]) -> None:
    server = make_server()
    port = server.base.rsplit(":", 1)[1]

    async def main() -> None:
        assert await _origin_served(server, None)  # not a browser
        assert await _origin_served(server, server.base)  # a page this server served
        assert await _origin_served(server, f"HTTP://127.0.0.1:{port}/")
        for origin in (
            "http://evil.example",
            f"http://evil.example:{port}",
            f"http://localhost:{port}",  # another host name is another origin
            "http://127.0.0.1:1",
            f"https://127.0.0.1:{port}x",
            f"http://127.0.0.1@evil.example:{port}",
            "null",
            "",
        ):
            assert not await _origin_served(server, origin), origin

    run(main())


def test_same_origin_knows_default_ports() -> None:
    from agentos.http.ws import _same_origin

    assert _same_origin("http://a.example", "a.example:80")
    assert _same_origin("https://a.example:443", "A.example")
    assert not _same_origin("https://a.example", "a.example:80")
    assert not _same_origin("ws://a.example", "a.example")
    assert not _same_origin("http://a.example:99999", "a.example")


def test_allowed_origins_setting(make_server: Callable[..., Server]) -> None:
    listed = make_server(ws_allowed_origins="https://app.example, http://localhost:3000/")
    anyone = make_server(ws_allowed_origins="*")

    async def main() -> None:
        assert await _origin_served(listed, "https://app.example")
        assert await _origin_served(listed, "http://localhost:3000")
        assert await _origin_served(listed, listed.base)  # its own origin stays allowed
        assert not await _origin_served(listed, "http://app.example")
        assert not await _origin_served(listed, "https://evil.example")
        assert await _origin_served(anyone, "https://evil.example")

    run(main())


def test_unauthenticated_sockets_are_closed_after_the_auth_timeout(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(security_key=KEY, ws_auth_timeout=0.5)

    async def main() -> None:
        async with connect(server.ws_url) as ws:
            assert (await recv(ws))["requires_auth"] is True
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(ws, within=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    run(main())


# -- a socket that stops reading (unit level: loopback TCP buffers are too big to fill cheaply) ------


class _StuckSocket:
    """A WebSocket whose sends never complete, as when the client stops reading."""

    headers: dict[str, str] = {}

    def __init__(self) -> None:
        self.closed_with: tuple[int, str] | None = None

    async def accept(self) -> None:
        pass

    async def send_text(self, text: str) -> None:
        await asyncio.Event().wait()

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def test_a_send_that_blocks_past_the_send_timeout_closes_the_socket() -> None:
    from agentos.http.ws import _Connection

    async def main() -> tuple[int, str] | None:
        socket = _StuckSocket()
        settings = Settings(ws_send_timeout=0.2)
        connection = _Connection(None, settings, socket)  # type: ignore[arg-type]
        await asyncio.wait_for(connection.serve(), 5)
        return socket.closed_with

    closed_with = run(main())
    assert closed_with is not None and closed_with[0] == 1008


# -- the Python client helper ----------------------------------------------------------------------


def _client(server: Server, **kwargs: Any) -> Any:
    from agentos_client._ws import WorkflowSocket

    return WorkflowSocket(server.base, backoff=0.05, **kwargs)


def test_client_starts_and_follows(server: Server) -> None:
    async def main() -> tuple[str, list[dict[str, Any]]]:
        async with _client(server) as ws:
            await ws.ping()
            started = await ws.start_workflow("wf", MESSAGE)
            return started.run_id, [event async for event in ws.follow(started.run_id)]

    run_id, events = run(main())
    assert [json.loads(t) for t in reference(server, run_id)] == events


def test_client_resumes_after_drops_at_random_points(server: Server) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)

    async def main() -> tuple[str, list[dict[str, Any]], int]:
        async with _client(server) as ws:
            started = await ws.start_workflow("wf", MESSAGE)
            drops = sorted(rng.sample(range(1, 25), 3))
            events, generations = [], set()
            async for event in ws.follow(started.run_id):
                events.append(event)
                generations.add(ws._generation)
                if drops and len(events) == drops[0]:
                    drops.pop(0)
                    ws._conn.transport.abort()  # the network fails under the client
            return started.run_id, events, len(generations)

    run_id, events, sockets = run(main())
    assert [json.loads(t) for t in reference(server, run_id)] == events, f"seed {seed}"
    # Two drops close together can hit the same socket (the reader had not reconnected yet),
    # so three drops give two to four sockets; what matters is the exact sequence above.
    assert 2 <= sockets <= 4, f"seed {seed}: three drops, {sockets} sockets"


def test_client_follows_two_runs_on_one_socket(server: Server) -> None:
    async def main() -> dict[str, list[dict[str, Any]]]:
        async with _client(server) as ws:
            runs = [await ws.start_workflow("wf", f"{n} {MESSAGE}") for n in range(2)]

            async def collect(run_id: str) -> list[dict[str, Any]]:
                return [event async for event in ws.follow(run_id)]

            results = await asyncio.gather(*(collect(r.run_id) for r in runs))
            ws._conn.transport.abort()
            return {r.run_id: events for r, events in zip(runs, results, strict=True)}

    for run_id, events in run(main()).items():
        assert [json.loads(t) for t in reference(server, run_id)] == events


@pytest.mark.parametrize("server_saw_it", [False, True])
def test_client_start_survives_a_drop_before_the_first_event(
    server: Server, server_saw_it: bool
) -> None:
    from agentos_client._ws import WorkflowSocket

    class Flaky(WorkflowSocket):
        dropped = False

        async def _send(self, frame: dict[str, Any]) -> bool:
            if frame.get("action") == "start-workflow" and not self.dropped:
                self.dropped = True
                if server_saw_it:
                    await super()._send(frame)
                assert self._conn is not None
                self._conn.transport.abort()
                return True
            return await super()._send(frame)

    async def main() -> tuple[str, list[dict[str, Any]]]:
        async with Flaky(server.base, backoff=0.05) as ws:
            started = await ws.start_workflow("wf", MESSAGE)
            assert ws.dropped
            return started.run_id, [event async for event in ws.follow(started.run_id)]

    run_id, events = run(main())
    assert [json.loads(t) for t in reference(server, run_id)] == events
    runs = httpx.get(f"{server.base}/workflows/wf/runs", timeout=10).json()
    assert len(runs) == 1, "the run was started once"


def test_client_follows_from_a_cursor_and_ends_at_an_ended_run(server: Server) -> None:
    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with _client(server) as ws:
            started = await ws.start_workflow("wf", MESSAGE)
            full = [event async for event in ws.follow(started.run_id)]
            tail = [event async for event in ws.follow(started.run_id, 5)]
            nothing = [event async for event in ws.follow(started.run_id, len(full) - 1)]
            assert nothing == []
            return full, tail

    full, tail = run(main())
    assert tail == full[6:]


def test_client_errors(make_server: Callable[..., Server]) -> None:
    from agentos_client._ws import WorkflowSocketError

    server = make_server(security_key=KEY)

    async def main() -> None:
        async with _client(server, security_key=KEY) as ws:
            with pytest.raises(WorkflowSocketError) as refused:
                await ws.start_workflow("nope", "hi")
            assert refused.value.code == "component_not_found"
            with pytest.raises(WorkflowSocketError) as unknown:
                async for _ in ws.follow("no-such-run"):
                    pass
            assert unknown.value.code == "run_not_found"
            started = await ws.start_workflow("wf", "hi")
            assert [e async for e in ws.follow(started.run_id)][-1]["event"] == "WorkflowCompleted"
        for key in ("wrong", None):
            with pytest.raises(WorkflowSocketError) as wrong:
                async with _client(server, security_key=key):
                    pass
            assert wrong.value.code == "auth_error"
        port = free_port()
        from agentos_client._ws import WorkflowSocket

        with pytest.raises(WorkflowSocketError) as lost:
            async with WorkflowSocket(f"http://127.0.0.1:{port}", max_attempts=2, backoff=0.01):
                pass
        assert lost.value.code == "connection_lost"

    run(main())
