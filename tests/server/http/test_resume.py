"""Resume: catch_up/subscribed/replay, buffer expiry, windows, random disconnects, over real uvicorn."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import httpx
import pytest

from agentos import AgentOS, Settings
from tests import apps
from tests.sse import Frame, collect, events_only, frames

COMPONENTS = [("agents", "echo"), ("teams", "team"), ("workflows", "flow")]


async def start_background(
    client: httpx.AsyncClient, kind: str, cid: str, message: str = apps.WORDS
) -> str:
    r = await client.post(
        f"/{kind}/{cid}/runs", data={"message": message, "background": "true", "stream": "false"}
    )
    assert r.status_code == 202
    return str(r.json()["run_id"])


async def resume(
    client: httpx.AsyncClient,
    kind: str,
    cid: str,
    run_id: str,
    cursor: int | None = None,
    **kw: object,
) -> list[Frame]:
    params = {} if cursor is None else {"last_event_index": cursor}
    async with client.stream(
        "GET", f"/{kind}/{cid}/runs/{run_id}/resume", params=params, **kw
    ) as response:  # type: ignore[arg-type]
        assert response.status_code == 200, response.status_code
        return await collect(response)


async def wait_ended(client: httpx.AsyncClient, kind: str, cid: str, run_id: str) -> dict:
    for _ in range(1000):
        run = (await client.get(f"/{kind}/{cid}/runs/{run_id}")).json()
        if run["status"] not in ("PENDING", "RUNNING"):
            return dict(run)
        await asyncio.sleep(0.02)
    raise AssertionError("run did not end")


async def test_resume_running_run_catch_up_then_subscribed(client: httpx.AsyncClient) -> None:
    run_id = await start_background(client, "agents", "echo")
    await asyncio.sleep(0.08)
    got = await resume(client, "agents", "echo", run_id, 1)
    meta = [f for f in got if f.is_meta]
    assert [m.event for m in meta] == ["catch_up", "subscribed"]
    catch_up = meta[0].payload
    assert catch_up["status"] == "RUNNING" and catch_up["run_id"] == run_id
    assert catch_up["missed_events"] == catch_up["current_event_count"] - 2
    assert catch_up["current_event_count"] >= 2
    # missed events come before `subscribed`, live ones after it; events committed between the
    # catch_up answer and the first read are missed ones too, so `subscribed` marks the boundary
    position = got.index(meta[1])
    live_from = meta[1].payload["current_event_count"]
    assert live_from >= catch_up["current_event_count"]
    assert [int(f.id) for f in got[1:position]] == list(range(2, live_from))
    events = events_only(got)
    assert [int(f.id) for f in events] == list(range(2, 2 + len(events)))
    assert events[-1].event == "RunCompleted"


async def test_resume_ended_run_replays_from_buffer(client: httpx.AsyncClient) -> None:
    run_id = await start_background(client, "agents", "echo", "a b c")
    run = await wait_ended(client, "agents", "echo", run_id)
    got = await resume(client, "agents", "echo", run_id, 2)
    assert got[0].event == "replay"
    assert got[0].payload == {
        "event": "replay",
        "run_id": run_id,
        "status": "COMPLETED",
        "total_events": run["event_count"],
        "source": "buffer",
    }
    assert [int(f.id) for f in got[1:]] == list(range(3, run["event_count"]))


async def test_last_event_id_header_and_explicit_cursor_wins(client: httpx.AsyncClient) -> None:
    run_id = await start_background(client, "agents", "echo", "a b c")
    await wait_ended(client, "agents", "echo", run_id)
    by_header = await resume(client, "agents", "echo", run_id, headers={"Last-Event-ID": "3"})
    assert [int(f.id) for f in events_only(by_header)] == [4]
    both = await resume(client, "agents", "echo", run_id, 1, headers={"Last-Event-ID": "3"})
    assert [int(f.id) for f in events_only(both)] == [2, 3, 4]
    async with client.stream(
        "POST", f"/agents/echo/runs/{run_id}/resume", data={"last_event_index": "2"}
    ) as r:
        assert [int(f.id) for f in events_only(await collect(r))] == [3, 4]


async def test_cursor_at_the_end_of_an_ended_run_is_204(client: httpx.AsyncClient) -> None:
    run_id = await start_background(client, "agents", "echo", "a b c")
    run = await wait_ended(client, "agents", "echo", run_id)
    last = run["event_count"] - 1
    assert (
        await client.get(f"/agents/echo/runs/{run_id}/resume", params={"last_event_index": last})
    ).status_code == 204
    assert (
        await client.post(
            f"/agents/echo/runs/{run_id}/resume", data={"last_event_index": str(last)}
        )
    ).status_code == 204


async def test_replay_from_database_after_buffer_expired(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    agent_os = apps.build(settings.replace(buffer_ttl=0.3))
    url = serve(agent_os)
    async with httpx.AsyncClient(base_url=url) as client:
        run_id = await start_background(client, "teams", "team", "a b c")
        await wait_ended(client, "teams", "team", run_id)
        from_buffer = await resume(client, "teams", "team", run_id)
        assert from_buffer[0].payload["source"] == "buffer"
        await asyncio.sleep(0.6)
        assert agent_os.manager.buffers.get(run_id) is None
        from_db = await resume(client, "teams", "team", run_id)
        assert from_db[0].payload["source"] == "database"
        assert [(f.id, f.event, f.data) for f in from_db[1:]] == [
            (f.id, f.event, f.data) for f in from_buffer[1:]
        ]
        partial = await resume(client, "teams", "team", run_id, 4)
        assert [f.data for f in partial[1:]] == [f.data for f in from_buffer[6:]]


async def test_cursor_below_buffer_window_is_filled_from_database(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    agent_os = apps.build(settings.replace(buffer_max_events_per_run=4))
    url = serve(agent_os)
    async with httpx.AsyncClient(base_url=url) as client:
        async with client.stream(
            "POST", "/agents/echo/runs", data={"message": apps.WORDS, "background": "true"}
        ) as r:
            run_id = r.headers["x-run-id"]
            live = await collect(r)
        buf = agent_os.manager.buffers.get(run_id)
        assert buf is not None and buf.first_index > 10  # most events only in the database now
        # while running: cursor far below the window
        got = await resume(client, "agents", "echo", run_id, 0)
        assert [f.data for f in events_only(got)] == [f.data for f in live[1:]]
        assert got[0].payload["source"] == "database"

        # a live run: start it, let the window move past the cursor, then resume
        run2 = await start_background(client, "agents", "echo")
        await asyncio.sleep(0.12)
        got2 = await resume(client, "agents", "echo", run2, 0)
        assert got2[0].event == "catch_up"
        events = events_only(got2)
        assert [int(f.id) for f in events] == list(range(1, 1 + len(events)))
        assert events[-1].event == "RunCompleted"


@pytest.mark.parametrize(("kind", "cid"), COMPONENTS)
async def test_random_disconnects_reassemble_the_exact_run(
    client: httpx.AsyncClient, kind: str, cid: str
) -> None:
    rng = random.Random(f"{kind}-disconnects")
    reference = await _uninterrupted(client, kind, cid)
    for _ in range(8):
        seen = await _follow_with_drops(client, kind, cid, rng)
        run_id = seen[0].payload["run_id"]
        assert [int(f.id) for f in seen] == list(range(len(seen)))
        full = events_only(await resume(client, kind, cid, run_id))
        assert [f.data for f in seen] == [f.data for f in full]
        assert [_normalise(f) for f in seen] == [_normalise(f) for f in reference]


async def _uninterrupted(client: httpx.AsyncClient, kind: str, cid: str) -> list[Frame]:
    async with client.stream("POST", f"/{kind}/{cid}/runs", data={"message": apps.WORDS}) as r:
        return await collect(r)


def _normalise(frame: Frame) -> tuple:
    payload = {
        k: v
        for k, v in frame.payload.items()
        # Ids and times of the run (claimed_at: when the attempt began) differ between runs.
        if k not in ("run_id", "session_id", "created_at", "member_run_id", "claimed_at")
    }
    return frame.id, frame.event, sorted(payload.items(), key=lambda kv: kv[0]).__repr__()


async def _follow_with_drops(
    client: httpx.AsyncClient, kind: str, cid: str, rng: random.Random
) -> list[Frame]:
    seen: list[Frame] = []
    async with client.stream(
        "POST", f"/{kind}/{cid}/runs", data={"message": apps.WORDS, "background": "true"}
    ) as r:
        run_id = r.headers["x-run-id"]
        budget = rng.randint(0, 12)
        async for frame in frames(r):
            seen.append(frame)
            budget -= 1
            if budget < 0:
                break
    for _ in range(100):
        if (
            seen
            and seen[-1].event.endswith(("Completed", "Error", "Cancelled"))
            and seen[-1].payload.get("member_id") is None
            and "step_id" not in seen[-1].payload
        ):
            break
        cursor = int(seen[-1].id) if seen else -1
        url = f"/{kind}/{cid}/runs/{run_id}/resume"
        async with client.stream("GET", url, headers={"Last-Event-ID": str(cursor)}) as r:
            if r.status_code == 204:
                break
            assert r.status_code == 200
            budget = rng.randint(0, 12)
            async for frame in frames(r):
                if frame.is_meta:
                    assert frame.event in ("catch_up", "subscribed", "replay")
                    continue
                seen.append(frame)
                budget -= 1
                if budget < 0:
                    break
    return seen


async def test_two_hundred_concurrent_streams_with_random_drops(client: httpx.AsyncClient) -> None:
    rng = random.Random(200)

    limits = httpx.Limits(max_connections=300)
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=60, limits=limits) as many:
        results = await asyncio.gather(
            *(_one_client(many, random.Random(rng.random())) for _ in range(200))
        )
    assert len({run_id for run_id, _ in results}) == 200
    for run_id, seen in results:
        assert [int(f.id) for f in seen] == list(range(len(seen))), run_id
        assert seen[-1].event == "RunCompleted"
        assert seen[-1].payload["content"] == apps.WORDS
        assert len(seen) == 22  # RunStarted, 20 words, RunCompleted


async def _one_client(client: httpx.AsyncClient, rng: random.Random) -> tuple[str, list[Frame]]:
    seen = await _follow_with_drops(client, "agents", "echo", rng)
    return seen[0].payload["run_id"], seen
