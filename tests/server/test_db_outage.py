"""PostgreSQL stops for 30 s under 20 streaming runs on two ``agentos serve`` processes.

Instance A owns the runs; each run has a follower on A (it waits on A's buffer) and one on B (B
tails the run from the database, so B's reads fail during the outage). B ends its tails after
``tail_outage_budget`` (10 s here) with the ``database_unavailable`` error event, and its resumes
are answered 503 ``database_unavailable`` until the database is back. Afterwards every run has
ended with exactly one terminal event, every follower has every event exactly once, and every
event a client saw is in the database (durable before visible).

The test stops and starts the machine's PostgreSQL cluster (``pg_ctlcluster``, as root), which
disturbs every other user of that server while it runs: outside CI it runs only when asked for
with ``AGENTOS_TEST_PG_OUTAGE=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.apps import words
from tests.cluster import EVENT_ROWS, TERMINAL, Followed, create, pg_query, stored_events
from tests.pgdb import IN_CI, ascratch_database, require
from tests.servers import ServerProcess
from tests.sse import frames

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

OUTAGE = 30.0
RUNS = 20
WORDS = 150
DEMO_DELAY = 0.1


def _cluster_command(action: str) -> list[str]:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", action]


def _can_stop_postgres() -> str | None:
    if not IN_CI and os.environ.get("AGENTOS_TEST_PG_OUTAGE") != "1":
        return "it stops the shared server for 30 s; set AGENTOS_TEST_PG_OUTAGE=1 to run it"
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        return "no pg_ctlcluster (Debian's postgresql-common)"
    if os.geteuid() != 0:
        return "stopping PostgreSQL needs root"
    return None


@pytest.fixture
def postgres_restarts() -> Iterator[None]:
    """Whatever the test does, PostgreSQL runs again afterwards."""
    require("a PostgreSQL server this test may stop", _can_stop_postgres())
    try:
        yield
    finally:
        subprocess.run(_cluster_command("start"), check=False, capture_output=True, timeout=60)


@dataclass
class Follower(Followed):
    unavailable: int = 0  # streams ended with the database_unavailable error event
    refused: list[tuple[int, str | None, str | None]] = field(default_factory=list)


async def _read(response: httpx.Response, followed: Follower) -> None:
    followed.connections += 1
    async for frame in frames(response):
        payload = frame.payload
        event, event_id = frame.event, frame.id
        if event_id is None:
            if event == "error":
                assert payload["code"] == "database_unavailable", payload
                followed.unavailable += 1
            continue
        assert payload["event_index"] == int(event_id) == followed.cursor + 1, payload
        followed.events.append(payload)
        if payload["event"] in TERMINAL:
            return


async def _follow(
    client: httpx.AsyncClient, base: str, followed: Follower, deadline: float
) -> None:
    """Resume by cursor until the terminal event; note every refusal."""
    while not followed.ended:
        assert time.monotonic() < deadline, f"{followed.run_id} did not end: {followed}"
        url = f"{base}/agents/echo/runs/{followed.run_id}/resume"
        try:
            async with client.stream(
                "GET", url, headers={"Last-Event-ID": str(followed.cursor)}
            ) as response:
                if response.status_code == 200:
                    await _read(response, followed)
                    continue
                body = json.loads(await response.aread())
                followed.refused.append(
                    (response.status_code, body.get("code"), response.headers.get("retry-after"))
                )
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.5)


async def _pg(action: str) -> None:
    done = await asyncio.to_thread(
        subprocess.run, _cluster_command(action), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(120)
async def test_a_postgres_outage_loses_nothing(tmp_path: Path, postgres_restarts: None) -> None:
    async with ascratch_database() as db_url:
        env = {
            "AGENTOS_DB_URL": db_url,
            "AGENTOS_LEASE_TTL": "60",  # longer than the outage: the owner keeps its runs
            "AGENTOS_TAIL_POLL_INTERVAL": "0.2",
            "AGENTOS_TAIL_RETRY_MAX_DELAY": "1",
            "AGENTOS_SHUTDOWN_GRACE": "2",
        }
        owner = ServerProcess(tmp_path, delay=DEMO_DELAY, instance_id="a", env=env)
        other = ServerProcess(
            tmp_path,
            delay=DEMO_DELAY,
            instance_id="b",
            env={**env, "AGENTOS_TAIL_OUTAGE_BUDGET": "10"},
        )
        for instance in (owner, other):
            instance.launch()
        try:
            for instance in (owner, other):
                instance.wait_ready()
            await _outage(owner, other, db_url)
        finally:
            for instance in (owner, other):
                instance.stop()
        for instance in (owner, other):
            log = instance.log_path.read_text(errors="replace")
            assert "Exception in ASGI application" not in log, log[-3000:]
            assert "exception was never retrieved" not in log, log[-3000:]


async def _outage(owner: ServerProcess, other: ServerProcess, db_url: str) -> None:
    timeout = httpx.Timeout(10.0, read=OUTAGE * 2)
    async with httpx.AsyncClient(
        timeout=timeout, limits=httpx.Limits(max_connections=200)
    ) as client:
        run_ids = []
        for _ in range(RUNS):
            response = await create(client, owner.url, words(WORDS))
            run_ids.append(response.json()["run_id"])
        deadline = time.monotonic() + OUTAGE + 50
        on_owner = [Follower(run_id) for run_id in run_ids]
        on_other = [Follower(run_id) for run_id in run_ids]
        tasks = [
            asyncio.create_task(_follow(client, instance.url, f, deadline))
            for instance, followers in ((owner, on_owner), (other, on_other))
            for f in followers
        ]
        while min(len(f.events) for f in on_owner + on_other) < 3:
            assert time.monotonic() < deadline and not any(t.done() for t in tasks)
            await asyncio.sleep(0.1)
        await _pg("stop")
        try:
            await asyncio.sleep(OUTAGE / 2)
            # Answers that need the database: 503 database_unavailable with Retry-After.
            probe = await client.get(f"{other.url}/agents/echo/runs/{run_ids[0]}")
            assert probe.status_code == 503, probe.text
            assert probe.json()["code"] == "database_unavailable"
            assert probe.headers["retry-after"].isdigit()
            assert not any(t.done() for t in tasks[:RUNS])  # the owner's followers wait
            await asyncio.sleep(OUTAGE / 2)
        finally:
            await _pg("start")
        await asyncio.wait_for(asyncio.gather(*tasks), deadline - time.monotonic())

    runs = {r["run_id"]: r for r in await pg_query(db_url, "SELECT * FROM agentos_runs")}
    for run_id, seen_on_owner, seen_on_other in zip(run_ids, on_owner, on_other, strict=True):
        rows = await pg_query(db_url, EVENT_ROWS + " WHERE run_id = $1", run_id)
        events = stored_events(rows).get(run_id, [])
        stored = [json.loads(event.data) for event in events]
        assert [event.index for event in events] == list(range(len(events)))
        assert [e.terminal for e in events].count(True) == 1 and events[-1].terminal
        assert runs[run_id]["status"] not in ("PENDING", "RUNNING")
        for followed in (seen_on_owner, seen_on_other):
            followed.check_sequence()
            assert followed.events == stored  # everything seen was durable, nothing missed
        assert seen_on_owner.connections == 1  # the owner's followers rode the outage out
        assert seen_on_other.unavailable >= 1  # B's tails ended cleanly, then resumed
        for status, code, retry_after in seen_on_other.refused:
            assert (status, code) == (503, "database_unavailable") and retry_after, (
                seen_on_other.refused
            )
    assert all(runs[run_id]["status"] == "COMPLETED" for run_id in run_ids), [
        (r["status"], r["error"]) for r in runs.values()
    ]
