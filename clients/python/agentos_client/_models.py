"""Typed results: runs, run events and meta events.

Every object keeps the decoded JSON it came from in ``data`` so fields that this version of the
client does not know about are still reachable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

__all__ = [
    "TERMINAL_EVENTS",
    "Event",
    "Kind",
    "MetaEvent",
    "Run",
    "RunEvent",
    "RunStatus",
]

Kind = Literal["agents", "teams", "workflows"]

#: The events that end a stream, per kind. Inside a team or workflow stream a member's own
#: ``RunCompleted`` is not terminal: only the event named for the stream's kind is.
TERMINAL_EVENTS: Mapping[str, frozenset[str]] = {
    "agents": frozenset({"RunCompleted", "RunError", "RunCancelled"}),
    "teams": frozenset({"TeamRunCompleted", "TeamRunError", "TeamRunCancelled"}),
    "workflows": frozenset({"WorkflowCompleted", "WorkflowError", "WorkflowCancelled"}),
}


class RunStatus(StrEnum):
    """A run's status, always upper case on the wire."""

    PENDING = "PENDING"
    #: Waiting in the server's run queue for an instance with room (or a retry's delay).
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.ERROR, RunStatus.CANCELLED)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class Run:
    """A run as the server reports it (``GET .../runs/{run_id}``, a non-stream ``arun``).

    ``resume_token`` is only set on the answer to a create, when the server has a security key.
    """

    run_id: str
    session_id: str | None
    status: RunStatus
    content: Any = None
    error: str | None = None
    created_at: float | None = None
    updated_at: float | None = None
    event_count: int | None = None
    resume_token: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, resume_token: str | None = None) -> Run:
        return cls(
            run_id=str(data["run_id"]),
            session_id=_opt_str(data.get("session_id")),
            status=RunStatus(str(data["status"]).upper()),
            content=data.get("content"),
            error=_opt_str(data.get("error")),
            created_at=_opt_float(data.get("created_at")),
            updated_at=_opt_float(data.get("updated_at")),
            event_count=_opt_int(data.get("event_count")),
            resume_token=resume_token or _opt_str(data.get("resume_token")),
            data=dict(data),
        )


@dataclass(frozen=True)
class RunEvent:
    """One numbered event of a run (an SSE frame with an ``id:``).

    ``terminal`` is true for the one event that ends the stream of this run's kind.
    """

    event: str
    event_index: int
    run_id: str
    session_id: str | None = None
    content: Any = None
    error: str | None = None
    created_at: float | None = None
    member_id: str | None = None
    step_id: str | None = None
    terminal: bool = False
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, kind: str) -> RunEvent:
        name = str(data["event"])
        return cls(
            event=name,
            event_index=int(data["event_index"]),
            run_id=str(data["run_id"]),
            session_id=_opt_str(data.get("session_id")),
            content=data.get("content"),
            error=_opt_str(data.get("error")),
            created_at=_opt_float(data.get("created_at")),
            member_id=_opt_str(data.get("member_id")),
            step_id=_opt_str(data.get("step_id")),
            terminal=name in TERMINAL_EVENTS.get(kind, frozenset()),
            data=dict(data),
        )

    def to_json(self) -> str:
        """The event's JSON exactly as the server sent it (key order kept)."""
        return json.dumps(self.data, separators=(",", ":"))


@dataclass(frozen=True)
class MetaEvent:
    """A meta frame (``catch_up``, ``subscribed``, ``replay``, ``error``): no index, never
    yielded unless the stream was opened with ``meta=True``."""

    event: str
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def status(self) -> RunStatus | None:
        value = self.data.get("status")
        return None if value is None else RunStatus(str(value).upper())


Event = RunEvent | MetaEvent
