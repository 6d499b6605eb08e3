"""Waking the followers of runs that another instance owns.

A client may follow a run through any instance. The owner's followers wait on the run's buffer;
an instance that does not hold the run tails it from the database (``RunStream._follow``) and,
between reads, waits on the run's *signal* here. Something must set that signal when new events
are committed elsewhere:

    owner: group commit ─ INSERT events, pg_notify('agentos_events', '<run_id>:<last>') ─ COMMIT
                                                                                          │
    every instance: ONE asyncpg connection, LISTEN agentos_events, agentos_control ◀──────┘
          │  (PostgreSQL delivers a notification only once its transaction has committed,
          │   so a woken follower always finds the events it was told about)
          └─▶ Notifier.wake(run_id) ──▶ followers of run_id read the database again

:class:`Notifier` is the fallback and the SQLite case: nothing wakes a follower early, it reads
again every ``tail_poll_interval`` seconds. :class:`PostgresNotifier` adds the LISTEN connection;
the poll stays as a safety net (a notification lost while reconnecting costs one poll interval,
and every follower is woken once the connection is back).

A follower takes the signal *before* it reads, so a notification that arrives between its read
and its wait still wakes it::

    signal = notifier.watch(run_id)
    events = await store.read_events(run_id, cursor + 1, page)
    if not events:
        await notifier.wait(signal, settings.tail_poll_interval)

The ``agentos_control`` channel carries requests to a run's owner (``cancel:<run_id>``), so a
cancel made on another instance reaches the owner at once rather than at its next lease renewal.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from agentos.settings import Settings
from agentos.store import CONTROL_CHANNEL, EVENTS_CHANNEL, SQLStore, Store

__all__ = ["Notifier", "PostgresNotifier", "open_notifier"]

logger = logging.getLogger("agentos.notify")

CancelFn = Callable[[str], None]


class Notifier:
    """Per-run signals that followers wait on; this base class only times out (polling)."""

    def __init__(self) -> None:
        # Weak: a signal lives as long as some follower holds it.
        self._signals: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._on_cancel: CancelFn | None = None

    @property
    def listening(self) -> bool:
        """Whether notifications arrive now (if not, followers rely on polling)."""
        return False

    def watch(self, run_id: str) -> asyncio.Event:
        """The signal that the next wake-up of ``run_id`` sets; take it before reading."""
        signal = self._signals.get(run_id)
        if signal is None:
            signal = asyncio.Event()
            self._signals[run_id] = signal
        return signal

    async def wait(self, signal: asyncio.Event, seconds: float) -> bool:
        """Wait until ``signal`` is set or ``seconds`` pass; True when woken."""
        try:
            async with asyncio.timeout(seconds):
                await signal.wait()
        except TimeoutError:
            return False
        return True

    def wake(self, run_id: str) -> None:
        """Wake the followers of ``run_id``."""
        signal = self._signals.pop(run_id, None)
        if signal is not None:
            signal.set()

    def wake_all(self) -> None:
        """Wake every follower (after missed notifications, or at shutdown)."""
        signals = list(self._signals.values())
        self._signals.clear()
        for signal in signals:
            signal.set()

    async def start(self, on_cancel: CancelFn) -> None:
        """Start listening; ``on_cancel(run_id)`` is called for cancel requests."""
        self._on_cancel = on_cancel

    async def aclose(self) -> None:
        """Stop listening and wake every follower."""
        self.wake_all()


class PostgresNotifier(Notifier):
    """LISTEN on one dedicated asyncpg connection, reconnecting with backoff when it drops."""

    def __init__(self, dsn: str, *, keepalive: float = 10.0, connect_timeout: float = 10.0) -> None:
        super().__init__()
        self._dsn = dsn
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._listening = False
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listening

    async def start(self, on_cancel: CancelFn) -> None:
        await super().start(on_cancel)
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="agentos-listen")
        # Wait a little for the first connection; without it followers poll until it comes.
        try:
            async with asyncio.timeout(5.0):
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
        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
            except failures as exc:
                logger.warning("LISTEN connection failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            closed = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _conn, closed=closed: closed.set())
                await conn.add_listener(EVENTS_CHANNEL, self._on_event)
                await conn.add_listener(CONTROL_CHANNEL, self._on_control)
                self._listening = True
                self._ready.set()
                self.wake_all()  # anything committed while we were not listening
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


def open_notifier(settings: Settings, store: Store) -> Notifier:
    """LISTEN/NOTIFY on PostgreSQL (unless ``tail_notify`` is off), polling otherwise."""
    if settings.tail_notify and isinstance(store, SQLStore) and store.is_postgres:
        return PostgresNotifier(store.dsn)
    return Notifier()
