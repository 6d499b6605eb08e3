"""Group commit: events become visible only after the transaction that holds them commits.

Runs hand their events to the :class:`GroupCommitter`; one background task writes whatever has
gathered in one transaction, then publishes those events to the buffer (and so to subscribers),
then wakes anyone waiting for a flush. While one group commits, the next one gathers::

    run tasks ──put()──▶ pending ──┐                ┌──▶ EventBuffer.publish ──▶ subscribers
                                    ├─ store.commit ─┤
    run tasks ─update()─▶ updates ─┘  (one txn)      └──▶ flush() waiters resolved

Pending events are bounded by ``max_pending_events``: a run that emits faster than the database
commits waits in :meth:`GroupCommitter.wait_for_space` (backpressure), it never grows memory.
A failed commit is retried with backoff; nothing is published before it succeeds. A run whose
events conflict with another writer's is dropped from the group (see ``_write``).

Commits are made as this instance (``owner=``): a status update only applies to a run this
instance still owns, so an instance that lost a run (its lease expired and another instance
ended it, see ``runs.py``) cannot overwrite the run's final status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agentos.backends.base import Store
from agentos.buffer import EventBuffer
from agentos.errors import CommitterStopped, RunAlreadyExists, WriteConflict
from agentos.events import Event
from agentos.records import RunRecord, RunUpdate
from agentos.settings import CommitSettings

__all__ = ["GroupCommitter"]

logger = logging.getLogger("agentos.committer")


class GroupCommitter:
    """Writes events and run updates in groups and publishes them once durable."""

    def __init__(
        self,
        store: Store,
        buffers: EventBuffer,
        settings: CommitSettings,
        *,
        owner: str,
        on_commit: Callable[[list[tuple[str, Event]], list[RunUpdate]], None] | None = None,
        on_conflict: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._buffers = buffers
        self._settings = settings
        self._owner = owner
        self._on_commit = on_commit
        self._on_conflict = on_conflict
        self._pending: list[tuple[str, Event]] = []
        self._updates: dict[str, RunUpdate] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._creates: list[tuple[RunRecord, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stopped = False
        #: Counters for benchmarks and health: transactions and events written.
        self.commits = 0
        self.events_written = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="agentos-group-commit")

    async def wait_for_space(self) -> None:
        """Wait while too many events are waiting for their commit."""
        while len(self._pending) >= self._settings.max_pending_events:
            if self._stopped:
                raise CommitterStopped()
            self._space.clear()
            await self._space.wait()

    async def create(self, record: RunRecord) -> None:
        """Insert a new run with the next group; returns once that group has committed.

        Many runs started at once then cost one transaction, not one each. The run id must be
        new (a server-made UUID): a clash would fail the whole group, so runs whose id a client
        chose are created with ``Store.create_run``, which reports the clash.
        """
        if self._task is None or self._task.done():
            raise CommitterStopped()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._creates.append((record, future))
        self._wake.set()
        await future

    def put(self, run_id: str, event: Event) -> None:
        """Queue an event; callers keep a run's events in index order."""
        self._pending.append((run_id, event))
        self._wake.set()

    def update(self, update: RunUpdate) -> None:
        """Queue a run update; it commits with (or after) every event queued before it."""
        previous = self._updates.get(update.run_id)
        self._updates[update.run_id] = update if previous is None else previous.merge(update)
        self._wake.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed and published."""
        if self._task is None or self._task.done():
            raise CommitterStopped()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._wake.set()
        await future

    async def aclose(self) -> None:
        """Commit what is pending (for at most ``close_timeout`` seconds), then stop."""
        if self._task is None:
            return
        timeout = self._settings.close_timeout
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            logger.error(
                "group commit did not drain in %.1fs; %d events lost", timeout, self.pending
            )
            self._task.cancel()
        except Exception:
            # Closing must go on (the caller still closes leases, notifier and store).
            logger.exception("group commit failed; %d events lost", self.pending)
        self._task = None

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending or self._updates or self._waiters or self._creates:
                    await self._commit_one_group()
                if self._closing:
                    return
        finally:
            # Never leave a flush(), a new run or an emitter waiting on a stopped committer.
            self._stopped = True
            self._space.set()
            for waiter in self._waiters + [future for _, future in self._creates]:
                if not waiter.done():
                    waiter.set_exception(CommitterStopped("the group committer stopped"))
            self._waiters = []
            self._creates = []

    async def _commit_one_group(self) -> None:
        limit = self._settings.max_batch_events
        events = self._pending[:limit]
        del self._pending[:limit]
        drained = not self._pending
        # Updates and flush waiters ride with the group that empties the queue, so a status
        # never commits before an event queued ahead of it.
        updates = list(self._updates.values()) if drained else []
        waiters = self._waiters if drained else []
        if drained:
            self._updates = {}
            self._waiters = []
        creates, self._creates = self._creates, []
        try:
            events, updates = await self._write(events, updates, creates)
        except BaseException:
            for waiter in waiters + [future for _, future in creates]:
                if not waiter.done():
                    waiter.set_exception(CommitterStopped("events could not be committed"))
            raise
        self.events_written += len(events)
        self._publish(events, updates)
        if len(self._pending) < self._settings.max_pending_events:
            self._space.set()
        for waiter in waiters + [future for _, future in creates]:
            if not waiter.done():
                waiter.set_result(None)

    async def _write(
        self,
        events: list[tuple[str, Event]],
        updates: list[RunUpdate],
        creates: list[tuple[RunRecord, asyncio.Future[None]]],
    ) -> tuple[list[tuple[str, Event]], list[RunUpdate]]:
        """Commit a group, new runs first; returns the events and updates committed.

        Passing errors (a lost connection, a locked database) are retried with backoff while runs
        wait behind the bound on pending events. A conflict (another writer already holds one of
        the indices, e.g. an instance that declared the run lost) cannot succeed on retry: the
        new runs are then created one by one and the group is committed run by run, and the
        conflicting runs are handed to ``on_conflict``.
        """
        try:
            await self._commit(events, updates, [record for record, _ in creates])
        except WriteConflict:
            await self._create_each(creates)
            return await self._write_each_run(events, updates)
        return events, updates

    async def _commit(
        self,
        events: list[tuple[str, Event]],
        updates: list[RunUpdate],
        runs: list[RunRecord] | None = None,
    ) -> None:
        """One transaction, retried with backoff on passing errors; a conflict is raised."""
        delay = self._settings.retry_delay
        while True:
            try:
                await self._store.commit(events, updates, owner=self._owner, runs=runs or [])
                self.commits += 1
                return
            except (WriteConflict, asyncio.CancelledError):
                raise
            except Exception:
                if self._closing and delay > 2:
                    raise
                logger.exception("group commit of %d events failed; retrying", len(events))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_max_delay)

    async def _create_each(self, creates: list[tuple[RunRecord, asyncio.Future[None]]]) -> None:
        """New runs one at a time: a run id that is taken fails only its own start."""
        for record, future in creates:
            try:
                await self._store.create_run(record)
            except RunAlreadyExists as exc:
                if not future.done():
                    future.set_exception(exc)

    async def _write_each_run(
        self, events: list[tuple[str, Event]], updates: list[RunUpdate]
    ) -> tuple[list[tuple[str, Event]], list[RunUpdate]]:
        by_run: dict[str, list[tuple[str, Event]]] = {}
        for item in events:
            by_run.setdefault(item[0], []).append(item)
        for update in updates:
            by_run.setdefault(update.run_id, [])
        kept_events: list[tuple[str, Event]] = []
        kept_updates: list[RunUpdate] = []
        for run_id, run_events in by_run.items():
            run_updates = [u for u in updates if u.run_id == run_id]
            try:
                await self._commit(run_events, run_updates)
            except WriteConflict:
                logger.error("run %s: events conflict with another writer; dropped", run_id)
                # Its events queued since would land after the other writer's terminal event.
                self._pending = [item for item in self._pending if item[0] != run_id]
                self._updates.pop(run_id, None)
                if self._on_conflict is not None:
                    self._on_conflict(run_id)
                continue
            kept_events += run_events
            kept_updates += run_updates
        return kept_events, kept_updates

    def _publish(self, events: list[tuple[str, Event]], updates: list[RunUpdate]) -> None:
        by_run: dict[str, list[Event]] = {}
        for run_id, event in events:
            by_run.setdefault(run_id, []).append(event)
        for run_id, run_events in by_run.items():
            self._buffers.publish(run_id, run_events)
        for update in updates:
            if update.status is not None:
                self._buffers.set_status(update.run_id, update.status)
        if self._on_commit is not None:
            self._on_commit(events, updates)
