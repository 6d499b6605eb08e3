"""The Python clients with JWTs: a token, and a provider called again when one expires."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from agentos_client import APIStatusError, AsyncClient, Client, WorkflowSocket

from agentos import AgentOS, Settings
from tests import apps

SECRET = "client-test-secret-long-enough-for-hs256"


def mint(sub: str = "alice", exp_in: float = 300) -> str:
    claims = {"sub": sub, "scope": "runs:read runs:write runs:cancel"}
    claims["exp"] = int(time.time() + exp_in)
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture
def url(serve: Callable[[AgentOS], str], tmp_path: Path) -> str:
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'agentos.db'}",
        instance_id="tokens",
        demo_delay=0.0,
        jwt_secret=SECRET,
        jwt_leeway=0,
    )
    return serve(apps.build(settings))


async def test_a_token_is_sent_and_runs_are_the_users(url: str) -> None:
    async with AsyncClient(url, token=mint("alice")) as alice:
        run = await alice.arun("agents", "echo", "hello")
        assert run.status.value == "COMPLETED"
    async with AsyncClient(url, token=mint("bob")) as bob:
        with pytest.raises(APIStatusError) as other:
            await bob.get_run("agents", "echo", run.run_id)
        assert other.value.status_code == 404
        assert await bob.list_runs("agents", "echo") == []


async def test_an_expired_token_is_refreshed_once_per_401(url: str) -> None:
    calls: list[float] = []

    async def provider() -> str:
        calls.append(time.time())
        return mint()

    async with AsyncClient(url, token=mint(exp_in=-60), token_provider=provider) as client:
        run = await client.arun("agents", "echo", "hello")
        events = [e async for e in client.arun("agents", "echo", "hi", stream=True)]
        assert await client.get_run("agents", "echo", run.run_id)
    assert run.status.value == "COMPLETED" and events[-1].event == "RunCompleted"
    assert len(calls) == 1  # the first 401 refreshed it; the new token served the rest

    def stale() -> str:
        return mint(exp_in=-60)

    async with AsyncClient(url, token_provider=stale) as stuck:
        with pytest.raises(APIStatusError) as refused:
            await stuck.list_runs("agents", "echo")
        assert refused.value.status_code == 401  # once more, then the 401 is the answer


def test_the_blocking_client_takes_a_token_provider(url: str) -> None:
    with Client(url, token_provider=lambda: mint("carol")) as client:
        run = client.run("agents", "echo", "hello")
        assert client.get_run("agents", "echo", run.run_id).run_id == run.run_id


async def test_the_workflow_socket_refreshes_an_expired_token(url: str) -> None:
    fresh = []

    def provider() -> str:
        fresh.append(1)
        return mint()

    async with WorkflowSocket(url, token=mint(exp_in=-60), token_provider=provider) as ws:
        run = await ws.start_workflow("flow", "hello")
        events = [e async for e in ws.follow(run.run_id)]
    assert events[-1]["event"] == "WorkflowCompleted" and fresh == [1]
