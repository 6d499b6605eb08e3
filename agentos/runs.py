"""The run manager: starts runs in detached tasks, numbers their events, ends each exactly once.

    start_run / start_and_follow ──▶ capacity reserved (no await) ──▶ create (PENDING)
                                 ──▶ asyncio task ─▶ _drive
                                                               │
          component.execute(ctx) ── ctx.emit ──▶ _emit ──▶ GroupCommitter ──▶ store + buffer
                                                               │
          completed / raised / cancelled / timed out ──▶ _end (shielded):
                 terminal event + final status in one group commit

Every detached task is held in ``_tasks`` until its done-callback releases it. ``_end`` is the
only place that writes a terminal event, and it runs once per run whatever happened, including
shutdown (runs get ``shutdown_grace`` seconds, then are cancelled). At start-up, runs this instance
left PENDING or RUNNING (a crash) get the terminal error ``"interrupted"``.

Leases, the reaper and restart recovery live in ``leases.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from agentos.backends.base import Store, open_backend
from agentos.buffer import EventBuffer
from agentos.committer import GroupCommitter
from agentos.context import Meter, RunContext
from agentos.errors import (
    CommitterStopped,
    ComponentNotFound,
    InvalidCursor,
    InvalidRequest,
    QueueFull,
    RunEnded,
    RunNotFound,
    ShuttingDown,
    StoreUnavailable,
    describe_error,
)
from agentos.events import KINDS, Event, Meta, RunStatus, make_event
from agentos.leases import Leases
from agentos.lifecycle import Lifecycle
from agentos.logs import bind_run
from agentos.records import (
    MAX_ID_LENGTH,
    RunRecord,
    RunUpdate,
    check_event_name,
    check_id,
    check_text,
    is_valid_id,
    storable,
)
from agentos.retention import Retention
from agentos.retries import RunOptions, error_fields, policy_of, requeue
from agentos.schedules import occurrence_time
from agentos.sessions import SessionLog, Sessions
from agentos.settings import Settings
from agentos.streams import RunStream, StreamSlots, StreamSource, replay_meta
from agentos.tools import ToolThreads

if TYPE_CHECKING:
    from agentos.components.base import Component

__all__ = ["RunManager"]

logger = logging.getLogger("agentos.runs")

# Event names remembered as checked; past that many, names are checked at every emit.
_EVENT_NAMES_KEPT = 1024


@dataclass
class _ActiveRun:
    record: RunRecord
    component: Component
    next_index: int = 0
    ended: bool = False
    cancel_reason: str | None = None
    #: Why the database refused this run's events; the run then ends with this error.
    failure: str | None = None
    task: asyncio.Task[None] | None = None
    #: Whether ``_drive`` has begun: a task cancelled before its first step never runs its body.
    started: bool = False
    #: When the run last emitted, and when its current time slice began (``time.monotonic()``).
    emitted_at: float = 0.0
    slice_start: float = 0.0
    #: When this attempt's run was scheduled, queued and claimed: added to the attempt's first
    #: started event (RunStarted, TeamRunStarted, WorkflowStarted), then None.
    timing: dict[str, float] | None = None
    #: Whether the run's session id was made for it here: no earlier run can be in it, so the
    #: run reads no history.
    new_session: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RunManager:
    """Owns the runs of one server instance: their tasks, buffer, store and committer."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        backend = open_backend(settings, store)
        self.store = backend.store
        self.notifier = backend.notifier
        self.buffers = EventBuffer(settings.buffer)
        self.committer = GroupCommitter(
            self.store,
            self.buffers,
            settings.commit,
            owner=settings.instance_id,
            on_commit=self._committed,
            on_conflict=self.lose,
            on_reject=self.reject,
        )
        self.leases = Leases(
            self.store,
            self,
            settings.leases,
            instance_id=settings.instance_id,
            page_size=settings.streams.replay_page_size,
            can_renew=lambda: not self.stalled,
            wake_queue=self.wake_queue,
        )
        #: The threads sync tools of this instance's runs run in (bounded; see ToolThreads).
        self.tool_threads = ToolThreads(settings.agents.tool_threads)
        #: Streams being followed right now, against ``max_streams``.
        self.stream_slots = StreamSlots(settings.streams.max_open)
        self._streams = StreamSource(
            self.buffers,
            self.store,
            self.notifier,
            settings.streams,
            self.stream_slots,
            draining=lambda: self._closing,
        )
        self.sessions = Sessions(self.store, forget=self.buffers.discard)
        #: The components' registration and paused flags, shared through the database.
        self.lifecycle = Lifecycle(self.store, settings.runs.component_state_ttl)
        #: Deletes old ended runs (``retention_days``), one instance at a time.
        self.retention = Retention(self.store, settings.retention, settings.instance_id)
        self.components: dict[tuple[str, str], Component] = {}
        self._active: dict[str, _ActiveRun] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Event names found good (components emit a few names many times: checked once each).
        self._event_names: set[str] = set()
        #: Runs being created or claimed right now: they count against ``max_active_runs``.
        self._starting = 0
        #: Room the claimer holds while a claim is in flight, and set when none is.
        self._claiming = 0
        self._claim_done = asyncio.Event()
        self._claim_done.set()
        #: Runs being put in the queue right now: they count against ``max_queued_runs``.
        self._enqueuing = 0
        #: Cancels of runs whose inline client left while they were not executing here.
        self._abandoning: set[asyncio.Future[None]] = set()
        #: Set to make the claimer look at the queue now (room freed, a run queued).
        self._queue_changed = asyncio.Event()
        #: Whether the queue may hold a run to claim here: cleared by a claim that left nothing
        #: queued, set again by whatever may queue one (wake_queue, the poll). Room freed here
        #: wakes the claimer only while it is set: with the queue empty, a run's end costs no
        #: claim query (500 direct starts made ~25 of them, 20 ms each, holding SQLite's write
        #: lock; bench/NOTES.md, run queue).
        self._queue_maybe = True
        #: Counts wake_queue calls: a claim that raced one does not clear ``_queue_maybe``.
        self._queue_hints = 0
        #: Counters for metrics: runs queued by a create here, claimed from the queue, and
        #: attempts that ended in a retry, here.
        self.runs_queued = 0
        self.runs_claimed = 0
        self.runs_retried: dict[str, int] = {}
        self._started = False
        self._closing = False
        self._closed = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._lease_tasks: list[asyncio.Task[None]] = []
        self._grace_timer: asyncio.TimerHandle | None = None
        #: Loop times when the shutdown grace ends, and the cancel grace of the runs cancelled
        #: last at shutdown: aclose waits for what is left of them, not for them again.
        self._grace_ends = 0.0
        self._cancels_end: float | None = None
        #: Counters for metrics: runs started by (kind, component id), and ended by (kind,
        #: component id, status). One increment per run; components and statuses are few.
        self.runs_started: dict[tuple[str, str], int] = {}
        self.runs_ended: dict[tuple[str, str, str], int] = {}
        #: Model tokens and tool calls by (kind, component id), counted by the runs' contexts.
        self.meters: dict[tuple[str, str], Meter] = {}

    # -- registry ------------------------------------------------------------------------------

    def register(self, component: Component) -> None:
        key = (component.kind.name, component.id)
        if self.components.get(key, component) is not component:
            raise ValueError(f"two {component.kind.name} share the id {component.id!r}")
        self.components[key] = component

    def component(self, kind: str, component_id: str) -> Component:
        found = self.components.get((kind, component_id))
        if found is None:
            raise ComponentNotFound(kind, component_id)
        return found

    def list_components(self, kind: str) -> list[Component]:
        return [c for (k, _), c in self.components.items() if k == kind]

    # -- life cycle ----------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._started and not self._closing

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def active_runs(self) -> int:
        return len(self._tasks)

    @property
    def stalled(self) -> bool:
        """Whether commits have failed for ``commit_stall_timeout`` seconds, or stopped."""
        committer = self.committer
        if self._started and not self._closed.is_set() and not committer.running:
            return True
        return committer.failing_for() >= self.settings.commit.stall_timeout

    def background_tasks(self) -> dict[str, bool]:
        """Whether each background task of this instance is alive, by name (for /health)."""
        tasks = [*self._lease_tasks, *([self._sweeper] if self._sweeper is not None else [])]
        alive = {task.get_name().removeprefix("agentos-"): not task.done() for task in tasks}
        alive["group-commit"] = self.committer.running
        return alive

    @property
    def open_streams(self) -> int:
        """Streams being followed right now."""
        return self.stream_slots.count

    async def start(self) -> None:
        """Open the store, end runs a previous life of this instance left behind, start writing."""
        if self._started:
            return
        await self.store.open()
        try:
            await self.leases.hold_identity()
        except BaseException:
            await self.store.close()
            raise
        try:
            await self.lifecycle.register(list(self.components.values()))
            await self.leases.recover()
        except BaseException:
            # Nothing runs yet: let the id go and close, so that a retry (or another process)
            # can start at once.
            with contextlib.suppress(Exception):
                await self.leases.release_identity()
            await self.store.close()
            raise
        self.committer.start()
        await self.notifier.start(on_cancel=self.cancel_nowait, on_queue=self.wake_queue)
        self._sweeper = asyncio.create_task(self._sweep(), name="agentos-buffer-sweeper")
        self._lease_tasks = [
            asyncio.create_task(self.leases.renew_forever(), name="agentos-lease-renewer"),
            asyncio.create_task(self.leases.reap_forever(), name="agentos-reaper"),
            asyncio.create_task(self._claim_forever(), name="agentos-queue"),
        ]
        self._lease_tasks.append(
            asyncio.create_task(self.lifecycle.refresh_forever(), name="agentos-component-states")
        )
        if self.retention.enabled:
            self._lease_tasks.append(
                asyncio.create_task(self.retention.run_forever(), name="agentos-retention")
            )
        self._started = True

    def begin_shutdown(self) -> None:
        """Refuse new runs; cancel the running ones after ``shutdown_grace`` seconds."""
        if self._closing:
            return
        self._closing = True
        logger.info(
            "shutting down: %d runs get %.1fs", len(self._tasks), self.settings.runs.shutdown_grace
        )
        loop = asyncio.get_running_loop()
        self._grace_ends = loop.time() + self.settings.runs.shutdown_grace
        self._grace_timer = loop.call_later(self.settings.runs.shutdown_grace, self._cancel_all)
        self.notifier.wake_all()  # tails of other instances' runs end now; clients go elsewhere

    async def aclose(self) -> None:
        """Shut down: grace period, cancel what still runs, flush events, close the store."""
        if not self._started or self._closed.is_set():
            return
        self.begin_shutdown()
        # Under ``agentos serve`` the drain has already given the runs (some of) their grace.
        loop = asyncio.get_running_loop()
        if self._tasks:
            await asyncio.wait(
                list(self._tasks.values()), timeout=max(0.0, self._grace_ends - loop.time())
            )
        self._cancel_all()
        if self._tasks:
            cancels_end = self._cancels_end
            if cancels_end is None:  # left running with an earlier cancel (not shutdown's)
                cancels_end = loop.time() + self.settings.runs.cancel_grace
            await asyncio.wait(
                list(self._tasks.values()), timeout=max(0.0, cancels_end - loop.time())
            )
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.committer.aclose()
        for task in self._lease_tasks:
            task.cancel()
        await asyncio.gather(*self._lease_tasks, return_exceptions=True)
        try:
            await self.leases.release_identity()
        except Exception:
            logger.warning("could not release the instance id; a restart waits for its lease")
        await self.notifier.aclose()
        self.tool_threads.shutdown()
        try:
            async with asyncio.timeout(self.settings.commit.close_timeout):
                await self.store.close()
        except TimeoutError:
            logger.error("the store did not close in time; its connections are left to the OS")
        self._closed.set()

    def _cancel_all(self) -> None:
        cancelled = False
        for active in list(self._active.values()):
            cancelled |= active.cancel_reason is None and not active.ended
            self._request_cancel(active, "shutdown")
        if cancelled:  # these runs get shutdown_cancel_grace from now
            self._cancels_end = asyncio.get_running_loop().time() + self.settings.runs.cancel_grace

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.buffer.sweep_interval)
            self.buffers.sweep()

    # -- runs ----------------------------------------------------------------------------------

    async def start_run(
        self,
        component: Component,
        message: str,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        run_id: str | None = None,
        options: RunOptions | None = None,
    ) -> RunRecord:
        """Persist a PENDING run and start it in a detached task (or QUEUED, see ``_start``)."""
        record, _ = await self._start(
            component, message, session_id, user_id, run_id, None, options
        )
        return record

    async def start_and_follow(
        self,
        component: Component,
        message: str,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        run_id: str | None = None,
        cancel_on_close: bool = False,
        meta: bool = False,
        options: RunOptions | None = None,
    ) -> tuple[RunRecord, RunStream]:
        """Start a run and open its stream from the first event, as one step.

        The stream's slot is taken before the run is created: a create refused for want of a
        stream (503 ``overloaded``) never leaves a run going that nobody knows about. With
        ``cancel_on_close``, a stream closed before the terminal event cancels the run (the
        inline streaming mode).
        """
        record, stream = await self._start(
            component, message, session_id, user_id, run_id, (cancel_on_close, meta), options
        )
        assert stream is not None
        return record, stream

    async def _start(
        self,
        component: Component,
        message: str,
        session_id: str | None,
        user_id: str | None,
        run_id: str | None,
        follow: tuple[bool, bool] | None,
        options: RunOptions | None,
    ) -> tuple[RunRecord, RunStream | None]:
        if not isinstance(message, str) or not message.strip():
            raise InvalidRequest("message must be a non-empty string")
        check_text("message", message)
        for name, value in (("run_id", run_id), ("session_id", session_id)):
            if value is not None:
                check_id(name, value)
        if user_id is not None and (
            not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_ID_LENGTH
        ):
            raise InvalidRequest(f"user_id must be a string of 1 to {MAX_ID_LENGTH} characters")
        if user_id is not None:
            check_text("user_id", user_id)
        if not self.accepting:
            raise ShuttingDown("the server is shutting down; try another instance")
        self.lifecycle.check(component.kind.name, component.id)
        opts = _merged(options, component.options)
        interrupted: frozenset[str] = frozenset()
        if opts.multitask == "interrupt" and session_id is not None:
            interrupted = await self._interrupt_session(session_id)
        # Check and reserve with no await in between (_room_here returns from its last check
        # without one): concurrent creates cannot overshoot either limit.
        local = opts.multitask != "enqueue" and await self._room_here()
        if not local and self._enqueuing >= self.settings.runs.max_queued:
            raise QueueFull(f"{self._enqueuing} runs are being queued here; try again later")
        if follow is not None:
            self.stream_slots.reserve()
        if local:
            self._starting += 1
        else:
            self._enqueuing += 1
        creating = asyncio.ensure_future(
            self._create(component, message, session_id, user_id, run_id, opts, local, interrupted)
        )
        try:
            record = await asyncio.shield(creating)
        except BaseException as exc:
            if follow is not None:
                self.stream_slots.release()
            if isinstance(exc, asyncio.CancelledError) and local:
                # The caller left (a socket closed) while its run was being created: a run that
                # gets created all the same is started and cancelled, so it ends like any other.
                creating.add_done_callback(lambda done: self._start_orphan(done, component))
            raise
        finally:
            if local:
                self._starting -= 1
            else:
                self._enqueuing -= 1
        if local:
            self._launch(record, component, new_session=session_id is None)
        else:
            self.runs_queued += 1
            self.wake_queue()
        if follow is None:
            return record, None
        cancel_on_close, meta = follow
        stream = RunStream(
            self._streams,
            record,
            -1,
            0,
            ended=False,
            meta=meta,
            on_abandon=self._abandon if cancel_on_close else None,
        )
        return record, stream

    async def _room_here(self) -> bool:
        """Whether a new run can start on this instance at once. Room the claimer holds for a
        claim in flight is waited for (a claim takes a few milliseconds), so that a create
        is not queued for want of room that the claim may not use."""
        max_active = self.settings.runs.max_active
        deadline = asyncio.get_running_loop().time() + self.settings.commit.create_timeout
        while True:
            running = len(self._tasks) + self._starting
            if running + self._claiming < max_active:
                return True
            if running >= max_active or not self._claiming:
                return False
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._claim_done.wait()

    async def _interrupt_session(self, session_id: str) -> frozenset[str]:
        """``multitask="interrupt"``: cancel the session's active runs and wait (``cancel_wait``)
        for their end; their ids. The create then goes in only if no other run got in
        meanwhile (see ``_create``): one of these still ending does not keep it out."""
        active = await self.store.session_runs_active(session_id)
        for record in active:
            await self.cancel(record.run_id)
        return frozenset(record.run_id for record in active)

    async def _create(
        self,
        component: Component,
        message: str,
        session_id: str | None,
        user_id: str | None,
        run_id: str | None,
        options: RunOptions,
        local: bool = True,
        interrupted: frozenset[str] = frozenset(),
    ) -> RunRecord:
        now = time.time()
        policy = options.retry_policy
        record = RunRecord(
            run_id=run_id or str(uuid.uuid4()),
            kind=component.kind.name,
            component_id=component.id,
            session_id=session_id or str(uuid.uuid4()),
            user_id=user_id,
            status=RunStatus.PENDING if local else RunStatus.QUEUED,
            input=message,
            created_at=now,
            updated_at=now,
            instance_id=self.settings.instance_id if local else None,
            lease_until=now + self.settings.leases.ttl if local else None,
            attempt=1 if local else 0,
            started_at=now if local else None,
            not_before=None if local else now,
            retry_policy=None if policy is None else policy.to_json(),
            timeout=options.timeout,
            multitask=options.multitask,
            task_id=options.task_id,
            occurrence=options.occurrence,
        )
        timeout = self.settings.commit.create_timeout
        # "reject" and "interrupt": the run goes in only while its session has no other
        # unfinished run, checked in the insert's transaction (exact across instances).
        alone = session_id is not None and options.multitask in ("reject", "interrupt")
        if not local:
            depth = await self.store.queue_depth()
            if depth + self._enqueuing > self.settings.runs.max_queued:
                raise QueueFull(f"{depth} runs wait in the queue already; try again later")
        elif (run_id is None or options.occurrence is not None) and not alone:
            # A fresh UUID, or a task occurrence's (taken only when the occurrence has fired
            # already: the committer then reports the clash): batched with other new runs.
            await self.committer.create(record, timeout)
            return record
        try:
            async with asyncio.timeout(timeout):
                # A client's id may be taken (409 run exists); a session busy (409 too).
                await self.store.create_run(record, alone=alone, besides=interrupted)
        except TimeoutError:
            raise StoreUnavailable(
                f"the database did not commit within {timeout:g} s; try again later"
            ) from None
        return record

    def _start_orphan(self, created: asyncio.Future[RunRecord], component: Component) -> None:
        if created.cancelled() or created.exception() is not None:
            return
        record = created.result()
        self._launch(record, component)
        self.cancel_nowait(record.run_id, "cancelled")

    def _launch(
        self,
        record: RunRecord,
        component: Component,
        *,
        queued: bool = False,
        new_session: bool = False,
    ) -> None:
        """Start executing ``record`` here (created here, or ``queued`` and claimed)."""
        active = _ActiveRun(
            record, component, next_index=record.event_count, new_session=new_session
        )
        active.timing = _timing(record, queued)
        self._active[record.run_id] = active
        self.buffers.open(record.run_id, record.event_count)
        task = asyncio.create_task(self._drive(active), name=f"agentos-run-{record.run_id}")
        active.task = task
        self._tasks[record.run_id] = task
        task.add_done_callback(lambda _: self._release(active))
        key = (record.kind, record.component_id)
        self.runs_started[key] = self.runs_started.get(key, 0) + 1

    def _release(self, active: _ActiveRun) -> None:
        run_id = active.record.run_id
        if self._active.get(run_id) is active:
            del self._active[run_id]
            self._tasks.pop(run_id, None)
        active.done.set()
        if self._queue_maybe:
            self._queue_changed.set()  # room for a queued run

    # -- the queue -----------------------------------------------------------------------------

    def wake_queue(self) -> None:
        """Look at the queue now: a run was (or may have been) queued, here or elsewhere."""
        self._queue_maybe = True
        self._queue_hints += 1
        self._queue_changed.set()

    async def _claim_forever(self) -> None:
        """Claim queued runs while this instance has room; wait for a wake-up or
        ``queue_poll_interval`` between looks."""
        while True:
            try:
                async with asyncio.timeout(self.settings.runs.queue_poll_interval):
                    await self._queue_changed.wait()
            except TimeoutError:
                # The poll: runs queued by another instance without a notification (SQLite),
                # or whose not_before has come.
                self._queue_maybe = True
            self._queue_changed.clear()
            try:
                while await self.claim_once() > 0 and self._queue_maybe:
                    pass
            except StoreUnavailable as exc:
                logger.warning("claiming queued runs failed (%s); retrying", exc)
            except Exception:
                logger.exception("claiming queued runs failed; retrying")

    async def claim_once(self) -> int:
        """Claim as many queued runs as this instance has room for (at most ``claim_batch``)
        and start them; returns how many."""
        runs = self.settings.runs
        room = min(
            runs.max_active - len(self._tasks) - self._starting - self._claiming, runs.claim_batch
        )
        if room <= 0 or not self.accepting or self.stalled:
            return 0
        # Reserved across the await: creates wait for it (see _room_here) instead of taking it.
        self._claiming += room
        self._claim_done.clear()
        hints = self._queue_hints
        try:
            now = time.time()
            claimed = await self.store.claim_runs(
                self.settings.instance_id,
                list(self.components),
                now=now,
                lease_until=now + self.settings.leases.ttl,
                limit=room,
                exclude=self._finishing(),
            )
        finally:
            self._claiming -= room
            self._claim_done.set()
        for record in claimed:
            self.runs_claimed += 1
            component = self.components[(record.kind, record.component_id)]
            old = self._active.get(record.run_id)
            if old is None:
                self._launch(record, component, queued=True)
            else:
                self._take_back(old, record, component)
        if len(claimed) < room:
            # The queue held less than the room: is it empty now? The runs just launched go
            # first (to their first event, which their clients wait for).
            await asyncio.sleep(0)
            if await self.store.queue_depth() == 0 and self._queue_hints == hints:
                # Nothing is queued, and nothing was since the claim began (a run queued since
                # then was woken for after its commit, so after ``hints`` was read). Runs left
                # in the queue (not due yet, a busy session's, excluded here) keep it set: a
                # release here may be what lets them start.
                self._queue_maybe = False
        return len(claimed)

    def _take_back(self, old: _ActiveRun, record: RunRecord, component: Component) -> None:
        """Start the attempt ``record`` of a run whose earlier attempt ``old`` still executes
        here: once ``old`` has stopped.

        This happens when this instance stalled past the run's lease: another instance's
        reaper put the run back in the queue, and this instance's claimer took it again before
        anything of ``old`` reached the database (which would have found the run QUEUED and
        stopped it). The database now has this instance execute the new attempt; ``old`` is
        fenced out by its attempt (``Store.commit``), so it is stopped here as a lost run is.
        Both must not execute together: they share the run's entry in ``_active`` and
        ``_tasks``, its buffer and its queued writes in the committer. So the new attempt
        starts from ``old``'s task's done-callbacks, after the one that releases ``old``; its
        room is held meanwhile (``_starting``). Nothing awaits between the check of
        ``_active`` (in the claimer) and this: no other start of the run can come in between.
        """
        logger.warning(
            "run %s: attempt %d claimed while attempt %d still executes here; stopping it first",
            record.run_id,
            record.attempt,
            old.record.attempt,
            extra={"run_id": record.run_id},
        )
        self.lose(record.run_id, old.record.attempt)
        self._starting += 1
        task = old.task

        def launch(_: object = None) -> None:
            self._starting -= 1
            self._launch(record, component, queued=True)
            if self._closing:
                self.cancel_nowait(record.run_id, "shutdown")  # back to the queue, or ended

        if task is None:
            launch()
        else:
            # Called after _release (added first, at _launch), which lets ``old`` go; on a task
            # done already, scheduled after it too.
            task.add_done_callback(launch)

    def _finishing(self) -> list[str]:
        """Runs whose attempt here has ended but whose task has not: not to be claimed here
        until it has (their release wakes the claimer). A run whose end has committed as its
        final status is left out: it cannot be queued any more, and under a burst of short
        runs the list (a NOT IN, new SQL for each length) would hold hundreds of them."""
        return [
            run_id
            for run_id, active in self._active.items()
            if active.ended and not active.record.status.ended
        ]

    async def _drive(self, active: _ActiveRun) -> None:
        record = active.record
        ctx = RunContext(
            functools.partial(self._emit, active),
            run_id=record.run_id,
            session_id=record.session_id,
            user_id=record.user_id,
            settings=self.settings.agents,
            session=SessionLog(
                self.store,
                record,
                self.settings.agents.history_runs,
                new=active.new_session,
                retry=self.settings.commit,
            ),
            tool_threads=self.tool_threads,
            meter=self.meters.setdefault((record.kind, record.component_id), Meter()),
        )
        status, fields = RunStatus.ERROR, {"error": "internal error"}
        #: Why the attempt ended without finishing the run, and the exception if one did it.
        reason: str | None = None
        error: BaseException | None = None
        active.started = True
        bind_run(record)  # this task's log lines carry the run's ids
        if record.attempt <= 1:
            logger.info("run started")
        else:
            logger.info("run attempt %d started", record.attempt)
        try:
            self.committer.update(
                RunUpdate(record.run_id, status=RunStatus.RUNNING), record.attempt
            )
            if active.cancel_reason is not None or active.failure is not None:
                raise asyncio.CancelledError  # cancelled before this task had started
            timeout = record.timeout if record.timeout is not None else self.settings.runs.timeout
            async with asyncio.timeout(timeout or None):
                content = await active.component.execute(ctx, record.input)
            if active.cancel_reason is not None:
                status, fields = RunStatus.CANCELLED, {"reason": active.cancel_reason}
            else:
                status, fields = RunStatus.COMPLETED, {"content": content, **ctx.completed}
        except asyncio.CancelledError:
            if active.failure is not None:
                status, fields = RunStatus.ERROR, {"error": active.failure}
            else:
                cancel_reason = active.cancel_reason or "cancelled"
                status, fields = RunStatus.CANCELLED, {"reason": cancel_reason}
                if cancel_reason == "shutdown":
                    reason = "shutdown"
        except TimeoutError as exc:
            status, fields = RunStatus.ERROR, {"error": "timeout"}
            reason, error = "timeout", exc
        except Exception as exc:
            logger.info("run %s failed", record.run_id, exc_info=True)
            status, fields = RunStatus.ERROR, {"error": describe_error(exc)}
            reason, error = "exception", exc
        finally:
            # Shielded, and awaited through further cancels (shutdown): the terminal write must
            # not stop, and the run is released (done, _tasks) only once it is committed.
            if reason is not None and self._retries(active, reason, error):
                message = fields.get("error") or fields.get("reason") or reason
                finish = asyncio.ensure_future(self._requeue(active, reason, str(message)))
            else:
                finish = asyncio.ensure_future(self._end(active, status, fields))
            while not finish.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([finish])
            finish.result()

    def _retries(self, active: _ActiveRun, reason: str, error: BaseException | None) -> bool:
        """Whether the attempt that just ended for ``reason`` gets another (its policy)."""
        if active.ended or active.failure is not None:
            return False
        return policy_of(active.record).retries(active.record.attempt, reason, error)

    async def _requeue(self, active: _ActiveRun, reason: str, error: str) -> None:
        """End this attempt with ``RunRetrying`` and put the run back in the queue, in one group
        commit; its followers go on from the database until an instance claims it."""
        record = active.record
        await self.committer.wait_for_space()
        if active.ended:
            return
        event, update = requeue(record, active.next_index, reason, error, now=time.time())
        active.next_index += 1
        active.ended = True
        self.committer.put(record.run_id, event, record.attempt)
        self.committer.update(update, record.attempt)
        self.runs_retried[reason] = self.runs_retried.get(reason, 0) + 1
        logger.info(
            "run attempt %d ended (%s); queued again for attempt %d",
            record.attempt,
            reason,
            record.attempt + 1,
        )
        try:
            await self.committer.flush()
        except CommitterStopped:
            logger.error("run %s: its retry could not be committed", record.run_id)
            return
        self.buffers.discard(record.run_id)
        delay = (update.not_before or 0.0) - time.time()
        asyncio.get_running_loop().call_later(max(0.0, delay), self.wake_queue)

    def _end(
        self, active: _ActiveRun, status: RunStatus, fields: dict[str, Any]
    ) -> Coroutine[Any, Any, None]:
        """Queue the run's terminal event and its final status (one group commits both); returns
        what is left to await: their commit.

        Called by the run's task as its component returns, so both are queued in that same step
        when the committer has room: with the run's last events, in their group. From a task of
        their own (one more turn of the loop) they missed that group about three times in four
        with 200 runs streaming at once, and cost their own write to every follower
        (bench/NOTES.md, session 6).
        """
        if active.ended:
            return _nothing()
        kind = active.component.kind
        if status is RunStatus.ERROR and active.record.attempt > 1:
            # The last of several attempts: the error lists them all.
            fields = {**fields, **error_fields(active.record, str(fields["error"]), time.time())}
        try:
            waiting = self._emit(active, kind.terminal_name(status), fields, terminal=True)
        except (RunEnded, CommitterStopped):
            self._no_terminal(active)
            return _nothing()
        if waiting is not None:  # no room in the committer: queued once there is
            return self._end_with_space(waiting, active, status, fields)
        self._final_status(active, status, fields)
        return self._flush_end(active)

    async def _end_with_space(
        self,
        waiting: Awaitable[None],
        active: _ActiveRun,
        status: RunStatus,
        fields: dict[str, Any],
    ) -> None:
        try:
            await waiting
        except (RunEnded, CommitterStopped):
            self._no_terminal(active)
            return
        self._final_status(active, status, fields)
        await self._flush_end(active)

    def _no_terminal(self, active: _ActiveRun) -> None:
        # The run was taken over meanwhile, or the committer stopped: the terminal event is
        # another writer's, or the lease renewer ends the run once it can ("interrupted").
        logger.error("run %s: no terminal event could be queued", active.record.run_id)

    def _final_status(self, active: _ActiveRun, status: RunStatus, fields: dict[str, Any]) -> None:
        """Queue the run's final status, right after its terminal event (no await between)."""
        update = RunUpdate(
            active.record.run_id,
            status=status,
            content=storable(fields.get("content")),
            error=storable(fields.get("error")),
            event_count=active.next_index,
        )
        self.committer.update(update, active.record.attempt)
        record = active.record
        key = (record.kind, record.component_id, status.value)
        self.runs_ended[key] = self.runs_ended.get(key, 0) + 1
        # The status and a short reason, never the run's content (it may hold the message).
        reason = fields.get("reason") or fields.get("error")
        if status is RunStatus.COMPLETED or not isinstance(reason, str):
            logger.info("run ended: %s (%d events)", status.value, active.next_index)
        else:
            reason = reason.partition(":")[0]  # an exception's type, not its text
            logger.info("run ended: %s, %s (%d events)", status.value, reason, active.next_index)

    async def _flush_end(self, active: _ActiveRun) -> None:
        try:
            await self.committer.flush()
        except CommitterStopped:
            logger.error("run %s: its terminal event could not be committed", active.record.run_id)

    def _emit(
        self, active: _ActiveRun, name: str, fields: dict[str, Any], terminal: bool = False
    ) -> Awaitable[None] | None:
        """Queue the run's next event; what to await before the run goes on, or None.

        A plain call, not a coroutine: ``_end`` queues a run's terminal event in the same step
        as its last events (see there), and a run that streams at full speed queues most of its
        events with nothing to wait for (``RunContext.emit`` awaits only what this returns).
        """
        if active.ended:
            raise RunEnded(active.record.run_id)
        if active.timing is not None and name == active.component.kind.started:
            fields, active.timing = {**fields, **active.timing}, None
        if name not in self._event_names:
            check_event_name(name)
            if len(self._event_names) < _EVENT_NAMES_KEPT:
                self._event_names.add(name)
        if not self.committer.has_space:
            return self._emit_with_space(active, name, fields, terminal)
        return self._queue(active, name, fields, terminal)

    async def _emit_with_space(
        self, active: _ActiveRun, name: str, fields: dict[str, Any], terminal: bool
    ) -> None:
        await self.committer.wait_for_space()
        if active.ended:
            raise RunEnded(active.record.run_id)
        waiting = self._queue(active, name, fields, terminal)
        if waiting is not None:
            await waiting

    def _queue(
        self, active: _ActiveRun, name: str, fields: dict[str, Any], terminal: bool
    ) -> Awaitable[None] | None:
        # No await between numbering and queueing: concurrent emitters (parallel team members)
        # queue their events in index order.
        event = make_event(active.record, active.next_index, name, fields, terminal)
        active.next_index += 1
        if terminal:
            active.ended = True
        self.committer.put(active.record.run_id, event, active.record.attempt)
        if terminal:
            return None
        # The pacing below awaits only when it has to: a run that streams thousands of events
        # at full speed otherwise paid two coroutines per event for a check that passes.
        if active.next_index <= 2:
            return self._pace_first(active, event)
        if self._slice_over(active):
            return asyncio.sleep(0)
        return None

    async def _pace_first(self, active: _ActiveRun, event: Event) -> None:
        """Commit a run's first two events before it goes on (its started event, and its first
        output: the time to first token) when nothing else is being committed, then let other
        tasks in once per ``time_slice`` that the run spends emitting without awaiting anything
        else.

        A run that emits at full speed holds the event loop until its own next await, and
        while it runs, the database thread waits for the GIL and every step of a commit in
        flight waits for the loop: its first event used to wait 40 to 200 ms for a group
        commit of a few events (bench/NOTES.md, time to the first event). Waiting for that one
        commit leaves the loop idle, so it takes about a millisecond; the time slice bounds how
        long a commit step, a stream or a request then waits behind the run. The same holds
        for a model's first token: its next deltas are often in already, and its commit took
        4 to 10 ms on a busy machine while the run read them, about 1 ms waited for
        (bench/NOTES.md, session 4). A gap of more than a slice since the run's previous event
        means it was away (awaiting): a new slice begins.

        Only an event that the committer would write on its own is waited for. With other
        runs' events pending or a group being written, the wait would be a group or two, and
        every run's events would be split over more groups: 500 runs started at once then cost
        twice the fence checks, notifications and status updates (bench/NOTES.md, run queue);
        there the time slice alone keeps the loop turning.
        """
        committer = self.committer
        if committer.pending <= 1 and not committer.writing:
            await committer.committed(event)
        active.emitted_at = active.slice_start = time.monotonic()

    def _slice_over(self, active: _ActiveRun) -> bool:
        """Whether the run has emitted for a whole ``time_slice`` without awaiting anything
        else (see :meth:`_pace_first`): it should then let other tasks in."""
        now = time.monotonic()
        time_slice = self.settings.runs.time_slice
        if now - active.emitted_at > time_slice:
            active.slice_start = now
        active.emitted_at = now
        if now - active.slice_start >= time_slice:
            active.slice_start = now
            return True
        return False

    def _committed(self, events: object, updates: list[RunUpdate]) -> None:
        # A run's status changes when its update commits, together with the events before it.
        for update in updates:
            active = self._active.get(update.run_id)
            if active is not None:
                active.record = active.record.updated(update)

    def executing(self) -> dict[str, int]:
        """The runs executing here that have not ended: id -> the attempt executing."""
        return {
            run_id: active.record.attempt
            for run_id, active in self._active.items()
            if not active.ended
        }

    def lose(self, run_id: str, attempt: int | None = None) -> None:
        """Another writer (an instance that declared this run lost) already ended it in the
        database, or moved it on past ``attempt``: stop the run here without a terminal event
        of ours, and drop its writes still queued; followers read the run's end from the
        database. A later attempt executing here (see _take_back) is left alone."""
        active = self._active.get(run_id)
        if active is not None and attempt is not None and active.record.attempt != attempt:
            self.committer.drop(run_id, attempt)
            return
        if active is not None:
            active.ended = True
            active.cancel_reason = active.cancel_reason or "conflict"
            if active.task is not None:
                active.task.cancel()
            self.committer.drop(run_id, active.record.attempt)
        self.buffers.discard(run_id)

    def reject(
        self, run_id: str, attempt: int | None, first_index: int | None, reason: str
    ) -> None:
        """The database refused events of a run (the committer dropped them and what followed):
        end the run with an error event at the first index that did not commit.

        A run still executing is stopped and ends through ``_drive``; one whose terminal event
        was among the refused gets a plain error event in its place, once.
        """
        active = self._active.get(run_id)
        if active is None:
            return  # not executing here: the lease renewer ends it as a stray
        if attempt is not None and active.record.attempt != attempt:
            return  # an earlier attempt's, stopped already: not this one's business
        if first_index is not None:
            active.next_index = first_index
        error = f"the database refused an event of this run ({reason})"
        if not active.ended:
            active.failure = error
            if active.task is not None and active.started:
                active.task.cancel()
            return
        if active.failure is not None:
            logger.error("run %s: its error event was refused too; left to the leases", run_id)
            return
        active.failure = error
        kind = active.component.kind
        event = make_event(active.record, active.next_index, kind.error, {"error": error}, True)
        active.next_index += 1
        self.committer.put(run_id, event, active.record.attempt)
        update = RunUpdate(
            run_id, status=RunStatus.ERROR, error=error, event_count=active.next_index
        )
        self.committer.update(update, active.record.attempt)

    def _request_cancel(self, active: _ActiveRun, reason: str) -> None:
        if active.cancel_reason is None and not active.ended:
            active.cancel_reason = reason
            # A task not started yet would be cancelled without running _drive (no terminal
            # event); _drive sees cancel_reason when it starts instead.
            if active.task is not None and active.started:
                active.task.cancel()

    async def cancel(self, run_id: str, *, wait: float | None = None) -> RunRecord:
        """Cancel a run (idempotent) and wait up to ``wait`` seconds for it to end.

        A run another instance owns is cancelled through the database: its owner sees the
        request at once on PostgreSQL, at its next lease renewal otherwise. ``wait`` defaults
        to the ``cancel_wait`` setting.
        """
        if wait is None:
            wait = self.settings.runs.cancel_wait
        active = self._active.get(run_id)
        if active is not None and not active.ended:
            self._request_cancel(active, "cancelled")
            try:
                await asyncio.wait_for(asyncio.shield(active.done.wait()), wait)
            except TimeoutError:
                pass
        elif await self._cancel_queued(run_id):
            pass
        elif await self.store.request_cancel(run_id):
            await self._wait_remote_end(run_id, wait)
        return await self.get_run(run_id)

    async def _cancel_queued(self, run_id: str) -> bool:
        """End a QUEUED run with its cancelled event (nobody executes it); False when the run
        is not waiting in the queue."""
        ended = await self.store.end_run(
            run_id,
            self.settings.instance_id,
            _cancelled,
            now=time.time(),
            expired=False,
            queued=True,
        )
        if ended is not None:
            self.notifier.wake(run_id)
        return ended is not None

    async def _wait_remote_end(self, run_id: str, wait: float) -> None:
        loop = asyncio.get_running_loop()
        if not self.notifier.listening:
            wait += self.settings.leases.renew_interval
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            signal = self.notifier.watch(run_id)
            record = await self.store.get_run(run_id)
            if record is None or record.status.ended:
                return
            await self.notifier.wait(signal, min(left, self.settings.streams.tail_poll_interval))

    def cancel_nowait(self, run_id: str, reason: str = "cancelled") -> None:
        active = self._active.get(run_id)
        if active is not None:
            self._request_cancel(active, reason)

    def _abandon(self, run_id: str) -> None:
        """The inline streaming client of a run left: cancel the run, wherever it is (still
        in the queue, or claimed by another instance meanwhile)."""
        active = self._active.get(run_id)
        if active is not None and not active.ended:
            self._request_cancel(active, "cancelled")
            return
        task = asyncio.ensure_future(self._cancel_elsewhere(run_id))
        self._abandoning.add(task)
        task.add_done_callback(self._abandoning.discard)

    async def _cancel_elsewhere(self, run_id: str) -> None:
        try:
            if not await self._cancel_queued(run_id):
                await self.store.request_cancel(run_id)
        except Exception:
            logger.warning("run %s: cancelling it for its gone client failed", run_id)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Wait for a run to end (here, in the queue, or on another instance); returns the
        final run. TimeoutError after ``timeout`` seconds (None: no limit)."""
        async with asyncio.timeout(timeout):
            while True:
                active = self._active.get(run_id)
                if active is not None:
                    await asyncio.shield(active.done.wait())
                signal = self.notifier.watch(run_id)
                record = await self.get_run(run_id)
                if record.status.ended:
                    return record
                if self._active.get(run_id) is None:
                    await self.notifier.wait(signal, self.settings.streams.tail_poll_interval)

    async def get_run(
        self,
        run_id: str,
        *,
        kind: str | None = None,
        component_id: str | None = None,
        session_id: str | None = None,
        owner: str | None = None,
    ) -> RunRecord:
        """The run object; RunNotFound when unknown or not of that component, session or owner.

        ``owner``: the user whose runs alone the caller may see (None: any run). Another user's
        run is "not found", never "forbidden", so that its existence does not leak. An id no
        run can have (not URL-safe) is not found either, without asking the database.
        """
        if not is_valid_id(run_id):
            raise RunNotFound(run_id)
        active = self._active.get(run_id)
        if active is not None:
            record = active.record
            buf = self.buffers.get(run_id)
            if buf is not None:
                record = replace(record, event_count=buf.next_index)
        else:
            found = await self.store.get_run(run_id)
            if found is None:
                raise RunNotFound(run_id)
            record = found
        if (
            (kind is not None and record.kind != kind)
            or (component_id is not None and record.component_id != component_id)
            or (session_id is not None and record.session_id != session_id)
            or (owner is not None and record.user_id != owner)
        ):
            raise RunNotFound(run_id)
        return record

    async def list_runs(self, kind: str, component_id: str, **filters: Any) -> list[RunRecord]:
        records = await self.store.list_runs(kind, component_id, **filters)
        return [self._active[r.run_id].record if r.run_id in self._active else r for r in records]

    async def open_stream(
        self,
        run_id: str,
        last_event_index: int = -1,
        *,
        kind: str | None = None,
        component_id: str | None = None,
        session_id: str | None = None,
        owner: str | None = None,
        meta: bool = True,
    ) -> RunStream | None:
        """Check a resume request and prepare its stream; None when nothing is left to send.

        Raises RunNotFound (unknown run, other component, session or owner) and InvalidCursor.
        """
        record = await self.get_run(
            run_id, kind=kind, component_id=component_id, session_id=session_id, owner=owner
        )
        buf = self.buffers.get(run_id)
        count = buf.next_index if buf is not None else record.event_count
        ended = buf.done if buf is not None else record.status.ended
        if buf is not None and buf.done:
            record = replace(record, status=buf.status)
        if last_event_index < -1:
            raise InvalidCursor("last_event_index must be -1 or more", run_id)
        if last_event_index > count - 1:
            raise InvalidCursor(
                f"last_event_index {last_event_index} is beyond the last event ({count - 1})",
                run_id,
            )
        if ended and last_event_index == count - 1:
            return None
        if not ended and buf is None and self.closing:
            # A draining instance does not start tailing another's run: the client (or nginx,
            # on 503) goes to another instance.
            raise ShuttingDown("the server is shutting down; resume on another instance")
        self.stream_slots.reserve()  # Overloaded past max_streams; the stream gives it back
        return RunStream(self._streams, record, last_event_index, count, ended=ended, meta=meta)

    async def replay_at_end(
        self, run_id: str, total_events: int, *, owner: str | None = None
    ) -> Meta:
        """The ``replay`` meta event of a resume whose cursor is the run's terminal event."""
        record = await self.get_run(run_id, owner=owner)
        buf = self.buffers.get(run_id)
        status = buf.status if buf is not None and buf.done else record.status
        in_buffer = buf is not None and buf.first_index <= total_events
        return replay_meta(run_id, status, total_events, from_buffer=in_buffer)

    def is_local(self, run_id: str) -> bool:
        return run_id in self._active


def _merged(request: RunOptions | None, component: RunOptions) -> RunOptions:
    """A request's options, with the component's where the request says nothing."""
    if request is None:
        return component
    return replace(
        request,
        retry_policy=request.retry_policy or component.retry_policy,
        timeout=request.timeout if request.timeout is not None else component.timeout,
        multitask=request.multitask or component.multitask,
    )


def _timing(record: RunRecord, queued: bool) -> dict[str, float]:
    """What the first started event of an attempt tells of its run's way there: the occurrence
    it stands for (``scheduled_at``, task runs), when it entered the queue (``queued_at``, runs
    that waited there: created queued, or put back for this retry) and when this attempt was
    claimed and started (``claimed_at``); Unix seconds."""
    timing: dict[str, float] = {}
    if record.occurrence is not None:
        scheduled = occurrence_time(record.occurrence)
        if scheduled is not None:
            timing["scheduled_at"] = round(scheduled, 3)
    if queued:
        attempts = record.attempt_list()
        previous = attempts[-2]["ended_at"] if len(attempts) >= 2 else None
        queued_at = previous if isinstance(previous, int | float) else record.created_at
        timing["queued_at"] = round(queued_at, 3)
    started = record.started_at if record.started_at is not None else record.created_at
    timing["claimed_at"] = round(started, 3)
    return timing


def _cancelled(record: RunRecord, last: Event | None) -> tuple[Event | None, RunUpdate]:
    """How a queued run ends when it is cancelled: its cancelled event after its last one."""
    kind = KINDS[record.kind]
    index = 0 if last is None else last.index + 1
    event = make_event(record, index, kind.cancelled, {"reason": "cancelled"}, True)
    update = RunUpdate(record.run_id, status=RunStatus.CANCELLED, event_count=index + 1)
    return event, update


async def _nothing() -> None:
    """A run's end with nothing left to commit (see ``RunManager._end``)."""
