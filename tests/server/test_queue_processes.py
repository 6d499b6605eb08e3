"""The run queue across real processes: kill -9, SIGTERM, SIGSTOP, and racing claimers.

Instances are ``agentos serve tests.apps:served`` subprocesses; on PostgreSQL three of them behind
nginx (``tests/cluster.py``), on SQLite one (or two on one file). The agents: ``echo`` (one
attempt, the default) and ``durable`` (two attempts), EchoModel at ``DELAY`` seconds a word,
and ``tenacious`` (five attempts, five times slower). Leases are short (``LEASE_TTL``) so a lost instance is noticed within
seconds. The in-process tests of the same rules are in ``test_queue.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentos.backends.base import open_backend
from agentos.events import RunStatus
from agentos.settings import Settings
from tests.apps import words
from tests.cluster import (
    EVENT_ROWS,
    Cluster,
    Followed,
    create,
    create_streaming,
    follow,
    nginx_binary,
    pg_query,
    serve_cluster,
    stored_events,
)
from tests.pgdb import ascratch_database, scratch_database
from tests.servers import ServerProcess
from tests.storage import run_record

pytestmark = [pytest.mark.slow]

LEASE_TTL = 3.0
RENEW_INTERVAL = 0.25
REAPER_INTERVAL = 0.25
DELAY = 0.05
ENV = {
    "AGENTOS_LEASE_TTL": str(LEASE_TTL),
    "AGENTOS_LEASE_RENEW_INTERVAL": str(RENEW_INTERVAL),
    "AGENTOS_REAPER_INTERVAL": str(REAPER_INTERVAL),
    "AGENTOS_TAIL_POLL_INTERVAL": "0.25",
    "AGENTOS_QUEUE_POLL_INTERVAL": "0.25",
    # Shorter than a run: a SIGTERM cuts the runs it finds, and they go back to the queue.
    "AGENTOS_SHUTDOWN_GRACE": "0.5",
}
APP = "tests.apps:served"
TIMEOUT = httpx.Timeout(20, read=30)
#: Seconds a replacement instance may take to start (a loaded machine takes its time).
START = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nginx_binary()  # skip (or fail in CI) before creating a database
    tmp = tmp_path_factory.mktemp("queue")
    with scratch_database() as db_url, serve_cluster(tmp, db_url, env=ENV, app=APP) as c:
        yield c


@pytest.fixture
def whole(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster, with every instance up again after the test (killed, stopped, restarted)."""
    yield cluster
    for instance in cluster.instances:
        if instance.proc is not None and instance.running:
            os.kill(instance.proc.pid, signal.SIGCONT)
        else:
            instance.launch()
            instance.wait_ready(START)


def check_attempts(followed: Followed, attempts: int, reasons: set[str]) -> None:
    """The stream of a run that took ``attempts`` attempts, each but the last ended for one of
    ``reasons``: one terminal event, a RunRetrying after each attempt but the last, each
    attempt's events from its RunStarted and numbered with the attempt. (An attempt whose
    instance was lost before it committed anything has only its RunRetrying.)"""
    followed.check_sequence()
    names = [e["event"] for e in followed.events]
    retries = [i for i, name in enumerate(names) if name == "RunRetrying"]
    assert len(retries) == attempts - 1, names
    bounds = [-1, *retries, len(names) - 1]
    for attempt, (first, last) in enumerate(itertools.pairwise(bounds), start=1):
        span = followed.events[first + 1 : last + 1]
        assert {e["attempt"] for e in span} == {attempt}, (followed.run_id, span)
        if span[0]["event"] != "RunStarted":
            assert [e["event"] for e in span] == ["RunRetrying"], (followed.run_id, span)
            assert span[0]["reason"] == "instance_lost", span
    for n, index in enumerate(retries, start=1):
        retrying = followed.events[index]
        assert retrying["reason"] in reasons, retrying
        assert retrying["next_attempt"] == n + 1, retrying


async def _runs_in_db(url: str, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each run's row with its count of events, terminal events and RunStarted events."""
    rows = await pg_query(
        url,
        "SELECT run_id, status, error, attempt, instance_id, event_count FROM agentos_runs"
        " WHERE run_id = ANY($1)",
        run_ids,
    )
    stored = stored_events(await pg_query(url, EVENT_ROWS + " WHERE run_id = ANY($1)", run_ids))
    found = {}
    for row in rows:
        events = stored.get(row["run_id"])
        if events:  # the runs with events, as the join made them
            found[row["run_id"]] = {
                **row,
                "events": len(events),
                "top": events[-1].index,
                "ends": sum(e.terminal for e in events),
                "starts": sum(e.name == "RunStarted" for e in events),
            }
    return found


# -- kill -9 ------------------------------------------------------------------------------------


@pytest.mark.nginx
@pytest.mark.postgres
@pytest.mark.timeout(180)
@pytest.mark.parametrize("agent, attempts", [("durable", 2), ("echo", 1)])
async def test_kill_9_runs_go_on_elsewhere_per_their_policy(
    whole: Cluster, agent: str, attempts: int
) -> None:
    """20 runs of a killed instance: with two attempts each completes on a survivor, its
    followers (through nginx) see both attempts; with one, each ends with instance_lost."""
    victim = whole.instances[0]
    messages: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        sent = [words(60, f"k{n}x") for n in range(20)]  # 3 s an attempt
        created = await asyncio.gather(
            *(create(client, victim.url, message, agent=agent) for message in sent)
        )
        for message, response in zip(sent, created, strict=True):
            assert response.headers["x-agentos-instance"] == victim.instance_id
            messages[response.headers["x-run-id"]] = message
        deadline = time.monotonic() + 90
        followers = [Followed(run_id, agent) for run_id in messages]
        tasks = [
            asyncio.create_task(follow(client, whole.nginx_url, f, deadline=deadline))
            for f in followers
        ]
        while not all(len(f.events) >= 3 for f in followers):
            assert time.monotonic() < deadline - 60, "the runs did not get going"
            await asyncio.sleep(0.05)
        assert not any(f.ended for f in followers)  # mid-way
        victim.kill()
        await asyncio.wait_for(asyncio.gather(*tasks), 80)
    rows = await _runs_in_db(whole.db_url, list(messages))
    for followed in followers:
        row = rows[followed.run_id]
        assert (row["events"], row["top"], row["ends"]) == (
            len(followed.events),
            row["events"] - 1,
            1,
        )
        assert (row["attempt"], row["starts"]) == (attempts, attempts)
        last = followed.events[-1]
        if attempts == 1:
            followed.check_sequence()
            assert (last["event"], last["error"]) == ("RunError", "instance_lost")
            assert {e["attempt"] for e in followed.events} == {1}
            assert (row["status"], row["error"]) == ("ERROR", "instance_lost")
            continue
        check_attempts(followed, 2, {"instance_lost"})
        assert (last["event"], last["content"]) == ("RunCompleted", messages[followed.run_id])
        assert row["status"] == "COMPLETED" and row["instance_id"] != victim.instance_id


@pytest.mark.timeout(150)
async def test_kill_9_on_sqlite_retries_on_restart(tmp_path: Path) -> None:
    """One instance on SQLite, killed and started again: restart recovery queues its runs with
    a retry left again (they complete), and ends the others with "interrupted"."""
    server = ServerProcess(
        tmp_path, app=APP, delay=DELAY, instance_id="solo", log_level="warning", env=ENV
    )
    server.launch()
    server.wait_ready(START)
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            agents = ["durable"] * 5 + ["echo"] * 2
            followers, messages = [], {}
            for n, agent in enumerate(agents):
                message = words(40, f"s{n}x")
                response = await create(client, server.url, message, agent=agent)
                run_id = response.headers["x-run-id"]
                messages[run_id] = message
                followers.append(Followed(run_id, agent))
            deadline = time.monotonic() + 100
            tasks = [
                asyncio.create_task(follow(client, server.url, f, deadline=deadline))
                for f in followers
            ]
            while not all(len(f.events) >= 3 for f in followers):
                assert time.monotonic() < deadline - 30, "the runs did not get going"
                await asyncio.sleep(0.05)
            server.kill()
            server.launch()  # the same instance id, port and database file
            await asyncio.to_thread(server.wait_ready, START)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        server.kill()
    for followed in followers:
        last = followed.events[-1]
        if followed.agent == "echo":
            followed.check_sequence()
            assert (last["event"], last["error"]) == ("RunError", "interrupted")
            continue
        check_attempts(followed, 2, {"instance_lost"})
        retrying = next(e for e in followed.events if e["event"] == "RunRetrying")
        assert retrying["error"] == "interrupted"
        assert (last["event"], last["content"]) == ("RunCompleted", messages[followed.run_id])


# -- SIGTERM ------------------------------------------------------------------------------------


@pytest.mark.nginx
@pytest.mark.postgres
@pytest.mark.timeout(240)
async def test_rolling_restart_hands_runs_over(whole: Cluster) -> None:
    """50 clients create and follow runs (longer than shutdown_grace) through nginx while each
    instance in turn gets SIGTERM and is replaced: the runs a draining instance still has go
    back to the queue and complete elsewhere; none ends with a shutdown error."""
    done = asyncio.Event()
    deadline = time.monotonic() + 220
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
    base = whole.nginx_url

    async def one_run(client: httpx.AsyncClient, n: int, count: int) -> Followed:
        message = words(12, f"c{n}x{count}x")  # 3 s an attempt
        run_id = f"roll-{n}-{count}-{uuid.uuid4().hex[:8]}"
        followed = Followed(run_id, "tenacious")
        await create_streaming(client, base, message, followed, deadline=deadline)
        await follow(client, base, followed, deadline=deadline)
        assert followed.events[-1]["content"] == message, followed.events[-1]
        return followed

    async def client_loop(n: int, client: httpx.AsyncClient) -> list[Followed]:
        seen: list[Followed] = []
        while not done.is_set() or not seen:
            seen.append(await one_run(client, n, len(seen)))
        return seen

    drains = []
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as client:
        clients = [asyncio.create_task(client_loop(n, client)) for n in range(50)]
        try:
            await asyncio.sleep(1.0)
            for instance in whole.instances:
                began = time.monotonic()
                assert await asyncio.to_thread(instance.terminate, 40.0)
                drains.append(round(time.monotonic() - began, 1))
                instance.launch()
                await asyncio.to_thread(instance.wait_ready, START)
                await asyncio.sleep(0.5)
            done.set()
            results = await asyncio.wait_for(asyncio.gather(*clients), 60)
        finally:
            for task in clients:
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
    runs = [f for seen in results for f in seen]
    reasons: Counter[str] = Counter()
    for followed in runs:
        attempts = followed.events[-1]["attempt"]
        # A SIGTERM hands runs back ("shutdown"); an instance starved of CPU for a lease may
        # also lose a run to another ("instance_lost"). Either way the run goes on.
        check_attempts(followed, attempts, {"shutdown", "instance_lost"})
        assert followed.events[-1]["event"] == "RunCompleted"
        reasons.update(e["reason"] for e in followed.events if e["event"] == "RunRetrying")
    rows = await _runs_in_db(whole.db_url, [f.run_id for f in runs])
    assert {(r["status"], r["ends"]) for r in rows.values()} == {("COMPLETED", 1)}
    assert len(runs) >= 50
    assert reasons["shutdown"] > 0  # the restarts did cut runs, and they went on elsewhere
    print(f"{len(runs)} runs; retries by reason {dict(reasons)}; drains took {drains} s")


# -- SIGSTOP ------------------------------------------------------------------------------------


@pytest.mark.nginx
@pytest.mark.postgres
@pytest.mark.timeout(120)
async def test_a_paused_former_owner_commits_nothing_after_the_claim(whole: Cluster) -> None:
    """An owner frozen (SIGSTOP) past its lease loses its run to another instance (attempt 2);
    thawed (SIGCONT) with events of attempt 1 still to commit, it lands none of them."""
    frozen = whole.instances[1]
    assert frozen.proc is not None
    message = words(120, "z")  # 6 s an attempt
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await create(client, frozen.url, message, agent="durable")
        run_id = response.headers["x-run-id"]
        deadline = time.monotonic() + 40
        while (await _runs_in_db(whole.db_url, [run_id])).get(run_id, {}).get("events", 0) < 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        try:
            # Another instance reaps the run, then claims it and commits events of attempt 2.
            while True:
                row = (await _runs_in_db(whole.db_url, [run_id]))[run_id]
                assert time.monotonic() < deadline, "the run was not taken over"
                if row["attempt"] == 2 and row["events"] >= row["top"] > 0 and row["starts"] == 2:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # a few events of attempt 2
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        followed = await follow(
            client, whole.nginx_url, Followed(run_id, "durable"), deadline=deadline
        )
        health = await client.get(frozen.url + "/health")
        assert health.status_code == 200  # thawed, it serves on
    check_attempts(followed, 2, {"instance_lost"})
    assert followed.events[-1]["content"] == message
    row = (await _runs_in_db(whole.db_url, [run_id]))[run_id]
    assert row["status"] == "COMPLETED" and row["instance_id"] != frozen.instance_id
    rows = await pg_query(whole.db_url, EVENT_ROWS + " WHERE run_id = $1", run_id)
    assert [json.loads(e.data) for e in stored_events(rows)[run_id]] == followed.events
    assert "conflict with another writer" in frozen.log()  # it did try, and was fenced out


# -- admission and racing claims --------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_full_queue_answers_429_and_creates_nothing(tmp_path: Path) -> None:
    env = {**ENV, "AGENTOS_MAX_ACTIVE_RUNS": "1", "AGENTOS_MAX_QUEUED_RUNS": "2"}
    server = ServerProcess(tmp_path, app=APP, delay=DELAY, log_level="warning", env=env)
    server.launch()
    try:
        server.wait_ready(START)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            running = await create(client, "", words(400, "busy"))
            assert running.json()["status"] == "PENDING"
            for n in range(2):
                queued = await create(client, "", f"queued {n}")
                assert queued.json()["status"] == "QUEUED"
            for stream in ("false", "true"):
                refused = await client.post(
                    "/agents/echo/runs",
                    data={"message": "one too many", "stream": stream, "background": "true"},
                    headers={"X-Run-Id": f"overflow-{stream}"},
                )
                assert refused.status_code == 429
                assert refused.json()["code"] == "queue_full"
                assert int(refused.headers["retry-after"]) > 0
                missing = await client.get(f"/agents/echo/runs/overflow-{stream}")
                assert missing.status_code == 404
            listed = (await client.get("/agents/echo/runs")).json()
            assert len(listed) == 3 and "one too many" not in {r["input"] for r in listed}
            # Room again once the running run ends: the queue moves and takes a new run.
            await client.post(f"/agents/echo/runs/{running.headers['x-run-id']}/cancel")
            deadline = time.monotonic() + 20
            while (
                await client.post("/agents/echo/runs", data={"message": "now"})
            ).status_code != 200:
                assert time.monotonic() < deadline, "the queue did not drain"
                await asyncio.sleep(0.1)
    finally:
        server.kill()


async def _rows(db_url: str, query: str) -> list[dict[str, Any]]:
    """The rows of a query without parameters, on SQLite or PostgreSQL."""
    if db_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(db_url.partition(":///")[2])) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(query)]
    return [dict(row) for row in await pg_query(db_url, query)]


async def _enqueue(db_url: str, count: int) -> list[str]:
    """Put ``count`` runs of ``echo`` in the queue in one transaction (all claimable at once),
    as a create on a full instance would queue each; returns their ids."""
    store = open_backend(Settings(db_url=db_url, instance_id="creator")).store
    await store.open()
    try:
        now = time.time()
        records = [
            run_record(
                f"race-{n:04}",
                status=RunStatus.QUEUED,
                session_id=f"race-{n:04}",
                input=words(3, f"r{n}x"),
                created_at=now + n * 1e-6,
                updated_at=now,
                attempt=0,
                not_before=now,
            )
            for n in range(count)
        ]
        await store.commit([], [], runs=records)
    finally:
        await store.close()
    return [r.run_id for r in records]


@contextlib.asynccontextmanager
async def _database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'race.db'}"
        return
    async with ascratch_database() as url:
        yield url


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "backend, racers",
    [
        pytest.param("sqlite", 2, id="sqlite"),
        pytest.param("postgres", 3, id="postgres", marks=pytest.mark.postgres),
    ],
)
async def test_racing_instances_claim_each_queued_run_once(
    tmp_path: Path, backend: str, racers: int
) -> None:
    """500 runs appear in the queue at once; instances that claim a few at a time race for
    them (compare-and-set on SQLite, SKIP LOCKED on PostgreSQL): each runs once."""
    env = {
        **ENV,
        "AGENTOS_MAX_ACTIVE_RUNS": "25",
        "AGENTOS_CLAIM_BATCH": "7",
        "AGENTOS_QUEUE_POLL_INTERVAL": "0.1",
    }
    async with _database(backend, tmp_path) as db_url:
        servers: list[ServerProcess] = []
        try:
            # The first creates the schema; the others find it (two SQLite processes creating
            # the tables of an empty file at once would collide). Each takes its port just
            # before it starts: a port found free is soon taken on a busy machine.
            for n in range(racers):
                servers.append(
                    ServerProcess(
                        tmp_path,
                        app=APP,
                        delay=0.01,
                        instance_id=f"racer{n}",
                        log_level="warning",
                        env={**env, "AGENTOS_DB_URL": db_url},
                    )
                )
                servers[-1].launch()
                if n == 0:
                    await asyncio.to_thread(servers[0].wait_ready, START)
            for server in servers[1:]:
                await asyncio.to_thread(server.wait_ready, START)
            run_ids = await _enqueue(db_url, 500)
            deadline = time.monotonic() + 60
            count = "SELECT count(*) AS n FROM agentos_runs WHERE status = 'COMPLETED'"
            while (await _rows(db_url, count))[0]["n"] < 500:
                assert time.monotonic() < deadline, "the queue did not drain"
                assert all(s.running for s in servers)
                await asyncio.sleep(0.2)
            runs = await _rows(db_url, "SELECT * FROM agentos_runs")
            events = stored_events(await _rows(db_url, EVENT_ROWS))
        finally:
            for server in servers:
                server.kill()
    assert sorted(r["run_id"] for r in runs) == run_ids
    assert {(r["status"], r["attempt"]) for r in runs} == {("COMPLETED", 1)}
    assert sorted(events) == run_ids
    for run_id, found in events.items():
        assert [e.index for e in found] == list(range(len(found)))
        assert [e.name for e in found].count("RunStarted") == 1
        assert [e.terminal for e in found].count(True) == 1
        assert {json.loads(e.data)["attempt"] for e in found} == {1}, run_id
    claims = Counter(r["instance_id"] for r in runs)
    assert set(claims) == {s.instance_id for s in servers}, claims  # every racer won some
    assert sum(claims.values()) == 500
    print(f"claims per instance: {dict(claims)}")
