"""``python -m bench.tail_latency``: how soon a client tailing a run from another instance sees
an event, with PostgreSQL LISTEN/NOTIFY and with polling.

Two instances (RunManagers with their own engines and instance ids) share a scratch PostgreSQL
database in this process. The owner runs agents that emit an event every ``--interval`` seconds.
For each event we take two arrival times: at a follower on the owner (the event is published:
committed and in the owner's buffer) and at a follower on the other instance (tailing from the
database). The difference is the tail latency; p50/p99 are printed per mode. Both followers share
one event loop and one clock, so the figures include no clock skew, only scheduling.

The database server is ``AGENTOS_TEST_PG_URL`` (default postgres@127.0.0.1:5432/test); a database
``agentos_bench_<random>`` is created on it and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import make_url

from agentos import Agent, Event, RunContext, RunManager, Settings
from bench.stats import pctl

BASE_URL = os.environ.get(
    "AGENTOS_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _ticker(events: int, interval: float) -> Agent:
    async def tick(message: str, ctx: RunContext) -> AsyncIterator[str]:
        for i in range(events):
            await asyncio.sleep(interval)
            yield f"t{i} "

    return Agent(id="ticker", fn=tick)


async def _arrivals(manager: RunManager, run_id: str) -> dict[int, float]:
    stream = await manager.open_stream(run_id, -1, meta=False)
    assert stream is not None
    seen: dict[int, float] = {}
    async for item in stream.events():
        if isinstance(item, Event):
            seen[item.index] = time.perf_counter()
    return seen


async def _measure(url: str, notify: bool, args: argparse.Namespace) -> list[float]:
    base = {"db_url": url, "tail_poll_interval": args.poll_interval, "tail_notify": notify}
    owner = RunManager(Settings(instance_id=f"owner-{uuid.uuid4().hex[:6]}", **base))
    other = RunManager(Settings(instance_id=f"other-{uuid.uuid4().hex[:6]}", **base))
    agent = _ticker(args.events, args.interval)
    owner.register(agent)
    await owner.start()
    await other.start()
    try:
        if notify and not other.notifier.listening:
            raise SystemExit("LISTEN connection did not come up")
        runs = [
            await owner.start_run(agent, "go", run_id=f"bench-{uuid.uuid4().hex}")
            for _ in range(args.runs)
        ]
        results = await asyncio.gather(
            *(_arrivals(owner, r.run_id) for r in runs),
            *(_arrivals(other, r.run_id) for r in runs),
        )
    finally:
        await other.aclose()
        await owner.aclose()
    local, remote = results[: args.runs], results[args.runs :]
    latencies = []
    for published, tailed in zip(local, remote, strict=True):
        assert published.keys() == tailed.keys()
        # Skip the first events: the remote follower joins (and connects) after they commit.
        latencies += [tailed[i] - published[i] for i in published if i >= args.skip]
    return latencies


async def main(args: argparse.Namespace) -> None:
    name = f"agentos_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_dsn(BASE_URL))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(BASE_URL).set(database=name).render_as_string(hide_password=False)
    try:
        print(
            f"{args.runs} runs x {args.events} events, one every {args.interval * 1000:.0f} ms; "
            f"poll interval {args.poll_interval * 1000:.0f} ms"
        )
        print(f"{'mode':<16}{'events':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        for label, notify in (("LISTEN/NOTIFY", True), ("polling", False)):
            lat = await _measure(url, notify, args)
            print(
                f"{label:<16}{len(lat):>8}{statistics.median(lat) * 1000:>10.2f}"
                f"{pctl(lat, 0.99) * 1000:>10.2f}{max(lat) * 1000:>10.2f}"
            )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tail_latency", description=__doc__)
    parser.add_argument("--runs", type=int, default=4, help="runs followed at once")
    parser.add_argument("--events", type=int, default=200, help="events per run")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between events")
    parser.add_argument("--skip", type=int, default=20, help="first events of a run not counted")
    parser.add_argument(
        "--poll-interval", type=float, default=0.5, help="tail_poll_interval (the fallback)"
    )
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
