"""One frozen settings object, read once at start-up from ``AGENTOS_*`` variables.

Every limit and timing of the server is a field here, with its default. Nothing in the package
reads the environment anywhere else::

    settings = Settings.from_env()                 # AGENTOS_BUFFER_TTL=60 ...
    settings = Settings(buffer_ttl=60.0)           # or explicitly, in code and tests
    settings = settings.replace(db_url="sqlite+aiosqlite:///runs.db")
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Settings"]

_PREFIX = "AGENTOS_"


def _default_instance_id() -> str:
    return socket.gethostname() or "agentos"


@dataclass(frozen=True)
class Settings:
    """Server settings. Each field maps to the environment variable ``AGENTOS_<FIELD>``."""

    #: SQLAlchemy async URL of the run store (SQLite through aiosqlite by default).
    db_url: str = "sqlite+aiosqlite:///agentos.db"
    #: This instance's name; runs it owns are recovered by it after a restart.
    instance_id: str = field(default_factory=_default_instance_id)
    #: When set, every route but /health needs ``Authorization: Bearer <key>``.
    security_key: str | None = None
    #: Seconds a run-scoped resume token (``?token=`` on GET resume) stays valid; 0 disables.
    resume_token_ttl: float = 3600.0

    #: Seconds an ended run's events stay in the in-process buffer.
    buffer_ttl: float = 1800.0
    #: Events kept in memory per run; older ones are served from the database.
    buffer_max_events_per_run: int = 10_000
    #: Payload bytes kept in memory per run; older events are served from the database.
    buffer_max_bytes_per_run: int = 8 * 1024 * 1024
    #: Payload bytes kept in memory over all runs; ended runs go first, then the oldest events.
    buffer_max_bytes_total: int = 256 * 1024 * 1024
    #: Seconds between sweeps that drop expired buffers.
    buffer_sweep_interval: float = 30.0

    #: Events waiting for their group commit before a run's next event waits (backpressure).
    max_pending_events: int = 10_000
    #: Most events written in one transaction.
    max_batch_events: int = 2_000
    #: Events read from the database per page when replaying.
    replay_page_size: int = 1_000
    #: Runs executing at once in this process; more get 503 ``overloaded``.
    max_active_runs: int = 10_000
    #: Open event streams (SSE followers) in this process; more get 503 ``overloaded``.
    max_streams: int = 20_000
    #: Seconds between database polls when tailing a run that another instance owns.
    tail_poll_interval: float = 0.5
    #: On PostgreSQL, wake such tails at once with LISTEN/NOTIFY (polling stays the fallback).
    tail_notify: bool = True

    #: Seconds between SSE keep-alive comments on an idle stream.
    ping_interval: float = 15.0
    #: Events whose JSON text is at most this many bytes keep their encoded SSE frame, shared
    #: by every subscriber; larger ones are encoded per send (a copy of a big payload per
    #: buffered event would cost more memory than encoding saves time).
    sse_cache_max_bytes: int = 512
    #: Seconds a single SSE send may block before the stream is dropped.
    send_timeout: float = 30.0
    #: Largest accepted request body in bytes (413 beyond).
    max_body_bytes: int = 10 * 1024 * 1024
    #: Seconds a run may take before it ends with an error ("timeout"); 0 disables.
    run_timeout: float = 0.0

    #: Largest WebSocket frame served, in bytes; a larger one gets an error frame. (uvicorn's
    #: ``--ws-max-size``, 16 MiB by default, closes the socket on frames beyond that.)
    ws_max_frame_bytes: int = 64 * 1024
    #: Runs one WebSocket may follow at the same time.
    ws_max_runs_per_socket: int = 100
    #: Frames a WebSocket may send per second, and as a burst; past it frames get a
    #: ``rate_limited`` error, and a second's worth more closes the socket (1008). 0 disables.
    ws_max_frames_per_second: float = 50.0
    #: Frames waiting to be sent on one WebSocket before its runs' followers wait for room.
    ws_max_queued_frames: int = 256
    #: Seconds a single WebSocket send may block before the socket is closed (1008); 0 disables.
    ws_send_timeout: float = 30.0
    #: Seconds a WebSocket has to authenticate when a security key is set (then closed, 1008).
    ws_auth_timeout: float = 30.0

    #: Seconds running runs get on shutdown before they are cancelled.
    shutdown_grace: float = 10.0
    #: Seconds an instance's lease on a running run lasts without renewal. When an instance
    #: dies, its runs end (``"instance_lost"``) at most ``lease_ttl + reaper_interval`` seconds
    #: after its last renewal. Instances' clocks must agree to well within this.
    lease_ttl: float = 20.0
    #: Seconds between renewals of the leases on this instance's runs (below ``lease_ttl``).
    lease_renew_interval: float = 5.0
    #: Seconds between this instance's looks for runs whose owner's lease expired.
    reaper_interval: float = 5.0

    #: Delay in seconds between words of the demo echo model.
    demo_delay: float = 0.02

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``AGENTOS_*`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_PREFIX + f.name.upper())
            if raw is None or f.name in overrides:
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"setting {f.name} must not be negative, got {value!r}")
        if self.security_key == "":
            object.__setattr__(self, "security_key", None)
        if not 0 < self.lease_renew_interval < self.lease_ttl:
            raise ValueError("setting lease_renew_interval must be above 0 and below lease_ttl")
        if self.reaper_interval <= 0:
            raise ValueError("setting reaper_interval must be above 0")


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
