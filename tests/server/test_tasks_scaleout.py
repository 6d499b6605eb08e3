"""Exactly once per occurrence across processes: two ``agentos serve`` on one SQLite file (one of
them killed with SIGKILL midway, once it has run an occurrence) and three on PostgreSQL fire 200
interval occurrences (more if the kill comes late); each occurrence has exactly one run, none is
missing."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentos.schedules import occurrence_id
from tests.pgdb import ascratch_database
from tests.servers import ServerProcess

_TASKS = 10
_EVERY = 0.5
_OCCURRENCES = 200  # in all: 20 per task


def _servers(tmp_path: Path, url: str | None, count: int) -> list[ServerProcess]:
    env = {
        "AGENTOS_TASK_TICK": "0.1",
        "AGENTOS_TASK_CLAIM_TTL": "1",
        # Claims of two tasks at a time, so that the instances share each occurrence's tasks
        # (with one claim of all ten, one instance may win every occurrence for seconds).
        "AGENTOS_TASK_CLAIM_BATCH": "2",
        "AGENTOS_LEASE_TTL": "3",
        "AGENTOS_LEASE_RENEW_INTERVAL": "1",
        "AGENTOS_SHUTDOWN_GRACE": "1",
        **({"AGENTOS_DB_URL": url} if url else {}),
    }
    servers = [
        ServerProcess(
            tmp_path,
            app="tests.apps:served",
            delay=0,
            instance_id=f"i{n}",
            env=env,
            log_level="warning",
        )
        for n in range(count)
    ]
    servers[0].start()  # creates the schema
    for server in servers[1:]:
        server.launch()
    for server in servers[1:]:
        server.wait_ready()
    return servers


async def _wait_for_a_run_of(db_path: Path, instance_id: str, timeout: float = 30.0) -> None:
    """Wait (bounded) until ``instance_id`` has run one of the runs to its end (its row keeps
    the instance). Which instance claims a task is a race: under load one instance may win
    every claim for seconds."""
    query = "SELECT 1 FROM agentos_runs WHERE instance_id = ? AND status = 'COMPLETED' LIMIT 1"
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as db:
            if db.execute(query, (instance_id,)).fetchone() is not None:
                return
        assert time.monotonic() < deadline, f"{instance_id} ran no occurrence in {timeout} s"
        await asyncio.sleep(0.1)


async def _fire_200(servers: list[ServerProcess], kill_one: Path | None) -> None:
    """``kill_one``: the SQLite file of ``servers``; the last server is killed midway, once it
    has run an occurrence; the occurrences checked then go on for half as many again after the
    kill (200 in all at least), fired by the others alone."""
    base = servers[0].url
    # Far enough ahead that every task exists before its first occurrence, even under load.
    start_at = float(int(time.time()) + 5)
    per_task = _OCCURRENCES // _TASKS
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for n in range(_TASKS):
            r = await client.post(
                "/tasks",
                json={
                    "task_id": f"t{n}",
                    "component_id": "echo",
                    "message": "ping",
                    "overlap_policy": "allow_parallel",
                    "session_policy": "run",
                    # The first occurrence is start_at + every.
                    "schedule": {"kind": "interval", "every_seconds": _EVERY, "start_at": start_at},
                },
            )
            assert r.status_code == 201, r.text
        last = start_at + per_task * _EVERY
        if kill_one is not None:
            await asyncio.sleep(max(0.0, start_at + per_task * _EVERY / 2 - time.time()))
            victim = servers[-1]
            assert victim.instance_id is not None
            await _wait_for_a_run_of(kill_one, victim.instance_id)
            victim.kill()  # whatever it had just claimed or created
            after_kill = math.ceil((time.time() - start_at) / _EVERY) + per_task // 2
            per_task = max(per_task, after_kill)
            last = start_at + per_task * _EVERY
        await asyncio.sleep(max(0.0, last - time.time()))
        expected = {occurrence_id(start_at + k * _EVERY) for k in range(1, per_task + 1)}

        async def occurrences(n: int) -> list[str]:
            r = await client.get(f"/tasks/t{n}/runs", params={"limit": 1000})
            return [run["occurrence"] for run in r.json()]

        # Late is not missing: a killed instance's claims expire after 1 s, and a loaded
        # machine fires late; wait (bounded) until every occurrence has its run.
        deadline = time.monotonic() + 30
        for n in range(_TASKS):
            while not expected <= set(await occurrences(n)) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        for n in range(_TASKS):
            assert (await client.post(f"/tasks/t{n}/pause")).status_code == 200
        for n in range(_TASKS):
            found = await occurrences(n)
            assert len(found) == len(set(found))
            assert expected <= set(found), sorted(expected - set(found))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_two_sqlite_processes_fire_each_occurrence_once_through_a_kill(
    tmp_path: Path,
) -> None:
    servers = _servers(tmp_path, None, 2)
    try:
        await _fire_200(servers, kill_one=tmp_path / "agentos.db")
        with sqlite3.connect(tmp_path / "agentos.db") as db:
            owners = db.execute("SELECT DISTINCT instance_id FROM agentos_runs").fetchall()
        # The work was shared (a run the killed instance held may wait in the queue: None);
        # the killed instance ran one at least (waited for before the kill).
        assert {"i0", "i1"} <= {owner for (owner,) in owners}
    finally:
        for server in servers:
            server.kill()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.postgres
async def test_three_postgres_instances_fire_each_occurrence_once(tmp_path: Path) -> None:
    async with ascratch_database() as url:
        servers = _servers(tmp_path, url, 3)
        try:
            await _fire_200(servers, kill_one=None)
        finally:
            for server in servers:
                server.kill()


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_of_the_instance_that_won_an_occurrence_still_runs_it_once(
    tmp_path: Path,
) -> None:
    """Instance a (the only scheduler) fires the occurrence and dies mid-run; b's reaper puts
    the run back in the queue (a task run retries a lost instance by default) and b runs it to
    its end: one run, two attempts. a restarted fires nothing more."""
    env = {
        "AGENTOS_TASK_TICK": "0.1",
        "AGENTOS_LEASE_TTL": "2",
        "AGENTOS_LEASE_RENEW_INTERVAL": "0.5",
        "AGENTOS_REAPER_INTERVAL": "0.5",
        "AGENTOS_QUEUE_POLL_INTERVAL": "0.2",
    }
    a = ServerProcess(tmp_path, delay=0.05, instance_id="a", env=env, log_level="warning")
    off = {**env, "AGENTOS_TASK_SCHEDULER": "false"}
    b = ServerProcess(tmp_path, delay=0.05, instance_id="b", env=off, log_level="warning")
    a.start()
    b.start()
    try:
        with httpx.Client(base_url=b.url, timeout=30) as http:
            at = time.time() + 1
            created = http.post(
                "/tasks",
                json={
                    "task_id": "once",
                    "component_id": "echo",
                    "message": " ".join(f"w{i}" for i in range(60)),  # 3 s
                    "schedule": {"kind": "once", "at": at},
                },
            )
            assert created.status_code == 201, created.text

            def runs() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = http.get("/tasks/once/runs").json()
                return found

            _wait(lambda: bool(runs()) and runs()[0]["status"] == "RUNNING")
            time.sleep(0.5)
            [run] = runs()
            assert run["status"] == "RUNNING" and run["occurrence"] == occurrence_id(at)
            a.kill()  # mid-run (3 s), its lease still good for up to 2 s
            path = f"/agents/echo/runs/{run['run_id']}"
            _wait(lambda: http.get(path).json()["status"] in ("COMPLETED", "ERROR", "CANCELLED"))
            final = http.get(path).json()
            assert final["status"] == "COMPLETED" and final["attempt"] == 2, final
            events = http.get(f"{path}/resume", headers={"Accept": "text/event-stream"}).text
            assert events.count("event: RunRetrying") == 1 and "instance_lost" in events
            a.start()  # its restart recovery finds nothing of its own left to end
            time.sleep(1)
            assert [r["run_id"] for r in runs()] == [run["run_id"]]
            task = http.get("/tasks/once").json()
            assert task["next_fire_at"] is None and task["fired"] == 1
    finally:
        a.kill()
        b.kill()
    with sqlite3.connect(tmp_path / "agentos.db") as db:
        attempts = db.execute("SELECT attempts, instance_id FROM agentos_runs").fetchall()
    [(history, owner)] = attempts
    assert owner == "b" and '"instance_id":"a"' in history and '"instance_lost"' in history
