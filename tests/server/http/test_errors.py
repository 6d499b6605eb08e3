"""Bad input gets a clear 4xx JSON error and the server keeps serving; security key; cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from agentos import AgentOS, Settings
from tests import apps
from tests.sse import collect, frames


@pytest.fixture
async def ended_run(client: httpx.AsyncClient) -> dict:
    r = await client.post("/agents/echo/runs", data={"message": "a b c", "stream": "false"})
    return dict(r.json())


def bad_requests(run: dict) -> list[tuple[str, str, str, dict, int, str]]:
    rid, sid = run["run_id"], run["session_id"]
    last = run["event_count"] - 1
    return [
        (
            "unknown agent",
            "POST",
            "/agents/nope/runs",
            {"data": {"message": "x"}},
            404,
            "component_not_found",
        ),
        ("unknown kind", "POST", "/robots/echo/runs", {"data": {"message": "x"}}, 404, "not_found"),
        ("unknown run", "GET", "/agents/echo/runs/nope", {}, 404, "run_not_found"),
        ("unknown run resume", "GET", "/agents/echo/runs/nope/resume", {}, 404, "run_not_found"),
        ("run of another agent", "GET", f"/agents/tools/runs/{rid}", {}, 404, "run_not_found"),
        ("run of another kind", "GET", f"/teams/team/runs/{rid}/resume", {}, 404, "run_not_found"),
        (
            "cursor text",
            "GET",
            f"/agents/echo/runs/{rid}/resume",
            {"params": {"last_event_index": "abc"}},
            422,
            "invalid_cursor",
        ),
        (
            "cursor -5",
            "GET",
            f"/agents/echo/runs/{rid}/resume",
            {"params": {"last_event_index": "-5"}},
            422,
            "invalid_cursor",
        ),
        (
            "cursor beyond end",
            "GET",
            f"/agents/echo/runs/{rid}/resume",
            {"params": {"last_event_index": str(last + 1)}},
            422,
            "invalid_cursor",
        ),
        (
            "header cursor text",
            "GET",
            f"/agents/echo/runs/{rid}/resume",
            {"headers": {"Last-Event-ID": "x1"}},
            422,
            "invalid_cursor",
        ),
        (
            "post cursor beyond end",
            "POST",
            f"/agents/echo/runs/{rid}/resume",
            {"json": {"last_event_index": 99}},
            422,
            "invalid_cursor",
        ),
        (
            "wrong session_id",
            "GET",
            f"/agents/echo/runs/{rid}/resume",
            {"params": {"session_id": sid + "x"}},
            404,
            "run_not_found",
        ),
        (
            "wrong session_id post",
            "POST",
            f"/agents/echo/runs/{rid}/resume",
            {"data": {"session_id": "other"}},
            404,
            "run_not_found",
        ),
        (
            "missing message",
            "POST",
            "/agents/echo/runs",
            {"data": {"stream": "false"}},
            422,
            "invalid_request",
        ),
        (
            "empty message",
            "POST",
            "/agents/echo/runs",
            {"json": {"message": "  "}},
            422,
            "invalid_request",
        ),
        (
            "message not a string",
            "POST",
            "/agents/echo/runs",
            {"json": {"message": 5}},
            422,
            "invalid_request",
        ),
        (
            "malformed JSON",
            "POST",
            "/agents/echo/runs",
            {"content": b'{"message": ', "headers": {"content-type": "application/json"}},
            422,
            "invalid_request",
        ),
        (
            "JSON not an object",
            "POST",
            "/agents/echo/runs",
            {"json": ["message"]},
            422,
            "invalid_request",
        ),
        (
            "bad stream flag",
            "POST",
            "/agents/echo/runs",
            {"data": {"message": "x", "stream": "maybe"}},
            422,
            "invalid_request",
        ),
        (
            "unsupported content type",
            "POST",
            "/agents/echo/runs",
            {"content": b"message=x", "headers": {"content-type": "text/plain"}},
            422,
            "invalid_request",
        ),
        (
            "oversized body",
            "POST",
            "/agents/echo/runs",
            {"json": {"message": "x" * (11 * 1024 * 1024)}},
            413,
            "body_too_large",
        ),
        (
            "run_id reuse",
            "POST",
            "/agents/echo/runs",
            {"data": {"message": "x", "run_id": rid}},
            409,
            "run_exists",
        ),
        (
            "run_id twice",
            "POST",
            "/agents/echo/runs?run_id=a1",
            {"data": {"message": "x", "run_id": "b2"}},
            422,
            "invalid_request",
        ),
        (
            "bad list status",
            "GET",
            "/agents/echo/runs",
            {"params": {"status": "DONE"}},
            422,
            "invalid_request",
        ),
        (
            "bad list limit",
            "GET",
            "/agents/echo/runs",
            {"params": {"limit": "0"}},
            422,
            "invalid_request",
        ),
        ("unknown run cancel", "POST", "/agents/echo/runs/nope/cancel", {}, 404, "run_not_found"),
        ("wrong method", "DELETE", "/agents/echo/runs", {}, 405, "method_not_allowed"),
    ]


async def test_bad_input_table(client: httpx.AsyncClient, ended_run: dict) -> None:
    for name, method, url, kwargs, status, code in bad_requests(ended_run):
        response = await client.request(method, url, **kwargs)
        assert response.status_code == status, (name, response.status_code, response.text[:200])
        body = response.json()
        assert body["code"] == code, (name, body)
        assert isinstance(body["detail"], str) and body["detail"], name
        # ... and the server keeps serving
        assert (await client.get("/health")).status_code == 200, name
    ok = await client.post("/agents/echo/runs", data={"message": "still here", "stream": "false"})
    assert ok.json()["content"] == "still here"


async def test_ids_that_cannot_go_in_a_url_or_header_are_422_before_the_run_starts(
    client: httpx.AsyncClient,
) -> None:
    # run_id and session_id come back in X-Run-Id, X-Session-Id and Location: a 500 there came
    # after the run had started.
    for field, value in [
        ("run_id", "运行"),
        ("run_id", "a/b"),
        ("run_id", "a\r\nX-Evil: 1"),
        ("session_id", "会话"),
        ("session_id", "s 1"),
    ]:
        for stream in ("true", "false"):
            response = await client.post(
                "/agents/echo/runs",
                json={"message": "x", "stream": stream, "background": "true", field: value},
            )
            assert response.status_code == 422, (field, value, response.text[:200])
            assert response.json()["code"] == "invalid_request"
    assert (await client.get("/agents/echo/runs")).json() == []  # no run was started


async def test_deeply_nested_json_body_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/agents/echo/runs", content="[" * 100_000, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


async def test_chunked_oversized_body_without_content_length(client: httpx.AsyncClient) -> None:
    async def body():
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    response = await client.post(
        "/agents/echo/runs", content=body(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"


async def test_multipart_form_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/agents/echo/runs",
        data={"message": "multi part", "stream": "false"},
        files={"unused": b"x"},
    )
    assert response.status_code == 200
    assert response.json()["content"] == "multi part"


async def test_client_run_id_from_query_and_header(client: httpx.AsyncClient) -> None:
    r1 = await client.post("/agents/echo/runs?run_id=q-1", data={"message": "x", "stream": "false"})
    assert r1.json()["run_id"] == "q-1"
    r2 = await client.post(
        "/agents/echo/runs", data={"message": "x", "stream": "false"}, headers={"X-Run-Id": "h-1"}
    )
    assert r2.json()["run_id"] == "h-1"
    assert r2.headers["location"] == "/agents/echo/runs/h-1"


async def test_inline_stream_disconnect_cancels_the_run(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/agents/echo/runs", data={"message": apps.WORDS}) as r:
        run_id = r.headers["x-run-id"]
        async for frame in frames(r):
            if frame.event == "RunContent":
                break
    for _ in range(300):
        run = (await client.get(f"/agents/echo/runs/{run_id}")).json()
        if run["status"] != "RUNNING":
            break
        await asyncio.sleep(0.02)
    assert run["status"] == "CANCELLED"
    async with client.stream("GET", f"/agents/echo/runs/{run_id}/resume") as r:
        got = await collect(r)
    assert got[-1].event == "RunCancelled"
    assert [f.event for f in got].count("RunCancelled") == 1


async def test_background_stream_disconnect_does_not_cancel(client: httpx.AsyncClient) -> None:
    async with client.stream(
        "POST", "/agents/echo/runs", data={"message": apps.WORDS, "background": "true"}
    ) as r:
        run_id = r.headers["x-run-id"]
        async for frame in frames(r):
            if frame.event == "RunContent":
                break
    for _ in range(500):
        run = (await client.get(f"/agents/echo/runs/{run_id}")).json()
        if run["status"] != "RUNNING":
            break
        await asyncio.sleep(0.02)
    assert run["status"] == "COMPLETED"


async def test_cancel_background_run(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/agents/echo/runs", data={"message": apps.WORDS, "background": "true", "stream": "false"}
    )
    run_id = r.json()["run_id"]
    async with client.stream("GET", f"/agents/echo/runs/{run_id}/resume") as stream:
        follow = asyncio.create_task(collect(stream))
        await asyncio.sleep(0.05)
        cancelled = await client.post(f"/agents/echo/runs/{run_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "CANCELLED"
        got = await asyncio.wait_for(follow, 10)
    assert got[-1].event == "RunCancelled"
    assert sum(f.event in ("RunCompleted", "RunError", "RunCancelled") for f in got) == 1
    again = await client.post(f"/agents/echo/runs/{run_id}/cancel")
    assert again.json()["status"] == "CANCELLED"
    done = await client.post("/agents/echo/runs", data={"message": "x", "stream": "false"})
    left = await client.post(f"/agents/echo/runs/{done.json()['run_id']}/cancel")
    assert left.json()["status"] == "COMPLETED"


async def test_security_key(serve: Callable[[AgentOS], str], settings: Settings) -> None:
    url = serve(apps.build(settings.replace(security_key="s3cret")))
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).status_code == 200
        missing = await client.get("/agents")
        assert missing.status_code == 401 and missing.json()["code"] == "not_authenticated"
        wrong = await client.get("/agents", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json()["code"] == "not_authorized"
        auth = {"Authorization": "Bearer s3cret"}
        assert (await client.get("/agents", headers=auth)).status_code == 200
        r = await client.post(
            "/agents/echo/runs", data={"message": "x", "stream": "false"}, headers=auth
        )
        assert r.status_code == 200
        assert (
            await client.get(f"/agents/echo/runs/{r.json()['run_id']}/resume")
        ).status_code == 401


async def test_limits_on_runs_queue_and_streams(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    limits = settings.replace(max_active_runs=2, max_queued_runs=1, max_streams=1, demo_delay=0.2)
    url = serve(apps.build(limits))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        form = {"message": apps.WORDS, "background": "true", "stream": "false"}  # ~4 s each
        ids = [
            (await client.post("/agents/echo/runs", data=form)).json()["run_id"] for _ in range(2)
        ]
        third = await client.post("/agents/echo/runs", data=form)
        assert third.status_code == 202 and third.json()["status"] == "QUEUED"
        fourth = await client.post("/agents/echo/runs", data=form)
        assert fourth.status_code == 429 and fourth.json()["code"] == "queue_full"
        assert fourth.headers["retry-after"] == str(limits.http.retry_after)
        async with client.stream("GET", f"/agents/echo/runs/{ids[0]}/resume") as first:
            # keep the reader: a dropped async generator would close the response when collected
            reader = frames(first)
            assert (await anext(reader)).event == "catch_up"
            second = await client.get(f"/agents/echo/runs/{ids[1]}/resume")
            assert second.status_code == 503 and second.json()["code"] == "overloaded"
        for _ in range(250):  # the server notices the disconnect shortly after
            if (await client.get("/health")).json()["open_streams"] == 0:
                break
            await asyncio.sleep(0.02)
        assert (await client.get("/health")).json()["open_streams"] == 0


async def test_a_streamed_create_over_the_stream_limit_starts_no_run(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    url = serve(apps.build(settings.replace(max_streams=1, demo_delay=0.2)))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        form = {"message": apps.WORDS, "background": "true", "stream": "false"}
        run_id = (await client.post("/agents/echo/runs", data=form)).json()["run_id"]
        async with client.stream("GET", f"/agents/echo/runs/{run_id}/resume") as held:
            reader = frames(held)
            assert (await anext(reader)).event == "catch_up"
            for background in ("true", "false"):
                r = await client.post(
                    "/agents/echo/runs", data={"message": "x", "background": background}
                )
                assert r.status_code == 503 and r.json()["code"] == "overloaded"
            runs = (await client.get("/agents/echo/runs")).json()
            assert [r["run_id"] for r in runs] == [run_id]  # the 503s started nothing


# Python's int() takes these (underscores, any Unicode digit, signs, white space); a cursor or a
# number in a request is an optional minus and ASCII digits, nothing else.
NOT_INTEGERS = [
    "0_1",
    "\u0661",
    "\uff11",
    "+1",
    " 1",
    "1 ",
    "1\n",
    "\u00b2",
    "1" * 30,
    "1.0",
    "0x1",
]


async def test_integers_in_requests_are_ascii_digits_only(
    client: httpx.AsyncClient, ended_run: dict
) -> None:
    resume = f"/agents/echo/runs/{ended_run['run_id']}/resume"
    cases: list[tuple[str, str, dict, str]] = []
    for text in NOT_INTEGERS:
        cases += [
            ("GET", resume, {"params": {"last_event_index": text}}, "invalid_cursor"),
            ("POST", resume, {"data": {"last_event_index": text}}, "invalid_cursor"),
            ("POST", resume, {"json": {"last_event_index": text}}, "invalid_cursor"),
            ("GET", "/agents/echo/runs", {"params": {"limit": text}}, "invalid_request"),
        ]
        if text.isascii() and text.strip() == text:  # what a header can carry
            cases.append(("GET", resume, {"headers": {"Last-Event-ID": text}}, "invalid_cursor"))
    for value in (True, 1.0, [1], {"a": 1}):
        cases.append(("POST", resume, {"json": {"last_event_index": value}}, "invalid_cursor"))
    for method, url, kwargs, code in cases:
        response = await client.request(method, url, **kwargs)
        assert response.status_code == 422, (method, kwargs, response.status_code)
        assert response.json()["code"] == code, (method, kwargs, response.text)
    # What is an integer still is one: a JSON number, or ASCII digits with an optional minus.
    for kwargs in (
        {"params": {"last_event_index": "1"}},
        {"headers": {"Last-Event-ID": "1"}},
        {"json": {"last_event_index": 1}},
        {"data": {"last_event_index": "-1"}},
    ):
        method = "POST" if "json" in kwargs or "data" in kwargs else "GET"
        response = await client.request(method, resume, **kwargs)
        assert response.status_code == 200, (kwargs, response.text)
    response = await client.get("/agents/echo/runs", params={"limit": "007"})
    assert response.status_code == 200


async def test_a_trailing_slash_is_404_not_a_redirect_to_the_host_header(
    client: httpx.AsyncClient, ended_run: dict
) -> None:
    # A redirect built from the Host header sends a client wherever the request said it was.
    rid = ended_run["run_id"]
    paths = ["/agents/", "/agents/echo/runs/", f"/agents/echo/runs/{rid}/", "/health/", "/config/"]
    for path in paths:
        for host in (None, "evil.example", "evil.example:443"):
            headers = {"Host": host} if host else {}
            response = await client.get(path, headers=headers)
            assert response.status_code == 404, (path, host, response.status_code)
            assert "location" not in response.headers, (path, host)
            assert response.json()["code"] == "not_found"
    assert (await client.get("/agents")).status_code == 200
