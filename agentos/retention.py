"""Retention: ended runs older than ``retention_days`` are deleted, with their events and
session messages, and idempotency keys older than ``idempotency_ttl``, in batches, by one
instance at a time.

Every ``retention_interval`` seconds each instance tries to take the ``retention`` lease (a row
in the database, so it works the same on PostgreSQL and on one SQLite file shared by several
processes). The holder deletes batches of at most ``retention_batch_size`` runs (one transaction
each), extending its lease before each batch, until a batch comes back short, then expired keys
the same way; the others find the lease taken and wait for the next interval. A run that has
not ended is never deleted, whatever its age (the store checks the status under the delete's
locks).

``retention_days = 0`` (the default) keeps every run; keys always expire (a day by default).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from agentos.backends.base import Store
from agentos.errors import StoreUnavailable
from agentos.settings import RetentionSettings

__all__ = ["Retention"]

logger = logging.getLogger("agentos.retention")

_LEASE = "retention"
_DAY = 86_400.0


class Retention:
    """Deletes old ended runs and expired idempotency keys for one instance (``holder``)."""

    def __init__(self, store: Store, settings: RetentionSettings, holder: str) -> None:
        self.store = store
        self.settings = settings
        self.holder = holder
        #: Runs this instance has deleted (for logs and tests).
        self.deleted = 0
        #: Idempotency keys this instance has deleted (for logs and tests).
        self.deleted_keys = 0

    @property
    def enabled(self) -> bool:
        return self.settings.days > 0 or self.settings.idempotency_ttl > 0

    async def run_once(self, now: float | None = None) -> int | None:
        """One pass: the number of runs deleted, or None when another instance holds the lease."""
        if not self.enabled:
            return 0
        now = time.time() if now is None else now
        deleted = 0
        if self.settings.days > 0:
            cutoff = now - self.settings.days * _DAY
            runs = await self._in_batches(lambda: self.store.delete_ended_runs(cutoff, self._n))
            if runs is None:
                return None
            deleted = runs
            self.deleted += deleted
            if deleted:
                logger.info("retention: deleted %d runs created before %.0f", deleted, cutoff)
        if self.settings.idempotency_ttl > 0:
            expired = now - self.settings.idempotency_ttl
            keys = await self._in_batches(lambda: self.store.delete_expired_keys(expired, self._n))
            if keys is None:
                return None if deleted == 0 else deleted
            self.deleted_keys += keys
            if keys:
                logger.info("retention: deleted %d idempotency keys", keys)
        return deleted

    @property
    def _n(self) -> int:
        return self.settings.batch_size

    async def _in_batches(self, delete: Callable[[], Awaitable[int]]) -> int | None:
        """Batches of ``delete()`` under the lease until one comes back short; the total, or
        None when another instance holds the lease before the first batch."""
        total = 0
        while True:
            clock = time.time()
            # The lease outlasts the interval, so the holder keeps it from pass to pass and the
            # other instances do not repeat its (empty) queries; it lapses if the holder dies.
            if not await self.store.take_lease(
                _LEASE, self.holder, clock, clock + 2 * self.settings.interval
            ):
                return None if total == 0 else total
            batch = await delete()
            total += batch
            if batch < self._n:
                return total

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
