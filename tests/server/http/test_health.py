"""``/health``, ``/health/live`` and ``/health/ready`` as load balancers and orchestrators use
them: public, cheap for the database however hard they poll, and honest about a database that
does not answer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from agentos import Agent, AgentOS, EchoModel, Settings
from tests.servers import ThreadServer
from tests.storage import ScriptedStore

KEY = "health-secret-key"


def _serve(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer], **overrides: object
) -> tuple[ThreadServer, ScriptedStore, AgentOS]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'health.db'}"
    store = ScriptedStore(url)
    settings = Settings(db_url=url, instance_id="health", security_key=KEY, **overrides)
    agent_os = AgentOS(agents=[Agent(id="echo", model=EchoModel())], settings=settings, store=store)
    return serve_thread(agent_os), store, agent_os


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
        "buffer-sweeper": True,
        "component-states": True,
        "group-commit": True,
        "retention": True,  # expired idempotency keys go even when runs are kept
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
