"""Log lines with the run they are about: ``run_id``, ``session_id``, ``component``, ``instance``.

A run's task sets its context once (:func:`bind_run`, in ``runs.py``); every line logged from that
task, or from a task it starts (a team's members), carries the run's fields without each call
passing them. Code outside the run's task passes them with ``extra=run_fields(record)``::

    logger.warning("run %s: its owner's lease expired", run_id, extra=run_fields(record))

:func:`configure` (called by ``agentos serve``) sends every logger, uvicorn's included, to one
handler on stderr, as readable text (the default) or as one JSON object per line
(``AGENTOS_LOG_FORMAT=json``): ``time``, ``level``, ``logger``, ``message`` and the context fields
that are known. Log calls never pass a security key, a resume token or a run's message or content;
uvicorn's URL logs have their ``token=`` values redacted (``http/auth.py``).

A flood of the same warning or error (a malformed request per connection, a failing query per
request) is cut by :class:`FloodFilter`: at most ``log_flood_lines`` lines from one place in the
code per ``log_flood_interval`` seconds; the next line let through says how many were left out.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from agentos.events import RunLike

__all__ = [
    "CONTEXT_FIELDS",
    "ContextFilter",
    "FloodFilter",
    "JSONFormatter",
    "bind_run",
    "configure",
    "error_summary",
    "run_fields",
]

#: The context fields a log line may carry, in the order they are written.
CONTEXT_FIELDS = ("run_id", "session_id", "component", "instance")

_RUN: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "agentos_log_run", default=None
)


def run_fields(record: RunLike) -> dict[str, str]:
    """The context fields of a run, for ``extra=``."""
    return {
        "run_id": record.run_id,
        "session_id": record.session_id,
        "component": f"{record.kind}/{record.component_id}",
    }


def bind_run(record: RunLike) -> None:
    """Attach a run's fields to every line logged from the current task (and tasks it starts).

    Call it at the start of the run's own task: the task's context is its own copy, so the
    binding ends with the task.
    """
    _RUN.set(run_fields(record))


def error_summary(exc: BaseException) -> str:
    """An error for a log line: our own errors' fixed text, only the type of any other.

    A database driver's error text can quote the statement's parameters (events, messages).
    """
    detail = getattr(exc, "detail", None)
    if isinstance(detail, str) and type(exc).__module__ == "agentos.errors":
        return f"{type(exc).__name__}: {detail}"
    return type(exc).__name__


class ContextFilter(logging.Filter):
    """Adds the bound run's fields and this instance's id to each record (on a handler, so that
    it sees every record that reaches it, whichever logger it came from)."""

    def __init__(self, instance: str | None = None) -> None:
        super().__init__()
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _RUN.get()
        if bound is not None:
            for name, value in bound.items():
                if getattr(record, name, None) is None:
                    setattr(record, name, value)
        if self.instance is not None and getattr(record, "instance", None) is None:
            record.instance = self.instance
        return True


class FloodFilter(logging.Filter):
    """Lets at most ``lines`` warnings or errors from one place in the code (logger, level, file
    and line) through per ``interval`` seconds, on a handler; the rest are counted, and the first
    line let through after them carries ``suppressed``, how many were left out. Lines below
    WARNING (uvicorn's access log, runs started and ended) always pass: their number follows the
    work done. ``lines`` 0 lets everything through.

    Example: uvicorn warns "Invalid HTTP request received." once per malformed request; 10,000
    such requests a second are 10 lines per 10 s, not megabytes.
    """

    #: Places in the code remembered at most (the oldest is forgotten first).
    MAX_PLACES = 1024

    def __init__(
        self, lines: int, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.lines = lines
        self.interval = interval
        self._clock = clock
        # place -> [window start, lines let through in the window, lines left out]
        self._places: OrderedDict[tuple[str, int, str, int], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.lines <= 0:
            return True
        place = (record.name, record.levelno, record.pathname, record.lineno)
        now = self._clock()
        state = self._places.get(place)
        if state is None:
            state = self._places[place] = [now, 0, 0]
            if len(self._places) > self.MAX_PLACES:
                self._places.popitem(last=False)
        else:
            self._places.move_to_end(place)
        if now - state[0] >= self.interval:
            state[0], state[1] = now, 0
        if state[1] >= self.lines:
            state[2] += 1
            return False
        state[1] += 1
        if state[2]:
            record.suppressed = int(state[2])
            state[2] = 0
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line; non-ASCII escaped, so any text stays one valid line."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                body[name] = str(value)
        suppressed = getattr(record, "suppressed", None)
        if suppressed:
            body["suppressed"] = suppressed
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            body["stack"] = self.formatStack(record.stack_info)
        return json.dumps(body)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message run_id=... session_id=... component=...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(
            f"{name}={value}"
            for name in CONTEXT_FIELDS[:-1]  # the instance is the same on every line
            if (value := getattr(record, name, None)) is not None
        )
        suppressed = getattr(record, "suppressed", None)
        if suppressed:
            context = f"{context} ({suppressed} more like it left out)".lstrip()
        if not context:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the line
        return f"{head} {context}{newline}{rest}"


def configure(
    level: str = "info",
    fmt: str = "text",
    instance: str | None = None,
    *,
    flood_lines: int = 0,
    flood_interval: float = 10.0,
) -> ContextFilter:
    """Send every log record (agentos's, uvicorn's, libraries') to stderr in ``fmt``, at most
    ``flood_lines`` warnings or errors from one place per ``flood_interval`` seconds
    (:class:`FloodFilter`; 0: no limit).

    Returns the context filter, whose ``instance`` can be set once the instance id is known.
    Replaces the root logger's handlers; uvicorn's loggers propagate to it (serve uvicorn with
    ``log_config=None``).
    """
    if fmt not in ("text", "json"):
        raise ValueError("the log format must be text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(FloodFilter(flood_lines, flood_interval))
    context = ContextFilter(instance)
    handler.addFilter(context)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        uvicorn_logger = logging.getLogger(name)
        for old in uvicorn_logger.handlers[:]:
            uvicorn_logger.removeHandler(old)
        uvicorn_logger.propagate = True
    # Alembic announces each of its plugins at INFO when first imported: noise for an operator.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    return context


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
