"""Benchmark of the task scheduler (issue 13): N tasks on a 1-second interval for D seconds.

    python -m bench.tasks --quick                     # SQLite, 1 instance, 100 tasks, 10 s
    python -m bench.tasks --tasks 1000 --seconds 60   # the issue's numbers, SQLite
    python -m bench.tasks --pg URL --instances 3      # PostgreSQL, 3 instances in this process

Reports the share of occurrences fired exactly once (every expected occurrence has one run), the
firing lag p50/p99 (run committed minus occurrence time), CPU per occurrence (the whole process:
the instances' schedulers and the runs; ``--profile`` splits out the scheduler's share) and SQL
statements per occurrence (the scheduler's, and everything's).

The tasks fire for D seconds; then the benchmark waits until every expected occurrence has its
run (or ``--settle`` seconds have passed) before it pauses the tasks and counts, so that a late
firing counts as late (in the lag), not as missing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentos import Agent, AgentOS, EchoModel, Settings
from agentos.backends.sql import SQLStore
from agentos.schedules import occurrence_id

#: The scheduler's statements: claims, active runs, releases, next wake-up (the runs' own
#: inserts and updates are the rest).
_SCHEDULER_SQL = ("agentos_tasks", "task_id IN")


async def _run(
    url: str, instances: int, tasks: int, seconds: float, settle: float, profile: bool
) -> None:
    oses = [
        AgentOS(
            agents=[Agent(id="echo", model=EchoModel(0))],
            settings=Settings(db_url=url, instance_id=f"bench-{n}"),
        )
        for n in range(instances)
    ]
    statements = scheduler_statements = executions = scheduler_executions = 0
    counting = False

    def count(
        conn: object,
        cursor: object,
        statement: str,
        parameters: object,
        context: object,
        many: bool,
    ) -> None:
        nonlocal statements, scheduler_statements, executions, scheduler_executions
        if counting:
            rows = len(parameters) if many and isinstance(parameters, list | tuple) else 1
            statements += 1
            executions += rows
            if any(marker in statement for marker in _SCHEDULER_SQL):
                scheduler_statements += 1
                scheduler_executions += rows

    lags: dict[float, float] = {}  # occurrence time -> worst lag (over tasks)
    all_lags: list[float] = []
    for served in oses:
        await served.__aenter__()
        served.tasks.observer = all_lags.append
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
    await asyncio.sleep(max(0.0, start_at + 0.5 - time.time()))
    profiler = cProfile.Profile() if profile else None
    counting = True
    cpu = time.process_time()
    if profiler is not None:
        profiler.enable()
    end = start_at + seconds
    await asyncio.sleep(end + 0.5 - time.time())
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - cpu
    counting = False
    fired_in_window = len(all_lags)
    expected = [occurrence_id(start_at + k) for k in range(1, int(seconds) + 1)]
    deadline = time.time() + settle
    while time.time() < deadline:
        created = await _count_runs(oses[0], start_at, end)
        if created >= tasks * len(expected):
            break
        await asyncio.sleep(0.5)
    for n in range(tasks):
        await oses[0].tasks.pause(f"b{n}")
    once = 0
    for n in range(tasks):
        got = [r.occurrence for r in await oses[0].tasks.runs(f"b{n}", limit=1000)]
        once += sum(1 for o in expected if got.count(o) == 1)
        for run in await oses[0].tasks.runs(f"b{n}", limit=1000):
            if run.occurrence in expected:
                at = start_at + expected.index(run.occurrence) + 1
                lags[at] = max(lags.get(at, 0.0), run.created_at - at)
    total = tasks * len(expected)
    ordered = sorted(all_lags)
    fired = max(1, fired_in_window)
    print(f"{url.split(':')[0]} x{instances}: {tasks} tasks, {seconds:g} s, {total} occurrences")
    print(f"  fired exactly once: {once / total:.2%} ({once} of {total})")
    if ordered:
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(
            f"  lag p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms (run committed minus occurrence time)"
        )
        worst = sorted(lags.values())
        print(f"  slowest task per second: median {statistics.median(worst) * 1000:.0f} ms")
    print(f"  CPU per occurrence {cpu / fired * 1000:.2f} ms (process: schedulers and runs)")
    print(
        f"  SQL statements per occurrence {statements / fired:.3f} "
        f"(scheduler {scheduler_statements / fired:.3f}); counting each row of an executemany "
        f"{executions / fired:.3f} (scheduler {scheduler_executions / fired:.3f})"
    )
    if profiler is not None:
        stats = pstats.Stats(profiler)
        total_cpu = stats.total_tt  # type: ignore[attr-defined]
        scheduler = next(
            (v[3] for k, v in stats.stats.items() if k[2] == "fire_due"),  # type: ignore[attr-defined]
            0.0,
        )
        print(
            f"  profile: scheduler passes {scheduler / fired * 1000:.3f} ms per occurrence "
            f"of {total_cpu / fired * 1000:.3f} ms profiled (its own steps, not its waits)"
        )
        stats.sort_stats("tottime").print_stats(15)
    for served in oses:
        await served.__aexit__(None, None, None)


async def _count_runs(served: AgentOS, start_at: float, end: float) -> int:
    store = served.manager.store
    assert isinstance(store, SQLStore)
    query = sa.text(
        "SELECT count(*) FROM agentos_runs WHERE task_id IS NOT NULL AND occurrence >= :lo "
        "AND occurrence <= :hi"
    )
    async with store.engine.connect() as conn:
        found = await conn.scalar(
            query, {"lo": occurrence_id(start_at + 1), "hi": occurrence_id(end)}
        )
    return int(found or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--pg", help="a PostgreSQL URL (postgresql+asyncpg://...)")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="most seconds to wait for late runs"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the firing window")
    parser.add_argument("--quick", action="store_true", help="100 tasks for 10 s")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seconds = 100, 10
    with tempfile.TemporaryDirectory() as tmp:
        url = args.pg or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        asyncio.run(_run(url, args.instances, args.tasks, args.seconds, args.settle, args.profile))


if __name__ == "__main__":
    main()
