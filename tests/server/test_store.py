"""The store contract, on SQLite and on PostgreSQL (same tests, same expectations)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from agentos.backends.base import Ending, Store, open_backend
from agentos.backends.postgres import EVENTS_CHANNEL
from agentos.backends.sql import SQLStore
from agentos.errors import DatabaseUnsupported, DataRejected, RunAlreadyExists, WriteConflict
from agentos.events import Event, RunStatus
from agentos.records import RunRecord, RunUpdate
from agentos.sessions import MessageRecord
from agentos.settings import Settings
from tests.pgdb import _dsn, ascratch_database, db_url, pg_url, truncate
from tests.storage import run_record


def _store(url: str) -> Store:
    """The store the server would use for ``url`` (SQLite or PostgreSQL)."""
    return open_backend(Settings(db_url=url)).store


__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest


@pytest_asyncio.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = _store(db_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def _event(index: int, terminal: bool = False) -> Event:
    name = "RunCompleted" if terminal else "RunContent"
    return Event(
        index, name, f'{{"event":"{name}","event_index":{index},"content":"é{index}"}}', terminal
    )


async def test_create_get_and_duplicate(store: Store) -> None:
    record = run_record("r1", input="hello wörld ✓", created_at=1763700000.123456)
    await store.create_run(record)
    got = await store.get_run("r1")
    assert got is not None
    assert got.input == "hello wörld ✓"
    assert got.created_at == pytest.approx(1763700000.123456, abs=1e-6)  # double precision
    assert got.status is RunStatus.RUNNING and got.event_count == 0
    assert await store.get_run("nope") is None
    with pytest.raises(RunAlreadyExists):
        await store.create_run(record)


async def test_commit_read_and_count(store: Store) -> None:
    await store.create_run(run_record("r1"))
    await store.commit([("r1", _event(i)) for i in range(5)], [])
    got = await store.get_run("r1")
    assert got is not None and got.event_count == 5
    assert [e.index for e in await store.read_events("r1", 2, 2)] == [2, 3]
    assert [e.index for e in await store.read_events("r1", 0, 100)] == [0, 1, 2, 3, 4]
    assert (await store.read_events("r1", 1, 1))[0].data.endswith('"content":"é1"}')
    await store.commit(
        [("r1", _event(5, terminal=True))],
        [RunUpdate("r1", status=RunStatus.COMPLETED, content="done", event_count=6)],
    )
    last = await store.last_event("r1")
    assert last is not None and last.index == 5 and last.terminal
    got = await store.get_run("r1")
    assert got is not None and got.status is RunStatus.COMPLETED and got.content == "done"
    assert got.event_count == 6


async def test_taken_index_writes_nothing(store: Store) -> None:
    await store.create_run(run_record("r1"))
    await store.create_run(run_record("r2"))
    await store.commit([("r1", _event(0))], [])
    with pytest.raises(WriteConflict):
        await store.commit(
            [("r2", _event(0)), ("r1", _event(0))], [RunUpdate("r2", status=RunStatus.ERROR)]
        )
    assert await store.read_events("r2", 0, 10) == []
    got = await store.get_run("r2")
    assert got is not None and got.status is RunStatus.RUNNING


async def test_groups_of_every_length_store_every_event_as_it_is(store: Store) -> None:
    """Groups of 0 to 70 events of two runs interleaved (SQLite writes a long group 32 rows
    to a statement, then 16, 8, 4, 2 and 1): every event is read back as it was committed,
    once; a taken index in the last row of a long group writes nothing of that group."""
    await store.create_run(run_record("a"))
    await store.create_run(run_record("b"))
    next_index = {"a": 0, "b": 0}
    expected: dict[str, list[Event]] = {"a": [], "b": []}
    for length in [*range(71), 64, 33, 31, 17, 16, 15]:
        group = []
        for i in range(length):
            run_id = "ab"[i % 3 == 2]
            index = next_index[run_id]
            next_index[run_id] += 1
            data = f'{{"event":"RunContent","event_index":{index},"content":"\\u0000é\u2028{i}"}}'
            event = Event(index, "RunContent", data)
            group.append((run_id, event))
            expected[run_id].append(event)
        await store.commit(group, [])
    for run_id in "ab":
        assert await store.read_events(run_id, 0, 10_000) == expected[run_id]
        got = await store.get_run(run_id)
        assert got is not None and got.event_count == len(expected[run_id])

    taken = [("a", _event(next_index["a"] + i)) for i in range(40)] + [("b", _event(0))]
    with pytest.raises(WriteConflict):
        await store.commit(taken, [])
    assert await store.read_events("a", 0, 10_000) == expected["a"]


async def test_owner_guard_on_updates(store: Store) -> None:
    await store.create_run(run_record("r1", instance_id="a"))
    await store.commit([], [RunUpdate("r1", status=RunStatus.COMPLETED)], owner="b")
    got = await store.get_run("r1")
    assert got is not None and got.status is RunStatus.RUNNING
    await store.commit([], [RunUpdate("r1", status=RunStatus.COMPLETED)], owner="a")
    got = await store.get_run("r1")
    assert got is not None and got.status is RunStatus.COMPLETED
    assert await store.owned(["r1", "zz"], "a") == {"r1"}
    assert await store.owned([], "a") == set()


async def test_list_runs_and_unfinished(store: Store) -> None:
    for i in range(4):
        status = RunStatus.COMPLETED if i % 2 else RunStatus.RUNNING
        await store.create_run(
            run_record(
                f"r{i}",
                created_at=1000 + i,
                status=status,
                session_id=f"s{i % 2}",
                instance_id="i1",
            )
        )
    listed = await store.list_runs("agents", "echo")
    assert [r.run_id for r in listed] == ["r3", "r2", "r1", "r0"]
    assert [r.run_id for r in await store.list_runs("agents", "echo", session_id="s1")] == [
        "r3",
        "r1",
    ]
    done = await store.list_runs("agents", "echo", status=RunStatus.COMPLETED, limit=1)
    assert [r.run_id for r in done] == ["r3"]
    assert {r.run_id for r in await store.unfinished_runs("i1")} == {"r0", "r2"}
    assert await store.unfinished_runs("other") == []


async def test_renew_leases_and_cancel_requests(store: Store) -> None:
    await store.create_run(run_record("mine", instance_id="a", lease_until=1.0))
    await store.create_run(run_record("cancel-me", instance_id="a", lease_until=1.0))
    await store.create_run(
        run_record("done", instance_id="a", lease_until=1.0, status=RunStatus.COMPLETED)
    )
    await store.create_run(run_record("theirs", instance_id="b", lease_until=1.0))
    assert await store.request_cancel("cancel-me")
    assert not await store.request_cancel("done")
    assert not await store.request_cancel("unknown")
    renewed = await store.renew_leases("a", 5000.0)
    assert renewed == {"mine": False, "cancel-me": True}
    for run_id, lease in (("mine", 5000.0), ("done", 1.0), ("theirs", 1.0)):
        got = await store.get_run(run_id)
        assert got is not None and got.lease_until == lease


def _end_with(error: str, seen: list[Event | None] | None = None) -> Ending:
    """An ending that appends a terminal event ``error`` (and notes the last event it saw)."""

    def ending(record: RunRecord, last: Event | None) -> tuple[Event | None, RunUpdate]:
        if seen is not None:
            seen.append(last)
        index = 0 if last is None else last.index + 1
        update = RunUpdate(
            record.run_id, status=RunStatus.ERROR, error=error, event_count=index + 1
        )
        return _event(index, terminal=True), update

    return ending


async def test_expired_runs_and_end_run(store: Store) -> None:
    now = time.time()
    await store.create_run(run_record("old", instance_id="dead", lease_until=now - 10))
    await store.create_run(run_record("older", instance_id="dead", lease_until=now - 20))
    await store.create_run(run_record("alive", instance_id="b", lease_until=now + 30))
    await store.create_run(
        run_record("ended", instance_id="dead", lease_until=now - 10, status=RunStatus.ERROR)
    )
    assert await store.expired_runs(now, 10) == ["older", "old"]
    assert await store.expired_runs(now, 1) == ["older"]
    await store.commit([("old", _event(i)) for i in range(3)], [], owner="dead")
    seen: list[Event | None] = []
    claimed = await store.end_run("old", "me", _end_with("lost", seen), now=now, expired=True)
    # The run as taken: its former owner (for the attempts history); "me" owns it now.
    assert claimed is not None and claimed.instance_id == "dead" and claimed.run_id == "old"
    assert [e.index if e else None for e in seen] == [2]  # the ending saw the last event
    got = await store.get_run("old")
    assert got is not None and got.status is RunStatus.ERROR and got.error == "lost"
    assert got.event_count == 4 and got.instance_id == "me"
    assert [e.terminal for e in await store.read_events("old", 0, 10)] == [False] * 3 + [True]
    for run_id in ("old", "alive", "ended"):
        assert await store.end_run(run_id, "other", _end_with("x"), now=now, expired=True) is None
    assert await store.expired_runs(now, 10) == ["older"]
    # Without ``expired``: only the owner's own runs, whatever their lease (restart recovery).
    assert await store.end_run("alive", "me", _end_with("x"), now=now, expired=False) is None
    assert await store.end_run("alive", "b", _end_with("x"), now=now, expired=False) is not None


async def test_the_former_owner_is_fenced_out(store: Store) -> None:
    """Once another instance ended a run, its former owner's commits write nothing for it,
    whatever index it holds; its other runs commit as before."""
    now = time.time()
    await store.create_run(run_record("lost", instance_id="a", lease_until=now - 1))
    await store.create_run(run_record("kept", instance_id="a"))
    await store.commit([("lost", _event(0))], [], owner="a")
    assert await store.end_run("lost", "b", _end_with("lost"), now=now, expired=True)
    for events in ([("lost", _event(1))], [("kept", _event(0)), ("lost", _event(5))]):
        with pytest.raises(WriteConflict):
            await store.commit(events, [RunUpdate("lost", status=RunStatus.COMPLETED)], owner="a")
    assert [e.index for e in await store.read_events("lost", 0, 10)] == [0, 1]
    assert await store.read_events("kept", 0, 10) == []  # nothing of a fenced commit lands
    got = await store.get_run("lost")
    assert got is not None and got.status is RunStatus.ERROR
    await store.commit([("kept", _event(0))], [], owner="a")
    assert [e.index for e in await store.read_events("kept", 0, 10)] == [0]


async def test_a_commit_is_fenced_on_the_attempt_too(store: Store) -> None:
    """Attempt 1 of a run lost its lease, another instance requeued the run and its own
    instance claimed it back as attempt 2: the owner is the same, the attempt tells them apart.
    Attempt 1's events are refused (nothing of the commit lands) and its updates do nothing;
    attempt 2 and writes not fenced on an attempt go on as before."""
    await store.create_run(run_record("r", instance_id="a", attempt=2))
    await store.create_run(run_record("other", instance_id="a"))
    old = {"r": 1, "other": 1}
    with pytest.raises(WriteConflict):
        await store.commit(
            [("other", _event(0)), ("r", _event(0))],
            [RunUpdate("r", status=RunStatus.COMPLETED)],
            owner="a",
            attempts=old,
        )
    assert await store.read_events("other", 0, 10) == []
    updates = [RunUpdate("r", status=RunStatus.ERROR), RunUpdate("other", content="kept")]
    await store.commit([], updates, owner="a", attempts={"r": 1})
    got = await store.get_run("r")
    assert got is not None and got.status is RunStatus.RUNNING and got.attempt == 2
    other = await store.get_run("other")
    assert other is not None and other.content == "kept"  # fenced on its owner only
    done = RunUpdate("r", status=RunStatus.COMPLETED, event_count=1)
    await store.commit([("r", _event(0))], [done], owner="a", attempts={"r": 2})
    assert [e.index for e in await store.read_events("r", 0, 10)] == [0]
    got = await store.get_run("r")
    assert got is not None and got.status is RunStatus.COMPLETED
    with pytest.raises(WriteConflict):  # another owner at the right attempt: refused as before
        await store.commit([("other", _event(0))], [], owner="b", attempts={"other": 1})


async def test_a_runs_messages_are_saved_by_its_attempt_only(store: Store) -> None:
    """A run's session messages are fenced as its events are: an attempt that was taken over
    (by another instance, or by its own instance claiming the run back) cannot replace the
    messages of the attempt executing now."""
    await store.create_run(run_record("r", instance_id="a", attempt=2, session_id="s"))
    await store.add_messages([MessageRecord("s", "r", 0, "user", "two")], owner="a", attempt=2)
    for owner, attempt in (("a", 1), ("b", 2), ("b", None)):
        with pytest.raises(WriteConflict):
            await store.add_messages(
                [MessageRecord("s", "r", 0, "user", "stale")], owner=owner, attempt=attempt
            )
    await store.commit([], [RunUpdate("r", status=RunStatus.COMPLETED)], owner="a")
    assert [m.content for m in await store.session_messages("s")] == ["two"]


async def test_concurrent_claims_have_one_winner(db_url: str) -> None:
    """Several instances (their own engines) claim the same orphans at the same moment."""
    stores = [_store(db_url) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        now = time.time()
        for i in range(5):
            await stores[0].create_run(
                run_record(f"orphan{i}", instance_id="dead", lease_until=now - 1)
            )
            await stores[0].commit([(f"orphan{i}", _event(0))], [])
        for i in range(5):
            results = await asyncio.gather(
                *(
                    s.end_run(f"orphan{i}", f"inst{n}", _end_with("lost"), now=now, expired=True)
                    for n, s in enumerate(stores)
                )
            )
            winners = [n for n, r in enumerate(results) if r is not None]
            assert len(winners) == 1
            got = await stores[0].get_run(f"orphan{i}")
            assert got is not None and got.instance_id == f"inst{winners[0]}"
            assert [e.index for e in await stores[0].read_events(f"orphan{i}", 0, 10)] == [0, 1]
    finally:
        for s in stores:
            await s.close()


async def test_a_claim_takes_at_most_limit_runs(store: Store) -> None:
    """The oldest ``limit`` queued runs, however many wait (PostgreSQL once claimed them all:
    it ran the LIMIT subquery again for each row, skipping the rows already claimed)."""
    now = time.time()
    queued = [
        run_record(
            f"q{n:03}",
            status=RunStatus.QUEUED,
            session_id=f"s{n}",
            created_at=now + n / 1000,
            attempt=0,
            not_before=now,
        )
        for n in range(60)
    ]
    await store.commit([], [], runs=queued)
    for n in range(3):
        claimed = await store.claim_runs(
            f"inst{n}", [("agents", "echo")], now=now, lease_until=now + 10, limit=7
        )
        assert [r.run_id for r in claimed] == [f"q{i:03}" for i in range(7 * n, 7 * n + 7)]
        assert {(r.status, r.attempt, r.instance_id) for r in claimed} == {
            (RunStatus.PENDING, 1, f"inst{n}")
        }
    assert await store.queue_depth() == 60 - 21


@pytest.mark.postgres
async def test_schema_creation_is_safe_when_instances_start_together() -> None:
    async with ascratch_database() as url:
        stores = [_store(url) for _ in range(6)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            await stores[0].create_run(run_record("r1"))
            assert await stores[5].get_run("r1") is not None
        finally:
            for s in stores:
                await s.close()


@pytest.mark.postgres
async def test_commit_notifies_after_commit(pg_url: str) -> None:
    await truncate(pg_url)
    store = _store(pg_url)
    await store.open()
    listener = await asyncpg.connect(_dsn(pg_url))
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    try:
        for channel in (EVENTS_CHANNEL, "agentos_control"):
            await listener.add_listener(
                channel, lambda _c, _p, ch, msg: received.put_nowait((ch, msg))
            )
        await store.create_run(run_record("r1"))
        await store.create_run(run_record("r:2"))
        await store.commit(
            [("r1", _event(0)), ("r:2", _event(0)), ("r1", _event(1)), ("r:2", _event(1))], []
        )
        got = {await asyncio.wait_for(received.get(), 5) for _ in range(2)}
        assert got == {(EVENTS_CHANNEL, "r1:1"), (EVENTS_CHANNEL, "r:2:1")}
        # When the transaction fails, nothing is announced.
        with pytest.raises(WriteConflict):
            await store.commit([("r1", _event(2)), ("r1", _event(1))], [])
        await store.request_cancel("r1")
        assert await asyncio.wait_for(received.get(), 5) == ("agentos_control", "cancel:r1")
        assert received.empty()
    finally:
        await listener.close()
        await store.close()


@pytest.mark.postgres
async def test_a_paused_owner_s_transaction_does_not_block_the_reaper(pg_url: str) -> None:
    """An owner paused (SIGSTOP, a VM freeze) inside a commit holds its run's row lock; the
    server ends that transaction after ``lease_ttl`` so that the reaper can take the run."""
    await truncate(pg_url)
    settings = Settings(db_url=pg_url, lease_ttl=1.0, lease_renew_interval=0.5)
    owner, reaper = open_backend(settings).store, open_backend(settings).store
    await owner.open()
    await reaper.open()
    try:
        now = time.time()
        await owner.create_run(run_record("held", instance_id="a", lease_until=now))
        async with owner.engine.connect() as conn:  # a commit, frozen half-way
            await conn.begin()
            await conn.execute(
                sa.text("SELECT 1 FROM agentos_runs WHERE run_id = 'held' FOR UPDATE")
            )
            ending = reaper.end_run(
                "held", "b", _end_with("lost"), now=time.time() + 1, expired=True
            )
            taken = await asyncio.wait_for(ending, 20)  # not for as long as the owner sleeps
            assert taken is not None
            with pytest.raises(DBAPIError):  # the owner wakes up: its transaction is gone
                await conn.execute(sa.text("SELECT 1"))
        got = await reaper.get_run("held")
        assert got is not None and got.status is RunStatus.ERROR and got.instance_id == "b"
    finally:
        await owner.close()
        await reaper.close()


async def test_sqlite_small_groups_commit_on_the_loop_unless_another_writer_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small group commits on the event loop, with no trip to the driver's thread; while
    another connection holds the write lock, the group goes to the thread and waits there (the
    loop never waits for a lock); a larger group always goes to the thread. Same rows either way."""
    path = tmp_path / "inline.db"
    store = SQLStore(f"sqlite+aiosqlite:///{path}", inline_commit_max_rows=4)
    await store.open()
    threaded = _count_thread_commits(store, monkeypatch)
    try:
        await store.commit([], [], runs=[run_record("r", status=RunStatus.PENDING)])
        await store.commit([("r", _event(0))], [RunUpdate("r", status=RunStatus.RUNNING)])
        assert threaded == []
        with pytest.raises(WriteConflict):  # the same error as from the thread
            await store.commit([("r", _event(0))], [])
        assert threaded == []

        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the database
        commit = asyncio.ensure_future(store.commit([("r", _event(1))], []))
        await asyncio.sleep(0.2)
        assert not commit.done() and threaded == [1]  # waiting in the thread, not on the loop
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(commit, 10)

        # Five consecutive events of a run are one row; one event of five runs, five rows > 4.
        await store.commit([("r", _event(i)) for i in range(2, 7)], [])
        assert threaded == [1]
        await store.commit([(f"other-{n}", _event(0)) for n in range(5)], [])
        assert threaded == [1, 5]
        await store.commit([("r", _event(7, terminal=True))], [])
        assert threaded == [1, 5]
        assert [e.index for e in await store.read_events("r", 0, 100)] == list(range(8))
        got = await store.get_run("r")
        assert got is not None and got.status is RunStatus.RUNNING
    finally:
        await store.close()


async def test_sqlite_groups_with_much_text_commit_in_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group of few rows but more text than ``inline_commit_max_chars`` (a run's large input,
    large events, a large final content) goes to the driver's thread: the loop does not spend a
    millisecond a megabyte writing it. The text counted is the events', the new runs' and the
    updated runs'."""
    path = tmp_path / "chars.db"
    store = SQLStore(f"sqlite+aiosqlite:///{path}", inline_commit_max_chars=1_000)
    await store.open()
    threaded = _count_thread_commits(store, monkeypatch)
    big = "ü" * 1_000
    try:
        await store.commit([], [], runs=[run_record("small", status=RunStatus.PENDING)])
        await store.commit([("small", _event(0))], [RunUpdate("small", content="x" * 900)])
        assert threaded == []  # under the bound: on the loop
        await store.commit([], [], runs=[run_record("input", input=big)])
        assert threaded == [1]
        await store.commit([("small", Event(1, "RunContent", f'{{"c":"{big}"}}'))], [])
        assert threaded == [1, 1]
        await store.commit([], [RunUpdate("small", content=big)])
        assert threaded == [1, 1, 1]
        await store.commit([("small", _event(2))], [])
        assert threaded == [1, 1, 1]  # small again: on the loop
        got = await store.get_run("input")
        assert got is not None and got.input == big
        assert [e.data for e in await store.read_events("small", 1, 1)] == [f'{{"c":"{big}"}}']
        small = await store.get_run("small")
        assert small is not None and small.content == big
    finally:
        await store.close()


def _count_thread_commits(store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gets the rows of each group commit the store makes through the driver's
    thread."""
    threaded: list[int] = []
    to_thread = store._commit_sqlite

    async def counted(group: Any) -> None:
        threaded.append(group.rows)
        await to_thread(group)

    monkeypatch.setattr(store, "_commit_sqlite", counted)
    return threaded


def _count_thread_reads(store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that gets one item per read the store makes through the driver's thread."""
    threaded: list[str] = []
    to_thread = store._connect

    def counted() -> Any:
        threaded.append("read")
        return to_thread()

    monkeypatch.setattr(store, "_connect", counted)
    return threaded


async def test_sqlite_small_reads_are_made_on_the_loop_with_the_threads_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run and a short page of events are read on the event loop, with no trip to the
    driver's thread, and read exactly what the thread reads (hostile text included); a longer
    page, and any read the loop's connection cannot make, go to the thread."""
    path = tmp_path / "reads.db"
    store = SQLStore(f"sqlite+aiosqlite:///{path}")
    await store.open()
    text = "\x00\u202e\U0001f600 ' \" \\ \n\r"
    try:
        await store.commit(
            [], [], runs=[run_record("r", status=RunStatus.PENDING, input=text, user_id=text)]
        )
        await store.commit(
            [("r", Event(i, "RunContent", f'{{"t": "{i}{text!r}"}}', False)) for i in range(20)],
            [RunUpdate("r", status=RunStatus.RUNNING)],
        )
        threaded = _count_thread_reads(store, monkeypatch)
        inline_run = await store.get_run("r")
        inline_page = await store.read_events("r", 3, 16)
        assert await store.get_run("missing") is None
        assert threaded == []
        assert inline_run is not None and inline_run.event_count == 20  # live: counted events
        assert await store.read_events("r", 3, 17) == (await store.read_events("r", 0, 20))[3:]
        assert threaded == ["read", "read"]

        store.inline_commit_max_rows = 0  # the setting that keeps the loop out of SQLite
        store._inline.close()  # type: ignore[union-attr]
        store._inline = None
        assert await store.get_run("r") == inline_run
        assert await store.read_events("r", 3, 16) == inline_page
        assert inline_page[0].data == f'{{"t": "3{text!r}"}}' and inline_run.input == text
        assert len(threaded) == 4
    finally:
        await store.close()


async def test_sqlite_a_read_the_loop_cannot_make_goes_to_the_thread(tmp_path: Path) -> None:
    """An OperationalError on the loop's connection (busy, say) is not an error of the read: it
    is made again through the driver's thread, and the loop's connection stays usable."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}")
    await store.open()
    try:
        await store.commit([], [], runs=[run_record("r", status=RunStatus.PENDING)])
        real = store._loop_connection()
        assert real is not None
        failures = iter([sqlite3.OperationalError("database is locked")])

        class Flaky:
            in_transaction = False

            def execute(self, sql: str, *args: Any) -> Any:
                failure = next(failures, None)
                if failure is not None:
                    raise failure
                return real.execute(sql, *args)

            def setlimit(self, category: int, limit: int) -> int:
                return real.setlimit(category, limit)

        store._inline = Flaky()  # type: ignore[assignment]
        got = await store.get_run("r")  # through the thread
        assert got is not None and got.status is RunStatus.PENDING
        store._inline = real
        assert await store.get_run("r") == got
        assert not real.in_transaction
    finally:
        await store.close()


async def test_a_postgresql_server_too_old_is_refused_with_what_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Below the oldest supported PostgreSQL the store does not open (the session lock of
    multitask runs needs ``hashtextextended``, PostgreSQL 11): a clear error, nothing created."""
    from agentos.backends import postgres

    async with ascratch_database() as url:
        monkeypatch.setattr(postgres, "MIN_SERVER_VERSION", 10_000_000)  # no server is so new
        store = _store(url)
        with pytest.raises(DatabaseUnsupported, match=r"is PostgreSQL \d+.*needs PostgreSQL 11"):
            await store.open()
        conn = await asyncpg.connect(_dsn(url), timeout=5)
        try:
            assert await conn.fetchval("SELECT to_regclass('agentos_runs')") is None
        finally:
            await conn.close()
        monkeypatch.setattr(postgres, "MIN_SERVER_VERSION", 110000)
        await store.open()  # the real server is new enough
        await store.close()


async def test_taken_run_ids_names_the_ids_a_run_has(store: Store) -> None:
    ids = [f"r-{i}" for i in range(1_200)]  # past one statement's list of ids
    for run_id in ids[::300]:
        await store.create_run(run_record(run_id))
    asked = [*ids, "r-0", "no-such-run", "é\u202e"]
    assert await store.taken_run_ids(asked) == set(ids[::300])
    assert await store.taken_run_ids([]) == set()


async def test_sqlite_reads_of_a_closed_store_open_no_loop_connection(tmp_path: Path) -> None:
    """A closed store refuses reads as its thread path does (the store is not open); it does
    not open a new loop connection that nothing would close."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'closed.db'}")
    await store.open()
    await store.commit([], [], runs=[run_record("r", status=RunStatus.PENDING)])
    assert await store.get_run("r") is not None  # on the loop's connection
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_run("r")
    with pytest.raises(RuntimeError, match="not open"):
        await store.read_events("r", 0, 1)
    assert store._inline is None


async def test_sqlite_loop_reads_refuse_lone_surrogates_as_the_thread_does(
    tmp_path: Path,
) -> None:
    """An id SQLite cannot encode is DataRejected on the loop's connection, as through the
    driver's thread, not a bare UnicodeEncodeError."""
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'surrogate.db'}")
    await store.open()
    try:
        with pytest.raises(DataRejected):
            await store.get_run("\udc80")
        with pytest.raises(DataRejected):
            await store.read_events("\ud800x", 0, 1)
        assert store._inline is not None and not store._inline.in_transaction
    finally:
        await store.close()


async def test_sqlite_loop_reads_leave_large_values_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run or an event with a value larger than ``inline_read_max_bytes`` (a run's input can
    be as large as a request body, sixteen events as large as a component makes them) is read
    through the driver's thread, not on the event loop; the bound is for the loop's reads
    only: its commits of large values, and its reads of small ones, go on as before."""
    path = tmp_path / "large.db"
    store = SQLStore(f"sqlite+aiosqlite:///{path}", inline_read_max_bytes=1_000)
    await store.open()
    large = "é" * 600  # 1,200 bytes of UTF-8: 600 characters
    try:
        await store.commit([], [], runs=[run_record("big", input=large)])
        await store.commit([], [], runs=[run_record("small")])
        # Two commits, two rows: a read at a cursor reads its whole row (eventrows.py).
        await store.commit([("big", Event(0, "RunContent", "{}"))], [])
        await store.commit([("big", Event(1, "X", large))], [])
        assert store._inline is not None  # committed on the loop, large values included
        threaded = _count_thread_reads(store, monkeypatch)
        small = await store.get_run("small")
        first = await store.read_events("big", 0, 1)
        assert small is not None and [e.index for e in first] == [0]
        assert threaded == []
        got = await store.get_run("big")
        assert got is not None and got.input == large and got.event_count == 2
        page = await store.read_events("big", 0, 16)
        assert [e.data for e in page] == ["{}", large]
        assert threaded == ["read", "read"]
        assert await store.get_run("small") == small  # the loop's reads go on
        assert threaded == ["read", "read"]
        await store.commit([("big", Event(2, "Y", large * 10))], [])
        assert [e.data for e in await store.read_events("big", 2, 1)] == [large * 10]
    finally:
        await store.close()


async def test_sqlite_a_connection_dropped_mid_statement_keeps_no_lock(tmp_path: Path) -> None:
    """A task cancelled while its statement runs gets its connection invalidated and closed by
    SQLAlchemy, with the statement's cursor still referenced (the traceback holds it). SQLite
    then keeps that connection open, write lock and all, until the cursor is freed: every other
    writer got "database is locked" (a restart on the file too) for as long as the traceback
    was kept; a garbage collection could not free what a cancelled task still held. The
    driver's connections roll back what they have open when they close."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'dropped.db'}"
    store = SQLStore(url, timeout=0.2)
    await store.open()
    try:
        assert await store.take_lease("a", "one", 0.0, 10.0)
        async with store.engine.connect() as conn:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            # Like a claim's UPDATE ... RETURNING whose rows were not fetched yet: it has
            # written, in a transaction the connection still has open.
            await driver.execute("BEGIN")
            cursor = await driver.execute(
                "UPDATE agentos_leases SET holder = 'two' RETURNING name, holder"
            )
            await conn.invalidate()  # what SQLAlchemy does when the task is cancelled there
        assert await store.take_lease("b", "one", 0.0, 10.0)  # no lock held any more
        assert await store.read_lease("a") == ("one", 10.0)  # nor the dropped write
        del cursor
    finally:
        await store.close()
