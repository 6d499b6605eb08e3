"""The contracts of a backend: the :class:`Store` that keeps runs and events, the
:class:`Notifier` that wakes followers, and the registry that picks both by database URL.

    Settings.database.url ──scheme──▶ registry ──▶ Backend(store, notifier)
        sqlite+aiosqlite://...           "sqlite"       SQLStore,      Notifier (polling)
        postgresql+asyncpg://...         "postgresql"   PostgresStore, PostgresNotifier

The run engine only knows these contracts: records (``agentos.records``), events and domain
errors (``RunAlreadyExists``, ``WriteConflict``), never a driver's exceptions or types. A backend
module registers itself with :func:`register_backend`; the built-in ones are imported only when a
URL asks for them, so a SQLite server never imports asyncpg.

A follower of a run that another instance owns reads the database, then waits on the run's
*signal* (:meth:`Notifier.watch`) until woken or ``tail_poll_interval`` passes. The base
:class:`Notifier` only times out (polling); a backend with push notifications (PostgreSQL
LISTEN/NOTIFY, ``postgres.py``) wakes the signal as soon as the events are committed. A follower
takes the signal *before* it reads, so a notification that arrives between its read and its wait
still wakes it::

    signal = notifier.watch(run_id)
    events = await store.read_events(run_id, cursor + 1, page)
    if not events:
        await notifier.wait(signal, settings.streams.tail_poll_interval)
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from agentos.events import Event, RunStatus
from agentos.records import ComponentState, ComponentStats, IdempotencyKey, RunRecord, RunUpdate
from agentos.schedules import TaskRecord, TaskRelease
from agentos.sessions import MessageRecord, SessionRecord
from agentos.settings import Settings

__all__ = [
    "ANY_USER",
    "Backend",
    "Ending",
    "Notifier",
    "Store",
    "open_backend",
    "register_backend",
]

CancelFn = Callable[[str], None]


class _AnyUser:
    """The type of :data:`ANY_USER`."""

    def __repr__(self) -> str:
        return "ANY_USER"


#: A ``user_id`` filter that does not filter (``None`` means "runs without a user").
ANY_USER = _AnyUser()
#: What ends a run, given the run and its last event (None when it has none): the terminal
#: event to append (None when the last event is terminal already) and the run's final update.
Ending = Callable[[RunRecord, Event | None], tuple[Event | None, RunUpdate]]


class Store(abc.ABC):
    """The persistence the run manager needs. Implementations must be safe for one event loop."""

    def notifier(self, settings: Settings) -> Notifier:
        """The notifier that goes with this store: wakes followers when this database can push
        (PostgreSQL LISTEN/NOTIFY); polling (the base :class:`Notifier`) by default."""
        return Notifier()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """One cheap round trip to the database (``SELECT 1``): the health check. Raises
        StoreUnavailable when the database cannot answer."""

    @abc.abstractmethod
    async def create_run(
        self, run: RunRecord, *, alone: bool = False, besides: Collection[str] = ()
    ) -> None:
        """Insert a new run; raises RunAlreadyExists when its id is taken. ``alone``: raises
        SessionBusy instead when its session has another unfinished run (other than the runs
        ``besides``, cancelled already), checked in the insert's transaction so that of several
        such creates at once (on any instances) at most one goes in."""

    @abc.abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, with ``event_count`` counting its committed events."""

    @abc.abstractmethod
    async def taken_run_ids(self, run_ids: Collection[str]) -> set[str]:
        """Which of ``run_ids`` a run already has."""

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
        attempts: Mapping[str, int] | None = None,
        runs: Sequence[RunRecord] = (),
    ) -> None:
        """Insert new runs, write events (run_id, event) and run updates in one transaction.

        With ``owner``, the commit is fenced: an event of a run that another instance owns (one
        that :meth:`end_run` took over) raises WriteConflict and nothing is written, and updates
        only change runs ``owner`` owns (others are skipped silently). Ownership is checked in
        the transaction that writes, so once ``end_run`` has committed, nothing the former
        owner commits for that run lands, whatever index it holds. An event whose
        ``(run_id, event_index)`` is taken, or a new run whose id is, also raises WriteConflict
        and nothing is written. (Runs owned by nobody are writable by anyone.)

        ``attempts`` maps runs of the commit to the attempt that made their writes: such a run
        must also still be at that attempt, the same way (events: WriteConflict; updates:
        skipped). The owner alone cannot tell two attempts on one instance apart: one whose
        lease ran out while it was stalled, requeued by another instance, then claimed back
        here while it still executes.
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
        """Take an unfinished run and end it, in one transaction; the run as taken, or None.

        With ``queued``, the run must be QUEUED (owned by nobody): a cancel of a waiting run.

        With ``expired``, ``instance_id`` claims the run from whoever owns it, provided its
        lease ended before ``now`` (the reaper); without, the run must be ``instance_id``'s
        already (restart recovery). In the same transaction as the claim, the run's last event
        is read and what ``ending(run, last_event)`` returns is written: the terminal event, if
        any, and the final update. Of several instances ending the same run at once, exactly
        one does; the others get None. The former owner is fenced out from the claim on (see
        :meth:`commit`), so the terminal index cannot be taken by it.
        """

    @abc.abstractmethod
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
        """Claim at most ``limit`` QUEUED runs of the (kind, component id) ``components`` for
        ``instance_id``, oldest ``not_before`` first, skipping those whose ``not_before`` is
        after ``now`` and ``multitask="enqueue"`` runs whose session has an executing run or an
        older queued one, and the runs of ``exclude``. Each claimed run becomes PENDING, owned by ``instance_id`` with a
        lease until ``lease_until``, its ``attempt`` one higher and ``started_at`` now; it is
        returned with ``event_count`` counting its committed events. Exactly once: of several
        instances claiming at the same time, each run goes to one (PostgreSQL: ``FOR UPDATE
        SKIP LOCKED``; SQLite: a compare-and-set on the status under its single writer)."""

    @abc.abstractmethod
    async def queue_depth(self) -> int:
        """How many runs are QUEUED."""

    @abc.abstractmethod
    async def session_runs_active(self, session_id: str) -> list[RunRecord]:
        """The session's runs that have not ended (QUEUED, PENDING or RUNNING)."""

    @abc.abstractmethod
    async def request_cancel(self, run_id: str) -> bool:
        """Ask the owner of an unfinished run to cancel it; False when the run has ended."""

    @abc.abstractmethod
    async def owned(self, run_ids: Sequence[str], instance_id: str) -> set[str]:
        """Those of ``run_ids`` that ``instance_id`` owns."""

    # -- sessions (agentos.sessions) -------------------------------------------------------------

    @abc.abstractmethod
    async def add_messages(
        self,
        messages: Sequence[MessageRecord],
        *,
        owner: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Insert the messages of a run (in one transaction), replacing any the run had (those
        of an earlier attempt).

        Fenced like :meth:`commit` with ``owner`` (and ``attempt``): unless ``owner`` still owns
        the run at ``attempt``, WriteConflict and nothing is written, so an attempt that was
        taken over cannot replace the messages of the one that replaced it.
        """

    @abc.abstractmethod
    async def session_messages(
        self,
        session_id: str,
        *,
        last_runs: int | None = None,
        before: float | None = None,
        user_id: object = ANY_USER,
    ) -> list[MessageRecord]:
        """A session's messages, oldest run first, each run's in order.

        With ``last_runs``, only those of the last that many COMPLETED runs created before
        ``before`` (the history a new run sees); without, those of every run. With ``user_id``
        (None included: runs without a user), only the runs of that user.
        """

    @abc.abstractmethod
    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        kind: str | None = None,
        component_id: str | None = None,
        limit: int = 100,
    ) -> list[SessionRecord]:
        """Sessions (one entry per session and component), most recently updated first."""

    @abc.abstractmethod
    async def session_runs(self, session_id: str) -> list[RunRecord]:
        """A session's runs, oldest first."""

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> bool:
        """Delete a session's runs, their events and messages; False when it has no run.

        Raises SessionActive, deleting nothing, while one of its runs is unfinished.
        """

    # -- schema, components, retention ---------------------------------------------------------

    @abc.abstractmethod
    async def upgrade(self) -> tuple[str | None, str]:
        """Bring the database's schema to this release's (``agentos db upgrade``); returns the
        revision before (None: an empty database) and after. Leaves the store closed."""

    @abc.abstractmethod
    async def register_components(
        self, keys: Sequence[tuple[str, str]], now: float
    ) -> list[ComponentState]:
        """Record the (kind, id) components not known yet as registered at ``now``; returns
        the state of every component the database knows."""

    @abc.abstractmethod
    async def component_states(self) -> list[ComponentState]:
        """The state of every component the database knows."""

    @abc.abstractmethod
    async def set_paused(
        self, kind: str, component_id: str, paused: bool, now: float
    ) -> ComponentState:
        """Pause or resume a component, for every instance; returns its state."""

    @abc.abstractmethod
    async def component_stats(self, kind: str, component_id: str) -> ComponentStats:
        """Counts of a component's runs by status and the durations of its ended runs."""

    @abc.abstractmethod
    async def delete_ended_runs(self, created_before: float, limit: int) -> int:
        """Delete at most ``limit`` ended runs created before ``created_before``, with their
        events and messages, in one transaction; returns how many runs went. Never a PENDING
        or RUNNING run."""

    @abc.abstractmethod
    async def take_lease(
        self, name: str, holder: str, now: float, until: float, *, replacing: str | None = None
    ) -> bool:
        """Hold the named lease until ``until`` if it is free, expired at ``now`` or ``holder``'s
        already (then it is extended), or, given ``replacing``, still that holder's (taken over
        whatever its expiry, only if nobody took it meanwhile); False when another holder has
        it. One holder at a time, across every instance and process on the database."""

    @abc.abstractmethod
    async def read_lease(self, name: str) -> tuple[str, float] | None:
        """The named lease's holder and expiry time, or None when nobody ever took it."""

    # -- tasks (agentos.tasks) -----------------------------------------------------------------

    @abc.abstractmethod
    async def create_task(self, task: TaskRecord) -> None:
        """Insert a new task; raises TaskAlreadyExists when its id is taken."""

    @abc.abstractmethod
    async def get_task(self, task_id: str) -> TaskRecord | None:
        """The task, or None."""

    @abc.abstractmethod
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
        """Tasks, oldest first (then by id)."""

    @abc.abstractmethod
    async def update_task(self, task: TaskRecord) -> TaskRecord | None:
        """Write a task's definition (everything but its counters) and its next occurrence,
        dropping any claim on it; None when it no longer exists."""

    @abc.abstractmethod
    async def delete_task(self, task_id: str) -> bool:
        """Delete a task (its runs stay); False when there was none."""

    @abc.abstractmethod
    async def claim_tasks(
        self, instance_id: str, now: float, until: float, limit: int
    ) -> list[TaskRecord]:
        """Take at most ``limit`` active tasks that have an occurrence due at ``now`` (or one
        queued) and no live claim, for ``instance_id`` until ``until``; returns them. A task is
        taken by one instance at a time, across every instance on the database."""

    @abc.abstractmethod
    async def release_tasks(self, instance_id: str, releases: Sequence[TaskRelease]) -> None:
        """End ``instance_id``'s claims on tasks, in one transaction: each task's next
        occurrence becomes its release's ``next_fire_at``, its counters grow by ``fired`` and
        ``skipped``. A task changes only while the claim is still ``instance_id``'s and its next
        occurrence is still ``due`` (a compare-and-set: an update or another claimer meanwhile
        wins)."""

    @abc.abstractmethod
    async def next_fire_time(self, after: float) -> float | None:
        """The earliest next occurrence after ``after`` of the active tasks (when the
        scheduler wakes next)."""

    @abc.abstractmethod
    async def active_task_runs(self, task_ids: Sequence[str]) -> dict[str, list[str]]:
        """The unfinished runs of each task of ``task_ids`` that has any, oldest first."""

    @abc.abstractmethod
    async def task_runs(
        self, task_id: str, *, status: RunStatus | None = None, limit: int = 100, offset: int = 0
    ) -> list[RunRecord]:
        """A task's runs, newest first."""

    # -- idempotency keys (agentos.idempotency) --------------------------------------------------

    @abc.abstractmethod
    async def remember_key(self, entry: IdempotencyKey, expired_before: float) -> IdempotencyKey:
        """Write ``entry`` unless its key (key, kind, component_id, user_scope) is taken by an
        entry created at or after ``expired_before``; returns the entry the key has now: ``entry``
        itself, or the one that was there first. One statement: of several creates remembering
        one key at once, on every instance, exactly one gets its own entry back."""

    @abc.abstractmethod
    async def find_key(
        self, key: str, kind: str, component_id: str, user_scope: str
    ) -> IdempotencyKey | None:
        """The entry of a key, if any (expired or not)."""

    @abc.abstractmethod
    async def forget_key(self, entry: IdempotencyKey) -> bool:
        """Delete the entry of ``entry``'s key if it is still ``entry`` (same ``token``);
        whether it did (a create that made no run lets its key go)."""

    @abc.abstractmethod
    async def delete_expired_keys(self, created_before: float, limit: int) -> int:
        """Delete at most ``limit`` entries created before ``created_before``, oldest first, in
        one transaction; returns how many went."""


class Notifier:
    """Per-run signals that followers wait on; this base class only times out (polling)."""

    def __init__(self) -> None:
        # Weak: a signal lives as long as some follower holds it.
        self._signals: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._on_cancel: CancelFn | None = None
        self._on_queue: Callable[[], None] | None = None

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

    async def start(self, on_cancel: CancelFn, on_queue: Callable[[], None] | None = None) -> None:
        """Start listening; ``on_cancel(run_id)`` is called for cancel requests, and
        ``on_queue()`` when a run was queued anywhere (or notifications may have been missed)."""
        self._on_cancel = on_cancel
        self._on_queue = on_queue

    async def aclose(self) -> None:
        """Stop listening and wake every follower."""
        self.wake_all()


@dataclass(frozen=True)
class Backend:
    """A store and the notifier that goes with it."""

    store: Store
    notifier: Notifier


#: Makes the store of a database URL's scheme from the settings.
StoreFactory = Callable[[Settings], Store]

_FACTORIES: dict[str, StoreFactory] = {}
#: Built-in backends by URL scheme (the part before ``+driver``), imported on first use.
_BUILT_IN = {"sqlite": "agentos.backends.sql", "postgresql": "agentos.backends.postgres"}


def register_backend(scheme: str, factory: StoreFactory) -> None:
    """Serve database URLs of ``scheme`` (e.g. ``"postgresql"``) with ``factory(settings)``."""
    _FACTORIES[scheme] = factory


def open_backend(settings: Settings, store: Store | None = None) -> Backend:
    """The store for ``settings.database.url`` (or the given one) and its notifier."""
    if store is None:
        store = _open_store(settings)
    return Backend(store, store.notifier(settings))


def _open_store(settings: Settings) -> Store:
    url = settings.database.url
    scheme = url.partition(":")[0].partition("+")[0].lower()
    if scheme not in _FACTORIES and scheme in _BUILT_IN:
        importlib.import_module(_BUILT_IN[scheme])  # registers itself
    factory = _FACTORIES.get(scheme)
    if factory is None:
        known = ", ".join(sorted({*_FACTORIES, *_BUILT_IN}))
        raise ValueError(f"no backend for database URL scheme {scheme!r} (known: {known})")
    return factory(settings)
