"""SQLite's writes of the group commit, one thread hop per transaction.

Through SQLAlchemy and aiosqlite, each statement of a transaction is a round trip between the
event loop and the driver's thread (a connection from the pool, BEGIN, the events insert, each
run update, the fence's SELECT, COMMIT, the pool's reset: a dozen trips for one group commit).
Each trip waits for the loop to be free and for the thread to get the GIL back; while the loop
was busy with a model's stream and an HTTP response, one group commit took 4 to 8 ms instead of 1,
and every event of every run waits for the group ahead of it (``bench/model_relay.py``,
``bench/NOTES.md``). The writer runs a whole transaction as one call in its own thread, on its
own connection::

    committer ── commit() ──▶ writer thread: BEGIN IMMEDIATE
                                             INSERT new runs; INSERT events; UPDATE runs
                                             SELECT owners (the fence); COMMIT
              ◀── one call_soon_threadsafe ──┘

The SQL, the fence and the errors are those of ``SQLStore.commit`` (``sql.py``): a taken key is
:class:`WriteConflict`, text SQLite cannot hold is :class:`DataRejected`, a locked or unreachable
database is :class:`StoreUnavailable`. Session messages go through the same thread, so a run's
messages never wait on SQLite's lock behind the group commit (or the other way round). The writer
serves a database file; an in-memory database exists only in the engine's one connection, so its
writes stay on the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agentos.errors import DataRejected, StoreUnavailable, WriteConflict
from agentos.events import Event
from agentos.records import RunRecord, RunUpdate

__all__ = ["SQLiteWriter"]

_T = TypeVar("_T")

_INSERT_EVENTS = (
    "INSERT INTO agentos_events (run_id, event_index, name, terminal, data) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_MESSAGES = (
    "INSERT INTO agentos_messages (run_id, position, session_id, role, content, tool_calls, "
    "tool_call_id, name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_OWNED = " AND (instance_id = ? OR instance_id IS NULL)"


class SQLiteWriter:
    """One connection to a SQLite file and the one thread that uses it."""

    def __init__(self, path: str, *, timeout: float) -> None:
        self.path = path
        #: Seconds to wait for another connection's write lock (SQLite's busy timeout).
        self.timeout = timeout
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="agentos-sqlite-writer"
        )
        self._conn: sqlite3.Connection | None = None  # used only in the writer thread
        self._closed = False

    async def open(self) -> None:
        await self._call(self._connection)

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._call(self._disconnect)
        finally:
            self._closed = True
            self._thread.shutdown(wait=False)

    async def commit(
        self,
        events: Sequence[tuple[str, Event]],
        updates: Sequence[RunUpdate],
        *,
        owner: str | None,
        runs: Sequence[RunRecord],
    ) -> None:
        """New runs, events and run updates in one transaction (see ``SQLStore.commit``)."""
        new_runs = [{**r.__dict__, "status": r.status.value} for r in runs]
        rows = [(run_id, e.index, e.name, e.terminal, e.data) for run_id, e in events]
        fenced = sorted({run_id for run_id, _ in events})
        # One statement per set of changed columns, run for every update of that shape.
        shapes: dict[tuple[str, ...], list[list[Any]]] = {}
        for update in updates:
            values = update.changes()
            run_id = values.pop("run_id")
            if "status" in values:
                values["status"] = values["status"].value
            shape = tuple(sorted(values))
            params = [values[k] for k in shape] + [run_id]
            if owner is not None:
                params.append(owner)
            shapes.setdefault(shape, []).append(params)

        def write(conn: sqlite3.Connection) -> None:
            for values in new_runs:
                columns = ", ".join(values)
                marks = ", ".join("?" * len(values))
                conn.execute(
                    f"INSERT INTO agentos_runs ({columns}) VALUES ({marks})", list(values.values())
                )
            if rows:
                conn.executemany(_INSERT_EVENTS, rows)
            for shape, params_list in shapes.items():
                assignments = ", ".join(f"{column} = ?" for column in shape)
                where = "run_id = ?" + (_OWNED if owner is not None else "")
                conn.executemany(
                    f"UPDATE agentos_runs SET {assignments} WHERE {where}", params_list
                )
            if owner is not None and fenced:
                # The INSERT took the database's one write lock: no owner changes until COMMIT.
                marks = ", ".join("?" * len(fenced))
                found = dict(
                    conn.execute(
                        f"SELECT run_id, instance_id FROM agentos_runs WHERE run_id IN ({marks})",
                        fenced,
                    ).fetchall()
                )
                lost = [r for r in fenced if r not in found or found[r] not in (owner, None)]
                if lost:
                    raise WriteConflict(
                        f"{len(lost)} run(s) of this commit are owned by another instance"
                    )

        await self._call(lambda: self._transaction(write))

    async def add_messages(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert session messages (the columns of ``_INSERT_MESSAGES``) in one transaction."""

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(_INSERT_MESSAGES, rows)

        await self._call(lambda: self._transaction(write))

    # -- in the writer thread ---------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _transaction(self, write: Callable[[sqlite3.Connection], None]) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            write(conn)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                self._disconnect()  # unusable: the next transaction opens a new connection
            raise

    # -- from the event loop ----------------------------------------------------------------------

    async def _call(self, fn: Callable[[], _T]) -> _T:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn)
        except Exception as exc:
            raise _translate(exc) from exc


def _translate(exc: Exception) -> Exception:
    """The store's error for sqlite3's (as ``sql._translate`` judges them through SQLAlchemy)."""
    if isinstance(exc, (WriteConflict, DataRejected, StoreUnavailable)):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return WriteConflict("an event index or run id is taken by another writer")
    if isinstance(exc, UnicodeError):
        return DataRejected("the database cannot store this text (it holds lone surrogates)")
    if isinstance(exc, sqlite3.DataError):
        return DataRejected("the database refuses a value of this request")
    if isinstance(exc, (sqlite3.OperationalError, sqlite3.InterfaceError, OSError, TimeoutError)):
        return StoreUnavailable("the database cannot commit now")
    return exc
