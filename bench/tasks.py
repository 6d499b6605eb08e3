"""Benchmark of the task scheduler (issue 13): N tasks on a 1-second interval for D seconds.

    python -m bench.tasks --quick                     # SQLite, 1 instance, 100 tasks, 10 s
    python -m bench.tasks --tasks 1000 --seconds 60   # the issue's numbers, SQLite
    python -m bench.tasks --pg --instances 3          # PostgreSQL (a scratch database on the
                                                      # test server, or --pg URL), 3 instances
    python -m bench.tasks --set buffer_ttl=5          # with a server setting changed

The instances share this process (and so its one core for Python). Reports:

- each expected occurrence (the D seconds of the window, for every task) by its number of runs:
  exactly once (the target), none (dropped as missed by a scheduler, older than
  ``task_misfire_grace``; or not fired by the end), twice or more;
- the firing lag p50/p99/max of the window's occurrences (run committed minus occurrence time,
  from the scheduler's lag hook);
- CPU per occurrence (the whole process: the schedulers and the runs they start), the share of
  one core the process had, and the machine's load average before and after (the other work on
  the machine takes the rest: a process that gets half a core cannot do what needs a whole one)
  and the share of the window spent in garbage collection;
  ``--profile`` splits out the schedulers' own steps (a CPU-time profile of the event loop's
  thread);
- SQL statements per occurrence (the scheduler's, and everything's).

The tasks fire for D seconds; then the benchmark waits until every expected occurrence has its
run (or ``--settle`` seconds have passed) before it pauses the tasks and counts, so that a late
firing counts as late (in the lag), not as missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import math
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from agentos import Agent, AgentOS, EchoModel, Settings
from agentos.backends.sql import SQLStore
from agentos.schedules import occurrence_id
from bench.stats import pctl

#: The scheduler's statements: claims, active runs, releases, next wake-up (the runs' own
#: inserts and updates are the rest).
_SCHEDULER_SQL = ("agentos_tasks", "task_id IN")


async def _run(
    url: str,
    instances: int,
    tasks: int,
    seconds: float,
    settle: float,
    profile: bool,
    settings: dict[str, Any],
) -> None:
    oses = [
        AgentOS(
            agents=[Agent(id="echo", model=EchoModel(0))],
            settings=Settings(db_url=url, instance_id=f"bench-{n}", **settings),
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

    # The tasks' first occurrence is one interval after start_at; the window begins once they
    # all exist (creating them may take longer than foreseen on a busy machine).
    start_at = float(int(time.time()) + 3 + tasks // 500)
    end = start_at + seconds
    #: Lags of the window's occurrences (the bench's occurrences are whole seconds: the one a
    #: lag stands for is the scheduler's clock reading it was computed from minus the lag,
    #: rounded; not a later reading, which a pause of the process would shift).
    window_lags: list[float] = []
    fired_in_window = 0
    last_reading = 0.0

    def clock() -> float:
        nonlocal last_reading
        last_reading = time.time()
        return last_reading

    def observe(lag: float) -> None:
        nonlocal fired_in_window
        if counting:
            fired_in_window += 1
        if start_at < round(last_reading - lag) <= end:
            window_lags.append(lag)

    for served in oses:
        await served.__aenter__()
        served.tasks.observer = observe
        served.tasks.clock = clock
        store = served.manager.store
        assert isinstance(store, SQLStore)
        engine: AsyncEngine = store.engine
        sa.event.listen(engine.sync_engine, "before_cursor_execute", count)
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
    created = time.time()
    if created > start_at:
        start_at = float(math.ceil(created))
        end = start_at + seconds
        print(
            f"  (creating the tasks took until {created - start_at + 1:.1f} s after the first "
            "occurrence: the window starts at the first one after)"
        )
    await asyncio.sleep(max(0.0, start_at + 0.5 - time.time()))
    # A CPU-time profile of the loop's thread: time spent waiting (for the GIL too) is not
    # counted against the function that waits.
    profiler = cProfile.Profile(time.thread_time) if profile else None
    load_before = os.getloadavg()
    gc_time = 0.0
    gc_started = 0.0

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_time, gc_started
        if phase == "start":
            gc_started = time.perf_counter()
        elif counting:
            gc_time += time.perf_counter() - gc_started

    gc.callbacks.append(gc_timer)
    counting = True
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(end + 0.5 - time.time())
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    counting = False
    gc.callbacks.remove(gc_timer)
    load_after = os.getloadavg()
    expected = [occurrence_id(start_at + k) for k in range(1, int(seconds) + 1)]
    deadline = time.time() + settle
    while time.time() < deadline:
        created = await _count_runs(oses[0], start_at, end)
        if created >= tasks * len(expected):
            break
        await asyncio.sleep(0.5)
    for n in range(tasks):
        await oses[0].tasks.pause(f"b{n}")
    missed = sum(served.tasks.occurrences["missed"] for served in oses)
    once = none = twice = 0
    wanted = set(expected)
    for n in range(tasks):
        got = [r.occurrence for r in await oses[0].tasks.runs(f"b{n}", limit=10_000)]
        counts = {o: 0 for o in expected}
        for occurrence in got:
            if occurrence in wanted:
                counts[occurrence] += 1
        once += sum(1 for c in counts.values() if c == 1)
        none += sum(1 for c in counts.values() if c == 0)
        twice += sum(1 for c in counts.values() if c > 1)
    total = tasks * len(expected)
    fired = max(1, fired_in_window)
    print(f"{url.split(':')[0]} x{instances}: {tasks} tasks, {seconds:g} s, {total} occurrences")
    print(f"  fired exactly once: {once / total:.2%} ({once} of {total})")
    print(
        f"  fired none: {none} (the schedulers dropped {missed} occurrences as missed, older "
        f"than task_misfire_grace); fired twice or more: {twice}"
    )
    ordered = sorted(window_lags)
    if ordered:
        print(
            f"  lag p50 {_ms(statistics.median(ordered))}, p99 {_ms(pctl(ordered, 0.99))}, "
            f"max {_ms(ordered[-1])} (run committed minus occurrence time; "
            f"{len(ordered)} occurrences of the window)"
        )
    print(
        f"  CPU per occurrence {cpu / fired * 1000:.2f} ms (process: schedulers and runs); the "
        f"process had {cpu / wall:.2f} of a core over the window; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} cores); "
        f"garbage collection took {gc_time / wall:.0%} of the window"
    )
    print(
        f"  SQL statements per occurrence {statements / fired:.3f} "
        f"(scheduler {scheduler_statements / fired:.3f}); counting each row of an executemany "
        f"{executions / fired:.3f} (scheduler {scheduler_executions / fired:.3f})"
    )
    if profiler is not None:
        stats = pstats.Stats(profiler)
        total_cpu = stats.total_tt  # type: ignore[attr-defined]
        # The loop, and the batches it fires in tasks of their own.
        scheduler = sum(
            v[3]
            for k, v in stats.stats.items()  # type: ignore[attr-defined]
            if k[2] in ("_run_forever", "_fire_claimed") and k[0].endswith("tasks.py")
        )
        print(
            f"  profile: scheduler loops {scheduler / fired * 1000:.3f} ms per occurrence of "
            f"{total_cpu / fired * 1000:.3f} ms profiled (loop thread CPU; profiling slows it)"
        )
        stats.sort_stats("tottime").print_stats(15)
    for served in oses:
        await served.__aexit__(None, None, None)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


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


@contextlib.contextmanager
def _database(pg: str | None) -> Iterator[str]:
    """The database's URL: SQLite in a temporary directory, the given PostgreSQL database, or
    (``--pg`` alone) a scratch database on the test server, dropped afterwards."""
    if pg == "scratch":
        from tests.pgdb import scratch_database

        with scratch_database() as url:
            yield url
    elif pg is not None:
        yield pg
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"


def _value(text: str) -> Any:
    """A setting's value from the command line: JSON (10, 0.5, true), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument(
        "--pg",
        nargs="?",
        const="scratch",
        help="PostgreSQL: an empty database's URL (postgresql+asyncpg://...), or nothing for a "
        "scratch database on the test server (AGENTOS_TEST_PG_URL)",
    )
    parser.add_argument(
        "--settle", type=float, default=30.0, help="most seconds to wait for late runs"
    )
    parser.add_argument("--profile", action="store_true", help="profile the firing window")
    parser.add_argument("--quick", action="store_true", help="100 tasks for 10 s")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a server setting by its flat name (buffer_ttl=10), for experiments",
    )
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.seconds = 100, 10
    with _database(args.pg) as url:
        settings = {n: _value(v) for n, _, v in (item.partition("=") for item in args.set)}
        asyncio.run(
            _run(
                url,
                args.instances,
                args.tasks,
                args.seconds,
                args.settle,
                args.profile,
                settings,
            )
        )


if __name__ == "__main__":
    main()
