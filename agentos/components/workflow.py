"""Workflows: steps run in order, each step's output the next step's input."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from agentos.components.base import Component
from agentos.context import RunContext
from agentos.events import KINDS
from agentos.retries import RetryPolicy

__all__ = ["Step", "Workflow"]

StepFn = Callable[[str], Awaitable[str]]


class Step:
    """A workflow step: an agent, a team, or an async function ``(input) -> output``."""

    def __init__(self, id: str, runner: Component | StepFn) -> None:
        if not isinstance(runner, Component) and not inspect.iscoroutinefunction(runner):
            raise TypeError("a step runs an Agent, a Team or an async function")
        self.id = id
        self.runner = runner


StepLike = Step | Component | StepFn


def _as_step(step: StepLike) -> Step:
    if isinstance(step, Step):
        return step
    if isinstance(step, Component):
        return Step(step.id, step)
    return Step(getattr(step, "__name__", "step"), step)


class Workflow(Component):
    """A workflow emits ``WorkflowStarted``, then per step ``StepStarted``, the step's own events
    (with ``step_id``) and ``StepCompleted``, and ends with ``WorkflowCompleted``::

        async def shout(text: str) -> str:
            return text.upper()

        workflow = Workflow(id="pipeline", steps=[Agent(id="draft", model=EchoModel()), shout])
    """

    kind = KINDS["workflows"]

    def __init__(
        self,
        id: str,
        steps: Sequence[StepLike],
        *,
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
        if not steps:
            raise ValueError("a Workflow needs at least one step")
        self.steps = [_as_step(step) for step in steps]
        ids = [step.id for step in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError(f"step ids must be unique, got {ids}")

    def parts(self) -> list[Component]:
        return [step.runner for step in self.steps if isinstance(step.runner, Component)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "steps": [step.id for step in self.steps]}

    async def execute(self, ctx: RunContext, message: str) -> str:
        await ctx.emit(self.kind.started, input=message, steps=[s.id for s in self.steps])
        data = message
        for position, step in enumerate(self.steps):
            await ctx.emit("StepStarted", step_id=step.id, step_index=position, input=data)
            if isinstance(step.runner, Component):
                data = await step.runner.run_as_member(
                    step.runner.member_context(ctx, "step_id"), data
                )
            else:
                data = str(await step.runner(data))
            await ctx.emit("StepCompleted", step_id=step.id, step_index=position, content=data)
        return data
