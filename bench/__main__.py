"""``python -m bench``: how fast agentos moves events, how far it scales, what it costs.

Every scenario measures agentos and its ceiling in the same run: a bare sse-starlette endpoint
(``/bare`` in ``bench/server.py``) on the same uvicorn process that emits the same frames with no
run manager, group commit, buffer or store. The client (``bench/client.py``) is a separate
process with raw asyncio sockets; it alternates ceiling and agentos round by round. Results go to
stdout, ``bench/RESULTS.md`` and ``bench/ratios.png``.

    python -m bench                 # the whole suite (about 4 minutes on 2 cores)
    python -m bench --quick         # smaller sizes, fewer rounds
    python -m bench --only 1,4      # some scenarios
    python -m bench --only 6 --idle-streams 19000   # scenario 6 at that size, pings timed
    python -m bench --only 8 --baseline f726746     # 200 x 200 against that commit's code
    python -m bench --loop uvloop --http httptools --section speed   # the speed extra's stack

The head of RESULTS.md (and the chart) is the plain stack's (``--loop asyncio --http h11``);
a run on another stack goes to a section of its own with ``--section``. Both begin with a table
of issue 15's targets as measured in that run.

The run queue and the model relay have their own benchmarks, ``python -m bench.queue`` and
``python -m bench.model_relay``; their sections of RESULTS.md are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import idle_streams, sections
from bench import server as bench_server
from bench.memory import buffered_event_cost
from bench.sections import kept_sections
from bench.stats import pctl
from bench.trees import export
from tests.servers import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

KiB = 1024


@contextlib.contextmanager
def server(
    tmp: Path,
    name: str,
    loop: str,
    http: str,
    env: dict[str, str] | None = None,
    tree: Path = ROOT,
) -> Iterator[int]:
    """A fresh bench server (agentos + ceiling) on its own SQLite file; yields its port.
    ``tree``: the code to run, this tree or another commit's (``bench/trees.py``)."""
    port = free_port()
    env = {"AGENTOS_BUFFER_MAX_EVENTS_PER_RUN": "20000", **(env or {})}
    with bench_server.running(tmp / f"{name}.db", [port], loop=loop, http=http, env=env, tree=tree):
        yield port


def client(port: int, **job: Any) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "bench.client", str(port), json.dumps(job)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench client failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def paired_ratio(result: dict[str, list[dict[str, Any]]], key: str) -> float:
    """Median over rounds of agentos/bare, each round's pair measured back to back."""
    return statistics.median(
        a[key] / b[key] for a, b in zip(result["agentos"], result["bare"], strict=True)
    )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ratios: list[tuple[str, float, float | None]] = []  # label, ratio, target
        #: Issue 15's targets as measured: (target, what was measured, whether it holds).
        self.targets: list[tuple[str, str, bool]] = []

    def section(self, title: str, about: str) -> None:
        print(f"\n{title}", flush=True)
        self.lines += ["", f"## {title}", "", about, ""]

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
        for row in [header, *rows]:
            print("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "---|" * len(header))
        for row in rows:
            self.lines.append("| " + " | ".join(str(x) for x in row) + " |")
        self.lines.append("")

    def note(self, text: str) -> None:
        print("  " + text)
        self.lines += [text, ""]

    def target(self, target: str, measured: str, holds: bool) -> None:
        self.targets.append((target, measured, holds))

    def summary(self) -> list[str]:
        """The targets of issue 15 (Performance) measured in this run, as a table."""
        if not self.targets:
            return []
        lines = ["", "## Issue 15's targets in this run", ""]
        lines += ["| target | measured | |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {verdict(ok)} |" for t, m, ok in self.targets]
        return lines


def verdict(ok: bool) -> str:
    return "**holds**" if ok else "**misses**"


def scenario_1(port: int, rep: Report, rounds: int) -> dict[str, Any]:
    rep.section(
        "1. One background+stream run, 10,000 events",
        "One client POSTs `background=true` (streaming) to the `bench` agent (EchoModel, zero "
        "delay, 9,998 words): 10,000 events committed to SQLite in groups, then streamed. The "
        "ceiling is `GET /bare?n=9998`: an async generator that builds the same payload dicts, "
        "serialises them with the same `dumps` and yields one `ServerSentEvent` per frame to "
        "`EventSourceResponse` (same ping, `sep`), no manager, buffer or store. agentos sends "
        "the events that are ready together in one write (same frames, fewer sends); for "
        "comparison, `bare-batched` is the ceiling doing the same with 1,000 frames per send "
        "(about what agentos sends at once here). Events/s = 10,000 / (request sent to last "
        "byte).",
    )
    sides = ("bare", "bare-batched", "agentos")
    res = client(port, job="streams", rounds=rounds, runs=1, events=10_000, sides=sides)
    ratio = paired_ratio(res, "events_per_s")
    batched = statistics.median(
        a["events_per_s"] / b["events_per_s"]
        for a, b in zip(res["agentos"], res["bare-batched"], strict=True)
    )
    rows = []
    for side in sides:
        rs = res[side]
        rows.append(
            [
                side,
                f"{med(rs, 'events_per_s'):,.0f}",
                f"{max(r['events_per_s'] for r in rs):,.0f}",
                f"{med(rs, 'cpu_us_per_event'):.1f}",
                ", ".join(f"{r['events_per_s']:,.0f}" for r in rs),
            ]
        )
    rep.table(["side", "median ev/s", "best ev/s", "server CPU µs/event", "rounds"], rows)
    rep.note(
        f"ratio (median of paired rounds): **{ratio:.2f}**; target >= 0.8: "
        f"{verdict(ratio >= 0.8)}. Against `bare-batched`: {batched:.2f}."
    )
    rep.ratios.append(("1: one run ev/s", ratio, 0.8))
    rep.target(
        "4. one run of 10,000 events >= 0.8 of `bare-batched` (scenario 1)",
        f"{batched:.2f}",
        batched >= 0.8,
    )
    rep.ratios.append(("1: same, vs batched ceiling", batched, None))
    return res


def scenario_2(port: int, rep: Report, rounds: int, events: int, paced: int, rate: float) -> None:
    rep.section(
        "2. Fan-out: one run, 500 subscribers",
        "500 clients resume one `gated` run (it has emitted `RunStarted` and waits) and are all "
        "live (`subscribed`) before the gate opens; the run then emits its events. The ceiling: "
        "500 clients of `GET /bare?gate=...&meta=1`, each its own generator waiting on the same "
        "gate and then yielding the same frames. Delivered events/s = events received by all "
        "clients / (gate opened to last byte). Lag = arrival at the client minus the event's "
        "`created_at` (set when the event is emitted, before its commit); each subscriber's p99, "
        "then the slowest subscriber. Burst: events at zero delay (lag is then the time to drain "
        f"the burst; the ceiling stamps `created_at` as it yields, so its burst lag is not "
        f"comparable). Paced: {rate:.0f} events/s, a fast model's token rate. `bare-batched` "
        "(burst only) joins 1,000 frames per send, as agentos does with a burst.",
    )
    sides = ("bare", "bare-batched", "agentos")
    burst = client(
        port, job="fanout", rounds=rounds, subscribers=500, events=events, delay=0, sides=sides
    )
    interval = 1 / rate
    steady = client(port, job="fanout", rounds=1, subscribers=500, events=paced, delay=interval)
    ratio = paired_ratio(burst, "events_per_s")
    batched = statistics.median(
        a["events_per_s"] / b["events_per_s"]
        for a, b in zip(burst["agentos"], burst["bare-batched"], strict=True)
    )
    rows = []
    for side in sides:
        b = burst[side]
        s = steady.get(side)
        rows.append(
            [
                side,
                f"{med(b, 'events_per_s'):,.0f}",
                f"{med(b, 'cpu_us_per_delivery'):.2f}",
                f"{med(b, 'p99_lag_slowest_s') * 1000:,.0f}",
                "" if s is None else f"{med(s, 'p99_lag_slowest_s') * 1000:,.1f}",
                "" if s is None else f"{med(s, 'p99_lag_median_sub_s') * 1000:,.1f}",
            ]
        )
    rep.table(
        [
            "side",
            f"burst delivered ev/s ({events} ev)",
            "server CPU µs/delivery",
            "burst p99 lag, slowest (ms)",
            f"paced p99 lag, slowest (ms, {paced} ev)",
            "paced p99 lag, median sub (ms)",
        ],
        rows,
    )
    lag = med(steady["agentos"], "p99_lag_slowest_s")
    rep.note(
        f"delivered ev/s ratio: **{ratio:.2f}** (against `bare-batched`: {batched:.2f}). "
        f"Slowest subscriber's p99 lag at {rate:.0f} ev/s: {lag * 1000:.1f} ms; target < 1 s: "
        f"{verdict(lag < 1.0)}"
    )
    rep.ratios.append(("2: fan-out delivered ev/s", ratio, None))
    rep.ratios.append(("2: same, vs batched ceiling", batched, None))


def scenario_3(port: int, rep: Report, rounds: int, runs: int) -> dict[str, Any]:
    rep.section(
        f"3. {runs:,} concurrent background+stream runs of 100 events",
        f"{runs:,} connections at once each POST a background streaming run of 98 words "
        "(100 events) and read it to the end; the ceiling is as many `GET /bare?n=98` at once. "
        "Total events/s = all events / (first request to last byte of the last stream); run "
        "time = request sent to its last byte.",
    )
    res = client(port, job="streams", rounds=rounds, runs=runs, events=100)
    ratio = paired_ratio(res, "events_per_s")
    rows = []
    for side in ("bare", "agentos"):
        rs = res[side]
        rows.append(
            [
                side,
                f"{med(rs, 'events_per_s'):,.0f}",
                f"{med(rs, 'p50_run_s') * 1000:,.0f}",
                f"{med(rs, 'p99_run_s') * 1000:,.0f}",
                f"{med(rs, 'cpu_us_per_event'):.1f}",
            ]
        )
    rep.table(["side", "events/s", "p50 run (ms)", "p99 run (ms)", "server CPU µs/event"], rows)
    rep.note(f"ratio: **{ratio:.2f}**; target >= 0.8: {verdict(ratio >= 0.8)}")
    rep.ratios.append((f"3: {runs} runs ev/s", ratio, 0.8))
    return res


def scenario_4(port: int, rep: Report, requests: int) -> None:
    rep.section(
        "4. Resume latency",
        "Two ended runs of 1,000 events; one stays in the buffer, the other's buffer is dropped "
        "(as when its time to live has passed) so it is served from SQLite. Each request resumes "
        "at a random cursor; the time is from sending the request to the arrival of the first "
        "missed event (after the `replay` meta frame). The ceiling is `GET /bare?after=...&meta=1`"
        " (same frames made on the fly). Requests go one at a time, alternating the three.",
    )
    res = client(port, job="resume", requests=requests, events=1000)
    rows = []
    for side, target in (("bare", None), ("buffer", 0.005), ("database", 0.015)):
        values = res[side]
        p99 = pctl(values, 0.99)
        rows.append(
            [
                side,
                f"{pctl(values, 0.5) * 1000:.2f}",
                f"{p99 * 1000:.2f}",
                "" if target is None else f"<= {target * 1000:.0f} ms: {verdict(p99 <= target)}",
            ]
        )
        if target is not None:
            rep.target(
                f"2. resume to first missed event p99 <= {target * 1000:.0f} ms, {side} "
                "(scenario 4)",
                f"{p99 * 1000:.2f} ms",
                p99 <= target,
            )
    rep.table(["source", "p50 (ms)", "p99 (ms)", "target (p99)"], rows)
    bare99 = pctl(res["bare"], 0.99)
    rep.ratios.append(("4: resume p99, buffer (inv.)", bare99 / pctl(res["buffer"], 0.99), None))
    rep.ratios.append(
        ("4: resume p99, database (inv.)", bare99 / pctl(res["database"], 0.99), None)
    )


def scenario_7(port: int, rep: Report, rounds: int, runs: int) -> None:
    rep.section(
        "7. Time to the first event",
        "From sending a streaming create (`background=true`) to the arrival of the run's first "
        "event (`RunStarted`, committed): `flood` is the `bench` agent with 9,998 words at zero "
        "delay (its producer emits as fast as it can while the first events commit), `idle` a "
        "`gated` run whose producer waits after `RunStarted`; the ceiling is the first frame of "
        "`GET /bare?n=9998`. A fresh server; one request at a time, the three alternating; each "
        "stream is read to its end before the next request. Then one-chunk runs (the `bench` "
        "agent with one word: create, `RunStarted`, `RunContent`, `RunCompleted`, streamed to the "
        "end), one at a time: the server's CPU per run.",
    )
    res = client(port, job="first_event", rounds=rounds, words=9_998)
    rows = []
    for side in ("bare", "idle", "flood"):
        values = res[side]
        rows.append(
            [
                side,
                f"{pctl(values, 0.5) * 1000:.1f}",
                f"{pctl(values, 0.99) * 1000:.1f}",
                f"{max(values) * 1000:.1f}",
            ]
        )
    rep.table(["side", "p50 (ms)", "p99 (ms)", "max (ms)"], rows)
    p99 = pctl(res["flood"], 0.99)
    rep.note(
        f"{len(res['flood'])} runs each. p99 of a flooding run's first event: "
        f"**{p99 * 1000:.1f} ms**; target <= 10 ms: {verdict(p99 <= 0.010)}"
    )
    rep.ratios.append(("7: first event p99, flood (inv.)", pctl(res["bare"], 0.99) / p99, None))
    rep.target(
        "1. create to first event p99 <= 10 ms, producer at full speed (scenario 7)",
        f"{p99 * 1000:.1f} ms (idle producer {pctl(res['idle'], 0.99) * 1000:.1f} ms)",
        p99 <= 0.010,
    )
    short = client(port, job="short_runs", runs=runs)
    rep.table(
        ["one-chunk runs, one at a time", "server CPU per run", "p50 (ms)", "p99 (ms)", "commits"],
        [
            [
                f"{runs} runs: create, 3 events, streamed",
                f"{short['cpu_ms_per_run']:.2f} ms",
                f"{short['p50_s'] * 1000:.1f}",
                f"{short['p99_s'] * 1000:.1f}",
                f"{short['commits_per_run']:.1f} per run",
            ]
        ],
    )
    cpu = short["cpu_ms_per_run"]
    rep.note(f"CPU per one-chunk run: **{cpu:.2f} ms**; target <= 3 ms: {verdict(cpu <= 3.0)}")
    rep.target("3. server CPU per one-chunk run <= 3 ms (scenario 7)", f"{cpu:.2f} ms", cpu <= 3.0)


#: The code before issue 15's work: "today's" in its target 5 (scenario 8).
BASELINE_15 = "f726746"


def scenario_8(tmp: Path, rep: Report, rounds: int, rev: str) -> None:
    """200 runs x 200 events on the plain stack: this tree, the code of ``rev`` (its own bench
    server, exported from git) and the ceiling, in turn round by round."""
    runs, events = 200, 200
    rep.section(
        f"8. {runs} concurrent runs x {events} events on the plain stack, against {rev}",
        f"As scenario 3 with {runs} background streaming runs of {events} events, on uvicorn "
        f"`--loop asyncio --http h11` whatever the suite's options: this tree, the code of "
        f"`{rev}` (before issue 15's work; `git archive` into a temporary directory and its own "
        "`bench.server` from there, its own SQLite file) and the ceiling (`/bare` on this "
        "tree's server). The three take turns, one round each in a rotating order; a first "
        "round of each is not counted. Run time = request sent to its last byte; CPU = that "
        "server process's.",
    )
    baseline = export(rev, tmp)
    with (
        server(tmp, "plain", "asyncio", "h11") as here,
        server(tmp, "plain-base", "asyncio", "h11", tree=baseline) as base,
    ):
        sides = [("bare", here, "bare"), (rev, base, "agentos"), ("agentos", here, "agentos")]
        res: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in sides}
        for r in range(rounds + 1):
            for label, port, side in sides[r % 3 :] + sides[: r % 3]:
                job = client(port, job="streams", rounds=1, runs=runs, events=events, sides=[side])
                if r:
                    res[label].append(job[side][0])
    rows = []
    for label, rs in res.items():
        rows.append(
            [
                label if label != rev else f"agentos at {rev}",
                f"{med(rs, 'events_per_s'):,.0f}",
                f"{med(rs, 'p50_run_s') * 1000:,.0f}",
                f"{med(rs, 'p99_run_s') * 1000:,.0f}",
                f"{max(r['p99_run_s'] for r in rs) * 1000:,.0f}",
                f"{med(rs, 'cpu_us_per_event'):.1f}",
                ", ".join(f"{r['events_per_s']:,.0f}" for r in rs),
            ]
        )
    rep.table(
        [
            "side",
            "events/s",
            "p50 run (ms)",
            "p99 run (ms)",
            "worst round p99 (ms)",
            "server CPU µs/event",
            "rounds (ev/s)",
        ],
        rows,
    )
    ratio = statistics.median(
        a["events_per_s"] / b["events_per_s"] for a, b in zip(res["agentos"], res[rev], strict=True)
    )
    ceiling = statistics.median(
        a["events_per_s"] / b["events_per_s"]
        for a, b in zip(res["agentos"], res["bare"], strict=True)
    )
    p99 = med(res["agentos"], "p99_run_s")
    rep.note(
        f"{rounds} rounds. events/s against {rev} (median of paired rounds): **{ratio:.2f}x**; "
        f"target >= 1.5x: {verdict(ratio >= 1.5)}. p99 run completion: **{p99:.2f} s**; target "
        f"< 3 s: {verdict(p99 < 3.0)}. Against the ceiling: {ceiling:.2f}."
    )
    rep.ratios.append((f"8: 200x200 ev/s vs {rev} (not ceiling)", ratio, 1.5))
    rep.target(
        f"5. 200 runs x 200 events: events/s >= 1.5x {rev}'s (scenario 8)",
        f"{ratio:.2f}x",
        ratio >= 1.5,
    )
    rep.target("5. same, p99 run completion < 3 s", f"{p99:.2f} s", p99 < 3.0)


def scenario_5_6(
    tmp: Path,
    rep: Report,
    loop: str,
    http: str,
    streams: int,
    runs: int,
    batching: list[tuple[str, dict[str, Any]]],
) -> None:
    cost = buffered_event_cost()
    edge = buffered_event_cost(5_000, " {}" + "x" * 290)  # just under the frame cache limit
    big = buffered_event_cost(2_000, " {}" + "x" * 4000)
    env = {"AGENTOS_PING_INTERVAL": "2"}
    idle = {}
    for side in ("floor", "bare", "agentos"):
        with server(tmp, f"idle-{side}", loop, http, env) as port:
            idle[side] = client(
                port, job="idle", side=side, streams_=streams, runs=runs, hold=5.0, ping=2.0
            )
    a, b = idle["agentos"], idle["bare"]
    per_run = (a["rss_runs"] - a["rss_base"]) / a["runs"]
    per_sub = (a["rss_streams"] - a["rss_runs"]) / a["streams"]
    per_bare = (b["rss_streams"] - b["rss_base"]) / b["streams"]
    f = idle["floor"]
    per_floor = (f["rss_streams"] - f["rss_base"]) / f["streams"]

    rep.section(
        "5. Cost",
        "Memory per buffered event: in-process, tracemalloc around an `EventBuffer` holding "
        "20,000 typical events that have all been streamed once (so any per-event frame cache "
        "is filled), plus the JSON text objects; overhead = that minus the JSON text's bytes. "
        "Idle runs and subscribers: resident memory (VmRSS, after `gc.collect()`) of a fresh "
        "server before and after; the ceiling for a subscriber is an idle `/bare` stream.",
    )
    rows = [
        [
            "per buffered event (~250 B JSON)",
            f"{cost.total:.0f} B",
            f"{cost.overhead:.0f} B beyond {cost.payload:.0f} B of JSON",
            f"< 1 KiB: {verdict(cost.overhead < KiB)}",
        ],
        [
            "per buffered event (~500 B JSON, largest with a cached frame)",
            f"{edge.total:,.0f} B",
            f"{edge.overhead:,.0f} B beyond {edge.payload:,.0f} B of JSON",
            f"< 1 KiB: {verdict(edge.overhead < KiB)}",
        ],
        [
            "per buffered event (~4 KiB JSON)",
            f"{big.total:,.0f} B",
            f"{big.overhead:,.0f} B beyond {big.payload:,.0f} B of JSON",
            f"< 1 KiB: {verdict(big.overhead < KiB)}",
        ],
        [
            "per idle subscriber (resumed stream)",
            f"{per_sub / KiB:.1f} KiB",
            f"ceiling (EventSourceResponse) {per_bare / KiB:.1f} KiB (ratio "
            f"{per_sub / per_bare:.2f}); the stack's floor (Starlette StreamingResponse, no "
            f"sse-starlette) {per_floor / KiB:.1f} KiB; agentos beyond the floor "
            f"{(per_sub - per_floor) / KiB:.1f} KiB",
            f"<= floor + 2 KiB: {verdict(per_sub - per_floor <= 2 * KiB)}",
        ],
        ["per idle run (RUNNING, no subscriber)", f"{per_run / KiB:.1f} KiB", "", ""],
    ]
    for label, res in batching:
        written = sum(r["events_written"] for r in res["agentos"])
        commits = sum(r["commits"] for r in res["agentos"])
        rows.append(
            [
                f"database transactions per event, {label}",
                f"{commits / written:.4f}",
                f"{written / commits:,.0f} events per transaction",
                "",
            ]
        )
    rep.table(["what", "cost", "detail", "target"], rows)
    rep.ratios.append(("5: idle subscriber memory (inv.)", per_bare / per_sub, None))
    rep.target(
        "6. idle resumed stream <= the stack's floor + 2 KiB (scenario 5)",
        f"{per_sub / KiB:.1f} KiB, floor {per_floor / KiB:.1f} KiB",
        per_sub - per_floor <= 2 * KiB,
    )

    rep.section(
        "6. Idle capacity",
        f"A fresh server with pings every 2 s. agentos: {runs:,} gated runs wait (RUNNING), then "
        f"{streams:,} streams resume them (each gets `catch_up`, `RunStarted`, `subscribed`) and "
        "stay idle for 5 s; the ceiling holds as many idle `/bare` streams. A stream counts as "
        "held if it is still open after the 5 s and received a ping during them.",
    )
    rows = []
    for side, r in (("bare", b), ("agentos", a)):
        rows.append(
            [
                side,
                f"{r['alive']:,} / {r['streams']:,}",
                f"{r['pinged']:,}",
                f"{r['open_s']:.1f}",
                f"{r['rss_streams'] / 2**20:,.0f} MiB",
                f"{(r['rss_streams'] - r['rss_runs']) / r['streams'] / KiB:.1f} KiB",
            ]
        )
    rep.table(
        ["side", "held", "pinged", "open time (s)", "server RSS", "per stream"],
        rows,
    )
    rep.ratios.append(("6: idle streams held", a["pinged"] / max(b["pinged"], 1), None))
    rep.target(
        f"6. {a['streams']:,} idle resumed streams held and pinged (scenario 6; 50,000: "
        "`--idle-streams`)",
        f"{a['alive']:,} held, {a['pinged']:,} pinged",
        a["alive"] == a["pinged"] == a["streams"],
    )


def idle_capacity(streams: int, ping: float, write: bool) -> None:
    """Scenario 6 at ``streams`` idle streams, several client processes, pings timed
    (``bench/idle_streams.py``; its section of RESULTS.md is its own)."""
    try:
        idle_streams.measure(streams, ping, hold=max(10.0, 6 * ping), write=write)
    except idle_streams.NotEnoughDescriptors as exc:
        raise SystemExit(f"python -m bench --idle-streams {streams}: {exc}") from None


def chart(ratios: list[tuple[str, float, float | None]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed (pip install -e '.[bench]'): {path.name} not redrawn")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.55 * len(ratios) + 1.4))
    labels = [r[0] for r in ratios][::-1]
    values = [r[1] for r in ratios][::-1]
    colors = []
    for _, value, target in ratios[::-1]:
        colors.append("#999999" if target is None else "#2a9d4b" if value >= target else "#d1495b")
    ax.barh(labels, values, color=colors)
    for i, value in enumerate(values):
        ax.text(value * 1.05, i, f"{value:.2f}", va="center")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvline(0.8, color="#d1495b", linewidth=0.8, linestyle="--", label="target 0.8 (1 and 3)")
    ax.set_xscale("log")
    ax.set_xlim(min(0.1, min(values) / 1.5), max(2.0, max(values) * 2))
    ticks = [t for t in (0.1, 0.25, 0.5, 0.8, 1, 2, 5, 10, 20, 50, 100) if t <= max(values) * 2]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("agentos / ceiling, log scale (inverted for latency and memory); 1 = ceiling")
    ax.set_title("agentos against a bare sse-starlette endpoint, same run")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8", help="scenarios to run, e.g. 1,3")
    parser.add_argument("--loop", default="auto", help="uvicorn --loop: auto, asyncio, uvloop")
    parser.add_argument("--http", default="auto", help="uvicorn --http: auto, h11, httptools")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of scenario 1")
    parser.add_argument(
        "--idle-streams",
        type=int,
        help="scenario 6 at this many streams with bench.idle_streams (its own section)",
    )
    parser.add_argument("--idle-ping", type=float, default=5.0, help="ping interval for that")
    parser.add_argument("--baseline", default=BASELINE_15, help="commit scenario 8 compares")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md/png")
    parser.add_argument(
        "--section",
        help="write the results into RESULTS.md's section bench.SECTION instead of its head, "
        "no chart (e.g. --loop uvloop --http httptools --section speed)",
    )
    args = parser.parse_args()
    only = {int(x) for x in args.only.split(",")}
    q = args.quick
    rounds1 = args.rounds or (3 if q else 7)

    rep = Report()
    started = time.time()
    load_before = load()
    batching: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with server(tmp, "main", args.loop, args.http) as port:
            info = httpx.get(f"http://127.0.0.1:{port}/bench/stats").json()
            if 1 in only:
                batching.append(("scenario 1", scenario_1(port, rep, rounds1)))
            if 2 in only:
                scenario_2(port, rep, 1 if q else 3, 200 if q else 1000, 50 if q else 150, 50.0)
            if 3 in only:
                runs = 1000
                batching.append(("scenario 3", scenario_3(port, rep, 1 if q else 3, runs)))
            if 4 in only:
                scenario_4(port, rep, 40 if q else 200)
        if 6 in only and args.idle_streams:
            idle_capacity(args.idle_streams, args.idle_ping, not args.no_write)
            only -= {6}
        if only & {5, 6}:
            scenario_5_6(
                tmp, rep, args.loop, args.http, 2000 if q else 10_000, 200 if q else 1000, batching
            )
        if 7 in only:
            with server(tmp, "first-event", args.loop, args.http) as port:
                scenario_7(port, rep, 30 if q else 200, 200 if q else 1000)
        if 8 in only:
            scenario_8(tmp, rep, 2 if q else 7, args.baseline)
    elapsed = time.time() - started
    load_after = load()
    print(f"\nsuite took {elapsed:.0f} s; load average before {load_before}, after {load_after}")
    if args.no_write or not rep.lines:  # nothing of the suite's own ran (--idle-streams)
        return
    written = (
        "Written by `python -m bench"
        + "".join(f" {arg}" for arg in sys.argv[1:])
        + f"` on {time.strftime('%Y-%m-%d %H:%M')}:"
        f" {os.cpu_count()} cores, Python {platform.python_version()}, uvicorn event loop"
        f" `{info['loop']}`, HTTP `{info['http']}`, SQLite (WAL, synchronous=NORMAL)."
        f" The suite took {elapsed:.0f} s; load average (1, 5, 15 min) {load_before} before and"
        f" {load_after} after."
    )
    results = HERE / "RESULTS.md"
    if args.section:
        body = [
            line.replace("## ", "### ", 1) if line.startswith("## ") else line
            for line in rep.summary() + rep.lines
        ]
        title = f"## `python -m bench` on `{info['loop']}` and `{info['http']}`"
        sections.write_section(f"{sections.PREFIX}{args.section} -->", [title, "", written, *body])
        print(f"wrote the section {args.section} of {results}")
        return
    head = [
        "# Benchmark results",
        "",
        written,
        "Server, ceiling and client share the 2 cores: the client process"
        " competes with the server, and other work on the machine adds noise, which is why"
        " each scenario measures agentos and its ceiling alternately in the same run.",
        "",
        "The client runs on uvloop when it is installed. What the profiles showed and what each"
        " change gained: [NOTES.md](NOTES.md).",
        "",
        "![agentos / ceiling](ratios.png)",
        *rep.summary(),
    ]
    # The sections the other benchmarks write (bench/sections.py) are kept.
    kept = kept_sections(results)
    results.write_text("\n".join(head + rep.lines).rstrip() + "\n" + kept)
    chart(rep.ratios, HERE / "ratios.png")
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'ratios.png'}")


if __name__ == "__main__":
    main()
