"""One bad request never stops an instance; limits hold under concurrency (issue "Reliability").

Poison text is refused at every edge (HTTP bodies, WebSocket, in-process) the same on SQLite and
PostgreSQL; a value the database refuses anyway ends only its own run; while the database cannot
commit, creates get 503 with Retry-After after a bounded wait and /health says so; check-and-
reserve of runs and streams admits no more than the limits.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import connect

from agentos import Agent, AgentOS, EchoModel, RunManager, RunStatus, Settings, Workflow
from agentos.errors import DataRejected, InvalidRequest
from tests.pgdb import db_url, pg_url
from tests.servers import ServerProcess, ThreadServer
from tests.storage import ScriptedStore

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest

POISON = [
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("x\udfff\x00", id="both"),
]


def _components(delay: float = 0.0) -> dict[str, Any]:
    return {
        "agents": [Agent(id="echo", model=EchoModel(delay))],
        "workflows": [Workflow(id="wf", steps=[Agent(id="step", model=EchoModel(delay))])],
    }


@pytest.mark.parametrize("text", POISON)
def test_poison_text_is_refused_at_every_edge(
    text: str, db_url: str, serve_thread: Callable[[AgentOS], ThreadServer], tmp_path: Path
) -> None:
    agent_os = AgentOS(**_components(), settings=Settings(db_url=db_url, instance_id="poison"))
    server = serve_thread(agent_os)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = json.dumps({"message": text, "stream": False}).encode()
            raw = quote(text.encode("utf-8", "surrogatepass"))
            form = {"content-type": "application/x-www-form-urlencoded"}
            cases: list[dict[str, Any]] = [
                {"content": body, "headers": {"content-type": "application/json"}},
                {"content": f"message={raw}&stream=false", "headers": form},
                {
                    "content": json.dumps({"message": "fine", "user_id": text, "stream": False}),
                    "headers": {"content-type": "application/json"},
                },
            ]
            for case in cases:
                r = await client.post("/agents/echo/runs", **case)
                assert r.status_code == 422, (case, r.text)
                assert r.json()["code"] == "invalid_request"
            # A multipart part that is not UTF-8 is read as Latin-1 (Starlette): stored as such.
            parts = {"message": (None, text.encode("utf-8", "surrogatepass")), "stream": "0"}
            r = await client.post("/agents/echo/runs", files=parts)
            assert r.status_code == (422 if "\x00" in text else 200), r.text
            ws_url = server.url.replace("http://", "ws://") + "/workflows/ws"
            async with connect(ws_url, open_timeout=10) as ws:
                assert json.loads(await ws.recv())["event"] == "connected"
                for field in ("message", "user_id"):
                    frame = {"action": "start-workflow", "workflow_id": "wf", "message": "ok"}
                    frame[field] = text
                    await ws.send(json.dumps(frame))
                    error = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert (error["event"], error["code"]) == ("error", "invalid_request"), error
            # Reads with such text answer the same on every database.
            raw_q = quote(text.encode("utf-8", "surrogatepass"))
            r = await client.get(f"/agents/echo/runs?user_id={raw_q}")
            if "\x00" in text:
                assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), r.text
            else:  # a query string's bytes that are not UTF-8 are read as U+FFFD: no match
                assert (r.status_code, r.json()) == (200, []), r.text
            r = await client.get(f"/agents/echo/runs?session_id={raw_q}")
            assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), r.text
            for path in (f"/agents/echo/runs/a{raw_q}b", f"/sessions/a{raw_q}b"):
                r = await client.get(path)
                assert r.status_code == 404, (path, r.text)
            # The instance still commits and serves.
            r = await client.post(
                "/agents/echo/runs", data={"message": "still here", "stream": "0"}
            )
            assert r.status_code == 200 and r.json()["status"] == "COMPLETED", r.text
            health = await client.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "running"
            assert (await client.get("/agents/echo/runs")).status_code == 200

    asyncio.run(main())


@pytest.mark.parametrize("text", POISON)
async def test_poison_text_is_refused_in_process(text: str) -> None:
    async with Agent(id="echo", model=EchoModel()) as agent:
        with pytest.raises(InvalidRequest, match="message"):
            await agent.arun(text)
        with pytest.raises(InvalidRequest, match="user_id"):
            await agent.arun("fine", user_id=text)
        run = await agent.arun("still here")
        assert run.status is RunStatus.COMPLETED


@pytest.mark.parametrize("name", ["bad\x00name", "x\ud800", "n" * 101, ""])
async def test_an_event_name_no_database_can_hold_ends_only_that_run(name: str) -> None:
    async def odd(message: str) -> AsyncIterator[Any]:
        yield "before"
        yield {"event": name, "x": 1}
        yield "never"

    async with Agent(id="odd", fn=odd) as agent:
        run = await agent.arun("go")
        assert run.status is RunStatus.ERROR and "event name" in (run.error or "")
        events = [e async for e in await agent.aresume(run.run_id)]
        assert [e.name for e in events] == ["RunStarted", "RunContent", "RunError"]
        assert (await agent.arun("again")).status is RunStatus.ERROR  # and nothing stuck


async def test_text_a_component_makes_is_kept_exactly_in_events() -> None:
    """What a component produces may hold anything: its events carry it exactly (JSON escapes),
    the run object a copy every database can store."""

    async def odd(message: str) -> AsyncIterator[str]:
        yield "a\ud800b"
        yield "\x00c\u2028"

    async with Agent(id="odd", fn=odd) as agent:
        run = await agent.arun("go")
        assert run.status is RunStatus.COMPLETED
        assert run.content == "a\ufffdb\ufffdc\u2028"
        events = [event async for event in await agent.aresume(run.run_id)]
        contents = [e.payload().get("content") for e in events if e.name == "RunContent"]
        assert contents == ["a\ud800b", "\x00c\u2028"]
        assert events[-1].payload()["content"] == "a\ud800b\x00c\u2028"


@pytest.mark.parametrize("refuse", [DataRejected, RuntimeError], ids=["refused", "unknown"])
async def test_a_refused_event_ends_only_its_run(tmp_path: Path, refuse: type[Exception]) -> None:
    async def poisoned(message: str) -> AsyncIterator[str]:
        for i in range(30):
            await asyncio.sleep(0.005)
            yield "REFUSE" if i == 10 else f"w{i} "

    store = ScriptedStore(
        f"sqlite+aiosqlite:///{tmp_path}/r.db", refuse_marker="REFUSE", refuse=refuse
    )
    manager = RunManager(Settings(instance_id="t"), store)
    bad, good = Agent(id="bad", fn=poisoned), Agent(id="good", model=EchoModel(0.005))
    manager.register(bad)
    manager.register(good)
    await manager.start()
    try:
        runs = [await manager.start_run(good, " ".join(["w"] * 40)) for _ in range(5)]
        victim = await manager.start_run(bad, "go")
        finals = await asyncio.wait_for(
            asyncio.gather(*(manager.wait(r.run_id) for r in [*runs, victim])), 20
        )
        assert [f.status for f in finals[:-1]] == [RunStatus.COMPLETED] * 5
        final = finals[-1]
        assert final.status is RunStatus.ERROR and "refused" in (final.error or "")
        events = await store.read_events(victim.run_id, 0, 1000)
        assert [e.index for e in events] == list(range(len(events)))  # no gap
        assert [e.terminal for e in events].count(True) == 1 and events[-1].name == "RunError"
        assert not any("REFUSE" in e.data for e in events)
        # the committer goes on for everyone
        again = await manager.start_run(good, "after")
        assert (await asyncio.wait_for(manager.wait(again.run_id), 10)).status is (
            RunStatus.COMPLETED
        )
    finally:
        await manager.aclose()


def test_creates_wait_a_bounded_time_while_the_database_cannot_commit(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    store = ScriptedStore(f"sqlite+aiosqlite:///{tmp_path}/d.db")
    settings = Settings(
        instance_id="t",
        create_timeout=0.5,
        commit_stall_timeout=1.5,
        commit_retry_max_delay=0.1,
        lease_ttl=2.0,
        lease_renew_interval=0.2,
        retry_after=7,
    )
    agent_os = AgentOS(**_components(0.01), settings=settings, store=store)
    server = serve_thread(agent_os)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/health")).json()["status"] == "running"
            store.down = True
            for body in ({"message": "x", "background": True, "stream": False},
                         {"message": "x", "run_id": "chosen-1", "stream": False}):  # fmt: skip
                r = await client.post("/agents/echo/runs", json=body)
                assert r.status_code == 503, r.text
                assert r.json()["code"] == "database_unavailable"
                assert r.headers["retry-after"] == "7"
            health = await client.get("/health")
            assert (health.status_code, health.json()["status"]) == (200, "degraded")
            await asyncio.sleep(1.6)
            health = await client.get("/health")
            assert (health.status_code, health.json()["status"]) == (503, "down")
            assert health.headers["retry-after"] == "7"
            renewals = store.renewals
            await asyncio.sleep(0.6)
            assert store.renewals == renewals  # a stalled instance lets its leases go
            store.down = False
            for _ in range(100):
                if (await client.get("/health")).json()["status"] == "running":
                    break
                await asyncio.sleep(0.05)
            assert (await client.get("/health")).json()["status"] == "running"
            r = await client.post("/agents/echo/runs", data={"message": "back", "stream": "0"})
            assert r.status_code == 200 and r.json()["status"] == "COMPLETED"

    asyncio.run(main())


def test_run_and_stream_limits_hold_under_concurrent_requests(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path}/l.db",
        instance_id="t",
        max_active_runs=20,
        max_queued_runs=30,
        max_streams=10,
    )
    agent_os = AgentOS(**_components(0.2), settings=settings)
    server = serve_thread(agent_os)
    message = " ".join(["w"] * 10)  # about 2 s a run

    async def create(client: httpx.AsyncClient, **fields: Any) -> str:
        r = await client.post("/agents/echo/runs", json={"message": message, **fields})
        assert r.status_code in (202, 429), r.text
        if r.status_code == 429:
            assert r.json()["code"] == "queue_full" and int(r.headers["retry-after"]) > 0
            return "429"
        return str(r.json()["status"])

    async def open_stream(client: httpx.AsyncClient) -> int:
        async with client.stream("POST", "/agents/echo/runs", json={"message": message}) as r:
            if r.status_code == 200:
                await r.aiter_bytes().__anext__()  # the first frame: the stream is open
                await asyncio.sleep(0.5)  # hold it while the others try
            return r.status_code

    async def main() -> None:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client:
            codes = await asyncio.gather(
                *(create(client, background=True, stream=False) for _ in range(100))
            )
            # 20 start here at once, 30 wait in the queue, the rest are refused: nothing made.
            assert (codes.count("PENDING"), codes.count("QUEUED")) == (20, 30), codes
            assert codes.count("429") == 50
            for _ in range(300):
                runs = (await client.get("/agents/echo/runs", params={"limit": 200})).json()
                if len(runs) == 50 and all(run["status"] == "COMPLETED" for run in runs):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the queued runs did not all complete: {runs}")
        # A fresh client: the first one's pool would let only a few requests through at once.
        async with httpx.AsyncClient(base_url=server.url, timeout=20, limits=limits) as client:
            codes = await asyncio.gather(*(open_stream(client) for _ in range(50)))
            assert codes.count(200) == 10 and codes.count(503) == 40, codes
            health = (await client.get("/health")).json()
            assert health["open_streams"] <= 10

    asyncio.run(main())


def test_sigterm_exits_in_bounded_time_while_the_database_is_locked(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock: commits cannot go through, and SIGTERM still
    ends the server within shutdown_grace + shutdown_cancel_grace + commit_close_timeout (plus a
    last db_timeout), not after the lock's wait."""
    env = {
        "AGENTOS_SHUTDOWN_GRACE": "1",
        "AGENTOS_SHUTDOWN_CANCEL_GRACE": "1",
        "AGENTOS_COMMIT_CLOSE_TIMEOUT": "2",
        "AGENTOS_DB_TIMEOUT": "1",
    }
    with ServerProcess(tmp_path, delay=0.2, env=env) as server:
        body = {"message": " ".join(["w"] * 100), "background": True, "stream": False}
        r = httpx.post(f"{server.url}/agents/echo/runs", json=body, timeout=10)
        assert r.status_code == 202, r.text
        lock = sqlite3.connect(tmp_path / "agentos.db", timeout=5, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            time.sleep(1.0)  # the run's next commits now wait for the lock
            started = time.monotonic()
            assert server.terminate(timeout=30), server.log()
            took = time.monotonic() - started
        finally:
            lock.close()
    assert took < 1 + 1 + 2 + 1 + 4, f"exit took {took:.1f} s"
