"""``GET /metrics``: scraped from a real server while runs and streams happen."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from agentos import Agent, AgentOS, EchoModel, Settings
from agentos.errors import StoreUnavailable
from tests import apps
from tests.apps import words
from tests.servers import ServerProcess, ThreadServer
from tests.storage import ScriptedStore, run_record

KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await http.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


@pytest.fixture
def slow_server(serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings) -> str:
    """The test components, about 0.03 s per word, behind a security key."""
    return serve_thread(apps.build(settings.replace(demo_delay=0.03, security_key=KEY))).url


async def test_metrics_move_with_runs_and_streams(slow_server: str) -> None:
    async with httpx.AsyncClient(base_url=slow_server, timeout=30) as http:
        before = await scrape(http)
        assert value(before, "agentos_open_streams", transport="sse") == 0
        assert value(before, "agentos_active_runs") == 0

        # An SSE stream of a background run, held open while we scrape.
        body = {"message": words(30), "stream": True, "background": True}
        async with http.stream("POST", "/agents/echo/runs", json=body, headers=AUTH) as sse:
            lines = sse.aiter_lines()
            async for line in lines:
                if line.startswith("id:"):
                    break  # the first event has arrived: the run is going
            during = await scrape(http)
            assert value(during, "agentos_open_streams", transport="sse") == 1
            assert value(during, "agentos_open_streams", transport="websocket") == 0
            assert value(during, "agentos_active_runs") == 1
            assert value(during, "agentos_buffered_runs") >= 1
            assert value(during, "agentos_buffer_bytes") > 0

            # A WebSocket follower of a workflow run, at the same time.
            ws_url = slow_server.replace("http://", "ws://") + "/workflows/ws"
            async with connect(ws_url, additional_headers=AUTH, open_timeout=10) as ws:
                assert json.loads(await ws.recv())["event"] == "connected"
                frame = {"action": "start-workflow", "workflow_id": "flow", "message": words(30)}
                await ws.send(json.dumps(frame))
                assert json.loads(await ws.recv())["event"] == "WorkflowStarted"
                both = await scrape(http)
                assert value(both, "agentos_open_streams", transport="websocket") == 1
                assert value(both, "agentos_open_streams", transport="sse") == 1
                assert value(both, "agentos_active_runs") == 2
                while json.loads(await ws.recv())["event"] != "WorkflowCompleted":
                    pass
            async for line in lines:
                if line.startswith("event: RunCompleted"):
                    break

        # Streams closed and runs ended: gauges back down, counters up.
        for _ in range(200):
            after = await scrape(http)
            if (
                value(after, "agentos_open_streams", transport="sse") == 0
                and value(after, "agentos_open_streams", transport="websocket") == 0
                and value(after, "agentos_active_runs") == 0
            ):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail(f"gauges did not come back down: {after}")

    started = value(after, "agentos_runs_started_total", kind="agents", component="echo")
    assert (
        started == value(before, "agentos_runs_started_total", kind="agents", component="echo") + 1
    )
    assert value(after, "agentos_runs_started_total", kind="workflows", component="flow") == 1
    ended = {"kind": "agents", "component": "echo", "status": "COMPLETED"}
    assert value(after, "agentos_runs_ended_total", **ended) == 1
    flow_ended = {"kind": "workflows", "component": "flow", "status": "COMPLETED"}
    assert value(after, "agentos_runs_ended_total", **flow_ended) == 1
    # 30 words: RunStarted, 30 RunContent, RunCompleted; the workflow's events come on top.
    events = value(after, "agentos_events_committed_total")
    assert events >= 32 + value(before, "agentos_events_committed_total")
    commits = value(after, "agentos_commits_total")
    assert commits > value(before, "agentos_commits_total")
    # Every committed transaction is one observation of each histogram.
    assert value(after, "agentos_commit_duration_seconds_count") == commits
    assert value(after, "agentos_commit_group_events_count") == commits
    assert value(after, "agentos_commit_group_events_sum") == events
    assert value(after, "agentos_commit_failures_total") == 0
    assert value(after, "agentos_pending_events") == 0


async def test_metrics_need_the_key_unless_public(
    serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings
) -> None:
    guarded = serve_thread(apps.build(settings.replace(security_key=KEY))).url
    async with httpx.AsyncClient(base_url=guarded, timeout=10) as http:
        assert (await http.get("/metrics")).status_code == 401
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        assert (await http.get("/metrics", headers=AUTH)).status_code == 200

    db = settings.database.url.replace("agentos.db", "public.db")
    public_os = apps.build(settings.replace(security_key=KEY, metrics_public=True, db_url=db))
    public = serve_thread(public_os).url
    async with httpx.AsyncClient(base_url=public, timeout=10) as http:
        response = await http.get("/metrics")
        assert response.status_code == 200 and "agentos_active_runs" in response.text
        assert (await http.get("/agents")).status_code == 401  # only /metrics is opened


async def test_each_server_has_its_own_registry(tmp_path: Path) -> None:
    """Two servers in one process: each reports its own numbers (no global registry)."""
    first = apps.build(Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"))
    second = apps.build(Settings(db_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"))
    async with first, second:
        manager = first.manager
        run = await manager.start_run(manager.component("agents", "echo"), "a b c")
        await manager.wait(run.run_id)
    one, two = parse(first.metrics.render().decode()), parse(second.metrics.render().decode())
    assert value(one, "agentos_runs_started_total", kind="agents", component="echo") == 1
    assert value(two, "agentos_runs_started_total", kind="agents", component="echo") == 0
    assert value(one, "agentos_commit_duration_seconds_count") > 0
    assert value(two, "agentos_commit_duration_seconds_count") == 0


async def test_commit_failures_and_reaps_are_counted(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}"
    store = ScriptedStore(url, errors=[StoreUnavailable("down"), StoreUnavailable("still down")])
    settings = Settings(db_url=url, commit_retry_delay=0.01, instance_id="me")
    agent_os = AgentOS(agents=[Agent(id="echo", model=EchoModel())], settings=settings, store=store)
    async with agent_os:
        manager = agent_os.manager
        run = await manager.start_run(manager.component("agents", "echo"), "a b")
        await manager.wait(run.run_id)
        lost = run_record("lost", instance_id="dead", lease_until=time.time() - 5)
        await store.create_run(lost)
        assert await manager.leases.reap_once() == ["lost"]
        samples = parse(agent_os.metrics.render().decode())
    assert value(samples, "agentos_commit_failures_total") == 2
    assert value(samples, "agentos_lease_reaps_total") == 1
    ended = {"kind": "agents", "component": "echo", "status": "COMPLETED"}
    assert value(samples, "agentos_runs_ended_total", **ended) == 1


async def test_queue_metrics_move_with_queued_claimed_and_retried_runs(
    serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings
) -> None:
    tries: dict[str, int] = {}

    async def flaky(message: str) -> AsyncIterator[str]:
        tries[message] = tries.get(message, 0) + 1
        yield "x"
        if tries[message] == 1:
            raise ConnectionError("first try")

    agents = [
        Agent(id="echo", model=EchoModel(0.03)),
        Agent(id="flaky", fn=flaky, retry_policy={"max_attempts": 2, "delay": 0}),
    ]
    queued = settings.replace(max_active_runs=1, security_key=KEY)
    server = serve_thread(AgentOS(agents=agents, settings=queued))
    form = {"message": words(30), "background": "true", "stream": "false"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30, headers=AUTH) as http:
        runs = [(await http.post("/agents/echo/runs", data=form)).json() for _ in range(3)]
        assert [run["status"] for run in runs] == ["PENDING", "QUEUED", "QUEUED"]
        during = await scrape(http)
        assert value(during, "agentos_queue_depth") == 2
        assert value(during, "agentos_runs_queued_total") == 2
        for run in runs:
            for _ in range(200):
                got = (await http.get(f"/agents/echo/runs/{run['run_id']}")).json()
                if got["status"] == "COMPLETED":
                    break
                await asyncio.sleep(0.05)
        retried = await http.post("/agents/flaky/runs", data={"message": "m", "stream": "false"})
        assert retried.json()["status"] == "COMPLETED" and retried.json()["attempt"] == 2
        after = await scrape(http)
        assert value(after, "agentos_queue_depth") == 0
        assert value(after, "agentos_runs_claimed_total") == 3  # two queued, one retry
        assert value(after, "agentos_run_retries_total", reason="exception") == 1


async def test_task_occurrences_and_firing_lag_are_counted(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}"
    settings = Settings(db_url=url, demo_delay=0.01, task_scheduler=False, task_misfire_grace=30)
    agent_os = apps.build(settings)
    start = float(int(time.time()))
    async with agent_os:
        tasks = agent_os.tasks
        tasks.clock = lambda: start
        task = await tasks.create(
            {
                "component_id": "echo",
                "message": words(1000),  # 10 s: still running at every pass below
                "schedule": {"kind": "interval", "every_seconds": 10, "start_at": start},
            }
        )
        before = parse(agent_os.metrics.render().decode())
        assert value(before, "agentos_task_occurrences_total", outcome="fired") == 0
        assert value(before, "agentos_task_firing_lag_seconds_count") == 0
        tasks.clock = lambda: start + 10.5
        await tasks.fire_due()  # on time, 0.5 s late
        await tasks.fire_due(start + 20)  # skip_if_running: skipped
        # Down from start + 25 to start + 100: 30 ... 70 are missed (more than 30 s late);
        # 80, 90 and 100 are on time but skipped.
        await tasks.fire_due(start + 100)
        samples = parse(agent_os.metrics.render().decode())
        [run] = await tasks.runs(task.task_id)
        await agent_os.manager.cancel(run.run_id)
    assert value(samples, "agentos_task_occurrences_total", outcome="fired") == 1
    assert value(samples, "agentos_task_occurrences_total", outcome="skipped") == 4
    assert value(samples, "agentos_task_occurrences_total", outcome="missed") == 5
    assert value(samples, "agentos_task_firing_lag_seconds_count") == 1
    assert value(samples, "agentos_task_firing_lag_seconds_sum") == 0.5
    assert value(samples, "agentos_task_firing_lag_seconds_bucket", le="0.25") == 0
    assert value(samples, "agentos_task_firing_lag_seconds_bucket", le="0.5") == 1


@pytest.mark.slow
async def test_a_scrape_moves_with_a_real_lease_reap_and_live_task_firings(tmp_path: Path) -> None:
    """Two ``agentos serve`` on one database. A is killed with a run going: once A's lease has
    expired, B's reaper ends the run and B's ``/metrics`` counts the reap. Then B's scheduler
    fires a task every second: its occurrences and their lag move in the next scrapes."""
    env = {
        "AGENTOS_LEASE_TTL": "1",
        "AGENTOS_LEASE_RENEW_INTERVAL": "0.2",
        "AGENTOS_REAPER_INTERVAL": "0.2",
        "AGENTOS_TASK_TICK": "0.2",
    }
    a = ServerProcess(tmp_path, delay=0.1, instance_id="a", security_key=KEY, env=env)
    b = ServerProcess(tmp_path, delay=0.1, instance_id="b", security_key=KEY, env=env)
    with a, b:
        async with httpx.AsyncClient(base_url=b.url, timeout=10, headers=AUTH) as http:
            before = await scrape(http)
            assert value(before, "agentos_lease_reaps_total") == 0
            assert value(before, "agentos_task_occurrences_total", outcome="fired") == 0

            form = {"message": words(300), "background": "true", "stream": "false"}
            created = await http.post(f"{a.url}/agents/echo/runs", data=form)
            run_url = f"/agents/echo/runs/{created.json()['run_id']}"
            while (await http.get(run_url)).json()["event_count"] < 3:
                await asyncio.sleep(0.05)
            a.kill()
            while value(samples := await scrape(http), "agentos_lease_reaps_total") < 1:
                await asyncio.sleep(0.1)  # the test's timeout bounds the wait
            assert value(samples, "agentos_lease_reaps_total") == 1
            run = (await http.get(run_url)).json()
            assert run["status"] == "ERROR" and run["error"] == "instance_lost", run

            task = {
                "component_id": "echo",
                "message": "tick",
                "schedule": {"kind": "interval", "every_seconds": 1},
            }
            assert (await http.post("/tasks", json=task)).status_code == 201
            fired = 0.0
            while fired < 2:
                await asyncio.sleep(0.1)
                samples = await scrape(http)
                fired = value(samples, "agentos_task_occurrences_total", outcome="fired")
            lags = value(samples, "agentos_task_firing_lag_seconds_count")
            assert 1 <= lags <= fired  # a lag is observed once its occurrence's run commits
            assert value(samples, "agentos_task_firing_lag_seconds_bucket", le="+Inf") == lags
            assert value(samples, "agentos_lease_reaps_total") == 1
