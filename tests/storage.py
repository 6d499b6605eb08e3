"""The store in tests: a run record factory and one store double whose commits a test steers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from agentos.backends.sql import SQLStore
from agentos.errors import DataRejected, StoreUnavailable
from agentos.events import Event, RunStatus
from agentos.records import RunRecord, RunUpdate


def run_record(run_id: str, **fields: Any) -> RunRecord:
    """A RUNNING run of the agent ``echo``, with any field of :class:`RunRecord` changed::

    run_record("r1", instance_id="dead", lease_until=time.time() - 5)
    """
    record = RunRecord(
        run_id=run_id,
        kind="agents",
        component_id="echo",
        session_id="s",
        status=RunStatus.RUNNING,
        input="x",
    )
    return dataclasses.replace(record, **fields)


class ScriptedStore(SQLStore):
    """The SQL store with commits a test steers: each commit waits until ``gate`` is set (it is
    at first), then raises the next of ``errors`` if any are left, else commits and counts its
    events in ``batches``.

    Also, like a database in trouble: while ``down`` is set every commit fails with
    StoreUnavailable and every create hangs; a commit holding an event whose text contains
    ``refuse_marker`` raises ``refuse`` (a value the database refuses). ``renewals`` counts
    lease renewals; ``pings`` counts health checks (:meth:`Store.ping`), each of which waits
    until ``ping_gate`` is set (it is at first).
    """

    def __init__(
        self,
        url: str,
        errors: Iterable[Exception] = (),
        *,
        refuse_marker: str | None = None,
        refuse: type[Exception] = DataRejected,
    ) -> None:
        super().__init__(url)
        self.errors = list(errors)
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.down = False
        self.refuse_marker = refuse_marker
        self.refuse = refuse
        self.renewals = 0
        self.pings = 0
        self.ping_gate = asyncio.Event()
        self.ping_gate.set()

    async def ping(self) -> None:
        self.pings += 1
        await self.ping_gate.wait()
        await super().ping()

    async def commit(
        self,
        events: Sequence[tuple[str, Event]],
        updates: Sequence[RunUpdate],
        *,
        owner: str | None = None,
        attempts: Mapping[str, int] | None = None,
        runs: Sequence[RunRecord] = (),
    ) -> None:
        await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        if self.down:
            raise StoreUnavailable("the test database is down")
        marker = self.refuse_marker
        if marker is not None and any(marker in event.data for _, event in events):
            raise self.refuse("refused by the test database")
        await super().commit(events, updates, owner=owner, attempts=attempts, runs=runs)
        self.batches.append(len(events))

    async def create_run(
        self, run: RunRecord, *, alone: bool = False, besides: Collection[str] = ()
    ) -> None:
        if self.down:
            await asyncio.sleep(3600)  # a database that hangs rather than refuses
        await super().create_run(run, alone=alone, besides=besides)

    async def renew_leases(self, instance_id: str, lease_until: float) -> dict[str, bool]:
        self.renewals += 1
        return await super().renew_leases(instance_id, lease_until)
