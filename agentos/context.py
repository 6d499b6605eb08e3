"""The handle a running component uses to emit events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["RunContext"]

EmitFn = Callable[[str, dict[str, Any]], Awaitable[None]]


class RunContext:
    """What a component sees of its run: ids, the input, and :meth:`emit`.

    Members of a team and steps of a workflow get a child context whose events carry the outer
    run's ``run_id`` and ``event_index`` plus fields that say where they come from
    (``member_id``/``step_id`` and ``member_run_id``).
    """

    __slots__ = ("_emit", "extra", "run_id", "session_id", "user_id")

    def __init__(
        self,
        emit: EmitFn,
        *,
        run_id: str,
        session_id: str,
        user_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._emit = emit
        self.run_id = run_id
        self.session_id = session_id
        self.user_id = user_id
        self.extra: dict[str, Any] = extra or {}

    async def emit(self, name: str, **fields: Any) -> None:
        """Emit an event of this run; it gets the next ``event_index``."""
        await self._emit(name, {**self.extra, **fields} if self.extra else fields)

    def child(self, **extra: Any) -> RunContext:
        """A context whose events also carry ``extra`` (for members and steps)."""
        return RunContext(
            self._emit,
            run_id=self.run_id,
            session_id=self.session_id,
            user_id=self.user_id,
            extra={**self.extra, **extra},
        )
