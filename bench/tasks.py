"""Benchmark of the task scheduler (issue 13): N tasks on a 1-second interval for D seconds.

    python -m bench.tasks --quick                     # SQLite, 1 instance, 100 tasks, 10 s
    python -m bench.tasks --tasks 1000 --seconds 60   # the issue's numbers, SQLite
    python -m bench.tasks --pg URL --instances 3      # PostgreSQL, 3 instances in this process

Reports the share of occurrences fired exactly once (every expected occurrence has one run), the
firing lag p50/p99 (run created minus occurrence time), process CPU per occurrence (scheduler and
runs together: the instances share this process) and SQL statements per occurrence.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentos import Agent, AgentOS, EchoModel, Settings
from agentos.backends.sql import SQLStore
from agentos.schedules import occurrence_id


async def _run(url: str, instances: int, tasks: int, seconds: float) -> None:
    oses = [
        AgentOS(
            agents=[Agent(id="echo", model=EchoModel(0))],
            settings=Settings(db_url=url, instance_id=f"bench-{n}", task_tick=0.2),
        )
        for n in range(instances)
    ]
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    for served in oses:
        await served.__aenter__()
        served.tasks.keep_lags = True
        store = served.manager.store
        assert isinstance(store, SQLStore)
        engine: AsyncEngine = store.engine
        sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
    start_at = float(int(time.time()) + 3)
    for n in range(tasks):
        await oses[0].tasks.create(
            {
                "task_id": f"b{n}",
                "component_id": "echo",
                "message": "x",
                "overlap_policy": "allow_parallel",
                "session_policy": "run",
                "schedule": {"kind": "interval", "every_seconds": 1, "start_at": start_at},
            }
        )
    statements = 0
    cpu = time.process_time()
    end = start_at + seconds
    await asyncio.sleep(end - time.time() + 0.5)
    cpu = time.process_time() - cpu
    used = statements
    for n in range(tasks):
        await oses[0].tasks.pause(f"b{n}")
    expected = [occurrence_id(start_at + k) for k in range(1, int(seconds) + 1)]
    once = 0
    for n in range(tasks):
        got = [r.occurrence for r in await oses[0].tasks.runs(f"b{n}", limit=1000)]
        once += sum(1 for o in expected if got.count(o) == 1)
    total = tasks * len(expected)
    lags = sorted(lag for served in oses for lag in served.tasks.lags)
    fired = max(1, len(lags))
    print(f"{url.split(':')[0]} x{instances}: {tasks} tasks, {seconds:g} s, {total} occurrences")
    print(f"  fired exactly once: {once / total:.2%}")
    if lags:
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        print(f"  lag p50 {statistics.median(lags) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    print(f"  CPU per occurrence {cpu / fired * 1000:.2f} ms (scheduler and runs)")
    print(f"  SQL statements per occurrence {used / fired:.1f} (scheduler and runs)")
    for served in oses:
        await served.__aexit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--pg", help="a PostgreSQL URL (postgresql+asyncpg://...)")
    parser.add_argument("--quick", action="store_true", help="100 tasks for 10 s")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seconds = 100, 10
    with tempfile.TemporaryDirectory() as tmp:
        url = args.pg or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        asyncio.run(_run(url, args.instances, args.tasks, args.seconds))


if __name__ == "__main__":
    main()
