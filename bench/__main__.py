"""``python -m bench``: agentos against a bare sse-starlette endpoint, in the same run.

Scenario: one background+stream run of N EchoModel events at zero delay, persisted to SQLite,
read end to end by one client over 127.0.0.1; the ceiling emits the same frames with no buffer
or store. Both run in one uvicorn process (a subprocess); they are measured alternately, several
rounds, and the best round of each is compared. Also prints memory per buffered event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx

from agentos import Event, Settings
from agentos.buffer import EventBuffer
from agentos.events import dumps


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def read_stream(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: object
) -> tuple[float, int]:
    """Seconds from request to the last byte, and the number of data frames received."""
    started = time.perf_counter()
    body = bytearray()
    async with client.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            body += chunk
    elapsed = time.perf_counter() - started
    frames = body.count(b"\nid: ") + body.startswith(b"id: ")
    return elapsed, frames


async def throughput(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"agentos": [], "bare": [], "events_per_commit": []}
    expected = n + 2
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for _ in range(rounds):
            t, frames = await read_stream(client, "GET", "/bare", params={"n": n})
            assert frames == expected, (frames, expected)
            results["bare"].append(expected / t)
            before = (await client.get("/health")).json()
            t, frames = await read_stream(
                client,
                "POST",
                "/agents/bench/runs",
                data={"message": " ".join(f"w{i}" for i in range(n)), "background": "true"},
            )
            assert frames == expected, (frames, expected)
            results["agentos"].append(expected / t)
            after = (await client.get("/health")).json()
            written = after["events_written"] - before["events_written"]
            assert written == expected, (written, expected)  # every event is in SQLite
            commits = after["commits"] - before["commits"]
            results["events_per_commit"].append(written / commits)
    return results


def memory_per_buffered_event(n: int = 20_000) -> tuple[float, float]:
    """Memory the buffer adds per event beyond the payload string, and the payload's own size.

    The payload strings exist before the measurement starts (the committer made them), so what
    tracemalloc sees is the buffer's own cost: the Event object and its slot in the run's list.
    """
    settings = Settings(
        buffer_max_events_per_run=n,
        buffer_max_bytes_per_run=1 << 40,
        buffer_max_bytes_total=1 << 40,
    )
    payloads = [
        dumps(
            {
                "event": "RunContent",
                "event_index": i,
                "run_id": "6f1c2b7e-8d1a-4c5e-9f3b-2a7d9e4b1c0a",
                "session_id": "0b9e8d7c-6a5f-4e3d-2c1b-0a9f8e7d6c5b",
                "agent_id": "bench",
                "created_at": 1763700000.123,
                "content": f" word{i}",
            }
        )
        for i in range(n)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    buffers = EventBuffer(settings)
    buffers.open("run")
    buffers.publish("run", [Event(i, "RunContent", payloads[i]) for i in range(n)])
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n, statistics.mean(sys.getsizeof(p) for p in payloads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        db_url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.server", str(port), db_url],
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "AGENTOS_BUFFER_MAX_EVENTS_PER_RUN": str(args.events + 10)},
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            results = asyncio.run(throughput(url, args.events, args.rounds))
        finally:
            server.terminate()
            server.wait(timeout=30)

    best_agentos, best_bare = max(results["agentos"]), max(results["bare"])
    overhead, payload = memory_per_buffered_event()
    print(f"one background+stream run, {args.events} events, SQLite, best of {args.rounds}")
    print(
        f"  bare sse-starlette : {best_bare:10.0f} events/s   rounds: "
        + ", ".join(f"{r:.0f}" for r in results["bare"])
    )
    print(
        f"  agentos            : {best_agentos:10.0f} events/s   rounds: "
        + ", ".join(f"{r:.0f}" for r in results["agentos"])
    )
    print(f"  ratio agentos/bare : {best_agentos / best_bare:10.2f}   (target >= 0.5)")
    batching = statistics.mean(results["events_per_commit"])
    print(f"  events per SQLite transaction (group commit): {batching:.0f}")
    print(
        f"memory per buffered event: {overhead + payload:.0f} B = payload {payload:.0f} B + overhead {overhead:.0f} B"
    )


if __name__ == "__main__":
    main()
