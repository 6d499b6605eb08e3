"""Exactly once per occurrence across processes: two ``agentos serve`` on one SQLite file (one of
them killed with SIGKILL midway) and three on PostgreSQL fire 200 interval occurrences; each
occurrence has exactly one run, none is missing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

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


async def _fire_200(servers: list[ServerProcess], kill_one: bool) -> None:
    base = servers[0].url
    start_at = float(int(time.time()) + 2)
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
        if kill_one:
            await asyncio.sleep(max(0.0, start_at + per_task * _EVERY / 2 - time.time()))
            servers[-1].kill()  # whatever it had just claimed or created
        await asyncio.sleep(max(0.0, last - time.time()) + 0.05)
        for n in range(_TASKS):
            assert (await client.post(f"/tasks/t{n}/pause")).status_code == 200
        # A killed instance's claim expires after 1 s: then its occurrences fire elsewhere.
        await asyncio.sleep(2.5 if kill_one else 0.5)
        for n in range(_TASKS):
            r = await client.get(f"/tasks/t{n}/runs", params={"limit": 1000})
            runs = r.json()
            occurrences = [run["occurrence"] for run in runs]
            assert len(occurrences) == len(set(occurrences))
            expected = {occurrence_id(start_at + k * _EVERY) for k in range(1, per_task + 1)}
            assert expected <= set(occurrences), sorted(expected - set(occurrences))


async def test_two_sqlite_processes_fire_each_occurrence_once_through_a_kill(
    tmp_path: Path,
) -> None:
    servers = _servers(tmp_path, None, 2)
    try:
        await _fire_200(servers, kill_one=True)
        with sqlite3.connect(tmp_path / "agentos.db") as db:
            owners = db.execute("SELECT DISTINCT instance_id FROM agentos_runs").fetchall()
        assert len(owners) == 2  # the work was shared
    finally:
        for server in servers:
            server.kill()


@pytest.mark.postgres
async def test_three_postgres_instances_fire_each_occurrence_once(tmp_path: Path) -> None:
    async with ascratch_database() as url:
        servers = _servers(tmp_path, url, 3)
        try:
            await _fire_200(servers, kill_one=False)
        finally:
            for server in servers:
                server.kill()
