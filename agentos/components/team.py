"""Teams: several members answering one message, in sequence, in parallel, or led by a model."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from agentos.chat import ChatLoop
from agentos.components.base import Component
from agentos.context import RunContext
from agentos.events import KINDS
from agentos.models.base import ChatModel
from agentos.retries import RetryPolicy
from agentos.tools import Tool

__all__ = ["Team"]

_NOT_TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")


class Team(Component):
    """A team runs its members on the message and joins their replies.

    Each member's events are forwarded with ``member_id`` and ``member_run_id``, and a member
    that started ends with one event of its own (completed, error, or cancelled: the run
    cancelled, its delegation timed out, or another parallel member failed); the team emits
    ``TeamRunStarted``, the members' events, ``TeamRunContent`` with the joined reply and ends
    with ``TeamRunCompleted``. ``mode="parallel"`` runs the members at once (their events
    interleave; indices stay gap-free); the default runs them one after the other::

        team = Team(id="panel", members=[Agent(id="a", model=EchoModel()), ...])

    ``mode="coordinate"`` puts a leader model in charge: each member is a tool the leader may
    call (``delegate_to_<member id>`` with a ``task``), the member's run streams inside the
    team's run as above, its reply goes back to the leader, and the leader's own reply streams
    as ``TeamRunContent`` deltas::

        team = Team(
            id="desk",
            mode="coordinate",
            model=OpenAIChat(model="gpt-4o-mini"),
            instructions="Ask the researcher, then the writer.",
            members=[researcher, writer],
        )
    """

    kind = KINDS["teams"]

    def __init__(
        self,
        id: str,
        members: Sequence[Component],
        *,
        mode: Literal["sequential", "parallel", "coordinate"] = "sequential",
        model: ChatModel | None = None,
        instructions: str = "",
        name: str | None = None,
        description: str = "",
        version: str | None = None,
        tags: Sequence[str] = (),
        retry_policy: RetryPolicy | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        multitask: str | None = None,
    ) -> None:
        super().__init__(
            id,
            name=name,
            description=description,
            version=version,
            tags=tags,
            retry_policy=retry_policy,
            timeout=timeout,
            multitask=multitask,
        )
        if not members:
            raise ValueError("a Team needs at least one member")
        if mode not in ("sequential", "parallel", "coordinate"):
            raise ValueError("mode must be 'sequential', 'parallel' or 'coordinate'")
        if (mode == "coordinate") != (model is not None):
            raise ValueError("a chat model= is needed by mode='coordinate', and only by it")
        if model is not None and not isinstance(model, ChatModel):
            raise TypeError("a coordinating team's model must be a chat model")
        self.members = list(members)
        self.mode = mode
        self._leader: ChatLoop | None = None
        if model is not None:
            self._leader = ChatLoop(
                model, instructions=instructions, content_event=self.kind.content
            )
            names = [_tool_name(m) for m in self.members]
            if len(set(names)) != len(names):
                raise ValueError(f"members need distinct ids, got {[m.id for m in members]}")

    def parts(self) -> list[Component]:
        return list(self.members)

    def models(self) -> list[object]:
        return [self._leader.model] if self._leader is not None else []

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": self.mode, "members": [m.id for m in self.members]}

    async def execute(self, ctx: RunContext, message: str) -> str:
        members = [m.id for m in self.members]
        if self._leader is not None:
            tools = {_tool_name(m): _delegation(ctx, m) for m in self.members}
            # The leader's loop emits the started event: its model call goes out meanwhile.
            return await self._leader.run(
                ctx,
                message,
                tools,
                started=lambda: ctx.emit(self.kind.started, input=message, members=members),
            )
        await ctx.emit(self.kind.started, input=message, members=members)
        if self.mode == "parallel":
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [
                        group.create_task(
                            m.run_as_member(m.member_context(ctx, "member_id"), message)
                        )
                        for m in self.members
                    ]
            except ExceptionGroup as failed:
                # The first member's failure is the team's (the others were cancelled by it).
                raise failed.exceptions[0] from failed
            replies = [task.result() for task in tasks]
        else:
            replies = [
                await m.run_as_member(m.member_context(ctx, "member_id"), message)
                for m in self.members
            ]
        content = "\n".join(replies)
        await ctx.emit(self.kind.content, content=content)
        return content


def _tool_name(member: Component) -> str:
    return "delegate_to_" + _NOT_TOOL_NAME.sub("_", member.id)[:50]


def _delegation(ctx: RunContext, member: Component) -> Tool:
    """The tool that runs ``member`` inside the team's run on the leader's task."""

    async def delegate(task: str) -> str:
        return await member.run_as_member(member.member_context(ctx, "member_id"), task)

    about = f": {member.description}" if member.description else ""
    return Tool(
        delegate,
        name=_tool_name(member),
        description=f"Give a task to the team member {member.name!r}{about}. "
        "Returns the member's reply.",
    )
