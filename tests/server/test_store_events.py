"""The events of the store contract, pinned down through the Store API only, on SQLite and on
PostgreSQL: whatever rows a backend keeps them in, a run's events read back exactly as they
were committed (index, name, data, terminal), from any start, at any limit, across gaps; a
taken index refuses its whole group; the last event, the event count, a claim's count, the
reaper's terminal event and the deletes of runs all see the events as committed."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import traceback
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from agentos.backends.base import Store, open_backend
from agentos.errors import DataRejected, WriteConflict
from agentos.events import Event, RunStatus
from agentos.records import RunUpdate
from agentos.settings import Settings
from tests.pgdb import _dsn, db_url, pg_url, truncate
from tests.server.test_store import _end_with, _event
from tests.storage import run_record

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest

# Hypothesis reports a failing example with a patch made by libcst, whose import warns.
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

#: SQLite commits a group of at most this many rows on the event loop, a larger one through the
#: driver's thread: the groups here (0 to 600 events) take both ways.
INLINE_ROWS = 64


@pytest_asyncio.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """The store the server would use for ``db_url``, with SQLite's inline bound lowered."""
    settings = Settings(db_url=db_url, db_inline_commit_max_rows=INLINE_ROWS)
    s = open_backend(settings).store
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _expect(events: Sequence[Event], start: int, limit: int) -> list[Event]:
    """What ``read_events(run, start, limit)`` returns of a run whose events are ``events``."""
    return sorted((e for e in events if e.index >= start), key=lambda e: e.index)[:limit]


async def _assert_stored(store: Store, run_id: str, events: Sequence[Event]) -> None:
    """The run's events, last event and (unended run) count are exactly ``events``."""
    ordered = sorted(events, key=lambda e: e.index)
    assert await store.read_events(run_id, 0, 100_000) == ordered
    assert await store.last_event(run_id) == (ordered[-1] if ordered else None)
    got = await store.get_run(run_id)
    assert got is not None and not got.status.ended
    assert got.event_count == (ordered[-1].index + 1 if ordered else 0)


# -- any groups, any text, any page ------------------------------------------------------------

#: Text that breaks naive joining, splitting, escaping or length counting: separators, NUL
#: (escaped in JSON), BOM, non-characters, astral characters (two UTF-16 units, four UTF-8
#: bytes), emoji sequences joined by ZWJ, combining marks, JSON's own punctuation.
_PIECES = [
    "\u2028", "\u2029", "\x00", "\x85", "\ufeff", "\r\n", "\n", "\t", "\x1e", "\x1f", "\u200b",
    "\ue000", "\ufffe", "\U0010ffff", "\U0001f600", "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "e\u0301", "\u0301\u0308\u20dd", '"', "\\", "\\u0000", ",", "][", "}{", "\u202e", "é",
]  # fmt: skip
_CHARS = st.characters(exclude_categories=["Cs"])  # lone surrogates: refused by both
_TEXT = st.lists(st.one_of(st.sampled_from(_PIECES), _CHARS), max_size=24).map("".join)
_NAME = st.one_of(
    st.just("RunContent"),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=100),
)
#: The ways a JSON text may be written: the store keeps the text, not its value.
_FORMATS: list[dict[str, Any]] = [
    {"ensure_ascii": False},
    {"ensure_ascii": True},
    {"ensure_ascii": False, "separators": (",", ":")},
    {"ensure_ascii": False, "indent": 1},
    {"ensure_ascii": True, "indent": "\t", "separators": (" ,", " : ")},
]
_COUNT = st.one_of(st.integers(1, 4), st.integers(1, 600))
_GAP = st.sampled_from([0, 0, 0, 0, 1, 2, 37])
_LIMITS = st.one_of(st.sampled_from([0, 1, 2, 15, 16, 17, 100, 100_000]), st.integers(1, 700))
#: One group commit: stretches of (run, gap before it, events), at most 600 events in all; and
#: maybe a taken index slipped in: (run, which of its stored indexes, where in the group).
_GROUP = st.tuples(
    st.lists(st.tuples(st.integers(0, 3), _GAP, _COUNT), max_size=5),
    st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 600))),
)
_serial = itertools.count()


class _Script:
    """The events a property test commits, each made from its ordinal in the whole script."""

    def __init__(
        self, texts: list[str], names: list[str], terminal_every: int, big: dict[int, int]
    ) -> None:
        self.texts = texts
        self.names = names
        self.terminal_every = terminal_every
        self.big = big
        self.made = 0

    def event(self, index: int) -> Event:
        k = self.made
        self.made += 1
        text = self.texts[k % len(self.texts)]
        if k in self.big:  # a few events of up to 200 KB
            text = (text or "é") * (self.big[k] // max(1, len(text)))
        name = self.names[k % len(self.names)]
        value = {"event": name, "event_index": index, "content": text, "parts": [text[:3], k]}
        data = json.dumps(value, **_FORMATS[k % len(_FORMATS)])
        terminal = self.terminal_every > 0 and k % self.terminal_every == self.terminal_every - 1
        return Event(index, name, data, terminal)


@settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow "explain"
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    runs=st.integers(1, 4),
    groups=st.lists(_GROUP, min_size=1, max_size=6),
    texts=st.lists(_TEXT, min_size=1, max_size=6),
    names=st.lists(_NAME, min_size=1, max_size=4),
    terminal_every=st.sampled_from([0, 0, 1, 3, 50]),
    big=st.dictionaries(st.integers(0, 2_000), st.integers(20_000, 200_000), max_size=3),
    data=st.data(),
)
async def test_any_groups_read_back_exactly_from_any_start(
    store: Store,
    runs: int,
    groups: list[tuple[list[tuple[int, int, int]], tuple[int, int, int] | None]],
    texts: list[str],
    names: list[str],
    terminal_every: int,
    big: dict[int, int],
    data: st.DataObject,
) -> None:
    """Groups of 0 to 600 events of several runs interleaved, with gaps, hostile text, long
    names and a few large events: after each group every run's last event and count are its
    own; at the end every page a follower may ask for (from the start, the middle or the end
    of what was one commit, past the end, one event or more than the run has) is the slice
    of what was committed; a claim counts the events too. A group holding a taken index (of
    a stretch committed earlier) is refused whole."""
    # pytest-asyncio's runner loses the arguments of a falsifying example: say them here.
    note(f"{runs=} {groups=} {texts=} {names=} {terminal_every=} {big=}")
    serial = next(_serial)
    component = f"c{serial}"
    ids = [f"r\u2028é/{serial}-{n}" for n in range(runs)]
    await store.commit(
        [], [], runs=[run_record(i, component_id=component, status=RunStatus.QUEUED) for i in ids]
    )
    script = _Script(texts, names, terminal_every, big)
    stored: dict[str, list[Event]] = {i: [] for i in ids}
    stretches: dict[str, list[tuple[int, int]]] = {i: [] for i in ids}  # (first, last)
    for plan, taken in groups:
        group: list[tuple[str, Event]] = []
        made: list[tuple[str, int, int]] = []
        top = {i: (stored[i][-1].index if stored[i] else -1) for i in ids}
        room = 600
        for n, gap, count in plan:
            run_id = ids[n % runs]
            count = min(count, room)
            room -= count
            if count == 0:
                break
            first = top[run_id] + 1 + gap
            group += [(run_id, script.event(first + j)) for j in range(count)]
            top[run_id] = first + count - 1
            made.append((run_id, first, top[run_id]))
        if taken is not None and stored[ids[taken[0] % runs]]:
            run_id = ids[taken[0] % runs]
            index = stored[run_id][taken[1] % len(stored[run_id])].index
            group.insert(taken[2] % (len(group) + 1), (run_id, Event(index, "Taken", "{}")))
            with pytest.raises(WriteConflict):
                await store.commit(group, [])
        else:
            await store.commit(group, [])
            for run_id, event in group:
                stored[run_id].append(event)
            for run_id, first, last in made:
                stretches[run_id].append((first, last))
        for run_id, events in stored.items():
            assert await store.last_event(run_id) == (events[-1] if events else None)
            got = await store.get_run(run_id)
            assert got is not None and got.event_count == _top_index(events) + 1

    for run_id in ids:
        events = stored[run_id]
        assert await store.read_events(run_id, 0, 100_000) == events
        end = _top_index(events) + 1
        pages = {(-1, 3), (end, 1), (end, 100), (end + 5, 1)}
        for first, last in stretches[run_id]:
            middle = (first + last) // 2
            pages |= {(first, 1), (first, last - first + 1), (middle, 17), (last, 2)}
            pages |= {(first + 1, 16), (last + 1, 1), (first - 1, last - first + 3)}
        pages |= set(data.draw(st.lists(st.tuples(st.integers(-1, end + 3), _LIMITS), max_size=12)))
        for start, limit in sorted(pages):
            assert await store.read_events(run_id, start, limit) == _expect(events, start, limit)

    now = time.time()
    claimed = await store.claim_runs(
        "claimer", [("agents", component)], now=now, lease_until=now + 60, limit=10
    )
    assert {r.run_id: r.event_count for r in claimed} == {
        i: _top_index(events) + 1 for i, events in stored.items()
    }


def _top_index(events: Sequence[Event]) -> int:
    """The highest index of ``events`` (committed in increasing order); -1 when there are none."""
    return events[-1].index if events else -1


@pytest.mark.parametrize(
    ("start", "limit"),
    [(0, 2**31), (0, 2**40), (2, 2**31 - 1), (2**31 - 2, 5), (2**40, 1)],
)
async def test_a_read_past_any_index_is_just_short(store: Store, start: int, limit: int) -> None:
    """``start + limit`` past what an index column holds (2**31 - 1 on PostgreSQL): the events
    there are, as with any other start and limit (a read of "everything"), not an error."""
    await store.create_run(run_record("r"))
    events = [_event(i) for i in range(3)]
    await store.commit([("r", e) for e in events], [])
    assert await store.read_events("r", start, limit) == _expect(events, start, limit)


async def test_rows_larger_than_an_inline_read_are_read_all_the_same(db_url: str) -> None:
    """SQLite reads a page of up to 16 events on the event loop, and refuses there a row of
    more than ``inline_read_max_bytes`` (the whole row: all its events' texts and names): a
    row of many events, or a large row right after the page, is read through the driver's
    thread, with the same events."""
    settings = Settings(db_url=db_url, db_inline_read_max_bytes=1_024)
    store = open_backend(settings).store
    await store.open()
    try:
        await store.create_run(run_record("r"))
        events = [Event(i, "N", json.dumps({"i": i, "s": "é🙂" * 20})) for i in range(100)]
        await store.commit([("r", e) for e in events[:98]], [])
        await store.commit([("r", e) for e in events[98:]], [])  # a row of 2 small events
        events.append(Event(100, "Big", json.dumps("x" * 5_000)))
        await store.commit([("r", events[-1])], [])
        for start, limit in [(0, 1), (5, 3), (97, 1), (97, 16), (98, 2), (99, 16), (100, 1)]:
            assert await store.read_events("r", start, limit) == events[start : start + limit]
    finally:
        await store.close()


# -- gaps ----------------------------------------------------------------------------------------


async def test_reads_go_across_gaps_in_order(store: Store) -> None:
    """Indexes that skip (0-2, then 7-8, then 20, then a group with holes of its own): a read
    from any start, the holes included, returns the next events in order up to its limit."""
    await store.create_run(run_record("r"))
    events: list[Event] = []
    for indexes in ([0, 1, 2], [7, 8], [20], [30, 31, 35, 36, *range(40, 140), 500]):
        group = [_event(i) for i in indexes]
        await store.commit([("r", e) for e in group], [])
        events += group
        await _assert_stored(store, "r", events)
    for start in [*range(-1, 42), 138, 139, 140, 499, 500, 501]:
        for limit in (1, 3, 16, 17, 1_000):
            assert await store.read_events("r", start, limit) == _expect(events, start, limit)


async def test_an_event_may_go_into_a_gap(store: Store) -> None:
    """Today an index below a run's last one is taken only if an event holds it: a group into
    a gap (or before the first event) is stored and read in index order."""
    await store.create_run(run_record("r"))
    events = [_event(i) for i in [*range(10, 20), *range(40, 100)]]
    await store.commit([("r", e) for e in events], [])
    for indexes in (range(25, 35), range(0, 3), [20], range(36, 40), [35, 21]):
        group = [Event(i, "Filled", f'{{"filled":{i}}}') for i in indexes]
        await store.commit([("r", e) for e in group], [])
        events += group
        await _assert_stored(store, "r", events)
    for start in (0, 3, 10, 19, 20, 22, 34, 39, 40):
        assert await store.read_events("r", start, 5) == _expect(events, start, 5)


# -- taken indexes -------------------------------------------------------------------------------


def _taken(*indexes: int) -> list[tuple[str, Event]]:
    """Events of run ``a`` at ``indexes``, with text no stored event has (an overwrite shows)."""
    return [("a", Event(i, "Taken", f'{{"taken":{i}}}')) for i in indexes]


def _fresh(run_id: str, indexes: range) -> list[tuple[str, Event]]:
    return [(run_id, Event(i, "Fresh", f'{{"fresh":{i}}}')) for i in indexes]


#: Groups that each hold an index already taken in run ``a`` (stored: 0-9 in one commit, 10
#: alone, 11-40 in one, 60-69 in one) or the same index twice, by what they repeat.
_CONFLICTS = {
    "the first index": _taken(0),
    "the last of a long commit": _taken(40),
    "the run's last index": _taken(69),
    "one in the middle of a commit": _taken(5),
    "a single event inside a long commit": _taken(25),
    "a range over the end of a commit": _taken(*range(35, 46)),
    "a range over the start of a commit": _taken(*range(50, 62)),
    "a range over a whole commit, both ends free": _taken(*range(45, 75)),
    "fresh events past the end, then a taken one": [*_fresh("a", range(70, 90)), *_taken(3)],
    "fresh events in a gap, then a taken one": [*_fresh("a", range(41, 50)), *_taken(7)],
    "the same new index twice": _fresh("a", range(70, 72)) + _fresh("a", range(70, 71)),
    "the same new index twice, far apart": _fresh("a", range(70, 100)) + _fresh("a", range(85, 86)),
    "the same new index twice, another run's between": [
        *_fresh("a", range(70, 71)),
        *_fresh("b", range(5, 6)),
        *_fresh("a", range(70, 71)),
    ],
}


@pytest.mark.parametrize("case", list(_CONFLICTS))
async def test_a_group_with_a_taken_index_writes_nothing(store: Store, case: str) -> None:
    """A group that repeats an index (stored, or twice in itself) raises WriteConflict and
    writes nothing: none of its events (of other runs too), new runs or run updates; in a
    short group and in a long one (SQLite: on the loop and through the driver's thread)."""
    await store.create_run(run_record("a", content="before"))
    await store.create_run(run_record("b"))
    await store.create_run(run_record("c", content="before"))
    stored = {
        "a": [_event(i) for i in [*range(0, 10), 10, *range(11, 41), *range(60, 70)]],
        "b": [_event(i) for i in range(3)],
        "c": [],
    }
    for commit in (range(0, 10), range(10, 11), range(11, 41), range(60, 70)):
        await store.commit([("a", _event(i)) for i in commit], [])
    await store.commit([("b", _event(i)) for i in range(3)], [])
    for padding in (0, 2 * INLINE_ROWS):
        # Every other index: a row each, so that the long group is one of many rows.
        padded = _fresh("c", range(0, 2 * padding, 2))
        group = [*padded, *_fresh("b", range(3, 5)), *_CONFLICTS[case]]
        updates = [
            RunUpdate("a", status=RunStatus.COMPLETED, content="after", event_count=100),
            RunUpdate("c", content="after"),
        ]
        with pytest.raises(WriteConflict):
            await store.commit(group, updates, runs=[run_record("new")])
        for run_id, events in stored.items():
            await _assert_stored(store, run_id, events)
        assert await store.get_run("new") is None
        for run_id in ("a", "c"):
            got = await store.get_run(run_id)
            assert got is not None and got.status is RunStatus.RUNNING
            assert got.content == "before"
    # Nothing is left half-written: the same indexes are free afterwards.
    await store.commit([*_fresh("c", range(3)), *_fresh("a", range(70, 72))], [])
    assert [e.index for e in await store.read_events("a", 68, 10)] == [68, 69, 70, 71]
    assert [e.index for e in await store.read_events("c", 0, 10)] == [0, 1, 2]


@pytest.mark.parametrize("inside_first", [False, True], ids=["long row first", "inside first"])
async def test_a_row_inside_another_is_refused_hundreds_of_rows_apart(
    store: Store, inside_first: bool
) -> None:
    """A group of more than 300 rows (SQLite checks overlaps 300 rows at a time, after all its
    inserts) with an event inside a stretch of the same group hundreds of rows away: refused
    whole, whichever comes first."""
    await store.create_run(run_record("a"))
    stretch = _fresh("a", range(0, 10))
    apart = _fresh("a", range(100, 1_000, 2))  # a row each
    inside = _taken(5)
    group = [*inside, *apart, *stretch] if inside_first else [*stretch, *apart, *inside]
    with pytest.raises(WriteConflict):
        await store.commit(group, [])
    assert await store.read_events("a", 0, 1_000) == []


async def test_each_refused_group_raises_a_conflict_of_its_own(store: Store) -> None:
    """A group refused for an index inside a stored row raises a WriteConflict of its own, with
    its own traceback: one exception raised again and again keeps every earlier refusal's
    frames (their groups' events, their connections) alive, a traceback longer each time."""
    await store.create_run(run_record("a"))
    await store.commit(_fresh("a", range(10)), [])
    refusals = []
    for _ in range(3):
        with pytest.raises(WriteConflict) as refused:
            await store.commit(_taken(5), [])
        refusals.append(refused.value)
    assert len({id(exc) for exc in refusals}) == 3
    depths = [len(list(traceback.walk_tb(exc.__traceback__))) for exc in refusals]
    assert depths[0] == depths[-1]


#: Two groups of run ``a`` (0-4 stored) written at once, each holding an index of the other's.
_RACES = {
    "a single event inside a long group": ((5, 15), (9, 10)),
    "a long group around a single event": ((9, 10), (5, 15)),
    "a group starting inside another": ((5, 15), (10, 20)),
    "a group ending inside another": ((10, 20), (5, 15)),
}


@pytest.mark.postgres
@pytest.mark.parametrize("case", list(_RACES))
async def test_concurrent_groups_with_a_common_index_cannot_both_commit(
    pg_url: str, case: str
) -> None:
    """PostgreSQL, two instances commit at once (unfenced, or fenced by one owner: a fence
    locks the run rows FOR KEY SHARE, which does not exclude another) groups whose rows of
    run ``a`` start at different indexes but share one: one raises WriteConflict, as when the
    primary key was the event's, and the run's events are each stored once. Each commit is
    held after its inserts and overlap check (by a lock on the run it updates) until both are."""
    await truncate(pg_url)
    stores = [open_backend(Settings(db_url=pg_url)).store for _ in range(2)]
    for store in stores:
        await store.open()
    holder = await asyncpg.connect(_dsn(pg_url))
    try:
        for run_id in ("a", "x", "y"):
            await stores[0].create_run(run_record(run_id))
        await stores[0].commit([("a", _event(i)) for i in range(5)], [])
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1 FROM agentos_runs WHERE run_id IN ('x', 'y') FOR UPDATE")
        commits = [
            asyncio.ensure_future(
                store.commit(
                    [("a", Event(i, "Racer", f'{{"by":"{held}"}}')) for i in range(*span)],
                    [RunUpdate(held, content=held)],
                )
            )
            for store, held, span in zip(stores, ("x", "y"), _RACES[case], strict=True)
        ]
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        for _ in range(500):
            if await holder.fetchval(waiting) == 2 or any(c.done() for c in commits):
                break
            await asyncio.sleep(0.01)
        await hold.rollback()
        outcomes = await asyncio.gather(*commits, return_exceptions=True)
        assert sum(isinstance(o, WriteConflict) for o in outcomes) == 1, outcomes
        indexes = [e.index for e in await stores[0].read_events("a", 0, 100)]
        assert indexes == sorted(set(indexes))
    finally:
        await holder.close()
        for store in stores:
            await store.close()


# -- terminal events and the reaper ----------------------------------------------------------------


async def test_a_terminal_event_ending_a_long_group_is_the_last_event(store: Store) -> None:
    await store.create_run(run_record("r"))
    events = [_event(i) for i in range(299)] + [_event(299, terminal=True)]
    done = RunUpdate("r", status=RunStatus.COMPLETED, event_count=300)
    await store.commit([("r", e) for e in events], [done])
    last = await store.last_event("r")
    assert last == events[-1] and last.terminal
    assert await store.read_events("r", 299, 10) == [events[-1]]
    assert await store.read_events("r", 290, 16) == events[290:]
    assert await store.read_events("r", 0, 1_000) == events
    got = await store.get_run("r")
    assert got is not None and got.status is RunStatus.COMPLETED and got.event_count == 300


@pytest.mark.parametrize("tail", [0, 3], ids=["long group last", "short group after"])
async def test_the_reaper_ends_a_run_after_its_last_event(store: Store, tail: int) -> None:
    """A run whose owner died after a long group (and maybe a short one after it, and gaps):
    ``end_run`` sees its last event and writes the terminal one right after it; the former
    owner can then write no index, the terminal one's nor the next."""
    now = time.time()
    await store.create_run(run_record("old", instance_id="dead", lease_until=now - 10))
    events = [_event(i) for i in [*range(0, 10), *range(100, 350)]]
    await store.commit([("old", e) for e in events], [], owner="dead")
    late = [_event(i) for i in range(350, 350 + tail)]
    if late:
        await store.commit([("old", e) for e in late], [], owner="dead")
    events += late
    seen: list[Event | None] = []
    taken = await store.end_run("old", "me", _end_with("lost", seen), now=now, expired=True)
    assert taken is not None and seen == [events[-1]]
    end = events[-1].index + 1
    terminal = _event(end, terminal=True)
    assert await store.last_event("old") == terminal
    assert await store.read_events("old", end - 2, 10) == [*events[-2:], terminal]
    assert await store.read_events("old", 0, 10_000) == [*events, terminal]
    got = await store.get_run("old")
    assert got is not None and got.status is RunStatus.ERROR and got.event_count == end + 1
    for index in (end, end + 1):
        with pytest.raises(WriteConflict):
            await store.commit([("old", _event(index))], [], owner="dead")
    assert await store.read_events("old", end, 10) == [terminal]


# -- deletes ---------------------------------------------------------------------------------------


async def test_deleted_runs_take_their_events_with_them(store: Store) -> None:
    """Retention (``delete_ended_runs``) and ``delete_session`` remove a run's events, long
    groups and gaps included; a new run with the same id starts with none and can write any
    index. The events of the runs that stay are untouched."""
    long_run = [_event(i) for i in [*range(300), *range(310, 320)]] + [_event(320, True)]
    short_run = [_event(0), _event(1, terminal=True)]
    kept = [_event(i) for i in range(100)]
    for run_id, created_at, status, session, events in (
        ("old-long", 10.0, RunStatus.COMPLETED, "s1", long_run),
        ("old-short", 11.0, RunStatus.ERROR, "s1", short_run),
        ("old-running", 12.0, RunStatus.RUNNING, "s2", kept),
        ("new-ended", 5_000.0, RunStatus.COMPLETED, "s2", kept),
        ("in-session", 5_000.0, RunStatus.COMPLETED, "s3", long_run),
    ):
        await store.create_run(run_record(run_id, created_at=created_at, session_id=session))
        await store.commit([(run_id, e) for e in events], [RunUpdate(run_id, status=status)])
    assert await store.delete_ended_runs(created_before=1_000.0, limit=10) == 2
    assert await store.delete_session("s3")
    for run_id in ("old-long", "old-short", "in-session"):
        assert await store.get_run(run_id) is None
        assert await store.read_events(run_id, 0, 1_000) == []
        assert await store.read_events(run_id, 5, 1) == []
        assert await store.last_event(run_id) is None
    await _assert_stored(store, "old-running", kept)
    assert await store.read_events("new-ended", 0, 1_000) == kept

    again = [_event(i) for i in (0, 1, 2, 150, 320, 321)]
    await store.create_run(run_record("old-long"))
    await store.commit([("old-long", e) for e in again], [])
    await _assert_stored(store, "old-long", again)
    assert await store.read_events("old-long", 3, 2) == again[3:5]


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["n" * 100, "n" * 101, "nul\x00", "lone \ud800 surrogate", "é\u2028\U0001f600"],
    ids=["100 characters", "101 characters", "NUL", "lone surrogate", "non-ASCII"],
)
async def test_a_name_is_judged_the_same_wherever_it_is_in_its_group(
    store: Store, name: str
) -> None:
    """A name is stored, or refused (DataRejected, the whole group), whether its event is alone,
    first or later in its group: in a row of several events the names after the first are in
    ``layout``, where the database never sees them."""
    outcomes = []
    for n, at in enumerate((None, 0, 1, 3)):
        run_id = f"r{n}"
        await store.create_run(run_record(run_id))
        events = [Event(0, name, "{}")] if at is None else [_event(i) for i in range(4)]
        if at is not None:
            events[at] = Event(at, name, "{}")
        try:
            await store.commit([(run_id, e) for e in events], [])
        except DataRejected:
            outcomes.append("refused")
            assert await store.read_events(run_id, 0, 10) == []
        else:
            outcomes.append("stored")
            assert await store.read_events(run_id, 0, 10) == events
    assert outcomes in (["stored"] * 4, ["refused"] * 4)


async def test_reads_past_any_index_return_nothing(store: Store) -> None:
    """A cursor past any index an event can have (a client's or a test's huge number) reads
    nothing, on both databases: no overflow of SQLite's 64-bit parameters, no refusal."""
    await store.create_run(run_record("a"))
    await store.commit(_fresh("a", range(3)), [])
    for start in (2**31 - 1, 2**31, 2**62, 2**63, 2**80):
        assert await store.read_events("a", start, 10) == []
        assert await store.read_events("a", start, 10_000) == []
    assert [e.index for e in await store.read_events("a", 1, 2**63)] == [1, 2]
