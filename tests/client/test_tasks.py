"""Tasks through the Python client: every ``/tasks`` method, and task runs followed and resumed
like any run (through a proxy that cuts the stream, and across a kill -9 of the server, after
which the task's default retry policy runs the occurrence again)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from agentos_client import (
    APIStatusError,
    AsyncClient,
    Client,
    RunEvent,
    RunFailed,
    RunStatus,
    WaitTimeout,
)

from tests.apps import words
from tests.client.test_client import FAST, assert_complete, collect, replay
from tests.proxy import TCPProxy
from tests.servers import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("tasks"), delay=0.03) as srv:
        yield srv


def _at(occurrence: str) -> float:
    return datetime.fromisoformat(occurrence.replace("Z", "+00:00")).timestamp()


async def _first_run(client: AsyncClient, task_id: str) -> dict[str, object]:
    for _ in range(300):
        runs = await client.list_task_runs(task_id)
        if runs:
            return dict(runs[-1].data)
        await asyncio.sleep(0.1)
    raise AssertionError(f"task {task_id} did not fire")


def test_every_task_method(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, **FAST) as client:
            task = await client.create_task(
                "agents",
                "echo",
                "héllo 🌍",
                task_id="client-daily",
                schedule={"kind": "cron", "cron": "30 2 * * *", "timezone": "Europe/Berlin"},
                tags=["client"],
                retry_policy={"max_attempts": 2},
            )
            assert task["task_id"] == "client-daily" and task["retry_policy"]["max_attempts"] == 2
            assert await client.get_task("client-daily") == task
            listed = await client.list_tasks(tag="client", active=True)
            assert [t["task_id"] for t in listed] == ["client-daily"]
            assert await client.list_tasks(tag="client", active=False) == []
            assert await client.list_tasks(component_id="echo", kind="agents", limit=1000)
            changed = await client.update_task("client-daily", message="changed")
            assert changed["message"] == "changed"
            assert (await client.pause_task("client-daily"))["active"] is False
            assert (await client.resume_task("client-daily"))["active"] is True
            run = await client.trigger_task("client-daily", wait=True)
            assert run.status is RunStatus.COMPLETED and run.content == "changed"
            assert run.data["occurrence"].startswith("manual:")
            [listed_run] = await client.list_task_runs("client-daily", status="completed")
            assert listed_run.run_id == run.run_id and listed_run.data["attempt"] == 1
            await client.delete_task("client-daily")
            with pytest.raises(APIStatusError) as missing:
                await client.get_task("client-daily")
            assert (missing.value.status_code, missing.value.code) == (404, "task_not_found")
            with pytest.raises(APIStatusError) as bad:
                await client.create_task("agents", "echo", "m", schedule={"kind": "daily"})
            assert bad.value.status_code == 422 and "schedule" in str(bad.value)

    asyncio.run(main())


def test_trigger_wait_failures(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, **FAST) as client:
            await client.create_task(
                "agents", "echo", words(300), task_id="client-short", timeout_seconds=0.2
            )
            with pytest.raises(RunFailed) as failed:
                await client.trigger_task("client-short", wait=True)
            assert failed.value.run.error == "timeout"
            await client.create_task("agents", "echo", words(300), task_id="client-long")
            with pytest.raises(WaitTimeout) as late:
                await client.trigger_task("client-long", wait=True, wait_seconds=1)
            run_id = late.value.run_id
            # The run goes on: follow it from where the caller likes.
            events = await collect(client.resume("agents", "echo", run_id, last_event_index=3))
            assert events[0].event_index == 4 and events[-1].event == "RunCompleted"

    asyncio.run(main())


def test_a_scheduled_run_is_followed_and_resumed_through_cuts(server: ServerProcess) -> None:
    async def main() -> None:
        with TCPProxy(server.port) as proxy:
            async with AsyncClient(proxy.url, **FAST) as client:
                start = float(int(time.time()))
                await client.create_task(
                    "agents",
                    "echo",
                    words(60),  # about 2 s
                    task_id="client-interval",
                    schedule={"kind": "interval", "every_seconds": 1, "start_at": start},
                )
                first = await _first_run(client, "client-interval")
                await client.pause_task("client-interval")
                run_id = str(first["run_id"])
                cuts: list[int] = []

                def cut(event: RunEvent) -> None:
                    if event.event_index in (2, 20):
                        cuts.append(proxy.cut())

                events = await collect(client.resume("agents", "echo", run_id), cut)
        assert cuts == [1, 1]
        assert_complete(events)
        assert events[-1].event == "RunCompleted"
        stored = await replay(server.url, "agents", "echo", run_id)
        assert [e.data for e in events] == [e.data for e in stored]
        started = events[0].data
        assert started["scheduled_at"] == _at(str(first["occurrence"]))
        assert started["claimed_at"] >= started["scheduled_at"]

    asyncio.run(main())


def test_the_blocking_client_has_the_task_methods(server: ServerProcess) -> None:
    with Client(server.url, **FAST) as client:
        task = client.create_task("teams", "echo-team", "hi", task_id="client-sync")
        assert task["kind"] == "teams" and task["schedule"] == {"kind": "manual"}
        assert client.get_task("client-sync")["task_id"] == "client-sync"
        assert "client-sync" in [t["task_id"] for t in client.list_tasks(kind="teams")]
        assert client.update_task("client-sync", description="d")["description"] == "d"
        assert client.pause_task("client-sync")["active"] is False
        assert client.resume_task("client-sync")["active"] is True
        run = client.trigger_task("client-sync", wait=True)
        assert run.status is RunStatus.COMPLETED
        assert [r.run_id for r in client.list_task_runs("client-sync")] == [run.run_id]
        client.delete_task("client-sync")
        assert client.list_tasks(kind="teams") == []


@pytest.mark.slow
def test_a_task_run_is_followed_across_a_kill_and_runs_again(tmp_path: Path) -> None:
    """kill -9 mid-run and a restart: restart recovery puts the run back in the queue (the task
    runs' default retry policy retries a lost instance), the restarted server runs it again,
    and the client's stream goes on through both attempts, every event once."""
    env = {"AGENTOS_LEASE_TTL": "3", "AGENTOS_LEASE_RENEW_INTERVAL": "1"}
    with ServerProcess(tmp_path, delay=0.05, env=env) as srv, TCPProxy(srv.port) as proxy:

        def restart() -> None:
            proxy.cut()
            srv.kill()
            srv.start()

        async def main() -> tuple[list[RunEvent], str]:
            settings = {**FAST, "max_reconnects": 60, "backoff_max": 0.5}
            async with AsyncClient(proxy.url, **settings) as client:
                await client.create_task("agents", "echo", words(40), task_id="client-crash")
                run = await client.trigger_task("client-crash")
                events: list[RunEvent] = []
                async with client.resume("agents", "echo", run.run_id) as stream:
                    async for item in stream:
                        assert isinstance(item, RunEvent)
                        events.append(item)
                        if item.event_index == 3:
                            await asyncio.to_thread(restart)
                return events, run.run_id

        events, run_id = asyncio.run(main())
        assert_complete(events)
        names = [e.event for e in events]
        assert names.count("RunRetrying") == 1 and names[-1] == "RunCompleted"
        retrying = events[names.index("RunRetrying")].data
        assert retrying["reason"] == "instance_lost" and retrying["next_attempt"] == 2
        assert [e.data["attempt"] for e in events if e.event == "RunStarted"] == [1, 2]
        assert events[-1].data["content"] == words(40)
        stored = asyncio.run(replay(srv.url, "agents", "echo", run_id))
        assert [e.data for e in events] == [e.data for e in stored]
