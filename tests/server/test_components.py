"""Component lifecycle: GET /{kind}/{id} with version, tags and stats; pause and resume, seen by
every instance on the database and after a restart; the CLI commands."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import jwt
import pytest

from agentos import Agent, AgentOS
from agentos.errors import ComponentPaused
from agentos.events import RunStatus
from agentos.settings import Settings
from tests import apps
from tests.pgdb import db_url, pg_url
from tests.servers import ROOT, ThreadServer

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest

KEY = "operator-key"
SECRET = "jwt-secret-of-the-tests-of-components"


async def _slow(message: str) -> AsyncIterator[str]:
    for word in message.split():
        await asyncio.sleep(0.05)
        yield word + " "


async def _fails(message: str) -> AsyncIterator[str]:
    yield "x"
    raise RuntimeError("boom")


def _agent_os(db_url: str, instance: str) -> AgentOS:
    settings = Settings(
        db_url=db_url,
        instance_id=instance,
        component_state_ttl=0.2,
        security_key=KEY,
        jwt_secret=SECRET,
    )
    return AgentOS(
        agents=[
            Agent(id="slow", fn=_slow, version="2.1", tags=["demo", "slow"], description="d"),
            Agent(id="fails", fn=_fails),
        ],
        settings=settings,
    )


async def test_a_pause_reaches_every_instance_and_survives_a_restart(db_url: str) -> None:
    one, two = _agent_os(db_url, "one"), _agent_os(db_url, "two")
    async with one, two:
        going = await one.manager.start_run(one.manager.component("agents", "slow"), "a b c d")
        await one.manager.lifecycle.set_paused("agents", "slow", True)
        for agent_os in (one, two):
            slow = agent_os.manager.component("agents", "slow")
            deadline = time.monotonic() + 10
            while True:  # instance two sees it within component_state_ttl
                try:
                    run = await agent_os.manager.start_run(slow, "hello")
                except ComponentPaused:
                    break
                await agent_os.manager.wait(run.run_id)
                assert time.monotonic() < deadline, "the pause never reached this instance"
                await asyncio.sleep(0.05)
        # The run in flight finishes; the other component is not paused.
        assert (await one.manager.wait(going.run_id)).status is RunStatus.COMPLETED
        await two.manager.start_run(two.manager.component("agents", "fails"), "x")
    again = _agent_os(db_url, "three")
    async with again:
        with pytest.raises(ComponentPaused):
            await again.manager.start_run(again.manager.component("agents", "slow"), "hi")
        await again.manager.lifecycle.set_paused("agents", "slow", False)
        run = await again.manager.start_run(again.manager.component("agents", "slow"), "hi")
        assert (await again.manager.wait(run.run_id)).status is RunStatus.COMPLETED


async def test_http_component_details_pause_and_resume(db_url: str) -> None:
    agent_os = _agent_os(db_url, "one")
    server = ThreadServer(agent_os.app)
    await asyncio.to_thread(server.start)
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=10) as http:
            for agent, message in (("slow", "a b"), ("slow", "c"), ("fails", "x")):
                response = await http.post(
                    f"/agents/{agent}/runs", data={"message": message, "stream": "false"}
                )
                assert response.status_code == 200
            body = (await http.get("/agents/slow")).json()
            assert body["version"] == "2.1" and body["tags"] == ["demo", "slow"]
            assert body["description"] == "d" and body["paused"] is False
            assert isinstance(body["registered_at"], float)
            stats = body["stats"]
            assert stats["runs"]["COMPLETED"] == 2 and stats["total_runs"] == 2
            assert stats["failures"] == 0
            assert 0 < stats["mean_duration"] <= stats["p95_duration"]
            failing = (await http.get("/agents/fails")).json()["stats"]
            assert failing["failures"] == 1 and failing["runs"]["ERROR"] == 1
            assert (await http.get("/agents")).json()[0]["tags"] == ["demo", "slow"]
            assert (await http.get("/agents/nope")).status_code == 404

            going = await http.post(
                "/agents/slow/runs",
                data={"message": "a b c d e", "background": "true", "stream": "false"},
            )
            paused = await http.post("/agents/slow/pause")
            assert paused.status_code == 200 and paused.json()["paused"] is True
            refused = await http.post("/agents/slow/runs", data={"message": "hi"})
            assert refused.status_code == 409
            assert refused.json()["code"] == "component_paused"
            run_id = going.json()["run_id"]
            for _ in range(200):  # the run in flight finishes
                run = (await http.get(f"/agents/slow/runs/{run_id}")).json()
                if run["status"] not in ("PENDING", "RUNNING"):
                    break
                await asyncio.sleep(0.05)
            assert run["status"] == "COMPLETED"
            resumed = await http.post("/agents/slow/resume")
            assert resumed.json()["paused"] is False
            again = await http.post("/agents/slow/runs", data={"message": "hi", "stream": "false"})
            assert again.status_code == 200
            for scopes, status in (("runs:write runs:read", 403), ("admin", 200)):
                token = jwt.encode(
                    {"sub": "u", "scope": scopes, "exp": int(time.time()) + 600},
                    SECRET,
                    algorithm="HS256",
                )
                answer = await http.post(
                    "/agents/slow/pause", headers={"Authorization": f"Bearer {token}"}
                )
                assert answer.status_code == status
            assert answer.json()["paused"] is True
    finally:
        await asyncio.to_thread(server.stop)


def test_cli_pauses_and_resumes(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    agent_os = _agent_os(url, "one")
    server = ThreadServer(agent_os.app)
    server.start()
    env = {"AGENTOS_URL": server.url, "AGENTOS_SECURITY_KEY": KEY, "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentos", *args],
            cwd=ROOT,
            env={**env, "PYTHONPATH": f"{ROOT}:{ROOT / 'clients' / 'python'}"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    try:
        assert cli("agents", "pause", "slow").returncode == 0
        shown = cli("agents", "get", "slow", "--json")
        assert shown.returncode == 0 and '"paused": true' in shown.stdout
        assert cli("agents", "resume", "slow").returncode == 0
        assert '"paused": false' in cli("agents", "get", "slow", "--json").stdout
        assert cli("agents", "pause", "nope").returncode == 2
    finally:
        server.stop()


@pytest.mark.parametrize(("kind", "component"), [("teams", "team"), ("workflows", "flow")])
def test_teams_and_workflows_have_details_stats_and_pause(
    kind: str, component: str, tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    """The one lifecycle route serves every kind: a team's or a workflow's details and stats,
    and its pause (409 component_paused) and resume."""
    settings = Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'k.db'}", demo_delay=0.0)
    server = serve_thread(apps.build(settings))
    with httpx.Client(base_url=f"{server.url}/{kind}", timeout=10) as http:
        done = http.post(f"/{component}/runs", data={"message": "a b", "stream": "false"})
        assert done.json()["status"] == "COMPLETED"
        body = http.get(f"/{component}").json()
        assert body["id"] == component and body["paused"] is False
        assert {"description", "version", "tags", "registered_at"} <= set(body)
        stats = body["stats"]
        assert stats["total_runs"] == 1 and stats["runs"]["COMPLETED"] == 1
        assert stats["failures"] == 0 and 0 <= stats["mean_duration"] <= stats["p95_duration"]
        assert http.post(f"/{component}/pause").json()["paused"] is True
        refused = http.post(f"/{component}/runs", data={"message": "x", "stream": "false"})
        assert (refused.status_code, refused.json()["code"]) == (409, "component_paused")
        assert http.get(f"/{component}").json()["paused"] is True
        assert http.post(f"/{component}/resume").json()["paused"] is False
        again = http.post(f"/{component}/runs", data={"message": "x", "stream": "false"})
        assert again.json()["status"] == "COMPLETED"
        assert http.get(f"/{component}").json()["stats"]["total_runs"] == 2
