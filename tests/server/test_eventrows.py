"""The rows of ``agentos_events`` (``agentos/backends/eventrows.py``), without a database: what
rows a group's events make, that each row gives its events back byte for byte, whole or by an
index window, and what :func:`read_window` says about where to read on."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentos.backends import eventrows
from agentos.backends.eventrows import ROW_MAX_CHARS, ROW_MAX_EVENTS, SEPARATOR, Row
from agentos.events import Event


def _event(
    index: int, text: str = "", *, name: str = "RunContent", terminal: bool = False
) -> Event:
    return Event(index, name, json.dumps({"event_index": index, "content": text}), terminal)


def _spans(rows: list[Row]) -> list[tuple[str, int, int]]:
    """Each row as (run, first index, last index)."""
    return [(row[0], row[1], row[1] if row[5] is None else row[5]) for row in rows]


def _decode(row: Row, lo: int = 0, hi: int | None = None) -> list[Event]:
    _, first, name, terminal, data, _, layout = row
    return eventrows.row_events(first, name, data, terminal, layout, lo, hi)


def _stored(rows: list[Row]) -> dict[str, list[Event]]:
    """What the rows hold, by run, in the order of the rows."""
    found: dict[str, list[Event]] = {}
    for row in rows:
        found.setdefault(row[0], []).extend(_decode(row))
    return found


def _window(rows: list[Row], run_id: str, lo: int, hi: int) -> list[tuple[object, ...]]:
    """What READ_WINDOW selects of ``rows`` for run ``run_id`` and ``[lo, hi)``."""
    mine = sorted((row for row in rows if row[0] == run_id), key=lambda row: row[1])
    starts = [row[1] for row in mine]
    low = max((s for s in starts if s <= lo), default=lo)
    high = min((s for s in starts if s >= hi), default=hi)
    return [
        (first, name, data if first < hi else None, terminal, layout if first < hi else None, last)
        for _, first, name, terminal, data, last, layout in mine
        if low <= first <= high
    ]


def test_one_event_is_the_row_of_earlier_releases() -> None:
    event = _event(7, terminal=True)
    assert eventrows.event_rows([("r", event)]) == [
        ("r", 7, event.name, True, event.data, None, None)
    ]


def test_consecutive_events_share_a_row_and_come_back_byte_for_byte() -> None:
    events = [_event(i, "é\u2028\x00\U0001f600") for i in range(5, 10)]
    events[2] = Event(7, 'Other "name" \\ é', events[2].data)
    (row,) = eventrows.event_rows([("r", e) for e in events])
    assert _spans([row]) == [("r", 5, 9)]
    assert _decode(row) == events


def test_empty_texts_keep_their_places() -> None:
    events = [Event(i, "N", "") for i in range(4)]
    (row,) = eventrows.event_rows([("r", e) for e in events])
    assert _decode(row) == events


@pytest.mark.parametrize("at", [0, 1, 2, 4])
def test_a_text_holding_the_separator_is_a_row_of_its_own(at: int) -> None:
    events = [_event(i) for i in range(5)]
    events[at] = Event(at, "Odd", f"{{}}{SEPARATOR}x{SEPARATOR}")
    rows = eventrows.event_rows([("r", e) for e in events])
    assert ("r", at, at) in _spans(rows)
    assert _stored(rows) == {"r": events}


def test_a_terminal_event_ends_its_row() -> None:
    events = [_event(i, terminal=i in (2, 5)) for i in range(8)]
    rows = eventrows.event_rows([("r", e) for e in events])
    assert _spans(rows) == [("r", 0, 2), ("r", 3, 5), ("r", 6, 7)]
    assert _stored(rows) == {"r": events}


def test_rows_hold_at_most_row_max_events() -> None:
    events = [Event(i, "N", "1") for i in range(2 * ROW_MAX_EVENTS + 1)]
    rows = eventrows.event_rows([("r", e) for e in events])
    n = ROW_MAX_EVENTS
    assert _spans(rows) == [("r", 0, n - 1), ("r", n, 2 * n - 1), ("r", 2 * n, 2 * n)]
    assert _stored(rows) == {"r": events}


def test_rows_hold_at_most_row_max_chars_and_a_longer_event_alone() -> None:
    quarter = ROW_MAX_CHARS // 4
    sizes = [quarter] * 4 + [1] + [ROW_MAX_CHARS + 1] + [quarter, quarter]
    events = [Event(i, "N", "x" * size) for i, size in enumerate(sizes)]
    rows = eventrows.event_rows([("r", e) for e in events])
    assert _spans(rows) == [("r", 0, 3), ("r", 4, 4), ("r", 5, 5), ("r", 6, 7)]
    assert all(len(row[4]) <= ROW_MAX_CHARS + ROW_MAX_EVENTS for row in rows if row[5] is not None)
    assert _stored(rows) == {"r": events}


def test_runs_interleaved_keep_each_runs_order() -> None:
    a = [_event(i) for i in range(4)]
    b = [_event(i) for i in range(10, 13)]
    mixed = [
        ("a", a[0]),
        ("b", b[0]),
        ("a", a[1]),
        ("b", b[1]),
        ("b", b[2]),
        ("a", a[2]),
        ("a", a[3]),
    ]
    rows = eventrows.event_rows(mixed)
    assert _spans(rows) == [("a", 0, 3), ("b", 10, 12)]
    assert _stored(rows) == {"a": a, "b": b}


@pytest.mark.parametrize(
    "indexes",
    [[5, 3, 4], [4, 6, 5, 7], [1, 2, 2, 3], [0, 1, 5, 6], [3, 2, 1, 0], [0, 0]],
    ids=["backwards start", "swapped", "duplicate", "gap", "reversed", "twice"],
)
def test_events_out_of_order_make_rows_of_consecutive_indexes(indexes: list[int]) -> None:
    """Each row holds consecutive indexes, in the order given; a repeated index is in two rows
    (the database refuses the second)."""
    events = [_event(i, str(n)) for n, i in enumerate(indexes)]
    rows = eventrows.event_rows([("r", e) for e in events])
    assert _stored(rows) == {"r": events}
    for row in rows:
        assert [e.index for e in _decode(row)] == list(
            range(_spans([row])[0][1], _spans([row])[0][2] + 1)
        )


@pytest.mark.parametrize(
    "name",
    ["n" * 101, "nul\x00", "lone \ud800 surrogate", "\udfff"],
    ids=["longer than the column", "NUL", "lone surrogate", "low surrogate"],
)
@pytest.mark.parametrize("at", [0, 1, 3])
def test_a_name_the_name_column_may_refuse_is_in_the_name_column(name: str, at: int) -> None:
    """Names go in the ``name`` column (VARCHAR(100) on PostgreSQL) or in ``layout``: an event
    whose name the column may refuse is a row of its own, so that the database judges its name
    wherever it is in its group, as it did when every event was a row."""
    events = [_event(i) for i in range(4)]
    events[at] = Event(at, name, "{}")
    rows = eventrows.event_rows([("r", e) for e in events])
    assert ("r", at, at) in _spans(rows)
    assert all(name not in (row[6] or "") and "\\u" not in (row[6] or "") for row in rows)
    assert _stored(rows) == {"r": events}


_INDEXES = st.lists(st.integers(0, 40), min_size=1, max_size=60)
_TEXTS = st.text(st.sampled_from(["a", "é", "\x1e", "\x00", "\U0001f600", '"', "\\"]), max_size=6)


@given(
    indexes=_INDEXES,
    texts=st.lists(_TEXTS, min_size=1, max_size=8),
    names=st.lists(st.sampled_from(["A", "B", 'q"', "é" * 100]), min_size=1, max_size=3),
    terminal=st.sets(st.integers(0, 59)),
)
def test_any_events_round_trip_whole_and_by_window(
    indexes: list[int], texts: list[str], names: list[str], terminal: set[int]
) -> None:
    """Any events of one run in any order: the rows give them back, each row in its own order;
    with unique increasing indexes, every window ``[lo, hi)`` of READ_WINDOW's rows gives the
    events in it, and says where to read on when they are fewer than ``hi - lo``."""
    events = [
        Event(i, names[n % len(names)], texts[n % len(texts)], n in terminal)
        for n, i in enumerate(indexes)
    ]
    rows = eventrows.event_rows([("r", e) for e in events])
    assert _stored(rows) == {"r": events}
    for row in rows:  # a terminal event ends its row
        assert all(not e.terminal for e in _decode(row)[:-1])
    unique = sorted({e.index: e for e in reversed(events)}.values(), key=lambda e: e.index)
    rows = eventrows.event_rows([("r", e) for e in unique])
    assert _stored(rows) == {"r": unique}
    top = unique[-1].index
    for lo in range(-1, top + 3):
        for hi in range(lo + 1, top + 4):
            found, after = eventrows.read_window(_window(rows, "r", lo, hi), lo, hi)
            assert found == [e for e in unique if lo <= e.index < hi]
            rest = [e.index for e in unique if e.index >= hi]
            assert after == (
                None if not rest else max(hi, min(rest)) if len(found) < hi - lo else after
            )
            if len(found) < hi - lo and rest:
                assert after is not None and hi <= after <= rest[0]


def test_read_window_steps_over_a_gap_to_the_next_row() -> None:
    rows = eventrows.event_rows(
        [("r", e) for e in [*map(_event, range(5)), *map(_event, range(10, 20))]]
    )
    found, after = eventrows.read_window(_window(rows, "r", 2, 8), 2, 8)
    assert [e.index for e in found] == [2, 3, 4] and after == 10
    found, after = eventrows.read_window(_window(rows, "r", 12, 15), 12, 15)
    assert [e.index for e in found] == [12, 13, 14] and after == 15
    found, after = eventrows.read_window(_window(rows, "r", 18, 30), 18, 30)
    assert [e.index for e in found] == [18, 19] and after is None


def test_sqlite_overlap_check_has_three_parameters_a_row() -> None:
    check = eventrows.sqlite_overlaps(300)
    assert check.count("?") == 900  # under SQLite's 999 before 3.32
