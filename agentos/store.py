"""Where runs and their events are kept: the :class:`Store` interface and its SQL implementation.

The run manager only talks to :class:`Store`. :class:`SQLStore` implements it with SQLModel tables
over SQLAlchemy's async engine: SQLite through aiosqlite (WAL) by default, any other async
SQLAlchemy URL (PostgreSQL through asyncpg) with the same code.

Events are written by :meth:`Store.commit` in groups: one transaction holds a batch of events of
many runs plus the run updates that go with them, so a terminal event and its run's final status
are committed together.

Several instances may share one PostgreSQL database. Each run row names its owner
(``instance_id``) and how long the owner's lease lasts (``lease_until``); the owner renews it
(:meth:`Store.renew_leases`), another instance takes over a run whose lease expired with an atomic
conditional update (:meth:`Store.claim_orphan`), and a commit made with ``owner=`` only updates
runs that instance still owns. On PostgreSQL every commit also sends ``NOTIFY agentos_events,
'<run_id>:<last_index>'`` for each run it wrote events of, in the same transaction, so instances
tailing the run from the database wake up as soon as the events are visible (``notify.py``).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, SQLModel

from agentos.errors import RunAlreadyExists
from agentos.events import Event, RunStatus

__all__ = [
    "CONTROL_CHANNEL",
    "EVENTS_CHANNEL",
    "RunRecord",
    "RunUpdate",
    "SQLStore",
    "Store",
    "open_store",
]

#: PostgreSQL channel announcing committed events: payload ``<run_id>:<last event_index>``.
EVENTS_CHANNEL = "agentos_events"
#: PostgreSQL channel for requests to a run's owner: payload ``cancel:<run_id>``.
CONTROL_CHANNEL = "agentos_control"

_UNFINISHED = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
# Any constant shared by all instances: serializes schema creation on PostgreSQL.
_SCHEMA_LOCK = 0x6167_656E_746F_73


@dataclass(frozen=True)
class RunRecord:
    """A run as the store keeps it."""

    run_id: str
    kind: str
    component_id: str
    session_id: str
    status: RunStatus
    input: str
    user_id: str | None = None
    content: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    event_count: int = 0
    instance_id: str | None = None
    lease_until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The run object of the HTTP API."""
        from agentos.events import KINDS

        return {
            "run_id": self.run_id,
            "session_id": self.session_id,
            KINDS[self.kind].id_field: self.component_id,
            "user_id": self.user_id,
            "status": self.status.value,
            "input": self.input,
            "content": self.content,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "event_count": self.event_count,
        }

    def updated(self, update: RunUpdate) -> RunRecord:
        changes = {k: v for k, v in update.changes().items() if k != "run_id"}
        return replace(self, **changes)


@dataclass(frozen=True)
class RunUpdate:
    """Fields of a run to change in the next group commit (None leaves a field alone)."""

    run_id: str
    status: RunStatus | None = None
    content: str | None = None
    error: str | None = None
    event_count: int | None = None
    lease_until: float | None = None
    updated_at: float = field(default_factory=time.time)

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def merge(self, later: RunUpdate) -> RunUpdate:
        return replace(self, **{k: v for k, v in later.changes().items() if k != "run_id"})


class Store(abc.ABC):
    """The persistence the run manager needs. Implementations must be safe for one event loop."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    async def create_run(self, run: RunRecord) -> None:
        """Insert a new run; raises RunAlreadyExists when its id is taken."""

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, with ``event_count`` counting its committed events."""

    @abc.abstractmethod
    async def list_runs(
        self,
        kind: str,
        component_id: str,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs of one component, newest first."""

    @abc.abstractmethod
    async def commit(
        self,
        events: Sequence[tuple[str, Event]],
        updates: Sequence[RunUpdate],
        *,
        owner: str | None = None,
        runs: Sequence[RunRecord] = (),
    ) -> None:
        """Insert new runs, write events (run_id, event) and run updates in one transaction.

        With ``owner``, updates only change runs that instance owns (or nobody does). An event whose
        ``(run_id, event_index)`` is taken, or a new run whose id is, raises IntegrityError and
        nothing is written.
        """

    @abc.abstractmethod
    async def read_events(self, run_id: str, start: int, limit: int) -> list[Event]:
        """Events with ``event_index >= start``, in order, at most ``limit``."""

    @abc.abstractmethod
    async def last_event(self, run_id: str) -> Event | None:
        """The run's event with the highest index."""

    @abc.abstractmethod
    async def unfinished_runs(self, instance_id: str) -> list[RunRecord]:
        """Runs owned by ``instance_id`` still PENDING or RUNNING."""

    @abc.abstractmethod
    async def renew_leases(self, instance_id: str, lease_until: float) -> dict[str, bool]:
        """Extend the lease of every unfinished run ``instance_id`` owns.

        Returns the renewed run ids, each mapped to whether a cancel was requested for it.
        """

    @abc.abstractmethod
    async def expired_runs(self, now: float, limit: int) -> list[str]:
        """Ids of unfinished runs whose lease ended before ``now``, oldest lease first."""

    @abc.abstractmethod
    async def claim_orphan(
        self, run_id: str, instance_id: str, now: float, lease_until: float
    ) -> RunRecord | None:
        """Take over an unfinished run whose lease ended before ``now``.

        Atomic: of several instances claiming the same run at once, exactly one gets the run
        (now owned by it, lease until ``lease_until``); the others get None.
        """

    @abc.abstractmethod
    async def request_cancel(self, run_id: str) -> bool:
        """Ask the owner of an unfinished run to cancel it; False when the run has ended."""

    @abc.abstractmethod
    async def owned(self, run_ids: Sequence[str], instance_id: str) -> set[str]:
        """Those of ``run_ids`` that ``instance_id`` owns."""


class RunRow(SQLModel, table=True):
    __tablename__ = "agentos_runs"

    run_id: str = Field(primary_key=True, max_length=200)
    kind: str = Field(max_length=20)
    component_id: str = Field(max_length=200, index=True)
    session_id: str = Field(max_length=200, index=True)
    user_id: str | None = Field(default=None, max_length=200)
    status: str = Field(max_length=20, index=True)
    input: str = Field(sa_type=sa.Text)
    content: str | None = Field(default=None, sa_type=sa.Text)
    error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: float = Field(index=True, sa_type=sa.Double)
    updated_at: float = Field(sa_type=sa.Double)
    event_count: int = 0
    instance_id: str | None = Field(default=None, max_length=200, index=True)
    lease_until: float | None = Field(default=None, sa_type=sa.Double)
    cancel_requested: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})


class EventRow(SQLModel, table=True):
    __tablename__ = "agentos_events"

    run_id: str = Field(primary_key=True, max_length=200)
    event_index: int = Field(primary_key=True)
    name: str = Field(max_length=100)
    terminal: bool = False
    data: str = Field(sa_type=sa.Text)


_runs = RunRow.__table__  # type: ignore[attr-defined]
_events = EventRow.__table__  # type: ignore[attr-defined]


def _record(row: Any) -> RunRecord:
    return RunRecord(
        run_id=row.run_id,
        kind=row.kind,
        component_id=row.component_id,
        session_id=row.session_id,
        status=RunStatus(row.status),
        input=row.input,
        user_id=row.user_id,
        content=row.content,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        event_count=row.event_count,
        instance_id=row.instance_id,
        lease_until=row.lease_until,
    )


class SQLStore(Store):
    """The store on any SQLAlchemy async database (SQLite by default, PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    @property
    def dsn(self) -> str:
        """The URL without SQLAlchemy's driver name, for a plain driver connection."""
        url = make_url(self.url)
        return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=False)

    async def open(self) -> None:
        if self._engine is not None:
            return
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            memory = self.url.rstrip("/").endswith(("sqlite+aiosqlite:", ":memory:"))
            if memory:
                kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        self._engine = engine
        async with engine.begin() as conn:
            if self.is_postgres:
                # Instances starting together would race on CREATE TABLE (duplicate pg_type
                # rows); the lock makes them take turns, and the later ones find the tables.
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            await conn.run_sync(SQLModel.metadata.create_all, tables=[_runs, _events])

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def create_run(self, run: RunRecord) -> None:
        values = {**run.__dict__, "status": run.status.value}
        try:
            async with self.engine.begin() as conn:
                await conn.execute(_runs.insert().values(**values))
        except IntegrityError as exc:
            raise RunAlreadyExists(run.run_id) from exc

    async def get_run(self, run_id: str) -> RunRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_runs.select().where(_runs.c.run_id == run_id))).first()
            if row is None:
                return None
            record = _record(row)
            if not record.status.ended:
                count = await conn.scalar(
                    sa.select(sa.func.max(_events.c.event_index)).where(_events.c.run_id == run_id)
                )
                record = replace(record, event_count=0 if count is None else count + 1)
        return record

    async def list_runs(
        self,
        kind: str,
        component_id: str,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        query = _runs.select().where(_runs.c.kind == kind, _runs.c.component_id == component_id)
        if session_id is not None:
            query = query.where(_runs.c.session_id == session_id)
        if user_id is not None:
            query = query.where(_runs.c.user_id == user_id)
        if status is not None:
            query = query.where(_runs.c.status == status.value)
        query = query.order_by(_runs.c.created_at.desc(), _runs.c.run_id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    async def commit(
        self,
        events: Sequence[tuple[str, Event]],
        updates: Sequence[RunUpdate],
        *,
        owner: str | None = None,
        runs: Sequence[RunRecord] = (),
    ) -> None:
        async with self.engine.begin() as conn:
            if runs:
                await conn.execute(
                    _runs.insert(), [{**r.__dict__, "status": r.status.value} for r in runs]
                )
            if events:
                rows = [(run_id, e.index, e.name, e.terminal, e.data) for run_id, e in events]
                if self.is_sqlite:
                    # Straight to the driver: SQLAlchemy's per-row parameter processing cost
                    # more than SQLite's own inserts (profile of 1,000 concurrent runs).
                    await conn.exec_driver_sql(_SQLITE_INSERT_EVENTS, rows)
                else:
                    await conn.execute(
                        _events.insert(),
                        [dict(zip(_EVENT_COLUMNS, row, strict=True)) for row in rows],
                    )
            # One statement per set of changed columns, executed for all runs that share it
            # (a group's runs mostly change the same columns: RUNNING, or their final status).
            shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for update in updates:
                values = update.changes()
                run_id = values.pop("run_id")
                if "status" in values:
                    values["status"] = values["status"].value
                shape = tuple(sorted(values))
                params = {"p_" + k: v for k, v in values.items()}
                params["p__run_id"] = run_id
                shapes.setdefault(shape, []).append(params)
            for shape, params_list in shapes.items():
                statement = _runs.update().where(_runs.c.run_id == sa.bindparam("p__run_id"))
                if owner is not None:
                    statement = statement.where(
                        sa.or_(_runs.c.instance_id == owner, _runs.c.instance_id.is_(None))
                    )
                statement = statement.values({k: sa.bindparam("p_" + k) for k in shape})
                await conn.execute(statement, params_list)
            if events and self.is_postgres:
                last: dict[str, int] = {}
                for run_id, e in events:
                    last[run_id] = max(e.index, last.get(run_id, -1))
                await _notify(conn, EVENTS_CHANNEL, [f"{r}:{i}" for r, i in last.items()])

    async def read_events(self, run_id: str, start: int, limit: int) -> list[Event]:
        query = (
            sa.select(_events.c.event_index, _events.c.name, _events.c.data, _events.c.terminal)
            .where(_events.c.run_id == run_id, _events.c.event_index >= start)
            .order_by(_events.c.event_index)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Event(row[0], row[1], row[2], bool(row[3])) for row in rows]

    async def last_event(self, run_id: str) -> Event | None:
        query = (
            sa.select(_events.c.event_index, _events.c.name, _events.c.data, _events.c.terminal)
            .where(_events.c.run_id == run_id)
            .order_by(_events.c.event_index.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else Event(row[0], row[1], row[2], bool(row[3]))

    async def unfinished_runs(self, instance_id: str) -> list[RunRecord]:
        query = _runs.select().where(
            _runs.c.instance_id == instance_id,
            _runs.c.status.in_(_UNFINISHED),
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    async def renew_leases(self, instance_id: str, lease_until: float) -> dict[str, bool]:
        query = (
            _runs.update()
            .where(_runs.c.instance_id == instance_id, _runs.c.status.in_(_UNFINISHED))
            .values(lease_until=lease_until)
            .returning(_runs.c.run_id, _runs.c.cancel_requested)
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(query)).all()
        return {row[0]: bool(row[1]) for row in rows}

    async def expired_runs(self, now: float, limit: int) -> list[str]:
        query = (
            sa.select(_runs.c.run_id)
            .where(_runs.c.status.in_(_UNFINISHED), _runs.c.lease_until < now)
            .order_by(_runs.c.lease_until)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [row[0] for row in (await conn.execute(query)).all()]

    async def claim_orphan(
        self, run_id: str, instance_id: str, now: float, lease_until: float
    ) -> RunRecord | None:
        # One conditional UPDATE: on PostgreSQL a concurrent claimer waits for the row lock, then
        # re-checks the condition against the committed row, which no longer matches.
        query = (
            _runs.update()
            .where(
                _runs.c.run_id == run_id,
                _runs.c.status.in_(_UNFINISHED),
                _runs.c.lease_until < now,
            )
            .values(instance_id=instance_id, lease_until=lease_until, updated_at=now)
            .returning(*_runs.c)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _record(row)

    async def request_cancel(self, run_id: str) -> bool:
        query = (
            _runs.update()
            .where(_runs.c.run_id == run_id, _runs.c.status.in_(_UNFINISHED))
            .values(cancel_requested=True)
        )
        async with self.engine.begin() as conn:
            found = (await conn.execute(query)).rowcount == 1
            if found and self.is_postgres:
                await _notify(conn, CONTROL_CHANNEL, [f"cancel:{run_id}"])
        return found

    async def owned(self, run_ids: Sequence[str], instance_id: str) -> set[str]:
        if not run_ids:
            return set()
        query = sa.select(_runs.c.run_id).where(
            _runs.c.run_id.in_(list(run_ids)), _runs.c.instance_id == instance_id
        )
        async with self.engine.connect() as conn:
            return {row[0] for row in (await conn.execute(query)).all()}


async def _notify(conn: AsyncConnection, channel: str, payloads: list[str]) -> None:
    """``pg_notify`` each payload; PostgreSQL delivers them when the transaction commits."""
    await conn.execute(
        sa.text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
        {"channel": channel, "payloads": payloads},
    )


_EVENT_COLUMNS = ("run_id", "event_index", "name", "terminal", "data")
_SQLITE_INSERT_EVENTS = (
    f"INSERT INTO agentos_events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * 5)})"
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_store(url: str) -> Store:
    """The store for a database URL."""
    return SQLStore(url)
