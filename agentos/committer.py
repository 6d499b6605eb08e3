"""Group commit: events become visible only after the transaction that holds them commits.

Runs hand their events to the :class:`GroupCommitter`; one background task writes whatever has
gathered in one transaction, then publishes those events to the buffer (and so to subscribers),
then wakes anyone waiting for a flush. While one group commits, the next one gathers, and
with ``AGENTOS_COMMIT_LINGER`` set, while groups commit back to back it may linger a few
milliseconds more to grow (``_gather``)::

    run tasks ──put()──▶ pending ──┐                ┌──▶ EventBuffer.publish ──▶ subscribers
                                    ├─ store.commit ─┤
    run tasks ─update()─▶ updates ─┘  (one txn)      └──▶ flush() waiters resolved

Pending events are bounded by ``max_pending_events``: a run that emits faster than the database
commits waits in :meth:`GroupCommitter.wait_for_space` (backpressure), it never grows memory.

A failed commit is judged by the store's error (``backends/``); nothing is published before
its group commits::

    StoreUnavailable (connection lost, locked, disk full)  ─▶ retry the group, backoff up to
                                                              commit_retry_max_delay; health
                                                              reports since when it fails
    a new run's id taken (WriteConflict at its insert)     ─▶ its create fails alone
                                                              (RunAlreadyExists); the group is
                                                              tried once more without it
    WriteConflict (another writer holds an index)          ─▶ commit run by run; the conflicting
    DataRejected, or an error the store cannot judge        ─▶ run is dropped (on_conflict), a
                                                              refused one ends with an error
                                                              event (on_reject); the rest commit

So no error class makes the committer retry forever one group it can never write: a poison value
costs its own run, never the instance.

Commits are made as this instance (``owner=``): a status update only applies to a run this
instance still owns, so an instance that lost a run (its lease expired and another instance
ended it, see ``runs.py``) cannot overwrite the run's final status.

Each event and update also carries the attempt that made it, and the commit is fenced on it
(``attempts=``): an attempt whose run was requeued by another instance and claimed back by this
one is refused like a lost run, without harm to the attempt that replaced it (its queued writes
and its run are dropped by attempt, not by run id).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import time
from collections.abc import Callable, Sequence

from agentos.backends.base import Store
from agentos.buffer import EventBuffer
from agentos.errors import (
    CommitterStopped,
    DataRejected,
    RunAlreadyExists,
    StoreUnavailable,
    WriteConflict,
)
from agentos.events import Event
from agentos.logs import error_summary
from agentos.records import RunRecord, RunUpdate
from agentos.settings import CommitSettings

__all__ = ["GroupCommitter"]

logger = logging.getLogger("agentos.committer")

_RUN_ID = operator.itemgetter(0)
_EVENT = operator.itemgetter(1)


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
        on_conflict: Callable[[str, int | None], None] | None = None,
        on_reject: Callable[[str, int | None, int | None, str], None] | None = None,
    ) -> None:
        self._store = store
        self._buffers = buffers
        self._settings = settings
        self._owner = owner
        self._on_commit = on_commit
        self._on_conflict = on_conflict
        self._on_reject = on_reject
        #: Whether the group being written had a run refused (its flush waiters wait one more
        #: group: the error event that replaces what was refused).
        self._rejected = False
        #: Queued events: run id, event, and the attempt that made it (None: not fenced on it).
        self._pending: list[tuple[str, Event, int | None]] = []
        self._updates: dict[str, tuple[RunUpdate, int | None]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        #: Waiters for one event each (see committed), by the event's id().
        self._event_waiters: dict[int, asyncio.Future[None]] = {}
        self._creates: list[tuple[RunRecord, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._stopped = False
        self._writing = False
        #: Counters for benchmarks, health and metrics: transactions and events written, and
        #: transactions that failed (each failed try counts).
        self.commits = 0
        self.events_written = 0
        self.commit_failures = 0
        #: Called after each committed transaction with its duration in seconds and its number
        #: of events (``http/metrics.py`` feeds its histograms from it); once per group, not
        #: per event.
        self.observer: Callable[[float, int], None] | None = None
        #: When commits started failing (time.time()), None while they succeed; and why.
        self.failing_since: float | None = None
        self.last_error: str | None = None
        #: When the commit now waiting for the database began (time.time()), if one does.
        self._attempt_started: float | None = None
        #: When the last group was committed and published (time.monotonic()), and whether a
        #: run's first events are queued: see _gather.
        self._group_ended = float("-inf")
        self._eager = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def has_space(self) -> bool:
        """Whether an event can be queued now without :meth:`wait_for_space` waiting."""
        return len(self._pending) < self._settings.max_pending_events

    @property
    def writing(self) -> bool:
        """Whether the commit task is writing groups (from its wake-up until the queue is empty)."""
        return self._writing

    @property
    def running(self) -> bool:
        """Whether the commit task is alive."""
        return self._task is not None and not self._task.done()

    def failing_for(self) -> float:
        """Seconds commits have been failing without a success (0 while they succeed).

        A commit still waiting for the database after ``create_timeout`` seconds counts as
        failing since it started: a hung database is not healthy just because nothing failed.
        """
        now = time.time()
        failing = 0.0 if self.failing_since is None else max(0.0, now - self.failing_since)
        started = self._attempt_started
        if started is not None and now - started > self._settings.create_timeout:
            failing = max(failing, now - started)
        return failing

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

    async def create(self, record: RunRecord, timeout: float) -> None:
        """Insert a new run with the next group; returns once that group has committed.

        Many runs started at once then cost one transaction, not one each. The run id should
        be new (a server-made UUID, a task occurrence's): a clash fails the group's transaction,
        which is then tried once more without the runs whose id is taken (RunAlreadyExists for
        each). Runs whose id a client chose are created with ``Store.create_run`` instead.

        Raises StoreUnavailable after ``timeout`` seconds without a commit (the database is down
        or stuck). A run not yet handed to a transaction is then never created; one that was is
        created once the database is back, and ended as a run nobody executes (``leases.py``).
        """
        if not self.running:
            raise CommitterStopped()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (record, future)
        self._creates.append(entry)
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(future)
        except TimeoutError:
            if entry in self._creates:
                self._creates.remove(entry)
            raise StoreUnavailable(
                f"the database did not commit within {timeout:g} s; try again later"
            ) from None

    def put(self, run_id: str, event: Event, attempt: int | None = None) -> None:
        """Queue an event made by the run's ``attempt``; callers keep a run's events in index
        order."""
        self._pending.append((run_id, event, attempt))
        if event.index < 2:
            self._eager = True  # a run's first events (its start, its first output) never wait
        self._wake.set()

    def update(self, update: RunUpdate, attempt: int | None = None) -> None:
        """Queue a run update made by the run's ``attempt``; it commits with (or after) every
        event queued before it. An update of a later attempt replaces one of an earlier attempt
        (which can no longer commit); one of an earlier attempt is dropped."""
        previous = self._updates.get(update.run_id)
        if previous is not None:
            if _older(attempt, previous[1]):
                return
            if _older(previous[1], attempt):
                previous = None
            elif attempt is None:
                attempt = previous[1]
        merged = update if previous is None else previous[0].merge(update)
        self._updates[update.run_id] = (merged, attempt)
        self._wake.set()

    def drop(self, run_id: str, attempt: int | None = None) -> None:
        """Forget what is queued for the run's ``attempt`` (None: any): it was lost here."""
        self._drop_run(run_id, attempt)

    async def committed(self, event: Event) -> None:
        """Wait until ``event``, just queued with :meth:`put`, is committed and published.

        Unlike :meth:`flush`, this waits for the group that holds the event only, not for the
        queue to empty. Call it before the commit task gets a turn of the loop (a group can
        commit without suspending), as a run's task does right after :meth:`put`. Raises CommitterStopped when the committer stops first, and
        CancelledError when the event's run is dropped (its task is cancelled then too).
        """
        if not self.running:
            raise CommitterStopped()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._event_waiters[id(event)] = future
        try:
            await future
        finally:
            self._event_waiters.pop(id(event), None)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed and published."""
        if not self.running:
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
                self._writing = True
                self._wake.clear()
                while self._queued():
                    # One turn of the loop before each group: the tasks woken with this one (a
                    # run's task that goes on to its terminal event) queue their events into
                    # the same group, and, as a small group commits without suspending (the
                    # store may make it on the loop), the tasks that just queued events get to
                    # wait for them (committed) before they are published.
                    await asyncio.sleep(0)
                    await self._gather()
                    if self._queued():  # not if a run lost meanwhile took all of it (drop)
                        await self._commit_one_group()
                self._writing = False
                if self._closing:
                    return
        finally:
            # Never leave a flush(), a new run or an emitter waiting on a stopped committer.
            self._stopped = True
            self._space.set()
            for waiter in self._waiters + [future for _, future in self._creates]:
                if not waiter.done():
                    waiter.set_exception(CommitterStopped("the group committer stopped"))
            for waiter in self._event_waiters.values():
                if not waiter.done():
                    waiter.set_exception(CommitterStopped("the group committer stopped"))
            self._waiters = []
            self._creates = []

    async def _gather(self) -> None:
        """Let the next group grow while events keep coming, when groups follow each other.

        Each group costs a transaction, its statements and its publication, whatever its size:
        a run streaming at full speed made a group of its events every turn of the loop (a
        hundred to a run of 10,000 events), and paid more for those than for the events
        (bench/NOTES.md, session 7). While groups commit back to back (the last one ended less
        than ``linger`` ago), the loop turns again as long as each turn brings more events, up
        to ``max_batch_events`` or ``linger`` seconds. Nothing waits that something waits for:
        a run's first events, a flush, a create, a shutdown end it at once, and so does a quiet
        committer (the first group after a pause commits at once). Off by default: with 3 ms,
        a new run's first event still waited longer behind a flooding run (scenario 7, p99
        5.6 -> 20 ms), for a cause not found yet (bench/NOTES.md, session 7).
        """
        linger = self._settings.linger
        now = time.monotonic()
        if not self._pending or linger <= 0 or now - self._group_ended > linger or self._awaited():
            return
        deadline = now + linger
        limit = self._settings.max_batch_events
        while len(self._pending) < limit:
            before = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) <= before or self._awaited() or time.monotonic() >= deadline:
                return

    def _queued(self) -> bool:
        """Whether anything waits for a group: events, updates, flushes, new runs."""
        return bool(self._pending or self._updates or self._waiters or self._creates)

    def _awaited(self) -> bool:
        """Whether anyone waits for the next group: a flush, a create, a run for one of its
        events, or a run's first events (whose run does not wait for them while other groups
        are being written, see ``RunManager._pace_first``, but whose client does)."""
        return bool(
            self._eager or self._waiters or self._creates or self._event_waiters or self._closing
        )

    async def _commit_one_group(self) -> None:
        limit = self._settings.max_batch_events
        group = self._pending[:limit]
        del self._pending[:limit]
        drained = not self._pending
        # Updates and flush waiters ride with the group that empties the queue, so a status
        # never commits before an event queued ahead of it.
        fenced_updates = list(self._updates.values()) if drained else []
        waiters = self._waiters if drained else []
        if drained:
            self._updates = {}
            self._waiters = []
            self._eager = False
        creates, self._creates = self._creates, []
        self._rejected = False
        taken = [(run_id, event) for run_id, event, _ in group]
        events, updates, attempts = self._fence(group, taken, fenced_updates)
        try:
            events, updates = await self._write(events, updates, creates, attempts)
        except BaseException:
            for waiter in waiters + [future for _, future in creates]:
                if not waiter.done():
                    waiter.set_exception(CommitterStopped("events could not be committed"))
            raise
        self.events_written += len(events)
        self._publish(events, updates)
        if self._event_waiters:
            self._wake_event_waiters(taken, events)
        if len(self._pending) < self._settings.max_pending_events:
            self._space.set()
        self._group_ended = time.monotonic()
        if self._rejected and waiters:
            # A refused run's error event was queued for the next group: a flush made before
            # it returns once that event is committed too.
            self._waiters = waiters + self._waiters
            self._wake.set()
            waiters = []
        for waiter in waiters + [future for _, future in creates]:
            if not waiter.done():
                waiter.set_result(None)

    def _fence(
        self,
        group: Sequence[tuple[str, Event, int | None]],
        taken: list[tuple[str, Event]],
        updates: Sequence[tuple[RunUpdate, int | None]],
    ) -> tuple[list[tuple[str, Event]], list[RunUpdate], dict[str, int]]:
        """The events and updates of a group, and the attempt each run's writes are fenced on.

        A group holds one attempt per run: the run manager starts an attempt here only once
        the one before it has stopped. Should an earlier attempt's writes still be here, they
        could never commit (the run moved on to the later one): they are dropped, as a lost
        run's are, rather than fenced on the later attempt.
        """
        attempts: dict[str, int] = {}
        mixed = False
        for run_id, _, attempt in group:
            if attempt is not None and attempts.setdefault(run_id, attempt) != attempt:
                mixed = True
                attempts[run_id] = max(attempts[run_id], attempt)
        for update, attempt in updates:
            run_id = update.run_id
            if attempt is not None and attempts.setdefault(run_id, attempt) != attempt:
                mixed = True
                attempts[run_id] = max(attempts[run_id], attempt)
        if not mixed:
            return taken, [update for update, _ in updates], attempts
        events: list[tuple[str, Event]] = []
        stale: set[tuple[str, int | None]] = set()
        for run_id, event, attempt in group:
            if attempt is not None and attempts[run_id] != attempt:
                stale.add((run_id, attempt))
                waiter = self._event_waiters.pop(id(event), None)
                if waiter is not None:
                    waiter.cancel()
                continue
            events.append((run_id, event))
        kept = []
        for update, attempt in updates:
            if attempt is not None and attempts[update.run_id] != attempt:
                stale.add((update.run_id, attempt))
                continue
            kept.append(update)
        for run_id, attempt in stale:
            logger.error(
                "run %s: writes of attempt %s queued with a later attempt's; dropped",
                run_id,
                attempt,
                extra={"run_id": run_id},
            )
            if self._on_conflict is not None:
                self._on_conflict(run_id, attempt)
        return events, kept, attempts

    async def _write(
        self,
        events: list[tuple[str, Event]],
        updates: list[RunUpdate],
        creates: list[tuple[RunRecord, asyncio.Future[None]]],
        attempts: dict[str, int],
    ) -> tuple[list[tuple[str, Event]], list[RunUpdate]]:
        """Commit a group, new runs first; returns the events and updates committed.

        Passing errors (StoreUnavailable) are retried with backoff while runs wait behind the
        bound on pending events. Any other error cannot succeed on retry: the new runs are then
        created one by one and the group is committed run by run, so that only the runs it
        belongs to are dropped (a conflict) or ended with an error (a refused value).
        """
        try:
            runs = [record for record, _ in creates]
            await self._commit(events, updates, runs, attempts=attempts)
        except (asyncio.CancelledError, StoreUnavailable):
            raise  # unavailable only escapes while closing: nothing is judged refused then
        except Exception as exc:
            failure: Exception = exc
            kept = await self._refuse_taken(creates)
            if len(kept) < len(creates):
                creates = kept
                try:
                    runs = [record for record, _ in creates]
                    await self._commit(events, updates, runs, attempts=attempts)
                except (asyncio.CancelledError, StoreUnavailable):
                    raise
                except Exception as again:
                    failure = again
                else:
                    return events, updates
            logger.warning(
                "group commit failed (%s); committing run by run", error_summary(failure)
            )
            await self._create_each(creates)
            return await self._write_each_run(events, updates, attempts)
        return events, updates

    async def _refuse_taken(
        self, creates: list[tuple[RunRecord, asyncio.Future[None]]]
    ) -> list[tuple[RunRecord, asyncio.Future[None]]]:
        """Fail the new runs whose id is taken (RunAlreadyExists); returns the others.

        A create with a taken id (a client's own run id sent twice, a task occurrence fired
        again after a timeout) fails the whole group's transaction. Going run by run for it
        would turn a group of hundreds of runs into as many transactions, each time: one query
        finds the taken ids, and the group is tried once more without them.
        """
        if not creates:
            return creates
        try:
            taken = await self._store.taken_run_ids([record.run_id for record, _ in creates])
        except Exception as exc:  # run by run finds them (and waits out an outage)
            logger.warning("could not look up the new runs' ids (%s)", error_summary(exc))
            return creates
        for record, future in creates:
            if record.run_id in taken and not future.done():
                future.set_exception(RunAlreadyExists(record.run_id))
        return [(record, future) for record, future in creates if record.run_id not in taken]

    async def _commit(
        self,
        events: list[tuple[str, Event]],
        updates: list[RunUpdate],
        runs: list[RunRecord] | None = None,
        *,
        attempts: dict[str, int],
    ) -> None:
        """One transaction, retried with backoff while the store is unavailable; fenced on
        this instance and on the ``attempts`` of the runs whose writes it holds.

        Any other error is raised at once: retrying cannot help it.
        """
        delay = self._settings.retry_delay
        while True:
            started = time.perf_counter()
            self._attempt_started = time.time()
            try:
                await self._store.commit(
                    events, updates, owner=self._owner, attempts=attempts, runs=runs or []
                )
            except StoreUnavailable as exc:
                self.commit_failures += 1
                if self.failing_since is None:
                    self.failing_since = time.time()
                self.last_error = exc.detail
                if self._closing and delay >= self._settings.retry_max_delay:
                    raise
                logger.warning(
                    "group commit of %d events failed (%s); retrying in %.2fs",
                    len(events),
                    exc.detail,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.retry_max_delay)
                continue
            except Exception:
                # The database answered (a conflict, a refused value): it is reachable again.
                self.commit_failures += 1
                self.failing_since = None
                self.last_error = None
                self._attempt_started = None
                raise
            finally:
                self._attempt_started = None
            if self.observer is not None:
                self.observer(time.perf_counter() - started, len(events))
            self.commits += 1
            self.failing_since = None
            self.last_error = None
            return

    async def _create_each(self, creates: list[tuple[RunRecord, asyncio.Future[None]]]) -> None:
        """New runs one at a time: a taken id or a refused value fails only its own start."""
        for record, future in creates:
            try:
                await self._commit([], [], [record], attempts={})
            except (asyncio.CancelledError, StoreUnavailable):
                raise
            except WriteConflict:
                if not future.done():
                    future.set_exception(RunAlreadyExists(record.run_id))
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)

    async def _write_each_run(
        self,
        events: list[tuple[str, Event]],
        updates: list[RunUpdate],
        attempts: dict[str, int],
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
            attempt = attempts.get(run_id)
            fence = {} if attempt is None else {run_id: attempt}
            try:
                await self._commit(run_events, run_updates, attempts=fence)
            except (asyncio.CancelledError, StoreUnavailable):
                raise
            except WriteConflict:
                logger.error(
                    "run %s: events conflict with another writer; dropped",
                    run_id,
                    extra={"run_id": run_id},
                )
                self._drop_run(run_id, attempt)
                if self._on_conflict is not None:
                    self._on_conflict(run_id, attempt)
                continue
            except Exception as exc:
                # A value the database refuses (or an error it cannot judge): retrying the same
                # events cannot help. The run ends with an error event in their place.
                # Only our own words reach the run's error event: a driver's message may hold
                # SQL and values.
                reason = exc.detail if isinstance(exc, DataRejected) else "a database error"
                logger.error(
                    "run %s: the database refused its events (%s)",
                    run_id,
                    error_summary(exc),
                    extra={"run_id": run_id},
                )
                self._drop_run(run_id, attempt)
                self._rejected = True
                first = run_events[0][1].index if run_events else None
                if self._on_reject is not None:
                    self._on_reject(run_id, attempt, first, reason)
                continue
            kept_events += run_events
            kept_updates += run_updates
        return kept_events, kept_updates

    def _wake_event_waiters(
        self, taken: list[tuple[str, Event]], written: list[tuple[str, Event]]
    ) -> None:
        """Resolve the waiters of the written events; cancel those of events taken into the
        group but dropped with their run (lost or refused: its task is being cancelled)."""
        committed = {id(event) for _, event in written}
        for _, event in taken:
            waiter = self._event_waiters.pop(id(event), None)
            if waiter is None or waiter.done():
                continue
            if id(event) in committed:
                waiter.set_result(None)
            else:
                waiter.cancel()

    def _drop_run(self, run_id: str, attempt: int | None = None) -> None:
        """Forget what is queued for a run's ``attempt`` (None: any): it would land after
        events that never did. A later attempt's writes stay."""

        def dropped(item_run: str, item_attempt: int | None) -> bool:
            return item_run == run_id and (attempt is None or item_attempt == attempt)

        if not any(dropped(r, a) for r, _, a in self._pending):
            kept = self._pending
        else:
            kept = []
            for item in self._pending:
                if dropped(item[0], item[2]):
                    waiter = self._event_waiters.pop(id(item[1]), None)
                    if waiter is not None:
                        waiter.cancel()
                else:
                    kept.append(item)
        self._pending = kept
        update = self._updates.get(run_id)
        if update is not None and dropped(run_id, update[1]):
            del self._updates[run_id]

    def _publish(self, events: list[tuple[str, Event]], updates: list[RunUpdate]) -> None:
        by_run: dict[str, list[Event]] = {}
        # By stretches of one run, each taken in C: a group is mostly long runs of one run's
        # events (a run queues many at a time), so this is one step per stretch, not per event.
        for run_id, stretch in itertools.groupby(events, _RUN_ID):
            run_events = by_run.get(run_id)
            if run_events is None:
                by_run[run_id] = list(map(_EVENT, stretch))
            else:
                run_events.extend(map(_EVENT, stretch))
        for run_id, run_events in by_run.items():
            try:
                self._buffers.publish(run_id, run_events)
            except ValueError:
                # Out of order for its buffer (two attempts of one run writing at once): the
                # events are committed, so the run's followers read it from the database. One
                # run's buffer must not stop the commits of every other run.
                logger.error(
                    "run %s: committed events out of order for its buffer; followed from the "
                    "database",
                    run_id,
                    exc_info=True,
                    extra={"run_id": run_id},
                )
                self._buffers.discard(run_id)
        for update in updates:
            if update.status is not None:
                self._buffers.set_status(update.run_id, update.status)
        if self._on_commit is not None:
            self._on_commit(events, updates)


def _older(attempt: int | None, than: int | None) -> bool:
    """Whether writes of ``attempt`` are an earlier attempt's than those of ``than`` (None,
    not fenced on an attempt, is neither)."""
    return attempt is not None and than is not None and attempt < than
