"""Tasks as the store keeps them, and when they fire: :class:`Schedule` and :class:`TaskRecord`.

A task starts ordinary runs of one component, by hand (``manual``) or on a schedule::

    {"kind": "once", "at": "2030-01-01T09:00:00Z"}                 one occurrence
    {"kind": "interval", "every_seconds": 60}                      every minute from creation
    {"kind": "cron", "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}

An *occurrence* is the scheduled time a run stands for, written as UTC ISO 8601 with
milliseconds (``2030-01-01T08:00:00.000Z``).

Cron expressions are the five standard fields, read by ``croniter`` (kept up under pallets-eco)
in the task's IANA zone (``zoneinfo``). Daylight saving time is handled the way Vixie cron does:

- a time the clocks skip (02:30 on the spring-forward day in Berlin) fires once, at the first
  minute after the gap (03:00 local);
- a time the clocks pass twice (02:30 on the fall-back day) fires once, the first time, when
  the hour field names hours (``30 2 * * *``); a job whose hour field is a wildcard
  (``*/15 * * * *``, ``0 * * * *``) fires in both passes, as it runs by elapsed time.

Everything here is pure (no clock, no database): the scheduler (``tasks.py``) passes the time.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]

from agentos.errors import InvalidRequest
from agentos.events import KINDS
from agentos.records import check_id, check_text
from agentos.retries import RetryPolicy

__all__ = [
    "CATCHUP",
    "OVERLAP_POLICIES",
    "SCHEDULE_KINDS",
    "SESSION_POLICIES",
    "Schedule",
    "TaskRecord",
    "TaskRelease",
    "occurrence_id",
    "occurrence_run_id",
    "occurrence_time",
    "parse_task",
]

SCHEDULE_KINDS = ("manual", "once", "interval", "cron")
OVERLAP_POLICIES = ("skip_if_running", "queue_next", "cancel_previous", "allow_parallel")
SESSION_POLICIES = ("task", "run", "fixed")
CATCHUP = ("skip", "latest", "all")
#: Bounds for hostile input.
_MAX_INTERVAL = 366 * 24 * 3600.0
_MAX_MESSAGE = 100_000
_MAX_DESCRIPTION = 2_000
_MAX_TAGS = 32
_MAX_TAG = 100
_MAX_CRON = 200
_MAX_WINDOW = 366 * 24 * 3600.0
#: Run ids of occurrences: a UUID derived from the task and the occurrence (see below).
_RUN_NAMESPACE = uuid.UUID("5c1e0d6a-7f4e-4b7e-9d0e-3a4f6b1c2d8e")
_TASK_FIELDS = (
    "task_id",
    "kind",
    "component_id",
    "message",
    "schedule",
    "timeout_seconds",
    "retry_policy",
    "overlap_policy",
    "session_policy",
    "session_id",
    "catchup",
    "catchup_window_seconds",
    "active",
    "description",
    "tags",
    "user_id",
)


def occurrence_id(at: float) -> str:
    """The occurrence id of a scheduled time: ``2030-01-01T08:00:00.000Z``."""
    text = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def occurrence_time(occurrence: str) -> float | None:
    """The time an occurrence id stands for (a trigger's ``manual:<time>`` too); None when it
    is not one."""
    try:
        at = datetime.fromisoformat(occurrence.removeprefix("manual:").replace("Z", "+00:00"))
    except ValueError:
        return None
    return at.timestamp() if at.tzinfo is not None else None


def occurrence_run_id(task_id: str, occurrence: str) -> str:
    """The run id of a task's occurrence: the same on every instance, so the database's
    primary key lets one run exist per occurrence, whoever creates it and however often."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{task_id}\x00{occurrence}"))


@dataclass(frozen=True)
class Schedule:
    """When a task fires. Times are Unix seconds (UTC)."""

    kind: str = "manual"
    #: ``once``: the time.
    at: float | None = None
    #: ``interval``: seconds between occurrences, counted from ``start_at``.
    every: float | None = None
    start_at: float | None = None
    #: ``cron``: five fields, read in ``timezone`` (IANA name; default UTC).
    cron: str | None = None
    timezone: str = "UTC"

    @classmethod
    def parse(cls, value: Any, now: float) -> Schedule:
        """A schedule from a request's ``schedule`` (an object, or ``"manual"``); 422 naming
        the field when it is not one. An interval without ``start_at`` starts at ``now``."""
        if value is None or value == "manual":
            return cls()
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidRequest("schedule must be a JSON object") from None
        if not isinstance(value, Mapping):
            raise InvalidRequest("schedule must be a JSON object")
        known = {"kind", "at", "every_seconds", "start_at", "cron", "timezone"}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise InvalidRequest(f"schedule has unknown fields: {', '.join(unknown)[:200]}")
        kind = value.get("kind", "manual")
        if kind not in SCHEDULE_KINDS:
            raise InvalidRequest(f"schedule.kind must be one of {', '.join(SCHEDULE_KINDS)}")
        if kind == "manual":
            return cls()
        if kind == "once":
            return cls(kind, at=_time("schedule.at", value.get("at")))
        if kind == "interval":
            every: Any = value.get("every_seconds")
            if (
                type(every) not in (int, float)
                or not math.isfinite(every)
                or not 0 < every <= _MAX_INTERVAL
            ):
                raise InvalidRequest(
                    f"schedule.every_seconds must be a number above 0 and at most {_MAX_INTERVAL:g}"
                )
            start = value.get("start_at")
            start_at = now if start is None else _time("schedule.start_at", start)
            return cls(kind, every=float(every), start_at=start_at)
        expr = value.get("cron")
        if not isinstance(expr, str) or not 0 < len(expr) <= _MAX_CRON:
            raise InvalidRequest(f"schedule.cron must be a string of 1 to {_MAX_CRON} characters")
        if len(expr.split()) != 5 or not expr.isascii() or not croniter.is_valid(expr):
            raise InvalidRequest(
                "schedule.cron must be a five-field cron expression (minute hour day month weekday)"
            )
        zone = value.get("timezone", "UTC")
        _zone(zone)
        return cls(kind, cron=" ".join(expr.split()), timezone=zone)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "once":
            assert self.at is not None
            return {"kind": "once", "at": _iso(self.at)}
        if self.kind == "interval":
            assert self.start_at is not None
            return {
                "kind": "interval",
                "every_seconds": self.every,
                "start_at": _iso(self.start_at),
            }
        if self.kind == "cron":
            return {"kind": "cron", "cron": self.cron, "timezone": self.timezone}
        return {"kind": "manual"}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        data = json.loads(text)
        kind = data["kind"]
        if kind == "once":
            return cls(kind, at=_time("at", data["at"]))
        if kind == "interval":
            return cls(kind, every=data["every_seconds"], start_at=_time("", data["start_at"]))
        if kind == "cron":
            return cls(kind, cron=data["cron"], timezone=data["timezone"])
        return cls()

    def next_after(self, t: float) -> float | None:
        """The first occurrence strictly after ``t``; None when there is none."""
        if self.kind == "once":
            assert self.at is not None
            return self.at if self.at > t else None
        if self.kind == "interval":
            assert self.every is not None and self.start_at is not None
            if t < self.start_at:
                return self.start_at
            k = math.floor((t - self.start_at) / self.every) + 1
            at = self.start_at + k * self.every
            while at <= t:  # float rounding
                k += 1
                at = self.start_at + k * self.every
            return at
        if self.kind == "cron":
            zone = _zone(self.timezone)
            start = datetime.fromtimestamp(t, zone)
            found = croniter(self.cron, start).get_next(datetime)
            while self._repeated(found):
                found = croniter(self.cron, found).get_next(datetime)
            return float(found.timestamp())
        return None

    def latest_at_or_before(self, t: float) -> float | None:
        """The last occurrence at or before ``t``; None when there is none."""
        if self.kind == "once":
            assert self.at is not None
            return self.at if self.at <= t else None
        if self.kind == "interval":
            assert self.every is not None and self.start_at is not None
            if t < self.start_at:
                return None
            return self.start_at + math.floor((t - self.start_at) / self.every) * self.every
        if self.kind == "cron":
            zone = _zone(self.timezone)
            # croniter's get_prev is strict, and works in whole minutes.
            start = datetime.fromtimestamp(t, zone) + timedelta(seconds=1)
            found = croniter(self.cron, start).get_prev(datetime)
            while self._repeated(found):
                found = croniter(self.cron, found).get_prev(datetime)
            at = float(found.timestamp())
            return at if at <= t else None
        return None

    def count_between(self, lo: float, hi: float, limit: int) -> int:
        """How many occurrences fall in ``[lo, hi]``, counting at most ``limit``."""
        if hi < lo:
            return 0
        if self.kind == "interval":
            assert self.every is not None and self.start_at is not None
            first = self.next_after(lo - 1e-6)
            if first is None or first > hi:
                return 0
            return min(limit, math.floor((hi - first) / self.every + 1e-9) + 1)
        count = 0
        t = self.next_after(lo - 1e-6)
        while t is not None and t <= hi and count < limit:
            count += 1
            t = self.next_after(t)
        return count

    def _repeated(self, local: datetime) -> bool:
        """Whether ``local`` is the second pass of a wall time the clocks went through twice,
        for a job with a fixed hour (which fires in the first pass only)."""
        assert self.cron is not None
        if self.cron.split()[1].startswith("*"):
            return False
        naive = local.replace(tzinfo=None)
        zone = local.tzinfo
        first = naive.replace(tzinfo=zone, fold=0).utcoffset()
        second = naive.replace(tzinfo=zone, fold=1).utcoffset()
        return first != second and local.utcoffset() == second


@dataclass(frozen=True)
class TaskRecord:
    """A task as the store keeps it."""

    task_id: str
    kind: str
    component_id: str
    message: str
    schedule: Schedule
    created_at: float
    updated_at: float
    timeout: float | None = None
    retry_policy: RetryPolicy | None = None
    overlap_policy: str = "skip_if_running"
    session_policy: str = "task"
    #: The session of every run (policies ``task`` and ``fixed``); None: a new one per run.
    session_id: str | None = None
    catchup: str = "skip"
    catchup_window: float = 3600.0
    active: bool = True
    description: str | None = None
    tags: tuple[str, ...] = ()
    user_id: str | None = None
    #: The next occurrence to fire (None: manual, or a ``once`` that has fired).
    next_fire_at: float | None = None
    #: A ``queue_next`` occurrence waiting for the task's running run to end.
    queued_at: float | None = None
    last_fired_at: float | None = None
    last_run_id: str | None = None
    fired: int = 0
    skipped: int = 0
    #: The instance holding the task's due occurrences, and until when (a claim).
    claimed_by: str | None = None
    claim_until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "component_id": self.component_id,
            "message": self.message,
            "schedule": self.schedule.to_dict(),
            "timeout_seconds": self.timeout,
            "retry_policy": None if self.retry_policy is None else self.retry_policy.to_dict(),
            "overlap_policy": self.overlap_policy,
            "session_policy": self.session_policy,
            "session_id": self.session_id,
            "catchup": self.catchup,
            "catchup_window_seconds": self.catchup_window,
            "active": self.active,
            "description": self.description,
            "tags": list(self.tags),
            "user_id": self.user_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "next_fire_at": None if self.next_fire_at is None else _iso(self.next_fire_at),
            "queued_occurrence": None if self.queued_at is None else occurrence_id(self.queued_at),
            "last_fired_at": None if self.last_fired_at is None else _iso(self.last_fired_at),
            "last_run_id": self.last_run_id,
            "fired": self.fired,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class TaskRelease:
    """What a scheduler pass did with a task it claimed, written back when it lets the task go
    (``Store.release_tasks``): its next occurrence, the one waiting (``queue_next``), and the
    counters' growth. ``due`` is the next occurrence the claim found: the compare-and-set."""

    task_id: str
    due: float | None
    next_fire_at: float | None
    queued_at: float | None = None
    fired: int = 0
    skipped: int = 0
    last_fired_at: float | None = None
    last_run_id: str | None = None


def parse_task(
    fields: Mapping[str, Any],
    now: float,
    *,
    current: TaskRecord | None = None,
    new_id: str | None = None,
) -> TaskRecord:
    """A task from a request body (create), or ``current`` with the body's changes (update);
    422 naming the field for bad input. Components are checked by the caller."""
    unknown = sorted(str(k) for k in fields if k not in _TASK_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"unknown task fields: {', '.join(unknown)[:200]} (known: {', '.join(_TASK_FIELDS)})"
        )
    if current is not None and "task_id" in fields and fields["task_id"] != current.task_id:
        raise InvalidRequest("task_id cannot be changed")
    get = fields.get
    if current is None:
        task_id = get("task_id")
        task_id = check_id("task_id", task_id) if task_id is not None else new_id
        assert task_id is not None
        kind = get("kind", "agents")
        if kind not in KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}")
        if "component_id" not in fields:
            raise InvalidRequest("component_id is required")
        base = TaskRecord(
            task_id=task_id,
            kind=kind,
            component_id="",
            message="",
            schedule=Schedule(),
            created_at=now,
            updated_at=now,
        )
    else:
        base = current
        if "kind" in fields and fields["kind"] not in KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}")
    kind = get("kind", base.kind)
    component_id = check_id("component_id", get("component_id", base.component_id))
    message = get("message", base.message)
    if not isinstance(message, str) or not message.strip() or len(message) > _MAX_MESSAGE:
        raise InvalidRequest(f"message must be a non-empty string of at most {_MAX_MESSAGE}")
    check_text("message", message)
    schedule = Schedule.parse(get("schedule"), now) if "schedule" in fields else base.schedule
    timeout = get("timeout_seconds", base.timeout)
    if timeout is not None and (
        type(timeout) not in (int, float) or not math.isfinite(timeout) or not 0 <= timeout
    ):
        raise InvalidRequest("timeout_seconds must be a number of 0 or more")
    retry = get("retry_policy", base.retry_policy)
    retry_policy = None if retry is None else RetryPolicy.parse(retry)
    overlap = _choice(fields, "overlap_policy", OVERLAP_POLICIES, base.overlap_policy)
    session_policy = _choice(fields, "session_policy", SESSION_POLICIES, base.session_policy)
    catchup = _choice(fields, "catchup", CATCHUP, base.catchup)
    window = get("catchup_window_seconds", base.catchup_window)
    if type(window) not in (int, float) or not math.isfinite(window) or not 0 < window:
        raise InvalidRequest("catchup_window_seconds must be a number above 0")
    if window > _MAX_WINDOW:
        raise InvalidRequest(f"catchup_window_seconds must be at most {_MAX_WINDOW:g}")
    session_id = get("session_id", base.session_id)
    if session_policy == "fixed":
        if session_id is None:
            raise InvalidRequest("session_id is required with session_policy fixed")
        check_id("session_id", session_id)
    elif session_policy == "task":
        if session_id is None or (current is not None and current.session_policy != "task"):
            session_id = str(uuid.uuid4())
        check_id("session_id", session_id)
    else:
        session_id = None
    active = get("active", base.active)
    if not isinstance(active, bool):
        raise InvalidRequest("active must be true or false")
    description = get("description", base.description)
    if description is not None:
        if not isinstance(description, str) or len(description) > _MAX_DESCRIPTION:
            raise InvalidRequest(f"description must be a string of at most {_MAX_DESCRIPTION}")
        check_text("description", description)
    tags = _tags(get("tags", list(base.tags)))
    user_id = get("user_id", base.user_id)
    if user_id is not None:
        if not isinstance(user_id, str) or not 0 < len(user_id) <= 200:
            raise InvalidRequest("user_id must be a string of 1 to 200 characters")
        check_text("user_id", user_id)
    task = TaskRecord(
        task_id=base.task_id,
        kind=kind,
        component_id=component_id,
        message=message,
        schedule=schedule,
        created_at=base.created_at,
        updated_at=now,
        timeout=None if timeout is None else float(timeout),
        retry_policy=retry_policy,
        overlap_policy=overlap,
        session_policy=session_policy,
        session_id=session_id,
        catchup=catchup,
        catchup_window=float(window),
        active=active,
        description=description,
        tags=tags,
        user_id=user_id,
        next_fire_at=base.next_fire_at,
        queued_at=base.queued_at,
        last_fired_at=base.last_fired_at,
        last_run_id=base.last_run_id,
        fired=base.fired,
        skipped=base.skipped,
    )
    if current is None or "schedule" in fields:
        task = _first_fire(task, now)
    return task


def _first_fire(task: TaskRecord, now: float) -> TaskRecord:
    """The task with its first occurrence after a new schedule."""
    schedule = task.schedule
    if schedule.kind == "once":
        assert schedule.at is not None
        if schedule.at <= now and task.catchup == "skip":
            raise InvalidRequest("schedule.at is in the past (set catchup to run it anyway)")
        at: float | None = schedule.at
    elif schedule.kind == "interval":
        assert schedule.start_at is not None and schedule.every is not None
        # The first occurrence is one interval after the start (or start_at, if given later).
        at = schedule.next_after(max(now, schedule.start_at))
    else:
        at = schedule.next_after(now)
    return replace(task, next_fire_at=at, queued_at=None)


def _choice(fields: Mapping[str, Any], name: str, allowed: Sequence[str], default: str) -> str:
    value = fields.get(name, default)
    if value not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(allowed)}")
    return str(value)


def _tags(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > _MAX_TAGS:
        raise InvalidRequest(f"tags must be a list of at most {_MAX_TAGS} strings")
    for tag in value:
        if not isinstance(tag, str) or not 0 < len(tag) <= _MAX_TAG:
            raise InvalidRequest(f"tags must be strings of 1 to {_MAX_TAG} characters")
        check_text("tags", tag)
    return tuple(value)


def _zone(name: Any) -> ZoneInfo:
    if not isinstance(name, str) or not 0 < len(name) <= 100 or not name.isascii():
        raise InvalidRequest("schedule.timezone must be an IANA time zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidRequest(
            f"schedule.timezone must be an IANA time zone name (e.g. Europe/Berlin), "
            f"not {name[:100]!r}"
        ) from None


def _time(name: str, value: Any) -> float:
    """Seconds since the epoch from a number or an ISO 8601 text with a UTC offset."""
    if type(value) in (int, float) and math.isfinite(value) and 0 <= value < 253402300800:
        return float(value)
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.timestamp()
    raise InvalidRequest(
        f"{name} must be an ISO 8601 time with a UTC offset (2030-01-01T09:00:00Z) or Unix seconds"
    )


def _iso(at: float) -> str:
    return occurrence_id(at)
