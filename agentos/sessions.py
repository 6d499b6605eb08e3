"""Sessions: the runs that share a ``session_id`` form a conversation kept in the store.

An agent that talks to a chat model saves its run's messages (the user's message, the
assistant's replies with their tool calls, the tools' results) when the run completes, and the
next run of the same session starts with the messages of the last ``history_runs`` completed
runs::

    run 1 ──▶ [user, assistant]                    saved with run 1
    run 2 ──▶ [user, assistant(tool_calls), tool, assistant]
    run 3 sees run 1 and run 2's messages, then its own user message

Only completed runs count: a run that failed or was cancelled leaves no half conversation.
:class:`SessionLog` is what one run sees of its session (``RunContext.session``);
:class:`Sessions` lists, shows and deletes sessions for the HTTP routes and the in-process API.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentos.errors import SessionNotFound, StoreUnavailable
from agentos.records import MAX_ID_LENGTH, RunRecord, is_valid_id, storable

if TYPE_CHECKING:
    from agentos.backends.base import Store
    from agentos.settings import CommitSettings

__all__ = ["MessageRecord", "Session", "SessionLog", "SessionRecord", "Sessions"]


@dataclass(frozen=True)
class MessageRecord:
    """One message of a session, as the store keeps it (``position`` orders a run's messages)."""

    session_id: str
    run_id: str
    position: int
    role: str
    content: str | None = None
    #: The assistant's tool calls: ``[{"id", "name", "arguments"}]`` (arguments as JSON text).
    tool_calls: list[dict[str, str]] | None = None
    #: For a tool's result: the call it answers, and the tool's name.
    tool_call_id: str | None = None
    name: str | None = None
    created_at: float = field(default_factory=time.time)

    def to_chat(self) -> dict[str, Any]:
        """The message as a chat model takes it (OpenAI chat format)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None and self.role == "tool":
            message["name"] = self.name
        return message

    @classmethod
    def from_chat(
        cls, session_id: str, run_id: str, position: int, message: dict[str, Any]
    ) -> MessageRecord:
        # What a model or a tool wrote may hold anything: the columns get a copy every database
        # can store (NUL and lone surrogates replaced; ids and names cut to their column).
        calls = message.get("tool_calls") or None
        return cls(
            session_id=session_id,
            run_id=run_id,
            position=position,
            role=message["role"],
            content=storable(message.get("content")),
            tool_calls=[
                {
                    "id": _short_id(c["id"]) or "",
                    "name": _short_id(c["function"]["name"]) or "",
                    "arguments": storable(c["function"]["arguments"]) or "",
                }
                for c in calls
            ]
            if calls
            else None,
            tool_call_id=_short_id(message.get("tool_call_id")),
            name=_short_id(message.get("name")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The message object of the HTTP API."""
        return {
            "run_id": self.run_id,
            "position": self.position,
            "role": self.role,
            "content": self.content,
            "tool_calls": self.tool_calls,
            "tool_call_id": self.tool_call_id,
            "name": self.name,
            "created_at": self.created_at,
        }

    def tool_calls_json(self) -> str | None:
        return None if self.tool_calls is None else json.dumps(self.tool_calls)


@dataclass(frozen=True)
class SessionRecord:
    """A session as listed: its runs of one component, their count and time span."""

    session_id: str
    kind: str
    component_id: str
    user_id: str | None
    run_count: int
    created_at: float
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "kind": self.kind,
            "component_id": self.component_id,
            "user_id": self.user_id,
            "run_count": self.run_count,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Session:
    """One session: its runs (oldest first) and their messages."""

    session_id: str
    runs: list[RunRecord]
    messages: list[MessageRecord]

    def to_dict(self) -> dict[str, Any]:
        """The session object of ``GET /sessions/{session_id}``."""
        return {
            "session_id": self.session_id,
            "runs": [run.to_dict() for run in self.runs],
            "messages": [message.to_dict() for message in self.messages],
        }


def _json_bytes(message: dict[str, Any]) -> int:
    """The size of a chat message as a model server receives it (JSON, UTF-8)."""
    return len(json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass"))


def _short_id(value: str | None) -> str | None:
    """A model-made id or name as its column holds it (storable, at most MAX_ID_LENGTH)."""
    text = storable(value)
    return None if text is None else text[:MAX_ID_LENGTH]


class SessionLog:
    """What one run sees of its session: the earlier turns, and where its own go."""

    __slots__ = ("_new", "_retry", "_run", "_store", "history_runs")

    def __init__(
        self,
        store: Store,
        run: RunRecord,
        history_runs: int,
        *,
        new: bool = False,
        retry: CommitSettings | None = None,
    ) -> None:
        self._store = store
        self._run = run
        #: Earlier completed runs whose messages :meth:`history` returns by default.
        self.history_runs = history_runs
        #: The session id was made for this run: no earlier run is in it, nothing to read.
        self._new = new
        #: How :meth:`save` retries a database that cannot commit now (None: it does not).
        self._retry = retry

    async def history(
        self, runs: int | None = None, *, max_bytes: int | None = None
    ) -> list[dict[str, Any]]:
        """Messages (chat format) of the session's last ``runs`` completed runs, oldest first.

        With ``max_bytes``, the newest runs whose messages fit in that many bytes (their JSON,
        UTF-8): older runs are left out whole, so the history stays a contiguous end of the
        conversation and a tool call never comes without its result.
        """
        limit = self.history_runs if runs is None else runs
        if self._new or limit <= 0 or (max_bytes is not None and max_bytes <= 0):
            return []
        # Only the same user's turns: a session id another user chose too shares nothing.
        records = await self._store.session_messages(
            self._run.session_id,
            last_runs=limit,
            before=self._run.created_at,
            user_id=self._run.user_id,
        )
        turns: list[list[dict[str, Any]]] = []
        last_run: str | None = None
        for record in records:  # ordered by run, then position
            if record.run_id != last_run:
                turns.append([])
                last_run = record.run_id
            turns[-1].append(record.to_chat())
        if max_bytes is not None:
            size = 0
            for kept, turn in enumerate(reversed(turns)):
                size += sum(_json_bytes(message) for message in turn)
                if size > max_bytes:
                    turns = turns[len(turns) - kept :]
                    break
        return [message for turn in turns for message in turn]

    async def save(self, messages: list[dict[str, Any]]) -> None:
        """Keep this run's messages (chat format); the next runs see them once it completed.

        A database that cannot commit now (StoreUnavailable: on SQLite, another writer held
        the lock past ``db_timeout``, as when many runs end at once on a busy machine) is
        retried like a group commit (``commit_retry_delay``, doubled up to
        ``commit_retry_max_delay``) for at most ``commit_stall_timeout`` seconds.
        """
        run = self._run
        records = [
            MessageRecord.from_chat(run.session_id, run.run_id, position, message)
            for position, message in enumerate(messages)
        ]
        # Fenced on this attempt, as its events are: an attempt taken over meanwhile (another
        # instance, or this one claiming the run back) gets WriteConflict and saves nothing.
        add = functools.partial(
            self._store.add_messages, records, owner=run.instance_id, attempt=run.attempt
        )
        retry = self._retry
        if retry is None:
            await add()
            return
        delay = retry.retry_delay
        deadline = time.monotonic() + retry.stall_timeout
        while True:
            try:
                await add()
                return
            except StoreUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry.retry_max_delay)


class Sessions:
    """List, show and delete sessions (the ``/sessions`` routes and the in-process API)."""

    def __init__(self, store: Store, forget: Callable[[str], None] | None = None) -> None:
        self._store = store
        #: Called with each deleted run's id (the run manager drops its buffered events).
        self._forget = forget

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        kind: str | None = None,
        component_id: str | None = None,
        limit: int = 100,
    ) -> list[SessionRecord]:
        """Sessions, most recently active first; one entry per session and component."""
        return await self._store.list_sessions(
            user_id=user_id, kind=kind, component_id=component_id, limit=limit
        )

    async def get_session(
        self,
        session_id: str,
        *,
        kind: str | None = None,
        component_id: str | None = None,
        owner: str | None = None,
    ) -> Session:
        """The session's runs (oldest first) and messages; SessionNotFound when it has none.

        With ``kind``/``component_id``, only the runs of that component (and their messages);
        with ``owner``, only that user's runs (another user's session is not found).
        """
        if not is_valid_id(session_id):
            raise SessionNotFound(session_id)
        runs = await self._store.session_runs(session_id)
        runs = [
            r
            for r in runs
            if (kind is None or r.kind == kind)
            and (component_id is None or r.component_id == component_id)
            and (owner is None or r.user_id == owner)
        ]
        if not runs:
            raise SessionNotFound(session_id)
        keep = {r.run_id for r in runs}
        messages = await self._store.session_messages(session_id)
        return Session(session_id, runs, [m for m in messages if m.run_id in keep])

    async def delete_session(
        self,
        session_id: str,
        *,
        kind: str | None = None,
        component_id: str | None = None,
        owner: str | None = None,
    ) -> None:
        """Delete the session's runs, events and messages; SessionActive while one runs.

        With ``kind``/``component_id`` the session must hold runs of that component; with
        ``owner``, every run of the session must be that user's (else it is not found).
        """
        if not is_valid_id(session_id):
            raise SessionNotFound(session_id)
        if kind is not None or component_id is not None:
            await self.get_session(session_id, kind=kind, component_id=component_id)
        runs = await self._store.session_runs(session_id)
        if owner is not None and any(r.user_id != owner for r in runs):
            raise SessionNotFound(session_id)
        if not await self._store.delete_session(session_id):
            raise SessionNotFound(session_id)
        if self._forget is not None:
            for run in runs:
                self._forget(run.run_id)
