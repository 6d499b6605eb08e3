"""Retry policies and the per-run options that go with them.

A run executes in *attempts*. The first starts when the run is claimed; when an attempt fails
in a way its :class:`RetryPolicy` retries, the run goes back to the queue (status QUEUED) with a
``RunRetrying`` event and the next attempt starts after a delay, on any instance::

    attempt n fails ── reason ──▶ policy.retries(n, reason)?
        yes ──▶ RunRetrying {attempt: n, error, next_attempt: n+1, next_attempt_at} ──▶ QUEUED
        no  ──▶ the terminal event (RunError lists every attempt)

The reasons an attempt can end without finishing its run: ``"exception"`` (the component raised),
``"timeout"`` (the run's timeout passed), ``"instance_lost"`` (its instance died: lease expired,
or a restart), ``"shutdown"`` (its instance was deployed away). A policy's ``retry_on`` names the
reasons it retries; an exception's class name (or that of one of its bases) also names it, so
``retry_on=["ModelError"]`` retries model failures and nothing else.

A policy comes from the request, else the task, else the component, else the default of one
attempt (nothing is retried, as before there were retries).
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from agentos.errors import InvalidRequest
from agentos.events import KINDS, Event, RunStatus, make_event
from agentos.records import RunRecord, RunUpdate

__all__ = [
    "MULTITASK",
    "REASONS",
    "RetryPolicy",
    "RunOptions",
    "attempts_with",
    "error_fields",
    "policy_of",
    "requeue",
]

#: Why an attempt can end without ending its run (``retry_on`` values besides class names).
REASONS = ("exception", "timeout", "instance_lost", "shutdown")
#: What a new run of a session does when the session has an active run (``multitask``).
MULTITASK = ("parallel", "reject", "enqueue", "interrupt")
#: Largest accepted ``max_attempts``, delays and ``retry_on`` entries: bounds for hostile input.
_MAX_ATTEMPTS = 100
_MAX_DELAY = 7 * 24 * 3600.0
_MAX_RETRY_ON = 32
_MAX_NAME = 100


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a run gets and how long to wait between them.

    The delay before attempt ``n + 1`` is ``delay * backoff ** (n - 1)``, at most ``max_delay``,
    then spread by ``jitter`` (a fraction: 0.1 is ±10 %) so that runs failing together do not
    retry together.
    """

    max_attempts: int = 1
    delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 60.0
    jitter: float = 0.1
    retry_on: tuple[str, ...] = REASONS

    def __post_init__(self) -> None:
        _check_int("max_attempts", self.max_attempts, 1, _MAX_ATTEMPTS)
        _check_number("delay", self.delay, 0.0, _MAX_DELAY)
        _check_number("backoff", self.backoff, 1.0, 100.0)
        _check_number("max_delay", self.max_delay, 0.0, _MAX_DELAY)
        _check_number("jitter", self.jitter, 0.0, 1.0)
        if isinstance(self.retry_on, str) or not isinstance(self.retry_on, Sequence):
            raise InvalidRequest("retry_policy.retry_on must be a list of strings")
        if len(self.retry_on) > _MAX_RETRY_ON:
            raise InvalidRequest(f"retry_policy.retry_on takes at most {_MAX_RETRY_ON} entries")
        for name in self.retry_on:
            if not isinstance(name, str) or not name.isidentifier() or len(name) > _MAX_NAME:
                raise InvalidRequest(
                    "retry_policy.retry_on entries must be reasons "
                    f"({', '.join(REASONS)}) or exception class names"
                )
        object.__setattr__(self, "retry_on", tuple(self.retry_on))

    @classmethod
    def parse(cls, value: Any) -> RetryPolicy:
        """A policy from a JSON object (a request body's ``retry_policy``); 422 naming the
        field when it is not one."""
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidRequest("retry_policy must be a JSON object") from None
        if not isinstance(value, Mapping):
            raise InvalidRequest("retry_policy must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise InvalidRequest(
                f"retry_policy has unknown fields: {', '.join(unknown)[:200]}"
                f" (known: {', '.join(sorted(known))})"
            )
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "delay": self.delay,
            "backoff": self.backoff,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
            "retry_on": list(self.retry_on),
        }

    def to_json(self) -> str:
        return self._json

    @functools.cached_property
    def _json(self) -> str:
        # Written into every run a task starts: made once per policy, not once per run.
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def retries(self, attempt: int, reason: str, error: BaseException | None = None) -> bool:
        """Whether attempt number ``attempt``, ended for ``reason``, gets another."""
        if attempt >= self.max_attempts:
            return False
        if reason in self.retry_on:
            return True
        if error is not None:
            names = {cls.__name__ for cls in type(error).__mro__}
            return not names.isdisjoint(self.retry_on)
        return False

    def delay_after(self, attempt: int) -> float:
        """Seconds between the end of attempt ``attempt`` and the start of the next."""
        base = min(self.max_delay, self.delay * self.backoff ** min(attempt - 1, 64))
        if self.jitter and base > 0:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base) if math.isfinite(base) else self.max_delay


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise InvalidRequest(f"retry_policy.{name} must be an integer from {low} to {high}")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    # The range first: math.isfinite() of an int too large for a float raises OverflowError.
    if type(value) not in (int, float) or not low <= value <= high or not math.isfinite(value):
        raise InvalidRequest(f"retry_policy.{name} must be a number from {low:g} to {high:g}")


@dataclass(frozen=True)
class RunOptions:
    """What a create may ask of one run beyond its message and ids; None: the component's
    choice, else the server's default."""

    #: Attempts and delays (see :class:`RetryPolicy`).
    retry_policy: RetryPolicy | None = None
    #: Seconds an attempt may take (0: no limit).
    timeout: float | None = None
    #: What to do when the session has an active run (one of :data:`MULTITASK`).
    multitask: str | None = None
    #: The task this run is an occurrence of, and the occurrence (``agentos/tasks.py``).
    task_id: str | None = None
    occurrence: str | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None and (
            type(self.timeout) not in (int, float)
            or not 0 <= self.timeout <= _MAX_DELAY
            or not math.isfinite(self.timeout)
        ):
            raise InvalidRequest(f"timeout_seconds must be a number from 0 to {_MAX_DELAY:g}")
        if self.multitask is not None and self.multitask not in MULTITASK:
            raise InvalidRequest(f"multitask must be one of {', '.join(MULTITASK)}")


def policy_of(record: RunRecord) -> RetryPolicy:
    """The run's retry policy (one attempt when it has none)."""
    if record.retry_policy is None:
        return _ONE_ATTEMPT
    try:
        return RetryPolicy.parse(record.retry_policy)
    except InvalidRequest:  # written by a newer release, say: do not retry what we cannot read
        return _ONE_ATTEMPT


_ONE_ATTEMPT = RetryPolicy()


def attempts_with(record: RunRecord, outcome: str, error: str | None, now: float) -> list[Any]:
    """The run's attempts, the current one ended now with ``outcome``."""
    done: list[Any] = json.loads(record.attempts) if record.attempts else []
    done.append(
        {
            "attempt": record.attempt,
            "instance_id": record.instance_id,
            "started_at": record.started_at,
            "ended_at": round(now, 3),
            "outcome": outcome,
            "error": error,
        }
    )
    return done


def requeue(
    record: RunRecord, index: int, reason: str, error: str, *, now: float
) -> tuple[Event, RunUpdate]:
    """The ``RunRetrying`` event (at ``index``) and the update that put the run back in the
    queue for its next attempt, after the policy's delay."""
    policy = policy_of(record)
    delay = policy.delay_after(record.attempt)
    fields = {
        "error": error,
        "reason": reason,
        "next_attempt": record.attempt + 1,
        "next_attempt_at": round(now + delay, 3),
        "max_attempts": policy.max_attempts,
    }
    event = make_event(record, index, KINDS[record.kind].retrying, fields, False)
    history = attempts_with(record, reason, error, now)
    update = RunUpdate(
        record.run_id,
        status=RunStatus.QUEUED,
        requeue=True,
        not_before=now + delay,
        attempts=json.dumps(history, separators=(",", ":")),
        event_count=index + 1,
    )
    return event, update


def error_fields(record: RunRecord, error: str, now: float) -> dict[str, Any]:
    """The fields of a run's terminal error: the error, and every attempt when there were
    several."""
    if record.attempt <= 1:
        return {"error": error}
    return {"error": error, "attempts": attempts_with(record, "ERROR", error, now)}
