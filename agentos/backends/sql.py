"""The SQL backend: :class:`SQLStore` on SQLAlchemy's async engine, SQLite by default.

SQLModel tables over SQLAlchemy's async engine: SQLite through aiosqlite (WAL) here, and the same
code for PostgreSQL (``postgres.py`` adds LISTEN/NOTIFY to it). Driver errors stop at this
module: a taken ``(run_id, event_index)`` or run id becomes :class:`~agentos.errors.WriteConflict`
or :class:`~agentos.errors.RunAlreadyExists`.

Events are written by :meth:`SQLStore.commit` in groups: one transaction holds a batch of events of
many runs plus the run updates that go with them, so a terminal event and its run's final status
are committed together.

Several instances may share one database. Each run row names its owner (``instance_id``) and how
long the owner's lease lasts (``lease_until``); the owner renews it (:meth:`SQLStore.renew_leases`),
another instance takes over a run whose lease expired and ends it in one transaction
(:meth:`SQLStore.end_run`: conditional UPDATE, last event, terminal event, final status). A commit
made with ``owner=`` is fenced: it checks, holding the run rows, that ``owner`` still owns every
run it writes events for, and only updates runs ``owner`` owns; with ``attempts=``, that each
run is still at the attempt that wrote (an attempt requeued by another instance and claimed back
by its own instance is fenced out too). So the terminal index the claimer picked can never be
taken by the former owner, and nothing it commits later lands.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from itertools import chain
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, SQLModel

from agentos.backends import eventrows, schema
from agentos.backends.base import ANY_USER, Ending, Store, register_backend
from agentos.errors import (
    AgentOSError,
    DataRejected,
    RunAlreadyExists,
    SessionActive,
    SessionBusy,
    StoreUnavailable,
    TaskAlreadyExists,
    WriteConflict,
)
from agentos.events import Event, RunStatus
from agentos.records import ComponentState, ComponentStats, IdempotencyKey, RunRecord, RunUpdate
from agentos.retries import RetryPolicy
from agentos.schedules import Schedule, TaskRecord, TaskRelease
from agentos.sessions import MessageRecord, SessionRecord
from agentos.settings import DatabaseSettings, Settings

__all__ = ["SQLStore"]

_T = TypeVar("_T")

_UNFINISHED = (RunStatus.PENDING.value, RunStatus.QUEUED.value, RunStatus.RUNNING.value)
_EXECUTING = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
_QUEUED = RunStatus.QUEUED.value
#: Runs of a task that count as running for its overlap policy (waiting in the queue too).
_ACTIVE = _UNFINISHED


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
    attempt: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    started_at: float | None = Field(default=None, sa_type=sa.Double)
    retry_policy: str | None = Field(default=None, sa_type=sa.Text)
    timeout: float | None = Field(default=None, sa_type=sa.Double)
    multitask: str | None = Field(default=None, max_length=20)
    not_before: float | None = Field(default=None, sa_type=sa.Double)
    attempts: str | None = Field(default=None, sa_type=sa.Text)
    task_id: str | None = Field(default=None, max_length=200, index=True)
    occurrence: str | None = Field(default=None, max_length=200)


class EventRow(SQLModel, table=True):
    __tablename__ = "agentos_events"

    run_id: str = Field(primary_key=True, max_length=200)
    event_index: int = Field(primary_key=True)
    name: str = Field(max_length=100)
    terminal: bool = False
    data: str = Field(sa_type=sa.Text)
    #: A row of several consecutive events (``eventrows.py``): the last one's index, and each
    #: one's name and length in ``data``. NULL in a row of one event.
    last_index: int | None = None
    layout: str | None = Field(default=None, sa_type=sa.Text)


class MessageRow(SQLModel, table=True):
    __tablename__ = "agentos_messages"

    run_id: str = Field(primary_key=True, max_length=200)
    position: int = Field(primary_key=True)
    session_id: str = Field(max_length=200, index=True)
    role: str = Field(max_length=20)
    content: str | None = Field(default=None, sa_type=sa.Text)
    tool_calls: str | None = Field(default=None, sa_type=sa.Text)
    tool_call_id: str | None = Field(default=None, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    created_at: float = Field(sa_type=sa.Double)


class ComponentRow(SQLModel, table=True):
    __tablename__ = "agentos_components"

    kind: str = Field(primary_key=True, max_length=20)
    component_id: str = Field(primary_key=True, max_length=200)
    paused: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    registered_at: float = Field(sa_type=sa.Double)
    updated_at: float = Field(sa_type=sa.Double)


class LeaseRow(SQLModel, table=True):
    __tablename__ = "agentos_leases"

    name: str = Field(primary_key=True, max_length=100)
    holder: str = Field(max_length=200)
    expires_at: float = Field(sa_type=sa.Double)


class TaskRow(SQLModel, table=True):
    __tablename__ = "agentos_tasks"

    task_id: str = Field(primary_key=True, max_length=200)
    kind: str = Field(max_length=20)
    component_id: str = Field(max_length=200)
    message: str = Field(sa_type=sa.Text)
    schedule: str = Field(sa_type=sa.Text)
    timeout: float | None = Field(default=None, sa_type=sa.Double)
    retry_policy: str | None = Field(default=None, sa_type=sa.Text)
    overlap_policy: str = Field(max_length=20)
    session_policy: str = Field(max_length=20)
    session_id: str | None = Field(default=None, max_length=200)
    catchup: str = Field(max_length=20)
    catchup_window: float = Field(sa_type=sa.Double)
    active: bool = True
    description: str | None = Field(default=None, sa_type=sa.Text)
    tags: str = Field(sa_type=sa.Text)
    user_id: str | None = Field(default=None, max_length=200)
    created_at: float = Field(sa_type=sa.Double)
    updated_at: float = Field(sa_type=sa.Double)
    next_fire_at: float | None = Field(default=None, sa_type=sa.Double, index=True)
    queued_at: float | None = Field(default=None, sa_type=sa.Double)
    last_fired_at: float | None = Field(default=None, sa_type=sa.Double)
    last_run_id: str | None = Field(default=None, max_length=200)
    fired: int = 0
    skipped: int = 0
    claimed_by: str | None = Field(default=None, max_length=200)
    claim_until: float | None = Field(default=None, sa_type=sa.Double)


class IdempotencyRow(SQLModel, table=True):
    __tablename__ = "agentos_idempotency"

    key: str = Field(primary_key=True, max_length=200)
    kind: str = Field(primary_key=True, max_length=20)
    component_id: str = Field(primary_key=True, max_length=200)
    user_scope: str = Field(primary_key=True, max_length=200)
    request_hash: str = Field(max_length=64)
    run_id: str = Field(max_length=200)
    status_code: int
    token: str = Field(max_length=64)
    created_at: float = Field(index=True, sa_type=sa.Double)


_runs = RunRow.__table__  # type: ignore[attr-defined]
_events = EventRow.__table__  # type: ignore[attr-defined]
_messages = MessageRow.__table__  # type: ignore[attr-defined]
_components = ComponentRow.__table__  # type: ignore[attr-defined]
_leases = LeaseRow.__table__  # type: ignore[attr-defined]
_tasks = TaskRow.__table__  # type: ignore[attr-defined]
_keys = IdempotencyRow.__table__  # type: ignore[attr-defined]
#: The tables of this release: what create_all makes in an empty database, at schema.HEAD.
_TABLES = [_runs, _events, _messages, _components, _leases, _keys, _tasks]
_KEY_COLUMNS = ("key", "kind", "component_id", "user_scope")


def _others_unfinished(run: RunRecord, besides: Collection[str]) -> Any:
    """Whether the run's session has another unfinished run, not one of ``besides`` (a scalar
    query)."""
    return sa.select(
        sa.exists().where(
            _runs.c.session_id == run.session_id,
            _runs.c.run_id.not_in([run.run_id, *besides]),
            _runs.c.status.in_(_UNFINISHED),
        )
    )


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
        attempt=row.attempt,
        started_at=row.started_at,
        retry_policy=row.retry_policy,
        timeout=row.timeout,
        multitask=row.multitask,
        not_before=row.not_before,
        attempts=row.attempts,
        task_id=row.task_id,
        occurrence=row.occurrence,
    )


class SQLStore(Store):
    """The store on SQLite (through aiosqlite); :class:`PostgresStore` extends it to PostgreSQL."""

    #: URL schemes this class serves (its dialect's hooks are right for them).
    schemes: tuple[str, ...] = ("sqlite",)

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DatabaseSettings.timeout,
        auto_upgrade: bool = DatabaseSettings.auto_upgrade,
        inline_commit_max_rows: int = DatabaseSettings.inline_commit_max_rows,
        inline_commit_max_chars: int = DatabaseSettings.inline_commit_max_chars,
        inline_read_max_bytes: int = DatabaseSettings.inline_read_max_bytes,
    ) -> None:
        scheme = url.partition(":")[0].partition("+")[0].lower()
        if scheme not in self.schemes:
            raise ValueError(
                f"{type(self).__name__} serves {', '.join(self.schemes)} URLs, not {scheme!r}: "
                "use open_backend(settings).store for the store of a URL"
            )
        self.url = url
        #: Seconds to wait for a connection or (SQLite) for another writer's lock; past it the
        #: operation fails as StoreUnavailable and the committer retries.
        self.timeout = timeout
        #: Upgrade an older schema when opening instead of refusing (SchemaOutdated).
        self.auto_upgrade = auto_upgrade
        #: SQLite: a group commit of at most this many rows is made on the event loop when the
        #: database is free (see _commit_inline); 0 sends every group to the driver's thread.
        self.inline_commit_max_rows = inline_commit_max_rows
        #: SQLite: ...and of at most this many characters of text (see _commit_inline).
        self.inline_commit_max_chars = inline_commit_max_chars
        #: SQLite: a read on the event loop (see _read_inline) of a larger value goes to the
        #: driver's thread; 0 sends every read there.
        self.inline_read_max_bytes = inline_read_max_bytes
        self._engine: AsyncEngine | None = None
        self._inline: sqlite3.Connection | None = None
        #: Groups committed inline since the last one went through the driver's thread.
        self._inline_streak = 0

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    async def open(self) -> None:
        """Connect; create the schema in an empty database, refuse an outdated one
        (SchemaOutdated) unless ``auto_upgrade`` (see ``schema.py``)."""
        if self._engine is not None:
            return
        self._engine = self._make_engine()
        try:
            async with self._engine.begin() as conn:
                await self._before_schema(conn)
                await conn.run_sync(
                    schema.ensure, auto_upgrade=self.auto_upgrade, create_all=_create_all
                )
        except BaseException:
            await self.close()
            raise

    async def upgrade(self) -> tuple[str | None, str]:
        engine = self._make_engine()
        try:
            async with engine.begin() as conn:
                await self._before_schema(conn)
                return await conn.run_sync(schema.upgrade)
        finally:
            await engine.dispose()

    def _make_engine(self) -> AsyncEngine:
        engine = create_async_engine(self.url, **self._engine_options())
        if self.is_sqlite:
            busy_ms = int(self.timeout * 1000)

            def pragmas(dbapi_conn: Any, _record: Any) -> None:
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
                cursor.close()

            sa.event.listen(engine.sync_engine, "connect", pragmas)
        return engine

    def _engine_options(self) -> dict[str, Any]:
        """Keyword arguments of the engine (a dialect's hook)."""
        if not self.is_sqlite:
            return {"pool_timeout": self.timeout}
        options: dict[str, Any] = {
            "connect_args": {
                "check_same_thread": False,
                "timeout": self.timeout,
                "factory": _RollbackOnClose,
            }
        }
        if self.url.rstrip("/").endswith(("sqlite+aiosqlite:", ":memory:")):
            options["poolclass"] = StaticPool
        return options

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection to read with; driver errors come out as the store's domain errors.

        On PostgreSQL its statements run in autocommit, each in a transaction of its own: a
        read is one round trip to the server instead of three (BEGIN, the query, and the
        ROLLBACK when the connection goes back to the pool), and it sees what it would have
        seen in a transaction, since READ COMMITTED takes a snapshot per statement anyway.
        """
        try:
            async with self.engine.connect() as conn:
                if not self.is_sqlite:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                yield conn
        except Exception as exc:
            raise _translate(exc) from exc

    @contextlib.asynccontextmanager
    async def _statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one write statement that is atomic by itself: in autocommit on
        PostgreSQL (one round trip, no BEGIN and COMMIT), a transaction on SQLite."""
        if self.is_sqlite:
            async with self._begin() as conn:
                yield conn
        else:
            async with self._connect() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction; driver errors come out as the store's domain errors."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except Exception as exc:
            raise _translate(exc) from exc

    def _insert(self, table: sa.Table) -> Any:
        """An INSERT with ON CONFLICT clauses (a dialect's hook)."""
        return sqlite_insert(table)

    async def _before_schema(self, conn: AsyncConnection) -> None:
        """Called in the schema transaction before the tables are created (a dialect's hook)."""

    async def _after_write(
        self, conn: AsyncConnection, events: Sequence[tuple[str, Event]]
    ) -> None:
        """Called in a commit's transaction after its writes (a dialect's hook)."""

    async def _lock_session(self, conn: AsyncConnection, session_id: str) -> None:
        """Make the creates of runs that must be alone in a session take turns, until the end
        of the transaction. SQLite: the INSERT that follows takes the one write lock, and the
        check after it sees every run committed before; PostgreSQL locks (see there)."""

    async def _after_enqueue(self, conn: AsyncConnection) -> None:
        """Called in the transaction that put a run in the queue (PostgreSQL notifies)."""

    def _enqueue_notice(self) -> Any:
        """What a statement that creates a queued run selects to announce it, or None (a
        dialect's hook: PostgreSQL's ``pg_notify``)."""
        return None

    async def _after_cancel_request(self, conn: AsyncConnection, run_id: str) -> None:
        """Called in the transaction that set a run's cancel request (a dialect's hook)."""

    async def close(self) -> None:
        if self._inline is not None:
            inline, self._inline = self._inline, None
            inline.close()
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def ping(self) -> None:
        if self._engine is None:
            raise StoreUnavailable("the store is not open")
        async with self._connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def create_run(
        self, run: RunRecord, *, alone: bool = False, besides: Collection[str] = ()
    ) -> None:
        values = {**run.__dict__, "status": run.status.value}
        insert = _runs.insert().values(**values)
        try:
            if alone:
                async with self._begin() as conn:
                    await self._lock_session(conn, run.session_id)
                    await conn.execute(insert)
                    if await conn.scalar(_others_unfinished(run, besides)):
                        raise SessionBusy(run.session_id, run.multitask or "reject")  # rolls back
                    if run.status is RunStatus.QUEUED:
                        await self._after_enqueue(conn)
                return
            statement: Any = insert
            notice = self._enqueue_notice() if run.status is RunStatus.QUEUED else None
            if notice is not None:
                # The insert and its notification in one statement (a data-modifying CTE
                # always runs; the notification goes out when the statement commits): one
                # round trip on the way from a queued run's create to its claim by another
                # instance.
                statement = sa.select(notice).select_from(insert.returning(_runs.c.run_id).cte())
            async with self._statement() as conn:
                await conn.execute(statement)
        except WriteConflict as exc:
            raise RunAlreadyExists(run.run_id) from exc

    async def get_run(self, run_id: str) -> RunRecord | None:
        found = self._read_inline(functools.partial(_sqlite_get_run, run_id=run_id))
        if found is not NOT_READ:
            return found
        async with self._connect() as conn:
            row = (await conn.execute(_runs.select().where(_runs.c.run_id == run_id))).first()
            if row is None:
                return None
            record = _record(row)
            if not record.status.ended:
                count = await conn.scalar(sa.select(_top_index(run_id)))
                record = replace(record, event_count=0 if count is None else count + 1)
        return record

    async def taken_run_ids(self, run_ids: Collection[str]) -> set[str]:
        wanted = sorted(set(run_ids))
        taken: set[str] = set()
        async with self._connect() as conn:
            for start in range(0, len(wanted), _IN_LIST_MAX):
                part = wanted[start : start + _IN_LIST_MAX]
                query = sa.select(_runs.c.run_id).where(_runs.c.run_id.in_(part))
                taken.update((await conn.scalars(query)).all())
        return taken

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
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    async def commit(
        self,
        events: Sequence[tuple[str, Event]],
        updates: Sequence[RunUpdate],
        *,
        owner: str | None = None,
        attempts: Mapping[str, int] | None = None,
        runs: Sequence[RunRecord] = (),
    ) -> None:
        attempts = attempts or {}
        if self.is_sqlite:
            group = _SQLiteGroup(events, updates, owner, attempts, runs)
            if not self._commit_inline(group):
                await self._commit_sqlite(group)
            return
        fenced = sorted({run_id for run_id, _ in events})
        async with self._begin() as conn:
            if runs:
                await conn.execute(
                    _runs.insert(), [{**r.__dict__, "status": r.status.value} for r in runs]
                )
            # The fence (see Store.commit) holds the run rows until COMMIT. On PostgreSQL they
            # are locked FOR KEY SHARE before anything is written, every row the commit touches
            # at once, in run_id order as renew_leases does, so transactions never wait for
            # each other in a circle. A claim (end_run) committed before is seen here; one in
            # progress is not (its UPDATE does not exclude a key share), and is fenced out by
            # what follows: the run updates apply only to runs ``owner`` still owns, and the
            # event rows take their runs' locks (_insert_events), so the claim's terminal
            # index and this group's rows cannot both commit.
            if owner is not None:
                touched = sorted({*fenced, *(update.run_id for update in updates)})
                _check_fence(fenced, await _owners(conn, touched), owner, attempts)
            await self._write(conn, events, updates, owner, attempts)
            await self._after_write(conn, events)

    def _commit_inline(self, group: _SQLiteGroup) -> bool:
        """:meth:`commit` of a group on SQLite, right here on the event loop: True once it has
        committed, False when it should go to the driver's thread instead.

        A group sent to aiosqlite's thread waits for that thread to be scheduled, then for the
        GIL at every row (the loop holds it while runs emit: up to the 5 ms switch interval
        each time), then for the event loop to take its result back. Under load each trip cost
        milliseconds; a run's first event waited for two (its run's insert, then the event),
        and many concurrent runs spent more time handing the GIL over than writing. On the
        loop, SQLite writes a row in a microsecond or two. This connection never waits for a
        lock (busy timeout 0): when another connection or process holds the database, the
        attempt rolls back at once and the group goes to the thread, which waits as before. It
        never checkpoints the WAL either (an fsync); every ``_INLINE_STREAK`` groups one goes
        through the thread, whose connection does. A group of many rows or much text (a large
        input or event: SQLite writes about a megabyte a millisecond) goes there too.
        """
        if (
            group.rows > self.inline_commit_max_rows
            or group.chars > self.inline_commit_max_chars
            or self._inline_streak >= _INLINE_STREAK
        ):
            self._inline_streak = 0
            return False
        db = self._loop_connection()
        if db is None:
            return False
        try:
            group.run(db)
        except sqlite3.OperationalError:
            return False  # locked by another writer, or worse: the thread's path tells which
        except sqlite3.Error as exc:  # a taken index or id, a refused value: as the thread's
            raise _translate(DBAPIError.instance(None, None, exc, sqlite3.Error)) from exc
        except UnicodeError as exc:
            raise _translate(exc) from exc
        self._inline_streak += 1
        return True

    def _loop_connection(self) -> sqlite3.Connection | None:
        """The event loop's own connection (see _commit_inline), opened on first use; None when
        there is none: not SQLite, ``inline_commit_max_rows`` 0, a file that cannot have one,
        or a store not open (closed: a connection opened now would never be closed, and the
        thread's path says the store is not open)."""
        if self._inline is not None:
            return self._inline
        if not self.is_sqlite or self.inline_commit_max_rows <= 0 or self._engine is None:
            return None
        self._inline = self._open_inline()
        if self._inline is None:
            self.inline_commit_max_rows = 0
        return self._inline

    def _read_inline(self, read: Callable[[sqlite3.Connection], _T]) -> _T | _NotRead:
        """``read(connection)`` on the event loop's connection, in one read transaction; NOT_READ
        when it cannot be made there (the caller then reads through the driver's thread).

        For reads of a row or a few (a run, the first page of a resume): through aiosqlite each
        is a trip to its thread and back through the loop, which cost a resume from the
        buffer about a millisecond on a quiet machine and several under load, for a lookup
        SQLite answers in microseconds. In WAL mode a reader never waits for a writer; the
        connection does not wait for anything else either (busy timeout 0): any
        OperationalError (the database busy recovering, say) sends the read to the thread.

        A value of more than ``inline_read_max_bytes`` stops the read too: SQLite's length
        limit, lowered for the read, refuses it from the row's header (DataError), before its
        pages are read, and the thread reads it.
        """
        if self.inline_read_max_bytes <= 0:
            return NOT_READ
        db = self._loop_connection()
        if db is None:
            return NOT_READ
        limit = db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.inline_read_max_bytes)
        try:
            db.execute("BEGIN")
            try:
                return read(db)
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")  # a read: nothing to keep
        except (sqlite3.OperationalError, sqlite3.DataError):
            return NOT_READ  # busy, or a value too large for the loop
        except sqlite3.Error as exc:
            raise _translate(DBAPIError.instance(None, None, exc, sqlite3.Error)) from exc
        except UnicodeError as exc:  # an id with lone surrogates: DataRejected, as the thread's
            raise _translate(exc) from exc
        finally:
            db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limit)  # the loop's commits: any size

    def _open_inline(self) -> sqlite3.Connection | None:
        """The event loop's own connection to the SQLite file (None for a memory database)."""
        url = sa.engine.make_url(self.url)
        path = url.database
        if not path or path == ":memory:" or url.query or path.startswith("file:"):
            return None
        db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        except sqlite3.Error:
            db.close()
            return None
        if str(mode).lower() != "wal":
            db.close()  # without WAL, a write would wait for readers: not on the event loop
            return None
        return db

    async def _commit_sqlite(self, group: _SQLiteGroup) -> None:
        """:meth:`commit` on SQLite: the whole transaction in one trip to the connection's thread.

        aiosqlite runs every driver call in the connection's own thread and hands the result
        back through the event loop. Through SQLAlchemy a group commit made a dozen such trips
        (cursor, execute and close per statement, then COMMIT), each waiting for the loop to
        come round: with a run emitting at full speed, a group of a few events took tens of
        milliseconds (bench/NOTES.md, time to the first event). Here the statements run back to
        back in that thread: one trip, and the pool's reset when the connection goes back.
        """
        try:
            async with self.engine.connect() as conn:
                driver: Any = (await conn.get_raw_connection()).driver_connection
                # aiosqlite's entry to its thread for a function (the queue SQLAlchemy's own
                # aiosqlite dialect also uses to run functions there).
                await driver._execute(group.run, driver._conn)
        except AgentOSError:
            raise
        except sqlite3.Error as exc:
            raise _translate(DBAPIError.instance(None, None, exc, sqlite3.Error)) from exc
        except Exception as exc:
            raise _translate(exc) from exc

    async def _write(
        self,
        conn: AsyncConnection,
        events: Sequence[tuple[str, Event]],
        updates: Sequence[RunUpdate],
        owner: str | None,
        attempts: Mapping[str, int] | None = None,
    ) -> None:
        """Insert events and apply run updates (only to runs ``owner`` owns, when given, and
        that are still at their attempt in ``attempts``)."""
        await self._insert_events(conn, events)
        await self._apply_updates(conn, updates, owner, attempts or {})

    async def _insert_events(
        self, conn: AsyncConnection, events: Sequence[tuple[str, Event]]
    ) -> None:
        """Insert the rows of ``events`` (``eventrows.py``); WriteConflict, after the inserts,
        when one of them overlaps a row of its run."""
        if not events:
            return
        rows = eventrows.event_rows(events)
        if self.is_sqlite:
            # Straight to the driver: SQLAlchemy's per-row parameter processing cost more
            # than SQLite's own inserts (profile of 1,000 concurrent runs).
            await conn.exec_driver_sql(_SQLITE_INSERT_EVENTS, rows)
            for check, params in _sqlite_overlap_checks(rows):
                if (await conn.exec_driver_sql(check, params)).first() is not None:
                    raise _overlap()
            return
        # Writers of one run take turns from here to COMMIT, so each one's overlap check sees
        # the other's rows: without the lock, two transactions writing rows of a run that
        # start at different indexes but share one would both pass it (neither sees the
        # other's uncommitted rows) and both commit.
        await conn.execute(_POSTGRES_LOCK_RUNS, {"run_ids": sorted({row[0] for row in rows})})
        await conn.execute(
            _events.insert(), [dict(zip(eventrows.COLUMNS, row, strict=True)) for row in rows]
        )
        ranges = {
            "run_ids": [row[0] for row in rows],
            "firsts": [row[1] for row in rows],
            "lasts": [row[1] if row[5] is None else row[5] for row in rows],
        }
        if (await conn.execute(_POSTGRES_OVERLAPS, ranges)).first() is not None:
            raise _overlap()

    async def _apply_updates(
        self,
        conn: AsyncConnection,
        updates: Sequence[RunUpdate],
        owner: str | None,
        attempts: Mapping[str, int],
    ) -> None:
        """Apply run updates (only to runs ``owner`` owns, when given, and that are still at
        their attempt in ``attempts``)."""
        # One statement per set of changed columns (and fence), executed for all runs that
        # share it (a group's runs mostly change the same columns: RUNNING, or their final
        # status).
        shapes: dict[tuple[tuple[str, ...], bool], list[dict[str, Any]]] = {}
        requeued = False
        for update in updates:
            values = update.changes()
            run_id = values.pop("run_id")
            if values.pop("requeue", False):
                # Back to the queue: nobody owns it (so its former owner is fenced out) and
                # any instance may claim it from ``not_before`` on.
                values.update(instance_id=None, lease_until=None, started_at=None)
                requeued = True
            if "status" in values:
                values["status"] = values["status"].value
            shape = tuple(sorted(values))
            params = {"p_" + k: v for k, v in values.items()}
            params["p__run_id"] = run_id
            attempt = attempts.get(run_id)
            if attempt is not None:
                params["p__attempt"] = attempt
            shapes.setdefault((shape, attempt is not None), []).append(params)
        for (shape, at_attempt), params_list in shapes.items():
            statement = _runs.update().where(_runs.c.run_id == sa.bindparam("p__run_id"))
            if owner is not None:
                statement = statement.where(_owned_by(owner))
            if at_attempt:
                statement = statement.where(_runs.c.attempt == sa.bindparam("p__attempt"))
            statement = statement.values({k: sa.bindparam("p_" + k) for k in shape})
            await conn.execute(statement, params_list)
        if requeued:
            await self._after_enqueue(conn)

    async def read_events(self, run_id: str, start: int, limit: int) -> list[Event]:
        if start >= _INDEX_END or limit <= 0:
            return []  # no event has such an index (nor could SQLite take it as a parameter)
        if limit <= _INLINE_READ_MAX_ROWS:
            read = functools.partial(_sqlite_read_events, run_id=run_id, start=start, limit=limit)
            events = self._read_inline(read)
            if events is not NOT_READ:
                return events
        events = []
        lo: int | None = start
        async with self._connect() as conn:
            # Window by window (eventrows.READ_WINDOW); more than one only across a gap.
            while lo is not None and lo < _INDEX_END and len(events) < limit:
                hi = min(lo + limit - len(events), _INDEX_END)
                params = {"run_id": run_id, "lo": lo, "hi": hi}
                rows = (await conn.execute(_READ_WINDOW, params)).all()
                found, lo = eventrows.read_window(rows, lo, hi)
                events += found
        return events

    async def last_event(self, run_id: str) -> Event | None:
        async with self._connect() as conn:
            return await _last_event(conn, run_id)

    async def unfinished_runs(self, instance_id: str) -> list[RunRecord]:
        query = _runs.select().where(
            _runs.c.instance_id == instance_id,
            _runs.c.status.in_(_EXECUTING),
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    async def renew_leases(self, instance_id: str, lease_until: float) -> dict[str, bool]:
        # The rows are locked in run_id order, as a commit's fence locks them: two transactions
        # of one instance then never wait for each other in a circle (PostgreSQL; SQLite has
        # one writer and ignores FOR UPDATE).
        mine = (
            sa.select(_runs.c.run_id)
            .where(_runs.c.instance_id == instance_id, _runs.c.status.in_(_EXECUTING))
            .order_by(_runs.c.run_id)
            .with_for_update(key_share=True)
        )
        query = (
            _runs.update()
            .where(_runs.c.run_id.in_(mine), _runs.c.status.in_(_EXECUTING))
            .values(lease_until=lease_until)
            .returning(_runs.c.run_id, _runs.c.cancel_requested)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(query)).all()
        return {row[0]: bool(row[1]) for row in rows}

    async def expired_runs(self, now: float, limit: int) -> list[str]:
        query = (
            sa.select(_runs.c.run_id)
            .where(_runs.c.status.in_(_EXECUTING), _runs.c.lease_until < now)
            .order_by(_runs.c.lease_until)
            .limit(limit)
        )
        async with self._connect() as conn:
            return [row[0] for row in (await conn.execute(query)).all()]

    async def end_run(
        self,
        run_id: str,
        instance_id: str,
        ending: Ending,
        *,
        now: float,
        expired: bool,
        queued: bool = False,
    ) -> RunRecord | None:
        # The conditional UPDATE comes before any other read that matters: on PostgreSQL it
        # locks the row (a concurrent claimer waits, then re-checks the condition against the
        # committed row, which no longer matches; the owner's fence waits too), on SQLite it
        # takes the write lock. The last event read after it is then final: the former owner
        # can add none.
        if queued:
            condition = _runs.c.status == _QUEUED
        elif expired:
            condition = sa.and_(_runs.c.status.in_(_EXECUTING), _runs.c.lease_until < now)
        else:
            condition = sa.and_(_runs.c.status.in_(_EXECUTING), _runs.c.instance_id == instance_id)
        async with self._begin() as conn:
            # Who owns it now, for the attempts history; the claim below is conditional on it
            # (a compare-and-set), so a change in between makes this claim, not the other, fail.
            former = await conn.scalar(
                sa.select(_runs.c.instance_id).where(_runs.c.run_id == run_id)
            )
            claim = (
                _runs.update()
                .where(
                    _runs.c.run_id == run_id,
                    condition,
                    _runs.c.instance_id.is_not_distinct_from(former),
                )
                .values(instance_id=instance_id, updated_at=now)
                .returning(*_runs.c)
            )
            row = (await conn.execute(claim)).first()
            if row is None:
                return None
            record = replace(_record(row), instance_id=former)
            event, update = ending(record, await _last_event(conn, run_id))
            events = [] if event is None else [(run_id, event)]
            await self._write(conn, events, [update], instance_id)
            await self._after_write(conn, events)
        return record

    async def claim_runs(
        self,
        instance_id: str,
        components: Sequence[tuple[str, str]],
        *,
        now: float,
        lease_until: float,
        limit: int,
        exclude: Sequence[str] = (),
    ) -> list[RunRecord]:
        if not components or limit <= 0:
            return []
        runs = _runs.c
        # A run of a session that serialises its runs (multitask "enqueue") waits while the
        # session has a run executing, or an older one waiting.
        other = _runs.alias("other")
        busy = sa.exists().where(
            other.c.session_id == runs.session_id,
            other.c.run_id != runs.run_id,
            sa.or_(
                other.c.status.in_(_EXECUTING),
                sa.and_(other.c.status == _QUEUED, other.c.created_at < runs.created_at),
            ),
        )
        eligible = (
            sa.select(runs.run_id)
            .where(
                runs.status == _QUEUED,
                sa.or_(runs.not_before.is_(None), runs.not_before <= now),
                sa.tuple_(runs.kind, runs.component_id).in_(list(components)),
                sa.or_(runs.multitask.is_(None), runs.multitask != "enqueue", ~busy),
            )
            .where(runs.run_id.not_in(list(exclude)) if exclude else sa.true())
            .order_by(runs.not_before, runs.created_at, runs.run_id)
            .limit(limit)
        )
        picked: Any = eligible.scalar_subquery()
        if not self.is_sqlite:
            # Claimers on other instances skip the rows this one locks instead of waiting.
            eligible = eligible.with_for_update(skip_locked=True, of=_runs)
            # Selected once, in a MATERIALIZED CTE: as a plain IN (subquery) PostgreSQL may run
            # it again for each row it updates, each time skipping the rows this statement has
            # claimed already, so that LIMIT bounded nothing (one claim took the whole queue).
            cte = eligible.cte("claimable").prefix_with("MATERIALIZED")
            picked = sa.select(cte.c.run_id)
        # Each claimed run's last event index. On PostgreSQL it is read in the claim itself: one
        # statement, so one round trip in autocommit (a claim sits between a queued run's
        # create and its first event at the client). SQLite's RETURNING names columns without
        # their table (the subquery's ``run_id`` would be the event's): a second query there.
        last_index: Any = sa.null()
        if not self.is_sqlite:
            last_index = _top_index(runs.run_id)
        # The status condition is the compare-and-set: of two claimers of one run, the second
        # finds it no longer QUEUED (SQLite has one writer; PostgreSQL re-checks locked rows).
        claim = (
            _runs.update()
            .where(runs.run_id.in_(picked), runs.status == _QUEUED)
            .values(
                status=RunStatus.PENDING.value,
                instance_id=instance_id,
                lease_until=lease_until,
                attempt=runs.attempt + 1,
                started_at=now,
                updated_at=now,
                not_before=None,
            )
            .returning(*_runs.c, last_index.label("last_index"))
        )
        async with self._statement() as conn:
            rows = (await conn.execute(claim)).all()
            last: dict[str, int | None] = {row.run_id: row.last_index for row in rows}
            if rows and self.is_sqlite:
                counts = sa.select(runs.run_id, _top_index(runs.run_id)).where(
                    runs.run_id.in_(list(last))
                )
                last.update({row[0]: row[1] for row in (await conn.execute(counts)).all()})
        records = []
        for row in rows:
            top = last[row.run_id]
            records.append(replace(_record(row), event_count=0 if top is None else top + 1))
        return sorted(records, key=lambda r: (r.created_at, r.run_id))

    async def queue_depth(self) -> int:
        query = sa.select(sa.func.count()).select_from(_runs).where(_runs.c.status == _QUEUED)
        async with self._connect() as conn:
            return int(await conn.scalar(query) or 0)

    async def session_runs_active(self, session_id: str) -> list[RunRecord]:
        query = _runs.select().where(
            _runs.c.session_id == session_id, _runs.c.status.in_(_UNFINISHED)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    async def request_cancel(self, run_id: str) -> bool:
        query = (
            _runs.update()
            .where(_runs.c.run_id == run_id, _runs.c.status.in_(_UNFINISHED))
            .values(cancel_requested=True)
        )
        async with self._begin() as conn:
            found = (await conn.execute(query)).rowcount == 1
            if found:
                await self._after_cancel_request(conn, run_id)
        return found

    async def owned(self, run_ids: Sequence[str], instance_id: str) -> set[str]:
        if not run_ids:
            return set()
        query = sa.select(_runs.c.run_id).where(
            _runs.c.run_id.in_(list(run_ids)), _runs.c.instance_id == instance_id
        )
        async with self._connect() as conn:
            return {row[0] for row in (await conn.execute(query)).all()}

    # -- sessions ----------------------------------------------------------------------------------

    async def add_messages(
        self,
        messages: Sequence[MessageRecord],
        *,
        owner: str | None = None,
        attempt: int | None = None,
    ) -> None:
        if not messages:
            return
        rows = [
            {
                "run_id": m.run_id,
                "position": m.position,
                "session_id": m.session_id,
                "role": m.role,
                "content": m.content,
                "tool_calls": m.tool_calls_json(),
                "tool_call_id": m.tool_call_id,
                "name": m.name,
                "created_at": m.created_at,
            }
            for m in messages
        ]
        async with self._begin() as conn:
            # A run's messages are saved once per attempt that completes its turn: a later
            # attempt's replace an earlier one's (one that saved, then timed out, say).
            run_ids = sorted({m.run_id for m in messages})
            fence = {run_id: attempt for run_id in run_ids} if attempt is not None else {}
            if owner is not None and not self.is_sqlite:
                # Fenced as a group commit is: the run rows locked before anything is written.
                _check_fence(run_ids, await _owners(conn, run_ids), owner, fence)
            await conn.execute(_messages.delete().where(_messages.c.run_id.in_(run_ids)))
            if owner is not None and self.is_sqlite:
                # The DELETE took the one write lock: no owner or attempt changes until COMMIT.
                _check_fence(run_ids, await _owners(conn, run_ids), owner, fence)
            await conn.execute(_messages.insert(), rows)

    async def session_messages(
        self,
        session_id: str,
        *,
        last_runs: int | None = None,
        before: float | None = None,
        user_id: object = ANY_USER,
    ) -> list[MessageRecord]:
        query = (
            sa.select(_messages)
            .join(_runs, _runs.c.run_id == _messages.c.run_id)
            .where(_messages.c.session_id == session_id)
            .order_by(_runs.c.created_at, _runs.c.run_id, _messages.c.position)
        )
        same_user = (
            None
            if user_id is ANY_USER
            else _runs.c.user_id.is_(None)
            if user_id is None
            else _runs.c.user_id == user_id
        )
        if same_user is not None:
            query = query.where(same_user)
        if last_runs is not None:
            recent = sa.select(_runs.c.run_id).where(
                _runs.c.session_id == session_id, _runs.c.status == RunStatus.COMPLETED.value
            )
            if same_user is not None:  # another user's runs in the session take no place
                recent = recent.where(same_user)
            if before is not None:
                recent = recent.where(_runs.c.created_at < before)

            recent = recent.order_by(_runs.c.created_at.desc()).limit(last_runs)
            query = query.where(_messages.c.run_id.in_(recent.scalar_subquery()))
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            MessageRecord(
                session_id=row.session_id,
                run_id=row.run_id,
                position=row.position,
                role=row.role,
                content=row.content,
                tool_calls=None if row.tool_calls is None else json.loads(row.tool_calls),
                tool_call_id=row.tool_call_id,
                name=row.name,
                created_at=row.created_at,
            )
            for row in rows
        ]

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        kind: str | None = None,
        component_id: str | None = None,
        limit: int = 100,
    ) -> list[SessionRecord]:
        updated = sa.func.max(_runs.c.updated_at)
        query = sa.select(
            _runs.c.session_id,
            _runs.c.kind,
            _runs.c.component_id,
            sa.func.max(_runs.c.user_id),
            sa.func.count(),
            sa.func.min(_runs.c.created_at),
            updated,
        ).group_by(_runs.c.session_id, _runs.c.kind, _runs.c.component_id)
        if user_id is not None:
            query = query.where(_runs.c.user_id == user_id)
        if kind is not None:
            query = query.where(_runs.c.kind == kind)
        if component_id is not None:
            query = query.where(_runs.c.component_id == component_id)
        query = query.order_by(updated.desc(), _runs.c.session_id).limit(limit)
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [SessionRecord(*row) for row in rows]

    async def session_runs(self, session_id: str) -> list[RunRecord]:
        query = (
            _runs.select()
            .where(_runs.c.session_id == session_id)
            .order_by(_runs.c.created_at, _runs.c.run_id)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    async def delete_session(self, session_id: str) -> bool:
        in_session = _runs.c.session_id == session_id
        async with self._begin() as conn:
            rows = (
                await conn.execute(sa.select(_runs.c.run_id, _runs.c.status).where(in_session))
            ).all()
            if any(row[1] in _UNFINISHED for row in rows):
                raise SessionActive(session_id)
            if not rows:
                return False
            run_ids = sa.select(_runs.c.run_id).where(in_session).scalar_subquery()
            await conn.execute(_events.delete().where(_events.c.run_id.in_(run_ids)))
            await conn.execute(_messages.delete().where(_messages.c.session_id == session_id))
            await conn.execute(_runs.delete().where(in_session))
        return True

    # -- components ------------------------------------------------------------------------------

    async def register_components(
        self, keys: Sequence[tuple[str, str]], now: float
    ) -> list[ComponentState]:
        if keys:
            rows = [
                {"kind": k, "component_id": c, "registered_at": now, "updated_at": now}
                for k, c in keys
            ]
            query = self._insert(_components).on_conflict_do_nothing()
            async with self._begin() as conn:
                await conn.execute(query, rows)
        return await self.component_states()

    async def component_states(self) -> list[ComponentState]:
        async with self._connect() as conn:
            rows = (await conn.execute(_components.select())).all()
        return [_component_state(row) for row in rows]

    async def set_paused(
        self, kind: str, component_id: str, paused: bool, now: float
    ) -> ComponentState:
        values = {"kind": kind, "component_id": component_id, "paused": paused}
        query = self._insert(_components).values(**values, registered_at=now, updated_at=now)
        query = query.on_conflict_do_update(
            index_elements=["kind", "component_id"],
            set_={"paused": paused, "updated_at": now},
        )
        key = (_components.c.kind == kind) & (_components.c.component_id == component_id)
        async with self._begin() as conn:
            await conn.execute(query)
            row = (await conn.execute(_components.select().where(key))).one()
        return _component_state(row)

    async def component_stats(self, kind: str, component_id: str) -> ComponentStats:
        of_component = (_runs.c.kind == kind) & (_runs.c.component_id == component_id)
        ended = of_component & _runs.c.status.not_in(_UNFINISHED)
        duration = _runs.c.updated_at - _runs.c.created_at
        async with self._connect() as conn:
            counts = (
                await conn.execute(
                    sa.select(_runs.c.status, sa.func.count())
                    .where(of_component)
                    .group_by(_runs.c.status)
                )
            ).all()
            n, mean = (
                await conn.execute(sa.select(sa.func.count(), sa.func.avg(duration)).where(ended))
            ).one()
            p95 = None
            if n:
                # Nearest rank: the smallest duration with at least 95% of them at or below it.
                rank = max(1, -(-95 * n // 100))
                p95 = await conn.scalar(
                    sa.select(duration).where(ended).order_by(duration).offset(rank - 1).limit(1)
                )
        return ComponentStats(
            runs={status: count for status, count in counts},
            mean_duration=None if mean is None else float(mean),
            p95_duration=None if p95 is None else float(p95),
        )

    # -- retention -------------------------------------------------------------------------------

    async def delete_ended_runs(self, created_before: float, limit: int) -> int:
        old = (
            sa.select(_runs.c.run_id)
            .where(_runs.c.created_at < created_before, _runs.c.status.not_in(_UNFINISHED))
            .order_by(_runs.c.created_at)
            .limit(limit)
        )
        async with self._connect() as conn:
            candidates = [row[0] for row in (await conn.execute(old)).all()]
        if not candidates:
            return 0
        # The DELETE of the runs comes first and says which went (RETURNING): it takes SQLite's
        # write lock, PostgreSQL's row locks, and checks the status again under them, so a run
        # is deleted once (by one instance) and its events and messages with it.
        async with self._begin() as conn:
            gone = [
                row[0]
                for row in (
                    await conn.execute(
                        _runs.delete()
                        .where(_runs.c.run_id.in_(candidates), _runs.c.status.not_in(_UNFINISHED))
                        .returning(_runs.c.run_id)
                    )
                ).all()
            ]
            if gone:
                await conn.execute(_events.delete().where(_events.c.run_id.in_(gone)))
                await conn.execute(_messages.delete().where(_messages.c.run_id.in_(gone)))
        return len(gone)

    async def take_lease(
        self, name: str, holder: str, now: float, until: float, *, replacing: str | None = None
    ) -> bool:
        row = {"name": name, "holder": holder, "expires_at": until}
        # Insert, or take over a lease that is ours or has expired; a lease another holder
        # holds is left alone (the WHERE of ON CONFLICT DO UPDATE). One statement: on
        # PostgreSQL two takers wait for each other on the row, on SQLite on the write lock.
        query = (
            self._insert(_leases)
            .values(**row)
            .on_conflict_do_update(
                index_elements=["name"],
                set_={"holder": holder, "expires_at": until},
                where=(_leases.c.holder == holder)
                | (_leases.c.expires_at < now)
                | (_leases.c.holder == replacing if replacing is not None else sa.false()),
            )
        )
        async with self._begin() as conn:
            await conn.execute(query)
            found = await conn.scalar(sa.select(_leases.c.holder).where(_leases.c.name == name))
        return bool(found == holder)

    async def read_lease(self, name: str) -> tuple[str, float] | None:
        query = sa.select(_leases.c.holder, _leases.c.expires_at).where(_leases.c.name == name)
        async with self._connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (row[0], row[1])

    # -- tasks -------------------------------------------------------------------------------------

    async def create_task(self, task: TaskRecord) -> None:
        try:
            async with self._begin() as conn:
                await conn.execute(_tasks.insert().values(**_task_values(task)))
        except WriteConflict as exc:
            raise TaskAlreadyExists(task.task_id) from exc

    async def get_task(self, task_id: str) -> TaskRecord | None:
        async with self._connect() as conn:
            row = (await conn.execute(_tasks.select().where(_tasks.c.task_id == task_id))).first()
        return None if row is None else _task(row)

    async def list_tasks(
        self,
        *,
        kind: str | None = None,
        component_id: str | None = None,
        active: bool | None = None,
        tag: str | None = None,
        user_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[TaskRecord]:
        query = _tasks.select()
        if kind is not None:
            query = query.where(_tasks.c.kind == kind)
        if component_id is not None:
            query = query.where(_tasks.c.component_id == component_id)
        if active is not None:
            query = query.where(_tasks.c.active == active)
        if user_id is not None:
            query = query.where(_tasks.c.user_id == user_id)
        if tag is not None:
            # Tags are a JSON list (ASCII escapes): a tag is its JSON string inside it.
            quoted = json.dumps(tag).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(_tasks.c.tags.like(f"%{quoted}%", escape="\\"))
        query = query.order_by(_tasks.c.created_at, _tasks.c.task_id).offset(offset).limit(limit)
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_task(row) for row in rows]

    async def update_task(self, task: TaskRecord) -> TaskRecord | None:
        values = _task_values(task)
        for counter in (
            "task_id",
            "created_at",
            "fired",
            "skipped",
            "last_fired_at",
            "last_run_id",
        ):
            values.pop(counter)
        values.update(claimed_by=None, claim_until=None)
        query = _tasks.update().where(_tasks.c.task_id == task.task_id).values(**values)
        async with self._begin() as conn:
            result = await conn.execute(query)
            if not result.rowcount:
                return None
            row = (
                await conn.execute(_tasks.select().where(_tasks.c.task_id == task.task_id))
            ).one()
        return _task(row)

    async def delete_task(self, task_id: str) -> bool:
        async with self._begin() as conn:
            result = await conn.execute(_tasks.delete().where(_tasks.c.task_id == task_id))
        return bool(result.rowcount)

    async def claim_tasks(
        self, instance_id: str, now: float, until: float, limit: int
    ) -> list[TaskRecord]:
        due = (
            sa.select(_tasks.c.task_id)
            .where(
                _tasks.c.active.is_(True),
                sa.or_(_tasks.c.next_fire_at <= now, _tasks.c.queued_at.is_not(None)),
                sa.or_(_tasks.c.claim_until.is_(None), _tasks.c.claim_until < now),
            )
            .order_by(_tasks.c.next_fire_at)
            .limit(limit)
        )
        if not self.is_sqlite:
            # Two claimers skip each other's rows instead of waiting; each row's WHERE is
            # checked again once it is locked, so a task just claimed elsewhere is left out.
            due = due.with_for_update(skip_locked=True)
        # On SQLite the UPDATE takes the one write lock before it reads: claims take turns.
        query = (
            _tasks.update()
            .where(_tasks.c.task_id.in_(due.scalar_subquery()))
            .values(claimed_by=instance_id, claim_until=until)
            .returning(*_tasks.c)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(query)).all()
        return sorted((_task(row) for row in rows), key=lambda t: t.next_fire_at or 0.0)

    async def release_tasks(self, instance_id: str, releases: Sequence[TaskRelease]) -> None:
        if not releases:
            return
        number = _tasks.c.next_fire_at.type
        query = (
            _tasks.update()
            .where(
                _tasks.c.task_id == sa.bindparam("b_task_id"),
                _tasks.c.claimed_by == instance_id,
                _tasks.c.next_fire_at.is_not_distinct_from(sa.bindparam("b_due", type_=number)),
            )
            .values(
                next_fire_at=sa.bindparam("b_next", type_=number),
                queued_at=sa.bindparam("b_queued", type_=number),
                claimed_by=None,
                claim_until=None,
                fired=_tasks.c.fired + sa.bindparam("b_fired", type_=sa.Integer),
                skipped=_tasks.c.skipped + sa.bindparam("b_skipped", type_=sa.Integer),
                last_fired_at=sa.func.coalesce(
                    sa.bindparam("b_last_fired_at", type_=number), _tasks.c.last_fired_at
                ),
                last_run_id=sa.func.coalesce(
                    sa.bindparam("b_last_run_id", type_=sa.String), _tasks.c.last_run_id
                ),
            )
        )
        rows = [
            {
                "b_task_id": r.task_id,
                "b_due": r.due,
                "b_next": r.next_fire_at,
                "b_queued": r.queued_at,
                "b_fired": r.fired,
                "b_skipped": r.skipped,
                "b_last_fired_at": r.last_fired_at,
                "b_last_run_id": r.last_run_id,
            }
            for r in releases
        ]
        async with self._begin() as conn:
            await conn.execute(query, rows)

    async def next_fire_time(self, after: float) -> float | None:
        query = sa.select(sa.func.min(_tasks.c.next_fire_at)).where(
            _tasks.c.active.is_(True), _tasks.c.next_fire_at > after
        )
        async with self._connect() as conn:
            found = await conn.scalar(query)
        return None if found is None else float(found)

    async def active_task_runs(self, task_ids: Sequence[str]) -> dict[str, list[str]]:
        if not task_ids:
            return {}
        query = (
            sa.select(_runs.c.task_id, _runs.c.run_id)
            .where(_runs.c.task_id.in_(list(task_ids)), _runs.c.status.in_(_ACTIVE))
            .order_by(_runs.c.created_at, _runs.c.run_id)
        )
        found: dict[str, list[str]] = {}
        async with self._connect() as conn:
            for task_id, run_id in (await conn.execute(query)).all():
                found.setdefault(task_id, []).append(run_id)
        return found

    async def task_runs(
        self, task_id: str, *, status: RunStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[RunRecord]:
        query = _runs.select().where(_runs.c.task_id == task_id)
        if status is not None:
            query = query.where(_runs.c.status == status.value)
        query = (
            query.order_by(_runs.c.created_at.desc(), _runs.c.run_id).offset(offset).limit(limit)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(row) for row in rows]

    # -- idempotency keys ------------------------------------------------------------------------

    async def remember_key(self, entry: IdempotencyKey, expired_before: float) -> IdempotencyKey:
        values = dict(entry.__dict__)
        # Insert, or replace an expired entry; a live one is left alone (the WHERE of ON
        # CONFLICT DO UPDATE), and read back in the same transaction. On PostgreSQL a second
        # insert of the key waits for the first one's transaction, then finds its row; on
        # SQLite the write lock orders them.
        query = (
            self._insert(_keys)
            .values(**values)
            .on_conflict_do_update(
                index_elements=list(_KEY_COLUMNS),
                set_={k: v for k, v in values.items() if k not in _KEY_COLUMNS},
                where=_keys.c.created_at < expired_before,
            )
        )
        async with self._begin() as conn:
            await conn.execute(query)
            row = (await conn.execute(_keys.select().where(_key_of(entry)))).one()
        return _idempotency_key(row)

    async def find_key(
        self, key: str, kind: str, component_id: str, user_scope: str
    ) -> IdempotencyKey | None:
        where = _key_is(key, kind, component_id, user_scope)
        async with self._connect() as conn:
            row = (await conn.execute(_keys.select().where(where))).first()
        return None if row is None else _idempotency_key(row)

    async def forget_key(self, entry: IdempotencyKey) -> bool:
        query = _keys.delete().where(_key_of(entry), _keys.c.token == entry.token)
        async with self._begin() as conn:
            return bool((await conn.execute(query)).rowcount == 1)

    async def delete_expired_keys(self, created_before: float, limit: int) -> int:
        expired = _keys.c.created_at < created_before
        columns = [_keys.c[name] for name in _KEY_COLUMNS]
        oldest = sa.select(*columns).where(expired).order_by(_keys.c.created_at).limit(limit)
        # The age is checked again by the DELETE itself: a key remembered anew meanwhile (a
        # replaced expired entry, on PostgreSQL) stays.
        query = _keys.delete().where(sa.tuple_(*columns).in_(oldest), expired)
        async with self._begin() as conn:
            return int((await conn.execute(query)).rowcount)


def _task_values(task: TaskRecord) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "kind": task.kind,
        "component_id": task.component_id,
        "message": task.message,
        "schedule": task.schedule.to_json(),
        "timeout": task.timeout,
        "retry_policy": None if task.retry_policy is None else task.retry_policy.to_json(),
        "overlap_policy": task.overlap_policy,
        "session_policy": task.session_policy,
        "session_id": task.session_id,
        "catchup": task.catchup,
        "catchup_window": task.catchup_window,
        "active": task.active,
        "description": task.description,
        "tags": json.dumps(list(task.tags)),
        "user_id": task.user_id,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "next_fire_at": task.next_fire_at,
        "queued_at": task.queued_at,
        "last_fired_at": task.last_fired_at,
        "last_run_id": task.last_run_id,
        "fired": task.fired,
        "skipped": task.skipped,
    }


def _task(row: Any) -> TaskRecord:
    # A claim reads the due tasks' rows every time they fire: their schedules, policies and
    # tags are parsed once each (they are immutable).
    return TaskRecord(
        task_id=row.task_id,
        kind=row.kind,
        component_id=row.component_id,
        message=row.message,
        schedule=_schedule(row.schedule),
        created_at=row.created_at,
        updated_at=row.updated_at,
        timeout=row.timeout,
        retry_policy=None if row.retry_policy is None else _retry_policy(row.retry_policy),
        overlap_policy=row.overlap_policy,
        session_policy=row.session_policy,
        session_id=row.session_id,
        catchup=row.catchup,
        catchup_window=row.catchup_window,
        active=bool(row.active),
        description=row.description,
        tags=_tags(row.tags),
        user_id=row.user_id,
        next_fire_at=row.next_fire_at,
        queued_at=row.queued_at,
        last_fired_at=row.last_fired_at,
        last_run_id=row.last_run_id,
        fired=row.fired,
        skipped=row.skipped,
        claimed_by=row.claimed_by,
        claim_until=row.claim_until,
    )


_schedule = functools.lru_cache(maxsize=4096)(Schedule.from_json)
_retry_policy = functools.lru_cache(maxsize=256)(RetryPolicy.parse)


@functools.lru_cache(maxsize=1024)
def _tags(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _component_state(row: Any) -> ComponentState:
    return ComponentState(
        kind=row.kind,
        component_id=row.component_id,
        paused=bool(row.paused),
        registered_at=row.registered_at,
        updated_at=row.updated_at,
    )


def _key_is(*values: str) -> Any:
    """The condition that a row is the entry of the key (key, kind, component_id, user_scope)."""
    return sa.and_(
        *(_keys.c[name] == value for name, value in zip(_KEY_COLUMNS, values, strict=True))
    )


def _key_of(entry: IdempotencyKey) -> Any:
    """The condition that a row is the entry of ``entry``'s key."""
    return _key_is(*(getattr(entry, name) for name in _KEY_COLUMNS))


def _idempotency_key(row: Any) -> IdempotencyKey:
    return IdempotencyKey(**{name: row._mapping[name] for name in _keys.c.keys()})


def _create_all(connection: sa.Connection) -> None:
    SQLModel.metadata.create_all(connection, tables=_TABLES)


def _owned_by(owner: str) -> Any:
    """The condition that a run row is ``owner``'s, or nobody's and not QUEUED (a queued run
    waits for its claim: its former owner is fenced out)."""
    unowned = sa.and_(_runs.c.instance_id.is_(None), _runs.c.status != _QUEUED)
    return sa.or_(_runs.c.instance_id == owner, unowned)


async def _owners(
    conn: AsyncConnection, run_ids: Sequence[str]
) -> dict[str, tuple[str | None, int]]:
    """The owner (``_QUEUED`` for a queued run) and attempt of each run of ``run_ids``
    (sorted) that exists; on PostgreSQL their rows stay locked, in that order, until the
    transaction ends."""
    if not run_ids:
        return {}
    owner = sa.case((_runs.c.status == _QUEUED, sa.literal(_QUEUED)), else_=_runs.c.instance_id)
    query = (
        sa.select(_runs.c.run_id, owner, _runs.c.attempt)
        .where(_runs.c.run_id.in_(run_ids))
        .order_by(_runs.c.run_id)
        .with_for_update(key_share=True)
    )
    return {row[0]: (row[1], row[2]) for row in (await conn.execute(query)).all()}


def _check_fence(
    run_ids: Sequence[str],
    owners: Mapping[str, tuple[str | None, int]],
    owner: str,
    attempts: Mapping[str, int],
) -> None:
    """WriteConflict unless ``owner`` owns (or nobody owns) every run of ``run_ids``, each at
    its attempt in ``attempts`` (when there)."""
    lost = [r for r in run_ids if not _holds(owners.get(r), owner, attempts.get(r))]
    if lost:
        raise WriteConflict(
            f"{len(lost)} run(s) of this commit are owned by another instance or attempt"
        )


def _holds(found: tuple[str | None, int] | None, owner: str, attempt: int | None) -> bool:
    """Whether a run row with ``found`` (its owner and attempt) may take ``owner``'s writes
    made by ``attempt`` (None: any attempt)."""
    if found is None or found[0] not in (owner, None):
        return False
    return attempt is None or found[1] == attempt


async def _last_event(conn: AsyncConnection, run_id: str) -> Event | None:
    query = (
        sa.select(
            _events.c.event_index,
            _events.c.name,
            _events.c.data,
            _events.c.terminal,
            _events.c.layout,
        )
        .where(_events.c.run_id == run_id)
        .order_by(_events.c.event_index.desc())
        .limit(1)
    )
    row = (await conn.execute(query)).first()
    return None if row is None else eventrows.row_events(*row)[-1]


def _top_index(run_id: Any) -> Any:
    """The highest event index of the run ``run_id`` (a column or a value), as a scalar
    subquery: the end of the run's last row, one descent of the primary key."""
    return (
        sa.select(sa.func.coalesce(_events.c.last_index, _events.c.event_index))
        .where(_events.c.run_id == run_id)
        .order_by(_events.c.event_index.desc())
        .limit(1)
        .scalar_subquery()
    )


#: PostgreSQL SQLSTATE classes: data exception, integrity violation; and those worth a retry
#: (connection exception, insufficient resources, operator intervention, serialization failure).
_DATA, _INTEGRITY = "22", "23"
_TRANSIENT = ("08", "53", "57", "40")


def _translate(exc: Exception) -> Exception:
    """The store's error for a driver's: WriteConflict, DataRejected or StoreUnavailable.

    SQLite refuses text with lone surrogates before any SQL runs (UnicodeEncodeError);
    PostgreSQL refuses NUL characters and surrogates (SQLSTATE class 22). A lost connection, a
    locked or full database and a server restarting are worth a retry; anything else the store
    cannot judge is passed on as it is.
    """
    if isinstance(exc, AgentOSError):
        return exc
    if isinstance(exc, IntegrityError):
        return WriteConflict("an event index or run id is taken by another writer")
    if isinstance(exc, UnicodeError):
        return DataRejected("the database cannot store this text (it holds lone surrogates)")
    if isinstance(exc, (OSError, TimeoutError)):
        return StoreUnavailable("the database cannot be reached")
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        state = str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")
        if state.startswith(_INTEGRITY):
            return WriteConflict("an event index or run id is taken by another writer")
        if state.startswith(_DATA) or isinstance(orig, sqlite3.DataError):
            return DataRejected("the database refuses a value of this request")
        if (
            exc.connection_invalidated
            or state.startswith(_TRANSIENT)
            or isinstance(orig, (sqlite3.OperationalError, sqlite3.InterfaceError))
            or (not state and isinstance(orig, Exception) and _is_connection_error(orig))
        ):
            return StoreUnavailable("the database cannot commit now")
    return exc


def _is_connection_error(orig: Exception) -> bool:
    cause = orig.__cause__ or orig
    name = type(cause).__name__
    return isinstance(cause, (OSError, TimeoutError)) or name in (
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "InternalClientError",
        "ConnectionFailureError",
        "CannotConnectNowError",
    )


_EVENT_ROW = f"({', '.join('?' * len(eventrows.COLUMNS))})"
_SQLITE_INSERT_EVENTS = (
    f"INSERT INTO agentos_events ({', '.join(eventrows.COLUMNS)}) VALUES {_EVENT_ROW}"
)
#: The same INSERT of 32, 16, 8, 4, 2 and 1 rows at once (224 parameters at most: SQLite
#: allows 999 before 3.32).
_SQLITE_INSERT_EVENT_ROWS = {
    n: f"INSERT INTO agentos_events ({', '.join(eventrows.COLUMNS)}) VALUES "
    + ", ".join([_EVENT_ROW] * n)
    for n in (32, 16, 8, 4, 2, 1)
}
#: Rows per overlap check on SQLite (three parameters each; a power of two).
_OVERLAPS_MAX_ROWS = 256


def _overlap() -> WriteConflict:
    """The error of a row that overlaps another of its run: a new one each time (one raised
    again and again would gather every raise's traceback, and keep their frames alive)."""
    return WriteConflict("an event index is taken by another writer")


_POSTGRES_OVERLAPS = sa.text(eventrows.POSTGRES_OVERLAPS)
#: Each run's transaction-scoped advisory lock, taken in the order of ``:run_ids`` (sorted).
_POSTGRES_LOCK_RUNS = sa.text(
    "SELECT pg_advisory_xact_lock(hashtextextended(run_id, 0))"
    " FROM unnest(CAST(:run_ids AS VARCHAR[])) AS run_id"
)
_READ_WINDOW = sa.text(eventrows.READ_WINDOW)


def _sqlite_check_overlaps(db: sqlite3.Connection, rows: Sequence[eventrows.Row]) -> None:
    """WriteConflict when one of the just inserted ``rows`` overlaps another row of its run."""
    for check, params in _sqlite_overlap_checks(rows):
        if db.execute(check, params).fetchone():
            raise _overlap()


def _sqlite_overlap_checks(rows: Sequence[eventrows.Row]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """The statements and parameters that check ``rows`` for overlaps on SQLite.

    ``_OVERLAPS_MAX_ROWS`` rows at a time, each part padded to a power of two by repeating its
    last row (checked twice, to the same answer): nine statements serve every size, and stay
    in sqlite3's cache of prepared statements."""
    for start in range(0, len(rows), _OVERLAPS_MAX_ROWS):
        part = [
            (run_id, first, first if last is None else last)
            for run_id, first, _, _, _, last, _ in rows[start : start + _OVERLAPS_MAX_ROWS]
        ]
        size = 1 << (len(part) - 1).bit_length()
        part += [part[-1]] * (size - len(part))
        yield eventrows.sqlite_overlaps(size), tuple(chain.from_iterable(part))


def _sqlite_insert_events(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """INSERT the rows ``rows`` (``eventrows.py``), 32 to a statement.

    ``executemany`` runs its statement once per row: a fifth of a row's cost (2.9 against
    2.3 µs in groups of 2,000, 3.2 against 2.5 in groups of 200: the events table alone, WAL,
    ``synchronous=NORMAL``) is that per-statement work, which one statement of many rows pays
    once. A short group (a run's
    first events, most groups of a few concurrent runs) is as fast either way and keeps
    ``executemany``; the rest of a long one goes in 16, 8, 4, 2 and 1 rows, so six statements
    serve every length. The same rows either way, and a taken index fails the group as before.
    """
    if len(rows) < 16:
        db.executemany(_SQLITE_INSERT_EVENTS, rows)
        return
    start, end = 0, len(rows)
    for size in (32, 16, 8, 4, 2, 1):
        statement = _SQLITE_INSERT_EVENT_ROWS[size]
        while end - start >= size:
            db.execute(statement, list(chain.from_iterable(rows[start : start + size])))
            start += size


class _SQLiteGroup:
    """The statements of one group commit on SQLite, their rows made on the event loop and
    :meth:`run` in the connection's thread."""

    def __init__(
        self,
        events: Sequence[tuple[str, Event]],
        updates: Sequence[RunUpdate],
        owner: str | None,
        attempts: Mapping[str, int],
        runs: Sequence[RunRecord],
    ) -> None:
        self.runs = [_sqlite_run_row(run) for run in runs]
        self.events = eventrows.event_rows(events)
        # One statement per set of changed columns, executed for all runs that share it.
        shapes: dict[tuple[tuple[str, ...], bool], list[dict[str, Any]]] = {}
        for update in updates:
            values = update.changes()
            if values.pop("requeue", False):
                # Back to the queue: nobody owns it (so its former owner is fenced out).
                values.update(instance_id=None, lease_until=None, started_at=None)
            if "status" in values:
                values["status"] = values["status"].value
            shape = tuple(sorted(key for key in values if key != "run_id"))
            values["owner"] = owner
            attempt = attempts.get(update.run_id)
            if attempt is not None:
                values["fence_attempt"] = attempt
            shapes.setdefault((shape, attempt is not None), []).append(values)
        self.updates = [
            (_sqlite_update(shape, owned=owner is not None, at_attempt=at_attempt), params)
            for (shape, at_attempt), params in shapes.items()
        ]
        self.owner = owner
        self.attempts = attempts
        self.fenced = sorted({row[0] for row in self.events}) if owner is not None else []
        #: Rows written and characters of text in them: what the group costs SQLite.
        self.rows = len(self.runs) + len(self.events) + len(updates)
        self.chars = sum([len(row[4]) for row in self.events]) + sum(
            len(value)
            for row in (*self.runs, *(p.values() for _, group in self.updates for p in group))
            for value in row
            if type(value) is str
        )

    def run(self, db: sqlite3.Connection) -> None:
        """BEGIN, the writes, the fence check, COMMIT (ROLLBACK on any error)."""
        db.execute("BEGIN")
        try:
            if self.runs:
                db.executemany(_SQLITE_INSERT_RUNS, self.runs)
            if self.events:
                _sqlite_insert_events(db, self.events)
                _sqlite_check_overlaps(db, self.events)
            if self.fenced and self.owner is not None:
                # The INSERT took the database's one write lock (a SELECT first would run before
                # the transaction had taken it), so no owner can change until COMMIT. Before the
                # updates: one of them may hand the run back to the queue.
                query = _SQLITE_OWNERS.format(", ".join("?" * len(self.fenced)))
                found = db.execute(query, self.fenced).fetchall()
                owners = {run_id: (owner, attempt) for run_id, owner, attempt in found}
                _check_fence(self.fenced, owners, self.owner, self.attempts)
            for statement, params in self.updates:
                db.executemany(statement, params)
            db.commit()
        except BaseException:
            db.rollback()
            raise


class _RollbackOnClose(sqlite3.Connection):
    """The driver's SQLite connections: closing one rolls back the transaction it has open.

    A task cancelled while its statement runs in aiosqlite's thread (a shutdown cancelling the
    claimer, a client gone mid-request, a timeout) gets its connection invalidated and closed
    by SQLAlchemy, while the statement's cursor is still referenced (by the traceback). SQLite
    closes a connection with a statement alive only once that statement is freed, and until
    then keeps its transaction open: after an UPDATE ... RETURNING, with the write lock. Every
    other writer, a restart on the file too, got "database is locked" until the cursor was
    freed: never, while a cancelled task kept its exception. A ROLLBACK ends the transaction
    (aborting such statements) and lets the lock go at once.
    """

    def close(self) -> None:
        # Closed already, or cannot roll back: closing ends the transaction as it can.
        with contextlib.suppress(sqlite3.Error):
            if self.in_transaction:
                self.rollback()
        super().close()


#: Groups committed on the event loop in a row before one goes through the driver's thread,
#: whose connection checkpoints the WAL when it has grown (the loop's connection never does).
_INLINE_STREAK = 100

_SQLITE_RUN_COLUMNS = (*(f.name for f in fields(RunRecord)), "cancel_requested")
_SQLITE_INSERT_RUNS = (
    f"INSERT INTO {_runs.name} ({', '.join(_SQLITE_RUN_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_SQLITE_RUN_COLUMNS))})"
)
#: The owner of each run (``QUEUED`` for a queued run, which nobody may write: see _owners)
#: and its attempt.
_SQLITE_OWNERS = (
    f"SELECT run_id, CASE WHEN status = '{_QUEUED}' THEN '{_QUEUED}' ELSE instance_id END, "
    f"attempt FROM {_runs.name} WHERE run_id IN ({{}})"
)


#: Ids per IN list of one statement (well within SQLite's and asyncpg's parameter limits).
_IN_LIST_MAX = 500

#: Past the highest event index there can be (the column is a 32-bit INTEGER on PostgreSQL).
_INDEX_END = 2**31

#: Reads of at most this many events are made on the event loop (see SQLStore._read_inline).
_INLINE_READ_MAX_ROWS = 16

_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))
_SQLITE_SELECT_RUN = f"SELECT {', '.join(_RUN_FIELDS)} FROM {_runs.name} WHERE run_id = ?"
_SQLITE_EVENT_COUNT = (
    f"SELECT coalesce(last_index, event_index) FROM {_events.name} WHERE run_id = ?"
    " ORDER BY event_index DESC LIMIT 1"
)


class _NotRead(enum.Enum):
    NOT_READ = "not read"


#: What SQLStore._read_inline returns when the read has to go through the driver's thread.
NOT_READ: Final = _NotRead.NOT_READ


def _sqlite_get_run(db: sqlite3.Connection, *, run_id: str) -> RunRecord | None:
    """SQLStore.get_run's reads, on a sqlite3 connection."""
    row = db.execute(_SQLITE_SELECT_RUN, (run_id,)).fetchone()
    if row is None:
        return None
    values = dict(zip(_RUN_FIELDS, row, strict=True))
    record = RunRecord(**{**values, "status": RunStatus(values["status"])})
    if not record.status.ended:
        top = db.execute(_SQLITE_EVENT_COUNT, (run_id,)).fetchone()
        record = replace(record, event_count=0 if top is None else top[0] + 1)
    return record


def _sqlite_read_events(
    db: sqlite3.Connection, *, run_id: str, start: int, limit: int
) -> list[Event]:
    """SQLStore.read_events's read, on a sqlite3 connection."""
    events: list[Event] = []
    lo: int | None = start
    while lo is not None and lo < _INDEX_END and len(events) < limit:
        hi = min(lo + limit - len(events), _INDEX_END)
        rows = db.execute(eventrows.READ_WINDOW, {"run_id": run_id, "lo": lo, "hi": hi})
        found, lo = eventrows.read_window(rows, lo, hi)
        events += found
    return events


def _sqlite_run_row(run: RunRecord) -> tuple[Any, ...]:
    values = {**run.__dict__, "status": run.status.value, "cancel_requested": False}
    return tuple(values[column] for column in _SQLITE_RUN_COLUMNS)


@functools.cache
def _sqlite_update(shape: tuple[str, ...], *, owned: bool, at_attempt: bool = False) -> str:
    """The UPDATE of the columns ``shape`` (RunUpdate's field names) of the run ``:run_id``,
    only while ``:owner`` owns it (or nobody does and it is not QUEUED) when ``owned``, and
    only while it is at attempt ``:fence_attempt`` when ``at_attempt``."""
    columns = ", ".join(f"{column} = :{column}" for column in shape)
    statement = f"UPDATE {_runs.name} SET {columns} WHERE run_id = :run_id"
    if owned:
        statement += (
            f" AND (instance_id = :owner OR (instance_id IS NULL AND status != '{_QUEUED}'))"
        )
    if at_attempt:
        statement += " AND attempt = :fence_attempt"
    return statement


def _sqlite_store(settings: Settings) -> SQLStore:
    database = settings.database
    return SQLStore(
        database.url,
        timeout=database.timeout,
        auto_upgrade=database.auto_upgrade,
        inline_commit_max_rows=database.inline_commit_max_rows,
        inline_commit_max_chars=database.inline_commit_max_chars,
        inline_read_max_bytes=database.inline_read_max_bytes,
    )


register_backend("sqlite", _sqlite_store)
