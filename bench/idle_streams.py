"""``python -m bench.idle_streams``: idle resumed streams held on one instance, pings on time.

One bench server (``bench/server.py``, agentos and its ceiling ``/bare``) holds ``--streams``
idle streams with pings every ``--ping`` seconds. agentos: 1,000 gated runs wait (RUNNING) and
the streams resume them (each gets ``catch_up``, ``RunStarted``, ``subscribed``, then only
pings); the ceiling: as many idle ``/bare`` streams (sse-starlette's ``EventSourceResponse``).

What it takes, and how it is met:

- A socket is a file descriptor: the server needs ``RLIMIT_NOFILE`` above the number of streams.
  This process raises its soft limit (and its hard limit when it may: root with
  ``CAP_SYS_RESOURCE``) and its children inherit it; when it cannot, it stops and says what is
  needed.
- The client side is several processes (``--workers``; each holds its share of the sockets and
  stamps the arrival of every ping), so that neither one process's descriptors nor one Python
  loop's CPU bound the count.
- A client has about 28,000 ephemeral ports per server address and port
  (``net.ipv4.ip_local_port_range``): the server listens on one port of 127.0.0.1 per 10,000
  streams (``--more-ports``).
- Streams connect in bounded batches (``--batch`` per worker at once).

"Pings on time": after every stream is in, the idle window of ``--hold`` seconds begins. For
every stream, the gaps between what it received (the last arrival before the window, then each
ping in it, then the window's end) are compared with the ping interval: lateness = gap -
interval. Reported: streams held (open at the end) and pinged (at least one ping in the window),
p50 / p99 / max lateness over all gaps, the server's RSS per stream and its CPU per ping.

    python -m bench.idle_streams                       # 10,000 streams, pings every 2 s
    python -m bench.idle_streams --streams 19000 --ping 5 --hold 30
    python -m bench --only 6 --idle-streams 50000      # the same from the suite

Results go to stdout and to a section of ``bench/RESULTS.md`` (``--no-write``: stdout only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from bench import sections
from bench.client import Conn, _request, call
from bench.server import gated_message, running
from bench.stats import pctl
from tests.servers import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
#: Where this benchmark's section of RESULTS.md begins (``python -m bench`` keeps it).
MARKER = "<!-- bench.idle_streams -->"
#: Descriptors a bench server needs beyond its streams (database, listeners, runs, slack).
SERVER_SPARE = 500
STREAMS_PER_PORT = 10_000
RUNS = 1_000
KiB = 1024


class NotEnoughDescriptors(RuntimeError):
    """The file-descriptor limit cannot be raised as far as the streams need."""


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise this process's ``RLIMIT_NOFILE`` to at least ``needed`` (soft, and hard if it must);
    its children inherit it. Returns the limits in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
    except (ValueError, OSError) as exc:
        raise NotEnoughDescriptors(
            f"{needed:,} file descriptors are needed (one per stream plus {SERVER_SPARE}), but "
            f"the limit is {soft:,} (hard {hard:,}) and this process may not raise it ({exc}): "
            "raising the hard limit needs root with CAP_SYS_RESOURCE. Raise it before, e.g. "
            f"`ulimit -Hn {needed} && ulimit -n {needed}` in a root shell, `LimitNOFILE={needed}` "
            f"in a systemd unit, `--ulimit nofile={needed}` for docker; or hold fewer streams "
            f"(at most {max(0, hard - SERVER_SPARE):,} under this hard limit)."
        ) from exc
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- the worker: one client process ------------------------------------------------------------


class IdleConn(Conn):
    """A stream that also stamps the arrival of each ping once it is live."""

    def __init__(self, marker: bytes) -> None:
        super().__init__(marker)
        self.pings: list[float] = []
        self.quiet_since = 0.0  # the arrival of the last frame that was not a ping

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.live.done():
            if b": ping" in data:
                self.pings.append(now)
            else:
                self.quiet_since = now
            return
        super().data_received(data)
        self.quiet_since = now


async def _connect(port: int, path: str, marker: bytes) -> IdleConn:
    conn = IdleConn(marker)
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: conn, "127.0.0.1", port)
    conn.sent = time.time()
    assert conn.transport is not None
    conn.transport.write(_request("GET", path))
    await asyncio.wait_for(conn.live, 60)
    return conn


def lateness(conn: IdleConn, start: float, end: float, interval: float) -> list[float]:
    """How late each gap of ``conn`` in the window ``[start, end]`` came, beyond ``interval``:
    from its last arrival before the window to the first ping in it, between pings, and from
    the last ping to the window's end (only when that is already late)."""
    before = [t for t in conn.pings if t <= start]
    previous = max(before[-1] if before else conn.quiet_since, conn.quiet_since)
    late = []
    for at in (t for t in conn.pings if start < t <= end):
        late.append(at - previous - interval)
        previous = at
    if end - previous > interval:
        late.append(end - previous - interval)
    return late


async def worker(job: dict[str, Any], commands: IO[str]) -> None:
    """Open ``job["count"]`` streams, say so, then stamp pings until told the window."""
    ports, paths, marker = job["ports"], job["paths"], job["marker"].encode()
    first, count, batch = job["first"], job["count"], job["batch"]
    conns: list[IdleConn] = []
    failed = 0
    began = time.time()
    for i in range(first, first + count, batch):
        wave = await asyncio.gather(
            *(
                _connect(ports[j % len(ports)], paths[j % len(paths)], marker)
                for j in range(i, min(first + count, i + batch))
            ),
            return_exceptions=True,
        )
        for found in wave:
            if isinstance(found, IdleConn):
                conns.append(found)
            else:
                failed += 1
    print(json.dumps({"connected": len(conns), "failed": failed, "open_s": time.time() - began}))
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, commands.readline)
    start, end = (float(x) for x in line.split())
    late: list[float] = []
    held = pinged = 0
    for conn in conns:
        if conn.done.done():
            continue
        held += 1
        if any(start < t <= end for t in conn.pings):
            pinged += 1
        late += lateness(conn, start, end, job["interval"])
    for conn in conns:
        conn.close()
    print(
        json.dumps(
            {"held": held, "pinged": pinged, "late": [round(x, 4) for x in late], "failed": failed}
        )
    )
    sys.stdout.flush()


# -- the measurement ---------------------------------------------------------------------------


@contextlib.contextmanager
def bench_server(tmp: Path, name: str, ports: list[int], env: dict[str, str]) -> Iterator[str]:
    """This tree's bench server listening on ``ports``; yields its base URL."""
    with running(tmp / f"{name}.db", ports, env=env) as url:
        yield url


def _stats(url: str, gc: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(
        f"{url}/bench/stats" + ("?gc=1" if gc else ""), timeout=60
    ).json()
    return found


async def _gated_runs(port: int, runs: int) -> list[str]:
    form = {"message": gated_message("idle", 1, 0), "background": "true", "stream": "false"}
    ids: list[str] = []
    for i in range(0, runs, 200):
        batch = await asyncio.gather(
            *(call(port, "POST", "/agents/gated/runs", form) for _ in range(min(200, runs - i)))
        )
        ids += [r["run_id"] for r in batch]
    return ids


def side(
    tmp: Path, name: str, streams: int, workers: int, ping: float, hold: float, batch: int
) -> dict[str, Any]:
    """Hold ``streams`` idle streams of one side (``agentos`` or ``bare``) on a fresh server."""
    ports = [free_port() for _ in range(max(1, math.ceil(streams / STREAMS_PER_PORT)))]
    env = {
        "AGENTOS_PING_INTERVAL": str(ping),
        "AGENTOS_MAX_STREAMS": str(streams + 1_000),
    }
    result: dict[str, Any] = {"side": name, "streams": streams, "ports": len(ports)}
    with bench_server(tmp, f"idle-{name}", ports, env) as url:
        result["rss_base"] = _stats(url, gc=True)["rss"]
        if name == "agentos":
            ids = asyncio.run(_gated_runs(ports[0], RUNS))
            time.sleep(1.0)  # let the RUNNING updates commit
            paths = [f"/agents/gated/runs/{r}/resume?last_event_index=-1" for r in ids]
        else:
            paths = ["/bare?n=1&gate=idle&meta=1"]
        result["rss_runs"] = _stats(url, gc=True)["rss"]
        share = math.ceil(streams / workers)
        procs = []
        began = time.time()
        for w in range(workers):
            count = min(share, streams - w * share)
            job = {
                "ports": ports,
                "paths": paths,
                "marker": "event: subscribed",
                "first": w * share,
                "count": count,
                "batch": batch,
                "interval": ping,
            }
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.idle_streams", "--worker"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            procs.append(proc)
        try:
            opened = [_read(proc) for proc in procs]
            result["open_s"] = time.time() - began
            result["connected"] = sum(o["connected"] for o in opened)
            # The connections' own pings first (those that came in together ping together).
            time.sleep(max(1.0, ping))
            start = time.time()
            cpu = _stats(url)["cpu"]
            time.sleep(hold)
            end = time.time()
            after = _stats(url)
            result["full_gcs"] = after["full_collections"]
            result["longest_gc"] = after["longest_full_collection"]
            # gc.collect() of 20,000 streams holds the loop for seconds: only after the window.
            result["rss_streams"] = _stats(url, gc=True)["rss"]
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(f"{start} {end}\n")
                proc.stdin.flush()
            reports = [_read(proc) for proc in procs]
        finally:
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=60)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    late = sorted(x for r in reports for x in r["late"])
    result.update(
        held=sum(r["held"] for r in reports),
        pinged=sum(r["pinged"] for r in reports),
        failed=sum(r["failed"] for r in reports),
        gaps=len(late),
        late_p50=pctl(late, 0.5) if late else 0.0,
        late_p99=pctl(late, 0.99) if late else 0.0,
        late_max=late[-1] if late else 0.0,
        late_over_1s=sum(1 for x in late if x > 1.0),
        cpu_ms_per_s=(after["cpu"] - cpu) * 1000 / (end - start),
        window_s=end - start,
    )
    return result


def _read(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"an idle_streams worker exited ({proc.wait()})")
    found: dict[str, Any] = json.loads(line)
    return found


def measure(
    streams: int,
    ping: float,
    hold: float,
    workers: int | None = None,
    batch: int = 250,
    sides: tuple[str, ...] = ("bare", "agentos"),
    write: bool = True,
) -> list[dict[str, Any]]:
    """Both sides in turn; the results, printed and (``write``) in RESULTS.md."""
    limits = raise_nofile(streams + SERVER_SPARE)
    workers = workers or max(2, math.ceil(streams / 5_000))
    load = os.getloadavg()
    began = time.time()
    results = []
    with tempfile.TemporaryDirectory() as name:
        for which in sides:
            print(f"idle streams: {streams:,} {which} streams, pings every {ping:g} s", flush=True)
            results.append(side(Path(name), which, streams, workers, ping, hold, batch))
    lines = report(results, streams, ping, hold, workers, limits, load, time.time() - began)
    print("\n".join(lines))
    if write:
        sections.write_section(MARKER, lines, RESULTS)
        print(f"wrote {RESULTS}")
    return results


def report(
    results: list[dict[str, Any]],
    streams: int,
    ping: float,
    hold: float,
    workers: int,
    limits: tuple[int, int],
    load: tuple[float, float, float],
    took: float,
) -> list[str]:
    header = [
        "side",
        "held",
        "pinged",
        "connect (s)",
        "gaps",
        "lateness p50 / p99 / max (ms)",
        "gaps > 1 s late",
        "server RSS",
        "per stream",
        "server CPU (ms/s)",
        "full GCs in the window, longest (ms)",
    ]
    rows = []
    for r in results:
        rows.append(
            [
                r["side"],
                f"{r['held']:,} / {r['streams']:,}",
                f"{r['pinged']:,}",
                f"{r['open_s']:.1f}",
                f"{r['gaps']:,}",
                f"{r['late_p50'] * 1000:,.0f} / {r['late_p99'] * 1000:,.0f} / "
                f"{r['late_max'] * 1000:,.0f}",
                f"{r['late_over_1s']:,}",
                f"{r['rss_streams'] / 2**20:,.0f} MiB",
                f"{(r['rss_streams'] - r['rss_runs']) / r['streams'] / KiB:.1f} KiB",
                f"{r['cpu_ms_per_s']:.0f}",
                f"{r['full_gcs']}, {r['longest_gc'] * 1000:,.0f}",
            ]
        )
    lines = [
        f"## Idle capacity: {streams:,} streams on one instance (`python -m bench.idle_streams`)",
        "",
        f"Written on {time.strftime('%Y-%m-%d %H:%M')}: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, uvicorn `--loop asyncio --http h11`; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} before, {took:.0f} s. Pings every {ping:g} s "
        f"({streams / ping:,.0f} pings/s), an idle window of {hold:g} s, {workers} client "
        f"processes, RLIMIT_NOFILE {limits[0]:,} (hard {limits[1]:,}). How it is measured: the "
        "docstring of `bench/idle_streams.py`. Lateness: a gap between two arrivals at a stream "
        "minus the ping interval. One socket per stream: how many one instance holds is bounded "
        "by RLIMIT_NOFILE ([NOTES.md](NOTES.md), Session 5).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_streams", description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000, help="idle streams to hold")
    parser.add_argument("--ping", type=float, default=2.0, help="ping interval (s)")
    parser.add_argument("--hold", type=float, default=10.0, help="idle window (s)")
    parser.add_argument("--workers", type=int, help="client processes (default: 1 per 5,000)")
    parser.add_argument("--batch", type=int, default=250, help="connects at once per worker")
    parser.add_argument("--sides", default="bare,agentos", help="bare, agentos or both")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(sys.stdin.readline())
        try:
            import uvloop

            uvloop.run(worker(job, sys.stdin))
        except ImportError:
            asyncio.run(worker(job, sys.stdin))
        return
    try:
        measure(
            args.streams,
            args.ping,
            args.hold,
            args.workers,
            args.batch,
            tuple(args.sides.split(",")),
            not args.no_write,
        )
    except NotEnoughDescriptors as exc:
        raise SystemExit(f"python -m bench.idle_streams: {exc}") from None


if __name__ == "__main__":
    main()
