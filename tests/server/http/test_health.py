"""``/health``, ``/health/live`` and ``/health/ready`` as load balancers and orchestrators use
them: public, cheap for the database however hard they poll, and honest about a database that
does not answer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from agentos import Agent, AgentOS, EchoModel, Settings
from tests.pgdb import pg_url
from tests.proxy import TCPProxy
from tests.servers import ThreadServer
from tests.storage import ScriptedStore

__all__ = ["pg_url"]  # a fixture, imported for pytest

KEY = "health-secret-key"


def _serve(
    tmp_path: Path,
    serve_thread: Callable[[AgentOS], ThreadServer],
    delay: float = 0.0,
    **overrides: object,
) -> tuple[ThreadServer, ScriptedStore, AgentOS]:
    """agents/echo (``delay`` seconds a word) on a ScriptedStore, behind KEY."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'health.db'}"
    store = ScriptedStore(url)
    settings = Settings(db_url=url, instance_id="health", security_key=KEY, **overrides)
    echo = Agent(id="echo", model=EchoModel(delay))
    agent_os = AgentOS(agents=[echo], settings=settings, store=store)
    return serve_thread(agent_os), store, agent_os


def _start(server: ThreadServer, words: int) -> str:
    created = httpx.post(
        f"{server.url}/agents/echo/runs",
        json={"message": " ".join(["word"] * words), "background": True, "stream": False},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert created.status_code == 202, created.text
    run_id: str = created.json()["run_id"]
    return run_id


def _committed_an_event(server: ThreadServer, run_id: str) -> None:
    """Wait until the run's first two events have committed: a run waits for those commits
    before it goes on, so a commit held back before them would hold the run too."""
    while True:
        run = httpx.get(
            f"{server.url}/agents/echo/runs/{run_id}",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        ).json()
        if run["event_count"] >= 2:
            return
        time.sleep(0.01)


def _cancel(server: ThreadServer, run_id: str) -> None:
    cancelled = httpx.post(
        f"{server.url}/agents/echo/runs/{run_id}/cancel",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert cancelled.status_code == 200


def _health_until(server: ThreadServer, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll /health until ``ok(body)``; the last body (the test's timeout bounds the wait)."""
    while True:
        body: dict[str, Any] = httpx.get(f"{server.url}/health", timeout=10).json()
        if ok(body):
            return body
        time.sleep(0.01)


def test_health_is_public_reports_its_checks_and_reveals_no_secret(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    server, _, _ = _serve(tmp_path, serve_thread)
    health = httpx.get(f"{server.url}/health")  # no key
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["status"] == "running"
    checks = body["checks"]
    assert set(checks) == {"database", "committer", "buffer", "background"}
    assert all(check["ok"] is True for check in checks.values()), checks
    assert checks["database"]["latency_ms"] >= 0
    assert checks["buffer"]["max_bytes"] == Settings().buffer.max_bytes_total
    assert checks["background"]["tasks"] == {
        "lease-renewer": True,
        "reaper": True,
        "queue": True,
        "buffer-sweeper": True,
        "component-states": True,
        "group-commit": True,
        "retention": True,  # expired idempotency keys go even when runs are kept
        "scheduler": True,
    }
    live = httpx.get(f"{server.url}/health/live")
    ready = httpx.get(f"{server.url}/health/ready")
    assert (live.status_code, live.json()["status"]) == (200, "alive")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    for response in (health, live, ready):
        text = response.text
        assert KEY not in text and "sqlite" not in text and str(tmp_path) not in text
    # the rest still needs the key
    assert httpx.get(f"{server.url}/config").status_code == 401


def test_hard_polling_costs_one_database_query_per_interval(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    server, store, _ = _serve(tmp_path, serve_thread, health_check_interval=3600.0)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            server.call(store.ping_gate.clear)  # the first check hangs until released
            await asyncio.sleep(0.1)
            pending = [asyncio.create_task(client.get(path)) for path in ["/health"] * 20]
            pending += [asyncio.create_task(client.get("/health/ready")) for _ in range(5)]
            for _ in range(100):
                if store.pings:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # every request is waiting for the one check by now
            server.call(store.ping_gate.set)
            answers = await asyncio.gather(*pending)
            assert [a.status_code for a in answers] == [200] * 25
            for _ in range(50):
                assert (await client.get("/health")).status_code == 200
            assert store.pings == 1

    asyncio.run(main())


def test_a_hung_database_is_degraded_and_not_ready_within_the_timeout(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    server, store, _ = _serve(
        tmp_path, serve_thread, health_check_interval=0.0, health_check_timeout=0.3
    )
    server.call(store.ping_gate.clear)
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert (health.status_code, health.json()["status"]) == (200, "degraded"), health.text
    database = health.json()["checks"]["database"]
    assert database["ok"] is False and database["error"] == "timeout"
    assert database["latency_ms"] >= 300
    ready = httpx.get(f"{server.url}/health/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["reason"] == "database"
    assert "retry-after" in ready.headers
    assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200
    server.call(store.ping_gate.set)
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.json()["status"] == "running", json.dumps(health.json())
    assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200


def test_a_dead_background_task_is_degraded(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    server, _, agent_os = _serve(tmp_path, serve_thread)
    sweeper = agent_os.manager._sweeper
    assert sweeper is not None
    server.call(sweeper.cancel)
    for _ in range(100):
        if sweeper.done():
            break
        time.sleep(0.02)
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "degraded"
    assert health["checks"]["background"]["tasks"]["buffer-sweeper"] is False


def test_a_dead_scheduler_is_degraded_and_one_turned_off_is_not_checked(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    server, _, agent_os = _serve(tmp_path, serve_thread)
    scheduler = agent_os.tasks._loop
    assert scheduler is not None
    server.call(scheduler.cancel)
    body = _health_until(server, lambda b: b["checks"]["background"]["tasks"]["scheduler"] is False)
    assert body["status"] == "degraded"
    (tmp_path / "off").mkdir()
    off, _, _ = _serve(tmp_path / "off", serve_thread, task_scheduler=False)
    body = httpx.get(f"{off.url}/health").json()
    assert body["status"] == "running" and "scheduler" not in body["checks"]["background"]["tasks"]


@pytest.mark.parametrize(
    ("stall_timeout", "status", "code", "ready"),
    [(3600.0, "degraded", 200, 200), (0.5, "down", 503, 503)],
)
def test_a_stuck_committer_is_degraded_then_down(
    tmp_path: Path,
    serve_thread: Callable[[AgentOS], ThreadServer],
    stall_timeout: float,
    status: str,
    code: int,
    ready: int,
) -> None:
    """A commit that hangs (no error, no answer) while the database still answers SELECT 1:
    degraded once it has waited create_timeout, down after commit_stall_timeout; running again
    once it goes through."""
    server, store, _ = _serve(
        tmp_path, serve_thread, create_timeout=0.2, commit_stall_timeout=stall_timeout
    )
    auth = {"Authorization": f"Bearer {KEY}"}
    server.call(store.gate.clear)  # every commit from now on hangs
    try:
        created = httpx.post(
            f"{server.url}/agents/echo/runs",
            json={"message": "a b", "background": True, "stream": False},
            headers=auth,
            timeout=10,
        )
        assert created.status_code == 503  # its commit did not come back within create_timeout
        for _ in range(400):
            health = httpx.get(f"{server.url}/health", timeout=10)
            if health.json()["status"] == status:
                break
            time.sleep(0.02)
        assert health.status_code == code, health.text
        body = health.json()
        assert body["status"] == status
        committer = body["checks"]["committer"]
        assert committer["ok"] is False and committer["failing_for"] > 0.2
        assert body["checks"]["database"]["ok"] is True  # the database answers; commits do not
        answer = httpx.get(f"{server.url}/health/ready", timeout=10)
        assert answer.status_code == ready
        if ready == 503:
            assert answer.json()["reason"] == "down"
    finally:
        server.call(store.gate.set)
    for _ in range(400):
        if httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "running":
            break
        time.sleep(0.02)
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert (health.status_code, health.json()["status"]) == (200, "running")


def test_live_runs_filling_the_buffer_are_degraded(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    """Live runs' events past 90 % of buffer_max_bytes_total: their older events leave memory
    (followers read them from the database), and /health says so."""
    server, _, _ = _serve(tmp_path, serve_thread, delay=0.005, buffer_max_bytes_total=4000)
    run_id = _start(server, 4000)  # 20 s of events, far more than 4000 bytes
    body = _health_until(server, lambda b: not b["checks"]["buffer"]["ok"])
    assert body["status"] == "degraded"
    buffer = body["checks"]["buffer"]
    assert buffer["max_bytes"] == 4000 and buffer["live_bytes"] > 3600
    _cancel(server, run_id)
    body = _health_until(server, lambda b: b["checks"]["buffer"]["live_bytes"] == 0)
    assert body["status"] == "running"  # an ended run's events are dropped first, no pressure


def test_a_full_commit_backlog_is_degraded(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    """Commits slower than the runs: the backlog fills up and runs wait to emit, before any
    commit has failed or waited create_timeout."""
    server, store, _ = _serve(
        tmp_path, serve_thread, delay=0.005, max_pending_events=5, create_timeout=3600.0
    )
    run_id = _start(server, 1000)
    _committed_an_event(server, run_id)
    server.call(store.gate.clear)  # the next commit waits
    try:
        body = _health_until(server, lambda b: b["pending_events"] >= 5)
        committer = body["checks"]["committer"]
        assert committer["ok"] is False and committer["failing_for"] == 0
        assert body["status"] == "degraded"
        assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200
    finally:
        server.call(store.gate.set)
    _cancel(server, run_id)
    body = _health_until(server, lambda b: b["active_runs"] == 0 and b["pending_events"] == 0)
    assert body["status"] == "running"


@pytest.mark.postgres
@pytest.mark.slow
def test_a_stopped_postgresql_is_degraded_and_not_ready_then_running_again(
    pg_url: str, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    """The database behind a proxy that drops every connection and refuses new ones, as a
    stopped server does: the real driver's failure shows as the database check failing
    (degraded, not ready, still live), and the instance is running and ready again once the
    database is back."""
    parsed = make_url(pg_url)
    with TCPProxy(parsed.port or 5432, parsed.host or "127.0.0.1") as proxy:
        url = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = Settings(
            db_url=url, instance_id="health-pg", health_check_interval=0.0, health_check_timeout=2.0
        )
        server = serve_thread(
            AgentOS(agents=[Agent(id="echo", model=EchoModel())], settings=settings)
        )
        assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "running"
        proxy.set_mode("refuse")
        proxy.cut()
        health = httpx.get(f"{server.url}/health", timeout=10)
        assert (health.status_code, health.json()["status"]) == (200, "degraded"), health.text
        database = health.json()["checks"]["database"]
        assert database["ok"] is False and database["error"] == "unavailable"
        ready = httpx.get(f"{server.url}/health/ready", timeout=10)
        assert (ready.status_code, ready.json()["reason"]) == (503, "database")
        assert httpx.get(f"{server.url}/health/live", timeout=10).status_code == 200
        proxy.set_mode("forward")
        body = _health_until(server, lambda b: b["status"] == "running")
        assert body["checks"]["database"]["ok"] is True
        assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200
