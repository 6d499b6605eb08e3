"""The Python client against a real server (uvicorn in a subprocess) through a TCP proxy that
the tests cut, stall or turn into a 503 mid-stream.

The main property: whatever happens to the connection, a background stream yields exactly the
events of the run, index for index, each once, and ends at the terminal event.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentos_client import (
    APIStatusError,
    AsyncClient,
    Client,
    ClientClosed,
    MetaEvent,
    RunEvent,
    RunStatus,
    RunStream,
    TransportError,
    WaitTimeout,
)

from tests.apps import words
from tests.proxy import TCPProxy
from tests.servers import ROOT, ServerProcess

KINDS = [("agents", "echo"), ("teams", "echo-team"), ("workflows", "echo-workflow")]
MESSAGE = words(12)
LONG_MESSAGE = words(400, "x")
DELAY = 0.03
# Quick retries so a test spends its time on the stream, not on sleeping.
FAST: dict[str, Any] = {
    "timeout": 5.0,
    "read_timeout": 5.0,
    "max_reconnects": 10,
    "backoff_initial": 0.05,
    "backoff_max": 0.3,
}
# Keys that legitimately differ between two runs of the same input.
VOLATILE = {
    "run_id",
    "session_id",
    "created_at",
    "member_run_id",
    "step_run_id",
    "updated_at",
    # When the attempt was claimed (and queued, scheduled): the started event's timing.
    "claimed_at",
    "queued_at",
    "scheduled_at",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("server"), delay=DELAY) as srv:
        yield srv


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[TCPProxy]:
    with TCPProxy(server.port) as p:
        yield p


async def collect(
    stream: RunStream, on_event: Callable[[RunEvent], None] | None = None
) -> list[RunEvent]:
    events: list[RunEvent] = []
    async with stream:
        async for item in stream:
            assert isinstance(item, RunEvent), "meta events must stay hidden by default"
            events.append(item)
            if on_event is not None:
                on_event(item)
    return events


def assert_complete(events: list[RunEvent]) -> None:
    assert [e.event_index for e in events] == list(range(len(events)))
    assert events, "no events"
    assert events[-1].terminal, f"last event {events[-1].event} is not terminal"
    assert not any(e.terminal for e in events[:-1])


def normalized(events: list[RunEvent]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.data.items() if k not in VOLATILE} for e in events]


async def reference_run(url: str, kind: str, cid: str, message: str) -> list[RunEvent]:
    async with AsyncClient(url, **FAST) as direct:
        events = await collect(direct.arun(kind, cid, message, stream=True, background=True))
    assert_complete(events)
    return events


async def replay(url: str, kind: str, cid: str, run_id: str) -> list[RunEvent]:
    async with AsyncClient(url, **FAST) as direct:
        return await collect(direct.resume(kind, cid, run_id))


# -- the headline property --------------------------------------------------------------


@pytest.mark.parametrize(("kind", "cid"), KINDS)
def test_cuts_mid_stream_are_invisible(
    server: ServerProcess, proxy: TCPProxy, kind: str, cid: str
) -> None:
    async def main() -> None:
        reference = await reference_run(server.url, kind, cid, MESSAGE)
        n = len(reference)
        cut_after = {1, n // 3, 2 * n // 3}
        assert max(cut_after) < n - 1
        cuts: list[int] = []

        def cut(event: RunEvent) -> None:
            if event.event_index in cut_after:
                cuts.append(proxy.cut())

        async with AsyncClient(proxy.url, **FAST) as client:
            stream = client.arun(kind, cid, MESSAGE, stream=True, background=True)
            events = await collect(stream, cut)
        assert cuts == [1, 1, 1], "each cut must drop the one open stream"
        assert stream.reconnects >= 3
        assert_complete(events)
        assert stream.terminal_event == events[-1]
        # Index for index the same as an uninterrupted run of the same input ...
        assert normalized(events) == normalized(reference)
        # ... and byte for byte the events the server stored for this run.
        assert stream.run_id is not None
        stored = await replay(server.url, kind, cid, stream.run_id)
        assert [e.data for e in events] == [e.data for e in stored]

    asyncio.run(main())


def test_sync_client_survives_cuts(server: ServerProcess, proxy: TCPProxy) -> None:
    reference = asyncio.run(reference_run(server.url, "agents", "echo", MESSAGE))
    events: list[RunEvent] = []
    with Client(proxy.url, **FAST) as client:
        with client.run("agents", "echo", MESSAGE, stream=True, background=True) as stream:
            for item in stream:
                assert isinstance(item, RunEvent)
                events.append(item)
                if item.event_index in (2, 6):
                    assert proxy.cut() == 1
        assert stream.reconnects >= 2
    assert_complete(events)
    assert normalized(events) == normalized(reference)


# -- server restart -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["graceful", "crash"])
def test_server_restart_mid_run(tmp_path: Path, how: str) -> None:
    grace = {"AGENTOS_SHUTDOWN_GRACE": "0.5"}
    with ServerProcess(tmp_path, delay=0.05, env=grace) as srv, TCPProxy(srv.port) as proxy:

        def restart() -> None:
            # The client is cut off first, so it must find the rest on the new instance.
            proxy.cut()
            if how == "graceful":
                srv.stop()
            else:
                srv.kill()
            srv.start()

        async def main() -> tuple[list[RunEvent], RunStream]:
            settings = {**FAST, "max_reconnects": 60, "backoff_max": 0.5}
            async with AsyncClient(proxy.url, **settings) as client:
                stream = client.arun("agents", "echo", LONG_MESSAGE, stream=True, background=True)
                events: list[RunEvent] = []
                async with stream:
                    async for item in stream:
                        assert isinstance(item, RunEvent)
                        events.append(item)
                        if item.event_index == 3:
                            await asyncio.to_thread(restart)
                return events, stream

        events, stream = asyncio.run(main())
        assert_complete(events)
        assert stream.reconnects >= 1
        # Fewer events than an uninterrupted run: the run ended with the server instance.
        assert len(events) < len(LONG_MESSAGE.split()) + 2
        assert stream.run_id is not None
        stored = asyncio.run(replay(srv.url, "agents", "echo", stream.run_id))
        assert [e.data for e in events] == [e.data for e in stored]


# -- 503, timeouts, lost answers ----------------------------------------------------------


def test_503_then_recovery(server: ServerProcess, proxy: TCPProxy) -> None:
    async def main() -> None:
        reference = await reference_run(server.url, "agents", "echo", MESSAGE)
        loop = asyncio.get_running_loop()

        def outage(event: RunEvent) -> None:
            if event.event_index == 2:
                proxy.set_mode("503")
                assert proxy.cut() == 1
                loop.call_later(0.6, proxy.set_mode, "forward")

        async with AsyncClient(proxy.url, **FAST) as client:
            events = await collect(
                client.arun("agents", "echo", MESSAGE, stream=True, background=True), outage
            )
        assert proxy.answered_503 >= 2
        assert_complete(events)
        assert normalized(events) == normalized(reference)

    asyncio.run(main())


def test_503_on_create_is_retried_without_a_second_run(
    server: ServerProcess, proxy: TCPProxy
) -> None:
    async def main() -> None:
        proxy.set_mode("503")
        asyncio.get_running_loop().call_later(0.4, proxy.set_mode, "forward")
        async with AsyncClient(proxy.url, **FAST) as client:
            stream = client.arun(
                "agents", "echo", MESSAGE, stream=True, background=True, session_id="s-503"
            )
            events = await collect(stream)
            runs = await client.list_runs("agents", "echo", session_id="s-503")
        assert proxy.answered_503 >= 2
        assert_complete(events)
        assert [r.run_id for r in runs] == [stream.run_id]

    asyncio.run(main())


def test_persistent_503_gives_up_after_max_reconnects(
    server: ServerProcess, proxy: TCPProxy
) -> None:
    async def main() -> None:
        def outage(event: RunEvent) -> None:
            if event.event_index == 1:
                proxy.set_mode("503")
                proxy.cut()

        async with AsyncClient(proxy.url, **{**FAST, "max_reconnects": 3}) as client:
            stream = client.arun("agents", "echo", MESSAGE, stream=True, background=True)
            with pytest.raises(TransportError) as caught:
                await collect(stream, outage)
        assert caught.value.run_id == stream.run_id
        assert caught.value.last_event_index == 1
        assert proxy.answered_503 == 3

    asyncio.run(main())


def test_read_timeout_on_a_silent_stream_reconnects(server: ServerProcess, proxy: TCPProxy) -> None:
    async def main() -> None:
        def go_silent(event: RunEvent) -> None:
            if event.event_index == 2:
                proxy.stall()

        async with AsyncClient(proxy.url, **{**FAST, "read_timeout": 0.5}) as client:
            stream = client.arun("agents", "echo", MESSAGE, stream=True, background=True)
            events = await collect(stream, go_silent)
        assert stream.reconnects >= 1
        assert_complete(events)
        assert stream.run_id is not None
        stored = await replay(server.url, "agents", "echo", stream.run_id)
        assert [e.data for e in events] == [e.data for e in stored]

    asyncio.run(main())


def test_lost_create_answer_resumes_the_same_run(server: ServerProcess, proxy: TCPProxy) -> None:
    async def main() -> None:
        # The create reaches the server, its answer never comes back.
        proxy.set_mode("blackhole")
        asyncio.get_running_loop().call_later(0.3, proxy.set_mode, "forward")
        async with AsyncClient(proxy.url, **{**FAST, "read_timeout": 0.6}) as client:
            stream = client.arun(
                "agents", "echo", MESSAGE, stream=True, background=True, session_id="s-lost"
            )
            events = await collect(stream)
            runs = await client.list_runs("agents", "echo", session_id="s-lost")
        assert stream.reconnects >= 1
        assert_complete(events)
        assert [r.run_id for r in runs] == [stream.run_id]

    asyncio.run(main())


def test_unreachable_server_raises_transport_error(server: ServerProcess) -> None:
    async def main() -> None:
        with TCPProxy(server.port) as dead:
            dead.set_mode("refuse")
            async with AsyncClient(dead.url, **{**FAST, "max_reconnects": 2}) as client:
                with pytest.raises(TransportError):
                    await collect(client.arun("agents", "echo", "hi", stream=True, background=True))
                with pytest.raises(TransportError):
                    await client.get_run("agents", "echo", "nope")
            assert dead.connections == 3 + 1

    asyncio.run(main())


def test_inline_stream_is_not_resumed(server: ServerProcess, proxy: TCPProxy) -> None:
    async def main() -> None:
        async with AsyncClient(proxy.url, **FAST) as client:
            stream = client.arun("agents", "echo", LONG_MESSAGE, stream=True)
            with pytest.raises(TransportError):
                await collect(stream, lambda e: e.event_index == 2 and proxy.cut())
            assert stream.reconnects == 0
            assert stream.run_id is not None
            # The server cancels an inline run whose client went away.
            run = await client.wait("agents", "echo", stream.run_id, timeout=20)
        assert run.status is RunStatus.CANCELLED

    asyncio.run(main())


def test_wait_timeout(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, **FAST) as client:
            run = await client.arun("agents", "echo", LONG_MESSAGE, background=True)
            with pytest.raises(WaitTimeout) as caught:
                await client.wait("agents", "echo", run.run_id, timeout=0.2)
            assert caught.value.run_id == run.run_id
            await client.cancel("agents", "echo", run.run_id)

    asyncio.run(main())


# -- the rest of the API --------------------------------------------------------------------


def test_local_and_remote_spellings_match(server: ServerProcess) -> None:
    """``async for e in await agent.arun(..., stream=True)`` works unchanged on the client."""

    async def main() -> None:
        async with AsyncClient(server.url, **FAST) as client:
            stream = await client.arun("agents", "echo", "a b", stream=True, background=True)
            awaited = [e async for e in stream]
            direct = [e async for e in client.arun("agents", "echo", "a b", stream=True)]
        assert [e.event for e in awaited] == [e.event for e in direct]
        assert [e.event_index for e in awaited] == list(range(len(awaited)))
        assert awaited[-1].event == "RunCompleted"
        assert awaited[-1].content == "a b"

    asyncio.run(main())


def test_readme_example_runs_as_a_file(server: ServerProcess, tmp_path: Path) -> None:
    readme = ROOT / "clients" / "python" / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert len(blocks) == 1
    script = tmp_path / "example.py"
    script.write_text(blocks[0].replace("http://127.0.0.1:7777", server.url))
    path = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")])
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["COMPLETED", "0 RunStarted None", "1 RunContent hi", "2 RunCompleted hi"]


def test_non_stream_modes(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, **FAST) as client:
            run = await client.arun("agents", "echo", "hello remote world")
            assert run.status is RunStatus.COMPLETED
            assert run.content == "hello remote world"
            assert run.error is None

            pending = await client.arun("agents", "echo", "in the background", background=True)
            assert pending.status in (RunStatus.PENDING, RunStatus.RUNNING)
            done = await client.wait("agents", "echo", pending.run_id, timeout=20)
            assert done.status is RunStatus.COMPLETED
            assert done.content == "in the background"
            assert done.event_count is not None and done.event_count >= 3
            fetched = await client.get_run("agents", "echo", pending.run_id)
            assert fetched.session_id == pending.session_id

    asyncio.run(main())


# JSON escapes CR and LF inside strings but not these, which str.splitlines() (and so httpx's
# aiter_lines) also takes for line ends; an SSE parser must split lines on CR, LF, CRLF only.
TRICKY = "one\u2028two three\u2029four five\x85six seven\rheight \u2028\u2029\x85\r\nnine"


def test_line_separators_inside_event_text(server: ServerProcess, proxy: TCPProxy) -> None:
    async def main() -> None:
        async with AsyncClient(proxy.url, **FAST) as client:
            stream = client.arun("agents", "echo", TRICKY, stream=True, background=True)
            events = await collect(stream, lambda e: e.event_index == 3 and proxy.cut())
            assert stream.reconnects >= 1  # the rest came through the resume path
            assert_complete(events)
            content = "".join(e.content or "" for e in events if e.event == "RunContent")
            assert content == TRICKY
            assert events[-1].content == TRICKY
            run_id = events[0].run_id
            tail = await collect(client.resume("agents", "echo", run_id, last_event_index=1))
            assert [e.data for e in tail] == [e.data for e in events[2:]]

    asyncio.run(main())


def test_resume_from_an_index_and_meta_events(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, **FAST) as client:
            events = await collect(
                client.arun("agents", "echo", MESSAGE, stream=True, background=True)
            )
            run_id = events[0].run_id
            tail = await collect(client.resume("agents", "echo", run_id, last_event_index=4))
            assert [e.data for e in tail] == [e.data for e in events[5:]]
            # At the terminal event there is nothing left (204): an empty stream.
            assert (
                await collect(client.resume("agents", "echo", run_id, events[-1].event_index)) == []
            )

            items = []
            async with client.resume("agents", "echo", run_id, 2, meta=True) as stream:
                items = [item async for item in stream]
            assert isinstance(items[0], MetaEvent)
            assert items[0].event == "replay"
            assert items[0].status is RunStatus.COMPLETED
            assert [i.event_index for i in items[1:] if isinstance(i, RunEvent)] == list(
                range(3, len(events))
            )

    asyncio.run(main())


def test_list_get_and_cancel(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, **FAST) as client:
            first = await client.arun("agents", "echo", "one", session_id="s-list")
            second = await client.arun(
                "agents", "echo", LONG_MESSAGE, background=True, session_id="s-list"
            )
            runs = await client.list_runs("agents", "echo", session_id="s-list")
            assert [r.run_id for r in runs] == [second.run_id, first.run_id]
            assert await client.cancel("agents", "echo", second.run_id) in (
                RunStatus.RUNNING,
                RunStatus.PENDING,
                RunStatus.CANCELLED,
            )
            cancelled = await client.wait("agents", "echo", second.run_id, timeout=20)
            assert cancelled.status is RunStatus.CANCELLED
            # Idempotent, and an ended run keeps its status.
            assert await client.cancel("agents", "echo", second.run_id) is RunStatus.CANCELLED
            assert await client.cancel("agents", "echo", first.run_id) is RunStatus.COMPLETED
            stream_events = await collect(client.resume("agents", "echo", second.run_id))
            assert stream_events[-1].event == "RunCancelled"

    asyncio.run(main())


def test_status_errors_carry_status_and_code(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, **FAST) as client:
            with pytest.raises(APIStatusError) as caught:
                await client.get_run("agents", "echo", "no-such-run")
            assert caught.value.status_code == 404
            assert caught.value.code
            with pytest.raises(APIStatusError) as caught:
                await collect(client.resume("agents", "echo", "no-such-run"))
            assert caught.value.status_code == 404
            with pytest.raises(APIStatusError) as caught:
                await client.arun("agents", "no-such-agent", "hi")
            assert caught.value.status_code == 404
            # Awaiting a stream opens it, so the error comes at the await (as in-process).
            with pytest.raises(APIStatusError) as caught:
                await client.arun("agents", "no-such-agent", "hi", stream=True, background=True)
            assert caught.value.code == "component_not_found"

            run = await client.arun("agents", "echo", "taken", run_id="fixed-run-id")
            with pytest.raises(APIStatusError) as caught:
                await client.arun("agents", "echo", "again", run_id=run.run_id)
            assert caught.value.status_code == 409
            with pytest.raises(APIStatusError) as caught:
                await collect(
                    client.arun(
                        "agents", "echo", "again", run_id=run.run_id, stream=True, background=True
                    )
                )
            assert caught.value.status_code == 409

    asyncio.run(main())


def test_closed_clients_say_so(server: ServerProcess) -> None:
    async def main() -> None:
        client = AsyncClient(server.url)
        async with client:
            pass
        assert client.is_closed
        with pytest.raises(ClientClosed):
            await client.get_run("agents", "echo", "x")
        with pytest.raises(ClientClosed):
            client.arun("agents", "echo", "hi", stream=True, background=True)
        await client.aclose()  # twice is fine

    asyncio.run(main())
    sync = Client(server.url)
    assert sync.run("agents", "echo", "sync hello").content == "sync hello"
    # A stream left half read is closed with the client.
    abandoned = sync.run("agents", "echo", MESSAGE, stream=True, background=True)
    assert isinstance(next(abandoned), RunEvent)
    sync.close()
    abandoned.close()  # harmless after close
    sync.close()
    with pytest.raises(ClientClosed):
        sync.run("agents", "echo", "hi")
    with pytest.raises(ClientClosed):
        sync.get_run("agents", "echo", "x")


# -- security key -------------------------------------------------------------------------

KEY = "test-security-key"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("secured"), delay=DELAY, security_key=KEY) as srv:
        yield srv


def test_security_key(secured: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(secured.url, **FAST) as anonymous:
            with pytest.raises(APIStatusError) as caught:
                await anonymous.arun("agents", "echo", "hi")
            assert caught.value.status_code == 401
        async with AsyncClient(secured.url, "wrong-key", **FAST) as wrong:
            with pytest.raises(APIStatusError) as caught:
                await wrong.arun("agents", "echo", "hi")
            assert caught.value.status_code in (401, 403)

        with TCPProxy(secured.port) as proxy:
            async with AsyncClient(proxy.url, KEY, **FAST) as client:
                stream = client.arun("agents", "echo", MESSAGE, stream=True, background=True)
                events = await collect(stream, lambda e: e.event_index == 3 and proxy.cut())
                assert stream.reconnects >= 1
                assert_complete(events)
                pending = await client.arun("agents", "echo", "x y", background=True)
                assert pending.resume_token

    asyncio.run(main())


def test_resume_token_opens_one_run_only(secured: ServerProcess) -> None:
    with Client(secured.url, KEY, **FAST) as client:
        with client.run("agents", "echo", MESSAGE, stream=True, background=True) as stream:
            events = list(stream)
        other = client.run("agents", "echo", "other run", background=True)
    token = stream.resume_token
    assert token and stream.run_id
    assert KEY not in token
    resume = f"{secured.url}/agents/echo/runs/{stream.run_id}/resume"
    # No Authorization header: only the token in the query string.
    with httpx.stream("GET", resume, params={"token": token}, timeout=10) as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())
    assert body.count("\nid: ") + body.startswith("id: ") == len(events)
    assert httpx.get(resume, timeout=10).status_code == 401
    for bad in (other.resume_token, token + "x", "1.abc"):
        response = httpx.get(resume, params={"token": bad}, timeout=10)
        assert response.status_code in (401, 403), bad
    # The token opens the stream, nothing else.
    run_url = f"{secured.url}/agents/echo/runs/{stream.run_id}"
    assert httpx.get(run_url, params={"token": token}, timeout=10).status_code == 401


class _PlainUvicorn(ServerProcess):
    """The test app under ``uvicorn`` itself rather than ``agentos serve``."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "tests.apps:served_app", "--port", str(self.port)]


@pytest.mark.parametrize("how", ["agentos serve", "uvicorn"])
def test_resume_tokens_never_reach_the_log(tmp_path: Path, how: str) -> None:
    kind = ServerProcess if how == "agentos serve" else _PlainUvicorn
    with kind(tmp_path, delay=0.0, security_key=KEY) as server:
        with Client(server.url, KEY, **FAST) as client:
            run = client.run("agents", "echo", "hi there", background=True)
        token = run.resume_token
        assert token and run.run_id
        resume = f"{server.url}/agents/echo/runs/{run.run_id}/resume"
        asked = [
            f"{resume}?token={token}",
            f"{resume}?last_event_index=0&token={token}",
            f"{resume}?tok%65n={token}",  # what the server decodes to "token"
            f"{server.url}/agents/echo/runs/{run.run_id}?token={token}",  # 401, still logged
        ]
        for url in asked:
            httpx.get(url, timeout=10)
        assert httpx.get(asked[0], timeout=10).status_code == 200
    log = server.log_path.read_text(errors="replace")
    assert log.count("=[redacted]") >= len(asked), log[-3000:]  # the access log was on
    assert token not in log
    assert token.split(".")[1] not in log


def test_get_session_reads_every_page(tmp_path: Path) -> None:
    """A session bigger than ``list_max_bytes`` comes in pages (``X-Next-Offset``): the client
    puts them together, oldest run first, or keeps the newest ``limit`` runs."""
    small = {"AGENTOS_LIST_MAX_BYTES": "600"}  # about one run object a page
    with ServerProcess(tmp_path, delay=0.001, env=small) as server:

        async def main() -> None:
            async with AsyncClient(server.url, **FAST) as client:
                run_ids = [
                    (await client.arun("agents", "echo", f"turn {i}", session_id="paged")).run_id
                    for i in range(5)
                ]
                first_page = httpx.get(f"{server.url}/sessions/paged")
                assert "x-next-offset" in first_page.headers
                assert len(first_page.json()["runs"]) < 5
                session = await client.get_session("paged")
                assert session["session_id"] == "paged"
                assert [r["run_id"] for r in session["runs"]] == run_ids
                newest = await client.get_session("paged", limit=2)
                assert [r["run_id"] for r in newest["runs"]] == run_ids[-2:]
                with pytest.raises(ValueError):
                    await client.get_session("paged", limit=0)

        asyncio.run(main())
        with Client(server.url) as blocking:
            assert len(blocking.get_session("paged", limit=3)["runs"]) == 3


def test_get_session_keeps_a_run_once_when_pages_shift() -> None:
    """A run started between two pages shifts the offsets: the next page repeats a run the
    client has (with its messages); it is kept once."""

    def run(n: int) -> dict[str, Any]:
        return {"run_id": f"r{n}", "session_id": "s"}

    def message(n: int) -> dict[str, Any]:
        return {"run_id": f"r{n}", "position": 0, "role": "user", "content": f"m{n}"}

    pages = {  # offset -> (runs, messages, next offset)
        "0": ([run(3), run(4)], [message(3), message(4)], "2"),
        # r5 was started meanwhile: offset 2 now starts at r3 again
        "2": ([run(2), run(3)], [message(2), message(3)], "4"),
        "4": ([run(1)], [message(1)], None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        runs, messages, next_offset = pages[request.url.params.get("offset", "0")]
        headers = {} if next_offset is None else {"X-Next-Offset": next_offset}
        body = {"session_id": "s", "runs": runs, "messages": messages}
        return httpx.Response(200, json=body, headers=headers)

    async def main() -> None:
        transport = httpx.MockTransport(handler)
        async with AsyncClient("http://agentos.test", transport=transport) as client:
            session = await client.get_session("s")
            assert [r["run_id"] for r in session["runs"]] == ["r1", "r2", "r3", "r4"]
            assert [m["content"] for m in session["messages"]] == ["m1", "m2", "m3", "m4"]
            newest = await client.get_session("s", limit=3)
            assert [r["run_id"] for r in newest["runs"]] == ["r2", "r3", "r4"]
            assert [m["content"] for m in newest["messages"]] == ["m2", "m3", "m4"]

    asyncio.run(main())
