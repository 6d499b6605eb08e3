"""Schema migrations: a database of the first release is refused, upgraded by `agentos db
upgrade`, and then serves its old runs and events exactly as stored."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from agentos.backends import schema
from agentos.backends.base import open_backend
from agentos.events import Event
from agentos.settings import Settings
from tests.pgdb import scratch_database
from tests.servers import ROOT, ServerProcess
from tests.storage import run_record

# The tables as the first release (commit ac83c13, agentos/store.py) made them with SQLModel's
# create_all: `CreateTable(...).compile(dialect=...)` of its RunRow and EventRow.
_FIRST_RELEASE_DDL = """
CREATE TABLE agentos_runs (
    run_id VARCHAR(200) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    component_id VARCHAR(200) NOT NULL,
    session_id VARCHAR(200) NOT NULL,
    user_id VARCHAR(200),
    status VARCHAR(20) NOT NULL,
    input TEXT NOT NULL,
    content TEXT,
    error TEXT,
    created_at {double} NOT NULL,
    updated_at {double} NOT NULL,
    event_count INTEGER NOT NULL,
    instance_id VARCHAR(200),
    lease_until {double},
    cancel_requested BOOLEAN DEFAULT {false} NOT NULL,
    PRIMARY KEY (run_id)
);
CREATE INDEX ix_agentos_runs_component_id ON agentos_runs (component_id);
CREATE INDEX ix_agentos_runs_created_at ON agentos_runs (created_at);
CREATE INDEX ix_agentos_runs_instance_id ON agentos_runs (instance_id);
CREATE INDEX ix_agentos_runs_session_id ON agentos_runs (session_id);
CREATE INDEX ix_agentos_runs_status ON agentos_runs (status);
CREATE TABLE agentos_events (
    run_id VARCHAR(200) NOT NULL,
    event_index INTEGER NOT NULL,
    name VARCHAR(100) NOT NULL,
    terminal BOOLEAN NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, event_index)
)
"""


_CREATED = time.time() - 3600


def _old_runs() -> list[dict[str, object]]:
    now = _CREATED
    runs = []
    for n, (status, content, error) in enumerate(
        [
            ("COMPLETED", "hello back", None),
            ("ERROR", None, "RuntimeError: boom"),
            ("COMPLETED", "é ✓ \u2028 𝄞", None),
        ]
    ):
        runs.append(
            {
                "run_id": f"old-{n}",
                "kind": "agents",
                "component_id": "echo",
                "session_id": f"s-{n}",
                "user_id": None,
                "status": status,
                "input": f"input {n} ✓",
                "content": content,
                "error": error,
                "created_at": now + n,
                "updated_at": now + n + 0.5,
                "event_count": 3,
                "instance_id": "agentos-old",
                "lease_until": None,
                "cancel_requested": False,
            }
        )
    return runs


def _old_events(run: dict[str, object]) -> list[dict[str, object]]:
    run_id = run["run_id"]
    last = "RunCompleted" if run["status"] == "COMPLETED" else "RunError"
    names = ["RunStarted", "RunContent", last]
    return [
        {
            "run_id": run_id,
            "event_index": i,
            "name": name,
            "terminal": i == 2,
            "data": json.dumps(
                {"event": name, "run_id": run_id, "event_index": i, "text": f"{i} ✓ \u2028"},
                ensure_ascii=False,
            ),
        }
        for i, name in enumerate(names)
    ]


async def _first_release_database(url: str) -> None:
    engine = create_async_engine(url)
    postgres = url.startswith("postgresql")
    ddl = _FIRST_RELEASE_DDL.format(
        double="DOUBLE PRECISION" if postgres else "DOUBLE", false="false" if postgres else "0"
    )
    try:
        async with engine.begin() as conn:
            for statement in ddl.split(";"):
                await conn.exec_driver_sql(statement)
            runs = _old_runs()
            await conn.execute(
                sa.text(
                    "INSERT INTO agentos_runs VALUES (:run_id, :kind, :component_id, :session_id,"
                    " :user_id, :status, :input, :content, :error, :created_at, :updated_at,"
                    " :event_count, :instance_id, :lease_until, :cancel_requested)"
                ),
                runs,
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO agentos_events VALUES "
                    "(:run_id, :event_index, :name, :terminal, :data)"
                ),
                [event for run in runs for event in _old_events(run)],
            )
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    with scratch_database() as url:
        yield url


def _sse_data(body: str) -> list[str]:
    """The data of the numbered frames (events; meta frames carry no id)."""
    found = []
    for frame in body.split("\n\n"):
        lines = frame.split("\n")
        if any(line.startswith("id: ") for line in lines):
            found.append("\n".join(line[6:] for line in lines if line.startswith("data: ")))
    return found


@pytest.mark.slow
def test_a_first_release_database_is_refused_upgraded_and_replays_identically(
    tmp_path: Path, fresh_url: str
) -> None:
    asyncio.run(_first_release_database(fresh_url))
    server = ServerProcess(tmp_path, env={"AGENTOS_DB_URL": fresh_url})
    server.launch()
    assert server.proc is not None
    code = server.proc.wait(timeout=30)
    assert code != 0
    refusal = [line for line in server.log().splitlines() if "agentos db upgrade" in line]
    assert refusal and "revision 0001" in refusal[0], server.log()

    upgrade = subprocess.run(
        [sys.executable, "-m", "agentos", "db", "upgrade", "--url", fresh_url],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"from revision 0001 to {schema.HEAD}" in upgrade.stdout

    with server:
        for run in _old_runs():
            base = f"{server.url}/agents/echo/runs/{run['run_id']}"
            got = httpx.get(base, timeout=10).json()
            for field in ("run_id", "session_id", "status", "input", "content", "error"):
                assert got[field] == run[field]
            assert got["created_at"] == run["created_at"]
            assert got["event_count"] == 3
            replay = httpx.get(base + "/resume", params={"last_event_index": -1}, timeout=10)
            assert replay.status_code == 200
            assert _sse_data(replay.text) == [e["data"] for e in _old_events(run)]
        # The upgraded database takes new runs as well.
        created = httpx.post(
            f"{server.url}/agents/echo/runs", data={"message": "hi", "stream": "false"}, timeout=10
        )
        assert created.status_code == 200 and created.json()["status"] == "COMPLETED"


async def test_an_outdated_schema_is_upgraded_at_start_with_db_auto_upgrade(
    fresh_url: str,
) -> None:
    await _first_release_database(fresh_url)
    settings = Settings(db_url=fresh_url, db_auto_upgrade=True)
    store = open_backend(settings).store
    await store.open()
    try:
        got = await store.get_run("old-0")
        assert got is not None and got.status.value == "COMPLETED"
        assert [e.data for e in await store.read_events("old-0", 0, 10)] == [
            e["data"] for e in _old_events(_old_runs()[0])
        ]
    finally:
        await store.close()
    assert await store.upgrade() == (schema.HEAD, schema.HEAD)


async def test_migrations_build_the_same_tables_as_a_fresh_start(tmp_path: Path) -> None:
    assert schema.script_head() == schema.HEAD
    migrated = f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"
    created = f"sqlite+aiosqlite:///{tmp_path / 'created.db'}"
    assert await open_backend(Settings(db_url=migrated)).store.upgrade() == (None, schema.HEAD)
    store = open_backend(Settings(db_url=created)).store
    await store.open()
    await store.close()

    async def tables(url: str) -> dict[str, list[tuple[str, str, bool]]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:

                def read(sync: sa.Connection) -> dict[str, list[tuple[str, str, bool]]]:
                    inspector = sa.inspect(sync)
                    return {
                        t: sorted(
                            (c["name"], str(c["type"]), c["nullable"])
                            for c in inspector.get_columns(t)
                        )
                        + sorted(
                            ("index", i["name"] or "", False) for i in inspector.get_indexes(t)
                        )
                        for t in inspector.get_table_names()
                    }

                return await conn.run_sync(read)
        finally:
            await engine.dispose()

    assert await tables(migrated) == await tables(created)


async def test_event_groups_go_back_to_rows_of_one_event_and_come_back(fresh_url: str) -> None:
    """Revision 0007 stores a commit's consecutive events of a run in one row; going back to
    0006 splits every such row into the rows of one event that release reads, texts and names
    as they were, and upgrading again reads them the same."""
    store = open_backend(Settings(db_url=fresh_url)).store
    await store.open()
    hostile = "é\u2028\\u0000🙂"
    group = [("a", Event(i, f"N{i % 3}", f'{{"i":{i},"s":"{hostile * i}"}}')) for i in range(300)]
    group += [("b", Event(0, "Only", "{}")), ("a", Event(300, "RunCompleted", "{}", True))]
    try:
        await store.create_run(run_record("a"))
        await store.create_run(run_record("b"))
        await store.commit(group, [])
        expected = {run: await store.read_events(run, 0, 1_000) for run in "ab"}
        assert [e for _, e in group if _ == "a"] == expected["a"]
    finally:
        await store.close()

    def check(sync: sa.Connection) -> None:
        counts = "SELECT count(*), count(layout) FROM agentos_events"
        rows, grouped = sync.execute(sa.text(counts)).one()
        assert rows < len(group) and grouped > 1  # rows of several events, up to 16 KiB each

    rows = await _downgraded_rows(fresh_url, check)
    assert sorted(rows) == sorted(
        (run, e.index, e.name, e.terminal, e.data) for run in "ab" for e in expected[run]
    )

    store = open_backend(Settings(db_url=fresh_url, db_auto_upgrade=True)).store
    await store.open()
    try:
        assert {run: await store.read_events(run, 0, 1_000) for run in "ab"} == expected
    finally:
        await store.close()


async def test_the_downgrade_splits_hundreds_of_rows_of_several_runs(fresh_url: str) -> None:
    """More rows of several events than the downgrade splits at a time (a hundred), in several
    runs, among rows of one: all are split, each event once."""
    store = open_backend(Settings(db_url=fresh_url)).store
    await store.open()
    events: dict[str, list[Event]] = {}
    try:
        for run_id in ("a", "b", "c"):
            await store.create_run(run_record(run_id))
            # Pairs then a single, gaps between: 120 rows of two events, 120 of one.
            indexes = [i for k in range(120) for i in (5 * k, 5 * k + 1, 5 * k + 3)]
            events[run_id] = [Event(i, f"N{i % 7}", f'{{"{run_id}":{i}}}') for i in indexes]
            await store.commit([(run_id, e) for e in events[run_id]], [])
    finally:
        await store.close()

    def check(sync: sa.Connection) -> None:
        grouped = sync.execute(sa.text("SELECT count(layout) FROM agentos_events")).scalar()
        assert grouped > 300  # (a pair may straddle two slices of 256 events)

    rows = await _downgraded_rows(fresh_url, check)
    assert sorted(rows) == sorted(
        (run_id, e.index, e.name, e.terminal, e.data) for run_id in events for e in events[run_id]
    )


async def _downgraded_rows(
    url: str, check: Callable[[sa.Connection], None]
) -> list[tuple[str, int, str, bool, str]]:
    """``check`` the database at HEAD, downgrade it to 0006, and return its event rows (run id,
    index, name, terminal, data), one per event in that revision."""

    def downgrade(sync: sa.Connection) -> list[tuple[str, int, str, bool, str]]:
        check(sync)
        command.downgrade(schema._config(sync), "0006")
        query = "SELECT run_id, event_index, name, terminal, data FROM agentos_events"
        return [(r[0], r[1], r[2], bool(r[3]), r[4]) for r in sync.execute(sa.text(query))]

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(downgrade)
    finally:
        await engine.dispose()


def test_the_readme_names_every_revision() -> None:
    section = (ROOT / "README.md").read_text().split("## Schema migrations", 1)[1]
    section = section.split("\n## ", 1)[0]
    versions = ROOT / "agentos" / "backends" / "migrations" / "versions"
    revisions = sorted(path.name[1:5] for path in versions.glob("r[0-9][0-9][0-9][0-9]_*.py"))
    assert revisions and revisions[-1] == schema.HEAD
    for revision in revisions:
        assert re.search(rf"\b{revision}\s+[a-z]", section), f"README does not name {revision}"
