"""``/tasks`` over HTTP on a real uvicorn: the routes and their answers, the scopes they need,
per-user isolation, the bad-input table as 422s, and trigger with ``wait``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from agentos import Settings
from tests import apps
from tests.apps import words
from tests.servers import ThreadServer

KEY = "tasks-operator-key"
SECRET = "hs256-secret-of-the-tasks-identity-provider"
OPERATOR = {"Authorization": f"Bearer {KEY}"}
ALL_SCOPES = ("tasks:read", "tasks:write", "runs:read", "runs:write", "runs:cancel")


def token(sub: str, *scopes: str) -> dict[str, str]:
    claims = {"sub": sub, "scope": " ".join(scopes or ALL_SCOPES), "exp": int(time.time()) + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("tasks")
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp / 'agentos.db'}",
        instance_id="tasks",
        demo_delay=0.02,
        security_key=KEY,
        jwt_secret=SECRET,
        task_wait_timeout=5,
    )
    server = ThreadServer(apps.build(settings).app)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _create(http: httpx.Client, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"component_id": "echo", "message": "hello", **fields}
    response = http.post("/tasks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/tasks/{response.json()['task_id']}"
    task: dict[str, Any] = response.json()
    return task


def test_the_routes(http: httpx.Client) -> None:
    task = _create(
        http,
        OPERATOR,
        task_id="routes",
        schedule={"kind": "interval", "every_seconds": 3600},
        tags=["ops"],
        description="hourly",
    )
    assert task["active"] is True and task["next_fire_at"].endswith("Z")
    assert task["schedule"]["every_seconds"] == 3600 and task["fired"] == 0
    assert http.post("/tasks", json={"task_id": "routes", "component_id": "echo",
                     "message": "m"}, headers=OPERATOR).json()["code"] == "task_exists"  # fmt: skip
    assert http.get("/tasks/routes", headers=OPERATOR).json() == task
    listed = http.get("/tasks", params={"tag": "ops", "active": "true"}, headers=OPERATOR)
    assert [t["task_id"] for t in listed.json()] == ["routes"]
    assert (
        http.get("/tasks", params={"active": "false", "tag": "ops"}, headers=OPERATOR).json() == []
    )
    patched = http.patch("/tasks/routes", json={"message": "changed"}, headers=OPERATOR).json()
    assert patched["message"] == "changed" and patched["next_fire_at"] == task["next_fire_at"]
    assert http.post("/tasks/routes/pause", headers=OPERATOR).json()["active"] is False
    assert http.post("/tasks/routes/resume", headers=OPERATOR).json()["active"] is True
    triggered = http.post("/tasks/routes/trigger", headers=OPERATOR)
    assert triggered.status_code == 202, triggered.text
    run = triggered.json()
    assert run["task_id"] == "routes" and run["occurrence"].startswith("manual:")
    assert triggered.headers["x-run-id"] == run["run_id"]
    assert triggered.headers["location"] == f"/agents/echo/runs/{run['run_id']}"
    runs = http.get("/tasks/routes/runs", headers=OPERATOR).json()
    assert [r["run_id"] for r in runs] == [run["run_id"]] and runs[0]["attempt"] in (0, 1)
    assert http.delete("/tasks/routes", headers=OPERATOR).status_code == 204
    gone = http.get("/tasks/routes", headers=OPERATOR)
    assert (gone.status_code, gone.json()["code"]) == (404, "task_not_found")
    # Its run stays, and ends.
    assert http.get(f"/agents/echo/runs/{run['run_id']}", headers=OPERATOR).status_code == 200


def test_trigger_waits_for_the_run_or_answers_504_naming_it(http: httpx.Client) -> None:
    _create(http, OPERATOR, task_id="quick", message="a b c")
    done = http.post("/tasks/quick/trigger", params={"wait": "true"}, headers=OPERATOR)
    assert done.status_code == 200 and done.json()["status"] == "COMPLETED"
    assert done.json()["content"] == "a b c"
    _create(http, OPERATOR, task_id="long", message=words(500))  # 10 s
    late = http.post("/tasks/long/trigger?wait=true&wait_seconds=1", headers=OPERATOR)
    assert (late.status_code, late.json()["code"]) == (504, "wait_timeout")
    run_id = late.headers["x-run-id"]
    assert late.headers["location"] == f"/agents/echo/runs/{run_id}"
    run = http.get(f"/agents/echo/runs/{run_id}", headers=OPERATOR).json()
    assert run["status"] == "RUNNING"  # it goes on
    http.post(f"/agents/echo/runs/{run_id}/cancel", headers=OPERATOR)
    for wait in ("0", "x", "1.5"):
        bad = http.post(f"/tasks/quick/trigger?wait=true&wait_seconds={wait}", headers=OPERATOR)
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request"), wait


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"schedule": {"kind": "cron", "cron": "0 25 * * *"}}, "schedule.cron"),
        ({"schedule": {"kind": "cron", "cron": "0 9 * * *", "timezone": "Mars/Olympus"}},
         "schedule.timezone"),
        ({"schedule": {"kind": "interval", "every_seconds": 0}}, "schedule.every_seconds"),
        ({"schedule": {"kind": "once", "at": "2001-01-01T00:00:00Z"}}, "schedule.at"),
        ({"component_id": "nobody"}, "component_id"),
        ({"overlap_policy": "sometimes"}, "overlap_policy"),
        ({"catchup": "never"}, "catchup"),
        ({"retry_policy": {"max_attempts": 0}}, "retry_policy.max_attempts"),
        ({"message": "nul \u0000"}, "message"),
        ({"colour": "blue"}, "colour"),
    ],
)  # fmt: skip
def test_bad_input_is_422_naming_the_field(
    http: httpx.Client, fields: dict[str, Any], named: str
) -> None:
    body = {"component_id": "echo", "message": "m", **fields}
    answer = http.post("/tasks", json=body, headers=OPERATOR)
    assert (answer.status_code, answer.json()["code"]) == (422, "invalid_request"), answer.text
    assert named in answer.json()["detail"]


#: (method, path, scope) of every task route; ``{task}`` is alice's task.
ROUTES = [
    ("POST", "/tasks", "tasks:write"),
    ("GET", "/tasks", "tasks:read"),
    ("GET", "/tasks/{task}", "tasks:read"),
    ("PATCH", "/tasks/{task}", "tasks:write"),
    ("DELETE", "/tasks/{task}", "tasks:write"),
    ("POST", "/tasks/{task}/pause", "tasks:write"),
    ("POST", "/tasks/{task}/resume", "tasks:write"),
    ("POST", "/tasks/{task}/trigger", "tasks:write"),
    ("GET", "/tasks/{task}/runs", "tasks:read"),
]


@pytest.fixture(scope="module")
def alices_task(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as http:
        return str(_create(http, token("alice"), task_id="alices")["task_id"])


def _call(http: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = {"component_id": "echo", "message": "m"} if method == "POST" and path == "/tasks" else {}
    json = body if method in ("POST", "PATCH") else None
    return http.request(method, path.format(task="alices"), json=json, headers=headers)


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_each_route_needs_a_credential_and_its_scope(
    http: httpx.Client, alices_task: str, method: str, path: str, scope: str
) -> None:
    none = _call(http, method, path, {})
    assert (none.status_code, none.json()["code"]) == (401, "not_authenticated")
    wrong = _call(http, method, path, {"Authorization": "Bearer wrong"})
    assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_token")
    others = tuple(s for s in (*ALL_SCOPES, "admin", "sessions:read") if s != scope)
    missing = _call(http, method, path, token("alice", *others))
    assert (missing.status_code, missing.json()["code"]) == (403, "insufficient_scope")
    assert scope in missing.json()["detail"]


@pytest.mark.parametrize(("method", "path", "scope"), [r for r in ROUTES if "{task}" in r[1]])
def test_another_users_task_is_not_found(
    http: httpx.Client, alices_task: str, method: str, path: str, scope: str
) -> None:
    answer = _call(http, method, path, token("bob"))
    assert (answer.status_code, answer.json()["code"]) == (404, "task_not_found")
    missing = http.get("/tasks/no-such-task", headers=token("bob"))
    assert answer.json()["detail"] == missing.json()["detail"].replace("no-such-task", "alices")
    assert http.get(f"/tasks/{alices_task}", headers=token("alice")).status_code == 200


def test_users_own_what_they_create_and_see_only_theirs(http: httpx.Client) -> None:
    mine = _create(http, token("carol"), task_id="carols")
    assert mine["user_id"] == "carol"
    claimed = http.post("/tasks", json={"component_id": "echo", "message": "m",
                        "user_id": "alice"}, headers=token("carol"))  # fmt: skip
    assert (claimed.status_code, claimed.json()["code"]) == (403, "not_authorized")
    renamed = http.patch("/tasks/carols", json={"user_id": "alice"}, headers=token("carol"))
    assert renamed.status_code == 422 and "user_id" in renamed.json()["detail"]
    listed = http.get("/tasks", headers=token("carol")).json()
    assert {t["user_id"] for t in listed} == {"carol"}
    assert http.get("/tasks", params={"user_id": "alice"}, headers=token("carol")).json() == []
    everyone = {t["user_id"] for t in http.get("/tasks", headers=OPERATOR).json()}
    assert "carol" in everyone
    admin = token("dave", "tasks:read", "admin")
    assert "carol" in {t["user_id"] for t in http.get("/tasks", headers=admin).json()}
    # Its runs are carol's: she reads them, bob does not.
    run = http.post("/tasks/carols/trigger?wait=true", headers=token("carol")).json()
    assert run["user_id"] == "carol" and run["status"] == "COMPLETED"
    path = f"/agents/echo/runs/{run['run_id']}"
    assert http.get(path, headers=token("carol")).status_code == 200
    assert http.get(path, headers=token("bob")).status_code == 404
    by_operator = _create(http, OPERATOR, task_id="for-erin", user_id="erin")
    assert by_operator["user_id"] == "erin"
