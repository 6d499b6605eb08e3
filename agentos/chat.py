"""The chat loop: a chat model, tools and a session's history, streamed as a run's events.

One run of an agent (or of a coordinating team's leader)::

    history + user message ──▶ model call ──▶ RunContent / ReasoningContent per delta
                                   │ tool calls?
                                   ├─ no ──▶ save the run's messages, RunCompleted (metrics)
                                   └─ yes ─▶ ToolCallStarted*, the tools at once, each ending
                                             ToolCallCompleted or ToolCallError ──▶ next call

Failures of a model call (:class:`~agentos.errors.ModelUnavailable`: no connection, 429, 5xx, a
stream cut short) are retried with backoff (``Retry-After`` honoured) only while that call has
emitted nothing: once a delta is out, a failure ends the run with ``RunError`` and nothing is
sent twice. A call that sends nothing for ``model_read_timeout`` seconds ends the run. A
cancelled run closes the model's stream at once: the cancel reaches the model's generator in
its read, and the generator is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentos.context import RunContext
from agentos.errors import ModelTimeout, ModelUnavailable, ToolRoundsExceeded
from agentos.models.base import (
    ChatModel,
    ContentDelta,
    Delta,
    Finish,
    ReasoningDelta,
    ToolCall,
    ToolSpec,
    Usage,
)
from agentos.tools import Tool, ToolFailed, ToolTimedOut

__all__ = ["ChatLoop"]

logger = logging.getLogger("agentos.chat")


@dataclass
class _Metrics:
    model: str
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None

    def saw_output(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic()

    def add(self, usage: Usage) -> None:
        self.input_tokens = (self.input_tokens or 0) + usage.input_tokens
        self.output_tokens = (self.output_tokens or 0) + usage.output_tokens
        self.total_tokens = (self.total_tokens or 0) + usage.total_tokens

    def to_dict(self) -> dict[str, Any]:
        ttft = None if self.first_token is None else round(self.first_token - self.started, 4)
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "time_to_first_token": ttft,
            "duration": round(time.monotonic() - self.started, 4),
            "model": self.model,
        }


@dataclass
class _Turn:
    content: str
    calls: list[ToolCall]
    finish: Finish | None


class ChatLoop:
    """Runs a chat model with tools over a session, emitting the run's events.

    ``content_event`` names the events of content deltas (``RunContent`` for an agent,
    ``TeamRunContent`` for a team's leader).
    """

    def __init__(
        self,
        model: ChatModel,
        *,
        instructions: str = "",
        tools: dict[str, Tool] | None = None,
        history_runs: int | None = None,
        content_event: str = "RunContent",
    ) -> None:
        self.model = model
        self.instructions = instructions
        self.tools = tools or {}
        self.history_runs = history_runs
        self.content_event = content_event

    async def run(
        self, ctx: RunContext, message: str, extra_tools: dict[str, Tool] | None = None
    ) -> str:
        """Answer ``message``; returns the content streamed, sets ``ctx.completed["metrics"]``."""
        tools = {**self.tools, **(extra_tools or {})}
        specs = [t.spec for t in tools.values()]
        metrics = _Metrics(self.model.name)
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if ctx.session is not None:
            messages.extend(await ctx.session.history(self.history_runs))
        first_new = len(messages)
        messages.append({"role": "user", "content": message})
        parts: list[str] = []
        rounds = 0
        while True:
            turn = await self._call(ctx, messages, specs, metrics)
            parts.append(turn.content)
            if turn.finish is not None and turn.finish.model:
                metrics.model = turn.finish.model
            assistant: dict[str, Any] = {"role": "assistant", "content": turn.content or None}
            if turn.calls:
                assistant["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in turn.calls
                ]
            messages.append(assistant)
            if not turn.calls:
                break
            if rounds >= ctx.settings.max_tool_rounds:
                raise ToolRoundsExceeded(
                    f"the model still called tools after {rounds} rounds (max_tool_rounds)"
                )
            rounds += 1
            messages.extend(await self._run_tools(ctx, turn.calls, tools))
        if ctx.session is not None:
            await ctx.session.save(messages[first_new:])
        ctx.completed["metrics"] = metrics.to_dict()
        return "".join(parts)

    # -- one model call ---------------------------------------------------------------------------

    async def _call(
        self,
        ctx: RunContext,
        messages: list[dict[str, Any]],
        specs: Sequence[ToolSpec],
        metrics: _Metrics,
    ) -> _Turn:
        attempt = 0
        while True:
            emitted = False
            try:
                parts: list[str] = []
                calls: list[ToolCall] = []
                finish: Finish | None = None
                async with contextlib.aclosing(self._deltas(ctx, messages, specs)) as deltas:
                    async for delta in deltas:
                        if isinstance(delta, ContentDelta):
                            if delta.text:
                                emitted = True
                                metrics.saw_output()
                                parts.append(delta.text)
                                await ctx.emit(self.content_event, content=delta.text)
                        elif isinstance(delta, ReasoningDelta):
                            if delta.text:
                                emitted = True
                                metrics.saw_output()
                                await ctx.emit("ReasoningContent", content=delta.text)
                        elif isinstance(delta, ToolCall):
                            calls.append(delta)
                        elif isinstance(delta, Usage):
                            metrics.add(delta)
                            ctx.meter.count_tokens(delta.input_tokens, delta.output_tokens)
                        elif isinstance(delta, Finish):
                            finish = delta
                return _Turn("".join(parts), calls, finish)
            except ModelUnavailable as exc:
                delay = _retry_delay(exc, attempt, ctx)
                if emitted or delay is None:
                    raise
                attempt += 1
                logger.info(
                    "run %s: model call failed (%s); retry %d in %.2fs",
                    ctx.run_id,
                    exc.detail,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _deltas(
        self, ctx: RunContext, messages: list[dict[str, Any]], specs: Sequence[ToolSpec]
    ) -> AsyncGenerator[Delta]:
        """The model's deltas, each within ``model_read_timeout``; the stream is always closed."""
        timeout = ctx.settings.model_read_timeout or None
        stream = self.model.astream_chat(list(messages), specs)
        try:
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        delta = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise ModelTimeout(
                        f"the model sent nothing for {timeout:g} s (model_read_timeout)"
                    ) from None
                yield delta
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    # -- tools ------------------------------------------------------------------------------------

    async def _run_tools(
        self, ctx: RunContext, calls: list[ToolCall], tools: dict[str, Tool]
    ) -> list[dict[str, Any]]:
        for call in calls:
            await ctx.emit(
                "ToolCallStarted",
                tool_call_id=call.id,
                tool_name=call.name,
                tool_args=_arguments_for_event(call.arguments),
            )
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._run_tool(ctx, call, tools)) for call in calls]
        return [
            {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": task.result()}
            for call, task in zip(calls, tasks, strict=True)
        ]

    async def _run_tool(self, ctx: RunContext, call: ToolCall, tools: dict[str, Tool]) -> str:
        settings = ctx.settings
        started = time.monotonic()
        found = tools.get(call.name)
        try:
            if found is None:
                raise ToolFailed(f"there is no tool named {call.name!r}")
            result = await found.execute(
                call.arguments,
                timeout=settings.tool_timeout,
                result_bytes=settings.tool_result_bytes,
                threads=ctx.tool_threads,
            )
        except ToolFailed as exc:
            ctx.meter.count_tool_call("timeout" if isinstance(exc, ToolTimedOut) else "error")
            error = str(exc)
            await ctx.emit(
                "ToolCallError",
                tool_call_id=call.id,
                tool_name=call.name,
                error=error,
                duration=round(time.monotonic() - started, 4),
            )
            return f"Error: {error}"
        ctx.meter.count_tool_call("completed")
        await ctx.emit(
            "ToolCallCompleted",
            tool_call_id=call.id,
            tool_name=call.name,
            result=result,
            duration=round(time.monotonic() - started, 4),
        )
        return result


def _retry_delay(exc: ModelUnavailable, attempt: int, ctx: RunContext) -> float | None:
    """Seconds before the next try of a failed model call, or None when it is not retried."""
    settings = ctx.settings
    if attempt >= settings.model_retry_attempts:
        return None
    if exc.retry_after is not None:
        if exc.retry_after > settings.model_retry_max_delay:
            return None  # the server asks for a longer wait than the run is allowed
        return max(exc.retry_after, 0.0)
    return float(min(settings.model_retry_delay * 2**attempt, settings.model_retry_max_delay))


def _arguments_for_event(arguments: str) -> Any:
    """The model's arguments as a JSON value for the event, or as text when they are not JSON."""
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return arguments
