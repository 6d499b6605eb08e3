"""Where a component runs when it is used in-process: its server's run manager, or its own.

A component registered with an :class:`~agentos.AgentOS` runs on that server's run manager and
database. One used on its own gets a private run manager on an in-memory SQLite database the
first time it runs, one per event loop (close it with ``await component.aclose()`` or
``async with component:``). The in-process API of :class:`~agentos.Component` (``arun``,
``aresume``, ``aget_run``, ``acancel_run``) goes through here::

    component.arun(...) ──▶ ComponentRuntime.manager() ──▶ RunManager.start_and_follow / start_run
                                 │ attached by the AgentOS that serves it
                                 └ or private: Settings.from_env(db_url="sqlite+aiosqlite://")
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from agentos.events import Event, Meta
from agentos.records import RunRecord
from agentos.retries import RunOptions
from agentos.runs import RunManager
from agentos.sessions import Session, SessionRecord
from agentos.settings import Settings

if TYPE_CHECKING:
    from agentos.components.base import Component

__all__ = ["ComponentRuntime"]


class ComponentRuntime:
    """The run manager of one component, and the four modes of running it in-process."""

    def __init__(self, component: Component) -> None:
        self._component = component
        self._attached: RunManager | None = None
        self._own: tuple[asyncio.AbstractEventLoop, RunManager] | None = None

    def attach(self, manager: RunManager) -> None:
        """Run on ``manager`` from now on (a server registering the component)."""
        self._attached = manager

    async def manager(self) -> RunManager:
        if self._attached is not None:
            return self._attached
        loop = asyncio.get_running_loop()
        if self._own is None or self._own[0] is not loop:
            manager = RunManager(Settings.from_env(db_url="sqlite+aiosqlite://"))
            manager.register(self._component)
            await manager.start()
            self._own = (loop, manager)
        return self._own[1]

    async def aclose(self) -> None:
        if self._own is not None:
            _, manager = self._own
            self._own = None
            await manager.aclose()

    async def arun(
        self,
        message: str,
        *,
        stream: bool,
        background: bool,
        session_id: str | None,
        user_id: str | None,
        run_id: str | None,
        options: RunOptions | None = None,
    ) -> Any:
        manager = await self.manager()
        if stream:
            _, run_stream = await manager.start_and_follow(
                self._component,
                message,
                session_id=session_id,
                user_id=user_id,
                run_id=run_id,
                cancel_on_close=not background,
                options=options,
            )
            return run_stream.events()
        record = await manager.start_run(
            self._component,
            message,
            session_id=session_id,
            user_id=user_id,
            run_id=run_id,
            options=options,
        )
        if background:
            return record
        return await manager.wait(record.run_id)

    async def aresume(
        self, run_id: str, last_event_index: int, *, meta: bool
    ) -> AsyncIterator[Event | Meta]:
        manager = await self.manager()
        kind = self._component.kind.name
        stream = await manager.open_stream(
            run_id, last_event_index, kind=kind, component_id=self._component.id, meta=meta
        )
        if stream is None:
            return _empty()
        return stream.events()

    async def aget_run(self, run_id: str) -> RunRecord:
        manager = await self.manager()
        kind = self._component.kind.name
        return await manager.get_run(run_id, kind=kind, component_id=self._component.id)

    async def aattempts(self, run_id: str) -> list[dict[str, Any]]:
        record = await self.aget_run(run_id)
        return record.attempt_list()

    async def acancel_run(self, run_id: str) -> RunRecord:
        manager = await self.manager()
        kind = self._component.kind.name
        await manager.get_run(run_id, kind=kind, component_id=self._component.id)
        return await manager.cancel(run_id)

    async def alist_sessions(self, user_id: str | None, limit: int) -> list[SessionRecord]:
        manager = await self.manager()
        return await manager.sessions.list_sessions(
            user_id=user_id,
            kind=self._component.kind.name,
            component_id=self._component.id,
            limit=limit,
        )

    async def aget_session(self, session_id: str) -> Session:
        manager = await self.manager()
        return await manager.sessions.get_session(
            session_id, kind=self._component.kind.name, component_id=self._component.id
        )

    async def adelete_session(self, session_id: str) -> None:
        manager = await self.manager()
        await manager.sessions.delete_session(
            session_id, kind=self._component.kind.name, component_id=self._component.id
        )


async def _empty() -> AsyncIterator[Event | Meta]:
    return
    yield  # pragma: no cover
