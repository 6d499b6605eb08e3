"""How events are stored in ``agentos_events``: consecutive events of a run share a row.

A row per event cost SQLite 2.3 to 2.9 µs an event, whatever its size (bench/NOTES.md, target
4): the one cost of a run streaming at full speed that the rest of the server could not shrink.
A group commit holds runs of consecutive events of each run, so it writes each such run as one
row (up to :data:`ROW_MAX_EVENTS` events and :data:`ROW_MAX_CHARS` characters)::

    one event       event_index=7   last_index=NULL  name, terminal, data  layout=NULL
    several events  event_index=8   last_index=11    data = texts joined   layout=names
                                                     terminal: the last one's

The texts are joined by :data:`SEPARATOR` and split back as they were written, byte for byte;
``layout`` is the names, in JSON as ``[name, count]`` runs. A terminal event always ends its
row (it is a run's last event anyway); an event whose text holds the separator, or whose name
the ``name`` column may refuse, is a row of its own. A row of one event is the format of every
release before revision 0007, so older rows are read as they are.

Reads by cursor (:data:`READ_WINDOW`) take the rows that hold indexes ``[lo, hi)``: the row that
starts at or before ``lo`` and those that start before ``hi``, in one index range, plus the start
of the first row after it (its texts not read), which tells a reader stepping over a gap in the
indexes where to go on. The refusal of a taken index, which the primary key gave alone when rows
were events, is now the primary key (two rows cannot start at one index) and
:data:`SQLITE_OVERLAPS`/:data:`POSTGRES_OVERLAPS` (a row may not start inside another): both are
checked in the transaction that writes, after its inserts.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from functools import cache
from itertools import accumulate, groupby
from typing import Any

from agentos.events import Event

__all__ = [
    "COLUMNS",
    "NAME_MAX_CHARS",
    "POSTGRES_OVERLAPS",
    "READ_WINDOW",
    "ROW_MAX_CHARS",
    "ROW_MAX_EVENTS",
    "SEPARATOR",
    "event_rows",
    "read_window",
    "row_events",
    "sqlite_overlaps",
]

#: The most events, and characters of their texts, one row holds: a read at a cursor fetches
#: its whole row, and the event loop reads rows of up to ``inline_read_max_bytes`` (64 KiB by
#: default; a character is up to four bytes). An event longer than that is a row of its own.
ROW_MAX_EVENTS = 256
ROW_MAX_CHARS = 16 * 1024

#: A name as a JSON string (what ``json.dumps`` writes, in C).
_quote = json.encoder.encode_basestring_ascii

#: The columns of a row as :func:`event_rows` makes it.
COLUMNS = ("run_id", "event_index", "name", "terminal", "data", "last_index", "layout")

Row = tuple[str, int, str, bool, str, int | None, str | None]

#: What joins the texts of a row's events: ASCII's record separator, which no JSON text holds (a
#: control character is escaped inside a string and is not whitespace outside one). The store
#: takes any text all the same: an event whose text holds one is a row of its own.
SEPARATOR = "\x1e"

#: The most characters of a name the ``name`` column holds (VARCHAR(100) on PostgreSQL).
NAME_MAX_CHARS = 100
_SURROGATE = re.compile("[\ud800-\udfff]")


def event_rows(events: Sequence[tuple[str, Event]]) -> list[Row]:
    """The rows that store ``events`` (``(run_id, event)`` pairs, several runs mixed): each
    run's events in the order given, consecutive ones joined while they fit one row."""
    by_run: dict[str, list[Event]] = {}
    for run_id, event in events:
        found = by_run.get(run_id)
        if found is None:
            by_run[run_id] = [event]
        else:
            found.append(event)
    rows: list[Row] = []
    for run_id, run_events in by_run.items():
        if len(run_events) == 1:
            event = run_events[0]
            rows.append((run_id, event.index, event.name, event.terminal, event.data, None, None))
            continue
        texts = [e.data for e in run_events]
        lengths = [len(text) for text in texts]
        if len(run_events) <= ROW_MAX_EVENTS and sum(lengths) <= ROW_MAX_CHARS:
            _append_rows(rows, run_id, run_events, texts)
            continue
        # Slices of at most ROW_MAX_EVENTS events and ROW_MAX_CHARS characters (an event
        # longer than that alone), found on the running total of the texts' lengths.
        ends = list(accumulate(lengths))
        start, count = 0, len(run_events)
        while start < count:
            before = ends[start - 1] if start else 0
            most = min(count, start + ROW_MAX_EVENTS)
            end = max(bisect_right(ends, before + ROW_MAX_CHARS, start, most), start + 1)
            _append_rows(rows, run_id, run_events[start:end], texts[start:end])
            start = end
    return rows


def _append_rows(rows: list[Row], run_id: str, batch: list[Event], texts: list[str]) -> None:
    """Append the rows of ``batch`` (events of one run that fit one row by count and size;
    ``texts`` their texts): one row when they make one (checked a list at a time: the common
    case), else the rows they make event by event."""
    first, last = batch[0], batch[-1]
    n = len(batch)
    if n == 1:
        rows.append((run_id, first.index, first.name, first.terminal, first.data, None, None))
        return
    names = [(name, len(list(same))) for name, same in groupby([e.name for e in batch])]
    if (
        last.index - first.index == n - 1
        and [e.index for e in batch] == list(range(first.index, last.index + 1))
        and True not in [e.terminal for e in batch[:-1]]
        and SEPARATOR not in "".join(texts)
        and all([_in_layout(name) for name, _ in names])
    ):
        layout = f"[{','.join([f'[{_quote(name)},{count}]' for name, count in names])}]"
        data = SEPARATOR.join(texts)
        rows.append((run_id, first.index, first.name, last.terminal, data, last.index, layout))
        return
    # Not consecutive, a terminal event before the last, a text holding the separator or a
    # name that may not go in the layout.
    part: list[Event] = []
    for event in batch:
        alone = SEPARATOR in event.data or not _in_layout(event.name)
        if part and (event.index != part[-1].index + 1 or part[-1].terminal or alone):
            _append_rows(rows, run_id, part, [e.data for e in part])
            part = []
        part.append(event)
        if alone:  # a row of its own
            _append_rows(rows, run_id, part, [event.data])
            part = []
    if part:
        _append_rows(rows, run_id, part, [e.data for e in part])


def _in_layout(name: str) -> bool:
    """Whether ``name`` may go in a row's ``layout``: only a name that every database takes in
    the ``name`` column (at most :data:`NAME_MAX_CHARS` characters, no NUL, no lone surrogate).
    An event with another name is a row of its own, so its name is refused, or taken, wherever
    the event is in its group, as when every event was a row."""
    return (
        len(name) <= NAME_MAX_CHARS
        and "\x00" not in name
        and (name.isascii() or _SURROGATE.search(name) is None)
    )


def row_events(
    first: int,
    name: str,
    data: str,
    terminal: bool | int,
    layout: str | None,
    lo: int = 0,
    hi: int | None = None,
) -> list[Event]:
    """The events of a stored row whose indexes are in ``[lo, hi)`` (``hi`` None: no bound)."""
    if layout is None:
        inside = first >= lo and (hi is None or first < hi)
        return [Event(first, name, data, bool(terminal))] if inside else []
    texts = data.split(SEPARATOR)
    end = first + len(texts) if hi is None else min(hi, first + len(texts))
    names: list[str] = []
    for event_name, count in json.loads(layout):
        names += [event_name] * count
    events = [Event(i, names[i - first], texts[i - first]) for i in range(max(lo, first), end)]
    if events and terminal and events[-1].index == first + len(texts) - 1:
        last = events.pop()
        events.append(Event(last.index, last.name, last.data, True))
    return events


#: The rows of run ``:run_id`` that hold indexes ``[:lo, :hi)`` (see the module docstring), in
#: order, then the first row that starts at ``:hi`` or after, if any, with no texts: its
#: ``event_index`` is where the next events are. Columns: ``event_index, name, data, terminal,
#: layout, last_index``. One range of the primary key, whatever the run's length. The bounds
#: are BIGINT: ``:hi`` is ``:lo`` plus a limit, which may be past any INTEGER index.
READ_WINDOW = (
    "SELECT event_index, name,"
    " CASE WHEN event_index < CAST(:hi AS BIGINT) THEN data END,"
    " terminal,"
    " CASE WHEN event_index < CAST(:hi AS BIGINT) THEN layout END,"
    " last_index"
    " FROM agentos_events WHERE run_id = :run_id"
    " AND event_index >= coalesce("
    "(SELECT max(event_index) FROM agentos_events"
    " WHERE run_id = :run_id AND event_index <= CAST(:lo AS BIGINT)),"
    " CAST(:lo AS BIGINT))"
    " AND event_index <= coalesce("
    "(SELECT min(event_index) FROM agentos_events"
    " WHERE run_id = :run_id AND event_index >= CAST(:hi AS BIGINT)),"
    " CAST(:hi AS BIGINT))"
    " ORDER BY event_index"
)


def read_window(rows: Iterable[Sequence[Any]], lo: int, hi: int) -> tuple[list[Event], int | None]:
    """The events in ``[lo, hi)`` of :data:`READ_WINDOW`'s rows, and where to read on when
    they are fewer than ``hi - lo``: ``hi`` when a row goes on past it, the next row's start
    when there is a gap, None at the end of the run."""
    events: list[Event] = []
    after: int | None = None
    for first, name, data, terminal, layout, last_index in rows:
        if first >= hi:
            after = first if after is None else after
            continue
        events.extend(row_events(first, name, data, terminal, layout, lo, hi))
        if last_index is not None and last_index >= hi:
            after = hi
    return events, after


#: Whether any of ``n`` just inserted rows ``(run_id, first, last)`` overlaps another row of its
#: run: the row that starts last at or before ``last`` (its own excepted) must end before
#: ``first``. Each check is one descent of the primary key.
_OVERLAP_CONDITION = (
    "(SELECT coalesce(e.last_index, e.event_index) FROM agentos_events e"
    " WHERE e.run_id = {run_id} AND e.event_index <= {last} AND e.event_index != {first}"
    " ORDER BY e.event_index DESC LIMIT 1) >= {first}"
)


@cache
def sqlite_overlaps(n: int) -> str:
    """The overlap check of ``n`` rows on SQLite: ``3 * n`` parameters, run id, first and last
    index of each row. (Callers use a few sizes, so that sqlite3's cache of 128 prepared
    statements keeps them: see ``SQLStore``'s ``_sqlite_check_overlaps``.)"""
    values = ", ".join(["(?, ?, ?)"] * n)
    condition = _OVERLAP_CONDITION.format(run_id="g.column1", first="g.column2", last="g.column3")
    return f"SELECT 1 FROM (VALUES {values}) AS g WHERE {condition} LIMIT 1"


#: The overlap check on PostgreSQL, for any number of rows: three arrays, ``:run_ids``,
#: ``:firsts`` and ``:lasts``.
POSTGRES_OVERLAPS = (
    "SELECT 1 FROM unnest(CAST(:run_ids AS VARCHAR[]), CAST(:firsts AS INTEGER[]),"
    " CAST(:lasts AS INTEGER[])) AS g(run_id, first, last)"
    " WHERE "
    + _OVERLAP_CONDITION.format(run_id="g.run_id", first="g.first", last="g.last")
    + " LIMIT 1"
)
