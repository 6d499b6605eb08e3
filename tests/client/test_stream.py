"""The client's stream contract against scripted answers (``httpx.MockTransport``): the parts a
real server should never do, so only a fake one can show the client catches them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import agentos_client
import httpx
import pytest
from agentos_client import (
    APIStatusError,
    AsyncClient,
    MetaEvent,
    RunEvent,
    RunFailed,
    RunStatus,
    StreamError,
)


def frame(index: int | None, name: str, **data: Any) -> str:
    body = {"event": name, "run_id": "r1", **data}
    if index is None:
        return f"event: {name}\ndata: {json.dumps(body)}\n\n"
    body["event_index"] = index
    return f"id: {index}\nevent: {name}\ndata: {json.dumps(body)}\n\n"


def sse(*frames: str, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status, headers={"content-type": "text/event-stream"}, content="".join(frames).encode()
    )


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> AsyncClient:
    return AsyncClient(
        "http://agentos.test",
        transport=httpx.MockTransport(handler),
        backoff_initial=0.0,
        backoff_max=0.0,
        max_reconnects=3,
    )


def events_of(client: AsyncClient, **kw: Any) -> list[Any]:
    async def main() -> list[Any]:
        async with client:
            stream = client.resume("agents", "echo", "r1", **kw)
            return [item async for item in stream]

    return asyncio.run(main())


def test_all_names_are_exported_sorted() -> None:
    public = {
        name
        for name in dir(agentos_client)
        if not name.startswith("_") and name not in {"annotations"}
    }
    assert agentos_client.__all__ == sorted(agentos_client.__all__)
    assert set(agentos_client.__all__) == public


def test_duplicates_from_an_overlapping_reconnect_are_dropped() -> None:
    answers = [
        sse(frame(0, "RunStarted"), frame(1, "RunContent", content="a")),
        # The server resent index 1 (say, an inclusive cursor): it must not reach the caller.
        sse(frame(1, "RunContent", content="a"), frame(2, "RunCompleted", content="a")),
    ]
    cursors: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursors.append(request.url.params.get("last_event_index"))
        return answers.pop(0)

    events = events_of(client_for(handler))
    assert [e.event_index for e in events] == [0, 1, 2]
    assert cursors == ["-1", "1"]


def test_a_skipped_index_is_an_error_not_a_silent_gap() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return sse(frame(0, "RunStarted"), frame(2, "RunContent"))

    with pytest.raises(StreamError) as caught:
        events_of(client_for(handler))
    assert caught.value.code == "index_gap"


def test_error_meta_frame_ends_the_stream() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return sse(frame(None, "error", error="events expired", code="gone"))

    with pytest.raises(StreamError) as caught:
        events_of(client_for(handler))
    assert caught.value.code == "gone"
    assert "expired" in str(caught.value)


def test_a_frame_nested_too_deep_is_a_bad_frame() -> None:
    # json.loads raises RecursionError, not ValueError, on this.
    def handler(request: httpx.Request) -> httpx.Response:
        return sse(f"id: 0\nevent: RunStarted\ndata: {'[' * 60_000}\n\n")

    with pytest.raises(StreamError) as caught:
        events_of(client_for(handler))
    assert caught.value.code == "bad_frame"


def test_meta_events_only_on_request_and_member_completion_is_not_terminal() -> None:
    body = (
        frame(None, "catch_up", status="RUNNING", missed_events=2, current_event_count=2),
        frame(0, "TeamRunStarted"),
        frame(1, "RunCompleted", member_id="m1"),
        frame(None, "subscribed", status="RUNNING", current_event_count=2),
        frame(2, "TeamRunCompleted", content="done"),
    )

    async def main(meta: bool) -> list[Any]:
        async with client_for(lambda request: sse(*body)) as client:
            stream = client.resume("teams", "t", "r1", meta=meta)
            return [item async for item in stream]

    plain = asyncio.run(main(False))
    assert [type(i) for i in plain] == [RunEvent] * 3
    assert [i.terminal for i in plain] == [False, False, True]
    with_meta = asyncio.run(main(True))
    assert [i.event for i in with_meta] == [
        "catch_up",
        "TeamRunStarted",
        "RunCompleted",
        "subscribed",
        "TeamRunCompleted",
    ]
    assert isinstance(with_meta[0], MetaEvent)
    assert with_meta[0].status is RunStatus.RUNNING


def test_stream_closed_early_is_resumed_and_204_ends_it() -> None:
    answers = [sse(frame(0, "RunStarted")), httpx.Response(204)]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    assert [e.event_index for e in events_of(client_for(handler))] == [0]


def test_4xx_is_final_and_carries_the_error_body() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            422, json={"detail": "cursor beyond the last event", "code": "cursor"}
        )

    with pytest.raises(APIStatusError) as caught:
        events_of(client_for(handler), last_event_index=99)
    assert (caught.value.status_code, caught.value.code) == (422, "cursor")
    assert calls == 1


def test_run_failed_carries_the_run_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {
            "message": "boom",
            "stream": False,
            "background": False,
        }
        return httpx.Response(
            200, json={"run_id": "r1", "session_id": "s1", "status": "ERROR", "error": "tool broke"}
        )

    async def main() -> None:
        async with client_for(handler) as client:
            await client.arun("agents", "echo", "boom")

    with pytest.raises(RunFailed) as caught:
        asyncio.run(main())
    assert caught.value.error == "tool broke"
    assert caught.value.run.status is RunStatus.ERROR


def test_security_key_is_a_bearer_header() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"run_id": "r1", "session_id": "s", "status": "COMPLETED"})

    async def main() -> None:
        async with AsyncClient(
            "http://agentos.test", "k3y", transport=httpx.MockTransport(handler)
        ) as client:
            await client.get_run("agents", "echo", "r1")

    asyncio.run(main())
    assert seen == ["Bearer k3y"]


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        AsyncClient("http://x", max_reconnects=-1)
    with pytest.raises(ValueError):
        AsyncClient("http://x", backoff_initial=2.0, backoff_max=1.0)
