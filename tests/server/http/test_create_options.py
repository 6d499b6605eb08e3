"""What a create may ask beyond its message, over real ``agentos serve`` processes: run options
(retry_policy, timeout_seconds, multitask), ``wait`` with its budget (200 or 504),
``Idempotency-Key`` (replay, conflict, racing creates) and the attempts route.

Each test runs on SQLite (one instance) and on PostgreSQL (two instances on one database; a
repeated create goes to the other instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from agentos import AgentOS, Settings
from agentos.retries import RetryPolicy
from tests import apps
from tests.apps import words
from tests.pgdb import scratch_database
from tests.servers import ServerProcess, ThreadServer
from tests.sse import frames, iter_frames

DELAY = 0.02
SECRET = "a-jwt-secret-of-at-least-thirty-two-bytes"
#: A run that takes long enough (150 words at DELAY: 3 s) to still run when a wait ends.
SLOW = words(150)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def instances(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServerProcess]]:
    """The servers of one database: one on SQLite, two on PostgreSQL."""
    tmp = tmp_path_factory.mktemp(request.param)
    env = {"AGENTOS_JWT_SECRET": SECRET, "AGENTOS_SECURITY_KEY": "operator"}
    database = contextlib.nullcontext(None) if request.param == "sqlite" else scratch_database()
    with database as url:
        if url is not None:
            env["AGENTOS_DB_URL"] = url
        servers = [
            ServerProcess(tmp, app="tests.apps:served", delay=DELAY, instance_id=f"i{n}", env=env)
            for n in range(1 if url is None else 2)
        ]
        try:
            for server in servers:
                server.launch()
            for server in servers:
                server.wait_ready()
            yield servers
        finally:
            for server in servers:
                server.stop()


def token(sub: str) -> str:
    claims = {"sub": sub, "scope": "runs:read runs:write", "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


OPERATOR = {"Authorization": "Bearer operator"}


def auth(sub: str | None = None) -> dict[str, str]:
    return OPERATOR if sub is None else {"Authorization": f"Bearer {token(sub)}"}


def post(
    server: ServerProcess,
    body: dict[str, Any],
    *,
    key: str | None = None,
    path: str = "/agents/echo/runs",
    user: str | None = None,
    form: bool = False,
) -> httpx.Response:
    headers = {**auth(user), **({"Idempotency-Key": key} if key is not None else {})}
    sent: dict[str, Any] = {"data": body} if form else {"json": body}
    return httpx.post(server.url + path, headers=headers, timeout=30, **sent)


def session_gone(server: ServerProcess, session_id: str) -> bool:
    answer = httpx.get(f"{server.url}/sessions/{session_id}", headers=OPERATOR, timeout=10)
    return answer.status_code == 404


def wait_ended(server: ServerProcess, run_id: str, kind: str = "agents/echo") -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run: dict[str, Any] = httpx.get(
            f"{server.url}/{kind}/runs/{run_id}", headers=OPERATOR, timeout=10
        ).json()
        if run["status"] in ("COMPLETED", "ERROR", "CANCELLED"):
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end")


# -- fields -----------------------------------------------------------------------------------

BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"retry_policy": "not json"}, "retry_policy"),
    ({"retry_policy": "[1, 2]"}, "retry_policy"),
    ({"retry_policy": [1, 2]}, "retry_policy"),
    ({"retry_policy": 3}, "retry_policy"),
    ({"retry_policy": {"max_attempts": 0}}, "retry_policy.max_attempts"),
    ({"retry_policy": {"max_attempts": 2.5}}, "retry_policy.max_attempts"),
    ({"retry_policy": {"max_attempts": True}}, "retry_policy.max_attempts"),
    ({"retry_policy": {"delay": -1}}, "retry_policy.delay"),
    ({"retry_policy": {"backoff": 0.5}}, "retry_policy.backoff"),
    ({"retry_policy": {"max_delay": "1"}}, "retry_policy.max_delay"),
    ({"retry_policy": {"jitter": 2}}, "retry_policy.jitter"),
    ({"retry_policy": {"retry_on": "timeout"}}, "retry_policy.retry_on"),
    ({"retry_policy": {"retry_on": ["not a name"]}}, "retry_policy.retry_on"),
    ({"retry_policy": {"retry_on": ["x"] * 33}}, "retry_policy.retry_on"),
    ({"retry_policy": {"attempts": 3}}, "retry_policy has unknown fields: attempts"),
    ({"timeout_seconds": -1}, "timeout_seconds"),
    ({"timeout_seconds": "soon"}, "timeout_seconds"),
    ({"timeout_seconds": "1e3"}, "timeout_seconds"),
    ({"timeout_seconds": " 1"}, "timeout_seconds"),
    ({"timeout_seconds": True}, "timeout_seconds"),
    ({"timeout_seconds": 1e9}, "timeout_seconds"),
    ({"timeout_seconds": [1]}, "timeout_seconds"),
    ({"timeout_seconds": 10**400}, "timeout_seconds"),  # too large for a float
    ({"retry_policy": {"delay": 10**400}}, "retry_policy.delay"),
    ({"stream": False, "wait_timeout_seconds": 10**400}, "wait_timeout_seconds"),
    ({"multitask": "sometimes"}, "multitask"),
    ({"multitask": 1}, "multitask"),
    ({"stream": False, "wait": "maybe"}, "wait"),
    ({"wait": True}, "wait"),  # stream is true by default: nothing to wait for
    ({"stream": False, "wait_timeout_seconds": -1}, "wait_timeout_seconds"),
    ({"stream": False, "wait_timeout_seconds": "NaN"}, "wait_timeout_seconds"),
    ({"stream": False, "wait_timeout_seconds": {"s": 1}}, "wait_timeout_seconds"),
]
BAD_FORM_FIELDS: list[tuple[dict[str, str], str]] = [
    ({"retry_policy": '{"max_attempts": 0}'}, "retry_policy.max_attempts"),
    ({"retry_policy": "[" * 100_000}, "retry_policy"),  # nested too deep to parse
    ({"retry_policy": "max_attempts=3"}, "retry_policy"),
    ({"timeout_seconds": "-1"}, "timeout_seconds"),
    ({"timeout_seconds": "\u0661"}, "timeout_seconds"),  # ARABIC-INDIC DIGIT ONE
    ({"multitask": "never"}, "multitask"),
    ({"stream": "false", "wait": "perhaps"}, "wait"),
    ({"stream": "false", "wait_timeout_seconds": "0x10"}, "wait_timeout_seconds"),
]


def test_bad_options_are_422_naming_the_field_and_make_no_run(
    instances: list[ServerProcess],
) -> None:
    server = instances[0]
    sessions = []
    cases = [(body, name, False) for body, name in BAD_FIELDS]
    cases += [(body, name, True) for body, name in BAD_FORM_FIELDS]
    for body, name, form in cases:
        session_id = f"bad-{uuid.uuid4()}"
        sessions.append(session_id)
        answer = post(server, {"message": "hi", "session_id": session_id, **body}, form=form)
        assert answer.status_code == 422, (body, answer.text)
        error = answer.json()
        assert error["code"] == "invalid_request", (body, error)
        assert error["detail"].startswith(name), (body, error)
    assert all(session_gone(server, s) for s in sessions)


@pytest.mark.parametrize(
    "header",
    [
        [(b"Idempotency-Key", b"")],
        [(b"Idempotency-Key", b"x" * 201)],
        [(b"Idempotency-Key", "clé".encode())],
        [(b"Idempotency-Key", b"a\tb")],
        [(b"Idempotency-Key", b"one"), (b"Idempotency-Key", b"two")],
    ],
    ids=["empty", "too-long", "not-ascii", "control", "twice"],
)
def test_a_bad_idempotency_key_is_422(
    instances: list[ServerProcess], header: list[tuple[bytes, bytes]]
) -> None:
    server = instances[0]
    session_id = f"bad-key-{uuid.uuid4()}"
    answer = httpx.post(
        f"{server.url}/agents/echo/runs",
        json={"message": "hi", "session_id": session_id, "stream": False},
        headers=[(b"Authorization", b"Bearer operator"), *header],
        timeout=10,
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_request"
    assert answer.json()["detail"].startswith("Idempotency-Key")
    assert session_gone(server, session_id)


def test_good_options_are_taken_from_json_and_from_forms(
    serve_thread: Callable[[AgentOS], ThreadServer], settings: Settings
) -> None:
    agent_os = apps.build(settings)
    server = serve_thread(agent_os)
    policy = {"max_attempts": 3, "delay": 0.5, "retry_on": ["timeout", "ModelError"]}
    text = json.dumps(policy)
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"retry_policy": policy, "timeout_seconds": 30, "multitask": "enqueue"}, False),
        ({"retry_policy": text, "timeout_seconds": 30.0, "multitask": None}, False),
        ({"retry_policy": text, "timeout_seconds": "30", "multitask": "enqueue"}, True),
        ({"retry_policy": "", "timeout_seconds": "", "multitask": ""}, True),  # empty: unset
    ]
    for options, form in cases:
        body = {"message": "hi", "stream": "false", "background": "true", **options}
        sent = {"data": body} if form else {"json": body}
        answer = httpx.post(f"{server.url}/agents/echo/runs", timeout=10, **sent)
        assert answer.status_code == 202, (options, answer.text)
        assert server.loop is not None
        record = asyncio.run_coroutine_threadsafe(
            agent_os.manager.store.get_run(answer.json()["run_id"]), server.loop
        ).result(10)
        assert record is not None
        if options["retry_policy"]:
            assert record.retry_policy is not None
            assert RetryPolicy.parse(record.retry_policy) == RetryPolicy.parse(policy)
            assert record.timeout == 30.0
        else:
            assert (record.retry_policy, record.timeout) == (None, None)
        assert record.multitask == (options["multitask"] or None)


# -- wait -------------------------------------------------------------------------------------


def test_wait_answers_200_with_the_ended_run(instances: list[ServerProcess]) -> None:
    server = instances[0]
    for body in (
        {"message": "a b c", "stream": False},  # stream=false waits by default
        {"message": "a b c", "stream": False, "wait": True, "wait_timeout_seconds": 60},
        {"message": "a b c", "stream": False, "background": True, "wait": True},
    ):
        answer = post(server, body)
        assert answer.status_code == 200, answer.text
        run = answer.json()
        assert run["status"] == "COMPLETED" and run["content"] == "a b c"
        assert answer.headers["x-run-id"] == run["run_id"]


def test_wait_answers_504_when_its_budget_runs_out_and_the_run_goes_on(
    instances: list[ServerProcess],
) -> None:
    server = instances[0]
    answer = post(server, {"message": SLOW, "stream": False, "wait_timeout_seconds": 0.2})
    assert answer.status_code == 504, answer.text
    body = answer.json()
    assert body["code"] == "wait_timeout" and body["detail"]
    assert body["run_id"] == answer.headers["x-run-id"]
    assert body["status"] in ("PENDING", "QUEUED", "RUNNING")
    assert body["wait_timeout_seconds"] == 0.2
    assert body["request_timeout_seconds"] == Settings().http.max_wait
    # The run was not stopped by the answer: it ends as it would have.
    run = wait_ended(server, body["run_id"])
    assert run["status"] == "COMPLETED" and run["content"] == SLOW


def test_the_wait_is_capped_by_max_wait_seconds(tmp_path: Path) -> None:
    env = {"AGENTOS_MAX_WAIT_SECONDS": "0.3"}
    with ServerProcess(tmp_path, app="tests.apps:served", delay=DELAY, env=env) as server:
        for asked in (None, 3600):
            body: dict[str, Any] = {"message": SLOW, "stream": "false"}
            if asked is not None:
                body["wait_timeout_seconds"] = str(asked)
            answer = httpx.post(f"{server.url}/agents/echo/runs", data=body, timeout=30)
            assert answer.status_code == 504, answer.text
            assert answer.json()["wait_timeout_seconds"] == 0.3
            assert answer.json()["request_timeout_seconds"] == 0.3


# -- Idempotency-Key --------------------------------------------------------------------------


def _key() -> str:
    return f"key {uuid.uuid4()}"


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        ({"stream": False, "background": True}, 202),
        ({"stream": False}, 200),
        ({"stream": False, "wait_timeout_seconds": 0.1, "message": SLOW}, 504),
    ],
    ids=["background", "wait", "wait-timeout"],
)
def test_a_repeated_create_gets_the_same_run_and_status(
    instances: list[ServerProcess], mode: dict[str, Any], status: int
) -> None:
    key = _key()
    body = {"message": "one two", **mode}
    first = post(instances[0], body, key=key)
    assert first.status_code == status, first.text
    run_id = first.headers["x-run-id"]
    assert "idempotent-replayed" not in first.headers
    for server in instances:  # on PostgreSQL, the other instance too
        again = post(server, body, key=key)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["x-run-id"] == run_id
        assert again.headers["x-session-id"] == first.headers["x-session-id"]
        if status == 202:
            assert again.status_code == 202
            # The same body, but for the resume token (a fresh one, a later expiry, is as good)
            # and the status, which is the run's of now.
            assert _without_token(again.json()) == _without_token(first.json())
            assert again.json()["status"] in ("PENDING", "RUNNING", "COMPLETED")
        elif status == 200:
            assert again.status_code == 200
            assert again.json()["status"] == "COMPLETED"
            assert again.json()["run_id"] == run_id
        elif server is instances[0]:  # still running here: the repeat waits, and times out
            assert again.status_code == 504
            assert again.json()["run_id"] == run_id
    session = httpx.get(
        f"{instances[0].url}/sessions/{first.headers['x-session-id']}", headers=OPERATOR
    ).json()
    assert [run["run_id"] for run in session["runs"]] == [run_id]
    if status == 504:
        wait_ended(instances[0], run_id)
        ended = post(instances[-1], body, key=key)
        # Once the run has ended, the same waiting create answers with it.
        assert (ended.status_code, ended.json()["run_id"]) == (200, run_id)


def _without_token(body: dict[str, Any]) -> dict[str, Any]:
    assert body["resume_token"]
    return {k: v for k, v in body.items() if k not in ("resume_token", "status")}


def _stream(server: ServerProcess, body: dict[str, Any], key: str) -> tuple[str, list[str]]:
    """A streaming create: its run id and the data of its numbered events."""
    headers = {**OPERATOR, "Idempotency-Key": key}
    with httpx.stream(
        "POST", f"{server.url}/agents/echo/runs", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        events = [f.data for f in iter_frames(response) if not f.is_meta]
        return response.headers["x-run-id"], events


@pytest.mark.parametrize("background", [True, False], ids=["background", "inline"])
def test_a_repeated_streaming_create_streams_the_same_run_from_its_start(
    instances: list[ServerProcess], background: bool
) -> None:
    key = _key()
    body = {"message": words(30), "stream": True, "background": background}
    run_id, events = _stream(instances[0], body, key)
    assert json.loads(events[-1])["event"] == "RunCompleted"
    for server in instances:
        again_id, again = _stream(server, body, key)
        assert (again_id, again) == (run_id, events)


async def test_a_repeat_while_the_first_stream_goes_on_sees_every_event(
    instances: list[ServerProcess],
) -> None:
    key = _key()
    body = {"message": words(60), "stream": True, "background": True}
    headers = {**OPERATOR, "Idempotency-Key": key}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        async with http.stream("POST", f"{instances[0].url}/agents/echo/runs", json=body) as first:
            seen = []
            async for frame in frames(first):
                seen.append(frame.data)
                if len(seen) == 3:
                    break
            # The run goes on; a repeat (on the other instance, on PostgreSQL) follows it.
            async with http.stream(
                "POST", f"{instances[-1].url}/agents/echo/runs", json=body
            ) as again:
                assert again.headers["x-run-id"] == first.headers["x-run-id"]
                repeated = [
                    f.data for f in [frame async for frame in frames(again)] if not f.is_meta
                ]
    assert repeated[:3] == seen
    assert [json.loads(e)["event_index"] for e in repeated] == list(range(len(repeated)))
    assert json.loads(repeated[-1])["event"] == "RunCompleted"


def test_the_same_key_with_another_request_is_a_conflict(
    instances: list[ServerProcess],
) -> None:
    key = _key()
    body = {"message": "hello", "stream": False, "background": True, "session_id": "s-conflict"}
    first = post(instances[0], body, key=key)
    assert first.status_code == 202
    changes: list[dict[str, Any]] = [
        {"message": "hello!"},
        {"session_id": "s-other"},
        {"user_id": "bob"},
        {"background": False},
        {"stream": True},
        {"retry_policy": {"max_attempts": 2}},
        {"timeout_seconds": 5},
        {"multitask": "reject"},
        {"run_id": "chosen-by-the-client"},
    ]
    for change in changes:
        answer = post(instances[-1], {**body, **change}, key=key)
        assert answer.status_code == 422, (change, answer.text)
        assert answer.json()["code"] == "idempotency_conflict"
    # The same request as a form is the same request.
    form = {k: str(v).lower() if isinstance(v, bool) else v for k, v in body.items()}
    assert (
        post(instances[-1], form, key=key, form=True).headers["x-run-id"] == first.json()["run_id"]
    )
    # wait_timeout_seconds is not part of the request: only how long this answer waits.
    assert post(instances[0], {**body, "wait_timeout_seconds": 3}, key=key).status_code == 202


def test_keys_are_scoped_by_component_and_by_user(instances: list[ServerProcess]) -> None:
    key = _key()
    body = {"message": "hi", "stream": False, "background": True}
    runs = {
        (path, user): post(instances[0], body, key=key, path=path, user=user).json()["run_id"]
        for path in ("/agents/echo/runs", "/agents/tools/runs", "/teams/team/runs")
        for user in (None, "alice", "bob")
    }
    assert len(set(runs.values())) == len(runs)
    for (path, user), run_id in runs.items():
        again = post(instances[-1], body, key=key, path=path, user=user)
        assert again.json()["run_id"] == run_id


@pytest.mark.parametrize(
    "mode",
    [{"stream": False, "background": True}, {"stream": False}],
    ids=["background", "wait"],
)
async def test_concurrent_creates_with_one_key_make_one_run(
    instances: list[ServerProcess], mode: dict[str, Any]
) -> None:
    key = _key()
    session_id = f"race-{uuid.uuid4()}"
    body = {"message": "x y z", "session_id": session_id, **mode}
    headers = {**OPERATOR, "Idempotency-Key": key}
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        answers = await asyncio.gather(
            *(
                http.post(f"{instances[n % len(instances)].url}/agents/echo/runs", json=body)
                for n in range(24)
            )
        )
    assert {a.status_code for a in answers} == {202 if mode.get("background") else 200}
    assert len({a.headers["x-run-id"] for a in answers}) == 1
    assert sum("idempotent-replayed" not in a.headers for a in answers) == 1
    session = httpx.get(f"{instances[0].url}/sessions/{session_id}", headers=OPERATOR).json()
    assert len(session["runs"]) == 1


def test_a_create_that_failed_lets_its_key_be_used_again(
    instances: list[ServerProcess],
) -> None:
    key = _key()
    bad = post(instances[0], {"message": "   ", "stream": False}, key=key)
    assert bad.status_code == 422  # a blank message: no run
    good = post(instances[-1], {"message": "   ", "stream": False}, key=key)
    assert good.status_code == 422
    for run_id in ("x" * 201, "not/url/safe"):  # refused before the key is written
        bad_id = post(instances[0], {"message": "hi", "stream": False, "run_id": run_id}, key=key)
        assert bad_id.status_code == 422 and bad_id.json()["detail"].startswith("run_id")
    taken = post(instances[0], {"message": "hi", "stream": False}).json()["run_id"]
    clash = post(instances[0], {"message": "hi", "stream": False, "run_id": taken}, key=key)
    assert clash.status_code == 409
    fresh = post(
        instances[0], {"message": "hi", "stream": False, "run_id": f"r-{key[4:]}"}, key=key
    )
    assert fresh.status_code == 200 and fresh.json()["run_id"] == f"r-{key[4:]}"


# -- attempts ---------------------------------------------------------------------------------


def test_the_attempts_of_a_run(instances: list[ServerProcess]) -> None:
    server = instances[0]
    run = post(server, {"message": "a b", "stream": False, "session_id": "s-att"}).json()
    for each in instances:
        base = f"{each.url}/agents/echo/runs/{run['run_id']}/attempts"
        answer = httpx.get(base, headers=OPERATOR, timeout=10)
        assert answer.status_code == 200, answer.text
        (attempt,) = answer.json()
        assert attempt["attempt"] == 1
        assert attempt["instance_id"] == server.instance_id
        assert attempt["outcome"] == "COMPLETED" and attempt["error"] is None
        assert attempt["started_at"] <= attempt["ended_at"]
        assert httpx.get(base, params={"session_id": "s-att"}, headers=OPERATOR).status_code == 200
    failed = post(server, {"message": "a b c d", "stream": False}, path="/agents/fails/runs")
    (attempt,) = httpx.get(
        f"{server.url}/agents/fails/runs/{failed.json()['run_id']}/attempts", headers=OPERATOR
    ).json()
    assert attempt["outcome"] == "ERROR" and "the tool broke" in attempt["error"]


def test_attempts_are_found_like_the_run(instances: list[ServerProcess]) -> None:
    server = instances[0]
    mine = post(server, {"message": "mine", "stream": False}, user="alice").json()["run_id"]
    for path, headers, params in [
        (f"/agents/echo/runs/{uuid.uuid4()}/attempts", OPERATOR, {}),
        (f"/agents/tools/runs/{mine}/attempts", OPERATOR, {}),
        (f"/agents/echo/runs/{mine}/attempts", OPERATOR, {"session_id": "another"}),
        (f"/agents/echo/runs/{mine}/attempts", auth("bob"), {}),  # another user's run
    ]:
        answer = httpx.get(server.url + path, headers=headers, params=params, timeout=10)
        assert (answer.status_code, answer.json()["code"]) == (404, "run_not_found"), path
    assert httpx.get(f"{server.url}/agents/echo/runs/{mine}/attempts").status_code == 401
    answer = httpx.get(f"{server.url}/agents/echo/runs/{mine}/attempts", headers=auth("alice"))
    assert answer.status_code == 200 and answer.json()[0]["outcome"] == "COMPLETED"
