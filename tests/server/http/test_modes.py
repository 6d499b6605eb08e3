"""The four execution modes for agents, teams and workflows, over a real uvicorn."""

from __future__ import annotations

import httpx
import pytest

from tests.sse import collect, events_only

COMPONENTS = [
    ("agents", "echo", "RunStarted", "RunCompleted"),
    ("teams", "team", "TeamRunStarted", "TeamRunCompleted"),
    ("workflows", "flow", "WorkflowStarted", "WorkflowCompleted"),
]


def check_sequence(frames: list, first: str, last: str) -> None:
    assert [int(f.id) for f in frames] == list(range(len(frames)))
    assert [f.payload["event_index"] for f in frames] == list(range(len(frames)))
    assert frames[0].event == first and frames[-1].event == last
    assert all(f.event == f.payload["event"] for f in frames)


@pytest.mark.parametrize(("kind", "cid", "first", "last"), COMPONENTS)
async def test_stream_inline(
    client: httpx.AsyncClient, kind: str, cid: str, first: str, last: str
) -> None:
    async with client.stream("POST", f"/{kind}/{cid}/runs", data={"message": "a b c"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        run_id = response.headers["x-run-id"]
        assert response.headers["location"] == f"/{kind}/{cid}/runs/{run_id}"
        assert response.headers["x-session-id"]
        frames = await collect(response)
    assert not any(f.is_meta for f in frames)
    check_sequence(frames, first, last)
    assert {f.payload["run_id"] for f in frames} == {run_id}
    run = (await client.get(f"/{kind}/{cid}/runs/{run_id}")).json()
    assert run["status"] == "COMPLETED"
    assert run["event_count"] == len(frames)
    assert run["content"] == frames[-1].payload["content"]


@pytest.mark.parametrize(("kind", "cid", "first", "last"), COMPONENTS)
async def test_stream_background(
    client: httpx.AsyncClient, kind: str, cid: str, first: str, last: str
) -> None:
    body = {"message": "a b c", "background": True, "stream": True, "session_id": "s-1"}
    async with client.stream("POST", f"/{kind}/{cid}/runs", json=body) as response:
        assert response.status_code == 200
        assert response.headers["x-session-id"] == "s-1"
        frames = await collect(response)
    check_sequence(frames, first, last)
    assert {f.payload["session_id"] for f in frames} == {"s-1"}


@pytest.mark.parametrize(("kind", "cid", "first", "last"), COMPONENTS)
async def test_json_sync(
    client: httpx.AsyncClient, kind: str, cid: str, first: str, last: str
) -> None:
    response = await client.post(
        f"/{kind}/{cid}/runs", data={"message": "a b c", "stream": "false"}
    )
    assert response.status_code == 200
    run = response.json()
    assert run["status"] == "COMPLETED"
    assert run["run_id"] == response.headers["x-run-id"]
    assert run["content"]
    frames = events_only(await _replay(client, kind, cid, run["run_id"]))
    check_sequence(frames, first, last)
    assert len(frames) == run["event_count"]


@pytest.mark.parametrize(("kind", "cid", "first", "last"), COMPONENTS)
async def test_background_json_then_poll(
    client: httpx.AsyncClient, kind: str, cid: str, first: str, last: str
) -> None:
    response = await client.post(
        f"/{kind}/{cid}/runs", data={"message": "a b c", "stream": "false", "background": "true"}
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "PENDING"
    assert set(body) == {"run_id", "session_id", "status"}
    run_id = body["run_id"]
    for _ in range(500):
        run = (await client.get(f"/{kind}/{cid}/runs/{run_id}")).json()
        if run["status"] not in ("PENDING", "RUNNING"):
            break
        import asyncio

        await asyncio.sleep(0.02)
    assert run["status"] == "COMPLETED"
    frames = events_only(await _replay(client, kind, cid, run_id))
    check_sequence(frames, first, last)


async def _replay(client: httpx.AsyncClient, kind: str, cid: str, run_id: str) -> list:
    async with client.stream("GET", f"/{kind}/{cid}/runs/{run_id}/resume") as response:
        assert response.status_code == 200
        return await collect(response)


async def test_team_members_carry_member_fields(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/teams/team/runs", data={"message": "x"}) as response:
        frames = await collect(response)
    members = [f.payload for f in frames if "member_id" in f.payload]
    assert {p["member_id"] for p in members} == {"m1", "m2"}
    assert all(p["member_run_id"] and p["team_id"] == "team" for p in members)
    member_done = [f for f in frames if f.event == "RunCompleted"]
    assert [f.payload["content"] for f in member_done] == ["one: x", "two: x"]
    assert frames[-1].payload["content"] == "one: x\ntwo: x"


async def test_parallel_team_indices_stay_contiguous(client: httpx.AsyncClient) -> None:
    async with client.stream(
        "POST", "/teams/parallel-team/runs", data={"message": "a b c d e f"}
    ) as response:
        frames = await collect(response)
    check_sequence(frames, "TeamRunStarted", "TeamRunCompleted")
    order = [f.payload.get("member_id") for f in frames if f.event == "RunContent"]
    assert sorted(set(order)) == ["p1", "p2"]


async def test_workflow_steps(client: httpx.AsyncClient) -> None:
    async with client.stream(
        "POST", "/workflows/flow/runs", data={"message": "hi you"}
    ) as response:
        frames = await collect(response)
    steps = [(f.event, f.payload["step_id"]) for f in frames if f.event.startswith("Step")]
    assert steps == [
        ("StepStarted", "draft"),
        ("StepCompleted", "draft"),
        ("StepStarted", "_shout"),
        ("StepCompleted", "_shout"),
    ]
    assert frames[-1].payload["content"] == "HI YOU"


async def test_tool_call_events(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/agents/tools/runs", data={"message": "hey"}) as response:
        frames = await collect(response)
    assert [f.event for f in frames] == [
        "RunStarted",
        "ToolCallStarted",
        "ToolCallCompleted",
        "RunContent",
        "RunCompleted",
    ]
    assert frames[2].payload["result"] == "HEY"


async def test_user_code_exception_ends_with_run_error(client: httpx.AsyncClient) -> None:
    async with client.stream(
        "POST", "/agents/fails/runs", data={"message": "a b c d e", "background": "true"}
    ) as response:
        frames = await collect(response)
    check_sequence(frames, "RunStarted", "RunError")
    assert [f.event for f in frames].count("RunContent") == 3
    assert "the tool broke" in frames[-1].payload["error"]
    run = (await client.get(f"/agents/fails/runs/{frames[0].payload['run_id']}")).json()
    assert run["status"] == "ERROR"
    assert "the tool broke" in run["error"]


async def test_list_runs_newest_first_with_filters(client: httpx.AsyncClient) -> None:
    ids = []
    for i in range(3):
        r = await client.post(
            "/agents/echo/runs", data={"message": "x", "stream": "false", "session_id": f"s{i % 2}"}
        )
        ids.append(r.json()["run_id"])
    runs = (await client.get("/agents/echo/runs")).json()
    assert [r["run_id"] for r in runs] == ids[::-1]
    s0 = (await client.get("/agents/echo/runs", params={"session_id": "s0"})).json()
    assert [r["run_id"] for r in s0] == [ids[2], ids[0]]
    assert len((await client.get("/agents/echo/runs", params={"limit": 1})).json()) == 1
    assert (await client.get("/agents/echo/runs", params={"status": "running"})).json() == []
    assert len((await client.get("/agents/echo/runs", params={"status": "COMPLETED"})).json()) == 3


async def test_catalogue_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json()["status"] == "running"
    agents = (await client.get("/agents")).json()
    assert {a["id"] for a in agents} == {"echo", "fails", "tools", "durable", "tenacious"}
    assert {t["id"] for t in (await client.get("/teams")).json()} == {"team", "parallel-team"}
    assert [w["id"] for w in (await client.get("/workflows")).json()] == ["flow"]
    config = (await client.get("/config")).json()
    assert {a["id"] for a in config["agents"]} == {"echo", "fails", "tools", "durable", "tenacious"}
