"""Tasks: named work that starts ordinary runs by hand or on a schedule, once per occurrence.

Every instance runs a scheduler; any number of them may share a database. A pass takes the due
tasks (a claim: one statement, one instance per task at a time), starts a run for each of their
due occurrences, then moves each task's next occurrence on and drops the claim with a
compare-and-set on it::

    claim_tasks(now) ──▶ for each task: occurrences due ──▶ start_run(run_id = uuid5(task, occ))
         (tasks due,                          │             RunAlreadyExists: created before,
          claim free)                         │             by us or another instance: fired
                                              ▼
                    release_tasks(due=old next_fire_at ─▶ next occurrence)   (compare-and-set,
                                                                      one transaction a pass)

Exactly once per occurrence comes from the run id: it is derived from the task and the
occurrence, so the run row's primary key admits one run per occurrence, whichever instance
creates it and however often it tries. The occurrence counts as fired exactly when its run row
commits, in the run's own transaction. An instance killed after claiming but before the run
committed leaves the task due: once its claim expires (``task_claim_ttl``) another instance
fires the occurrence. Killed after the run committed, before moving the task on: the next
claimer finds the run id taken and only moves the task on. A run that cannot be created now
(the run queue full, shutting down, database unavailable) leaves its occurrence due for the
next pass, never skipped silently; on a full instance the run waits in the run queue for any
instance with room (``runs.py``). Killed while the run executes: the run's retry policy decides,
and a task's runs retry ``instance_lost`` and ``shutdown`` by default (DEFAULT_RETRY_POLICY), so
the reaper puts the run back in the queue and another instance runs the occurrence to its end,
still as one run.

Occurrences older than ``task_misfire_grace`` when found were missed (every instance down, or
the task paused); the task's ``catchup`` decides: ``skip`` them, run the ``latest`` once, or run
``all`` within ``catchup_window_seconds`` (at most ``task_max_catchup``).

When a task's previous run is still going, its ``overlap_policy`` decides: ``skip_if_running``
skips the occurrence, ``queue_next`` keeps one occurrence waiting (``queued_at``) and starts it
when the run has ended (further ones are skipped meanwhile), ``cancel_previous`` cancels the
running runs and starts the new one, ``allow_parallel`` starts it anyway. A paused component
(``POST /agents/{id}/pause``) makes its tasks skip their occurrences.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from agentos.errors import (
    AgentOSError,
    ComponentNotFound,
    ComponentPaused,
    InvalidRequest,
    RunAlreadyExists,
    TaskNotFound,
    WaitTimeout,
)
from agentos.events import RunStatus
from agentos.records import RunRecord, is_valid_id
from agentos.retries import RetryPolicy, RunOptions
from agentos.runs import RunManager
from agentos.schedules import (
    TaskRecord,
    TaskRelease,
    occurrence_id,
    occurrence_run_id,
    parse_task,
)
from agentos.settings import TaskSettings

__all__ = ["DEFAULT_RETRY_POLICY", "TaskManager"]

logger = logging.getLogger("agentos.tasks")

#: Batches of claimed tasks being fired at once by one pass, at most (each up to
#: ``task_claim_batch`` tasks, whose runs are all started at once: their creates share group
#: commits).
_BATCHES_IN_FLIGHT = 4
#: The retry policy of a task's runs when neither the task nor its component has one: an
#: occurrence whose instance died (``instance_lost``: kill -9, a lost lease, a restart) or was
#: deployed away mid-run (``shutdown``) runs again on another instance, up to three attempts.
#: No client waits for a scheduled run to retry it by hand. A run that fails on its own
#: (``exception``, ``timeout``) is not retried unless the task says so.
DEFAULT_RETRY_POLICY = RetryPolicy(
    max_attempts=3, delay=1.0, retry_on=("instance_lost", "shutdown")
)
#: How many occurrences that ``catchup`` drops one pass counts, at most (a metric).
_MISSED_COUNT_LIMIT = 10_000


class TaskManager:
    """The tasks of one server: their definitions (in the database) and this instance's
    scheduler. ``AgentOS.tasks`` in-process, ``/tasks`` over HTTP::

        task = await agent_os.tasks.create({
            "component_id": "reporter", "message": "the nightly report",
            "schedule": {"kind": "cron", "cron": "0 2 * * *", "timezone": "Europe/Berlin"},
        })
        run = await agent_os.tasks.trigger(task.task_id, wait=30)
    """

    def __init__(
        self,
        manager: RunManager,
        settings: TaskSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        self.store = manager.store
        self.settings = settings
        self.instance_id = manager.settings.instance_id
        #: The time the scheduler goes by (tests replace it).
        self.clock = clock
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        #: Occurrences by outcome, counted by this instance's scheduler (for metrics):
        #: ``fired`` (a run was created), ``skipped`` (overlap policy, paused component, a
        #: component this server lacks), ``missed`` (found too late; dropped by ``catchup``).
        self.occurrences: dict[str, int] = dict.fromkeys(("fired", "skipped", "missed"), 0)
        #: Called with each fired occurrence's lag: seconds from its time to its run's commit.
        self.observer: Callable[[float], None] | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start this instance's scheduler (unless ``task_scheduler`` is off)."""
        if self.settings.scheduler and self._loop is None:
            self._loop = asyncio.create_task(self._run_forever(), name="agentos-scheduler")

    async def aclose(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._loop.done()

    def scheduler_alive(self) -> bool | None:
        """Whether this instance's scheduler is alive (for /health); None when it is not meant
        to run (``task_scheduler`` off, not started, or stopped for shutdown)."""
        return None if self._loop is None else not self._loop.done()

    # -- definitions ---------------------------------------------------------------------------

    async def create(self, fields: Mapping[str, Any]) -> TaskRecord:
        """Create a task from a request body (see PROTOCOL.md); 422 naming the field."""
        task = parse_task(fields, self.clock(), new_id=str(uuid.uuid4()))
        self._check_component(task)
        await self.store.create_task(task)
        self._wake.set()
        return task

    async def get(self, task_id: str) -> TaskRecord:
        if not is_valid_id(task_id):
            raise TaskNotFound(task_id)
        task = await self.store.get_task(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    async def list_tasks(self, **filters: Any) -> list[TaskRecord]:
        """Tasks, oldest first; filters: kind, component_id, active, tag, user_id, limit,
        offset."""
        return await self.store.list_tasks(**filters)

    async def update(self, task_id: str, fields: Mapping[str, Any]) -> TaskRecord:
        """Change some fields of a task; a new schedule starts from now."""
        current = await self.get(task_id)
        task = parse_task(fields, self.clock(), current=current)
        self._check_component(task)
        if "active" in fields and task.active and not current.active:
            task = self._resumed(task)
        return await self._write(task)

    async def delete(self, task_id: str) -> None:
        """Delete a task; its runs stay (one in flight runs to its end)."""
        if not is_valid_id(task_id) or not await self.store.delete_task(task_id):
            raise TaskNotFound(task_id)

    async def pause(self, task_id: str) -> TaskRecord:
        """Stop firing the task (its running runs go on)."""
        task = await self.get(task_id)
        return await self._write(replace(task, active=False, updated_at=self.clock()))

    async def resume(self, task_id: str) -> TaskRecord:
        """Fire the task again from its next occurrence; what it missed meanwhile follows its
        ``catchup`` (``skip``: nothing; ``latest``: the latest once; ``all``: all within the
        window)."""
        task = await self.get(task_id)
        if task.active:
            return task
        return await self._write(self._resumed(replace(task, active=True, updated_at=self.clock())))

    async def runs(
        self, task_id: str, *, status: RunStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[RunRecord]:
        """The task's runs, newest first, with their status and attempts."""
        await self.get(task_id)
        return await self.store.task_runs(task_id, status=status, limit=limit, offset=offset)

    async def trigger(self, task_id: str, *, wait: float | None = None) -> RunRecord:
        """Start a run of the task now (occurrence ``manual:<time>``); with ``wait``, wait up
        to that many seconds for it to end (then WaitTimeout, 504; the run goes on).

        The overlap policy ``cancel_previous`` cancels the task's running runs first; the other
        policies leave them: a trigger is an explicit request for one more run.
        """
        task = await self.get(task_id)
        component = self._component(task)
        if task.overlap_policy == "cancel_previous":
            running = await self.store.active_task_runs([task.task_id])
            await self._cancel(running.get(task.task_id, []))
        now = self.clock()
        record = await self._start(task, component, "manual:" + occurrence_id(now), None)
        if wait is None:
            return record
        wait = min(wait, self.settings.wait_timeout)
        try:
            return await self.manager.wait(record.run_id, wait)
        except TimeoutError:
            raise WaitTimeout(
                f"the run did not end within {wait:g} s; it goes on: follow it", record.run_id
            ) from None

    async def _write(self, task: TaskRecord) -> TaskRecord:
        written = await self.store.update_task(task)
        if written is None:
            raise TaskNotFound(task.task_id)
        self._wake.set()
        return written

    def _resumed(self, task: TaskRecord) -> TaskRecord:
        """A task coming back from a pause: its next occurrence by its ``catchup``."""
        now = self.clock()
        schedule = task.schedule
        due = task.next_fire_at
        if due is None or due > now:
            return task
        if task.catchup == "skip":
            return replace(task, next_fire_at=schedule.next_after(now))
        if task.catchup == "latest":
            return replace(task, next_fire_at=schedule.latest_at_or_before(now))
        first = schedule.next_after(now - task.catchup_window - 1e-6)
        return replace(task, next_fire_at=max(due, first if first is not None else due))

    def _check_component(self, task: TaskRecord) -> None:
        try:
            self._component(task)
        except ComponentNotFound:
            raise InvalidRequest(
                f"component_id: this server has no {task.kind} {task.component_id!r}"
            ) from None

    def _component(self, task: TaskRecord) -> Any:
        return self.manager.component(task.kind, task.component_id)

    # -- the scheduler -------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        while True:
            delay = self.settings.tick
            try:
                await self._pass()
                upcoming = await self.store.next_fire_time(self.clock())
                if upcoming is not None:
                    delay = min(delay, max(0.0, upcoming - self.clock()))
            except AgentOSError as exc:
                logger.warning("scheduler pass failed (%s); trying again", exc.detail)
            except Exception:
                logger.exception("scheduler pass failed; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _pass(self) -> None:
        """Fire everything due now, a batch (``claim_batch`` tasks) at a time. A full batch
        means more may be due: the next batch is claimed while the first one's runs are being
        created, so that their creates share group commits instead of waiting for each other
        (at most ``_BATCHES_IN_FLIGHT`` batches at once)."""
        now = self.clock()
        batches: list[asyncio.Future[int]] = []
        try:
            while True:
                claimed = await self._claim(now)
                if claimed:
                    batches.append(asyncio.ensure_future(self._fire_claimed(claimed, now)))
                if len(claimed) < self.settings.claim_batch:
                    break
                in_flight = [batch for batch in batches if not batch.done()]
                if len(in_flight) >= _BATCHES_IN_FLIGHT:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                now = self.clock()
        except asyncio.CancelledError:
            for batch in batches:
                batch.cancel()  # stopping: their claims expire (see the module docstring)
            await asyncio.gather(*batches, return_exceptions=True)
            raise
        except BaseException:
            await asyncio.gather(*batches, return_exceptions=True)
            raise
        # Each batch releases its own claims, whatever happens to the others.
        for outcome in await asyncio.gather(*batches, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def fire_due(self, now: float | None = None) -> int:
        """One scheduler pass over a batch: fire every due occurrence of the tasks this
        instance can claim (at most ``claim_batch``; ``now``: the time to go by, else the
        clock). Returns how many tasks it took.

        A batch costs a few statements whatever the number of tasks: the claim, the tasks'
        running runs, the new runs (created together in the run manager's group commits) and
        the release of every claim in one transaction.
        """
        if now is None:
            now = self.clock()
        claimed = await self._claim(now)
        if claimed:
            await self._fire_claimed(claimed, now)
        return len(claimed)

    async def _claim(self, now: float) -> list[TaskRecord]:
        if not self.manager.accepting:
            return []
        return await self.store.claim_tasks(
            self.instance_id, now, now + self.settings.claim_ttl, self.settings.claim_batch
        )

    async def _fire_claimed(self, claimed: list[TaskRecord], now: float) -> int:
        """Fire the due occurrences of the claimed tasks, all at once, then release them."""
        watched = [
            t.task_id for t in claimed if t.overlap_policy != "allow_parallel" or t.queued_at
        ]
        running = await self.store.active_task_runs(watched)
        releases: list[TaskRelease] = []

        async def one(task: TaskRecord) -> None:
            try:
                releases.append(await self._fire(task, now, list(running.get(task.task_id, []))))
            except AgentOSError as exc:
                logger.warning("task %s not fired now (%s)", task.task_id, exc.detail)
            except Exception:
                # Its claim expires and a later pass fires what is due (still once).
                logger.exception("task %s not fired now", task.task_id)

        await asyncio.gather(*(one(task) for task in claimed))
        await self.store.release_tasks(self.instance_id, releases)
        return len(claimed)

    def _occurrences(self, task: TaskRecord, now: float) -> tuple[list[float], float | None, int]:
        """The occurrences of ``task`` to fire at ``now``, its next one after them, and how
        many due ones its ``catchup`` drops (missed)."""
        due = task.next_fire_at
        schedule = task.schedule
        if due is None or due > now:
            return [], due, 0
        grace_edge = now - self.settings.misfire_grace
        cap = self.settings.max_catchup
        fire: list[float] = []
        start: float | None = due
        missed = 0
        if due <= grace_edge:  # missed while nobody could fire them: catchup decides
            if task.catchup == "latest":
                latest = schedule.latest_at_or_before(grace_edge)
                if latest is not None and latest >= due:
                    fire.append(latest)
            elif task.catchup == "all":
                lo = max(due, now - task.catchup_window)
                t = due if due >= lo else schedule.next_after(lo - 1e-6)
                while t is not None and t <= grace_edge:
                    fire.append(t)
                    t = schedule.next_after(t)
                fire = fire[-cap:]
            found = schedule.count_between(due, grace_edge, _MISSED_COUNT_LIMIT)
            missed = max(0, found - len(fire))
            start = schedule.next_after(grace_edge)
        t = start
        while t is not None and t <= now and len(fire) < cap + 1000:
            fire.append(t)
            t = schedule.next_after(t)
        return fire, t, missed

    async def _fire(self, task: TaskRecord, now: float, running: list[str]) -> TaskRelease:
        """Fire the due occurrences of one claimed task; returns what to write back."""
        due = task.next_fire_at
        occurrences, following, missed = self._occurrences(task, now)
        queued = task.queued_at
        fired = skipped = 0
        last: RunRecord | None = None
        policy = task.overlap_policy
        try:
            component = self._component(task)
        except ComponentNotFound:
            component = None
        todo: list[float | None] = [*([None] if queued is not None else []), *occurrences]
        for position, at in enumerate(todo):
            if at is not None and policy == "queue_next" and running:
                if queued is None:
                    queued = at
                else:
                    skipped += 1
                continue
            if at is None:  # the queued occurrence: its turn once nothing runs
                assert queued is not None
                if running:
                    continue
                at, queued = queued, None
            elif policy == "skip_if_running" and running:
                skipped += 1
                continue
            elif policy == "cancel_previous" and running:
                await self._cancel(running)
                running = []
            occurrence = occurrence_id(at)
            run_id = occurrence_run_id(task.task_id, occurrence)
            if component is None:
                skipped += 1
                continue
            try:
                last = await self._start(task, component, occurrence, run_id)
            except RunAlreadyExists:
                pass  # created before (this or another instance): the occurrence has fired
            except ComponentPaused:
                skipped += 1
                continue
            except AgentOSError as exc:
                # Not now (full, shutting down, database away): the occurrence stays due.
                logger.warning("task %s: occurrence %s waits (%s)", task.task_id, occurrence, exc)
                rest = [t for t in todo[position + 1 :] if t is not None]
                if todo[position] is None:
                    queued = at
                    following = rest[0] if rest else following
                else:
                    following = at
                break
            else:
                self.occurrences["fired"] += 1
                if self.observer is not None:
                    self.observer(self.clock() - at)
            fired += 1
            running.append(run_id)
        self.occurrences["skipped"] += skipped
        self.occurrences["missed"] += missed
        return TaskRelease(
            task.task_id,
            due=due,
            next_fire_at=following,
            queued_at=queued,
            fired=fired,
            skipped=skipped,
            last_fired_at=None if last is None else now,
            last_run_id=None if last is None else last.run_id,
        )

    async def _start(
        self, task: TaskRecord, component: Any, occurrence: str, run_id: str | None
    ) -> RunRecord:
        policy = task.retry_policy or component.options.retry_policy or DEFAULT_RETRY_POLICY
        options = RunOptions(
            retry_policy=policy,
            timeout=task.timeout,
            task_id=task.task_id,
            occurrence=occurrence,
        )
        return await self.manager.start_run(
            component,
            task.message,
            session_id=task.session_id,
            user_id=task.user_id,
            run_id=run_id,
            options=options,
        )

    async def _cancel(self, run_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            with contextlib.suppress(AgentOSError):
                await self.manager.cancel(run_id, wait=0)
