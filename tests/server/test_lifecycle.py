"""Restart, crash recovery and graceful shutdown, with the server in a real subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect

from agentos import AgentOS, Settings
from tests import apps
from tests.servers import ServerProcess, ThreadServer
from tests.sse import Frame, collect, events_only, frames


async def _resume(url: str, path: str, cursor: int = -1) -> list[Frame]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("GET", path, params={"last_event_index": cursor}) as r:
            assert r.status_code == 200
            return await collect(r)


async def test_replay_after_restart_is_identical(
    process_server: Callable[..., ServerProcess],
) -> None:
    server = process_server(AGENTOS_DEMO_DELAY="0")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with client.stream(
            "POST", "/workflows/flow/runs", data={"message": apps.WORDS, "background": "true"}
        ) as r:
            run_id = r.headers["x-run-id"]
            live = await collect(r)
    assert server.terminate()
    server.start()
    got = await _resume(server.url, f"/workflows/flow/runs/{run_id}/resume")
    assert got[0].event == "replay"
    assert got[0].payload["source"] == "database"
    assert got[0].payload["total_events"] == len(live)
    assert [(f.id, f.event, f.data) for f in got[1:]] == [(f.id, f.event, f.data) for f in live]
    middle = await _resume(server.url, f"/workflows/flow/runs/{run_id}/resume", 7)
    assert [f.data for f in middle[1:]] == [f.data for f in live[8:]]


async def test_crash_mid_run_ends_with_interrupted_after_restart(
    process_server: Callable[..., ServerProcess],
) -> None:
    server = process_server(AGENTOS_DEMO_DELAY="0.05")
    seen: list[Frame] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with client.stream(
            "POST", "/agents/echo/runs", data={"message": apps.WORDS, "background": "true"}
        ) as r:
            run_id = r.headers["x-run-id"]
            async for frame in frames(r):
                seen.append(frame)
                if len(seen) == 5:
                    break
    server.kill()  # kill -9: no shutdown code runs
    server.start()
    # Its id was still held (lease), by a process of this host that is gone: taken at once.
    assert "taken over from" in server.log()
    cursor = int(seen[-1].id)
    got = await _resume(server.url, f"/agents/echo/runs/{run_id}/resume", cursor)
    assert got[0].event == "replay" and got[0].payload["status"] == "ERROR"
    events = events_only(got)
    assert [int(f.id) for f in events] == list(range(cursor + 1, cursor + 1 + len(events)))
    assert events[-1].event == "RunError"
    assert events[-1].payload["error"] == "interrupted"
    assert sum(f.event == "RunError" for f in events) == 1
    async with httpx.AsyncClient(base_url=server.url) as client:
        run = (await client.get(f"/agents/echo/runs/{run_id}")).json()
    assert run["status"] == "ERROR" and run["error"] == "interrupted"
    assert run["event_count"] == int(events[-1].id) + 1
    # every cursor the client held before the crash is still valid and yields the same events
    again = await _resume(server.url, f"/agents/echo/runs/{run_id}/resume", 2)
    assert [f.data for f in events_only(again)][: len(seen) - 3] == [f.data for f in seen[3:]]


async def test_sigterm_gives_grace_then_cancels_with_terminal_event(
    process_server: Callable[..., ServerProcess],
) -> None:
    server = process_server(AGENTOS_DEMO_DELAY="0.5", AGENTOS_SHUTDOWN_GRACE="1.5")
    got: list[Frame] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        short = await client.post(
            "/agents/echo/runs", data={"message": "a b", "background": "true", "stream": "false"}
        )
        async with client.stream(
            "POST", "/agents/echo/runs", data={"message": apps.WORDS, "background": "true"}
        ) as r:
            run_id = r.headers["x-run-id"]
            started = time.monotonic()
            async for frame in frames(r):
                got.append(frame)
                if len(got) == 2:
                    assert server.proc is not None
                    server.proc.send_signal(15)
        elapsed = time.monotonic() - started
    assert got[-1].event == "RunCancelled"
    assert got[-1].payload["reason"] == "shutdown"
    assert [int(f.id) for f in got] == list(range(len(got)))
    assert elapsed < 8
    assert server.proc is not None and server.proc.wait(timeout=20) in (0, -15)
    server.start()
    async with httpx.AsyncClient(base_url=server.url) as client:
        run = (await client.get(f"/agents/echo/runs/{run_id}")).json()
        assert run["status"] == "CANCELLED"
        # the short run finished within the grace period
        assert (await client.get(f"/agents/echo/runs/{short.json()['run_id']}")).json()[
            "status"
        ] == "COMPLETED"
    replay = await _resume(server.url, f"/agents/echo/runs/{run_id}/resume")
    assert [f.data for f in replay[1:]] == [f.data for f in got]


async def test_draining_server_refuses_new_runs(
    serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings
) -> None:
    agent_os = apps.build(settings.replace(demo_delay=0.05, shutdown_grace=5))
    server = serve_thread(agent_os)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with client.stream(
            "POST", "/agents/echo/runs", data={"message": "a b c d", "background": "true"}
        ) as r:
            server.call(agent_os.begin_shutdown)
            await asyncio.sleep(0.1)
            refused = await client.post("/agents/echo/runs", data={"message": "x"})
            assert refused.status_code == 503
            assert refused.json()["code"] == "shutting_down"
            health = await client.get("/health")
            assert (health.status_code, health.json()["status"]) == (503, "draining")
            ready = await client.get("/health/ready")
            assert (ready.status_code, ready.json()["reason"]) == (503, "draining")
            assert (await client.get("/health/live")).status_code == 200
            got = await collect(r)
    assert got[-1].event == "RunCompleted"  # within the grace period the run finishes normally


async def test_a_draining_server_refuses_new_websockets_with_503(
    serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings
) -> None:
    """A new socket on a draining instance could neither start a run nor resume another
    instance's (both ``shutting_down``, which a client takes for a refusal): its handshake
    gets 503 ``shutting_down`` with Retry-After, which nginx (http_503) and the client retry
    on another instance, as a create's 503 is."""
    agent_os = apps.build(settings.replace(demo_delay=0.05, shutdown_grace=5))
    server = serve_thread(agent_os)
    ws_url = server.url.replace("http", "ws") + "/workflows/ws"
    async with connect(ws_url) as ws:  # served before the drain
        assert json.loads(await ws.recv())["event"] == "connected"
    server.call(agent_os.begin_shutdown)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        while (await client.get("/health")).json()["status"] != "draining":
            await asyncio.sleep(0.02)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(ws_url):
            pass
    response = refused.value.response
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(settings.http.retry_after)
    assert json.loads(response.body)["code"] == "shutting_down"


async def test_a_draining_agentos_serve_still_answers_new_connections(
    process_server: Callable[..., ServerProcess],
) -> None:
    """After SIGTERM, while its run finishes, the process keeps listening: a load balancer's
    or a probe's new connection gets /health 503 ``draining``, /health/ready 503, a create 503
    ``shutting_down``, and a resume of the running run its events to the end; then the process
    exits cleanly."""
    server = process_server(AGENTOS_DEMO_DELAY="0.1", AGENTOS_SHUTDOWN_GRACE="30")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        created = await client.post(
            "/agents/echo/runs",
            data={"message": apps.words(30), "background": "true", "stream": "false"},
        )
        run_id = created.json()["run_id"]
        while (await client.get(f"/agents/echo/runs/{run_id}")).json()["event_count"] < 2:
            await asyncio.sleep(0.02)
        assert server.proc is not None
        server.proc.send_signal(15)
        # Each request below opens its own connection, as a load balancer's probe does.
        fresh = {"timeout": 30, "limits": httpx.Limits(max_keepalive_connections=0)}
        async with httpx.AsyncClient(base_url=server.url, **fresh) as probe:
            while (await probe.get("/health")).json()["status"] != "draining":
                await asyncio.sleep(0.02)  # the drain starts on the server's loop
            health = await probe.get("/health")
            assert (health.status_code, health.json()["status"]) == (503, "draining")
            ready = await probe.get("/health/ready")
            assert (ready.status_code, ready.json()["reason"]) == (503, "draining")
            assert (await probe.get("/health/live")).status_code == 200
            refused = await probe.post("/agents/echo/runs", data={"message": "x"})
            assert (refused.status_code, refused.json()["code"]) == (503, "shutting_down")
            async with probe.stream(
                "GET", f"/agents/echo/runs/{run_id}/resume", params={"last_event_index": 0}
            ) as r:
                assert r.status_code == 200
                got = events_only(await collect(r))
    assert [int(f.id or -1) for f in got] == list(range(1, 32))
    assert got[-1].event == "RunCompleted"
    assert server.proc.wait(timeout=30) in (0, -15)


async def test_a_draining_instance_closes_sockets_whose_runs_it_stopped_tailing(
    tmp_path: Path,
) -> None:
    """A WebSocket on a draining instance that follows another instance's run: the drain ends
    the tail there, so the socket is closed (1012) at once for the client to resume elsewhere;
    it is not left open and silent until this instance's own runs have ended."""
    env = {"AGENTOS_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"}
    owner = ServerProcess(tmp_path, app="tests.apps:served", instance_id="owner", delay=0.2,
                          log_level="warning", env=env)  # fmt: skip
    drained = ServerProcess(tmp_path, app="tests.apps:served", instance_id="drained", delay=0.2,
                            log_level="warning", env={**env, "AGENTOS_SHUTDOWN_GRACE": "20"})  # fmt: skip
    try:
        owner.start()
        drained.start()
        async with httpx.AsyncClient(timeout=30) as client:
            form = {"background": "true", "stream": "false"}
            remote = await client.post(
                f"{owner.url}/workflows/flow/runs", data={**form, "message": apps.words(200)}
            )
            # A run of its own keeps the drained instance draining for its grace period.
            local = await client.post(
                f"{drained.url}/agents/echo/runs", data={**form, "message": apps.words(400)}
            )
            assert (remote.status_code, local.status_code) == (202, 202)
            run_id = remote.json()["run_id"]
            ws_url = drained.url.replace("http", "ws") + "/workflows/ws"
            async with connect(ws_url) as ws:
                assert json.loads(await ws.recv())["event"] == "connected"
                await ws.send(json.dumps({"action": "reconnect", "run_id": run_id}))
                while "event_index" not in json.loads(await ws.recv()):
                    pass  # the replay, then the run's events as the owner commits them
                assert drained.proc is not None
                drained.proc.send_signal(signal.SIGTERM)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            # Closed while the instance still drains (its own run still runs).
            health = await client.get(f"{drained.url}/health")
            assert (health.status_code, health.json()["status"]) == (503, "draining")
    finally:
        owner.kill()
        drained.kill()


def test_default_instance_id_hides_the_host_name_and_survives_a_restart(tmp_path: Path) -> None:
    # It goes to every client (X-AgentOS-Instance, /health, /config), and restart recovery
    # finds an instance's runs by it.
    server = ServerProcess(tmp_path)
    server.env = {k: v for k, v in server.env.items() if k != "AGENTOS_INSTANCE_ID"}
    seen = []
    for _ in range(2):
        with server:
            health = httpx.get(f"{server.url}/health", timeout=10)
            config = httpx.get(f"{server.url}/config", timeout=10).json()
            ids = {health.json()["instance_id"], health.headers["x-agentos-instance"]}
            ids.add(config["instance_id"])
            assert len(ids) == 1
            seen.append(ids.pop())
    assert seen[0] == seen[1], "the same server on the same machine keeps its id"
    assert re.fullmatch("agentos-[0-9a-f]{16}", seen[0]), seen[0]  # a hash, not the name
    assert socket.gethostname() not in seen[0] or re.fullmatch("[0-9a-f]+", socket.gethostname())
    # The database is part of it: two servers on one machine with two databases differ.
    other = tmp_path / "other.db"
    assert Settings(db_url=f"sqlite+aiosqlite:///{other}").instance_id != seen[0]
    assert Settings().replace(db_url=f"sqlite+aiosqlite:///{other}").instance_id == (
        Settings(db_url=f"sqlite+aiosqlite:///{other}").instance_id
    )


def test_a_second_server_with_the_same_instance_id_does_not_start(tmp_path: Path) -> None:
    """Two `agentos serve` on one host and one database get the same default id; the second
    would end the first's runs as its own leftovers. It refuses to start, naming the cause,
    and the first one's run goes on to its end."""
    env = {"AGENTOS_LEASE_TTL": "2", "AGENTOS_LEASE_RENEW_INTERVAL": "0.5"}
    first = ServerProcess(tmp_path, delay=0.4, env=env)  # 20 words: 8 s, past the second's wait
    second = ServerProcess(tmp_path, env=env)
    for server in (first, second):
        server.env.pop("AGENTOS_INSTANCE_ID", None)
    with first:
        created = httpx.post(
            f"{first.url}/agents/echo/runs",
            data={"message": apps.WORDS, "background": "true", "stream": "false"},
            timeout=10,
        )
        run_id = created.json()["run_id"]
        second.launch()
        assert second.proc is not None
        code = second.proc.wait(timeout=30)  # lease_ttl + renew interval, then it gives up
        assert code != 0
        assert "instance_id_in_use" in second.log() or "in use by another live process" in (
            second.log()
        ), second.log()
        running = httpx.get(f"{first.url}/agents/echo/runs/{run_id}").json()
        assert running["status"] == "RUNNING", running  # the second gave up before it ended
        deadline = time.monotonic() + 30
        while (run := httpx.get(f"{first.url}/agents/echo/runs/{run_id}").json())["status"] not in (
            "COMPLETED",
            "ERROR",
            "CANCELLED",
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run["status"] == "COMPLETED", run
