"""Retention: ended runs older than ``retention_days`` are deleted, with their events and
session messages, in batches, by one instance at a time.

Every ``retention_interval`` seconds each instance tries to take the ``retention`` lease (a row
in the database, so it works the same on PostgreSQL and on one SQLite file shared by several
processes). The holder deletes batches of at most ``retention_batch_size`` runs (one transaction
each), extending its lease before each batch, until a batch comes back short; the others find
the lease taken and wait for the next interval. A run still PENDING or RUNNING is never deleted,
whatever its age (the store checks the status under the delete's locks).

``retention_days = 0`` (the default) keeps everything; no task runs.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agentos.backends.base import Store
from agentos.errors import StoreUnavailable
from agentos.settings import RetentionSettings

__all__ = ["Retention"]

logger = logging.getLogger("agentos.retention")

_LEASE = "retention"
_DAY = 86_400.0


class Retention:
    """Deletes old ended runs for one instance (``holder``)."""

    def __init__(self, store: Store, settings: RetentionSettings, holder: str) -> None:
        self.store = store
        self.settings = settings
        self.holder = holder
        #: Runs this instance has deleted (for logs and tests).
        self.deleted = 0

    @property
    def enabled(self) -> bool:
        return self.settings.days > 0

    async def run_once(self, now: float | None = None) -> int | None:
        """One pass: the number of runs deleted, or None when another instance holds the lease."""
        if not self.enabled:
            return 0
        now = time.time() if now is None else now
        cutoff = now - self.settings.days * _DAY
        deleted = 0
        while True:
            clock = time.time()
            # The lease outlasts the interval, so the holder keeps it from pass to pass and the
            # other instances do not repeat its (empty) queries; it lapses if the holder dies.
            if not await self.store.take_lease(
                _LEASE, self.holder, clock, clock + 2 * self.settings.interval
            ):
                return None if deleted == 0 else deleted
            batch = await self.store.delete_ended_runs(cutoff, self.settings.batch_size)
            deleted += batch
            self.deleted += batch
            if batch < self.settings.batch_size:
                break
        if deleted:
            logger.info("retention: deleted %d runs created before %.0f", deleted, cutoff)
        return deleted

    async def run_forever(self) -> None:
        """A pass now and then every ``retention_interval`` seconds; a failing database is
        logged and tried again at the next pass."""
        while True:
            try:
                await self.run_once()
            except StoreUnavailable as exc:
                logger.warning("retention pass skipped: %s", exc.detail)
            except Exception:
                logger.exception("retention pass failed")
            await asyncio.sleep(self.settings.interval)
