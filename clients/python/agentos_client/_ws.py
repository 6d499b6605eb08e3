"""A WebSocket client for ``/workflows/ws`` that reconnects and resumes by itself.

One :class:`WorkflowSocket` holds one WebSocket at a time and follows any number of runs on it::

    async with WorkflowSocket("http://127.0.0.1:7777", security_key="...") as ws:
        run = await ws.start_workflow("echo-workflow", "hello")
        async for event in ws.follow(run.run_id):
            print(event["event_index"], event["event"])

A reader task routes incoming frames by ``run_id`` into one queue per followed run. When the socket
drops, every follower finds a marker in its queue after the frames that arrived before the drop;
the first to need the socket opens a new one (bounded attempts, exponential backoff), and each
follower sends ``reconnect`` with the last ``event_index`` it yielded. Events at or below that index
are skipped, so the caller sees every event exactly once and in order, up to the terminal one.

``start_workflow`` picks the run id itself (unless given), so a start whose answer was lost can be
resumed by id, or sent again when the server never saw it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from ._auth import BearerAuth, TokenProvider
from ._backoff import Backoff
from ._errors import ClientError

__all__ = ["WorkflowRun", "WorkflowSocket", "WorkflowSocketError"]

_TERMINAL = frozenset({"WorkflowCompleted", "WorkflowError", "WorkflowCancelled"})
_CONTROL_BACKLOG = 100


class WorkflowSocketError(ClientError):
    """The server refused something (``code`` says what), or the socket could not be kept open."""

    def __init__(self, message: str, *, code: str | None = None, run_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.run_id = run_id


@dataclass(frozen=True)
class WorkflowRun:
    """A run started over the socket."""

    run_id: str
    session_id: str
    workflow_id: str


@dataclass(eq=False)
class _Dropped:
    """Queued after the last frame a connection delivered."""

    generation: int


@dataclass(eq=False)
class _Follow:
    run_id: str
    yielded: int = -1
    queue: asyncio.Queue[dict[str, Any] | _Dropped] = field(default_factory=asyncio.Queue)
    pending: deque[dict[str, Any]] = field(default_factory=deque)
    generation: int = -1  # the connection this run is subscribed on
    start_frame: dict[str, Any] | None = None
    start_sent: bool = False
    confirmed: bool = False
    iterating: bool = False


class WorkflowSocket:
    """Start workflow runs and follow their events over one self-healing WebSocket.

    ``max_attempts`` bounds the connection attempts in a row without a frame received in between;
    waits between them grow from ``backoff`` to ``max_backoff`` seconds.
    """

    def __init__(
        self,
        base_url: str,
        *,
        security_key: str | None = None,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        max_attempts: int = 5,
        backoff: float = 0.25,
        max_backoff: float = 5.0,
        open_timeout: float = 10.0,
    ) -> None:
        url = base_url.rstrip("/")
        if url.startswith("http"):
            url = "ws" + url[4:]
        self.url = url + "/workflows/ws"
        self.security_key = security_key
        self._auth = BearerAuth(token or security_key or None, token_provider)
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._backoff_rule = Backoff(backoff, max_backoff)
        self.open_timeout = open_timeout
        self._conn: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._generation = 0
        self._runs: dict[str, _Follow] = {}
        self._control: asyncio.Queue[dict[str, Any] | _Dropped] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> Self:
        await self._ensure_connected()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket; runs on the server go on. Using the object afterwards raises."""
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._conn is not None:
            await self._conn.close()

    # -- the API -------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Send ``ping`` and wait for ``pong`` (reconnecting if needed)."""
        for attempt in range(1, self.max_attempts + 1):
            await self._ensure_connected()
            generation = self._generation
            if await self._send({"action": "ping"}):
                while True:
                    item = await self._control.get()
                    if isinstance(item, _Dropped):
                        if item.generation == generation:
                            break
                    elif item.get("event") == "pong":
                        return
            await self._pause(attempt)
        raise WorkflowSocketError("the socket keeps dropping", code="connection_lost")

    async def start_workflow(
        self,
        workflow_id: str,
        message: str,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        run_id: str | None = None,
    ) -> WorkflowRun:
        """Start a run and wait for its ``WorkflowStarted``; then :meth:`follow` it."""
        run_id = run_id or str(uuid.uuid4())
        if run_id in self._runs:
            raise ValueError(f"run {run_id!r} is already followed on this socket")
        frame: dict[str, Any] = {
            "action": "start-workflow",
            "workflow_id": workflow_id,
            "message": message,
            "run_id": run_id,
        }
        if session_id is not None:
            frame["session_id"] = session_id
        if user_id is not None:
            frame["user_id"] = user_id
        follow = _Follow(run_id, start_frame=frame)
        self._runs[run_id] = follow
        try:
            while True:
                item = await self._next(follow)
                if "event_index" in item:
                    follow.confirmed = True
                    follow.pending.append(item)
                    return WorkflowRun(run_id, str(item.get("session_id", "")), workflow_id)
                if item.get("event") == "error":
                    raise _refused(item, run_id)
        except BaseException:
            self._runs.pop(run_id, None)
            raise

    async def follow(
        self, run_id: str, last_event_index: int = -1
    ) -> AsyncIterator[dict[str, Any]]:
        """The run's events after ``last_event_index`` (each a dict with ``event_index``), up to and
        including the terminal one, resuming over new sockets as needed."""
        follow = self._runs.get(run_id)
        if follow is None:
            follow = _Follow(run_id, yielded=last_event_index, confirmed=True)
            self._runs[run_id] = follow
        elif follow.iterating:
            raise ValueError(f"run {run_id!r} is already followed on this socket")
        follow.iterating = True
        try:
            while True:
                item = follow.pending.popleft() if follow.pending else await self._next(follow)
                if "event_index" in item:
                    index = item["event_index"]
                    if index <= follow.yielded:
                        continue  # sent again after a reconnect
                    if index != follow.yielded + 1:
                        raise WorkflowSocketError(
                            f"event {follow.yielded + 1} is missing", code="gap", run_id=run_id
                        )
                    follow.yielded = index
                    yield item
                    if item.get("event") in _TERMINAL:
                        return
                elif item.get("event") == "error":
                    raise _refused(item, run_id)
                elif (
                    item.get("event") == "replay" and item.get("total_events") == follow.yielded + 1
                ):
                    return  # the run had already ended at our cursor: nothing follows
        finally:
            self._runs.pop(run_id, None)

    # -- connection ----------------------------------------------------------------------------

    async def _next(self, follow: _Follow) -> dict[str, Any]:
        """The next frame for this run, (re)subscribing on a new socket after a drop."""
        attempt = 0
        while True:
            if follow.generation != self._generation or not self._open():
                await self._ensure_connected()
                if not await self._subscribe(follow):
                    attempt += 1
                    await self._pause(attempt)
                    continue
            item = await follow.queue.get()
            if isinstance(item, _Dropped):
                if item.generation == follow.generation:
                    follow.generation = -1
                    attempt += 1
                    await self._pause(attempt)
                continue
            attempt = 0
            if item.get("event") == "error" and not follow.confirmed and follow.start_frame:
                # Our start may have been lost with the old socket, or raced our reconnect.
                if item.get("code") == "run_not_found" and item.get("action") == "reconnect":
                    await self._send(follow.start_frame)
                    continue
                if item.get("code") == "run_exists" and item.get("action") == "start-workflow":
                    await self._send({"action": "reconnect", "run_id": follow.run_id})
                    continue
            return item

    async def _subscribe(self, follow: _Follow) -> bool:
        if follow.start_frame is not None and not follow.start_sent:
            frame = follow.start_frame
            follow.start_sent = True
        else:
            frame = {
                "action": "reconnect",
                "run_id": follow.run_id,
                "last_event_index": follow.yielded,
            }
        follow.generation = self._generation
        if await self._send(frame):
            return True
        follow.generation = -1
        return False

    async def _pause(self, attempt: int) -> None:
        if attempt >= self.max_attempts:
            raise WorkflowSocketError(
                f"the socket dropped {attempt} times in a row", code="connection_lost"
            )
        await asyncio.sleep(self._backoff_rule.delay(attempt))

    def _open(self) -> bool:
        return (
            self._conn is not None
            and self._conn.state is State.OPEN
            and self._reader is not None
            and not self._reader.done()
        )

    async def _send(self, frame: dict[str, Any]) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            await conn.send(json.dumps(frame))
        except ConnectionClosed:
            return False
        return True

    async def _ensure_connected(self) -> None:
        if self._closed:
            raise WorkflowSocketError("the WorkflowSocket is closed", code="closed")
        async with self._lock:
            if self._open():
                return
            if self._reader is not None:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
            for attempt in range(1, self.max_attempts + 1):
                try:
                    conn = await self._open_socket()
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                    if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
                        raise WorkflowSocketError(
                            "the server refused the connection", code="auth_error"
                        ) from exc
                    if attempt == self.max_attempts:
                        raise WorkflowSocketError(
                            f"could not connect to {self.url}", code="connection_lost"
                        ) from exc
                    await asyncio.sleep(self._backoff_rule.delay(attempt))
                    continue
                self._generation += 1
                self._conn = conn
                self._reader = asyncio.create_task(self._read(conn, self._generation))
                return

    async def _open_socket(self) -> ClientConnection:
        conn = await connect(self.url, open_timeout=self.open_timeout)
        try:
            async with asyncio.timeout(self.open_timeout):
                greeting = json.loads(await conn.recv())
                if greeting.get("requires_auth"):
                    await self._authenticate(conn)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _authenticate(self, conn: ClientConnection) -> None:
        """The in-band ``authenticate`` frame; with a token provider, one retry with a new token."""
        token = await self._auth.current()
        for attempt in (1, 2):
            if token is None:
                raise WorkflowSocketError("the server needs a token", code="auth_error")
            await conn.send(json.dumps({"action": "authenticate", "token": token}))
            answer = json.loads(await conn.recv())
            if answer.get("event") == "authenticated":
                return
            if attempt == 1 and self._auth.provider is not None:
                token = await self._auth.fresh()
                continue
            raise WorkflowSocketError(
                str(answer.get("error", "authentication failed")), code="auth_error"
            )

    async def _read(self, conn: ClientConnection, generation: int) -> None:
        try:
            async for text in conn:
                try:
                    frame = json.loads(text)
                except (ValueError, RecursionError):  # RecursionError: nested too deep
                    continue
                if not isinstance(frame, dict):
                    continue
                run_id = frame.get("run_id")
                follow = self._runs.get(run_id) if isinstance(run_id, str) else None
                if follow is not None:
                    follow.queue.put_nowait(frame)
                elif self._control.qsize() < _CONTROL_BACKLOG:
                    self._control.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            dropped = _Dropped(generation)
            for follow in self._runs.values():
                follow.queue.put_nowait(dropped)
            self._control.put_nowait(dropped)


def _refused(frame: dict[str, Any], run_id: str) -> WorkflowSocketError:
    return WorkflowSocketError(
        str(frame.get("error", "error")), code=frame.get("code"), run_id=frame.get("run_id", run_id)
    )
