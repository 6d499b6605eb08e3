"""Memory stays within the settings when clients do not read, and run lists stay small.

A real ``agentos serve`` subprocess; its resident memory is read from ``/proc/<pid>/status``.
Readers that never read are raw sockets: they send their request and then leave every byte
to the kernel, the way a stuck client does. Afterwards each one
resumes by cursor and must get every event exactly once.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h11
import httpx
import pytest
import websockets.sync.client
from agentos_client import AsyncClient
from sse_starlette import ServerSentEvent

from agentos import AgentOS, Settings
from agentos.events import Event, dumps
from agentos.http.sse import sse_writes
from tests import apps
from tests.servers import ServerProcess

MiB = 1024 * 1024
#: What a process may grow by for reasons that have nothing to do with the readers (allocator
#: arenas, the requests that start runs): the bounds below add it once.
_SLACK = 64 * MiB

_NEEDS_PROC = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def _rss(server: ServerProcess) -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _peak_rss(server: ServerProcess, samples: int = 15) -> int:
    """The highest of a few samples over three seconds, while the readers' writes settle."""
    peak = 0
    for _ in range(samples):
        peak = max(peak, _rss(server))
        time.sleep(0.2)
    return peak


def _stuck_socket(port: int, request: bytes) -> socket.socket:
    sock = socket.socket()
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def _wait_run(http: httpx.Client, path: str) -> dict[str, object]:
    for _ in range(600):
        run: dict[str, object] = http.get(path).json()
        if run["status"] == "COMPLETED":
            return run
        time.sleep(0.1)
    raise AssertionError(f"{path} did not complete")


def _sse_ids(sock: socket.socket, events: int) -> list[int]:
    """Read the raw socket's SSE response until ``events`` complete events (or its end)."""
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))  # what it sent
    text = b""
    ids: list[int] = []
    sock.settimeout(10)
    while len(ids) < events:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        if isinstance(event, h11.Data):
            text += bytes(event.data)
            *frames, text = text.split(b"\n\n")
            for frame in frames:
                for line in frame.split(b"\n"):
                    if line.startswith(b"id: "):
                        ids.append(int(line[4:]))
        elif isinstance(event, h11.EndOfMessage):
            break
    return ids


def _resume_ids(url: str, path: str, after: int) -> list[int]:
    headers = {"Last-Event-ID": str(after)}
    ids: list[int] = []
    with httpx.stream("GET", url + path, headers=headers, timeout=30) as response:
        if response.status_code == 204:
            return ids
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
    return ids


@_NEEDS_PROC
@pytest.mark.timeout(180)
def test_sse_readers_that_never_read_hold_the_bound_then_resume(tmp_path: Path) -> None:
    readers, queued, message = 40, 256 * 1024, "x" * (4 * MiB)
    env = {"AGENTOS_STREAM_MAX_QUEUED_BYTES": str(queued), "AGENTOS_SEND_TIMEOUT": "150"}
    with (
        ServerProcess(tmp_path, delay=0, env=env) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        created = http.post(
            "/agents/echo/runs", data={"message": message, "stream": "false", "background": "true"}
        )
        run_id = created.json()["run_id"]
        run = _wait_run(http, f"/agents/echo/runs/{run_id}")
        count = int(str(run["event_count"]))
        path = f"/agents/echo/runs/{run_id}/resume"
        before = _rss(server)

        socks = []
        for n in range(1, readers + 1):
            socks.append(
                _stuck_socket(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            )
            # One at a time: each has its stream before the next comes, or several resumes
            # would read the run's 4 MiB values at once, which the bound does not allow for
            # (under load a stream took over a second to open: it then went past 98 MiB once).
            deadline = time.monotonic() + 30
            while http.get("/health").json()["open_streams"] < n:
                assert time.monotonic() < deadline, f"stream {n} did not open in 30 s"
                time.sleep(0.04)
        growth = _peak_rss(server) - before

        # Each reader holds at most the bound in flight; the run's events are held once, by
        # all of them (three events of about the message's size, and the run record of the
        # latest resume request while it is read).
        bound = readers * queued + 6 * len(message) + _SLACK
        assert growth < bound, f"RSS grew {growth // MiB} MiB, bound {bound // MiB} MiB"

        for i, sock in enumerate(socks):
            with sock:
                seen = _sse_ids(sock, i % count)
            after = seen[-1] if seen else -1
            rest = _resume_ids(server.url, path, after)
            assert seen + rest == list(range(count)), (i, seen, rest)


def _ws_frames(sock: socket.socket, wanted: int) -> Iterator[dict[str, object]]:
    """Up to ``wanted`` server text frames from a raw WebSocket (the handshake already read)."""
    data = b""
    sock.settimeout(10)
    for _ in range(wanted):
        while (header := _ws_header(data)) is None or len(data) < sum(header):
            chunk = sock.recv(1 << 20)
            if not chunk:
                return
            data += chunk
        offset, size = header
        yield json.loads(data[offset : offset + size])
        data = data[offset + size :]


def _ws_header(data: bytes) -> tuple[int, int] | None:
    """(header length, payload length) of the server frame ``data`` starts with, once known."""
    if len(data) < 2:
        return None
    size = data[1] & 0x7F
    if size < 126:
        return 2, size
    offset = 4 if size == 126 else 10
    if len(data) < offset:
        return None
    return offset, int.from_bytes(data[2:offset], "big")


def _masked(frame: dict[str, object]) -> bytes:
    payload = json.dumps(frame).encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


@_NEEDS_PROC
@pytest.mark.timeout(180)
def test_websocket_that_never_reads_holds_the_bound_then_resumes(tmp_path: Path) -> None:
    runs, message = 10, "y" * (4 * MiB)
    env = {"AGENTOS_WS_SEND_TIMEOUT": "150"}
    with (
        ServerProcess(tmp_path, delay=0, env=env) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        run_ids = [
            http.post(
                "/workflows/echo-workflow/runs",
                data={"message": message, "stream": "false", "background": "true"},
            ).json()["run_id"]
            for _ in range(runs)
        ]
        counts = {
            run_id: int(
                str(_wait_run(http, f"/workflows/echo-workflow/runs/{run_id}")["event_count"])
            )
            for run_id in run_ids
        }
        before = _rss(server)

        key = base64.b64encode(os.urandom(16)).decode()
        sock = _stuck_socket(
            server.port,
            (
                "GET /workflows/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode(),
        )
        handshake = b""
        while b"\r\n\r\n" not in handshake:
            handshake += sock.recv(1)  # the 101 only: the frames after it stay unread
        assert handshake.startswith(b"HTTP/1.1 101")
        for run_id in run_ids:
            sock.sendall(_masked({"action": "reconnect", "run_id": run_id}))
        for _ in range(200):
            if http.get("/health").json()["open_streams"] >= runs:
                break
            time.sleep(0.02)
        growth = _peak_rss(server) - before

        # The queue holds the bound (1 MiB by default) or one larger frame, one more is being
        # sent, and each followed run waits holding at most one event.
        bound = (runs + 2) * 2 * len(message) + _SLACK
        assert growth < bound, f"RSS grew {growth // MiB} MiB, bound {bound // MiB} MiB"

        cursors = dict.fromkeys(run_ids, -1)
        with sock:
            for frame in _ws_frames(sock, 12):
                if "event_index" in frame:
                    run_id = str(frame["run_id"])
                    assert frame["event_index"] == cursors[run_id] + 1
                    cursors[run_id] += 1
        ws_url = server.url.replace("http://", "ws://") + "/workflows/ws"
        with websockets.sync.client.connect(ws_url, max_size=None) as ws:
            json.loads(ws.recv())  # connected
            for run_id in run_ids:
                ws.send(
                    json.dumps(
                        {
                            "action": "reconnect",
                            "run_id": run_id,
                            "last_event_index": cursors[run_id],
                        }
                    )
                )
            done = {run_id for run_id in run_ids if cursors[run_id] == counts[run_id] - 1}
            while len(done) < runs:
                frame = json.loads(ws.recv(timeout=30))
                run_id = str(frame["run_id"])
                if frame["event"] == "replay" and cursors[run_id] == counts[run_id] - 1:
                    continue  # nothing after the cursor
                if "event_index" not in frame:
                    continue  # catch_up / replay meta
                assert frame["event_index"] == cursors[run_id] + 1, frame["event"]
                cursors[run_id] += 1
                if cursors[run_id] == counts[run_id] - 1:
                    done.add(run_id)
        assert cursors == {run_id: counts[run_id] - 1 for run_id in run_ids}


@pytest.mark.timeout(180)  # 20 runs of 1 MiB (2 MiB of UTF-8) each, through the database
async def test_run_lists_are_cut_to_the_byte_budget_and_paged(
    serve: Callable[[AgentOS], str], settings: Settings
) -> None:
    budget, chars = 16 * 1024, 100
    url = serve(apps.build(settings.replace(list_max_bytes=budget, list_max_field_chars=chars)))
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        messages = {}
        for i in range(20):
            message = f"m{i}-" + "é" * MiB  # one word: the echo's content is as large
            run = (
                await http.post("/agents/echo/runs", data={"message": message, "stream": "false"})
            ).json()
            messages[run["run_id"]] = message
        newest_first = list(messages)[::-1]

        listed: list[str] = []
        params = {"limit": "100"}
        for _ in range(20):
            response = await http.get("/agents/echo/runs", params=params)
            assert response.status_code == 200
            assert len(response.content) <= budget
            for item in response.json():
                assert item["truncated"] is True
                assert item["input"] == messages[item["run_id"]][:chars]
                assert item["content"] == messages[item["run_id"]][:chars]
                listed.append(item["run_id"])
            next_offset = response.headers.get("x-next-offset")
            if next_offset is None:
                break
            params["offset"] = next_offset
        assert listed == newest_first  # every run once, over several pages

        whole = (await http.get(f"/agents/echo/runs/{newest_first[0]}")).json()
        assert whole["input"] == whole["content"] == messages[newest_first[0]]
        assert "truncated" not in whole

    async with AsyncClient(url) as client:
        runs = await client.list_runs("agents", "echo", limit=100)
        assert [run.run_id for run in runs] == newest_first
        assert all(run.data["truncated"] for run in runs)


def test_sse_writes_are_the_frames_in_bounded_pieces() -> None:
    events = [
        Event(0, "RunStarted", dumps({"event": "RunStarted", "input": "a" * 5000})),
        Event(1, "RunContent", dumps({"event": "RunContent", "content": "small"})),
        Event(2, "RunContent", dumps({"event": "RunContent", "content": "small too"})),
        Event(3, "RunCompleted", dumps({"content": "é\u2028𝄞" * 3000}), terminal=True),
    ]
    frames = b"".join(
        ServerSentEvent(e.data, event=e.name, id=str(e.index), sep="\n").encode() for e in events
    )
    for max_bytes in (1, 100, 1024, 4096, 1 << 20):
        writes = list(sse_writes(events, max_bytes))
        assert b"".join(writes) == frames
        assert all(len(write) <= max(max_bytes, 200) for write in writes), max_bytes
    # Small frames that fit go out together.
    assert len(list(sse_writes(events[1:3], 4096))) == 1
