"""The scale-out deployment for real: nginx (nginx/agentos.conf) in front of three
``agentos serve`` processes on one PostgreSQL database.

Each test checks one promise of README.md (Scale out): affinity by run id, any-instance resume,
kill -9 of an instance (leases and the reaper), a rolling restart under load, and racing reapers.
Instances use short leases (lease_ttl 3 s) so instance loss is noticed within seconds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.apps import words
from tests.cluster import (
    Cluster,
    Followed,
    create,
    create_streaming,
    follow,
    nginx_binary,
    nginx_config,
    pg_query,
    serve_cluster,
)
from tests.pgdb import _dsn, scratch_database
from tests.servers import free_port

pytestmark = [pytest.mark.nginx, pytest.mark.postgres, pytest.mark.slow]

LEASE_TTL = 3.0
REAPER_INTERVAL = 0.5
RENEW_INTERVAL = 0.5
DEMO_DELAY = 0.05
# A dead instance's runs end at most LEASE_TTL + REAPER_INTERVAL after its last renewal; allow
# for a follower's reconnect and poll on top.
LOSS_BOUND = LEASE_TTL + RENEW_INTERVAL + REAPER_INTERVAL + 3.0


def test_the_nginx_config_is_valid(tmp_path: Path) -> None:
    conf = nginx_config(tmp_path, free_port(), [free_port() for _ in range(3)])
    nginx = nginx_binary()
    checked = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "[warn]" not in checked.stderr, checked.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("scaleout")
    env = {
        "AGENTOS_LEASE_TTL": str(LEASE_TTL),
        "AGENTOS_LEASE_RENEW_INTERVAL": str(RENEW_INTERVAL),
        "AGENTOS_REAPER_INTERVAL": str(REAPER_INTERVAL),
        "AGENTOS_TAIL_POLL_INTERVAL": "0.5",
        "AGENTOS_SHUTDOWN_GRACE": "10",
    }
    nginx_binary()  # skip before creating a database
    with scratch_database() as db_url, serve_cluster(tmp, db_url, env=env, delay=DEMO_DELAY) as c:
        yield c


# -- tests --------------------------------------------------------------------------------------


async def test_each_instance_names_itself(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for instance in cluster.instances:
            response = await client.get(instance.url + "/health")
            assert response.headers["x-agentos-instance"] == instance.instance_id
            missing = await client.get(instance.url + "/agents/echo/runs/nope")
            assert missing.status_code == 404
            assert missing.headers["x-agentos-instance"] == instance.instance_id


@pytest.mark.timeout(90)
async def test_client_run_id_gives_affinity(cluster: Cluster) -> None:
    """Created with a client run id, a run is born where its resumes (and reads) go."""
    async with httpx.AsyncClient(timeout=20) as client:
        origins: dict[str, str] = {}
        # 12 runs, and more (at most 40, one each half second) while they all went to one
        # instance: under heavy load a connect can pass proxy_connect_timeout, and nginx then
        # takes that instance out of the rotation for fail_timeout (5 s), as it should.
        for n in range(40):
            run_id = f"aff-{uuid.uuid4().hex}"
            response = await create(
                client, cluster.nginx_url, words(20), run_id=run_id,
                via="header" if n % 2 else "query",
            )  # fmt: skip
            assert response.headers["x-run-id"] == run_id
            origins[run_id] = response.headers["x-agentos-instance"]
            if n >= 11:
                if len(set(origins.values())) >= 2:
                    break
                await asyncio.sleep(0.5)
        assert len(set(origins.values())) >= 2  # the hash spreads runs
        deadline = time.monotonic() + 30
        results = await asyncio.gather(
            *(follow(client, cluster.nginx_url, Followed(r), deadline=deadline) for r in origins)
        )
        for followed in results:
            followed.check_sequence()
            assert followed.events[-1]["event"] == "RunCompleted"
            assert set(followed.instances) == {origins[followed.run_id]}
            got = await client.get(f"{cluster.nginx_url}/agents/echo/runs/{followed.run_id}")
            assert got.headers["x-agentos-instance"] == origins[followed.run_id]


@pytest.mark.timeout(60)
async def test_resume_on_another_instance(cluster: Cluster) -> None:
    """Without a client run id the run is born anywhere; resumes on every other instance get
    the same events (database replay, then live tail) with no gap or duplicate."""
    async with httpx.AsyncClient(timeout=20) as client:
        created = [await create(client, cluster.nginx_url, words(40)) for _ in range(4)]
        deadline = time.monotonic() + 40
        jobs = []
        for response in created:
            run_id, origin = response.headers["x-run-id"], response.headers["x-agentos-instance"]
            for instance in cluster.instances:
                jobs.append(follow(client, instance.url, Followed(run_id), deadline=deadline))
            jobs.append(follow(client, cluster.nginx_url, Followed(run_id), deadline=deadline))
        results = await asyncio.gather(*jobs)
        for n, response in enumerate(created):
            origin = response.headers["x-agentos-instance"]
            group = results[n * 4 : n * 4 + 4]
            for followed in group:
                followed.check_sequence()
                assert followed.events == group[0].events
                assert followed.events[-1]["event"] == "RunCompleted"
                assert followed.connections == 1
            remote = [f for f in group[:3] if f.instances[0] != origin]
            assert len(remote) == 2
        # Cancel on any instance reaches the owner.
        response = await create(client, cluster.nginx_url, words(400))
        run_id, origin = response.headers["x-run-id"], response.headers["x-agentos-instance"]
        other = next(i for i in cluster.instances if i.instance_id != origin)
        cancelled = await client.post(f"{other.url}/agents/echo/runs/{run_id}/cancel")
        assert cancelled.headers["x-agentos-instance"] == other.instance_id
        assert cancelled.json()["status"] == "CANCELLED"


@pytest.mark.timeout(90)
async def test_kill_9_with_runs_in_flight(cluster: Cluster) -> None:
    victim = cluster.instances[0]
    async with httpx.AsyncClient(timeout=httpx.Timeout(20, read=30)) as client:
        run_ids = []
        for _ in range(20):
            response = await create(client, victim.url, words(400))  # ~20 s each
            assert response.headers["x-agentos-instance"] == victim.instance_id
            run_ids.append(response.headers["x-run-id"])
        deadline = time.monotonic() + 60
        followers = [Followed(r) for r in run_ids]
        tasks = [
            asyncio.create_task(follow(client, cluster.nginx_url, f, deadline=deadline))
            for f in followers
        ]
        while not all(len(f.events) >= 2 for f in followers):
            assert time.monotonic() < deadline - 40
            await asyncio.sleep(0.1)
        victim.kill()
        killed_at = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), LOSS_BOUND + 5)
        took = time.monotonic() - killed_at
        assert took < LOSS_BOUND, f"clients ended {took:.1f}s after the kill"
        print(f"all 20 clients ended {took:.1f}s after kill -9 (bound {LOSS_BOUND:.1f}s)")
        for followed in followers:
            followed.check_sequence()
            assert followed.events[-1]["event"] == "RunError"
            assert followed.events[-1]["error"] == "instance_lost"
        rows = await pg_query(
            cluster.db_url,
            "SELECT r.run_id, r.status, r.error, count(e.*) FILTER (WHERE e.terminal) AS ends"
            " FROM agentos_runs r JOIN agentos_events e USING (run_id)"
            " WHERE r.run_id = ANY($1) GROUP BY r.run_id",
            run_ids,
        )
        assert len(rows) == 20
        assert {(r["status"], r["error"], r["ends"]) for r in rows} == {
            ("ERROR", "instance_lost", 1)
        }
        assert not await pg_query(
            cluster.db_url,
            "SELECT 1 FROM agentos_runs WHERE status = 'RUNNING' AND run_id = ANY($1)",
            run_ids,
        )
    victim.start()  # the same instance id comes back for the next tests


@pytest.mark.timeout(120)
async def test_rolling_restart_under_load(cluster: Cluster) -> None:
    """50 clients keep creating and following runs through nginx while every instance is
    restarted in turn (SIGTERM, drain, start again); every run is seen whole."""
    done = asyncio.Event()
    deadline = time.monotonic() + 100
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    drains: list[float] = []

    async def create_anywhere(client: httpx.AsyncClient, message: str) -> str:
        while True:
            assert time.monotonic() < deadline
            try:
                response = await client.post(
                    f"{cluster.nginx_url}/agents/echo/runs",
                    data={"message": message, "stream": "false", "background": "true"},
                )
                if response.status_code == 202:
                    return response.headers["x-run-id"]
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)

    async def client_loop(n: int, client: httpx.AsyncClient) -> list[Followed]:
        seen: list[Followed] = []
        while not done.is_set() or not seen:
            message = words(25, tag=f"c{n}x")
            if n % 2:
                # No client run id: born on any instance, followed through whichever instance
                # the run id hashes to (often another one, tailing from the database).
                followed = Followed(await create_anywhere(client, message))
                await follow(client, cluster.nginx_url, followed, deadline=deadline)
                assert followed.events[-1]["content"] == message
                seen.append(followed)
                continue
            run_id = f"roll-{n}-{len(seen)}-{uuid.uuid4().hex[:8]}"
            followed = Followed(run_id)
            await create_streaming(client, cluster.nginx_url, message, followed, deadline=deadline)
            await follow(client, cluster.nginx_url, followed, deadline=deadline)
            assert followed.events[-1]["event"] == "RunCompleted", followed.events[-1]
            assert followed.events[-1]["content"] == message
            seen.append(followed)
        return seen

    async with httpx.AsyncClient(timeout=httpx.Timeout(20, read=30), limits=limits) as client:
        clients = [asyncio.create_task(client_loop(n, client)) for n in range(50)]
        try:
            await asyncio.sleep(1.0)
            for instance in cluster.instances:
                began = time.monotonic()
                assert await asyncio.to_thread(instance.terminate, 40.0)
                drains.append(time.monotonic() - began)
                instance.launch()
                await asyncio.to_thread(instance.wait_ready)
                await asyncio.sleep(0.5)
            done.set()
            results = await asyncio.wait_for(asyncio.gather(*clients), 60)
        finally:
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
    runs = [f for seen in results for f in seen]
    for followed in runs:
        followed.check_sequence()
    reconnected = sum(f.connections > 1 for f in runs)
    assert len(runs) >= 50
    # The restarts did cut streams, and the clients came back on another instance.
    assert reconnected > 0
    assert any(len(set(f.instances)) > 1 for f in runs)
    print(f"{len(runs)} runs, {reconnected} reconnected; drains took {drains}")


@pytest.mark.timeout(60)
async def test_racing_reapers_one_terminal_event(cluster: Cluster) -> None:
    """Runs of an instance that never comes back: all three live instances notice at once."""
    conn = await asyncpg.connect(_dsn(cluster.db_url))
    run_ids = [f"ghost-{uuid.uuid4().hex}" for _ in range(10)]
    try:
        now = time.time()
        for n, run_id in enumerate(run_ids):
            await conn.execute(
                "INSERT INTO agentos_runs (run_id, kind, component_id, session_id, status, input,"
                " created_at, updated_at, event_count, instance_id, lease_until)"
                " VALUES ($1, 'agents', 'echo', 's', 'RUNNING', 'x', $2, $2, 0, 'ghost', $3)",
                run_id, now, now + 1.0,
            )  # fmt: skip
            for i in range(n % 3):
                data = json.dumps({"event": "RunContent", "event_index": i, "run_id": run_id})
                await conn.execute(
                    "INSERT INTO agentos_events VALUES ($1, $2, 'RunContent', false, $3)",
                    run_id, i, data,
                )  # fmt: skip
    finally:
        await conn.close()
    async with httpx.AsyncClient(timeout=20) as client:
        deadline = time.monotonic() + 20
        results = await asyncio.gather(
            *(follow(client, cluster.nginx_url, Followed(r), deadline=deadline) for r in run_ids)
        )
    for n, followed in enumerate(results):
        followed.check_sequence()
        assert len(followed.events) == n % 3 + 1
        assert followed.events[-1]["error"] == "instance_lost"
    rows = await pg_query(
        cluster.db_url,
        "SELECT r.instance_id, r.status, count(e.*) FILTER (WHERE e.terminal) AS ends"
        " FROM agentos_runs r JOIN agentos_events e USING (run_id)"
        " WHERE r.run_id = ANY($1) GROUP BY r.run_id",
        run_ids,
    )
    assert len(rows) == 10
    assert {(r["status"], r["ends"]) for r in rows} == {("ERROR", 1)}


@pytest.mark.timeout(60)
async def test_websocket_through_nginx(cluster: Cluster) -> None:
    """nginx upgrades /workflows/ws; a workflow started there streams to its terminal event."""
    from websockets.asyncio.client import connect

    ws_url = cluster.nginx_url.replace("http://", "ws://") + "/workflows/ws"
    async with connect(ws_url, open_timeout=10) as ws:
        assert json.loads(await ws.recv())["event"] == "connected"
        await ws.send(
            json.dumps(
                {"action": "start-workflow", "workflow_id": "echo-workflow", "message": "hi there"}
            )
        )
        names = []
        async with asyncio.timeout(30):
            while not names or names[-1] not in ("WorkflowCompleted", "WorkflowError"):
                names.append(json.loads(await ws.recv())["event"])
    assert names[0] == "WorkflowStarted" and names[-1] == "WorkflowCompleted"
