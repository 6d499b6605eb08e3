"""Runs as the store keeps them, the changes made to them, and the rules their ids follow.

A :class:`RunRecord` is a snapshot of one run (immutable); a :class:`RunUpdate` is the set of
fields to change in the next group commit. Both are database-neutral: every backend stores and
returns them (``backends/``).

Ids that come from outside (a client-chosen ``run_id``, ``session_id``, a component id) go into
URL paths and response headers (``Location``, ``X-Run-Id``), so they are URL-safe and short
(:func:`check_id`).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from agentos.errors import InvalidRequest
from agentos.events import KINDS, RunStatus

__all__ = [
    "MAX_EVENT_NAME_LENGTH",
    "MAX_ID_LENGTH",
    "ComponentState",
    "ComponentStats",
    "IdempotencyKey",
    "RunRecord",
    "RunUpdate",
    "check_event_name",
    "check_id",
    "check_text",
    "is_valid_id",
    "storable",
]

#: Longest id (run, session, user, component) in characters; the database columns hold this.
MAX_ID_LENGTH = 200
_URL_SAFE_ID = re.compile(r"[A-Za-z0-9._~-]+")
#: Fields of a run that can be as large as a message; lists cut them.
_LARGE_FIELDS = ("input", "content", "error")

#: What no database column of ours can hold the same way everywhere: NUL (PostgreSQL refuses it)
#: and lone surrogates (not Unicode scalar values: no UTF-8 encoding exists for them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_text(name: str, value: str) -> str:
    """``value`` when every database can store it; otherwise InvalidRequest naming the field.

    A JSON body may spell a lone surrogate (``"\\ud800"``) or a NUL (``"\\u0000"``); text from
    outside with either is refused at the edge, the same on SQLite and PostgreSQL.
    """
    found = _UNSTORABLE.search(value)
    if found is not None:
        what = "a NUL character" if found.group() == "\x00" else "a lone surrogate"
        raise InvalidRequest(f"{name} holds {what} (U+{ord(found.group()):04X}), which is not text")
    return value


#: Longest event name in characters (the events table holds this).
MAX_EVENT_NAME_LENGTH = 100


def check_event_name(name: object) -> str:
    """``name`` when it can name an event; ValueError otherwise (a component's bug: its run
    ends with an error event, on every database alike)."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= MAX_EVENT_NAME_LENGTH
        or _UNSTORABLE.search(name) is not None
    ):
        raise ValueError(
            f"an event name must be text of 1 to {MAX_EVENT_NAME_LENGTH} characters, got {name!r}"
        )
    return name


def storable(value: str | None) -> str | None:
    """``value`` with NUL and lone surrogates replaced by U+FFFD, for a text column.

    Used for what components produce (a run's final content, its error): their events carry the
    exact text (JSON escapes both), the run object a copy every database can hold.
    """
    if value is None or _UNSTORABLE.search(value) is None:
        return value
    return _UNSTORABLE.sub("\ufffd", value)


def is_valid_id(value: object) -> bool:
    """Whether ``value`` is a URL-safe id (letters, digits, ``._~-``) of 1 to 200 characters."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and _URL_SAFE_ID.fullmatch(value) is not None
    )


def check_id(name: str, value: object) -> str:
    """``value`` when it is a valid id; otherwise InvalidRequest naming the field."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise InvalidRequest(f"{name} must be a string of 1 to {MAX_ID_LENGTH} characters")
    if not is_valid_id(value):
        raise InvalidRequest(f"{name} must be URL-safe (letters, digits, ._~-)")
    return value


@dataclass(frozen=True)
class RunRecord:
    """A run as the store keeps it."""

    run_id: str
    kind: str
    component_id: str
    session_id: str
    status: RunStatus
    input: str
    user_id: str | None = None
    content: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    event_count: int = 0
    instance_id: str | None = None
    lease_until: float | None = None
    #: The number of the current (or last) attempt; 0 while queued before the first.
    attempt: int = 1
    #: When the current attempt started (its claim); None while queued.
    started_at: float | None = None
    #: The run's retry policy as JSON (None: one attempt), its timeout in seconds (None: the
    #: server's ``run_timeout``) and what it does when its session is busy (None: parallel).
    retry_policy: str | None = None
    timeout: float | None = None
    multitask: str | None = None
    #: A QUEUED run is not claimed before this time (a retry's delay); its place in the queue.
    not_before: float | None = None
    #: The attempts that ended without ending the run, as a JSON list (see ``attempt_list``).
    attempts: str | None = None
    #: The task this run is an occurrence of, and which occurrence (``agentos/tasks.py``).
    task_id: str | None = None
    occurrence: str | None = None

    def attempt_list(self) -> list[dict[str, Any]]:
        """Every attempt of the run so far, oldest first: number, instance_id, started_at,
        ended_at, outcome (``retrying`` reasons, or the final status) and error."""
        done: list[dict[str, Any]] = json.loads(self.attempts) if self.attempts else []
        if self.attempt > len(done):
            ended = self.status.ended
            done.append(
                {
                    "attempt": self.attempt,
                    "instance_id": self.instance_id,
                    "started_at": self.started_at,
                    "ended_at": self.updated_at if ended else None,
                    "outcome": self.status.value if ended else None,
                    "error": self.error if self.status is RunStatus.ERROR else None,
                }
            )
        return done

    def to_dict(self) -> dict[str, Any]:
        """The run object of the HTTP API."""
        return {
            "run_id": self.run_id,
            "session_id": self.session_id,
            KINDS[self.kind].id_field: self.component_id,
            "user_id": self.user_id,
            "status": self.status.value,
            "input": self.input,
            "content": self.content,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "event_count": self.event_count,
            "attempt": self.attempt,
            "task_id": self.task_id,
            "occurrence": self.occurrence,
        }

    def to_list_item(self, max_chars: int) -> dict[str, Any]:
        """The run object as ``GET .../runs`` lists it: ``input``, ``content`` and ``error`` cut
        to ``max_chars`` characters, and ``"truncated"`` saying whether any was."""
        item = self.to_dict()
        truncated = False
        for name in _LARGE_FIELDS:
            value = item[name]
            if value is not None and len(value) > max_chars:
                item[name] = value[:max_chars]
                truncated = True
        item["truncated"] = truncated
        return item

    def updated(self, update: RunUpdate) -> RunRecord:
        changes = {k: v for k, v in update.changes().items() if k != "run_id"}
        if changes.pop("requeue", False):
            changes.update(instance_id=None, lease_until=None, started_at=None)
        return replace(self, **changes)


@dataclass(frozen=True)
class RunUpdate:
    """Fields of a run to change in the next group commit (None leaves a field alone)."""

    run_id: str
    status: RunStatus | None = None
    content: str | None = None
    error: str | None = None
    event_count: int | None = None
    lease_until: float | None = None
    #: The run goes back to the queue: no owner, no lease, QUEUED until ``not_before``, with
    #: ``attempts`` (the history so far, JSON) recorded.
    requeue: bool | None = None
    not_before: float | None = None
    attempts: str | None = None
    updated_at: float = field(default_factory=time.time)

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def merge(self, later: RunUpdate) -> RunUpdate:
        return replace(self, **{k: v for k, v in later.changes().items() if k != "run_id"})


@dataclass(frozen=True)
class ComponentState:
    """What the database keeps about a component: when it was first registered (by any
    instance) and whether it is paused."""

    kind: str
    component_id: str
    paused: bool = False
    registered_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ComponentStats:
    """A component's runs in the database: counts by status and the durations of ended runs
    (seconds from creation to the final status; None without ended runs)."""

    runs: dict[str, int]
    mean_duration: float | None = None
    p95_duration: float | None = None

    def to_dict(self) -> dict[str, Any]:
        counts = {status.value: self.runs.get(status.value, 0) for status in RunStatus}
        return {
            "runs": counts,
            "total_runs": sum(counts.values()),
            "failures": counts[RunStatus.ERROR.value],
            "mean_duration": self.mean_duration,
            "p95_duration": self.p95_duration,
        }


@dataclass(frozen=True)
class IdempotencyKey:
    """A create's ``Idempotency-Key`` as the store remembers it (``agentos/idempotency.py``).

    A key is one per ``(key, kind, component_id, user_scope)``; ``user_scope`` is the caller's
    user ("" for the operator). ``run_id`` is the run the key's first create makes (it may not
    exist yet: the key is written first), ``request_hash`` a digest of that create's fields,
    ``status_code`` the status its answer has, and ``token`` tells that create's entry from
    another's (two creates may bring the same client-chosen ``run_id``).
    """

    key: str
    kind: str
    component_id: str
    user_scope: str
    request_hash: str
    run_id: str
    status_code: int
    token: str
    created_at: float = field(default_factory=time.time)
