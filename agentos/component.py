"""What agents, teams and workflows share: identity, execution as a member, and the in-process API.

Every component can run on its own (``await agent.arun("hi")``) with the same four modes as the
HTTP API. A component registered with an :class:`~agentos.AgentOS` runs on that server's run
manager and database; one used on its own gets a private run manager on an in-memory SQLite
database the first time it runs (close it with ``await component.aclose()`` or
``async with component:``).
"""

from __future__ import annotations

import abc
import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from agentos.context import RunContext
from agentos.events import Event, Kind, Meta
from agentos.store import RunRecord

if TYPE_CHECKING:
    from agentos.runs import RunManager

__all__ = ["Component", "describe_error"]

_ID = re.compile(r"^[A-Za-z0-9._~-]{1,200}$")


class Component(abc.ABC):
    """Base class of :class:`Agent`, :class:`Team` and :class:`Workflow`."""

    kind: Kind

    def __init__(self, id: str, *, name: str | None = None, description: str = "") -> None:
        if not isinstance(id, str) or not _ID.match(id):
            raise ValueError(f"component id must be URL-safe (letters, digits, ._~-), got {id!r}")
        self.id = id
        self.name = name or id
        self.description = description
        self._manager: RunManager | None = None
        self._own_manager: tuple[asyncio.AbstractEventLoop, RunManager] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    @abc.abstractmethod
    async def execute(self, ctx: RunContext, message: str) -> str:
        """Emit this component's non-terminal events and return its final content."""

    def describe(self) -> dict[str, Any]:
        """The JSON object listed by ``GET /{kind}``."""
        return {"id": self.id, "name": self.name, "description": self.description}

    async def run_as_member(self, ctx: RunContext, message: str) -> str:
        """Run inside a team or workflow: like a run of its own, ending with its completed event."""
        try:
            content = await self.execute(ctx, message)
        except Exception as exc:
            await ctx.emit(self.kind.error, error=describe_error(exc))
            raise
        await ctx.emit(self.kind.completed, content=content)
        return content

    def member_context(self, ctx: RunContext, field: str) -> RunContext:
        """A child context for this component running as a member (field: member_id/step_id)."""
        return ctx.child(
            **{field: self.id, self.kind.id_field: self.id, "member_run_id": str(uuid.uuid4())}
        )

    # -- the in-process API --------------------------------------------------------------------

    async def _runtime(self) -> RunManager:
        if self._manager is not None:
            return self._manager
        from agentos.runs import RunManager
        from agentos.settings import Settings

        loop = asyncio.get_running_loop()
        if self._own_manager is None or self._own_manager[0] is not loop:
            manager = RunManager(Settings.from_env(db_url="sqlite+aiosqlite://"))
            manager.register(self)
            await manager.start()
            self._own_manager = (loop, manager)
        return self._own_manager[1]

    async def aclose(self) -> None:
        """Finish and close the private run manager of a component used on its own.

        ``async with Agent(...) as agent:`` does it on exit. Components registered with an
        AgentOS are closed with it instead.
        """
        if self._own_manager is not None:
            _, manager = self._own_manager
            self._own_manager = None
            await manager.aclose()

    async def __aenter__(self) -> Component:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def arun(
        self,
        message: str,
        *,
        stream: bool = False,
        background: bool = False,
        session_id: str | None = None,
        user_id: str | None = None,
        run_id: str | None = None,
    ) -> Any:
        """Run this component, in one of the four modes of the HTTP API.

        - ``stream=False, background=False``: wait for the end, return the :class:`RunRecord`.
        - ``stream=False, background=True``: return the PENDING :class:`RunRecord` at once.
        - ``stream=True``: return an async iterator of :class:`Event`. Without ``background``,
          closing the iterator early cancels the run; with it, the run goes on and can be
          followed again with :meth:`aresume`.

        Example::

            run = await agent.arun("hello", background=True)
            async for event in await agent.aresume(run.run_id):
                print(event.index, event.name)
        """
        manager = await self._runtime()
        if stream:
            manager.check_stream_capacity()
        record = await manager.start_run(
            self, message, session_id=session_id, user_id=user_id, run_id=run_id
        )
        if stream:
            stream_ = await manager.open_stream(record.run_id, -1, meta=False)
            assert stream_ is not None
            return stream_.events(cancel_on_close=not background)
        if background:
            return record
        return await manager.wait(record.run_id)

    async def aresume(
        self, run_id: str, last_event_index: int = -1, *, meta: bool = False
    ) -> AsyncIterator[Event | Meta]:
        """Follow a run from after ``last_event_index``: each missed event once, then live ones.

        With ``meta=True`` the catch_up/subscribed/replay/error meta events are yielded too.
        """
        manager = await self._runtime()
        stream = await manager.open_stream(
            run_id, last_event_index, kind=self.kind.name, component_id=self.id, meta=meta
        )
        if stream is None:
            return _empty()
        return stream.events()

    async def aget_run(self, run_id: str) -> RunRecord:
        """The run object; raises RunNotFound."""
        manager = await self._runtime()
        return await manager.get_run(run_id, kind=self.kind.name, component_id=self.id)

    async def acancel_run(self, run_id: str) -> RunRecord:
        """Cancel a run (idempotent); returns the run as it is afterwards."""
        manager = await self._runtime()
        await manager.get_run(run_id, kind=self.kind.name, component_id=self.id)
        return await manager.cancel(run_id)


async def _empty() -> AsyncIterator[Event | Meta]:
    return
    yield  # pragma: no cover


def describe_error(exc: BaseException) -> str:
    """The error text of a failed run: the exception's type and message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
