"""The benchmark's client: raw HTTP/1.1 over asyncio sockets, in a process of its own.

A client in Python on the same two cores competes with the server, so it does as little as it
can while measuring: each connection appends what it receives to one buffer and notes the
arrival time; frames are parsed (chunked encoding, SSE lines, ``created_at`` for lag) only after
the measurement. Every job alternates the ceiling (``bare``) and agentos round by round.

Run: ``python -m bench.client PORT JOB_JSON``; prints one JSON object.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from bench.stats import pctl

HOST = "127.0.0.1"
_END = b"\r\n0\r\n\r\n"


def _request(method: str, path: str, form: dict[str, str] | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
    if form is None:
        return (head + "\r\n").encode()
    body = urlencode(form).encode()
    head += f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


class Conn(asyncio.Protocol):
    """One request; its raw response with the arrival time of each read."""

    def __init__(self, marker: bytes | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.raw = bytearray()
        self.marks: list[tuple[int, float]] = []  # (len(raw) after a read, time.time())
        self.sent = 0.0
        self.done: asyncio.Future[None] = loop.create_future()
        self.live: asyncio.Future[None] = loop.create_future()
        self.marker = marker
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.raw += data
        self.marks.append((len(self.raw), time.time()))
        if not self.live.done() and (self.marker is None or self.marker in self.raw):
            self.live.set_result(None)
        if self.raw.endswith(_END) and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if not self.live.done():
            self.live.set_result(None)

    @property
    def end(self) -> float:
        return self.marks[-1][1] if self.marks else self.sent

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_conn(port: int, request: bytes, marker: bytes | None = None) -> Conn:
    loop = asyncio.get_running_loop()
    conn = Conn(marker)
    for attempt in range(20):
        try:
            await loop.create_connection(lambda: conn, HOST, port)
            break
        except OSError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    conn.sent = time.time()
    assert conn.transport is not None
    conn.transport.write(request)
    return conn


@dataclass
class Frame:
    id: int | None
    event: str | None
    data: bytes
    at: float  # arrival time of the read that completed it

    def created_at(self) -> float:
        start = self.data.index(b'"created_at":') + 13
        end = start
        while self.data[end : end + 1] not in (b",", b"}"):
            end += 1
        return float(self.data[start:end])


@dataclass
class Response:
    status: int
    body: bytes
    frames: list[Frame] = field(default_factory=list)
    pings: int = 0


def parse(conn: Conn) -> Response:
    """Status line, chunked body and SSE frames of a response, each frame with its arrival."""
    raw = bytes(conn.raw)
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        return Response(0, b"")
    status = int(raw[9:12])
    head = raw[:head_end].lower()
    pos = head_end + 4
    ends = [m[0] for m in conn.marks]

    def arrival(offset: int) -> float:
        return conn.marks[min(bisect.bisect_left(ends, offset), len(ends) - 1)][1]

    if b"transfer-encoding: chunked" not in head:
        return Response(status, raw[pos:])
    response = Response(status, b"")
    while True:
        nl = raw.find(b"\r\n", pos)
        if nl < 0:
            break
        size = int(raw[pos:nl], 16)
        if size == 0:
            break
        start, end = nl + 2, nl + 2 + size
        if end > len(raw):
            break
        at = arrival(end)
        for block in raw[start:end].split(b"\n\n"):
            if not block:
                continue
            id_: int | None = None
            event: str | None = None
            data = b""
            for line in block.split(b"\n"):
                if line.startswith(b"id: "):
                    id_ = int(line[4:])
                elif line.startswith(b"event: "):
                    event = line[7:].decode()
                elif line.startswith(b"data: "):
                    data = line[6:]
                elif line.startswith(b":"):
                    response.pings += 1
            if id_ is not None or event is not None:
                response.frames.append(Frame(id_, event, data, at))
        pos = end + 2
    return response


async def call(port: int, method: str, path: str, form: dict[str, str] | None = None) -> Any:
    """A plain request; its JSON body."""
    conn = await open_conn(port, _request(method, path, form))
    await conn.done
    response = parse(conn)
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: HTTP {response.status}")
    return json.loads(response.body) if response.body else None


async def stats(port: int, gc: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = await call(port, "GET", "/bench/stats" + ("?gc=1" if gc else ""))
    return result


def _events(response: Response) -> list[Frame]:
    return [f for f in response.frames if f.id is not None]


def _check(response: Response, expected: int) -> None:
    got = _events(response)
    if response.status != 200 or len(got) != expected or got[-1].id != expected - 1:
        raise RuntimeError(f"HTTP {response.status}, {len(got)} events, expected {expected}")


# -- jobs --------------------------------------------------------------------------------------


def _start_form(n_words: int, message: str | None = None, **extra: str) -> dict[str, str]:
    from bench.server import echo_message

    return {"message": message or echo_message(n_words), **extra}


async def streams(
    port: int, rounds: int, runs: int, events: int, sides: tuple[str, ...] = ("bare", "agentos")
) -> dict[str, Any]:
    """``runs`` concurrent background+stream runs of ``events`` events each (scenarios 1, 3)."""
    n = events - 2
    out: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side in sides:
            if side == "bare":
                request = _request("GET", f"/bare?n={n}")
            elif side == "bare-batched":
                request = _request("GET", f"/bare?n={n}&batch=1000")
            else:
                form = _start_form(n, background="true", stream="true")
                request = _request("POST", "/agents/bench/runs", form)
            before = await stats(port)
            started = time.time()
            conns = await asyncio.gather(*(open_conn(port, request) for _ in range(runs)))
            await asyncio.gather(*(c.done for c in conns))
            finished = max(c.end for c in conns)
            after = await stats(port)
            durations = []
            for conn in conns:
                _check(parse(conn), events)
                durations.append(conn.end - conn.sent)
            total = runs * events
            out[side].append(
                {
                    "events_per_s": total / (finished - started),
                    "p50_run_s": pctl(durations, 0.5),
                    "p99_run_s": pctl(durations, 0.99),
                    "cpu_us_per_event": (after["cpu"] - before["cpu"]) * 1e6 / total,
                    "events_written": after["events_written"] - before["events_written"],
                    "commits": after["commits"] - before["commits"],
                }
            )
    return out


async def fanout(
    port: int,
    rounds: int,
    subscribers: int,
    events: int,
    delay: float,
    sides: tuple[str, ...] = ("bare", "agentos"),
) -> dict[str, Any]:
    """One run, ``subscribers`` live followers connected before it streams (scenario 2)."""
    n = events - 2
    out: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for r in range(rounds):
        for side in sides:
            name = f"fan-{side}-{r}-{random.random()}"
            if side == "bare":
                path = f"/bare?n={n}&gate={name}&delay={delay}&meta=1"
            elif side == "bare-batched":
                path = f"/bare?n={n}&gate={name}&delay={delay}&meta=1&batch=1000"
            else:
                from bench.server import gated_message

                form = {"message": gated_message(name, n, delay), "background": "true"}
                form["stream"] = "false"
                run = await call(port, "POST", "/agents/gated/runs", form)
                path = f"/agents/gated/runs/{run['run_id']}/resume?last_event_index=-1"
            conns: list[Conn] = []
            for i in range(0, subscribers, 250):  # connect in waves; all are live before go
                wave = await asyncio.gather(
                    *(
                        open_conn(port, _request("GET", path), b"event: subscribed")
                        for _ in range(min(250, subscribers - i))
                    )
                )
                await asyncio.wait_for(asyncio.gather(*(c.live for c in wave)), 60)
                conns += wave
            before = await stats(port)
            released = time.time()
            await call(port, "POST", f"/bench/gate?name={name}")
            await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), 300)
            finished = max(c.end for c in conns)
            after = await stats(port)
            lags: list[float] = []
            delivered = 0
            for conn in conns:
                response = parse(conn)
                _check(response, events)
                got = _events(response)[1:]  # RunStarted came before the gate opened
                delivered += len(got)
                lags.append(pctl([f.at - f.created_at() for f in got], 0.99))
            out[side].append(
                {
                    "events_per_s": delivered / (finished - released),
                    "p99_lag_slowest_s": max(lags),
                    "p99_lag_median_sub_s": pctl(lags, 0.5),
                    "cpu_us_per_delivery": (after["cpu"] - before["cpu"]) * 1e6 / delivered,
                }
            )
    return out


async def _first_event(port: int, path: str) -> float:
    return await _time_to_first_event(port, _request("GET", path))


async def _time_to_first_event(port: int, request: bytes, release: str | None = None) -> float:
    """Seconds from sending ``request`` to the arrival of the first event of its stream; the
    stream is read to its end (``release``: a gate to open once the first event is in)."""
    conn = await open_conn(port, request, b"id: ")
    if release is not None:
        await conn.live
        await call(port, "POST", f"/bench/gate?name={release}")
    await conn.done
    response = parse(conn)
    if response.status != 200 or not _events(response):
        raise RuntimeError(f"HTTP {response.status}, no events")
    return _events(response)[0].at - conn.sent


async def short_runs(port: int, runs: int) -> dict[str, Any]:
    """Runs of one chunk (create with stream and background, ``RunStarted``, one
    ``RunContent``, ``RunCompleted``, read to the end), one at a time: the server's CPU per run
    and the time of each (scenario 7)."""
    request = _request(
        "POST", "/agents/bench/runs", _start_form(1, stream="true", background="true")
    )
    times: list[float] = []
    before = await stats(port)
    for _ in range(runs):
        conn = await open_conn(port, request)
        await conn.done
        _check(parse(conn), 3)
        times.append(conn.end - conn.sent)
    after = await stats(port)
    return {
        "cpu_ms_per_run": (after["cpu"] - before["cpu"]) * 1000 / runs,
        "p50_s": pctl(times, 0.5),
        "p99_s": pctl(times, 0.99),
        "commits_per_run": (after["commits"] - before["commits"]) / runs,
    }


async def first_event(port: int, rounds: int, words: int) -> dict[str, Any]:
    """Time to the first event (scenario 7): a streaming create of a run whose producer emits
    ``words`` chunks at full speed (``flood``) and of a run whose producer waits after
    ``RunStarted`` (``idle``, a gated run released once its first event is in), and the
    ceiling's first frame (``bare``), one request at a time, alternating."""
    from bench.server import gated_message

    out: dict[str, list[float]] = {"bare": [], "idle": [], "flood": []}
    for r in range(rounds):
        out["bare"].append(await _time_to_first_event(port, _request("GET", f"/bare?n={words}")))
        name = f"first-{r}-{random.random()}"
        form = {"message": gated_message(name, 1, 0), "background": "true", "stream": "true"}
        idle = _request("POST", "/agents/gated/runs", form)
        out["idle"].append(await _time_to_first_event(port, idle, release=name))
        form = _start_form(words, background="true", stream="true")
        flood = _request("POST", "/agents/bench/runs", form)
        out["flood"].append(await _time_to_first_event(port, flood))
    return out


async def resume(port: int, requests: int, events: int) -> dict[str, Any]:
    """Time from a resume request to the first missed event, buffer and database (scenario 4)."""
    n = events - 2
    runs = []
    for _ in range(2):
        form = _start_form(n, background="true", stream="false")
        runs.append((await call(port, "POST", "/agents/bench/runs", form))["run_id"])
    for run_id in runs:
        for _ in range(500):
            if (await call(port, "GET", f"/agents/bench/runs/{run_id}"))["status"] == "COMPLETED":
                break
            await asyncio.sleep(0.01)
    await call(port, "POST", f"/bench/evict/{runs[1]}")
    out: dict[str, list[float]] = {"bare": [], "buffer": [], "database": []}
    rng = random.Random(7)
    for _ in range(requests):
        cursor = rng.randrange(0, events - 1)  # any event but the terminal one
        paths = {
            "bare": f"/bare?n={n}&after={cursor}&meta=1",
            "buffer": f"/agents/bench/runs/{runs[0]}/resume?last_event_index={cursor}",
            "database": f"/agents/bench/runs/{runs[1]}/resume?last_event_index={cursor}",
        }
        for side, path in paths.items():
            out[side].append(await _first_event(port, path))
    return out


async def idle(
    port: int, side: str, streams_: int, runs: int, hold: float, ping: float
) -> dict[str, Any]:
    """Idle runs, then idle resumed streams with pings on, and the server's memory (5, 6)."""
    from bench.server import gated_message

    result: dict[str, Any] = {"side": side}
    base = await stats(port, gc=True)
    result["rss_base"] = base["rss"]
    paths = []
    if side == "agentos":
        run_ids = []
        for i in range(0, runs, 200):
            batch = await asyncio.gather(
                *(
                    call(
                        port,
                        "POST",
                        "/agents/gated/runs",
                        {
                            "message": gated_message("idle", 1, 0),
                            "background": "true",
                            "stream": "false",
                        },
                    )
                    for _ in range(min(200, runs - i))
                )
            )
            run_ids += [r["run_id"] for r in batch]
        await asyncio.sleep(1.0)  # let the RUNNING updates commit
        with_runs = await stats(port, gc=True)
        result["runs"] = runs
        result["rss_runs"] = with_runs["rss"]
        paths = [f"/agents/gated/runs/{r}/resume?last_event_index=-1" for r in run_ids]
        marker = b"event: subscribed"
    else:
        paths = ["/floor"] if side == "floor" else ["/bare?n=1&gate=idle&meta=1"]
        marker = b"event: subscribed"
        result["rss_runs"] = base["rss"]
    conns: list[Conn] = []
    opened = time.time()
    failed = 0
    for i in range(0, streams_, 500):
        wave = await asyncio.gather(
            *(
                open_conn(port, _request("GET", paths[j % len(paths)]), marker)
                for j in range(i, min(streams_, i + 500))
            ),
            return_exceptions=True,
        )
        ok = [c for c in wave if isinstance(c, Conn)]
        failed += len(wave) - len(ok)
        await asyncio.wait_for(asyncio.gather(*(c.live for c in ok)), 60)
        conns += ok
    result["open_s"] = time.time() - opened
    pings_before = [c.raw.count(b": ping") for c in conns]
    await asyncio.sleep(hold)
    held = await stats(port, gc=True)
    alive = 0
    pinged = 0
    for conn, before in zip(conns, pings_before, strict=True):
        if not conn.done.done():
            alive += 1
            if conn.raw.count(b": ping") > before:
                pinged += 1
    result.update(
        streams=streams_, alive=alive, pinged=pinged, failed=failed, rss_streams=held["rss"]
    )
    result["tasks"] = held["tasks"]
    for conn in conns:
        conn.close()
    await asyncio.sleep(0.5)
    return result


async def main_async(port: int, job: dict[str, Any]) -> Any:
    kind = job.pop("job")
    jobs = {
        "streams": streams,
        "fanout": fanout,
        "resume": resume,
        "idle": idle,
        "first_event": first_event,
        "short_runs": short_runs,
    }
    return await jobs[kind](port, **job)


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port, job = int(sys.argv[1]), json.loads(sys.argv[2])
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    print(json.dumps(run(main_async(port, job))))


if __name__ == "__main__":
    main()
