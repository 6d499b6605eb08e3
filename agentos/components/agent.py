"""Agents: a model (with tools and a session's history), or your own async generator."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from agentos.chat import ChatLoop
from agentos.components.base import Component
from agentos.context import RunContext
from agentos.events import KINDS
from agentos.models.base import ChatModel, Model
from agentos.retries import RetryPolicy
from agentos.tools import Tool, as_tools

__all__ = ["Agent"]

AgentFn = Callable[..., AsyncIterator[Any]]

_RESERVED_NAMES = frozenset(
    name
    for kind in KINDS.values()
    for name in (kind.completed, kind.error, kind.cancelled, kind.started)
)


class Agent(Component):
    """An agent streams ``RunStarted``, ``RunContent`` chunks and ends with ``RunCompleted``.

    Give it a model::

        agent = Agent(id="echo", model=EchoModel(delay=0.05))

    or your own async generator function, called with the message (and the :class:`RunContext`
    if it takes a second argument). It yields text chunks, or dicts with an ``event`` name for
    other events such as tool calls::

        async def answer(message):
            yield {"event": "ToolCallStarted", "tool_name": "search", "tool_args": {"q": message}}
            yield {"event": "ToolCallCompleted", "tool_name": "search", "result": "42"}
            yield "The answer is 42."

        agent = Agent(id="oracle", fn=answer)

    A chat model (:class:`~agentos.models.base.ChatModel`, such as ``OpenAIChat``) may call
    ``tools`` (plain typed functions, or :func:`~agentos.tool`) and sees the earlier runs of its
    session (the last ``history_runs`` that fit in ``history_bytes``; by default the settings of
    those names)::

        agent = Agent(
            id="assistant",
            model=OpenAIChat(model="gpt-4o-mini"),
            instructions="Answer briefly.",
            tools=[current_time, calculate],
        )

    Its run streams ``RunContent`` (and ``ReasoningContent``) per delta, ``ToolCallStarted`` and
    ``ToolCallCompleted``/``ToolCallError`` per tool call, and ends with ``RunCompleted`` carrying
    ``content`` and ``metrics`` (tokens, time to first token, duration, model).

    An exception raised by the model or the function ends the run with ``RunError``.
    """

    kind = KINDS["agents"]

    def __init__(
        self,
        id: str,
        model: Model | ChatModel | None = None,
        *,
        fn: AgentFn | None = None,
        instructions: str = "",
        tools: Sequence[Tool | Callable[..., Any]] = (),
        history_runs: int | None = None,
        history_bytes: int | None = None,
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
        if (model is None) == (fn is None):
            raise ValueError("an Agent needs exactly one of model= or fn=")
        if fn is not None and not inspect.isasyncgenfunction(fn):
            raise TypeError("fn must be an async generator function (async def with yield)")
        if history_runs is not None and history_runs < 0:
            raise ValueError("history_runs must not be negative")
        if history_bytes is not None and history_bytes < 0:
            raise ValueError("history_bytes must not be negative")
        self.model = model
        self.fn = fn
        self.instructions = instructions
        self.tools = as_tools(tools)
        self._chat: ChatLoop | None = None
        if isinstance(model, ChatModel):
            self._chat = ChatLoop(
                model,
                instructions=instructions,
                tools=self.tools,
                history_runs=history_runs,
                history_bytes=history_bytes,
            )
        elif self.tools or instructions or history_runs is not None or history_bytes is not None:
            raise ValueError(
                "instructions, tools, history_runs and history_bytes need a chat model"
            )

    def models(self) -> list[object]:
        return [self.model] if self.model is not None else []

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self.tools:
            described["tools"] = sorted(self.tools)
        return described

    def _chunks(self, ctx: RunContext, message: str) -> AsyncIterator[Any]:
        if isinstance(self.model, Model):
            return self.model.astream(message)
        assert self.fn is not None
        if len(inspect.signature(self.fn).parameters) >= 2:
            return self.fn(message, ctx)
        return self.fn(message)

    async def execute(self, ctx: RunContext, message: str) -> str:
        if self._chat is not None:
            # The chat loop emits the started event: its model call goes out meanwhile.
            return await self._chat.run(
                ctx, message, started=lambda: ctx.emit(self.kind.started, input=message)
            )
        await ctx.emit(self.kind.started, input=message)
        parts: list[str] = []
        chunks = self._chunks(ctx, message)
        try:
            async for chunk in chunks:
                if isinstance(chunk, str):
                    parts.append(chunk)
                    await ctx.emit(self.kind.content, content=chunk)
                elif isinstance(chunk, dict) and isinstance(chunk.get("event"), str):
                    name = chunk["event"]
                    if name in _RESERVED_NAMES:
                        raise ValueError(f"an agent may not emit {name!r} itself")
                    await ctx.emit(name, **{k: v for k, v in chunk.items() if k != "event"})
                else:
                    raise TypeError(
                        f"agent {self.id!r} yielded {type(chunk).__name__}; "
                        "expected str or a dict with an 'event' name"
                    )
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        return "".join(parts)
