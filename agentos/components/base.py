"""The contract of a component (agents, teams, workflows): identity, execution, running as a
member, and the in-process API.

Every component can run on its own (``await agent.arun("hi")``) with the same four modes as the
HTTP API; where it runs (its server's run manager, or a private one) is ``agentos.runtime``'s
business.
"""

from __future__ import annotations

import abc
import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from agentos.context import RunContext
from agentos.errors import CommitterStopped, RunEnded, describe_error
from agentos.events import Event, Kind, Meta
from agentos.records import RunRecord, is_valid_id
from agentos.retries import RetryPolicy, RunOptions
from agentos.runtime import ComponentRuntime
from agentos.sessions import Session, SessionRecord

__all__ = ["Component"]


class Component(abc.ABC):
    """Base class of :class:`Agent`, :class:`Team` and :class:`Workflow`."""

    kind: Kind

    def __init__(
        self,
        id: str,
        *,
        name: str | None = None,
        description: str = "",
        version: str | None = None,
        tags: Sequence[str] = (),
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        multitask: str | None = None,
    ) -> None:
        if not is_valid_id(id):
            raise ValueError(f"component id must be URL-safe (letters, digits, ._~-), got {id!r}")
        if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
            raise TypeError("tags must be a sequence of strings")
        self.id = id
        self.name = name or id
        self.description = description
        #: Free-form version of this component (shown by ``GET /{kind}/{id}``).
        self.version = version
        #: Free-form labels (shown by ``GET /{kind}`` and ``GET /{kind}/{id}``).
        self.tags = list(tags)
        #: Defaults for this component's runs (a request's own options win): attempts and
        #: delays, seconds per attempt, and what a run does while its session has an active one.
        options = RunOptions(
            retry_policy=None if retry_policy is None else RetryPolicy.parse(retry_policy),
            timeout=timeout,
            multitask=multitask,
        )
        self.options = options
        #: Where this component's runs go when it is run in-process.
        self.runtime = ComponentRuntime(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r})"

    @abc.abstractmethod
    async def execute(self, ctx: RunContext, message: str) -> str:
        """Emit this component's non-terminal events and return its final content."""

    def describe(self) -> dict[str, Any]:
        """The JSON object listed by ``GET /{kind}``."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "tags": list(self.tags),
        }

    async def run_as_member(self, ctx: RunContext, message: str) -> str:
        """Run inside a team or workflow: like a run of its own, with exactly one end event.

        Completed, failed, or cancelled (the outer run cancelled, a coordinating leader's tool
        timeout, a parallel member's failure stopping the others): once the member has emitted
        anything, it ends with its completed, error or cancelled event, then the outcome goes
        on to the caller.
        """
        try:
            content = await self.execute(ctx, message)
            # Queued without a suspension point after it: once it returns, it is out.
            await ctx.emit(self.kind.completed, content=content, **ctx.completed)
            return content
        except asyncio.CancelledError:
            await _end_member(ctx, self.kind.cancelled, reason="cancelled")
            raise
        except Exception as exc:
            await _end_member(ctx, self.kind.error, error=describe_error(exc))
            raise

    def member_context(self, ctx: RunContext, field: str) -> RunContext:
        """A child context for this component running as a member (field: member_id/step_id)."""
        return ctx.child(
            **{field: self.id, self.kind.id_field: self.id, "member_run_id": str(uuid.uuid4())}
        )

    # -- the in-process API (agentos.runtime) ---------------------------------------------------

    async def aclose(self) -> None:
        """Finish and close the private run manager of a component used on its own, and the
        connections of its models (and its members' or steps').

        ``async with Agent(...) as agent:`` does it on exit. Components registered with an
        AgentOS are closed with it instead.
        """
        await self.runtime.aclose()
        for part in self.parts():
            await part.aclose()
        for model in self.models():
            aclose = getattr(model, "aclose", None)
            if aclose is not None:
                await aclose()

    def parts(self) -> list[Component]:
        """The members or steps that are components themselves."""
        return []

    def models(self) -> list[object]:
        """The models this component itself calls."""
        return []

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
        options: RunOptions | None = None,
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
        return await self.runtime.arun(
            message,
            stream=stream,
            background=background,
            session_id=session_id,
            user_id=user_id,
            run_id=run_id,
            options=options,
        )

    async def aresume(
        self, run_id: str, last_event_index: int = -1, *, meta: bool = False
    ) -> AsyncIterator[Event | Meta]:
        """Follow a run from after ``last_event_index``: each missed event once, then live ones.

        With ``meta=True`` the catch_up/subscribed/replay/error meta events are yielded too.
        """
        return await self.runtime.aresume(run_id, last_event_index, meta=meta)

    async def aget_run(self, run_id: str) -> RunRecord:
        """The run object; raises RunNotFound."""
        return await self.runtime.aget_run(run_id)

    async def aattempts(self, run_id: str) -> list[dict[str, Any]]:
        """The run's attempts, oldest first: ``attempt``, ``instance_id``, ``started_at``,
        ``ended_at``, ``outcome`` and ``error`` (as ``GET .../runs/{run_id}/attempts``); raises
        RunNotFound.

        Example::

            run = await agent.arun("hello", options=RunOptions(retry_policy=RetryPolicy(3)))
            [a["outcome"] for a in await agent.aattempts(run.run_id)]   # ['COMPLETED']
        """
        return await self.runtime.aattempts(run_id)

    async def acancel_run(self, run_id: str) -> RunRecord:
        """Cancel a run (idempotent); returns the run as it is afterwards."""
        return await self.runtime.acancel_run(run_id)

    async def alist_sessions(
        self, *, user_id: str | None = None, limit: int = 100
    ) -> list[SessionRecord]:
        """This component's sessions, most recently active first."""
        return await self.runtime.alist_sessions(user_id, limit)

    async def aget_session(self, session_id: str) -> Session:
        """A session's runs of this component and their messages; raises SessionNotFound.

        Example::

            await agent.arun("my name is Ada", session_id="s1")
            session = await agent.aget_session("s1")
            [m.role for m in session.messages]    # ['user', 'assistant']
        """
        return await self.runtime.aget_session(session_id)

    async def adelete_session(self, session_id: str) -> None:
        """Delete a session, its runs and their events and messages.

        Raises SessionNotFound, and SessionActive while one of its runs is going.
        """
        await self.runtime.adelete_session(session_id)


async def _end_member(ctx: RunContext, name: str, **fields: Any) -> None:
    """A member's error or cancelled event, if it started (emitted an event) and the run still
    takes events (a run taken over, or a stopped committer, ends without it)."""
    if not ctx.emitted:
        return
    try:
        await ctx.emit(name, **fields)
    except (RunEnded, CommitterStopped):
        pass
