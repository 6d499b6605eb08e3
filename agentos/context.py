"""The handle a running component uses to emit events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agentos.settings import AgentSettings

if TYPE_CHECKING:
    from agentos.sessions import SessionLog
    from agentos.tools import ToolThreads

__all__ = ["Meter", "RunContext"]

#: Queues an event of the run; returns what to await before the run goes on (None: nothing).
EmitFn = Callable[[str, dict[str, Any]], Awaitable[None] | None]

#: Tokens one model call may report at most (a larger or negative count is a broken server's).
_MAX_CALL_TOKENS = 1 << 32


class Meter:
    """What the runs of one component used, counted as it happens and read by ``GET /metrics``:
    the tokens each model call reports (its usage chunk) and the tool calls by outcome.

    One per component (its members' and steps' calls count as its own); plain integers, no
    lock: every run of an instance is on its event loop.
    """

    __slots__ = ("completion_tokens", "prompt_tokens", "tool_calls")

    #: How a tool call can end: a result, a failure (the model gets the error), its time limit.
    OUTCOMES = ("completed", "error", "timeout")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.tool_calls: dict[str, int] = dict.fromkeys(self.OUTCOMES, 0)

    def count_tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += max(0, min(prompt, _MAX_CALL_TOKENS))
        self.completion_tokens += max(0, min(completion, _MAX_CALL_TOKENS))

    def count_tool_call(self, outcome: str) -> None:
        self.tool_calls[outcome] += 1


class RunContext:
    """What a component sees of its run: ids, the input, and :meth:`emit`.

    Members of a team and steps of a workflow get a child context whose events carry the outer
    run's ``run_id`` and ``event_index`` plus fields that say where they come from
    (``member_id``/``step_id`` and ``member_run_id``).

    ``session`` is the run's conversation (earlier turns, and where this run's go); members and
    steps have none. ``completed`` holds fields a component adds to its completed event (an
    agent's ``metrics``). ``settings`` are the agent limits of the server the run is on;
    ``meter`` counts the tokens and tool calls of the run's component.
    """

    __slots__ = (
        "_emit",
        "completed",
        "emitted",
        "extra",
        "meter",
        "run_id",
        "session",
        "session_id",
        "settings",
        "tool_threads",
        "user_id",
    )

    def __init__(
        self,
        emit: EmitFn,
        *,
        run_id: str,
        session_id: str,
        user_id: str | None = None,
        extra: dict[str, Any] | None = None,
        settings: AgentSettings | None = None,
        session: SessionLog | None = None,
        tool_threads: ToolThreads | None = None,
        meter: Meter | None = None,
    ) -> None:
        self._emit = emit
        self.run_id = run_id
        self.session_id = session_id
        self.user_id = user_id
        self.extra: dict[str, Any] = extra or {}
        self.settings = settings if settings is not None else AgentSettings()
        self.session = session
        #: Where this run's sync tools run (the server's bounded pool).
        self.tool_threads = tool_threads
        self.meter = meter if meter is not None else Meter()
        self.completed: dict[str, Any] = {}
        #: Events emitted through this context (not its children's).
        self.emitted = 0

    async def emit(self, name: str, **fields: Any) -> None:
        """Emit an event of this run; it gets the next ``event_index``."""
        waiting = self._emit(name, {**self.extra, **fields} if self.extra else fields)
        if waiting is not None:
            await waiting
        self.emitted += 1

    def child(self, **extra: Any) -> RunContext:
        """A context whose events also carry ``extra`` (for members and steps)."""
        return RunContext(
            self._emit,
            run_id=self.run_id,
            session_id=self.session_id,
            user_id=self.user_id,
            extra={**self.extra, **extra},
            settings=self.settings,
            tool_threads=self.tool_threads,
            meter=self.meter,
        )
