"""The scale-out deployment in tests: nginx (nginx/agentos.conf) in front of several
``agentos serve`` processes on one database, and an SSE client that resumes through it.

    with serve_cluster(tmp, db_url, env={...}) as c:   # three instances behind nginx
        followed = await follow(client, c.nginx_url, Followed(run_id), deadline=...)
        followed.check_sequence()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from agentos.backends import eventrows
from agentos.events import Event
from tests.pgdb import _dsn, require
from tests.servers import ROOT, ServerProcess, free_port, wait_healthy
from tests.sse import frames

TERMINAL = {"RunCompleted", "RunError", "RunCancelled"}


@dataclass
class Cluster:
    nginx_url: str
    db_url: str
    instances: list[ServerProcess]

    def by_id(self, instance_id: str) -> ServerProcess:
        return next(i for i in self.instances if i.instance_id == instance_id)


def nginx_config(tmp: Path, port: int, upstreams: list[int]) -> Path:
    """nginx.conf around nginx/agentos.conf, with our ports and everything under ``tmp``."""
    site = (ROOT / "nginx" / "agentos.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in upstreams)
    site, n = re.subn(r"(    server 127\.0\.0\.1:\d+ [^\n]*\n)+", servers, site)
    assert n == 1
    site, n = re.subn(r"listen \d+;", f"listen 127.0.0.1:{port};", site)
    assert n == 1
    site, n = re.subn(r"access_log /var/log/nginx/", f"access_log {tmp}/", site)
    assert n == 1
    (tmp / "agentos.conf").write_text(site)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/agentos.conf;
}}
"""
    )
    return conf


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.path.exists(p)), None
    )
    require("nginx", None if nginx else "no nginx binary (apt-get install nginx)")
    assert nginx is not None
    return nginx


@contextlib.contextmanager
def serve_cluster(
    tmp: Path,
    db_url: str,
    *,
    env: Mapping[str, str],
    size: int = 3,
    delay: float = 0.05,
    app: str | None = None,
    start_timeout: float = 60.0,
) -> Iterator[Cluster]:
    """``size`` instances (``inst0``...) on ``db_url`` behind nginx; all killed afterwards."""
    nginx = nginx_binary()
    instances = [
        ServerProcess(
            tmp,
            app=app,
            delay=delay,
            instance_id=f"inst{n}",
            log_level="warning",
            env={"AGENTOS_DB_URL": db_url, **env},
        )
        for n in range(size)
    ]
    port = free_port()
    conf = nginx_config(tmp, port, [i.port for i in instances])
    proxy = None
    try:
        for instance in instances:
            instance.launch()
        for instance in instances:
            instance.wait_ready(start_timeout)
        with (tmp / "nginx.out").open("wb") as out:
            proxy = subprocess.Popen(
                [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")],
                stdout=subprocess.DEVNULL, stderr=out,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_healthy(
            url,
            alive=lambda: proxy is not None and proxy.poll() is None,
            log=(tmp / "nginx.out").read_text,
        )
        yield Cluster(url, db_url, instances)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        for instance in instances:
            instance.kill()


# -- a resuming SSE client ---------------------------------------------------------------------


@dataclass
class Followed:
    run_id: str
    agent: str = "echo"
    events: list[dict[str, Any]] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)  # X-AgentOS-Instance of each response
    connections: int = 0

    @property
    def cursor(self) -> int:
        return self.events[-1]["event_index"] if self.events else -1

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1]["event"] in TERMINAL

    def check_sequence(self) -> None:
        assert [e["event_index"] for e in self.events] == list(range(len(self.events)))
        assert [e["event"] in TERMINAL for e in self.events].count(True) == 1
        assert self.ended


async def read_stream(response: httpx.Response, followed: Followed) -> None:
    """Append the events of an open SSE response to ``followed`` until its terminal event;
    each must come right after the one before."""
    followed.connections += 1
    followed.instances.append(response.headers.get("x-agentos-instance", "?"))
    async for frame in frames(response):
        if frame.id is None:
            continue  # meta frames
        payload = frame.payload
        assert payload["event_index"] == int(frame.id) == followed.cursor + 1, (
            followed.run_id,
            payload,
        )
        followed.events.append(payload)
        if payload["event"] in TERMINAL:
            return


async def follow(
    client: httpx.AsyncClient, base: str, followed: Followed, *, deadline: float
) -> Followed:
    """Resume until the terminal event, reconnecting (with Last-Event-ID) whenever cut off."""
    while not followed.ended:
        assert time.monotonic() < deadline, f"{followed.run_id} did not end: {followed}"
        url = f"{base}/agents/{followed.agent}/runs/{followed.run_id}/resume"
        try:
            async with client.stream(
                "GET", url, headers={"Last-Event-ID": str(followed.cursor)}
            ) as response:
                if response.status_code == 200:
                    await read_stream(response, followed)
                    continue
                await response.aread()
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    return followed


async def create(
    client: httpx.AsyncClient,
    base: str,
    message: str,
    *,
    agent: str = "echo",
    run_id: str | None = None,
    via: str = "header",
) -> httpx.Response:
    """Start a background run (202 JSON); the run id by header or query parameter."""
    headers, params = {}, {}
    if run_id is not None and via == "header":
        headers["X-Run-Id"] = run_id
    elif run_id is not None:
        params["run_id"] = run_id
    response = await client.post(
        f"{base}/agents/{agent}/runs",
        data={"message": message, "stream": "false", "background": "true"},
        headers=headers,
        params=params,
    )
    assert response.status_code == 202, response.text
    return response


async def create_streaming(
    client: httpx.AsyncClient, base: str, message: str, followed: Followed, *, deadline: float
) -> None:
    """Start ``followed``'s run (its own run id) with a streaming create and read what it
    streams, retrying while the run may not exist yet (refused, cut off before any event); a
    409 means it was created and the answer was lost. ``follow`` then resumes the rest."""
    while True:
        assert time.monotonic() < deadline
        try:
            async with client.stream(
                "POST",
                f"{base}/agents/{followed.agent}/runs",
                data={"message": message, "stream": "true", "background": "true"},
                headers={"X-Run-Id": followed.run_id},
            ) as response:
                if response.status_code == 200:
                    await read_stream(response, followed)
                    return
                await response.aread()
                if response.status_code == 409:
                    return
        except httpx.TransportError:
            if followed.events:
                return
        await asyncio.sleep(0.2)


#: The columns of ``agentos_events`` that :func:`stored_events` reads, in its order.
EVENT_ROWS = "SELECT run_id, event_index, name, data, terminal, layout FROM agentos_events"


def stored_events(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Event]]:
    """The events that rows of :data:`EVENT_ROWS` hold (a row may hold several: see
    ``agentos/backends/eventrows.py``), by run, in index order."""
    by_run: dict[str, list[Event]] = {}
    ordered = sorted(rows, key=lambda row: (row["run_id"], row["event_index"]))
    for row in ordered:
        found = eventrows.row_events(
            row["event_index"], row["name"], row["data"], row["terminal"], row["layout"]
        )
        by_run.setdefault(row["run_id"], []).extend(found)
    return by_run


async def pg_query(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one query on the PostgreSQL database ``url``."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()
