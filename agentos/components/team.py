"""Teams: several members answering one message, in sequence or in parallel."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from agentos.components.base import Component
from agentos.context import RunContext
from agentos.events import KINDS

__all__ = ["Team"]


class Team(Component):
    """A team runs its members on the message and joins their replies.

    Each member's events are forwarded with ``member_id`` and ``member_run_id``; the team emits
    ``TeamRunStarted``, the members' events, ``TeamRunContent`` with the joined reply and ends
    with ``TeamRunCompleted``. ``mode="parallel"`` runs the members at once (their events
    interleave; indices stay gap-free); the default runs them one after the other::

        team = Team(id="panel", members=[Agent(id="a", model=EchoModel()), ...])
    """

    kind = KINDS["teams"]

    def __init__(
        self,
        id: str,
        members: Sequence[Component],
        *,
        mode: Literal["sequential", "parallel"] = "sequential",
        name: str | None = None,
        description: str = "",
    ) -> None:
        super().__init__(id, name=name, description=description)
        if not members:
            raise ValueError("a Team needs at least one member")
        if mode not in ("sequential", "parallel"):
            raise ValueError("mode must be 'sequential' or 'parallel'")
        self.members = list(members)
        self.mode = mode

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": self.mode, "members": [m.id for m in self.members]}

    async def execute(self, ctx: RunContext, message: str) -> str:
        await ctx.emit(self.kind.started, input=message, members=[m.id for m in self.members])
        if self.mode == "parallel":
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(m.run_as_member(m.member_context(ctx, "member_id"), message))
                    for m in self.members
                ]
            replies = [task.result() for task in tasks]
        else:
            replies = [
                await m.run_as_member(m.member_context(ctx, "member_id"), message)
                for m in self.members
            ]
        content = "\n".join(replies)
        await ctx.emit(self.kind.content, content=content)
        return content
