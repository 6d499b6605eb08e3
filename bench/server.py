"""The server the benchmark measures: agentos and its ceiling side by side on one uvicorn.

- ``/agents/bench/runs`` etc.: agentos with an EchoModel agent at zero delay (``bench``) and a
  ``gated`` agent that emits ``RunStarted``, waits for a named gate, then streams ``n`` chunks
  (every ``delay`` seconds, or at once). SQLite store.
- ``/bare``: the ceiling. A bare sse-starlette endpoint: an async generator that builds the same
  payload dicts, serialises them the same way and yields one ``ServerSentEvent`` per frame to
  ``EventSourceResponse`` (same ids, names, JSON, meta frames and ping settings), with no run
  manager, group commit, buffer or store in between. ``batch=K`` joins K encoded frames per
  send instead (a stronger ceiling, shown for comparison in scenario 1).
- ``/floor``: the stack's floor for an idle stream (Starlette's StreamingResponse, no
  sse-starlette), to show what one open stream costs before any SSE machinery.
- ``/bench/gate``, ``/bench/evict/{run_id}``, ``/bench/stats``: the benchmark's own controls
  (release a gate, drop a run's buffer so it is read from the database, resident memory and CPU).

Run: ``python -m bench.server --port PORT --db DB_URL [--loop asyncio|uvloop] [--http h11|httptools]``;
``--more-ports P2,P3`` listens on those ports of 127.0.0.1 too (``bench/idle_streams.py``: a
client has about 28,000 ephemeral ports per server address and port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from agentos import Agent, AgentOS, EchoModel, Settings
from agentos.events import dumps
from tests.servers import wait_healthy

_GATES: dict[str, asyncio.Event] = {}
_FLUSH = ServerSentEvent(comment="flush")  # marker in /bare's item stream: send what is ready


def gate(name: str) -> asyncio.Event:
    found = _GATES.get(name)
    if found is None:
        found = _GATES[name] = asyncio.Event()
    return found


def echo_message(n_words: int) -> str:
    """The message the ``bench`` agent echoes back as ``n_words`` chunks."""
    return " ".join(f"w{i}" for i in range(n_words))


def gated_message(name: str, n: int, delay: float) -> str:
    return f"gate:{name}:{n}:{delay}"


def _parse_gated(message: str) -> tuple[str, int, float]:
    _, name, n, delay = message.split(":")
    return name, int(n), float(delay)


async def _gated(message: str) -> AsyncIterator[str]:
    name, n, delay = _parse_gated(message)
    await gate(name).wait()
    for i in range(n):
        if delay:
            await asyncio.sleep(delay)
        elif i % 64 == 63:
            await asyncio.sleep(0)
        yield f" w{i}"


async def floor(request: Request) -> StreamingResponse:
    """The stack's floor for an idle stream: Starlette's StreamingResponse on uvicorn, no
    sse-starlette (no ping, disconnect or shutdown tasks). Sends one frame, then waits."""

    async def body() -> AsyncIterator[bytes]:
        yield b'event: subscribed\ndata: {"event":"subscribed"}\n\n'
        await asyncio.Event().wait()

    return StreamingResponse(body(), media_type="text/event-stream")


async def bare(request: Request) -> EventSourceResponse:
    """The frames of an agentos run, made on the fly by a bare sse-starlette generator.

    Query: ``n`` chunks; ``gate`` (a gated run: wait for the gate after ``RunStarted``) and
    ``delay``; ``after`` (a resume cursor: only frames after it) and ``meta`` (send the meta
    frames agentos sends on resume: ``catch_up``/``subscribed`` live, ``replay`` when replaying).
    """
    q = request.query_params
    n = int(q["n"])
    gate_name = q.get("gate")
    delay = float(q.get("delay", "0"))
    after = int(q.get("after", "-1"))
    meta = q.get("meta") == "1"
    batch = int(q.get("batch", "1"))
    run_id, session_id = str(uuid.uuid4()), str(uuid.uuid4())
    if gate_name is None:
        text = echo_message(n)
        chunks = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))] if n else []
    else:
        text = gated_message(gate_name, n, delay)
        chunks = [f" w{i}" for i in range(n)]
    total = n + 2

    def frame(index: int, name: str, **fields: Any) -> ServerSentEvent:
        payload = {
            "event": name,
            "event_index": index,
            "run_id": run_id,
            "session_id": session_id,
            "agent_id": "bench",
            "created_at": round(time.time(), 3),
            **fields,
        }
        return ServerSentEvent(dumps(payload), event=name, id=str(index), sep="\n")

    def meta_frame(name: str, **fields: Any) -> ServerSentEvent:
        return ServerSentEvent(dumps({"event": name, **fields}), event=name, sep="\n")

    async def frames() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(comment="ping", sep="\n")
        async for item in items():
            if item is not _FLUSH:
                yield item

    async def batched() -> AsyncIterator[ServerSentEvent | bytes]:
        # The same frames, up to ``batch`` of them encoded and joined per send, as agentos
        # does with events that are ready together; what precedes the gate goes out at once.
        yield ServerSentEvent(comment="ping", sep="\n")
        ready: list[bytes] = []
        async for item in items():
            if item is _FLUSH:
                if ready:
                    yield b"".join(ready)
                    ready = []
                continue
            ready.append(item.encode())
            if len(ready) == batch:
                yield b"".join(ready)
                ready = []
        if ready:
            yield b"".join(ready)

    async def items() -> AsyncIterator[ServerSentEvent]:
        if meta and gate_name is None:
            yield meta_frame(
                "replay", run_id=run_id, status="COMPLETED", total_events=total, source="buffer"
            )
        elif meta:
            yield meta_frame(
                "catch_up", run_id=run_id, status="RUNNING", missed_events=1, current_event_count=1
            )
        if after < 0:
            yield frame(0, "RunStarted", input=text)
        if meta and gate_name is not None:
            yield meta_frame("subscribed", run_id=run_id, status="RUNNING", current_event_count=1)
        if gate_name is not None:
            yield _FLUSH
            await gate(gate_name).wait()
        for i, chunk in enumerate(chunks):
            if delay:
                yield _FLUSH
                await asyncio.sleep(delay)
            if i + 1 > after:
                yield frame(i + 1, "RunContent", content=chunk)
        yield frame(n + 1, "RunCompleted", content="".join(chunks))

    return EventSourceResponse(
        frames() if batch == 1 else batched(),
        sep="\n",
        ping=request.app.state.agent_os.settings.streams.ping_interval,
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
    )


async def gate_route(request: Request) -> JSONResponse:
    name = request.query_params["name"]
    gate(name).set()
    return JSONResponse({"released": name})


async def evict(request: Request) -> JSONResponse:
    agent_os: AgentOS = request.app.state.agent_os
    run_id = request.path_params["run_id"]
    agent_os.manager.buffers.discard(run_id)  # as if its time to live had passed
    return JSONResponse({"evicted": run_id})


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class _GCPauses:
    """The longest garbage collection of the oldest generation since the last ``/bench/stats``
    (it holds the event loop: a ping due then comes late)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.longest = 0.0
        self.count = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self.started)
            self.count += 1

    def take(self) -> tuple[int, float]:
        found = self.count, self.longest
        self.count, self.longest = 0, 0.0
        return found


_GC_PAUSES = _GCPauses()
gc.callbacks.append(_GC_PAUSES)


async def stats(request: Request) -> JSONResponse:
    full_collections, longest = _GC_PAUSES.take()  # before the collection asked for here
    if request.query_params.get("gc") == "1":
        gc.collect()
    agent_os: AgentOS = request.app.state.agent_os
    times = os.times()
    return JSONResponse(
        {
            "rss": _rss(),
            "cpu": times.user + times.system,
            "commits": agent_os.manager.committer.commits,
            "events_written": agent_os.manager.committer.events_written,
            "tasks": len(asyncio.all_tasks()),
            "loop": type(asyncio.get_running_loop()).__module__,
            "http": _HTTP[0],
            "full_collections": full_collections,
            "longest_full_collection": longest,
        }
    )


def build(db_url: str) -> AgentOS:
    settings = Settings.from_env(db_url=db_url, instance_id="bench")
    agent_os = AgentOS(
        agents=[Agent(id="bench", model=EchoModel(0)), Agent(id="gated", fn=_gated)],
        settings=settings,
    )
    extra = [
        Route("/bare", bare),
        Route("/floor", floor),
        Route("/bench/gate", gate_route, methods=["POST"]),
        Route("/bench/evict/{run_id}", evict, methods=["POST"]),
        Route("/bench/stats", stats),
    ]
    agent_os.app.router.routes[:0] = extra
    return agent_os


#: The tree this file belongs to (``running`` starts another commit's tree when asked).
ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running(
    db: Path,
    ports: Sequence[int],
    *,
    loop: str = "asyncio",
    http: str = "h11",
    env: Mapping[str, str] | None = None,
    tree: Path = ROOT,
) -> Iterator[str]:
    """A bench server process on a fresh SQLite file ``db``, listening on every port of
    ``ports``; yields its base URL (the first port) once healthy, and stops it after.
    ``tree``: the code to run, this tree or another commit's (``bench/trees.py``)."""
    extra = {"PYTHONPATH": str(tree)} if tree != ROOT else {}
    more = ["--more-ports", ",".join(map(str, ports[1:]))] if len(ports) > 1 else []
    proc = subprocess.Popen(
        [
            sys.executable,
            *("-m", "bench.server", "--port", str(ports[0]), "--db", f"sqlite+aiosqlite:///{db}"),
            *("--loop", loop, "--http", http, *more),
        ],
        cwd=tree,
        env={**os.environ, **extra, **(env or {})},
    )
    url = f"http://127.0.0.1:{ports[0]}"
    try:
        wait_healthy(url, timeout=60, alive=lambda: proc.poll() is None)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: The HTTP implementation uvicorn serves with (``/bench/stats`` reports it).
_HTTP = ["h11"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--loop", default="auto")
    parser.add_argument("--http", default="auto")
    parser.add_argument("--more-ports", default="", help="more ports to listen on, e.g. 81,82")
    args = parser.parse_args()
    # What uvicorn's "auto" takes: httptools when it can be imported, else h11.
    auto = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    _HTTP[0] = auto if args.http == "auto" else args.http
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": args.port,
        "log_level": "warning",
        "loop": args.loop,
        "http": args.http,
        "backlog": 4096,
        "timeout_graceful_shutdown": 5,
    }
    if not args.more_ports:
        uvicorn.run(build(args.db).app, **options)
        return
    ports = [args.port, *(int(p) for p in args.more_ports.split(","))]
    server = uvicorn.Server(uvicorn.Config(build(args.db).app, **options))
    server.run(sockets=[_listener(port) for port in ports])


def _listener(port: int) -> socket.socket:
    """A socket bound to ``port`` of 127.0.0.1 (uvicorn's ``create_server`` listens on it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


if __name__ == "__main__":
    main()
