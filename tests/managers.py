"""Several run managers ("instances") in one process on one database: the factory behind the
``make_manager`` fixtures of the lease and queue tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from agentos import Component, RunManager, Settings

MakeManager = Callable[..., Awaitable[RunManager]]


@contextlib.asynccontextmanager
async def manager_factory(
    db_url: str, components: Callable[[], Sequence[Component]], **defaults: Any
) -> AsyncIterator[MakeManager]:
    """``make(instance_id, **settings)`` starts a RunManager on ``db_url`` with short leases,
    serving fresh ``components()`` (none with ``agents=False``); every one made is closed on
    exit, newest first."""
    managers: list[RunManager] = []

    async def make(instance_id: str, *, agents: bool = True, **overrides: Any) -> RunManager:
        values: dict[str, Any] = {
            "db_url": db_url,
            "instance_id": instance_id,
            "lease_ttl": 2.0,
            "lease_renew_interval": 0.5,
            "reaper_interval": 60.0,  # tests call reap_once themselves unless they say otherwise
            "shutdown_grace": 1.0,
            **defaults,
            **overrides,
        }
        manager = RunManager(Settings(**values))
        for component in components() if agents else ():
            manager.register(component)
        await manager.start()
        managers.append(manager)
        return manager

    try:
        yield make
    finally:
        for manager in reversed(managers):
            await manager.aclose()
