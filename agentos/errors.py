"""The server's errors, one hierarchy.

    AgentOSError
     ├── ComponentNotFound      unknown agent, team or workflow      404
     ├── RunNotFound            unknown run (or wrong session_id)    404
     ├── RunAlreadyExists       client-chosen run_id taken           409
     ├── InvalidRequest         a field is missing or invalid        422
     │    └── InvalidCursor     last_event_index out of range        422
     ├── RequestTooLarge        body over max_body_bytes             413
     ├── RequestTimeout         body slower than http_body_timeout   408
     ├── NotAuthenticated       no credential                        401
     │    └── InvalidToken      JWT or resume token not valid        401
     ├── NotAuthorized          security key wrong; user_id not yours 403
     │    └── MissingScope      the credential lacks a scope         403
     ├── AuthUnavailable        the JWT signing keys cannot be fetched 503
     ├── ShuttingDown           the server is draining               503
     ├── Overloaded             max_active_runs / max_streams hit    503
     ├── QueueFull              max_queued_runs runs wait already    429
     ├── SessionBusy            multitask=reject, the session has an active run 409
     ├── IdempotencyConflict    Idempotency-Key reused with another body 422
     ├── EventsUnavailable      a stream can no longer be served     410
     ├── SessionNotFound        no run has this session id           404
     ├── SessionActive          delete of a session with a running run 409
     ├── ComponentPaused        a run of a paused component          409
 ├── TaskNotFound           unknown task                         404
 ├── TaskAlreadyExists      client-chosen task_id taken          409
 ├── WaitTimeout            wait=true ran past its budget        504
     ├── SchemaOutdated         the database needs `agentos db upgrade` (at start-up)
     ├── SchemaUnknown          the database is at a revision this release does not know
     ├── DatabaseUnsupported    a database server older than agentos needs (at start-up)
     ├── ModelError             the model server refused or failed (ends the run: RunError)
     │    ├── ModelUnavailable  connection error, 429, 5xx: retried before the first output
     │    └── ModelTimeout      no data from the model for model_read_timeout seconds
     ├── ToolRoundsExceeded     the model kept calling tools past max_tool_rounds
     ├── ToolCallsExceeded      more tool calls in one model turn than max_tool_calls
     ├── ReplyTooLarge          one model reply past model_reply_bytes
     ├── WriteConflict          another writer holds a run's event index (store -> committer)
     ├── StoreUnavailable       the database cannot be reached or commit now (transient) 503
     ├── DataRejected           the database refuses a value; retrying cannot help
     ├── CommitterStopped       the group committer no longer runs   503
     └── RunEnded               an event emitted after the run's terminal event

The last five are raised and caught inside the server: a backend translates its driver's errors
into ``WriteConflict``, ``StoreUnavailable`` (retry with backoff) and ``DataRejected`` (isolate
what carried the value); the committer and the run manager use ``CommitterStopped`` and
``RunEnded`` for control flow. A client sees them only as a 503 while the database is down.

Each error has a machine-readable ``code`` and an HTTP ``status``; the HTTP layer turns them into
``{"detail": ..., "code": ...}`` in one place. Errors carry their context (``run_id``) as attributes.
"""

from __future__ import annotations

__all__ = [
    "AgentOSError",
    "AuthUnavailable",
    "CommitterStopped",
    "ComponentNotFound",
    "ComponentPaused",
    "DataRejected",
    "DatabaseUnsupported",
    "EventsUnavailable",
    "IdempotencyConflict",
    "InstanceIdInUse",
    "InvalidCursor",
    "InvalidRequest",
    "InvalidToken",
    "MissingScope",
    "ModelError",
    "ModelTimeout",
    "ModelUnavailable",
    "NotAuthenticated",
    "NotAuthorized",
    "Overloaded",
    "QueueFull",
    "ReplyTooLarge",
    "RequestTimeout",
    "RequestTooLarge",
    "RunAlreadyExists",
    "RunEnded",
    "RunNotFound",
    "SchemaOutdated",
    "SchemaUnknown",
    "SessionActive",
    "SessionBusy",
    "SessionNotFound",
    "ShuttingDown",
    "StoreUnavailable",
    "TaskAlreadyExists",
    "TaskNotFound",
    "ToolCallsExceeded",
    "ToolRoundsExceeded",
    "WaitTimeout",
    "WriteConflict",
    "describe_error",
]


class AgentOSError(Exception):
    """Base class of every error the server raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ComponentNotFound(AgentOSError):
    status = 404
    code = "component_not_found"

    def __init__(self, kind: str, component_id: str) -> None:
        super().__init__(f"no {kind.rstrip('s')} with id {component_id!r}")
        self.kind = kind
        self.component_id = component_id


class RunNotFound(AgentOSError):
    status = 404
    code = "run_not_found"

    def __init__(self, run_id: str) -> None:
        # The id is not echoed: another user's run and no run read exactly the same.
        super().__init__("no such run")
        self.run_id = run_id


class RunAlreadyExists(AgentOSError):
    status = 409
    code = "run_exists"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run id {run_id!r} is already taken")
        self.run_id = run_id


class InvalidRequest(AgentOSError):
    status = 422
    code = "invalid_request"


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"

    def __init__(self, detail: str, run_id: str | None = None) -> None:
        super().__init__(detail)
        self.run_id = run_id


class RequestTooLarge(AgentOSError):
    status = 413
    code = "body_too_large"


class RequestTimeout(AgentOSError):
    """The request body did not arrive in time; the answer closes the connection."""

    status = 408
    code = "request_timeout"


class NotAuthenticated(AgentOSError):
    status = 401
    code = "not_authenticated"


class NotAuthorized(AgentOSError):
    status = 403
    code = "not_authorized"


class InvalidToken(NotAuthenticated):
    """A bearer JWT (or resume token) that does not verify: signature, expiry, issuer, ..."""

    code = "invalid_token"


class MissingScope(NotAuthorized):
    """The caller is known but its credential does not grant ``scope``."""

    code = "insufficient_scope"

    def __init__(self, scope: str) -> None:
        super().__init__(f"this needs the scope {scope!r}")
        self.scope = scope


class AuthUnavailable(AgentOSError):
    """The JWT signing keys (JWKS) cannot be fetched now; the caller may retry."""

    status = 503
    code = "auth_unavailable"


class ShuttingDown(AgentOSError):
    status = 503
    code = "shutting_down"


class Overloaded(AgentOSError):
    status = 503
    code = "overloaded"


class QueueFull(AgentOSError):
    """The run queue holds ``max_queued_runs`` runs already: nothing was created; the client
    is told when to try again (``Retry-After``)."""

    status = 429
    code = "queue_full"


class SessionBusy(AgentOSError):
    """``multitask=reject`` (or ``interrupt``, another run got in) and the session has an
    active run."""

    status = 409
    code = "session_busy"

    def __init__(self, session_id: str, multitask: str = "reject") -> None:
        super().__init__(f"session {session_id!r} has an active run (multitask={multitask})")
        self.session_id = session_id


class IdempotencyConflict(AgentOSError):
    """An ``Idempotency-Key`` seen before came with a different request."""

    status = 422
    code = "idempotency_conflict"


class EventsUnavailable(AgentOSError):
    status = 410
    code = "events_unavailable"

    def __init__(self, detail: str, run_id: str) -> None:
        super().__init__(detail)
        self.run_id = run_id


class WriteConflict(AgentOSError):
    """A commit would write an event index (or a run id) that another writer already holds."""

    status = 409
    code = "write_conflict"


class StoreUnavailable(AgentOSError):
    """The database cannot be reached, or cannot commit right now (locked, full, restarting)."""

    status = 503
    code = "database_unavailable"


class DataRejected(AgentOSError):
    """The database refuses a value it was given (for example text it cannot encode)."""

    status = 422
    code = "data_rejected"


class CommitterStopped(AgentOSError):
    """The group committer has stopped (shutdown, or it failed): nothing more is committed."""

    status = 503
    code = "unavailable"

    def __init__(self, detail: str = "the group committer is not running") -> None:
        super().__init__(detail)


class RunEnded(AgentOSError):
    """An event emitted after the run's terminal event (or after another writer ended it)."""

    code = "run_ended"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} has ended; no more events")
        self.run_id = run_id


class SessionNotFound(AgentOSError):
    status = 404
    code = "session_not_found"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session with id {session_id!r}")
        self.session_id = session_id


class SessionActive(AgentOSError):
    """A session cannot be deleted while one of its runs is still going."""

    status = 409
    code = "session_active"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} has a run still going; cancel it first")
        self.session_id = session_id


class ComponentPaused(AgentOSError):
    """The component is paused (``POST /{kind}/{id}/pause``): it takes no new runs."""

    status = 409
    code = "component_paused"

    def __init__(self, kind: str, component_id: str) -> None:
        super().__init__(f"{kind.rstrip('s')} {component_id!r} is paused; it takes no new runs")
        self.kind = kind
        self.component_id = component_id


class TaskNotFound(AgentOSError):
    status = 404
    code = "task_not_found"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task {task_id!r}")
        self.task_id = task_id


class TaskAlreadyExists(AgentOSError):
    status = 409
    code = "task_exists"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"a task with id {task_id!r} exists already")
        self.task_id = task_id


class WaitTimeout(AgentOSError):
    """``wait=true`` waited its budget and the run has not ended; it goes on (follow it)."""

    status = 504
    code = "wait_timeout"

    def __init__(self, detail: str, run_id: str) -> None:
        super().__init__(detail)
        self.run_id = run_id


class SchemaOutdated(AgentOSError):
    """The database's schema is older than this release needs; the server does not start."""

    status = 503
    code = "schema_outdated"

    def __init__(self, current: str, needed: str) -> None:
        super().__init__(
            f"the database schema is at revision {current}, this agentos needs {needed}: "
            "run `agentos db upgrade` (or set AGENTOS_DB_AUTO_UPGRADE=1)"
        )
        self.current = current
        self.needed = needed


class InstanceIdInUse(AgentOSError):
    """Another live process serves with this ``instance_id``; the server does not start."""

    status = 503
    code = "instance_id_in_use"

    def __init__(self, instance_id: str, holder: str) -> None:
        super().__init__(
            f"instance id {instance_id!r} is in use by another live process ({holder}): each "
            "process on one database needs its own AGENTOS_INSTANCE_ID (the default one is "
            "made from the host name and the database URL, the same for two processes on one "
            "host)"
        )
        self.instance_id = instance_id
        self.holder = holder


class SchemaUnknown(AgentOSError):
    """The database's schema revision is not one this release knows (a newer release's?)."""

    status = 503
    code = "schema_unknown"

    def __init__(self, current: str) -> None:
        super().__init__(
            f"the database schema is at revision {current!r}, unknown to this agentos "
            "(written by a newer release?)"
        )
        self.current = current


class DatabaseUnsupported(AgentOSError):
    """The database server is older than agentos needs; the server does not start."""

    status = 503
    code = "database_unsupported"

    def __init__(self, found: str, needed: str) -> None:
        super().__init__(f"the database server is {found}; agentos needs {needed} or later")
        self.found = found
        self.needed = needed


class ModelError(AgentOSError):
    """The model server refused a request or failed; the run ends with ``RunError``.

    A model implementation (``agentos.models``) translates its SDK's errors into these at one
    seam; the agent's loop decides what to retry.
    """

    status = 502
    code = "model_error"


class ModelUnavailable(ModelError):
    """A failure worth another try: no connection, 429 (``retry_after`` seconds), 5xx, or a
    stream cut short. The agent retries it only while the model call has emitted nothing."""

    code = "model_unavailable"

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ModelTimeout(ModelError):
    """The model sent nothing for ``model_read_timeout`` seconds."""

    code = "model_timeout"


class ToolRoundsExceeded(AgentOSError):
    """The model still called tools after ``max_tool_rounds`` rounds; the run ends."""

    code = "tool_rounds_exceeded"


class ToolCallsExceeded(AgentOSError):
    """The model asked for more than ``max_tool_calls`` tool calls in one turn; the run ends."""

    code = "tool_calls_exceeded"


class ReplyTooLarge(AgentOSError):
    """One model reply (content, reasoning, tool calls) passed ``model_reply_bytes``; the run
    ends and the model's stream is closed."""

    code = "reply_too_large"


def describe_error(exc: BaseException) -> str:
    """The error text of a failed run: the exception's type and message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
