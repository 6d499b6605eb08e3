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
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentos.context import RunContext
from agentos.errors import (
    CommitterStopped,
    ModelTimeout,
    ModelUnavailable,
    ReplyTooLarge,
    RunEnded,
    ToolCallsExceeded,
    ToolRoundsExceeded,
)
from agentos.models.base import (
    ChatModel,
    ContentDelta,
    Delta,
    Finish,
    ReasoningDelta,
    ToolCall,
    ToolCallPart,
    ToolSpec,
    Usage,
)
from agentos.records import MAX_ID_LENGTH
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
    #: Why a call is refused before it runs (its arguments were too large), by its position.
    refused: dict[int, str] = field(default_factory=dict)


#: Loop turns that let a group commit begin: the committer's wake-up, then its hand-over of
#: the group to the database (``committer.py``).
_COMMIT_TURNS = 2

#: The longest tool name (``tools.py`` allows 1 to 64 of ``[A-Za-z0-9_-]``).
_MAX_TOOL_NAME = 64


class _PartialCall:
    __slots__ = ("arguments", "id", "name", "size")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name = ""
        self.arguments: list[str] = []
        self.size = 0  # UTF-8 bytes of the arguments received, kept or not


class _ToolCalls:
    """The tool calls of one model turn, joined from their parts within the limits.

    Past ``max_calls`` calls the turn fails (ToolCallsExceeded: the run ends, and the model's
    stream is closed at once); a call whose arguments pass ``max_argument_bytes`` keeps only
    their size, and is refused without running (the model is told why).
    """

    def __init__(self, max_calls: int, max_argument_bytes: int) -> None:
        self.max_calls = max_calls
        self.max_argument_bytes = max_argument_bytes
        self._calls: dict[int, _PartialCall] = {}

    def add(self, part: ToolCallPart) -> None:
        index = part.index
        if index is None:  # a whole call, from a server that sends no index
            index = max(self._calls, default=-1) + 1
        call = self._calls.get(index)
        if call is None:
            if len(self._calls) >= self.max_calls:
                raise ToolCallsExceeded(
                    f"the model asked for more than {self.max_calls} tool calls in one turn "
                    "(max_tool_calls)"
                )
            call = self._calls[index] = _PartialCall()
        if part.id:
            call.id = part.id[:MAX_ID_LENGTH]
        # Some servers repeat the whole name in every part; a name past 64 characters names no
        # tool (kept at 65, it cannot match one by being cut).
        if part.name and part.name != call.name and len(call.name) <= _MAX_TOOL_NAME:
            call.name = (call.name + part.name)[: _MAX_TOOL_NAME + 1]
        if part.arguments:
            call.size += len(part.arguments.encode("utf-8", "surrogatepass"))
            if call.size <= self.max_argument_bytes:
                call.arguments.append(part.arguments)
            else:
                call.arguments = []

    def calls(self) -> tuple[list[ToolCall], dict[int, str]]:
        """The calls in the model's order, and the refused ones' reasons by position."""
        calls: list[ToolCall] = []
        refused: dict[int, str] = {}
        for index in sorted(self._calls):
            part = self._calls[index]
            call_id = part.id or f"call_{uuid.uuid4().hex[:24]}"
            if part.size > self.max_argument_bytes:
                # The history holds "{}": any server takes it, where a cut text may not be JSON.
                refused[len(calls)] = (
                    f"the arguments were {part.size} bytes; at most {self.max_argument_bytes} "
                    "are accepted (tool_argument_bytes)"
                )
                calls.append(ToolCall(call_id, part.name, "{}"))
            else:
                calls.append(ToolCall(call_id, part.name, "".join(part.arguments)))
        return calls, refused


class _ReplySize:
    """The bytes of one model reply so far (content, reasoning, tool calls: UTF-8), within
    ``limit`` (0: none). Past it, ReplyTooLarge: the run ends before that piece is emitted."""

    __slots__ = ("limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0

    def add(self, text: str) -> None:
        self.size += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if self.limit and self.size > self.limit:
            raise ReplyTooLarge(f"the model's reply passed {self.limit} bytes (model_reply_bytes)")

    def add_call(self, part: ToolCallPart) -> None:
        for text in (part.id, part.name, part.arguments):
            if text:
                self.add(text)


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
        history_bytes: int | None = None,
        content_event: str = "RunContent",
    ) -> None:
        self.model = model
        self.instructions = instructions
        self.tools = tools or {}
        self.history_runs = history_runs
        self.history_bytes = history_bytes
        self.content_event = content_event

    async def run(
        self,
        ctx: RunContext,
        message: str,
        extra_tools: dict[str, Tool] | None = None,
        *,
        started: Callable[[], Awaitable[None]] | None = None,
    ) -> str:
        """Answer ``message``; returns the content streamed, sets ``ctx.completed["metrics"]``.

        ``started`` emits the run's first event. The session's history is read and the first
        model call sent while that event commits (a run's first event commits before the run
        goes on): the model's first delta is then on its way, not requested after the commit.
        Nothing the model sends is emitted before ``started`` returns.
        """
        tools = {**self.tools, **(extra_tools or {})}
        specs = [t.spec for t in tools.values()]
        metrics = _Metrics(self.model.name)
        opening = asyncio.ensure_future(self._open(ctx, message, specs))
        try:
            if started is not None:
                await started()
            messages, first_call = await opening
        except BaseException:
            await _discard(opening)
            raise
        first_new = len(messages) - 1  # the user's message: the first of this run's own
        opened: _Opened | None = first_call
        parts: list[str] = []
        rounds = 0
        while True:
            turn = await self._call(ctx, messages, specs, metrics, opened)
            opened = None
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
            messages.extend(await self._run_tools(ctx, turn, tools))
        if ctx.session is not None:
            await ctx.session.save(messages[first_new:])
        ctx.completed["metrics"] = metrics.to_dict()
        return "".join(parts)

    async def _open(
        self, ctx: RunContext, message: str, specs: Sequence[ToolSpec]
    ) -> tuple[list[dict[str, Any]], _Opened]:
        """The first call's messages (instructions, history, ``message``), and that call sent
        with its first delta read (or the failure that reading it met)."""
        # Let the started event's group go to the database first: building and sending the
        # request holds the loop for about 1.5 ms (the SDK's work), which the commit would
        # otherwise wait for.
        for _ in range(_COMMIT_TURNS):
            await asyncio.sleep(0)
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if ctx.session is not None:
            budget = self.history_bytes
            messages.extend(
                await ctx.session.history(
                    self.history_runs,
                    max_bytes=ctx.settings.history_bytes if budget is None else budget,
                )
            )
        messages.append({"role": "user", "content": message})
        stream = self.model.astream_chat(list(messages), specs)
        opened = _Opened(stream)
        try:
            opened.first = await _next(stream, ctx.settings.model_read_timeout)
        except StopAsyncIteration:
            opened.ended = True
        except Exception as exc:  # raised where the call's deltas are read (retried there)
            opened.error = exc
        except BaseException:
            await _close(stream)
            raise
        return messages, opened

    # -- one model call ---------------------------------------------------------------------------

    async def _call(
        self,
        ctx: RunContext,
        messages: list[dict[str, Any]],
        specs: Sequence[ToolSpec],
        metrics: _Metrics,
        opened: _Opened | None = None,
    ) -> _Turn:
        attempt = 0
        while True:
            emitted = False
            try:
                parts: list[str] = []
                settings = ctx.settings
                calls = _ToolCalls(settings.max_tool_calls, settings.tool_argument_bytes)
                size = _ReplySize(settings.model_reply_bytes)
                finish: Finish | None = None
                deltas_of_call = self._deltas(ctx, messages, specs, opened)
                opened = None  # a retry sends the call again
                async with contextlib.aclosing(deltas_of_call) as deltas:
                    async for delta in deltas:
                        if isinstance(delta, ContentDelta):
                            if delta.text:
                                size.add(delta.text)
                                emitted = True
                                metrics.saw_output()
                                parts.append(delta.text)
                                await ctx.emit(self.content_event, content=delta.text)
                        elif isinstance(delta, ReasoningDelta):
                            if delta.text:
                                size.add(delta.text)
                                emitted = True
                                metrics.saw_output()
                                await ctx.emit("ReasoningContent", content=delta.text)
                        elif isinstance(delta, ToolCallPart):
                            size.add_call(delta)
                            calls.add(delta)
                        elif isinstance(delta, ToolCall):
                            part = ToolCallPart(None, delta.id, delta.name, delta.arguments)
                            size.add_call(part)
                            calls.add(part)
                        elif isinstance(delta, Usage):
                            metrics.add(delta)
                            ctx.meter.count_tokens(delta.input_tokens, delta.output_tokens)
                        elif isinstance(delta, Finish):
                            finish = delta
                complete, refused = calls.calls()
                return _Turn("".join(parts), complete, finish, refused)
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
        self,
        ctx: RunContext,
        messages: list[dict[str, Any]],
        specs: Sequence[ToolSpec],
        opened: _Opened | None = None,
    ) -> AsyncGenerator[Delta]:
        """The model's deltas, each within ``model_read_timeout``; the stream is always closed.

        ``opened``: the call already sent by :meth:`_open`, its first delta read."""
        timeout = ctx.settings.model_read_timeout
        stream = (
            opened.stream if opened is not None else self.model.astream_chat(list(messages), specs)
        )
        try:
            if opened is not None:
                if opened.error is not None:
                    raise opened.error
                if opened.ended:
                    return
                assert opened.first is not None
                yield opened.first
            while True:
                try:
                    delta = await _next(stream, timeout)
                except StopAsyncIteration:
                    return
                yield delta
        finally:
            await _close(stream)

    # -- tools ------------------------------------------------------------------------------------

    async def _run_tools(
        self, ctx: RunContext, turn: _Turn, tools: dict[str, Tool]
    ) -> list[dict[str, Any]]:
        calls = turn.calls
        for call in calls:
            await ctx.emit(
                "ToolCallStarted",
                tool_call_id=call.id,
                tool_name=call.name,
                tool_args=_arguments_for_event(call.arguments),
            )
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._run_tool(ctx, call, tools, turn.refused.get(position)))
                for position, call in enumerate(calls)
            ]
        return [
            {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": task.result()}
            for call, task in zip(calls, tasks, strict=True)
        ]

    async def _run_tool(
        self, ctx: RunContext, call: ToolCall, tools: dict[str, Tool], refused: str | None
    ) -> str:
        """Run one call; it ends with one ToolCallCompleted or ToolCallError, also when it is
        cancelled (the run cancelled, or a sibling call failing unexpectedly)."""
        settings = ctx.settings
        started = time.monotonic()
        ended = False

        async def end(name: str, **fields: Any) -> None:
            nonlocal ended
            duration = round(time.monotonic() - started, 4)
            await ctx.emit(
                name, tool_call_id=call.id, tool_name=call.name, **fields, duration=duration
            )
            ended = True  # no suspension point after the event is queued

        try:
            found = tools.get(call.name)
            try:
                if refused is not None:
                    raise ToolFailed(refused)
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
                await end("ToolCallError", error=str(exc))
                return f"Error: {exc}"
            ctx.meter.count_tool_call("completed")
            await end("ToolCallCompleted", result=result)
            return result
        except asyncio.CancelledError:
            if not ended:
                with contextlib.suppress(RunEnded, CommitterStopped):  # the run takes no more
                    await end("ToolCallError", error="cancelled")
            raise


class _Opened:
    """A model call sent before the run's first event committed: its stream, and its first
    delta read (or the stream's end, or the failure met)."""

    __slots__ = ("ended", "error", "first", "stream")

    def __init__(self, stream: AsyncIterator[Delta]) -> None:
        self.stream = stream
        self.first: Delta | None = None
        self.ended = False
        self.error: Exception | None = None


async def _next(stream: AsyncIterator[Delta], timeout: float) -> Delta:
    """The stream's next delta within ``timeout`` seconds (0: no limit), else ModelTimeout."""
    try:
        async with asyncio.timeout(timeout or None):
            return await anext(stream)
    except TimeoutError:
        raise ModelTimeout(
            f"the model sent nothing for {timeout:g} s (model_read_timeout)"
        ) from None


async def _close(stream: AsyncIterator[Delta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def _discard(opening: asyncio.Future[tuple[list[dict[str, Any]], _Opened]]) -> None:
    """Stop a model call begun early whose run did not go on (cancelled, or its first event
    refused): its stream is closed, so the model server stops at once."""
    opening.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait([opening])  # not cancelled again by this task's own cancel
    if opening.done() and not opening.cancelled() and opening.exception() is None:
        await _close(opening.result()[1].stream)


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
