"""Relay overhead of a model run: a fake OpenAI-compatible server streams content deltas, read
once by the openai SDK directly and once through agentos to an SSE client.

    fake server ──chunks──▶ openai SDK (this process)                       "direct"
    fake server ──chunks──▶ agentos (OpenAIChat agent) ──SSE──▶ httpx (this process)  "relay"

Each in its own process (the fake server, the agentos server, this client). Measured, on the
same run (alternating direct and relay rounds):

- deltas/s of one run streaming ``--deltas`` (5,000) content deltas, and the ratio relay/direct
  (target >= 0.9); also against the SDK reading the chunks as plain JSON objects, as agentos
  does (``direct_raw``: the typed path builds a pydantic model per chunk, the larger cost);
- time to first token (request sent to first content delta) over ``--ttft-runs`` short runs,
  and the p50 that agentos adds (target <= 5 ms);
- ``--concurrent`` (100) model runs at once: total deltas/s and the agentos server's CPU time
  per delta (from /proc).

The agentos server runs with the default ``history_runs`` (10) unless ``--history-runs N``. Each
run is a new session (no ``session_id``): a run reads no history then (there is none), while
the code before session 4 made that database read before it called its model.

Results go to stdout and to this benchmark's section of ``bench/RESULTS.md`` (``--no-write``:
stdout only), with the load average before and after (the machine is shared: compare against
the direct SDK of the same run).

Run: ``python -m bench.model_relay [--deltas 5000] [--rounds 5] [--concurrent 100]``.
The servers: ``python -m bench.model_relay fake --port P`` and
``python -m bench.model_relay agentos --port P --model-url URL --db DB_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.sections import write_section

_ROOT = Path(__file__).resolve().parent.parent
RESULTS = _ROOT / "bench" / "RESULTS.md"
#: Where this benchmark's section of RESULTS.md begins (``python -m bench`` keeps it).
MARKER = "<!-- bench.model_relay -->"


# -- the fake model server --------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def _fake_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Streams ``n`` content deltas, ``n`` being the last message's text; one send per delta."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    n = int(request["messages"][-1]["content"])
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    await send(
        {"type": "http.response.body", "body": _chunk({"role": "assistant"}), "more_body": True}
    )
    for i in range(n):
        await send(
            {"type": "http.response.body", "body": _chunk({"content": f"t{i} "}), "more_body": True}
        )
    usage = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "bench-model",
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1},
    }
    tail = _chunk({}, "stop") + b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n"
    await send({"type": "http.response.body", "body": tail, "more_body": False})


def _serve_fake(port: int) -> None:
    import uvicorn

    uvicorn.run(_fake_app, host="127.0.0.1", port=port, log_level="warning")


def _serve_agentos(port: int, model_url: str, db: str, history_runs: int) -> None:
    import uvicorn

    from agentos import Agent, AgentOS, EchoModel, OpenAIChat, Settings

    model = OpenAIChat(model="bench-model", base_url=model_url, api_key="bench")
    settings = Settings(db_url=db, instance_id="bench", history_runs=history_runs)
    agents = [Agent(id="relay", model=model), Agent(id="echo", model=EchoModel())]
    agent_os = AgentOS(agents=agents, settings=settings)
    uvicorn.run(agent_os.app, host="127.0.0.1", port=port, log_level="warning")


# -- the client -------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(_ROOT), str(_ROOT / "clients" / "python")]),
    }
    proc = subprocess.Popen([sys.executable, "-m", "bench.model_relay", *args], cwd=_ROOT, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{args[0]} server did not start")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def _direct(client: Any, n: int) -> tuple[float, float, int]:
    """(seconds to the first delta, seconds in all, deltas) through the openai SDK (one client,
    its connections reused, as agentos does)."""
    start = time.perf_counter()
    first = 0.0
    count = 0
    stream = await client.chat.completions.create(
        model="bench-model",
        messages=[{"role": "user", "content": str(n)}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    if not count:
                        first = time.perf_counter() - start
                    count += 1
    return first, time.perf_counter() - start, count


async def _direct_raw(client: Any, n: int) -> tuple[float, float, int]:
    """Like :func:`_direct`, reading the chunks as JSON objects as agentos does (the SDK's
    ``post(..., cast_to=object, stream=True)``: no pydantic model per chunk)."""
    import openai

    start = time.perf_counter()
    first = 0.0
    count = 0
    stream = await client.post(
        "/chat/completions",
        body={
            "model": "bench-model",
            "messages": [{"role": "user", "content": str(n)}],
            "stream": True,
        },
        cast_to=object,
        stream=True,
        stream_cls=openai.AsyncStream[object],
    )
    async with stream:
        async for chunk in stream:
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    if not count:
                        first = time.perf_counter() - start
                    count += 1
    return first, time.perf_counter() - start, count


async def _relay(http: httpx.AsyncClient, n: int, agent: str = "relay") -> tuple[float, float, int]:
    """(seconds to the first RunContent, seconds to RunCompleted, RunContent events) over SSE."""
    start = time.perf_counter()
    first = 0.0
    count = 0
    failed = False
    async with http.stream(
        "POST", f"/agents/{agent}/runs", data={"message": str(n), "stream": "true"}
    ) as response:
        async for line in response.aiter_lines():
            if line == "event: RunContent":
                if not count:
                    first = time.perf_counter() - start
                count += 1
            elif line == "event: RunCompleted":
                break
            elif line == "event: RunError":
                failed = True
            elif failed and line.startswith("data:"):
                raise RuntimeError(f"the relayed run failed: {line}")
    return first, time.perf_counter() - start, count


async def _measure(
    args: argparse.Namespace, model_url: str, agentos_url: str, pid: int
) -> dict[str, Any]:
    import openai

    limits = httpx.Limits(max_connections=args.concurrent + 10)
    sdk = openai.AsyncOpenAI(base_url=model_url, api_key="bench", max_retries=0)
    async with sdk, httpx.AsyncClient(base_url=agentos_url, timeout=120, limits=limits) as http:
        await _relay(http, 10)  # warm up both paths
        await _direct(sdk, 10)
        direct_rates, raw_rates, relay_rates = [], [], []
        for _ in range(args.rounds):
            _, seconds, count = await _direct(sdk, args.deltas)
            direct_rates.append(count / seconds)
            _, seconds, count = await _direct_raw(sdk, args.deltas)
            raw_rates.append(count / seconds)
            _, seconds, count = await _relay(http, args.deltas)
            assert count == args.deltas, count
            relay_rates.append(count / seconds)
        direct_ttft, relay_ttft, echo_ttft = [], [], []
        for _ in range(args.ttft_runs):
            direct_ttft.append((await _direct(sdk, 5))[0])
            relay_ttft.append((await _relay(http, 5))[0])
            echo_ttft.append((await _relay(http, 5, "echo"))[0])
        per_run = args.concurrent_deltas
        cpu_before = _cpu_seconds(pid)
        start = time.perf_counter()
        results = await asyncio.gather(*(_relay(http, per_run) for _ in range(args.concurrent)))
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds(pid) - cpu_before
    total = sum(r[2] for r in results)
    direct_rate, relay_rate = statistics.median(direct_rates), statistics.median(relay_rates)
    return {
        "deltas": args.deltas,
        "direct_deltas_per_s": round(direct_rate),
        "relay_deltas_per_s": round(relay_rate),
        "ratio": round(relay_rate / direct_rate, 3),
        "direct_raw_deltas_per_s": round(statistics.median(raw_rates)),
        "ratio_to_raw": round(relay_rate / statistics.median(raw_rates), 3),
        "ratio_rounds": [round(r / d, 3) for r, d in zip(relay_rates, direct_rates, strict=True)],
        "direct_ttft_p50_ms": round(statistics.median(direct_ttft) * 1000, 2),
        "relay_ttft_p50_ms": round(statistics.median(relay_ttft) * 1000, 2),
        "echo_agent_ttft_p50_ms": round(statistics.median(echo_ttft) * 1000, 2),
        "added_ttft_p50_ms": round(
            (statistics.median(relay_ttft) - statistics.median(direct_ttft)) * 1000, 2
        ),
        "history_runs": args.history_runs,
        "concurrent_runs": args.concurrent,
        "concurrent_total_deltas_per_s": round(total / elapsed),
        "server_cpu_us_per_delta": round(cpu / total * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model_relay", description=__doc__)
    parser.add_argument("role", nargs="?", choices=["bench", "fake", "agentos"], default="bench")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model-url")
    parser.add_argument("--db")
    parser.add_argument("--deltas", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ttft-runs", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--concurrent-deltas", type=int, default=500)
    parser.add_argument(
        "--history-runs",
        type=int,
        default=10,
        help="the agentos server's history_runs (each run is a new session, whose history is "
        "not read)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    if args.role == "fake":
        _serve_fake(args.port)
        return
    if args.role == "agentos":
        _serve_agentos(args.port, args.model_url, args.db, args.history_runs)
        return
    load_before = os.getloadavg()
    fake_port, agentos_port = _free_port(), _free_port()
    model_url = f"http://127.0.0.1:{fake_port}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite+aiosqlite:///{tmp}/bench.db"
        fake = _start(["fake", "--port", str(fake_port)], fake_port)
        try:
            server = _start(
                [
                    "agentos",
                    *("--port", str(agentos_port), "--model-url", model_url, "--db", db),
                    *("--history-runs", str(args.history_runs)),
                ],
                agentos_port,
            )
            try:
                result = asyncio.run(
                    _measure(args, model_url, f"http://127.0.0.1:{agentos_port}", server.pid)
                )
            finally:
                server.terminate()
                server.wait(timeout=30)
        finally:
            fake.terminate()
            fake.wait(timeout=30)
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=2))
    if not args.no_write:
        _write_section(result, args)
        print(f"wrote {RESULTS}")


def _write_section(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Replace this benchmark's section of RESULTS.md, or add it."""
    r = result
    lines = [
        "## Model relay: one model run through agentos against the openai SDK",
        "",
        f"Written by `python -m bench.model_relay` on {time.strftime('%Y-%m-%d %H:%M')}; load"
        f" average (1 min) {r['load_average_before_after'][0]} before and"
        f" {r['load_average_before_after'][1]} after, on 2 shared cores. A fake"
        " OpenAI-compatible server streams content deltas; the openai SDK reads it directly"
        " (`direct`) and agentos relays it to an SSE client (`relay`), alternately in one run."
        " The server's `history_runs` is"
        f" {r['history_runs']}; each run is a new session. What the profiles showed and what"
        " each change gained: [NOTES.md](NOTES.md) (sessions 3 and 4).",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| one run of {r['deltas']:,} deltas: relay / direct (SDK) deltas/s | "
        f"**{r['ratio']}** ({r['relay_deltas_per_s']:,} / {r['direct_deltas_per_s']:,};"
        f" rounds {', '.join(str(x) for x in r['ratio_rounds'])}) | >= 0.9 |",
        f"| relay / direct reading raw JSON chunks (as agentos does) | {r['ratio_to_raw']}"
        f" ({r['direct_raw_deltas_per_s']:,} deltas/s direct) | |",
        f"| added time to first token, p50 of {args.ttft_runs} runs | "
        f"**{r['added_ttft_p50_ms']} ms** (relay {r['relay_ttft_p50_ms']}, direct"
        f" {r['direct_ttft_p50_ms']}, echo agent {r['echo_agent_ttft_p50_ms']}) | <= 5 ms |",
        f"| {r['concurrent_runs']} concurrent runs of {args.concurrent_deltas} deltas: total"
        f" deltas/s | {r['concurrent_total_deltas_per_s']:,} | |",
        f"| agentos server CPU per relayed delta | {r['server_cpu_us_per_delta']} µs | |",
        "",
    ]
    write_section(MARKER, lines, RESULTS)


if __name__ == "__main__":
    main()
