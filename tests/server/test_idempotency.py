"""Idempotency keys in the store and in :class:`Idempotency`, on SQLite and PostgreSQL: one entry
per key however many creates race for it, expiry, take-over of an abandoned key, retention."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio

from agentos.backends.base import Store, open_backend
from agentos.errors import IdempotencyConflict, InvalidRequest, RunAlreadyExists
from agentos.idempotency import Idempotency, request_hash
from agentos.records import IdempotencyKey, RunRecord
from agentos.retention import Retention
from agentos.settings import RetentionSettings, Settings
from tests.pgdb import db_url, pg_url
from tests.storage import run_record

__all__ = ["db_url", "pg_url"]  # fixtures, imported for pytest

DAY = 86_400.0


def _entry(
    key: str = "k", run_id: str | None = None, digest: str = "h", **fields: object
) -> IdempotencyKey:
    entry = IdempotencyKey(
        key=key,
        kind="agents",
        component_id="echo",
        user_scope="",
        request_hash=digest,
        run_id=run_id or str(uuid.uuid4()),
        status_code=202,
        token=uuid.uuid4().hex,
    )
    return replace(entry, **fields)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = open_backend(Settings(db_url=db_url)).store
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_the_first_entry_of_a_key_stays_until_it_expires(store: Store) -> None:
    now = time.time()
    first = _entry(created_at=now)
    assert await store.remember_key(first, now - DAY) == first
    second = _entry(created_at=now + 1)
    assert await store.remember_key(second, now + 1 - DAY) == first
    assert await store.find_key("k", "agents", "echo", "") == first
    # Another component, user or key is another key.
    for other in (
        _entry(component_id="other"),
        _entry(kind="teams"),
        _entry(user_scope="alice"),
        _entry(key="k2"),
    ):
        assert await store.remember_key(other, now - DAY) == other
    # Once expired, the next create's entry replaces it.
    later = _entry(created_at=now + DAY + 1)
    assert await store.remember_key(later, now + 1) == later
    assert await store.find_key("k", "agents", "echo", "") == later


async def test_a_key_is_forgotten_only_by_its_own_create(store: Store) -> None:
    first = _entry()
    await store.remember_key(first, 0)
    assert not await store.forget_key(replace(first, token="someone-else"))
    assert await store.find_key("k", "agents", "echo", "") == first
    assert await store.forget_key(first)
    assert await store.find_key("k", "agents", "echo", "") is None
    assert not await store.forget_key(first)


async def test_keys_hold_any_printable_ascii(store: Store) -> None:
    key = "".join(chr(c) for c in range(0x20, 0x7F)) + "x" * 105
    assert len(key) == 200
    entry = _entry(key=key, user_scope="ü" * 200)
    assert await store.remember_key(entry, 0) == entry
    assert await store.find_key(key, "agents", "echo", "ü" * 200) == entry


async def test_expired_keys_go_in_bounded_batches(store: Store) -> None:
    now = time.time()
    for n in range(7):
        await store.remember_key(_entry(key=f"old-{n}", created_at=now - 2 * DAY + n), 0)
    await store.remember_key(_entry(key="fresh", created_at=now), 0)
    assert await store.delete_expired_keys(now - DAY, 3) == 3
    assert await store.delete_expired_keys(now - DAY, 3) == 3
    assert await store.delete_expired_keys(now - DAY, 3) == 1
    assert await store.delete_expired_keys(now - DAY, 3) == 0
    assert await store.find_key("old-6", "agents", "echo", "") is None
    assert await store.find_key("fresh", "agents", "echo", "") is not None


async def test_retention_deletes_expired_keys_even_when_runs_are_kept(store: Store) -> None:
    now = time.time()
    for n in range(5):
        await store.remember_key(_entry(key=f"old-{n}", created_at=now - 3600 - n), 0)
    await store.remember_key(_entry(key="fresh", created_at=now), 0)
    settings = RetentionSettings(days=0, batch_size=2, idempotency_ttl=3600)
    retention = Retention(store, settings, "a")
    assert retention.enabled
    assert await retention.run_once() == 0  # no run deleted
    assert retention.deleted_keys == 5
    assert await store.find_key("fresh", "agents", "echo", "") is not None


async def test_concurrent_remembers_of_one_key_have_one_winner(db_url: str) -> None:
    # Two stores: two instances (or processes) on one database.
    stores = [open_backend(Settings(db_url=db_url)).store for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        entries = [_entry() for _ in range(40)]
        held = await asyncio.gather(
            *(stores[n % 2].remember_key(e, 0) for n, e in enumerate(entries))
        )
        winners = {h.token for h in held}
        assert len(winners) == 1
        assert winners <= {e.token for e in entries}
    finally:
        for s in stores:
            await s.close()


class _Runs:
    """Runs by id, made by ``create`` (a stand-in for the run manager)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.created: list[str] = []

    async def find(self, run_id: str) -> RunRecord | None:
        return await self.store.get_run(run_id)

    async def create(self, run_id: str) -> None:
        await asyncio.sleep(0.01)  # the create takes a moment: repeats find the key first
        await self.store.create_run(run_record(run_id, session_id=f"s-{run_id}"))
        self.created.append(run_id)


async def _create(idempotency: Idempotency, runs: _Runs, entry: IdempotencyKey) -> str:
    """What POST .../runs does with a key: the run id the answer names."""
    found = await idempotency.claim(entry, runs.find)
    if found is not None:
        return found.run_id
    try:
        await runs.create(entry.run_id)
    except BaseException as exc:
        await idempotency.release(entry, exc, runs.find)
        raise
    return entry.run_id


async def test_creates_racing_with_one_key_make_one_run(db_url: str) -> None:
    stores = [open_backend(Settings(db_url=db_url)).store for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        sides = [(Idempotency(s, ttl=DAY, create_timeout=10), _Runs(s)) for s in stores]
        answers = await asyncio.gather(*(_create(*sides[n % 2], _entry()) for n in range(30)))
        made = [run_id for _, runs in sides for run_id in runs.created]
        assert len(made) == 1
        assert set(answers) == set(made)
    finally:
        for s in stores:
            await s.close()


async def test_a_repeat_with_another_request_is_a_conflict(store: Store) -> None:
    idempotency = Idempotency(store, ttl=DAY, create_timeout=10)
    runs = _Runs(store)
    digest = request_hash({"message": "hi", "stream": False})
    assert request_hash({"stream": False, "message": "hi"}) == digest  # key order aside
    run_id = await _create(idempotency, runs, _entry(digest=digest))
    assert await _create(idempotency, runs, _entry(digest=digest)) == run_id
    other = request_hash({"message": "hi", "stream": True})
    with pytest.raises(IdempotencyConflict):
        await _create(idempotency, runs, _entry(digest=other))
    assert runs.created == [run_id]


async def test_a_failed_create_lets_its_key_go(store: Store) -> None:
    idempotency = Idempotency(store, ttl=DAY, create_timeout=10)
    runs = _Runs(store)
    first = _entry()
    assert await idempotency.claim(first, runs.find) is None
    await idempotency.release(first, InvalidRequest("no"), runs.find)
    assert await store.find_key("k", "agents", "echo", "") is None
    # A taken client-chosen run id names another run: the key goes too.
    await store.create_run(run_record("taken"))
    second = _entry(run_id="taken")
    assert await idempotency.claim(second, runs.find) is None
    await idempotency.release(second, RunAlreadyExists("taken"), runs.find)
    assert await store.find_key("k", "agents", "echo", "") is None
    # A cancelled create keeps it: its run may still be made.
    third = _entry()
    assert await idempotency.claim(third, runs.find) is None
    await idempotency.release(third, asyncio.CancelledError(), runs.find)
    kept = await store.find_key("k", "agents", "echo", "")
    assert kept is not None and kept.token == third.token


async def test_an_abandoned_key_is_taken_over(store: Store) -> None:
    idempotency = Idempotency(store, ttl=DAY, create_timeout=1)
    runs = _Runs(store)
    # A create that died after writing its key, long enough ago: no run will come.
    dead = _entry(created_at=time.time() - idempotency.abandon_after - 1)
    await store.remember_key(dead, 0)
    run_id = await _create(idempotency, runs, _entry())
    assert run_id != dead.run_id and runs.created == [run_id]
    # A recent one is waited for: here its run comes a moment later.
    late = _entry(key="late")
    await store.remember_key(replace(late, created_at=time.time()), 0)

    async def made_late() -> None:
        await asyncio.sleep(0.2)
        await store.create_run(run_record(late.run_id, session_id="s-late"))

    maker = asyncio.create_task(made_late())
    assert await _create(idempotency, runs, _entry(key="late")) == late.run_id
    await maker
