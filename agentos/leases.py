"""Leases, the reaper and restart recovery: every run ends, even when its instance does not.

Several instances on one database (see ``README.md (Scale out)``)::

    owner, every lease_renew_interval ── renew_leases(me) ──▶ lease_until = now + lease_ttl
          │                                └─▶ runs it no longer owns: taken over, stop them
          │                                └─▶ runs with cancel_requested: cancel them
    every instance, every reaper_interval ── expired_runs(now) ── end_run(run, me, expired)
          one transaction: conditional UPDATE (one claimer wins) ─▶ read the last event ─▶
          terminal error "instance_lost" at the next event_index ─▶ status ERROR
          (or, when the run's retry policy allows another attempt: RunRetrying at the next
          event_index ─▶ status QUEUED, owned by nobody, for any instance to claim)

The claim fences the former owner: its commits check ownership (and their attempt) in the
transaction that writes (``Store.commit``), so once the claim has committed none of its events
land, and the terminal index the claimer read cannot be taken; nor do they when the former owner
claims the requeued run back as its next attempt. Its committer then reports the conflict and the run
manager stops the run there (``RunManager.lose``) without a terminal event of its own.

A cancel for a run another instance owns sets ``cancel_requested`` (and, on PostgreSQL, notifies
the owner at once); the owner cancels it as if the request had come to it.

At start-up, runs this very instance (same ``instance_id``) left PENDING or RUNNING get the terminal
error ``"interrupted"`` the same way. That is only right if no other live process serves with the
same id (two processes on one host get the same default id), so first the instance holds its id:
a named lease ``instance:<id>`` held by this process (host, pid, a random token) and renewed with
the runs' leases::

    start ── take_lease("instance:<id>") ── free, expired, or held by a dead process of this
          │                                  host (compare-and-set on it) ─▶ recover, serve
          ├─ held by a live process ── retry until lease_ttl + lease_renew_interval ─▶
          │                            still held: InstanceIdInUse, the server does not start
          └─ database locked (StoreUnavailable) ── retried as long, then raised
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Protocol

from agentos.backends.base import Ending, Store
from agentos.errors import InstanceIdInUse, StoreUnavailable
from agentos.events import KINDS, Event, RunStatus, make_event
from agentos.logs import run_fields
from agentos.records import RunRecord, RunUpdate
from agentos.retries import error_fields, policy_of, requeue
from agentos.settings import LeaseSettings

__all__ = ["Leases", "LocalRuns"]

logger = logging.getLogger("agentos.leases")


class LocalRuns(Protocol):
    """What the leases need of the runs this instance executes (the run manager)."""

    def executing(self) -> dict[str, int]:
        """The runs executing here that have not ended: id -> the attempt executing."""

    def is_local(self, run_id: str) -> bool:
        """Whether the run is held by this instance (executing or finishing)."""

    def lose(self, run_id: str, attempt: int | None = None) -> None:
        """Another instance took the run over: stop it here without a terminal event."""

    def cancel_nowait(self, run_id: str, reason: str = "cancelled") -> None:
        """Ask a run executing here to cancel."""


class Leases:
    """Renew this instance's leases, reap other instances' expired ones, recover after a restart."""

    def __init__(
        self,
        store: Store,
        runs: LocalRuns,
        settings: LeaseSettings,
        *,
        instance_id: str,
        page_size: int,
        can_renew: Callable[[], bool] = lambda: True,
        wake_queue: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._runs = runs
        self._settings = settings
        self._me = instance_id
        self._page_size = page_size
        self._can_renew = can_renew
        #: Called after a run was ended here: it may have gone back to the queue instead.
        self._wake_queue = wake_queue
        self._strays: set[str] = set()
        #: Runs of lost instances this instance ended (for metrics).
        self.reaps = 0
        #: The lease on this instance's id, and who holds it when this process does.
        self._identity = _identity_lease(instance_id)
        self._holder = f"{_this_host()}:{os.getpid()}:{secrets.token_hex(6)}"

    async def hold_identity(self) -> None:
        """Hold this instance's id for this process, or raise InstanceIdInUse.

        A previous life of the instance that crashed still holds the id until its lease
        expires; one on this host whose process is gone (or this very process, restarting a
        manager) is taken over at once, any other is waited for up to ``lease_ttl +
        lease_renew_interval``: a live holder renews within that time and keeps the id. Of
        several processes taking over one gone holder at once, only the first gets the id.

        A database that cannot commit (StoreUnavailable: on SQLite, another process holding the
        write lock past the busy timeout, such as ``agentos db upgrade`` or the previous process
        finishing its shutdown) is waited for as long, then its error is raised.
        """
        deadline = time.monotonic() + self._settings.ttl + self._settings.renew_interval
        while True:
            try:
                holder = await self._take_identity()
            except StoreUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                logger.warning("holding instance id %s: %s; retrying", self._me, exc.detail)
            else:
                if holder is None:
                    return
                if time.monotonic() >= deadline:
                    raise InstanceIdInUse(self._me, holder)
            await asyncio.sleep(min(0.5, self._settings.renew_interval))

    async def _take_identity(self) -> str | None:
        """One attempt at holding this instance's id: None once held, else who holds it."""
        now = time.time()
        until = now + self._settings.ttl
        if await self._store.take_lease(self._identity, self._holder, now, until):
            _HELD.add(self._holder)
            return None
        found = await self._store.read_lease(self._identity)
        holder = found[0] if found is not None else "unknown"
        if _dead_holder(holder) and await self._store.take_lease(
            self._identity, self._holder, now, until, replacing=holder
        ):
            # Taken over whatever its expiry, unless another process took it meanwhile.
            _HELD.add(self._holder)
            logger.warning("instance id %s taken over from %s (gone)", self._me, holder)
            return None
        return holder

    async def release_identity(self) -> None:
        """Let a restart of this instance take its id at once (a clean shutdown)."""
        _HELD.discard(self._holder)
        await self._store.take_lease(self._identity, self._holder, time.time(), 0.0)

    async def _renew_identity(self) -> bool:
        """Extend this process's hold on its id; False (logged) when another process holds it:
        this one was paused, or its clock lagged, past its lease, and the other took over."""
        now = time.time()
        until = now + self._settings.ttl
        if not await self._store.take_lease(self._identity, self._holder, now, until):
            found = await self._store.read_lease(self._identity)
            logger.error(
                "instance id %s is held by another process (%s): two processes serve with one "
                "id and end each other's runs; give each its own AGENTOS_INSTANCE_ID",
                self._me,
                found[0] if found is not None else "unknown",
            )
            return False
        return True

    async def recover(self) -> None:
        """Give every run this instance left unfinished its terminal event."""
        renewed = time.monotonic()
        for record in await self._store.unfinished_runs(self._me):
            if time.monotonic() - renewed >= self._settings.renew_interval:
                # Many leftovers may take longer than the id's lease: keep holding it.
                await self._renew_identity()
                renewed = time.monotonic()
            if await self.end_unfinished(record, "interrupted"):
                logger.warning(
                    "run %s was interrupted by a restart; queued again or ended per its retry policy",
                    record.run_id,
                    extra=run_fields(record),
                )

    async def end_unfinished(self, record: RunRecord, error: str) -> bool:
        """End a run of this instance that nobody executes any more (terminal error event,
        status ERROR); False when it was not this instance's to end (any more)."""
        ended = await self._store.end_run(
            record.run_id, self._me, _ending(error), now=time.time(), expired=False
        )
        if ended is not None:
            self._wake_queue()
        return ended is not None

    async def renew_forever(self) -> None:
        """Keep this instance's leases alive; stop runs taken over; cancel runs asked to."""
        while True:
            await asyncio.sleep(self._settings.renew_interval)
            try:
                await self.renew_once()
            except Exception:
                logger.exception("lease renewal failed; retrying")

    async def renew_once(self) -> None:
        """One round of lease renewal (the renewer task runs it every lease_renew_interval).

        Skipped while ``can_renew()`` is false (this instance's commits have been failing past
        ``commit_stall_timeout``): its leases then expire and other instances take its runs
        over, instead of the runs staying RUNNING for as long as this instance lives.

        Skipped too while another process holds this instance's id (it took over while this
        one was paused): the runs of the id are that process's, not strays to end here.
        """
        if not await self._renew_identity():
            return
        if not self._can_renew():
            logger.warning("commits are failing: leases not renewed, other instances may reap")
            return
        # Only attempts active before the UPDATE starts can be judged by its result: one that
        # started meanwhile (the run claimed back here after another instance requeued it, its
        # old attempt stopped) was claimed after the UPDATE found the run QUEUED.
        candidates = self._runs.executing()
        renewed = await self._store.renew_leases(self._me, time.time() + self._settings.ttl)
        still = self._runs.executing()
        for run_id, attempt in candidates.items():
            if still.get(run_id) != attempt:
                continue
            if run_id not in renewed:
                self._runs.lose(run_id, attempt)
            elif renewed[run_id]:
                self._runs.cancel_nowait(run_id, "cancelled")
        await self._end_strays(set(renewed) - set(candidates))

    async def _end_strays(self, unknown: set[str]) -> None:
        """End runs this instance owns in the database but no longer executes.

        A run whose terminal event could not be committed (the database was gone for longer
        than the committer's retries) would otherwise keep a renewed lease, and so stay RUNNING,
        as long as this instance lives. A run seen like that in two rounds in a row ends with
        ``"interrupted"``, as after a restart; one round is not enough, since a run just created
        is in the database a moment before it is in memory.
        """
        strays = {run_id for run_id in unknown if not self._runs.is_local(run_id)}
        confirmed, self._strays = strays & self._strays, strays - self._strays
        for run_id in confirmed:
            record = await self._store.get_run(run_id)
            if record is None or record.status.ended or self._runs.is_local(run_id):
                continue
            if await self.end_unfinished(record, "interrupted"):
                logger.warning(
                    "run %s was no longer executed here; queued again or ended per its retry policy",
                    run_id,
                    extra=run_fields(record),
                )

    async def reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reaper_interval)
            try:
                await self.reap_once()
            except Exception:
                logger.exception("looking for runs of lost instances failed; retrying")

    async def reap_once(self) -> list[str]:
        """End the runs whose owner's lease expired; returns the ids this instance ended."""
        now = time.time()
        ended = []
        for run_id in await self._store.expired_runs(now, self._page_size):
            if self._runs.is_local(run_id):
                continue  # ours and running: the renewer is only late
            ending = _ending("instance_lost")
            taken = await self._store.end_run(run_id, self._me, ending, now=now, expired=True)
            if taken is None:
                continue  # another instance was first, or the owner renewed meanwhile
            self.reaps += 1
            self._wake_queue()
            logger.warning(
                "run %s: its owner's lease expired; queued again or ended per its retry policy",
                run_id,
                extra=run_fields(taken),
            )
            ended.append(run_id)
        return ended


def _ending(error: str, *, retry: bool = True) -> Ending:
    """How a run nobody executes ends: the terminal error ``error`` after its last event, or,
    when the last event is terminal already (its owner died between the event and the status),
    only the status that event implies. A run whose retry policy allows another attempt (its
    instance was lost) goes back to the queue instead, after a ``RunRetrying`` event."""

    def ending(record: RunRecord, last: Event | None) -> tuple[Event | None, RunUpdate]:
        kind = KINDS[record.kind]
        if last is not None and last.terminal:
            status = kind.status_of(last.name)
            return None, RunUpdate(record.run_id, status=status, event_count=last.index + 1)
        index = 0 if last is None else last.index + 1
        now = time.time()
        if retry and policy_of(record).retries(record.attempt, "instance_lost"):
            return requeue(record, index, "instance_lost", error, now=now)
        event = make_event(record, index, kind.error, error_fields(record, error, now), True)
        update = RunUpdate(
            record.run_id, status=RunStatus.ERROR, error=error, event_count=index + 1
        )
        return event, update

    return ending


def _identity_lease(instance_id: str) -> str:
    """The name of the lease on an instance id (within the 100 characters of a lease name)."""
    if len(instance_id) <= 90:
        return f"instance:{instance_id}"
    return (
        "instance:#" + hashlib.sha256(instance_id.encode("utf-8", "surrogatepass")).hexdigest()[:64]
    )


#: The holders of instance ids in this process (a run manager each, from its start to its
#: close): a holder with this process's pid that is not in here is gone.
_HELD: set[str] = set()


@functools.cache
def _this_host() -> str:
    """This host as a holder names it: its name (no ``:``, encodable) and, on Linux, a tag of
    the boot and the pid namespace, since containers may share a host name but not their pids
    (a pid of one says nothing about the processes of another)."""
    name = socket.gethostname()[:150].replace(":", "_")
    name = name.encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            scope = f"{boot.read().strip()}\0{os.readlink('/proc/self/ns/pid')}"
    except (OSError, UnicodeDecodeError):
        return name
    return f"{name}/{hashlib.sha256(scope.encode()).hexdigest()[:8]}"


def _dead_holder(holder: str) -> bool:
    """Whether the holder ``host:pid:token`` is a process of this host (and pid namespace)
    that is gone, or a run manager of this very process that let its id go (a holder elsewhere
    is never known to be gone: its lease has to expire)."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _this_host() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return holder not in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False
