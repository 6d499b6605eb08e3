"""``GET /openapi.json`` describes every route, and the live server keeps to it.

The route table of the app is compared with the document; then schemathesis (its command line,
in a process of its own) fuzzes a real uvicorn on 127.0.0.1 from the document, positive and
negative data, and fails on any 500 or on an answer whose status, content type or body the
document does not declare. Runs use a model with no delay, so each stream is short and ends.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route, WebSocketRoute

from agentos import AgentOS, Settings
from tests import apps
from tests.pgdb import require
from tests.servers import ROOT, ThreadServer

_METHODS = {"get", "post", "put", "patch", "delete"}


def test_every_route_of_the_app_is_in_the_document(
    serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings
) -> None:
    agent_os = apps.build(settings.replace(security_key="k"))
    server = serve_thread(agent_os)
    answer = httpx.get(f"{server.url}/openapi.json")  # public, like /health
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["openapi"].startswith("3.1")
    in_app: set[tuple[str, str]] = set()
    for route in agent_os.app.routes:
        if isinstance(route, WebSocketRoute):
            assert route.path in doc["x-websockets"], route.path
        else:
            assert isinstance(route, Route)
            in_app |= {(m.lower(), route.path) for m in route.methods or () if m != "HEAD"}
    in_doc = {(m, path) for path, item in doc["paths"].items() for m in item if m in _METHODS}
    assert in_app == in_doc
    for path, item in doc["paths"].items():
        for method in set(item) & _METHODS:
            responses = item[method]["responses"]
            assert "500" in responses, (method, path)
            errors = [r for code, r in responses.items() if code[0] in "45"]
            assert all("Error" in str(r) or path.startswith("/health") for r in errors)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    # In CI a missing schemathesis fails the run instead of skipping the fuzzing unseen.
    require("schemathesis", None if importlib.util.find_spec("schemathesis") else "not installed")
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}",
        instance_id="fuzz",
        demo_delay=0.0,
        max_body_bytes=64 * 1024,
    )
    server = serve_thread(apps.build(settings))
    checks = ",".join(
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
        ]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{server.url}/openapi.json",
            f"--checks={checks}",
            "--max-examples=5",
            "--phases=examples,coverage,fuzzing",
            "--max-time=35",
            "--request-timeout=10",
            "--seed=1",
            "--workers=1",
            "--no-color",
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")])},
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
