"""The Python client's run options against a real server: retry_policy, timeout_seconds,
multitask, a waiting create's budget (WaitTimeout), attempts, and Idempotency-Key (a repeat
gets the same run; a create whose answer was lost is sent again and makes no second run)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
from agentos_client import (
    APIStatusError,
    AsyncClient,
    Client,
    RunEvent,
    RunStatus,
    TransportError,
    WaitTimeout,
)

from tests.apps import words
from tests.proxy import TCPProxy
from tests.servers import ServerProcess, wait_for

DELAY = 0.02
SLOW = words(150)  # 3 s at DELAY
FAST = {"timeout": 5.0, "backoff_initial": 0.05, "backoff_max": 0.2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("options")
    with ServerProcess(tmp, app="tests.apps:served", delay=DELAY) as srv:
        yield srv


def _runs_of_session(server: ServerProcess, session_id: str) -> list[str]:
    answer = httpx.get(f"{server.url}/sessions/{session_id}", timeout=10)
    if answer.status_code == 404:
        return []
    return [run["run_id"] for run in answer.json()["runs"]]


async def test_run_options_and_attempts(server: ServerProcess) -> None:
    async with AsyncClient(server.url, **FAST) as client:
        run = await client.arun(
            "agents",
            "echo",
            "one two",
            retry_policy={"max_attempts": 2, "delay": 0.1},
            timeout_seconds=30,
            multitask="parallel",
            wait_timeout_seconds=60,
        )
        assert run.status is RunStatus.COMPLETED and run.attempt == 1
        (attempt,) = await client.attempts("agents", "echo", run.run_id)
        assert attempt["attempt"] == 1 and attempt["outcome"] == "COMPLETED"
        with pytest.raises(APIStatusError) as bad:
            await client.arun("agents", "echo", "x", retry_policy={"max_attempts": 0})
        assert bad.value.status_code == 422 and "retry_policy.max_attempts" in str(bad.value)
        with pytest.raises(APIStatusError) as missing:
            await client.attempts("agents", "echo", "no-such-run")
        assert missing.value.status_code == 404


def test_the_blocking_client_has_the_same_options(server: ServerProcess) -> None:
    with Client(server.url, **FAST) as client:
        key = f"sync-{uuid.uuid4()}"
        run = client.run("agents", "echo", "hi there", timeout_seconds=10, idempotency_key=key)
        again = client.run("agents", "echo", "hi there", timeout_seconds=10, idempotency_key=key)
        assert again.run_id == run.run_id and again.status is RunStatus.COMPLETED
        assert client.attempts("agents", "echo", run.run_id)[0]["outcome"] == "COMPLETED"


async def test_a_waiting_create_past_its_budget_raises_wait_timeout(
    server: ServerProcess,
) -> None:
    async with AsyncClient(server.url, **FAST) as client:
        with pytest.raises(WaitTimeout) as timed_out:
            await client.arun("agents", "echo", SLOW, wait_timeout_seconds=0.2)
        error = timed_out.value
        assert error.timeout == 0.2 and error.status in ("PENDING", "QUEUED", "RUNNING")
        run = await client.wait("agents", "echo", error.run_id, timeout=30)
        assert run.status is RunStatus.COMPLETED and run.content == SLOW


async def test_the_same_idempotency_key_gets_the_same_run(server: ServerProcess) -> None:
    key = f"k-{uuid.uuid4()}"
    async with AsyncClient(server.url, **FAST) as client:
        first = await client.arun("agents", "echo", "a b", background=True, idempotency_key=key)
        again = await client.arun("agents", "echo", "a b", background=True, idempotency_key=key)
        assert again.run_id == first.run_id
        with pytest.raises(APIStatusError) as conflict:
            await client.arun("agents", "echo", "a b c", background=True, idempotency_key=key)
        assert (conflict.value.status_code, conflict.value.code) == (422, "idempotency_conflict")

        streamed = f"s-{uuid.uuid4()}"
        runs = []
        for _ in range(2):
            stream = client.arun(
                "agents", "echo", "x y z", stream=True, background=True, idempotency_key=streamed
            )
            async with stream:
                events = [e async for e in stream if isinstance(e, RunEvent)]
            assert [e.event_index for e in events] == list(range(len(events)))
            runs.append((stream.run_id, [e.data for e in events]))
        assert runs[0] == runs[1]


async def test_a_create_whose_answer_was_lost_is_sent_again_with_its_key(
    server: ServerProcess,
) -> None:
    session_id = f"lost-{uuid.uuid4()}"
    with TCPProxy(server.port) as proxy:
        settings = {**FAST, "timeout": 0.5, "max_reconnects": 30}
        async with AsyncClient(proxy.url, **settings) as client:
            # Without a key a lost answer is an error: sending again could make a second run.
            proxy.set_mode("blackhole")
            with pytest.raises(TransportError):
                await client.arun("agents", "echo", "hi", background=True, session_id=session_id)
            await wait_for(lambda: len(_runs_of_session(server, session_id)) == 1)
            # With one, the create is sent again until an answer comes: the same run.
            keyed = f"keyed-{uuid.uuid4()}"
            create = asyncio.create_task(
                client.arun(
                    "agents",
                    "echo",
                    "hi",
                    background=True,
                    session_id=keyed,
                    idempotency_key=f"lost-{keyed}",
                )
            )
            await wait_for(lambda: len(_runs_of_session(server, keyed)) == 1)
            sent = proxy.connections
            await wait_for(lambda: proxy.connections > sent)  # at least one more, still lost
            proxy.set_mode("forward")
            run = await create
    assert _runs_of_session(server, keyed) == [run.run_id]
