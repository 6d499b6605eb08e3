"""Component lifecycle: what the database knows of each component, and pausing it.

A paused component takes no new runs (``ComponentPaused``, HTTP 409 ``component_paused``); its
runs in flight go on to their end. The flag lives in the database (``agentos_components``), so
every instance and every restart sees it. Each instance keeps a copy of all flags, read again
every ``component_state_ttl`` seconds by a background task: a pause made elsewhere stops new runs
here within that time (plus one query), and a create never waits for the database to check::

    POST /agents/a/pause ─▶ instance 1: set_paused (database) ─▶ its copy at once
                              instance 2: next refresh (every component_state_ttl) reads it
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agentos.backends.base import Store
from agentos.errors import ComponentPaused, StoreUnavailable
from agentos.records import ComponentState

if TYPE_CHECKING:
    from agentos.components.base import Component

__all__ = ["Lifecycle"]

logger = logging.getLogger("agentos.lifecycle")


class Lifecycle:
    """The components' states for one run manager."""

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        #: Seconds a copy of the flags is trusted.
        self.ttl = ttl
        self._states: dict[tuple[str, str], ComponentState] = {}

    async def register(self, components: Sequence[Component]) -> None:
        """Record the components in the database (first registration time) and read all flags."""
        keys = [(c.kind.name, c.id) for c in components]
        self._remember(await self.store.register_components(keys, time.time()))

    def check(self, kind: str, component_id: str) -> None:
        """Raise ComponentPaused when the component is paused (as of at most ``ttl`` ago).

        No query: the copy is kept fresh by :meth:`refresh_forever`, so a create never waits
        for the database here (and concurrent creates check their limits without a pause).
        """
        state = self._states.get((kind, component_id))
        if state is not None and state.paused:
            raise ComponentPaused(kind, component_id)

    async def refresh_forever(self) -> None:
        """Read every flag again each ``ttl`` seconds."""
        while True:
            await asyncio.sleep(self.ttl)
            await self._refresh()

    async def set_paused(self, kind: str, component_id: str, paused: bool) -> ComponentState:
        """Pause or resume a component for every instance."""
        state = await self.store.set_paused(kind, component_id, paused, time.time())
        self._states[(kind, component_id)] = state
        return state

    async def describe(self, component: Component) -> dict[str, Any]:
        """``GET /{kind}/{id}``: the component, its state and its runs' statistics."""
        kind = component.kind.name
        stats = await self.store.component_stats(kind, component.id)
        states = {(s.kind, s.component_id): s for s in await self.store.component_states()}
        self._remember(states.values())
        state = states.get((kind, component.id))
        return {
            **component.describe(),
            "kind": kind,
            "paused": state is not None and state.paused,
            "registered_at": None if state is None else state.registered_at,
            "stats": stats.to_dict(),
        }

    async def _refresh(self) -> None:
        try:
            self._remember(await self.store.component_states())
        except StoreUnavailable as exc:
            # Runs are written through the committer, which rides out an outage: keep the
            # last copy of the flags until the next refresh rather than refuse every create.
            logger.warning("paused flags not read (%s); using the last copy", exc.detail)

    def _remember(self, states: Any) -> None:
        self._states = {(s.kind, s.component_id): s for s in states}
