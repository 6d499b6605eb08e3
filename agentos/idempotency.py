"""Idempotent creates: a create repeated with the same ``Idempotency-Key`` gets the same run.

The key is written before the run, with the id the run will have, in one insert-if-absent
statement (:meth:`Store.remember_key`); of any number of creates racing with one key, on any
instance, exactly one gets its own entry back and makes the run. Every other one answers with
that run::

    create, key K ──▶ remember_key(K: run R, hash H, token T)
        │ the entry is ours (token T)           │ another create's (R', H', T')
        ▼                                       ▼
      create run R                            H' != H ──▶ 422 idempotency_conflict
        │ failed, and run R does not exist      │ run R' exists ──▶ answer with R' (a replay)
        ▼                                       │ not yet: that create is under way ──▶ wait
      forget_key(K, T) (a retry starts over)    │ still no R' once the entry is older than
                                                ▼ ``abandon_after``: its create died
                                              forget_key(K, T'), start over

A key is scoped by component and by the caller's user, and remembered for ``idempotency_ttl``
seconds; the retention passes delete expired entries, and an expired entry is overwritten by
the next create with its key. The hash covers what makes the run (message, ids, options, mode
flags), so a repeat with another body is refused rather than answered with a run it did not ask
for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from agentos.backends.base import Store
from agentos.errors import IdempotencyConflict, RunAlreadyExists, StoreUnavailable
from agentos.records import IdempotencyKey, RunRecord

__all__ = ["Idempotency", "request_hash"]

logger = logging.getLogger("agentos.idempotency")

#: Seconds between two looks for the run of a key whose first create is under way.
_POLL = 0.05

#: Finds a run by id; None when there is none.
FindRun = Callable[[str], Awaitable[RunRecord | None]]


def request_hash(fields: Mapping[str, Any]) -> str:
    """A digest of a create's normalized fields (any JSON values; key order does not matter)."""
    text = json.dumps(fields, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class Idempotency:
    """The keys of one server's creates, on its store.

    Example (what ``POST .../runs`` does)::

        found = await idempotency.claim(entry, find_run)
        if found is not None:
            return replay(found)          # the key's run, made by an earlier create
        try:
            await manager.start_run(..., run_id=entry.run_id)
        except BaseException as exc:
            await idempotency.release(entry, exc, find_run)
            raise
    """

    def __init__(self, store: Store, *, ttl: float, create_timeout: float) -> None:
        self.store = store
        #: Seconds a key is remembered.
        self.ttl = ttl
        #: Seconds after which an entry without its run counts as left by a create that died
        #: (a create commits its run within ``create_timeout`` or fails).
        self.abandon_after = 2 * max(create_timeout, 1.0)

    async def claim(self, entry: IdempotencyKey, find_run: FindRun) -> RunRecord | None:
        """Remember ``entry``; None when it is the key's first create (make ``entry.run_id``
        now), else the run of the key's first create.

        Raises IdempotencyConflict when the key came with another request, and
        StoreUnavailable when that create is under way for longer than it can take.
        """
        deadline = time.monotonic() + 2 * self.abandon_after
        held: IdempotencyKey | None = None
        while True:
            if held is None:
                now = time.time()
                held = await self.store.remember_key(replace(entry, created_at=now), now - self.ttl)
            if held.token == entry.token:
                return None
            if held.request_hash != entry.request_hash:
                raise IdempotencyConflict(
                    "this Idempotency-Key was used with a different request; use a new key "
                    "for a new request"
                )
            found = await find_run(held.run_id)
            if found is not None:
                return found
            if time.time() - held.created_at > self.abandon_after:
                # Its create died before making the run, or the run is gone (deleted).
                logger.info("idempotency key of run %s taken over: no such run", held.run_id)
                await self.store.forget_key(held)
                held = None
                continue
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    "an earlier request with this Idempotency-Key is still being served; "
                    "try again later"
                )
            await asyncio.sleep(_POLL)
            held = await self.store.find_key(
                entry.key, entry.kind, entry.component_id, entry.user_scope
            )

    async def release(self, entry: IdempotencyKey, error: BaseException, find_run: FindRun) -> None:
        """After the create of ``entry`` failed with ``error``: let the key go unless the run
        was made all the same, so that a retry makes it.

        A cancelled create (the client left) keeps its key: its run may still be made. When the
        database cannot tell, the key stays too, and a retry takes it over after
        ``abandon_after``.
        """
        if isinstance(error, asyncio.CancelledError):
            return
        try:
            # A client-chosen run id that was taken names another run than this key's.
            if isinstance(error, RunAlreadyExists) or await find_run(entry.run_id) is None:
                await self.store.forget_key(entry)
        except StoreUnavailable as exc:
            logger.warning("idempotency key of run %s kept: %s", entry.run_id, exc.detail)
