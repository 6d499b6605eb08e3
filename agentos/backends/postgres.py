"""The PostgreSQL backend: the SQL store plus LISTEN/NOTIFY between instances.

A client may follow a run through any instance. The owner's followers wait on the run's buffer;
an instance that does not hold the run tails it from the database (``RunStream``) and, between
reads, waits on the run's signal (``backends/base.py``). Here, the owner's commit sends a
notification in the same transaction, and every instance listens::

    owner: group commit ─ INSERT events, pg_notify('agentos_events', '<run_id>:<last>') ─ COMMIT
                                                                                          │
    every instance: ONE asyncpg connection, LISTEN agentos_events, agentos_control ◀──────┘
          │  (PostgreSQL delivers a notification only once its transaction has committed,
          │   so a woken follower always finds the events it was told about)
          └─▶ Notifier.wake(run_id) ──▶ followers of run_id read the database again

The poll stays as a safety net (a notification lost while reconnecting costs one poll interval,
and every follower is woken once the connection is back).

The ``agentos_control`` channel carries requests to a run's owner (``cancel:<run_id>``), so a
cancel made on another instance reaches the owner at once rather than at its next lease renewal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from agentos.backends.base import CancelFn, Notifier, register_backend
from agentos.backends.sql import SQLStore
from agentos.errors import DatabaseUnsupported
from agentos.events import Event
from agentos.settings import DatabaseSettings, Settings

__all__ = ["PostgresNotifier", "PostgresStore"]

logger = logging.getLogger("agentos.notify")

#: Channel announcing committed events: payload ``<run_id>:<last event_index>``.
EVENTS_CHANNEL = "agentos_events"
#: Channel for requests to a run's owner: payload ``cancel:<run_id>``.
CONTROL_CHANNEL = "agentos_control"
# Any constant shared by all instances: serializes schema creation and upgrades.
_SCHEMA_LOCK = 0x6167_656E_746F_73

#: The oldest PostgreSQL server agentos runs on (``server_version_num``).
MIN_SERVER_VERSION = 110000


class PostgresStore(SQLStore):
    """:class:`SQLStore` on PostgreSQL: schema creation in turns, NOTIFY in each commit."""

    schemes = ("postgresql",)

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DatabaseSettings.timeout,
        command_timeout: float = DatabaseSettings.command_timeout,
        auto_upgrade: bool = DatabaseSettings.auto_upgrade,
        idle_transaction_timeout: float | None = None,
    ) -> None:
        super().__init__(url, timeout=timeout, auto_upgrade=auto_upgrade)
        #: Seconds any one statement may take before it fails (StoreUnavailable).
        self.command_timeout = command_timeout
        #: Seconds the server lets a transaction of ours sit idle before it ends it (None: no
        #: limit). An instance paused inside a commit (SIGSTOP, a VM frozen, a long GC pause)
        #: holds its runs' row locks, and the reaper of another instance would wait on them for
        #: as long as the pause lasts: its runs could not be taken over.
        self.idle_transaction_timeout = idle_transaction_timeout

    @property
    def dsn(self) -> str:
        """The URL without SQLAlchemy's driver name, for a plain driver connection."""
        url = make_url(self.url)
        return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=False)

    def _engine_options(self) -> dict[str, Any]:
        # asyncpg: bounded connects, and no statement waits for ever on a hung server.
        connect_args: dict[str, Any] = {
            "timeout": self.timeout,
            "command_timeout": self.command_timeout,
        }
        if self.idle_transaction_timeout:
            milliseconds = max(1, round(self.idle_transaction_timeout * 1000))
            connect_args["server_settings"] = {
                "idle_in_transaction_session_timeout": str(milliseconds)
            }
        return {"pool_timeout": self.timeout, "connect_args": connect_args}

    def notifier(self, settings: Settings) -> Notifier:
        """LISTEN/NOTIFY wake-ups unless ``tail_notify`` is off (then followers poll)."""
        if not settings.streams.tail_notify:
            return Notifier()
        database = settings.database
        return PostgresNotifier(
            self.dsn,
            keepalive=database.listen_keepalive,
            connect_timeout=database.connect_timeout,
            ready_wait=database.listen_ready_wait,
            retry_delay=database.reconnect_delay,
            retry_max_delay=database.reconnect_max_delay,
        )

    def _insert(self, table: sa.Table) -> Any:
        return postgresql_insert(table)

    async def _before_schema(self, conn: AsyncConnection) -> None:
        version = await conn.scalar(sa.text("SELECT current_setting('server_version_num')::int"))
        if version < MIN_SERVER_VERSION:
            # Older servers lack hashtextextended (the session lock of multitask runs).
            found = await conn.scalar(sa.text("SELECT current_setting('server_version')"))
            raise DatabaseUnsupported(f"PostgreSQL {found}", "PostgreSQL 11")
        # Instances starting together would race on CREATE TABLE (duplicate pg_type rows);
        # the lock makes them take turns, and the later ones find the tables.
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_SCHEMA_LOCK)))

    async def _after_write(
        self, conn: AsyncConnection, events: Sequence[tuple[str, Event]]
    ) -> None:
        if events:
            last: dict[str, int] = {}
            for run_id, event in events:
                last[run_id] = max(event.index, last.get(run_id, -1))
            await _notify(conn, EVENTS_CHANNEL, [f"{r}:{i}" for r, i in last.items()])

    async def _after_cancel_request(self, conn: AsyncConnection, run_id: str) -> None:
        await _notify(conn, CONTROL_CHANNEL, [f"cancel:{run_id}"])

    async def _lock_session(self, conn: AsyncConnection, session_id: str) -> None:
        # READ COMMITTED: two transactions would not see each other's insert; a transaction
        # lock on the session's hash makes them take turns, and the second one's check (a new
        # statement) sees the first one's committed run.
        key = sa.func.hashtextextended("agentos-session:" + session_id, 0)
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))

    async def _after_enqueue(self, conn: AsyncConnection) -> None:
        await _notify(conn, CONTROL_CHANNEL, ["queue:"])

    def _enqueue_notice(self) -> Any:
        return sa.func.pg_notify(CONTROL_CHANNEL, "queue:")


async def _notify(conn: AsyncConnection, channel: str, payloads: list[str]) -> None:
    """``pg_notify`` each payload; PostgreSQL delivers them when the transaction commits."""
    await conn.execute(
        sa.text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
        {"channel": channel, "payloads": payloads},
    )


class PostgresNotifier(Notifier):
    """LISTEN on one dedicated asyncpg connection, reconnecting with backoff when it drops."""

    def __init__(
        self,
        dsn: str,
        *,
        keepalive: float,
        connect_timeout: float,
        ready_wait: float,
        retry_delay: float,
        retry_max_delay: float,
    ) -> None:
        super().__init__()
        self._dsn = dsn
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._ready_wait = ready_wait
        self._retry_delay = retry_delay
        self._retry_max_delay = retry_max_delay
        self._listening = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listening

    async def start(self, on_cancel: CancelFn, on_queue: Callable[[], None] | None = None) -> None:
        await super().start(on_cancel, on_queue)
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="agentos-listen")
        # Wait a little for the first connection; without it followers poll until it comes.
        try:
            async with asyncio.timeout(self._ready_wait):
                await self._ready.wait()
        except TimeoutError:
            logger.warning("LISTEN connection not ready; tailing by polling meanwhile")

    async def aclose(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await super().aclose()

    async def _listen(self) -> None:
        import asyncpg  # type: ignore[import-untyped]  # optional dependency, untyped

        failures = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
        delay = self._retry_delay
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
            except failures as exc:
                logger.warning("LISTEN connection failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_delay)
                continue
            delay = self._retry_delay
            closed = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _conn, closed=closed: closed.set())
                await conn.add_listener(EVENTS_CHANNEL, self._on_event)
                await conn.add_listener(CONTROL_CHANNEL, self._on_control)
                self._listening = True
                self._ready.set()
                self.wake_all()  # anything committed while we were not listening
                if self._on_queue is not None:
                    self._on_queue()
                while not closed.is_set():
                    try:
                        async with asyncio.timeout(self._keepalive):
                            await closed.wait()
                    except TimeoutError:
                        # A query on an idle connection is what notices a dead server.
                        await conn.execute("SELECT 1", timeout=self._connect_timeout)
                logger.warning("LISTEN connection closed; reconnecting")
            except failures as exc:
                logger.warning("LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self._listening = False
                conn.terminate()

    def _on_event(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        run_id, _, _ = payload.rpartition(":")
        self.wake(run_id)

    def _on_control(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        action, _, run_id = payload.partition(":")
        if action == "cancel" and self._on_cancel is not None:
            self._on_cancel(run_id)
        elif action == "queue" and self._on_queue is not None:
            self._on_queue()


def _postgres_store(settings: Settings) -> PostgresStore:
    database = settings.database
    return PostgresStore(
        database.url,
        timeout=database.timeout,
        command_timeout=database.command_timeout,
        auto_upgrade=database.auto_upgrade,
        # A transaction idle for a whole lease is one of a paused instance: its leases have
        # expired, and its locks must not keep the reaper from its runs.
        idle_transaction_timeout=settings.leases.ttl,
    )


register_backend("postgresql", _postgres_store)
