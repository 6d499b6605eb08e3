"""``python -m bench.queue``: what the run queue costs a start, and how fast queued runs start.

Every agentos here is a real ``uvicorn`` process (``bench/queue_server.py``: one zero-delay echo
agent) on a fresh database: a SQLite file, or a scratch PostgreSQL database on the test server
(``AGENTOS_TEST_PG_URL``, dropped afterwards). The baseline ("today's direct start") is the code
before the queue, commit 77cc430 by default, exported with ``git archive`` and run side by side
with this tree in the same run.

1. Start latency: one client sends a streaming create (``stream=true``, ``background=true``) and
   times it from sending the request to the arrival of the ``RunStarted`` frame, one request at
   a time, alternating the sides:

   - ``direct``: the baseline, an instance with room starts the run at once;
   - ``local claim``: this tree, an instance with room (a local claim is the direct start now);
   - ``other instance``: this tree, the create goes to an instance that has no room
     (``max_active_runs=0``: the run is QUEUED), another instance claims it; the client's
     stream tails it from the database. On PostgreSQL both wake-ups are LISTEN/NOTIFY; on
     SQLite they are polls (``queue_poll_interval``, ``tail_poll_interval``, defaults).

2. Queued runs started per second: N runs are put in the queue in one transaction while 1 or 3
   instances run (on PostgreSQL a ``queue:`` notification wakes them, on SQLite their poll
   does); the figure is N / (commit to the last ``RunStarted``), and the steady rate between the
   first and the last start. Against it, the baseline's and this tree's direct start: N
   creates (``background=true``, 50 at a time) to one instance with room, N / (first request to
   the last ``RunStarted``).

Results go to stdout and to a section of ``bench/RESULTS.md`` (``--no-write``: stdout only)::

    python -m bench.queue                 # both databases
    python -m bench.queue --quick         # fewer requests and runs
    python -m bench.queue --only sqlite   # or postgres
    python -m bench.queue --baseline none # without the pre-queue code
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from agentos.backends import eventrows
from agentos.backends.base import open_backend
from agentos.events import RunStatus
from agentos.records import RunRecord
from agentos.settings import Settings
from bench import sections
from bench.client import _request, open_conn
from bench.stats import pctl
from bench.trees import export
from tests.pgdb import _dsn, scratch_database
from tests.servers import free_port, wait_healthy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
#: Where this benchmark's section of RESULTS.md begins (``python -m bench`` keeps it).
MARKER = "<!-- bench.queue -->"
WARMUP = 10


# -- servers ------------------------------------------------------------------------------------


def _running(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


@contextlib.contextmanager
def servers(
    tree: Path, db_url: str, count: int, env: dict[str, str] | None = None
) -> Iterator[list[str]]:
    """``count`` instances of the agentos in ``tree`` on ``db_url``, started in turn; yields
    their URLs."""
    procs, urls = [], []
    try:
        for n in range(count):
            port = free_port()
            variables = {
                **os.environ,
                "PYTHONPATH": str(tree),
                "AGENTOS_DB_URL": db_url,
                "AGENTOS_INSTANCE_ID": f"bench{n}-{uuid.uuid4().hex[:6]}",
                **(env or {}),
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-P", str(HERE / "queue_server.py"), "--port", str(port)],
                    cwd=tree,
                    env=variables,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
            # One after the other: SQLite processes creating an empty file's tables at once
            # collide.
            wait_healthy(urls[-1], timeout=60, alive=functools.partial(_running, procs[-1]))
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh database: a SQLite file under ``tmp``, or a scratch PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / (uuid.uuid4().hex + '.db')}"
        return
    with scratch_database() as url:
        yield url


async def _rows(db_url: str, query: str) -> list[Any]:
    if db_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(db_url.partition(":///")[2])) as conn:
            return list(conn.execute(query))
    conn = await asyncpg.connect(_dsn(db_url))
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def _starts(db_url: str) -> list[float]:
    """When each run's first RunStarted was emitted (``created_at``), sorted."""
    # A row may hold several events (agentos/backends/eventrows.py).
    rows = await _rows(
        db_url, "SELECT event_index, name, data, terminal, layout FROM agentos_events"
    )
    return sorted(
        json.loads(event.data)["created_at"]
        for row in rows
        for event in eventrows.row_events(*row)
        if event.name == "RunStarted"
    )


async def _wait_ended(db_url: str, count: int, timeout: float) -> None:
    query = "SELECT count(*) FROM agentos_runs WHERE status IN ('COMPLETED', 'ERROR', 'CANCELLED')"
    deadline = time.monotonic() + timeout
    while (await _rows(db_url, query))[0][0] < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} runs did not end in {timeout} s")
        await asyncio.sleep(0.05)


# -- 1. start latency ---------------------------------------------------------------------------


_CREATE = {"message": "hello", "stream": "true", "background": "true"}
_STARTED = b"event: RunStarted"


async def _start_latency(port: int) -> float:
    """Seconds from sending a streaming create to the arrival of the read that completed its
    RunStarted frame (raw sockets: bench/client.py)."""
    conn = await open_conn(port, _request("POST", "/agents/echo/runs", _CREATE), _STARTED)
    await conn.done
    if not conn.raw.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"create failed: {bytes(conn.raw[:200])!r}")
    for length, at in conn.marks:
        if _STARTED in conn.raw[:length]:
            return at - conn.sent
    raise RuntimeError("no RunStarted frame")


async def _latencies(sides: dict[str, tuple[int, int]]) -> dict[str, list[float]]:
    """Each side's start latencies: ``(port, requests)``; one request at a time, the sides in
    turn, the first WARMUP requests of each not counted."""
    results: dict[str, list[float]] = {side: [] for side in sides}
    for n in range(max(requests for _, requests in sides.values()) + WARMUP):
        for side, (port, requests) in sides.items():
            if n < requests + WARMUP:
                latency = await _start_latency(port)
                if n >= WARMUP:
                    results[side].append(latency)
    return results


def _port(url: str) -> int:
    return int(url.rpartition(":")[2])


def _direct(baseline: Path) -> str:
    """The label of the baseline's direct start (its commit)."""
    return f"direct ({baseline.name.removeprefix('agentos-')})"


def start_latency(kind: str, tmp: Path, baseline: Path | None, requests: int) -> list[list[str]]:
    polled = max(20, requests // 6) if kind == "sqlite" else requests  # polls cost ~1 s each
    cross = "other instance (polling)" if kind == "sqlite" else "other instance (LISTEN/NOTIFY)"
    with contextlib.ExitStack() as stack:
        sides: dict[str, tuple[int, int]] = {}
        if baseline is not None:
            db = stack.enter_context(database(kind, tmp))
            url = stack.enter_context(servers(baseline, db, 1))[0]
            sides[_direct(baseline)] = (_port(url), requests)
        db = stack.enter_context(database(kind, tmp))
        sides["local claim"] = (_port(stack.enter_context(servers(ROOT, db, 1))[0]), requests)
        db = stack.enter_context(database(kind, tmp))
        full = stack.enter_context(servers(ROOT, db, 1, {"AGENTOS_MAX_ACTIVE_RUNS": "0"}))[0]
        stack.enter_context(servers(ROOT, db, 1))  # the instance with room
        sides[cross] = (_port(full), polled)
        results = asyncio.run(_latencies(sides))
    base = None if baseline is None else results[_direct(baseline)]
    rows = []
    for side, values in results.items():
        p50, p99 = pctl(values, 0.5), pctl(values, 0.99)
        versus = ""
        if base is not None and values is not base:
            versus = f"{(p50 - pctl(base, 0.5)) * 1000:+.2f} ms"
        rows.append(
            [kind, side, str(len(values)), f"{p50 * 1000:.2f}", f"{p99 * 1000:.2f}", versus]
        )
    return rows


# -- 2. queued runs started per second ------------------------------------------------------------


async def _enqueue(db_url: str, count: int) -> float:
    """Put ``count`` runs in the queue in one transaction; the time it committed."""
    store = open_backend(Settings(db_url=db_url, instance_id="bench-creator")).store
    await store.open()
    try:
        now = time.time()
        records = [
            RunRecord(
                run_id=f"q-{n:06}",
                kind="agents",
                component_id="echo",
                session_id=f"q-{n:06}",
                status=RunStatus.QUEUED,
                input="hello",
                created_at=now + n * 1e-6,
                updated_at=now,
                attempt=0,
                not_before=now,
            )
            for n in range(count)
        ]
        await store.commit([], [], runs=records)
        committed = time.time()
    finally:
        await store.close()
    if not db_url.startswith("sqlite"):
        await _rows(db_url, "SELECT pg_notify('agentos_control', 'queue:')")
    return committed


def drain(kind: str, tmp: Path, instances: int, runs: int) -> dict[str, Any]:
    with database(kind, tmp) as db, servers(ROOT, db, instances):

        async def measure() -> dict[str, Any]:
            committed = await _enqueue(db, runs)
            await _wait_ended(db, runs, 300)
            starts = await _starts(db)
            owners = Counter(
                row[0] for row in await _rows(db, "SELECT instance_id FROM agentos_runs")
            )
            return {"t0": committed, "starts": starts, "owners": sorted(owners.values())}

        return asyncio.run(measure())


async def _create_many(port: int, runs: int, concurrency: int) -> float:
    """Send ``runs`` background creates, ``concurrency`` at a time (raw sockets:
    bench/client.py); when the first was sent."""
    left = iter(range(runs))
    form = {"message": "hello", "stream": "false", "background": "true"}
    began = time.time()

    async def worker() -> None:
        for _ in left:
            conn = await open_conn(port, _request("POST", "/agents/echo/runs", form))
            await conn.done
            if not conn.raw.startswith(b"HTTP/1.1 202"):
                raise RuntimeError(f"create failed: {bytes(conn.raw[:200])!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return began


def direct_rate(kind: str, tmp: Path, tree: Path, runs: int) -> dict[str, Any]:
    with database(kind, tmp) as db, servers(tree, db, 1) as (url,):

        async def measure() -> dict[str, Any]:
            for _ in range(WARMUP):  # warm the server up
                await _start_latency(_port(url))
            began = await _create_many(_port(url), runs, 50)
            await _wait_ended(db, runs + WARMUP, 300)
            starts = (await _starts(db))[WARMUP:]
            return {"t0": began, "starts": starts, "owners": [runs]}

        return asyncio.run(measure())


def _rate_measures(baseline: Path | None) -> list[tuple[str, Path | None, int]]:
    """(label, the tree whose direct start is measured or None for the queue, instances) of
    each throughput measurement."""
    direct: list[tuple[str, Path | None, int]] = []
    if baseline is not None:
        direct.append((_direct(baseline), baseline, 1))
    direct.append(("direct (this tree)", ROOT, 1))
    return [*direct, ("queued, 1 instance", None, 1), ("queued, 3 instances", None, 3)]


def rate(result: dict[str, Any]) -> dict[str, Any]:
    """Started/s from the first request or the enqueue (``total``), started/s between the first
    and the last start (``steady``), seconds to the first start, runs per instance."""
    starts, t0 = result["starts"], result["t0"]
    return {
        "runs": len(starts),
        "total": len(starts) / (starts[-1] - t0),
        "steady": (len(starts) - 1) / (starts[-1] - starts[0]) if starts[-1] > starts[0] else 0,
        "first": starts[0] - t0,
        "owners": " / ".join(str(n) for n in result["owners"]),
    }


def rate_row(kind: str, label: str, rounds: list[dict[str, Any]]) -> list[str]:
    """The median of each figure over the rounds (runs per instance: the last round's)."""
    return [
        kind,
        label,
        str(rounds[-1]["runs"]),
        f"{statistics.median(r['total'] for r in rounds):,.0f}",
        f"{statistics.median(r['steady'] for r in rounds):,.0f}",
        f"{statistics.median(r['first'] for r in rounds) * 1000:,.0f}",
        ", ".join(f"{r['total']:,.0f}" for r in rounds),
        rounds[-1]["owners"],
    ]


# -- report ---------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  " + "  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def write_section(lines: list[str]) -> None:
    """Replace this benchmark's section of RESULTS.md (or add it)."""
    sections.write_section(MARKER, lines, RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests and runs")
    parser.add_argument("--only", default="sqlite,postgres", help="databases: sqlite,postgres")
    parser.add_argument("--baseline", default="77cc430", help="commit before the queue, or none")
    parser.add_argument("--requests", type=int, help="start latency requests per side")
    parser.add_argument("--runs", type=int, help="runs per throughput measurement")
    parser.add_argument("--parts", default="latency,rates", help="what to measure")
    parser.add_argument("--rounds", type=int, help="rounds of the throughput measurements")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    kinds = [k for k in ("sqlite", "postgres") if k in args.only.split(",")]
    parts = set(args.parts.split(","))
    requests = args.requests or (60 if args.quick else 300)
    runs = args.runs or (500 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 3)
    began, load = time.time(), os.getloadavg()
    latency_rows: list[list[str]] = []
    rate_rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        baseline = None if args.baseline == "none" else export(args.baseline, tmp)
        for kind in kinds:
            if "latency" in parts:
                print(f"\n{kind}: start latency", flush=True)
                for row in start_latency(kind, tmp, baseline, requests):
                    print("  " + "  ".join(row), flush=True)
                    latency_rows.append(row)
            if "rates" not in parts:
                continue
            print(f"{kind}: runs started per second", flush=True)
            measures = _rate_measures(baseline)
            results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in measures}
            for _ in range(rounds):  # the measurements in turn, round after round
                for label, tree, size in measures:
                    if tree is not None:
                        found = rate(direct_rate(kind, tmp, tree, runs))
                    else:
                        found = rate(drain(kind, tmp, size, runs))
                    print(f"  {label}: {found}", flush=True)
                    results[label].append(found)
            rate_rows += [rate_row(kind, label, found) for label, found in results.items()]
    print()
    lines = [
        "## Run queue (`python -m bench.queue`)",
        "",
        f"Written on {time.strftime('%Y-%m-%d %H:%M')}: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"before, {time.time() - began:.0f} s. How it is measured: the docstring of "
        "`bench/queue.py`; what it means: [NOTES.md](NOTES.md#run-queue).",
        "",
        "Start latency, create to `RunStarted` at the client (ms; `vs direct` is the p50 "
        "difference against the baseline):",
        "",
    ]
    lines += table(["db", "side", "requests", "p50", "p99", "vs direct"], latency_rows)
    lines += [
        "Runs started per second (`queued`: N runs put in the queue at once; `direct`: N "
        "creates, 50 at a time; medians of the rounds, measured in turn; `first start` is the "
        "wait before the first one started):",
        "",
    ]
    lines += table(
        [
            "db",
            "how",
            "runs",
            "started/s",
            "steady/s",
            "first start (ms)",
            "rounds (started/s)",
            "runs per instance",
        ],
        rate_rows,
    )
    if not args.no_write:
        write_section(lines)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
