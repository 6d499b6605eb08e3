"""The store in tests: a run record factory and one store double whose commits a test steers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from agentos.backends.sql import SQLStore
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
    events in ``batches``."""

    def __init__(self, url: str, errors: Iterable[Exception] = ()) -> None:
        super().__init__(url)
        self.errors = list(errors)
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[int] = []

    async def commit(
        self,
        events: Sequence[tuple[str, Event]],
        updates: Sequence[RunUpdate],
        *,
        owner: str | None = None,
        runs: Sequence[RunRecord] = (),
    ) -> None:
        await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        await super().commit(events, updates, owner=owner, runs=runs)
        self.batches.append(len(events))
