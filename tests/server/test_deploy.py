"""The deployment files of README.md ("Deploy") are checked, since no container engine or
systemd runs here: the unit's structure and command, the Containerfile's paths and command, the
TLS server block under ``nginx -t`` with a self-signed certificate, and the PostgreSQL role and
database statements of the README against the local server."""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.pgdb import BASE_URL, _dsn, require
from tests.servers import ROOT, ServerProcess, free_port

DEPLOY = ROOT / "deploy"


def _serve_options() -> str:
    help_text = subprocess.run(
        [sys.executable, "-m", "agentos", "serve", "--help"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    return help_text


def _check_serve_command(argv: list[str]) -> None:
    """``argv`` is ``agentos serve`` with options that ``agentos serve --help`` lists."""
    assert Path(argv[0]).name == "agentos" and argv[1] == "serve", argv
    options = _serve_options()
    for arg in argv[2:]:
        if arg.startswith("--"):
            assert f"{arg.split('=')[0]} " in options, arg


def test_the_systemd_unit_is_well_formed_and_runs_agentos_serve() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "agentos.service").read_text())
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    _check_serve_command(shlex.split(service["ExecStart"]))
    assert service["KillSignal"] == "SIGTERM" and "AGENTOS_INSTANCE_ID" in service["Environment"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        # Without systemd running, verify still parses the unit; it reports the missing binary,
        # which a build machine does not have, and nothing else may be wrong.
        checked = subprocess.run(
            [analyze, "verify", str(DEPLOY / "agentos.service")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        problems = [
            line for line in checked.stderr.splitlines()
            if "agentos.service" in line and "/opt/agentos/venv/bin/agentos" not in line
            and "Failed to prepare filename" not in line and "Command" not in line
        ]  # fmt: skip
        assert not [p for p in problems if "Unknown" in p or "Invalid" in p], checked.stderr


def test_the_containerfile_copies_files_that_exist_and_runs_a_valid_command() -> None:
    lines = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ").splitlines()
    instructions = [line.split(None, 1) for line in lines if line.strip() and line[0] != "#"]
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "HEALTHCHECK", "CMD"}
    assert {op for op, _ in instructions} <= known
    assert instructions[0][0] == "FROM"
    for op, rest in instructions:
        if op == "COPY":
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
    cmd = json.loads(next(rest for op, rest in instructions if op == "CMD"))
    _check_serve_command(cmd)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    healthcheck = next(rest for op, rest in instructions if op == "HEALTHCHECK")
    assert "/health/live" in healthcheck


def test_the_tls_server_block_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    openssl = shutil.which("openssl")
    require("nginx", None if nginx else "no nginx binary")
    require("openssl", None if openssl else "no openssl binary")
    assert nginx is not None and openssl is not None
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=agentos.example.com", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    site = (DEPLOY / "nginx-tls.conf").read_text()
    site = re.sub(r"/etc/letsencrypt/live/[^;]*/fullchain\.pem", str(cert), site)
    site = re.sub(r"/etc/letsencrypt/live/[^;]*/privkey\.pem", str(key), site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    site = site.replace("listen 443 ssl", f"listen 127.0.0.1:{free_port()} ssl")
    assert str(cert) in site and str(key) in site
    (tmp_path / "site.conf").write_text(site)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"{user}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n access_log {tmp_path}/access.log;\n client_body_temp_path {tmp_path}/body;\n"
        f" proxy_temp_path {tmp_path}/proxy;\n include {tmp_path}/site.conf;\n}}\n"
    )
    checked = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def _readme_sql() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Deploy", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    return [s.strip() for s in block.split(";") if s.strip()]


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(_dsn(BASE_URL), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_the_readme_postgresql_statements_make_a_database_agentos_serves_from(
    tmp_path: Path,
) -> None:
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        require("PostgreSQL", f"{type(exc).__name__}: {exc}")
    suffix = uuid.uuid4().hex[:10]
    role, database, password = f"agentos_{suffix}", f"agentos_db_{suffix}", f"pw-{suffix}"
    statements = [
        s.replace("'change-me'", f"'{password}'")
        .replace("DATABASE agentos", f"DATABASE {database}")
        .replace("OWNER agentos", f"OWNER {role}")
        .replace("ROLE agentos", f"ROLE {role}")
        for s in _readme_sql()
    ]
    assert [s.split()[:2] for s in statements] == [["CREATE", "ROLE"], ["CREATE", "DATABASE"]]
    asyncio.run(_admin(statements[0]))
    try:
        asyncio.run(_admin(statements[1]))
        host = BASE_URL.split("@", 1)[1].split("/", 1)[0]
        url = f"postgresql+asyncpg://{role}:{password}@{host}/{database}"
        with ServerProcess(tmp_path, env={"AGENTOS_DB_URL": url}, delay=0.0) as server:
            run = httpx.post(
                f"{server.url}/agents/echo/runs",
                json={"message": "hello deploy", "stream": False},
                timeout=30,
            )
            assert run.status_code == 200 and run.json()["status"] == "COMPLETED", run.text
            ready = httpx.get(f"{server.url}/health/ready", timeout=10)
            assert ready.status_code == 200, ready.text
    finally:
        asyncio.run(
            _admin(
                f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                f'DROP ROLE IF EXISTS "{role}"',
            )
        )
