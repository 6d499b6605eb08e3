"""The ``agentos`` command, run as users run it: a subprocess against a real server subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest

from agentos import Agent, AgentOS, EchoModel, Settings, cli
from tests.apps import words
from tests.servers import ROOT, ServerProcess, ThreadServer, free_port
from tests.storage import ScriptedStore

KEY = "cli-key"
pytestmark = pytest.mark.slow


def agentos(
    *args: str, url: str | None = None, key: str | None = KEY, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentos", *args],
        env=_env(url, key),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _env(url: str | None, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python")])
    env["COLUMNS"] = "200"  # rich tables: room for whole run ids
    if url is not None:
        env["AGENTOS_URL"] = url
    if key is not None:
        env["AGENTOS_API_KEY"] = key
    return env


def start_run(url: str, message: str, component: str = "agents/echo", **fields: str) -> str:
    response = httpx.post(
        f"{url}/{component}/runs",
        json={"message": message, "stream": False, "background": True, **fields},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def wait_ended(url: str, run_id: str, component: str = "agents/echo") -> dict[str, Any]:
    for _ in range(400):
        run: dict[str, Any] = httpx.get(
            f"{url}/{component}/runs/{run_id}", headers={"Authorization": f"Bearer {KEY}"}
        ).json()
        if run["status"] in ("COMPLETED", "ERROR", "CANCELLED"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("cli"), security_key=KEY, delay=0.02) as served:
        yield served


def test_serve_help_shows_each_option_with_its_default() -> None:
    result = agentos("serve", "--help")
    assert result.returncode == 0
    for option, default in (("--host", "127.0.0.1"), ("--port", "7777"), ("--log-level", "info")):
        assert option in result.stdout
        assert f"[default: {default}]" in result.stdout
    # Every option serve has, including any added later, shows its default.
    options = [p for p in cli.serve.params if isinstance(p, click.Option)]
    assert len(options) >= 3
    for option in options:
        assert option.opts[0] in result.stdout
        assert f"[default: {option.default}]" in result.stdout, option.opts


def test_serve_of_an_app_that_cannot_be_imported_says_so_in_one_line() -> None:
    result = agentos("serve", "no_such_package_xyz:app", "--port", str(free_port()))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot import no_such_package_xyz" in lines[0], result.stderr
    missing = agentos("serve", "tests.apps:nothing_here", "--port", str(free_port()))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "no attribute 'nothing_here'" in missing.stderr


def test_serve_of_an_app_with_a_syntax_error_says_where_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "typo_app.py").write_text("from agentos import AgentOS\napp = AgentOS(\n")
    result = subprocess.run(
        [sys.executable, "-m", "agentos", "serve", "typo_app:app", "--port", str(free_port())],
        env=_env(None, None),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,  # serve imports the app from the current folder
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot import typo_app" in lines[0] and "typo_app.py, line 2" in lines[0], lines[0]


def test_health(server: ServerProcess) -> None:
    result = agentos("health", url=server.url)
    assert result.returncode == 0 and "running" in result.stdout, result.stdout
    assert "check database" in result.stdout
    as_json = json.loads(agentos("health", "--json", url=server.url).stdout)
    assert as_json["status"] == "running" and "active_runs" in as_json
    assert as_json["checks"]["database"]["ok"] is True
    down = agentos("health", url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "cannot reach" in down.stderr
    assert "Traceback" not in down.stderr


@pytest.mark.parametrize(("status", "code"), [("degraded", 0), ("down", 3), ("draining", 3)])
def test_health_exit_code_follows_the_status(
    tmp_path: Path, serve_thread: Callable[[AgentOS], ThreadServer], status: str, code: int
) -> None:
    """What a script polling ``agentos health`` relies on: 0 while the server takes runs
    (running, degraded), 3 while it answers 503 (down, draining)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'health.db'}"
    store = ScriptedStore(url)
    settings = Settings(
        db_url=url,
        instance_id="cli-health",
        health_check_interval=0.0,
        health_check_timeout=0.3,
        create_timeout=0.2,
        commit_stall_timeout=0.5,
    )
    agent_os = AgentOS(agents=[Agent(id="echo", model=EchoModel())], settings=settings, store=store)
    server = serve_thread(agent_os)
    if status == "degraded":
        server.call(store.ping_gate.clear)  # the database check times out
    elif status == "down":
        server.call(store.gate.clear)  # commits hang: down after commit_stall_timeout
        created = httpx.post(f"{server.url}/agents/echo/runs", data={"message": "x"}, timeout=10)
        assert created.status_code == 503
    else:
        server.call(agent_os.begin_shutdown)
    try:
        while httpx.get(f"{server.url}/health", timeout=10).json()["status"] != status:
            time.sleep(0.02)  # the test's timeout bounds the wait
        result = agentos("health", url=server.url)
        assert result.returncode == code, result.stderr
        assert status in result.stdout and "Traceback" not in result.stderr
        as_json = agentos("health", "--json", url=server.url)
        assert as_json.returncode == code and json.loads(as_json.stdout)["status"] == status
    finally:
        server.call(store.ping_gate.set)
        server.call(store.gate.set)


def test_components(server: ServerProcess) -> None:
    listed = agentos("agents", "list", url=server.url)
    assert listed.returncode == 0 and "echo" in listed.stdout
    agents = json.loads(agentos("agents", "list", "--json", url=server.url).stdout)
    assert [a["id"] for a in agents] == ["echo"]
    team = json.loads(agentos("teams", "get", "echo-team", "--json", url=server.url).stdout)
    assert team["members"] == ["echo-a", "echo-b"]
    workflow = agentos("workflows", "get", "echo-workflow", url=server.url)
    assert workflow.returncode == 0 and "Echo workflow" in workflow.stdout
    missing = agentos("agents", "get", "nope", url=server.url)
    assert missing.returncode == 2 and "nope" in missing.stderr
    refused = agentos("agents", "list", url=server.url, key="wrong")
    assert refused.returncode == 2 and "not_authorized" in refused.stderr
    no_key = agentos("agents", "list", url=server.url, key=None)
    assert no_key.returncode == 2 and "not_authenticated" in no_key.stderr


@pytest.fixture(scope="module")
def ended_run(server: ServerProcess) -> str:
    """A completed run of agents/echo with 7 events (RunStarted, 5 words, RunCompleted)."""
    run_id = start_run(server.url, words(5))
    wait_ended(server.url, run_id)
    return run_id


def test_runs_list_get(server: ServerProcess, ended_run: str) -> None:
    run_id = ended_run

    table = agentos("runs", "list", "agents/echo", url=server.url)
    assert table.returncode == 0 and run_id in table.stdout
    listed = json.loads(agentos("runs", "list", "agents/echo", "--json", url=server.url).stdout)
    assert run_id in [r["run_id"] for r in listed]
    done = agentos("runs", "list", "agents/echo", "--status", "completed", "--json", url=server.url)
    assert run_id in [r["run_id"] for r in json.loads(done.stdout)]
    bad_status = agentos("runs", "list", "agents/echo", "--status", "soon", url=server.url)
    assert bad_status.returncode == 2
    bad_component = agentos("runs", "list", "echo", url=server.url)
    assert bad_component.returncode == 2 and "KIND/ID" in bad_component.stderr

    got = json.loads(agentos("runs", "get", "agents/echo", run_id, "--json", url=server.url).stdout)
    assert got["status"] == "COMPLETED" and got["event_count"] == 7
    shown = agentos("runs", "get", "agents/echo", run_id, url=server.url)
    assert shown.returncode == 0 and "COMPLETED" in shown.stdout
    missing = agentos("runs", "get", "agents/echo", "no-such-run", url=server.url)
    assert missing.returncode == 2 and "run_not_found" in missing.stderr


def test_runs_tail_of_an_ended_run(server: ServerProcess, ended_run: str) -> None:
    run_id = ended_run
    tail = agentos("runs", "tail", "agents/echo", run_id, url=server.url)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [str(i) for i in range(7)]
    assert "RunStarted" in lines[0] and "RunCompleted" in lines[-1]
    events = agentos("runs", "tail", "agents/echo", run_id, "--from", "4", "--json", url=server.url)
    assert [json.loads(line)["event_index"] for line in events.stdout.splitlines()] == [5, 6]
    nothing_left = agentos("runs", "tail", "agents/echo", run_id, "--from", "6", url=server.url)
    assert nothing_left.returncode == 0 and nothing_left.stdout == ""


def test_runs_cancel_then_tail_exits_1(server: ServerProcess) -> None:
    run_id = start_run(server.url, words(2000))  # 40 s at 0.02 s a word
    cancelled = agentos("runs", "cancel", "agents/echo", run_id, url=server.url)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == "CANCELLED"
    tail = agentos("runs", "tail", "agents/echo", run_id, "--json", url=server.url)
    assert tail.returncode == 1
    last = json.loads(tail.stdout.splitlines()[-1])
    assert last["event"] == "RunCancelled"
    missing = agentos("runs", "cancel", "agents/echo", "no-such-run", url=server.url)
    assert missing.returncode == 2


def test_tail_follows_a_run_across_a_server_restart(tmp_path: Path) -> None:
    """kill -9 and a restart on the same port mid-run: the run ends with RunError
    "interrupted" (restart recovery), and the tail shows every event once, then exits 1."""
    with ServerProcess(tmp_path, security_key=KEY, delay=0.1) as server:
        run_id = start_run(server.url, words(300))  # 30 s: still running at the restart
        with subprocess.Popen(
            [sys.executable, "-m", "agentos", "runs", "tail", "agents/echo", run_id, "--json"],
            env=_env(server.url, KEY),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        ) as tail:
            assert tail.stdout is not None and tail.stderr is not None
            try:
                seen = [json.loads(tail.stdout.readline()) for _ in range(4)]
                server.kill()
                server.start()
                # Read on through the same buffered reader (communicate() would skip what it
                # holds); the test's timeout bounds a tail that never ends.
                out = tail.stdout.read()
                err = tail.stderr.read()
                tail.wait(timeout=10)
            finally:
                tail.kill()
    events = seen + [json.loads(line) for line in out.splitlines()]
    indices = [event["event_index"] for event in events]
    assert indices == list(range(len(events))), indices  # no gap, no duplicate
    assert events[-1]["event"] == "RunError" and events[-1]["error"] == "interrupted"
    assert tail.returncode == 1, err


def test_tail_gives_up_with_exit_3_when_the_server_stays_gone(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, security_key=KEY, delay=0.1) as server:
        run_id = start_run(server.url, words(300))  # 30 s
        with subprocess.Popen(
            [sys.executable, "-m", "agentos", "runs", "tail", "agents/echo", run_id, "--json",
             "--max-reconnects", "2"],
            env=_env(server.url, KEY),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        ) as tail:  # fmt: skip
            assert tail.stdout is not None and tail.stderr is not None
            try:
                first = json.loads(tail.stdout.readline())
                server.kill()  # and it does not come back
                out, err = tail.stdout.read(), tail.stderr.read()
                tail.wait(timeout=30)
            finally:
                tail.kill()
    assert first["event_index"] == 0
    events = [first] + [json.loads(line) for line in out.splitlines()]
    assert [e["event_index"] for e in events] == list(range(len(events)))
    assert tail.returncode == 3, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "gave up after 2 reconnect attempts" in err


@pytest.fixture(scope="module")
def ada_session(server: ServerProcess) -> list[str]:
    """Session cli-s1 of user cli-ada: two runs of agents/echo, then one of teams/echo-team (their
    ids, oldest first); and session cli-s2 of user cli-bob."""
    ada = {"session_id": "cli-s1", "user_id": "cli-ada"}
    run_ids = []
    for message, component in (("one", "agents/echo"), ("two", "agents/echo"),
                               ("three", "teams/echo-team")):  # fmt: skip
        run_ids.append(start_run(server.url, message, component, **ada))
        wait_ended(server.url, run_ids[-1], component)
    wait_ended(server.url, start_run(server.url, "other", session_id="cli-s2", user_id="cli-bob"))
    return run_ids


def sessions_listed(server: ServerProcess, *args: str) -> list[tuple[str, str, str, int]]:
    result = agentos("sessions", "list", "--json", *args, url=server.url)
    assert result.returncode == 0, result.stderr
    return [
        (s["session_id"], s["kind"], s["component_id"], s["run_count"])
        for s in json.loads(result.stdout)
    ]


def test_sessions_list(server: ServerProcess, ada_session: list[str]) -> None:
    assert sorted(sessions_listed(server, "--user-id", "cli-ada")) == [
        ("cli-s1", "agents", "echo", 2),
        ("cli-s1", "teams", "echo-team", 1),
    ]
    assert sessions_listed(server, "--user-id", "cli-ada", "--component", "teams") == [
        ("cli-s1", "teams", "echo-team", 1)
    ]
    assert ("cli-s2", "agents", "echo", 1) in sessions_listed(server, "--component", "agents/echo")
    table = agentos("sessions", "list", "--user-id", "cli-ada", url=server.url)
    assert table.returncode == 0
    assert "cli-s1" in table.stdout and "teams/echo-team" in table.stdout
    bad = agentos("sessions", "list", "--component", "robots", url=server.url)
    assert bad.returncode == 2 and "KIND/ID" in bad.stderr


def test_sessions_get(server: ServerProcess, ada_session: list[str]) -> None:
    got = agentos("sessions", "get", "cli-s1", "--json", url=server.url)
    session = json.loads(got.stdout)
    assert [r["run_id"] for r in session["runs"]] == ada_session  # oldest first
    assert session["messages"] == []  # the echo agents keep none (see tests/server/models)
    newest = agentos("sessions", "get", "cli-s1", "--limit", "1", "--json", url=server.url)
    assert [r["run_id"] for r in json.loads(newest.stdout)["runs"]] == ada_session[-1:]
    shown = agentos("sessions", "get", "cli-s1", url=server.url)
    assert shown.returncode == 0
    for run_id in ada_session:
        assert run_id in shown.stdout
    assert "teams/echo-team" in shown.stdout
    missing = agentos("sessions", "get", "no-such-session", url=server.url)
    assert missing.returncode == 2 and "session_not_found" in missing.stderr


def test_sessions_delete(server: ServerProcess) -> None:
    run_id = start_run(server.url, "bye", session_id="cli-gone", user_id="cli-cy")
    wait_ended(server.url, run_id)
    deleted = agentos("sessions", "delete", "cli-gone", url=server.url)
    assert deleted.returncode == 0, deleted.stderr
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{server.url}/sessions/cli-gone", headers=auth).status_code == 404
    assert httpx.get(f"{server.url}/agents/echo/runs/{run_id}", headers=auth).status_code == 404
    again = agentos("sessions", "delete", "cli-gone", url=server.url)
    assert again.returncode == 2 and "session_not_found" in again.stderr


def test_sessions_delete_refuses_a_session_with_a_run_going(server: ServerProcess) -> None:
    run_id = start_run(server.url, words(2000), session_id="cli-busy")  # 40 s
    refused = agentos("sessions", "delete", "cli-busy", url=server.url)
    assert refused.returncode == 2 and "session_active" in refused.stderr
    assert agentos("runs", "cancel", "agents/echo", run_id, url=server.url).returncode == 0
    wait_ended(server.url, run_id)
    assert agentos("sessions", "delete", "cli-busy", url=server.url).returncode == 0
    down = agentos("sessions", "list", url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "cannot reach" in down.stderr


def create_task(url: str, **fields: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/tasks", json=fields, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


@pytest.fixture(scope="module")
def cron_task(server: ServerProcess) -> str:
    """Task cli-cron: agents/echo at 9:00 on weekdays, Berlin time, tagged cli."""
    schedule = {"kind": "cron", "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}
    create_task(
        server.url,
        task_id="cli-cron",
        component_id="echo",
        message="héllo tasks",
        schedule=schedule,
        tags=["cli"],
    )
    return "cli-cron"


def test_tasks_create(server: ServerProcess) -> None:
    created = agentos(
        "tasks", "create", "workflows/echo-workflow", "héllo", "--id", "cli-daily", "--cron",
        "30 2 * * *", "--timezone", "America/New_York", "--overlap", "queue_next", "--tag", "a",
        "--tag", "b", "--retry-policy", '{"max_attempts": 2}', "--json", url=server.url,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    task = json.loads(created.stdout)
    assert (task["task_id"], task["kind"], task["component_id"], task["message"]) == (
        "cli-daily", "workflows", "echo-workflow", "héllo"
    )  # fmt: skip
    assert task["schedule"] == {
        "kind": "cron",
        "cron": "30 2 * * *",
        "timezone": "America/New_York",
    }
    assert task["overlap_policy"] == "queue_next" and task["tags"] == ["a", "b"]
    assert task["retry_policy"]["max_attempts"] == 2 and task["next_fire_at"] is not None
    plain = agentos("tasks", "create", "agents/echo", "m", "--every", "60", url=server.url)
    assert plain.returncode == 0 and "created; next occurrence: 20" in plain.stdout


def test_tasks_create_refuses_bad_input(server: ServerProcess) -> None:
    bad = agentos("tasks", "create", "agents/echo", "m", "--cron", "61 * * * *", url=server.url)
    assert bad.returncode == 2 and "schedule.cron" in bad.stderr
    both = agentos(
        "tasks", "create", "agents/echo", "m", "--every", "5", "--at", "2030-01-01T00:00Z"
    )
    assert both.returncode == 2 and "one of --every" in both.stderr
    nobody = agentos("tasks", "create", "agents/nobody", "m", url=server.url)
    assert nobody.returncode == 2 and "component_id" in nobody.stderr


def test_tasks_list(server: ServerProcess, cron_task: str) -> None:
    listed = json.loads(agentos("tasks", "list", "--tag", "cli", "--json", url=server.url).stdout)
    assert [t["task_id"] for t in listed] == [cron_task]
    table = agentos("tasks", "list", "--component", "agents/echo", "--active", url=server.url)
    assert cron_task in table.stdout and "cron 0 9 * * 1-5 Europe/Berlin" in table.stdout


def test_tasks_get(server: ServerProcess, cron_task: str) -> None:
    shown = agentos("tasks", "get", cron_task, url=server.url)
    assert shown.returncode == 0 and "héllo tasks" in shown.stdout
    missing = agentos("tasks", "get", "no-such-task", url=server.url)
    assert missing.returncode == 2 and "task_not_found" in missing.stderr


def test_tasks_trigger_and_runs(server: ServerProcess) -> None:
    create_task(server.url, task_id="cli-manual", component_id="echo", message=words(3))
    waited = agentos("tasks", "trigger", "cli-manual", "--wait", "--json", url=server.url)
    assert waited.returncode == 0, waited.stderr
    run = json.loads(waited.stdout)
    assert run["status"] == "COMPLETED" and run["content"] == words(3)
    assert run["task_id"] == "cli-manual" and run["occurrence"].startswith("manual:")
    runs = json.loads(agentos("tasks", "runs", "cli-manual", "--json", url=server.url).stdout)
    assert [r["run_id"] for r in runs] == [run["run_id"]]
    table = agentos("tasks", "runs", "cli-manual", "--status", "completed", url=server.url)
    assert run["run_id"] in table.stdout and "COMPLETED" in table.stdout


def test_tasks_trigger_exit_codes(server: ServerProcess) -> None:
    # A run that times out ends in ERROR: exit 1.
    create_task(
        server.url,
        task_id="cli-timeout",
        component_id="echo",
        message=words(500),
        timeout_seconds=0.2,
    )
    failed = agentos("tasks", "trigger", "cli-timeout", "--wait", url=server.url)
    assert failed.returncode == 1 and "timeout" in failed.stdout, failed.stderr
    # A run longer than the wait: exit 3, and the message names the run, which goes on.
    create_task(server.url, task_id="cli-long", component_id="echo", message=words(2000))
    late = agentos("tasks", "trigger", "cli-long", "--wait", "--wait-seconds", "1", url=server.url)
    assert late.returncode == 3 and "did not end within 1 s" in late.stderr, late.stderr
    [run] = json.loads(agentos("tasks", "runs", "cli-long", "--json", url=server.url).stdout)
    assert run["run_id"] in late.stderr and run["status"] == "RUNNING"
    assert agentos("runs", "cancel", "agents/echo", run["run_id"], url=server.url).returncode == 0


def test_tasks_pause_resume(server: ServerProcess) -> None:
    create_task(
        server.url,
        task_id="cli-hourly",
        component_id="echo",
        message="x",
        schedule={"kind": "interval", "every_seconds": 3600},
        active=False,
    )
    paused = json.loads(agentos("tasks", "list", "--paused", "--json", url=server.url).stdout)
    assert "cli-hourly" in [t["task_id"] for t in paused]
    resumed = agentos("tasks", "resume", "cli-hourly", url=server.url)
    assert resumed.returncode == 0 and "resumed; next occurrence: 20" in resumed.stdout
    assert agentos("tasks", "pause", "cli-hourly", url=server.url).returncode == 0
    task = json.loads(agentos("tasks", "get", "cli-hourly", "--json", url=server.url).stdout)
    assert task["active"] is False


def test_tasks_delete(server: ServerProcess) -> None:
    create_task(server.url, task_id="cli-gone", component_id="echo", message="x")
    assert agentos("tasks", "delete", "cli-gone", url=server.url).returncode == 0
    again = agentos("tasks", "delete", "cli-gone", url=server.url)
    assert again.returncode == 2 and "task_not_found" in again.stderr
    refused = agentos("tasks", "list", url=server.url, key="wrong")
    assert refused.returncode == 2 and "not_authorized" in refused.stderr
