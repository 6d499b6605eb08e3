"""Where runs and their events are kept: the :class:`Store` interface and its SQL implementation.

The run manager only talks to :class:`Store`. :class:`SQLStore` implements it with SQLModel tables
over SQLAlchemy's async engine: SQLite through aiosqlite (WAL) by default, any other async
SQLAlchemy URL (PostgreSQL through asyncpg) with the same code.

Events are written by :meth:`Store.commit` in groups: one transaction holds a batch of events of
many runs plus the run updates that go with them, so a terminal event and its run's final status
are committed together.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, SQLModel

from agentos.errors import RunAlreadyExists
from agentos.events import Event, RunStatus

__all__ = ["RunRecord", "RunUpdate", "SQLStore", "Store", "open_store"]


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
        self, events: Sequence[tuple[str, Event]], updates: Sequence[RunUpdate]
    ) -> None:
        """Write events (run_id, event) and run updates in one transaction."""

    @abc.abstractmethod
    async def read_events(self, run_id: str, start: int, limit: int) -> list[Event]:
        """Events with ``event_index >= start``, in order, at most ``limit``."""

    @abc.abstractmethod
    async def last_event(self, run_id: str) -> Event | None:
        """The run's event with the highest index."""

    @abc.abstractmethod
    async def unfinished_runs(self, instance_id: str) -> list[RunRecord]:
        """Runs owned by ``instance_id`` still PENDING or RUNNING."""


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
    created_at: float = Field(index=True)
    updated_at: float
    event_count: int = 0
    instance_id: str | None = Field(default=None, max_length=200, index=True)
    lease_until: float | None = None


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
        self, events: Sequence[tuple[str, Event]], updates: Sequence[RunUpdate]
    ) -> None:
        async with self.engine.begin() as conn:
            if events:
                await conn.execute(
                    _events.insert(),
                    [
                        {
                            "run_id": run_id,
                            "event_index": e.index,
                            "name": e.name,
                            "terminal": e.terminal,
                            "data": e.data,
                        }
                        for run_id, e in events
                    ],
                )
            for update in updates:
                values = update.changes()
                run_id = values.pop("run_id")
                if "status" in values:
                    values["status"] = values["status"].value
                await conn.execute(_runs.update().where(_runs.c.run_id == run_id).values(**values))

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
            _runs.c.status.in_([RunStatus.PENDING.value, RunStatus.RUNNING.value]),
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_store(url: str) -> Store:
    """The store for a database URL."""
    return SQLStore(url)
