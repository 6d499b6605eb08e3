"""Events, run status and the names each kind of component uses.

An :class:`Event` is immutable and carries its JSON text, built once when the event is emitted.
That same text is written to the database, kept in the buffer and sent as the SSE ``data:`` line,
so a replay from the database is byte-for-byte the live stream.
"""

from __future__ import annotations

import importlib
import json
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from types import ModuleType
from typing import Any, Protocol

_orjson: ModuleType | None
try:  # optional: the same text, about ten times faster, for the common plain payloads
    _orjson = importlib.import_module("orjson")
except ImportError:  # pragma: no cover - the pure-Python path
    _orjson = None

__all__ = ["KINDS", "Event", "Kind", "Meta", "RunLike", "RunStatus", "dumps", "make_event"]


class RunStatus(StrEnum):
    """Where a run is in its life. Values are upper case on the wire."""

    PENDING = "PENDING"
    #: Waiting for an instance with room (capacity, a retry's delay, or its session's turn).
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"

    @property
    def ended(self) -> bool:
        return self not in (RunStatus.PENDING, RunStatus.QUEUED, RunStatus.RUNNING)


@dataclass(frozen=True)
class Kind:
    """The event names and id field of one kind of component (agents, teams, workflows)."""

    name: str
    id_field: str
    started: str
    content: str
    completed: str
    error: str
    cancelled: str
    #: Between two attempts of a run (not terminal): which attempt failed, why, and when the
    #: next one starts (``agentos/retries.py``).
    retrying: str

    def terminal_name(self, status: RunStatus) -> str:
        if status is RunStatus.COMPLETED:
            return self.completed
        if status is RunStatus.CANCELLED:
            return self.cancelled
        return self.error

    def status_of(self, terminal_name: str) -> RunStatus:
        if terminal_name == self.completed:
            return RunStatus.COMPLETED
        if terminal_name == self.cancelled:
            return RunStatus.CANCELLED
        return RunStatus.ERROR


KINDS: dict[str, Kind] = {
    "agents": Kind(
        "agents",
        "agent_id",
        "RunStarted",
        "RunContent",
        "RunCompleted",
        "RunError",
        "RunCancelled",
        "RunRetrying",
    ),
    "teams": Kind(
        "teams",
        "team_id",
        "TeamRunStarted",
        "TeamRunContent",
        "TeamRunCompleted",
        "TeamRunError",
        "TeamRunCancelled",
        "TeamRunRetrying",
    ),
    "workflows": Kind(
        "workflows",
        "workflow_id",
        "WorkflowStarted",
        "WorkflowContent",
        "WorkflowCompleted",
        "WorkflowError",
        "WorkflowCancelled",
        "WorkflowRetrying",
    ),
}


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _orjson_same(value: Any) -> bool:
    """Whether orjson writes ``value`` exactly as ``json`` does: str, int, bool, None, and
    floats that ``repr`` writes without an exponent (orjson spells exponents differently)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    return kind is float and (value == 0.0 or 1e-4 <= abs(value) < 1e16)


def dumps(obj: Any) -> str:
    """Compact JSON as it goes on the wire; values JSON cannot hold become strings.

    A flat dict of plain values (what most events are) goes through orjson when it is
    installed; everything else through :mod:`json`. Both give the same text.
    """
    if _orjson is not None and type(obj) is dict and all(map(_orjson_same, obj.values())):
        try:
            text: str = _orjson.dumps(obj).decode()
        except TypeError:  # keys that are not str, ints beyond 64 bits, lone surrogates
            pass
        else:
            return text
    text = _encoder.encode(obj)
    # isascii() reads a flag of the string (constant time): most events skip the scan.
    if not text.isascii() and _SURROGATE.search(text) is not None:
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Event:
    """One committed event of a run: its index, name, JSON text and whether it ends the run."""

    index: int
    name: str
    data: str
    terminal: bool = False
    #: The event's SSE frame, encoded by the first stream that sends it and shared by all
    #: streams that send it after (see ``agentos.app``); not part of the event's identity.
    sse: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def payload(self) -> dict[str, Any]:
        """The event as a dict (parsed from its JSON text)."""
        result: dict[str, Any] = json.loads(self.data)
        return result


@dataclass(frozen=True, slots=True)
class Meta:
    """A meta event of a resumed stream (catch_up, subscribed, replay, error); it has no index."""

    name: str
    fields: dict[str, Any]

    @property
    def data(self) -> str:
        return dumps({"event": self.name, **self.fields})

    def payload(self) -> dict[str, Any]:
        return {"event": self.name, **self.fields}


class RunLike(Protocol):
    """What names a run: its ids, kind and component (a RunRecord, for one)."""

    @property
    def run_id(self) -> str: ...
    @property
    def session_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def component_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...


#: The last millisecond :func:`_created_at` rounded to, and its value.
_last_ms: tuple[int, float] = (0, 0.0)


def _created_at() -> float:
    """``round(time.time(), 3)``, the rounding (a decimal conversion, a sixth of make_event's
    time) done once per millisecond rather than once per event.

    All times whose nearest millisecond is the same round to the same float, so the value
    rounded once is reused while the millisecond lasts. ``time() * 1000`` is off the exact
    product by at most half a thousandth of a millisecond (until the year 2248), so it names
    the nearest millisecond surely unless the time is within that much of a half millisecond:
    those (and any time outside that range) are rounded as before.
    """
    global _last_ms
    now = time.time()
    shifted = now * 1000.0 + 0.5
    if not 0.0 < shifted < _MS_RANGE:
        return round(now, 3)
    ms = int(shifted)
    if not 0.001 < shifted - ms < 0.999:  # a half millisecond away at most a thousandth
        return round(now, 3)
    last = _last_ms
    if last[0] == ms:
        return last[1]
    value = round(now, 3)
    _last_ms = (ms, value)  # one assignment: a thread never sees one without the other
    return value


#: Milliseconds below which ``time() * 1000`` is exact to half a thousandth (its float's step
#: is at most 2**-10 there).
_MS_RANGE = float(2**43)


_SET_INDEX, _SET_NAME, _SET_DATA, _SET_TERMINAL, _SET_SSE = (
    vars(Event)[name].__set__ for name in ("index", "name", "data", "terminal", "sse")
)


def _new_event(index: int, name: str, data: str, terminal: bool) -> Event:
    """``Event(index, name, data, terminal)``, with its slots set directly.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, found by
    name at every call: a fifth of :func:`make_event` (callgrind). The slots' own setters do
    the same in half the time.
    """
    event: Event = object.__new__(Event)
    _SET_INDEX(event, index)
    _SET_NAME(event, name)
    _SET_DATA(event, data)
    _SET_TERMINAL(event, terminal)
    _SET_SSE(event, None)
    return event


def make_event(
    run: RunLike, index: int, name: str, fields: dict[str, Any], terminal: bool
) -> Event:
    """Build an event of ``run``: the common fields first, then ``fields`` (which cannot override them)."""
    payload: dict[str, Any] = {
        "event": name,
        "event_index": index,
        "run_id": run.run_id,
        "session_id": run.session_id,
        KINDS[run.kind].id_field: run.component_id,
        "attempt": run.attempt,
        "created_at": _created_at(),
    }
    for key, value in fields.items():
        payload.setdefault(key, value)
    # The common fields are plain (str, int, a float of today's time): only ``fields`` need
    # dumps' check of what orjson writes as json does. Same text, a microsecond less per event.
    if _orjson is not None and all(map(_orjson_same, fields.values())):
        try:
            return _new_event(index, name, _orjson.dumps(payload).decode(), terminal)
        except TypeError:  # a key that is not str, an int beyond 64 bits, a lone surrogate
            pass
    return Event(index, name, dumps(payload), terminal)
