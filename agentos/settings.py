"""One frozen settings object, read once at start-up from ``AGENTOS_*`` variables.

Settings come in sections, one per part of the server (``settings.buffer.ttl``,
``settings.ws.send_timeout``); every limit and timing is a field here, with its default, and
nothing in the package reads the environment anywhere else. Each field has one flat name, which is
also its environment variable without the ``AGENTOS_`` prefix::

    settings = Settings.from_env()                 # AGENTOS_BUFFER_TTL=60 ...
    settings = Settings(buffer_ttl=60.0)           # or explicitly, in code and tests
    settings = settings.replace(db_url="sqlite+aiosqlite:///runs.db")
    settings.buffer.ttl                            # 60.0
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "AgentSettings",
    "AuthSettings",
    "BufferSettings",
    "CommitSettings",
    "DatabaseSettings",
    "HTTPSettings",
    "LeaseSettings",
    "MonitoringSettings",
    "RetentionSettings",
    "RunSettings",
    "Settings",
    "StreamSettings",
    "TaskSettings",
    "WebSocketSettings",
]

_PREFIX = "AGENTOS_"
# Never shown by repr().
_SECRETS = frozenset({"security_key", "jwt_secret", "resume_token_secret"})


def _setting(default: Any, name: str) -> Any:
    """A field whose flat name (and environment variable, upper case) is ``name``."""
    return field(default=default, metadata={"name": name})


def _default_instance_id(db_url: str) -> str:
    """``agentos-`` and a hash of the host name and the database URL.

    Stable across restarts of the same server on the same machine (restart recovery finds an
    instance's runs by it), and it tells the clients it is sent to nothing about the host.
    """
    seed = f"{socket.gethostname()}\0{db_url}".encode("utf-8", "surrogatepass")
    return "agentos-" + hashlib.sha256(seed).hexdigest()[:16]


@dataclass(frozen=True)
class DatabaseSettings:
    """Where runs and events are kept (``backends/``)."""

    #: SQLAlchemy async URL of the run store; its scheme picks the backend (SQLite by default).
    url: str = _setting("sqlite+aiosqlite:///agentos.db", "db_url")
    #: Seconds to open (and to check with a keep-alive query) the PostgreSQL LISTEN connection.
    connect_timeout: float = _setting(10.0, "db_connect_timeout")
    #: Seconds a store operation waits for a connection from the pool, or (SQLite) for another
    #: process's write lock; past it the operation fails and the committer retries.
    timeout: float = _setting(5.0, "db_timeout")
    #: Seconds one PostgreSQL statement may run before it fails (a hung server cannot stall
    #: the committer, a stream or shutdown for longer).
    command_timeout: float = _setting(60.0, "db_command_timeout")
    #: Seconds between keep-alive queries on the PostgreSQL LISTEN connection.
    listen_keepalive: float = _setting(10.0, "db_listen_keepalive")
    #: Seconds start-up waits for the first LISTEN connection before tailing by polling.
    listen_ready_wait: float = _setting(5.0, "db_listen_ready_wait")
    #: Seconds before the first reconnect of a lost LISTEN connection; doubled per failure.
    reconnect_delay: float = _setting(0.1, "db_reconnect_delay")
    #: Longest wait in seconds between two reconnects of the LISTEN connection.
    reconnect_max_delay: float = _setting(5.0, "db_reconnect_max_delay")
    #: Upgrade an older schema at start-up (``agentos db upgrade``) instead of refusing to start.
    auto_upgrade: bool = _setting(False, "db_auto_upgrade")
    #: SQLite: a group commit of at most this many rows (new runs, rows of events, run
    #: updates; a row holds up to 256 consecutive events of a run, ``backends/eventrows.py``)
    #: is made on the event loop, with no trip to the driver's thread, when no other writer
    #: holds the database; larger groups, and any that would wait for a lock, go to the thread.
    #: 0: never, and reads stay off the loop too (otherwise a run, and a page of at most 16
    #: events, are read on the loop). (About 2 to 3 µs of the loop's time per row;
    #: ``max_batch_events`` caps a group.)
    inline_commit_max_rows: int = _setting(2_000, "db_inline_commit_max_rows")
    #: SQLite: ...and of at most this many characters of text (events' JSON, new runs' and
    #: updated runs' values): SQLite writes about a megabyte a millisecond, which the loop would
    #: spend on a group of large events or a run with a large input. 0: no group commits there.
    inline_commit_max_chars: int = _setting(1024 * 1024, "db_inline_commit_max_chars")
    #: SQLite: those reads on the loop stop at a row (a run with its input and content, a row
    #: of events) of more than this many bytes and are made again through the driver's thread:
    #: a run's input can be as large as a request body, and large events cost the loop
    #: milliseconds of page reads. 0: reads stay off the loop.
    inline_read_max_bytes: int = _setting(64 * 1024, "db_inline_read_max_bytes")


@dataclass(frozen=True)
class AuthSettings:
    """Who may call the server (``http/auth.py``)."""

    #: When set, every route but /health needs ``Authorization: Bearer <key>``.
    security_key: str | None = _setting(None, "security_key")
    #: Seconds a run-scoped resume token (``?token=`` on GET resume) stays valid; 0 disables.
    resume_token_ttl: float = _setting(3600.0, "resume_token_ttl")
    #: Key that signs resume tokens; default: the security key. Set it to have resume tokens
    #: under JWT authentication without a security key.
    resume_token_secret: str | None = _setting(None, "resume_token_secret")
    #: Shared secret of HS256 JWTs (``Authorization: Bearer <jwt>``); turns JWT auth on.
    jwt_secret: str | None = _setting(None, "jwt_secret")
    #: Public key of RS256/ES256 JWTs: PEM text, or the path of a PEM file.
    jwt_public_key: str | None = _setting(None, "jwt_public_key")
    #: URL of a JWKS document with the JWT signing keys (fetched, cached, refreshed on unknown kid).
    jwt_jwks_url: str | None = _setting(None, "jwt_jwks_url")
    #: Path of a JWKS document with the JWT signing keys (re-read on an unknown kid).
    jwt_jwks_file: str | None = _setting(None, "jwt_jwks_file")
    #: Required ``iss`` claim of JWTs; unset: not checked.
    jwt_issuer: str | None = _setting(None, "jwt_issuer")
    #: Required ``aud`` claim of JWTs (comma-separated: any of them); unset: not checked.
    jwt_audience: str | None = _setting(None, "jwt_audience")
    #: Accepted JWT algorithms, comma-separated; default: HS256 with a secret, RS256 and ES256
    #: with a public key or JWKS. ``none`` is never accepted.
    jwt_algorithms: str = _setting("", "jwt_algorithms")
    #: Seconds of clock skew allowed on ``exp`` and ``nbf``.
    jwt_leeway: float = _setting(30.0, "jwt_leeway")
    #: Least seconds between two JWKS fetches (an unknown ``kid`` triggers one).
    jwks_refresh_min_interval: float = _setting(60.0, "jwks_refresh_min_interval")
    #: Seconds a JWKS fetch may take.
    jwks_timeout: float = _setting(5.0, "jwks_timeout")
    #: Largest JWKS document accepted, in bytes.
    jwks_max_bytes: int = _setting(1024 * 1024, "jwks_max_bytes")

    @property
    def jwt_enabled(self) -> bool:
        """Whether bearer JWTs are accepted (a secret, a public key or a JWKS is configured)."""
        return any((self.jwt_secret, self.jwt_public_key, self.jwt_jwks_url, self.jwt_jwks_file))

    @property
    def enabled(self) -> bool:
        """Whether requests need a credential at all (else the server is open)."""
        return self.security_key is not None or self.jwt_enabled


@dataclass(frozen=True)
class BufferSettings:
    """Committed events kept in memory (``buffer.py``)."""

    #: Seconds an ended run's events stay in the in-process buffer.
    ttl: float = _setting(1800.0, "buffer_ttl")
    #: Events kept in memory per run; older ones are served from the database.
    max_events_per_run: int = _setting(10_000, "buffer_max_events_per_run")
    #: Payload bytes kept in memory per run; older events are served from the database.
    max_bytes_per_run: int = _setting(8 * 1024 * 1024, "buffer_max_bytes_per_run")
    #: Payload bytes kept in memory over all runs; ended runs go first, then the oldest events.
    max_bytes_total: int = _setting(256 * 1024 * 1024, "buffer_max_bytes_total")
    #: Seconds between sweeps that drop expired buffers.
    sweep_interval: float = _setting(30.0, "buffer_sweep_interval")


@dataclass(frozen=True)
class CommitSettings:
    """The group committer (``committer.py``)."""

    #: Events waiting for their group commit before a run's next event waits (backpressure).
    max_pending_events: int = _setting(10_000, "max_pending_events")
    #: Most events written in one transaction.
    max_batch_events: int = _setting(2_000, "max_batch_events")
    #: Longest time in seconds a group may wait to grow while groups commit back to back
    #: (``committer.py``, ``GroupCommitter._gather``); 0 (the default) commits each group at
    #: once. 0.003 streams a run's 10,000 events a third faster (bench/NOTES.md, session 7)
    #: but made a new run's first event wait behind a flooding one (p99 5.6 -> 20 ms).
    linger: float = _setting(0.0, "commit_linger")
    #: Seconds before the first retry of a failed commit; doubled per retry.
    retry_delay: float = _setting(0.05, "commit_retry_delay")
    #: Longest wait in seconds between two retries of a failed commit.
    retry_max_delay: float = _setting(5.0, "commit_retry_max_delay")
    #: Seconds shutdown waits for the last groups to commit; what is left after is lost.
    close_timeout: float = _setting(10.0, "commit_close_timeout")
    #: Seconds a create waits for its run to commit; then 503 ``database_unavailable``.
    create_timeout: float = _setting(10.0, "create_timeout")
    #: Seconds of failing commits after which /health says ``down`` (503) and this instance
    #: stops renewing its leases, so that other instances take its runs over.
    stall_timeout: float = _setting(30.0, "commit_stall_timeout")


@dataclass(frozen=True)
class RunSettings:
    """Runs of this instance (``runs.py``)."""

    #: Runs executing at once in this process; more wait in the queue (status QUEUED) for an
    #: instance with room.
    max_active: int = _setting(10_000, "max_active_runs")
    #: Runs that may wait in the queue (all instances together; checked per create, so
    #: instances creating at the same moment may overshoot by a few); past it a create gets
    #: 429 ``queue_full`` with ``Retry-After`` and creates nothing.
    max_queued: int = _setting(10_000, "max_queued_runs")
    #: Seconds between looks at the queue for runs to claim (runs queued here, retries whose
    #: delay passed, and on PostgreSQL every enqueue, wake the claimer earlier).
    queue_poll_interval: float = _setting(1.0, "queue_poll_interval")
    #: Runs claimed from the queue in one statement at most.
    claim_batch: int = _setting(100, "claim_batch")
    #: Seconds a run may take before it ends with an error ("timeout"); 0 disables.
    timeout: float = _setting(0.0, "run_timeout")
    #: Seconds running runs get on shutdown before they are cancelled.
    shutdown_grace: float = _setting(10.0, "shutdown_grace")
    #: Seconds shutdown waits for cancelled runs to write their terminal event.
    cancel_grace: float = _setting(10.0, "shutdown_cancel_grace")
    #: Seconds a cancel request waits for the run to end before answering.
    cancel_wait: float = _setting(5.0, "cancel_wait")
    #: Seconds an instance trusts its copy of the components' paused flags before reading the
    #: database again: a pause made on another instance stops new runs here within this time.
    component_state_ttl: float = _setting(1.0, "component_state_ttl")
    #: Seconds a run that emits events without awaiting anything else may hold the event loop
    #: before it lets other tasks in (group commits, streams, requests); 0: after every event.
    time_slice: float = _setting(0.001, "run_time_slice")


@dataclass(frozen=True)
class StreamSettings:
    """Following runs (``streams.py``) and the SSE responses (``http/sse.py``)."""

    #: Open event streams (SSE followers) in this process; more get 503 ``overloaded``.
    max_open: int = _setting(20_000, "max_streams")
    #: Events read from the database per page when replaying.
    replay_page_size: int = _setting(1_000, "replay_page_size")
    #: Seconds between database polls when tailing a run that another instance owns.
    tail_poll_interval: float = _setting(0.5, "tail_poll_interval")
    #: On PostgreSQL, wake such tails at once with LISTEN/NOTIFY (polling stays the fallback).
    tail_notify: bool = _setting(True, "tail_notify")
    #: Seconds at most between a tail's reads while the database cannot be reached (the first
    #: retry comes after ``tail_poll_interval``, then the delay doubles up to this).
    tail_retry_max_delay: float = _setting(5.0, "tail_retry_max_delay")
    #: Seconds a tail rides out a database outage; past that its stream ends with the error
    #: ``database_unavailable`` and the client resumes by cursor later.
    tail_outage_budget: float = _setting(60.0, "tail_outage_budget")
    #: Seconds between SSE keep-alive comments on an idle stream.
    ping_interval: float = _setting(15.0, "ping_interval")
    #: Events whose JSON text is at most this many bytes keep their encoded SSE frame, shared
    #: by every subscriber; larger ones are encoded per send (a copy of a big payload per
    #: buffered event would cost more memory than encoding saves time).
    sse_cache_max_bytes: int = _setting(512, "sse_cache_max_bytes")
    #: Bytes of events one subscriber (an SSE stream or a WebSocket) may have queued or in
    #: flight: past it, its stream waits for the client to read (by cursor: runs never wait).
    #: A single larger event goes alone. Pages read from the database for a stream are sized
    #: to it as well (by the largest event the stream has seen).
    max_queued_bytes: int = _setting(1024 * 1024, "stream_max_queued_bytes")
    #: Seconds a single SSE send may block before the stream is dropped.
    send_timeout: float = _setting(30.0, "send_timeout")
    #: Seconds, beyond ``shutdown_grace``, that open streams get on shutdown to deliver the
    #: terminal events of cancelled runs.
    shutdown_extra: float = _setting(5.0, "stream_shutdown_extra")


@dataclass(frozen=True)
class HTTPSettings:
    """Requests (``http/``) and the server process (``cli.py``)."""

    #: Largest accepted request body in bytes (413 beyond).
    max_body_bytes: int = _setting(10 * 1024 * 1024, "max_body_bytes")
    #: Seconds a client is told to wait (``Retry-After``) when the database cannot commit.
    retry_after: int = _setting(5, "retry_after")
    #: Bytes of run objects in one ``GET .../runs`` response; the runs past it are left out and
    #: ``X-Next-Offset`` says where the next page starts.
    list_max_bytes: int = _setting(1024 * 1024, "list_max_bytes")
    #: Characters of ``input``, ``content`` and ``error`` in a listed run; longer ones are cut
    #: and the run is marked ``"truncated": true`` (``GET .../runs/{run_id}`` has them whole).
    list_max_field_chars: int = _setting(1000, "list_max_field_chars")
    #: Seconds uvicorn gives open connections on shutdown, beyond ``shutdown_grace``.
    graceful_shutdown_extra: float = _setting(15.0, "graceful_shutdown_extra")
    #: Seconds a request body may take to arrive in full; a slower one gets 408 and the
    #: connection is closed. 0 disables.
    body_timeout: float = _setting(60.0, "http_body_timeout")
    #: Seconds a waiting create (``stream=false``, ``wait=true``) waits for its run at most: the
    #: default of its ``wait_timeout_seconds`` and the cap on it. Past it the answer is 504
    #: with the run's id and status (the run goes on). 0: no limit.
    max_wait: float = _setting(300.0, "max_wait_seconds")
    #: ``agentos serve``: seconds a connection has to send a complete request head, counted from
    #: its opening or the end of its previous response; then it is closed. Never applies while a
    #: response (an SSE stream) is under way, nor to WebSockets. 0 disables.
    header_timeout: float = _setting(10.0, "http_header_timeout")
    #: ``agentos serve``: open connections (HTTP and WebSocket). Past it a new connection takes
    #: the place of the one that has waited longest for its request head, or is closed when none
    #: waits. 0: the process's open-file limit minus 128 (kept for the database and files).
    max_connections: int = _setting(0, "http_max_connections")
    #: ``agentos serve``: repeated errors of the accept loop (``Too many open files``) are
    #: logged once, then as one line with a count at most every this many seconds.
    accept_error_log_interval: float = _setting(10.0, "accept_error_log_interval")
    #: The server process's garbage collector: allocations between two collections of its
    #: youngest generation (Python's default is 700). Requests and runs make many short-lived
    #: objects; collecting less often lets them die first instead of being promoted, so far
    #: fewer full collections walk every buffered event. Set while the app serves (its
    #: lifespan), restored after. 0 leaves Python's setting alone.
    gc_threshold: int = _setting(10_000, "gc_threshold")


@dataclass(frozen=True)
class WebSocketSettings:
    """``/workflows/ws`` (``http/ws.py``)."""

    #: Largest WebSocket frame served, in bytes; a larger one gets an error frame. (uvicorn's
    #: ``--ws-max-size``, 16 MiB by default, closes the socket on frames beyond that.)
    max_frame_bytes: int = _setting(64 * 1024, "ws_max_frame_bytes")
    #: Runs one WebSocket may follow at the same time.
    max_runs_per_socket: int = _setting(100, "ws_max_runs_per_socket")
    #: Frames a WebSocket may send per second, and as a burst; past it frames get a
    #: ``rate_limited`` error, and a second's worth more closes the socket (1008). 0 disables.
    max_frames_per_second: float = _setting(50.0, "ws_max_frames_per_second")
    #: Frames waiting to be sent on one WebSocket before its runs' followers wait for room.
    max_queued_frames: int = _setting(256, "ws_max_queued_frames")
    #: Seconds a single WebSocket send may block before the socket is closed (1008); 0 disables.
    send_timeout: float = _setting(30.0, "ws_send_timeout")
    #: Seconds a WebSocket may stay with neither a frame from the client nor a followed run;
    #: then it is closed (1000, "idle"), so idle sockets cannot hold the connection cap. 0: never.
    idle_timeout: float = _setting(120.0, "ws_idle_timeout")
    #: Seconds a WebSocket has to authenticate when a security key is set (then closed, 1008).
    auth_timeout: float = _setting(30.0, "ws_auth_timeout")
    #: Browser origins (``scheme://host[:port]``, comma-separated) whose pages may open a
    #: WebSocket, besides the server's own origin (the ``Origin`` matches the ``Host``); ``*``
    #: allows every origin. Requests without an ``Origin`` (not a browser) are always served.
    allowed_origins: str = _setting("", "ws_allowed_origins")


@dataclass(frozen=True)
class LeaseSettings:
    """Leases, the reaper and restart recovery (``leases.py``)."""

    #: Seconds an instance's lease on a running run lasts without renewal. When an instance
    #: dies, its runs end (``"instance_lost"``) at most ``lease_ttl + reaper_interval`` seconds
    #: after its last renewal. Instances' clocks must agree to well within this. On PostgreSQL
    #: it also bounds how long a transaction may sit idle (a paused instance's locks).
    ttl: float = _setting(20.0, "lease_ttl")
    #: Seconds between renewals of the leases on this instance's runs (below ``lease_ttl``).
    renew_interval: float = _setting(5.0, "lease_renew_interval")
    #: Seconds between this instance's looks for runs whose owner's lease expired.
    reaper_interval: float = _setting(5.0, "reaper_interval")


@dataclass(frozen=True)
class AgentSettings:
    """Agents that call a model and tools (``components/agent.py``, ``tools.py``)."""

    #: Model rounds that may call tools in one run; a run that needs more ends with RunError.
    max_tool_rounds: int = _setting(10, "max_tool_rounds")
    #: Tool calls the model may ask for in one turn; one more ends the run with RunError (the
    #: model's stream is closed at once).
    max_tool_calls: int = _setting(16, "max_tool_calls")
    #: Bytes of one tool call's arguments accepted from the model (UTF-8); a call with more is
    #: not run, its error goes back to the model, and only its size is kept.
    tool_argument_bytes: int = _setting(64 * 1024, "tool_argument_bytes")
    #: Bytes of one model reply (its content, reasoning and tool calls as they stream, UTF-8);
    #: past it the run ends with RunError (ReplyTooLarge) and the model's stream is closed at
    #: once. 0: no limit.
    model_reply_bytes: int = _setting(1024 * 1024, "model_reply_bytes")
    #: Seconds one tool call may take; then its error goes back to the model.
    tool_timeout: float = _setting(60.0, "tool_timeout")
    #: Threads for sync tools (a sync tool past its timeout keeps its thread until it returns;
    #: with every thread taken, further sync tool calls fail at once).
    tool_threads: int = _setting(8, "tool_threads")
    #: Bytes of a tool's result sent back to the model (UTF-8); the rest is cut off.
    tool_result_bytes: int = _setting(16 * 1024, "tool_result_bytes")
    #: Seconds the model may send nothing (before or between chunks) before the run ends.
    model_read_timeout: float = _setting(60.0, "model_read_timeout")
    #: Retries of a model call that failed (connection, 429, 5xx) before its first output.
    model_retry_attempts: int = _setting(3, "model_retry_attempts")
    #: Seconds before the first retry of a model call; doubled per retry.
    model_retry_delay: float = _setting(0.5, "model_retry_delay")
    #: Longest wait in seconds before a retry; a longer ``Retry-After`` is not waited for.
    model_retry_max_delay: float = _setting(20.0, "model_retry_max_delay")
    #: Earlier runs of its session an agent sees (their messages); 0 for none.
    history_runs: int = _setting(10, "history_runs")
    #: Bytes of session history sent to the model (the messages' JSON, UTF-8): the oldest runs'
    #: messages are left out first, whole runs at a time (a tool call never without its result).
    history_bytes: int = _setting(64 * 1024, "history_bytes")
    #: Model name of the demo's ``assistant`` agent (``agentos serve``); unset: echo only.
    model: str | None = _setting(None, "model")


@dataclass(frozen=True)
class MonitoringSettings:
    """Metrics and logs (``http/metrics.py``, ``logs.py``)."""

    #: Serve ``GET /metrics`` without the security key (for a scraper that cannot send it).
    metrics_public: bool = _setting(False, "metrics_public")
    #: ``agentos serve`` log lines: ``text`` (readable) or ``json`` (one object per line).
    log_format: str = _setting("text", "log_format")
    #: Most warnings and errors logged from one place in the code per ``log_flood_interval``
    #: (the next line let through counts those left out); 0: no limit.
    log_flood_lines: int = _setting(10, "log_flood_lines")
    #: Seconds of the ``log_flood_lines`` window.
    log_flood_interval: float = _setting(10.0, "log_flood_interval")
    #: Least seconds between two database checks of ``GET /health`` (``SELECT 1``); requests in
    #: between share the last answer, so load balancers polling hard cost the database little.
    health_check_interval: float = _setting(1.0, "health_check_interval")
    #: Seconds the database check of ``GET /health`` may take before it counts as failed.
    health_check_timeout: float = _setting(2.0, "health_check_timeout")


@dataclass(frozen=True)
class RetentionSettings:
    """Deleting old runs and expired idempotency keys (``retention.py``)."""

    #: Days after its creation an ended run is deleted, with its events and session messages;
    #: 0 keeps everything for ever. Runs still PENDING or RUNNING are never deleted.
    days: float = _setting(0.0, "retention_days")
    #: Most runs deleted in one transaction (with all their events and messages).
    batch_size: int = _setting(100, "retention_batch_size")
    #: Seconds between two retention passes (one instance at a time runs a pass).
    interval: float = _setting(3600.0, "retention_interval")
    #: Seconds an ``Idempotency-Key`` is remembered: a create repeated with the same key within
    #: it gets the same run. Expired keys are deleted by the retention passes.
    idempotency_ttl: float = _setting(86_400.0, "idempotency_ttl")


@dataclass(frozen=True)
class TaskSettings:
    """Tasks and their scheduler (``tasks.py``)."""

    #: Whether this instance fires scheduled tasks (every instance may; each occurrence fires
    #: once whichever does). Off: tasks are still served over HTTP and triggered by hand.
    scheduler: bool = _setting(True, "task_scheduler")
    #: Longest sleep in seconds of the scheduler between two looks at the due tasks (it wakes
    #: earlier for the next occurrence it knows of, and at once on task changes here).
    tick: float = _setting(0.5, "task_tick")
    #: Seconds an instance holds the due occurrences it took; if it dies meanwhile, another
    #: instance fires them after this time (still once: see ``tasks.py``).
    claim_ttl: float = _setting(10.0, "task_claim_ttl")
    #: Tasks taken in one statement at most.
    claim_batch: int = _setting(500, "task_claim_batch")
    #: Seconds after its time an occurrence still fires as on time; older ones were missed
    #: (every instance down, task paused) and the task's ``catchup`` decides.
    misfire_grace: float = _setting(30.0, "task_misfire_grace")
    #: Most missed occurrences one task fires at once with ``catchup`` ``all``.
    max_catchup: int = _setting(100, "task_max_catchup")
    #: Longest ``wait`` in seconds of ``POST /tasks/{id}/trigger?wait=true``; then 504.
    wait_timeout: float = _setting(60.0, "task_wait_timeout")


_SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseSettings,
    "auth": AuthSettings,
    "buffer": BufferSettings,
    "commit": CommitSettings,
    "runs": RunSettings,
    "streams": StreamSettings,
    "http": HTTPSettings,
    "ws": WebSocketSettings,
    "leases": LeaseSettings,
    "agents": AgentSettings,
    "monitoring": MonitoringSettings,
    "retention": RetentionSettings,
    "tasks": TaskSettings,
}
#: Settings of the server as a whole, not of one part.
_TOP: dict[str, Any] = {"instance_id": None, "demo_delay": 0.02}


def _flat_fields() -> Iterator[tuple[str, str, dataclasses.Field[Any]]]:
    """(section, flat name, field) of every sectioned setting."""
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            yield section, f.metadata["name"], f


_FLAT = {name: (section, f) for section, name, f in _flat_fields()}


class Settings:
    """Server settings, in sections. Each field maps to ``AGENTOS_<FLAT NAME>``.

    Built from flat names (``Settings(max_streams=100, buffer_ttl=60)``) and read by section
    (``settings.streams.max_open``). Immutable: :meth:`replace` makes a changed copy.
    """

    database: DatabaseSettings
    auth: AuthSettings
    buffer: BufferSettings
    commit: CommitSettings
    runs: RunSettings
    streams: StreamSettings
    http: HTTPSettings
    ws: WebSocketSettings
    leases: LeaseSettings
    agents: AgentSettings
    monitoring: MonitoringSettings
    retention: RetentionSettings
    tasks: TaskSettings
    #: This instance's name; runs it owns are recovered by it after a restart. Default:
    #: ``agentos-`` and a hash of the host name and ``db_url`` (stable, and no host name).
    instance_id: str
    #: Delay in seconds between words of the demo echo model.
    demo_delay: float

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(_FLAT) - set(_TOP))
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        per_section: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
        for name, value in values.items():
            if name in _FLAT:
                section, f = _FLAT[name]
                per_section[section][f.name] = value
        for section, cls in _SECTIONS.items():
            object.__setattr__(self, section, cls(**per_section[section]))
        instance_id = values.get("instance_id") or _default_instance_id(self.database.url)
        object.__setattr__(self, "instance_id", instance_id)
        object.__setattr__(self, "demo_delay", values.get("demo_delay", _TOP["demo_delay"]))
        # Only what was given: a default instance id follows a db_url changed by replace().
        object.__setattr__(self, "_values", dict(values))
        self._validate()

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to setting {name!r}")

    def __repr__(self) -> str:
        shown = {k: v for k, v in self.values().items() if k not in _SECRETS}
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in sorted(shown.items()))})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self.values() == other.values()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.values().items())))

    def values(self) -> dict[str, Any]:
        """Every setting by its flat name."""
        result = {name: getattr(self, name) for name in _TOP}
        for section, name, f in _flat_fields():
            result[name] = getattr(getattr(self, section), f.name)
        return result

    @classmethod
    def names(cls) -> list[str]:
        """The flat names of all settings, as in ``AGENTOS_<NAME>``."""
        return [*_TOP, *_FLAT]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``AGENTOS_*`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        types = {name: str(f.type) for name, (_, f) in _FLAT.items()}
        types.update(instance_id="str", demo_delay="float")
        for name, type_name in types.items():
            raw = env.get(_PREFIX + name.upper())
            if raw is None or name in overrides:
                continue
            values[name] = _parse(name, type_name, raw)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings (by flat name) changed."""
        return Settings(**{**self._values, **changes})  # type: ignore[attr-defined]

    def _validate(self) -> None:
        for name, value in self.values().items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value < 0:
                    raise ValueError(f"setting {name} must not be negative, got {value!r}")
                if value != value:  # NaN: every comparison with it is false, so no limit holds
                    raise ValueError(f"setting {name} must be a number, got {value!r}")
        # An empty variable (AGENTOS_SECURITY_KEY=) means unset, never an empty secret.
        empty: dict[str, Any] = {
            f.name: None
            for f in fields(AuthSettings)
            if f.name != "jwt_algorithms" and getattr(self.auth, f.name) == ""
        }
        if empty:
            object.__setattr__(self, "auth", dataclasses.replace(self.auth, **empty))
        if self.agents.model == "":
            object.__setattr__(self, "agents", dataclasses.replace(self.agents, model=None))
        leases = self.leases
        if not 0 < leases.renew_interval < leases.ttl:
            raise ValueError("setting lease_renew_interval must be above 0 and below lease_ttl")
        if leases.reaper_interval <= 0:
            raise ValueError("setting reaper_interval must be above 0")
        if self.runs.component_state_ttl <= 0:
            raise ValueError("setting component_state_ttl must be above 0")
        if self.retention.batch_size < 1 or self.retention.interval <= 0:
            raise ValueError("settings retention_batch_size and retention_interval must be above 0")
        tasks = self.tasks
        if tasks.tick <= 0 or tasks.claim_ttl <= 0 or tasks.claim_batch < 1:
            raise ValueError(
                "settings task_tick, task_claim_ttl and task_claim_batch must be above 0"
            )
        if self.retention.idempotency_ttl <= 0:
            raise ValueError("setting idempotency_ttl must be above 0")
        if self.monitoring.log_format not in ("text", "json"):
            raise ValueError("setting log_format must be text or json")


def _parse(name: str, type_name: str, raw: str) -> Any:
    if type_name.startswith("bool"):
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{_PREFIX}{name.upper()} must be true or false, got {raw!r}")
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
    except ValueError:
        raise ValueError(f"{_PREFIX}{name.upper()} must be a number, got {raw!r}") from None
    return raw
