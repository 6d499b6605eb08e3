"""Stream mechanics over a real socket: pings, slow subscribers, run timeouts."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from urllib.parse import urlencode

import httpx

from agentos import AgentOS, Settings
from tests import apps, sse
from tests.servers import ThreadServer
from tests.sse import collect, frames


async def test_first_comment_at_once_then_pings_when_idle(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    url = serve(apps.build(settings.replace(ping_interval=0.2, demo_delay=0.3)))
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream(
            "POST", "/agents/echo/runs", data={"message": "a b c", "background": "true"}
        ) as r:
            async for line in sse.lines(r):
                lines.append(line)
    assert lines[0] == ": ping"
    pings = [line for line in lines if line.startswith(":")]
    assert len(pings) >= 3, lines
    assert any(line.startswith("id: ") for line in lines)


async def test_slow_subscriber_blocks_neither_run_nor_others(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    # a tiny buffer window: the slow client's cursor falls behind it and is served from the database
    agent_os = apps.build(settings.replace(buffer_max_events_per_run=5, demo_delay=0.002))
    url = serve(agent_os)
    message = " ".join(f"word{i}" for i in range(300))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post(
            "/agents/echo/runs", data={"message": message, "background": "true", "stream": "false"}
        )
        run_id = r.json()["run_id"]
        async with client.stream("GET", f"/agents/echo/runs/{run_id}/resume") as slow:
            slow_frames = frames(slow)
            first = [await anext(slow_frames), await anext(slow_frames)]  # catch_up, event 0
            # the slow client stops reading; a fast one follows the whole run meanwhile
            async with client.stream("GET", f"/agents/echo/runs/{run_id}/resume") as fast:
                fast_frames = await collect(fast)
            run = (await client.get(f"/agents/echo/runs/{run_id}")).json()
            assert run["status"] == "COMPLETED"  # the run did not wait for the slow client
            buf = agent_os.manager.buffers.get(run_id)
            assert buf is not None and buf.first_index > 100
            rest = [f async for f in slow_frames]
    got = [f for f in first + rest if not f.is_meta]
    expected = [f for f in fast_frames if not f.is_meta]
    assert [f.data for f in got] == [f.data for f in expected]
    assert len(got) == 302


async def test_run_timeout_ends_with_error(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    url = serve(apps.build(settings.replace(run_timeout=0.3, demo_delay=0.1)))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("POST", "/agents/echo/runs", data={"message": apps.WORDS}) as r:
            got = await collect(r)
        assert got[-1].event == "RunError" and got[-1].payload["error"] == "timeout"
        run = (await client.get(f"/agents/echo/runs/{got[0].payload['run_id']}")).json()
        assert run["status"] == "ERROR"


async def test_many_subscribers_of_one_run_all_get_everything(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/teams/parallel-team/runs",
        data={"message": apps.WORDS, "background": "true", "stream": "false"},
    )
    run_id = r.json()["run_id"]

    async def follow() -> list[str]:
        async with client.stream("GET", f"/teams/parallel-team/runs/{run_id}/resume") as s:
            return [f.data for f in await collect(s) if not f.is_meta]

    results = await asyncio.gather(*(follow() for _ in range(20)))
    assert all(result == results[0] for result in results)
    assert len(results[0]) == 3 + 2 * 22  # TeamRunStarted/Content/Completed + two members


async def _until(check: Callable[[], bool], seconds: float) -> bool:
    for _ in range(int(seconds / 0.02)):
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


async def test_shutdown_ends_open_streams_after_the_grace_period(
    serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings
) -> None:
    """A stream of a run that goes on ends once the shutdown grace has passed (its client
    resumes elsewhere); the run itself is not touched by it."""
    agent_os = apps.build(settings.replace(demo_delay=0.5))
    server = serve_thread(agent_os)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        async with client.stream(
            "POST", "/agents/echo/runs", data={"message": apps.words(200), "background": "true"}
        ) as r:
            run_id = r.headers["x-run-id"]
            stream = frames(r)
            async for frame in stream:
                if frame.event == "RunStarted":
                    break
            began = asyncio.get_running_loop().time()
            server.call(lambda: agent_os._streams.shutdown(0.3))
            async for _ in stream:  # the stream ends: the loop ends
                pass
            took = asyncio.get_running_loop().time() - began
        assert 0.25 <= took < 5
        assert await _until(lambda: agent_os.manager.open_streams == 0, 5)
        run = (await client.get(f"/agents/echo/runs/{run_id}")).json()
        assert run["status"] == "RUNNING"


def test_a_stream_whose_client_stops_reading_ends_after_the_send_timeout(
    serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings
) -> None:
    """A client that stops reading holds a send until ``send_timeout``; then (at the next
    ping) the stream ends and gives its slot back, while the run goes on to its end."""
    agent_os = apps.build(settings.replace(demo_delay=0.0, ping_interval=0.2, send_timeout=0.3))
    server = serve_thread(agent_os)
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = urlencode({"message": apps.words(60_000), "background": "true"}).encode()
    sock.sendall(
        b"POST /agents/echo/runs HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        deadline = time.monotonic() + 20
        while agent_os.manager.open_streams == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agent_os.manager.open_streams == 1
        while agent_os.manager.open_streams and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agent_os.manager.open_streams == 0  # ended while the client still holds it
    finally:
        sock.close()
