"""The OpenAPI 3.1 document of PROTOCOL.md, served at ``GET /openapi.json``.

Written by hand, next to the routes of ``app.py``: a test checks that every route of the app is
in it (method and path), and a schemathesis run against a live server checks that the answers
keep to it (statuses, content types, bodies). Streams are declared as ``text/event-stream``;
their frames are described in PROTOCOL.md. The WebSocket route is listed under
``x-websockets``, since OpenAPI has no way to describe one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["document"]

_JSON = "application/json"
_SSE = "text/event-stream"
_KINDS = ["agents", "teams", "workflows"]
_STATUSES = ["PENDING", "QUEUED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED"]

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
_NUMBER: dict[str, Any] = {"type": "number"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_SCHEMAS: dict[str, Any] = {
    "ServerSentEvent": {
        "type": "object",
        "description": "One frame: a run event (with `id:`, its event_index) or a meta event "
        "(catch_up, subscribed, replay, error; no id). `data` is one JSON object.",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": _JSON},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "retry": {"type": "integer"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["detail", "code"],
        "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
    },
    "Component": {
        "type": "object",
        "required": ["id", "name"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "description": _NULLABLE_STRING,
            "version": _NULLABLE_STRING,
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ComponentDetail": {
        "type": "object",
        "description": "A component with its state and the stats of its runs.",
        "required": ["id", "name", "kind", "paused", "stats"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "description": _NULLABLE_STRING,
            "version": _NULLABLE_STRING,
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"type": "string"},
            "paused": {"type": "boolean"},
            "registered_at": {"type": ["number", "null"]},
            "stats": {"type": "object"},
        },
    },
    "Task": {
        "type": "object",
        "description": "A task: a component, a message and a schedule (PROTOCOL.md, Tasks).",
        "required": ["task_id", "kind", "component_id", "message", "schedule", "active"],
        "properties": {
            "task_id": {"type": "string"},
            "kind": {"enum": _KINDS},
            "component_id": {"type": "string"},
            "message": {"type": "string"},
            "schedule": {"type": "object"},
            "timeout_seconds": {"type": ["number", "null"]},
            "retry_policy": {"type": ["object", "null"]},
            "overlap_policy": {"type": "string"},
            "session_policy": {"type": "string"},
            "session_id": _NULLABLE_STRING,
            "catchup": {"type": "string"},
            "catchup_window_seconds": _NUMBER,
            "active": {"type": "boolean"},
            "description": _NULLABLE_STRING,
            "tags": {"type": "array", "items": {"type": "string"}},
            "user_id": _NULLABLE_STRING,
            "created_at": _NUMBER,
            "updated_at": _NUMBER,
            "next_fire_at": _NULLABLE_STRING,
            "queued_occurrence": _NULLABLE_STRING,
            "last_fired_at": _NULLABLE_STRING,
            "last_run_id": _NULLABLE_STRING,
            "fired": {"type": "integer"},
            "skipped": {"type": "integer"},
        },
    },
    "TaskInput": {
        "type": "object",
        "description": "A new task, or (PATCH) the fields to change.",
        "properties": {
            "task_id": {"type": "string"},
            "kind": {"enum": _KINDS},
            "component_id": {"type": "string"},
            "message": {"type": "string"},
            "schedule": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["manual", "once", "interval", "cron"]},
                    "at": {"type": ["string", "number"]},
                    "every_seconds": _NUMBER,
                    "start_at": {"type": ["string", "number"]},
                    "cron": {"type": "string"},
                    "timezone": {"type": "string"},
                },
            },
            "timeout_seconds": _NUMBER,
            "retry_policy": {"type": "object"},
            "overlap_policy": {
                "enum": ["skip_if_running", "queue_next", "cancel_previous", "allow_parallel"]
            },
            "session_policy": {"enum": ["task", "run", "fixed"]},
            "session_id": {"type": "string"},
            "catchup": {"enum": ["skip", "latest", "all"]},
            "catchup_window_seconds": _NUMBER,
            "active": {"type": "boolean"},
            "description": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "user_id": {"type": "string"},
        },
    },
    "Run": {
        "type": "object",
        "description": "A run; the component's id is under agent_id, team_id or workflow_id.",
        "required": ["run_id", "session_id", "status", "created_at", "event_count"],
        "properties": {
            "run_id": {"type": "string"},
            "session_id": {"type": "string"},
            "agent_id": {"type": "string"},
            "team_id": {"type": "string"},
            "workflow_id": {"type": "string"},
            "user_id": _NULLABLE_STRING,
            "status": {"enum": _STATUSES},
            "input": _NULLABLE_STRING,
            "content": _NULLABLE_STRING,
            "error": _NULLABLE_STRING,
            "created_at": _NUMBER,
            "updated_at": _NUMBER,
            "event_count": {"type": "integer", "minimum": 0},
            "attempt": {
                "type": "integer",
                "minimum": 0,
                "description": "The current (or last) attempt; 0 while queued before the first.",
            },
            "task_id": _NULLABLE_STRING,
            "occurrence": _NULLABLE_STRING,
            "truncated": {
                "type": "boolean",
                "description": "In lists: whether input, content or error was cut.",
            },
        },
    },
    "RunAccepted": {
        "type": "object",
        "required": ["run_id", "session_id", "status"],
        "properties": {
            "run_id": {"type": "string"},
            "session_id": {"type": "string"},
            "status": {"enum": _STATUSES},
            "resume_token": {"type": "string"},
        },
    },
    "RunRequest": {
        "type": "object",
        "required": ["message"],
        "properties": {
            "message": {"type": "string", "description": "The run's input (not blank)."},
            "stream": {"type": "boolean", "default": True},
            "background": {"type": "boolean", "default": False},
            "wait": {
                "type": "boolean",
                "description": "stream=false only: answer when the run ends (200), or with 504 "
                "after wait_timeout_seconds. Default: true unless background.",
            },
            "wait_timeout_seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": 604800,
                "description": "Seconds to wait at most; capped by the server's "
                "max_wait_seconds, its default.",
            },
            "session_id": {"type": "string"},
            "user_id": {"type": "string"},
            "run_id": {"type": "string", "description": "A client-chosen run id."},
            "retry_policy": {
                "description": "Attempts and delays (in a form: its JSON text); default: the "
                "component's, else one attempt.",
                "oneOf": [_ref("RetryPolicy"), {"type": "string"}],
            },
            "timeout_seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": 604800,
                "description": "Seconds an attempt may take (0: no limit); default: the "
                "component's, else run_timeout.",
            },
            "multitask": {
                "enum": ["parallel", "reject", "enqueue", "interrupt"],
                "description": "What happens while the session has an active run.",
            },
        },
    },
    "RetryPolicy": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
            "delay": {"type": "number", "minimum": 0, "maximum": 604800, "default": 1.0},
            "backoff": {"type": "number", "minimum": 1, "maximum": 100, "default": 2.0},
            "max_delay": {"type": "number", "minimum": 0, "maximum": 604800, "default": 60.0},
            "jitter": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1},
            "retry_on": {
                "type": "array",
                "maxItems": 32,
                "items": {"type": "string"},
                "description": "Reasons (exception, timeout, instance_lost, shutdown) or "
                "exception class names; default: every reason.",
            },
        },
    },
    "Attempt": {
        "type": "object",
        "required": ["attempt", "instance_id", "started_at", "ended_at", "outcome", "error"],
        "properties": {
            "attempt": {"type": "integer", "minimum": 1},
            "instance_id": _NULLABLE_STRING,
            "started_at": {"type": ["number", "null"]},
            "ended_at": {"type": ["number", "null"]},
            "outcome": {
                "type": ["string", "null"],
                "description": "Why a retried attempt ended (exception, timeout, "
                "instance_lost, shutdown), or the run's final status; null while it runs.",
            },
            "error": _NULLABLE_STRING,
        },
    },
    "WaitTimeoutError": {
        "description": "An Error: the run did not end within the wait; it goes on.",
        "allOf": [
            _ref("Error"),
            {
                "type": "object",
                "required": [
                    "run_id",
                    "session_id",
                    "status",
                    "wait_timeout_seconds",
                    "request_timeout_seconds",
                ],
                "properties": {
                    "code": {"const": "wait_timeout"},
                    "run_id": {"type": "string"},
                    "session_id": {"type": "string"},
                    "status": {"enum": _STATUSES},
                    "wait_timeout_seconds": _NUMBER,
                    "request_timeout_seconds": {"type": ["number", "null"]},
                },
            },
        ],
    },
    "ResumeRequest": {
        "type": "object",
        "properties": {
            "last_event_index": {"type": "integer", "minimum": -1},
            "session_id": {"type": "string"},
        },
    },
    "CancelRequest": {"type": "object", "properties": {"session_id": {"type": "string"}}},
    "SessionSummary": {
        "type": "object",
        "required": ["session_id", "kind", "component_id", "run_count"],
        "properties": {
            "session_id": {"type": "string"},
            "kind": {"enum": _KINDS},
            "component_id": {"type": "string"},
            "user_id": _NULLABLE_STRING,
            "run_count": {"type": "integer", "minimum": 0},
            "created_at": _NUMBER,
            "updated_at": _NUMBER,
        },
    },
    "Session": {
        "type": "object",
        "required": ["session_id", "runs", "messages"],
        "properties": {
            "session_id": {"type": "string"},
            "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
            "messages": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Config": {
        "type": "object",
        "required": ["agents", "teams", "workflows", "instance_id", "security"],
        "properties": {
            **{
                kind: {"type": "array", "items": {"$ref": "#/components/schemas/Component"}}
                for kind in _KINDS
            },
            "instance_id": {"type": "string"},
            "security": {"type": "boolean"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "instance_id", "checks"],
        "properties": {
            "status": {"enum": ["running", "degraded", "down", "draining"]},
            "instance_id": {"type": "string"},
            "active_runs": {"type": "integer"},
            "open_streams": {"type": "integer"},
            "buffered_runs": {"type": "integer"},
            "buffered_bytes": {"type": "integer"},
            "commits": {"type": "integer"},
            "events_written": {"type": "integer"},
            "pending_events": {"type": "integer"},
            "commits_failing_for": _NUMBER,
            "checks": {
                "type": "object",
                "required": ["database", "committer", "buffer", "background"],
                "additionalProperties": {
                    "type": "object",
                    "required": ["ok"],
                    "properties": {"ok": {"type": "boolean"}},
                },
            },
        },
    },
    "Live": {
        "type": "object",
        "required": ["status", "instance_id"],
        "properties": {"status": {"const": "alive"}, "instance_id": {"type": "string"}},
    },
    "Ready": {
        "type": "object",
        "required": ["status", "instance_id"],
        "properties": {
            "status": {"enum": ["ready", "not_ready"]},
            "reason": {"enum": ["draining", "down", "database"]},
            "instance_id": {"type": "string"},
        },
    },
}

_ERRORS = {
    "400": "Bad request",
    "401": "No credential, or an invalid token (when security is on)",
    "403": "Wrong key, or a missing scope",
    "404": "Unknown kind, component, run or session",
    "405": "Method not allowed",
    "408": "The body did not arrive in time",
    "409": "The run id is taken, the component is paused, or the session has an active run "
    "(session_busy: multitask=reject; session_active: delete)",
    "410": "The stream can no longer be served",
    "413": "The body is too large",
    "422": "A field is missing or invalid (invalid_request), or an Idempotency-Key reused "
    "with another request (idempotency_conflict)",
    "429": "The run queue is full (queue_full, with Retry-After): nothing was created",
    "500": "Internal error",
    "503": "Draining, overloaded, or the database is unavailable (with Retry-After)",
    "504": "wait=true waited its budget; the run goes on",
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _errors(*codes: str) -> dict[str, Any]:
    """Error answers: ``{"detail", "code"}`` JSON."""
    return {code: _json(_ERRORS[code], _ref("Error")) for code in codes}


def _path(name: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema} | (
        {"description": description} if description else {}
    )


def _body(name: str, required: bool) -> dict[str, Any]:
    schema = _ref(name)
    return {
        "required": required,
        "content": {
            _JSON: {"schema": schema},
            "application/x-www-form-urlencoded": {"schema": schema},
        },
    }


_KIND = _path("kind", {"enum": _KINDS})
# Under text/event-stream, OpenAPI 3.1 tools read ``schema`` as the schema of one event.
_SSE_EVENT = {"$ref": "#/components/schemas/ServerSentEvent"}
_STREAM = {
    "description": "The run's events as Server-Sent Events (`id:` is the event_index); see "
    "PROTOCOL.md for the frames",
    "content": {_SSE: {"schema": _SSE_EVENT}},
}
# Every route behind the security guard may answer 401/403; any may answer 500.
_GUARDED = ("401", "403", "500")
_PUBLIC = ("500",)


def _component_route(component: dict[str, Any], method: str, summary: str) -> dict[str, Any]:
    """A route on one component that answers the component object (details, pause, resume)."""
    return {
        "parameters": [_KIND, component],
        method: _operation(
            summary,
            {"200": _json("The component", _ref("ComponentDetail"))},
            errors=("404", "503"),
        ),
    }


def _operation(
    summary: str,
    responses: dict[str, Any],
    *,
    errors: tuple[str, ...] = (),
    public: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    answers = {**responses, **_errors(*errors, *(_PUBLIC if public else _GUARDED))}
    operation: dict[str, Any] = {"summary": summary, "responses": answers, **extra}
    if public:
        operation["security"] = []
    return operation


def _task_paths() -> dict[str, Any]:
    task = _path("task_id")
    one = {"200": _json("The task", _ref("Task"))}
    body_errors = ("404", "408", "413", "422", "503")
    page = [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0}),
    ]
    return {
        "/tasks": {
            "post": _operation(
                "Create a task",
                {"201": _json("The task", _ref("Task"))},
                errors=("408", "409", "413", "422", "503"),
                requestBody=_body("TaskInput", True),
            ),
            "get": _operation(
                "Tasks, oldest first",
                {"200": _json("Tasks", {"type": "array", "items": _ref("Task")})},
                errors=("422", "503"),
                parameters=[
                    _query("kind", {"enum": _KINDS}),
                    _query("component_id", {"type": "string"}),
                    _query("active", {"type": "boolean"}),
                    _query("tag", {"type": "string"}),
                    _query("user_id", {"type": "string"}),
                    *page,
                ],
            ),
        },
        "/tasks/{task_id}": {
            "parameters": [task],
            "get": _operation("A task", one, errors=("404", "503")),
            "patch": _operation(
                "Change some fields of a task (a new schedule starts from now)",
                one,
                errors=body_errors,
                requestBody=_body("TaskInput", True),
            ),
            "delete": _operation(
                "Delete a task (its runs stay)",
                {"204": {"description": "Deleted"}},
                errors=("404", "503"),
            ),
        },
        "/tasks/{task_id}/pause": {
            "parameters": [task],
            "post": _operation("Stop firing the task", one, errors=("404", "503")),
        },
        "/tasks/{task_id}/resume": {
            "parameters": [task],
            "post": _operation(
                "Fire the task again (missed occurrences follow its catchup)",
                one,
                errors=("404", "503"),
            ),
        },
        "/tasks/{task_id}/trigger": {
            "parameters": [task],
            "post": _operation(
                "Start a run of the task now; with wait=true, answer when it has ended",
                {
                    "200": _json("The ended run (wait=true)", _ref("Run")),
                    "202": _json("The started run", _ref("Run")),
                },
                errors=("404", "408", "409", "413", "422", "503", "504"),
                parameters=[
                    _query("wait", {"type": "boolean"}),
                    _query("wait_seconds", {"type": "integer", "minimum": 1}),
                ],
            ),
        },
        "/tasks/{task_id}/runs": {
            "parameters": [task],
            "get": _operation(
                "The task's runs, newest first, with status and attempts",
                {"200": _json("Runs", {"type": "array", "items": _ref("Run")})},
                errors=("404", "422", "503"),
                parameters=[_query("status", {"type": "string"}), *page],
            ),
        },
    }


def document(component_ids: Sequence[str] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API; ``component_ids`` (the registered agents',
    teams' and workflows' ids) are given as examples of the ``id`` path parameter."""
    component = _path(
        "id", {"type": "string", **({"examples": list(component_ids)} if component_ids else {})}
    )
    run_path = [_KIND, component, _path("run_id")]
    run_list_params = [
        _query(
            "status", {"type": "string"}, "PENDING, QUEUED, RUNNING, COMPLETED, ERROR or CANCELLED"
        ),
        _query("session_id", {"type": "string"}),
        _query("user_id", {"type": "string"}),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0}),
    ]
    resume_answers = {
        "200": _STREAM,
        "204": {"description": "The cursor is at the run's terminal event already"},
    }
    resume_errors = ("404", "408", "410", "413", "422", "503")
    paths: dict[str, Any] = {
        "/": {
            "get": _operation(
                "The demo chat page",
                {"200": {"description": "HTML", "content": {"text/html": {}}}},
                public=True,
            )
        },
        "/static/agentos.js": {
            "get": _operation(
                "The browser client (an ES module)",
                {"200": {"description": "JavaScript", "content": {"text/javascript": {}}}},
                public=True,
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This document",
                {"200": _json("OpenAPI 3.1", {"type": "object"})},
                public=True,
            )
        },
        "/health": {
            "get": _operation(
                "Status and checks, for load balancers",
                {
                    "200": _json("running or degraded", _ref("Health")),
                    "503": _json("down or draining (with Retry-After)", _ref("Health")),
                },
                public=True,
            )
        },
        "/health/live": {
            "get": _operation(
                "Liveness: 200 while the process serves",
                {"200": _json("alive", _ref("Live"))},
                public=True,
            )
        },
        "/health/ready": {
            "get": _operation(
                "Readiness: 503 while draining, down, or when the database does not answer",
                {
                    "200": _json("ready", _ref("Ready")),
                    "503": _json("not ready (with Retry-After)", _ref("Ready")),
                },
                public=True,
            )
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics (needs the admin scope unless metrics_public)",
                {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
            )
        },
        "/config": {
            "get": _operation(
                "The registered agents, teams and workflows",
                {"200": _json("The configuration", _ref("Config"))},
            )
        },
        "/sessions": {
            "get": _operation(
                "Sessions, newest first",
                {"200": _json("Sessions", {"type": "array", "items": _ref("SessionSummary")})},
                errors=("422", "503"),
                parameters=[
                    _query("kind", {"enum": _KINDS}),
                    _query("component_id", {"type": "string"}),
                    _query("user_id", {"type": "string"}),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
            )
        },
        "/sessions/{session_id}": {
            "parameters": [_path("session_id")],
            "get": _operation(
                "A session: its newest runs that fit list_max_bytes, with their messages "
                "(X-Next-Offset: the offset of the older ones)",
                {"200": _json("The session", _ref("Session"))},
                errors=("404", "422", "503"),
                parameters=[
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0},
                        "runs to skip, counted back from the newest",
                    )
                ],
            ),
            "delete": _operation(
                "Delete a session with its runs, events and messages",
                {"204": {"description": "Deleted"}},
                errors=("404", "409", "503"),
            ),
        },
        **_task_paths(),
        "/{kind}": {
            "parameters": [_KIND],
            "get": _operation(
                "The components of a kind",
                {"200": _json("Components", {"type": "array", "items": _ref("Component")})},
                errors=("404",),
            ),
        },
        "/{kind}/{id}": _component_route(
            component, "get", "A component: its description, state (paused) and run stats"
        ),
        "/{kind}/{id}/pause": _component_route(
            component,
            "post",
            "Pause a component: new runs get 409 component_paused (operator or admin)",
        ),
        "/{kind}/{id}/resume": _component_route(
            component, "post", "Resume a paused component (operator or admin)"
        ),
        "/{kind}/{id}/runs": {
            "parameters": [_KIND, component],
            "post": _operation(
                "Start a run: stream it (default), wait for it (stream=false), or both in the "
                "background. A repeat with the same Idempotency-Key answers with the first "
                "create's run (Idempotent-Replayed: true)",
                {
                    "200": {
                        "description": "The run's events (stream=true), or the ended run as "
                        "JSON (stream=false, wait)",
                        "content": {
                            _SSE: {"schema": _SSE_EVENT},
                            _JSON: {"schema": _ref("Run")},
                        },
                    },
                    "202": _json(
                        "Started in the background (stream=false, no wait)", _ref("RunAccepted")
                    ),
                    "504": _json(
                        "wait: the run did not end within the wait; it goes on",
                        _ref("WaitTimeoutError"),
                    ),
                },
                errors=("404", "408", "409", "413", "422", "429", "503"),
                parameters=[
                    _query("run_id", {"type": "string"}, "A client-chosen run id"),
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        "description": "1 to 200 printable ASCII characters: a create repeated "
                        "with it within idempotency_ttl gets the same run",
                    },
                ],
                requestBody=_body("RunRequest", True),
            ),
            "get": _operation(
                "Runs of a component, newest first (X-Next-Offset when cut by size)",
                {"200": _json("Runs", {"type": "array", "items": _ref("Run")})},
                errors=("404", "422", "503"),
                parameters=run_list_params,
            ),
        },
        "/{kind}/{id}/runs/{run_id}": {
            "parameters": run_path,
            "get": _operation(
                "A run",
                {"200": _json("The run", _ref("Run"))},
                errors=("404", "503"),
                parameters=[_query("session_id", {"type": "string"})],
            ),
        },
        "/{kind}/{id}/runs/{run_id}/attempts": {
            "parameters": run_path,
            "get": _operation(
                "A run's attempts, oldest first",
                {"200": _json("The attempts", {"type": "array", "items": _ref("Attempt")})},
                errors=("404", "503"),
                parameters=[_query("session_id", {"type": "string"})],
            ),
        },
        "/{kind}/{id}/runs/{run_id}/resume": {
            "parameters": run_path,
            "get": _operation(
                "Follow a run from a cursor (Last-Event-ID or last_event_index)",
                resume_answers,
                errors=resume_errors,
                parameters=[
                    _query("last_event_index", {"type": "integer", "minimum": -1}),
                    _query("session_id", {"type": "string"}),
                    _query("token", {"type": "string"}, "A run-scoped resume token"),
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}},
                ],
            ),
            "post": _operation(
                "Follow a run from a cursor (body form of the GET)",
                resume_answers,
                errors=resume_errors,
                requestBody=_body("ResumeRequest", False),
            ),
        },
        "/{kind}/{id}/runs/{run_id}/cancel": {
            "parameters": run_path,
            "post": _operation(
                "Cancel a run (a no-op on an ended run)",
                {"200": _json("The run", _ref("Run"))},
                errors=("404", "408", "413", "422", "503"),
                requestBody=_body("CancelRequest", False),
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentos",
            "version": "1",
            "description": "Run agents, teams and workflows in the background and stream their "
            "events; the wire contract is PROTOCOL.md.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The security key, or a JWT",
                }
            },
        },
        "security": [{"bearer": []}],
        "x-websockets": {
            "/workflows/ws": "Follow workflow runs over one WebSocket; see PROTOCOL.md, "
            '"WebSocket details"'
        },
    }
