"""``/workflows/ws``: start and follow workflow runs over one WebSocket.

A socket is served by three kinds of task around one bounded outgoing queue::

    client ──frames──▶ receiver ──(pong, errors)──────────────┐
                          │ start-workflow / reconnect          ▼
                          └──▶ follower per run ──frames──▶ outgoing queue ──▶ sender ──▶ client
                                 (RunStream.events)         (ws_max_queued_frames,  (ws_send_timeout)
                                                             stream_max_queued_bytes)

Followers read their run by cursor, like an SSE stream (see :mod:`agentos.streams`), so a run never
waits for a socket: a slow socket only makes its own followers wait for room in its own queue
(bounded in frames and in bytes: a socket that never reads holds about ``stream_max_queued_bytes``,
or one larger frame, plus the frame being sent). A
send that takes longer than ``ws_send_timeout`` closes the socket; the client reconnects and
resumes with its last ``event_index``. Closing a socket cancels its followers, never its runs.

A handshake whose ``Origin`` is neither the server's own (its host and port those of the ``Host``
header) nor one of ``ws_allowed_origins`` is refused (HTTP 403) before anything is served: a page
on another site must not use a browser's credentials for this server. No ``Origin``: not a
browser, served. While the instance drains, a handshake gets HTTP 503 ``shutting_down``: a
socket opened there could neither start a run nor resume another instance's.

Incoming frames are bounded in size (``ws_max_frame_bytes``) and rate (a token bucket of
``ws_max_frames_per_second``); every frame that cannot be served gets an ``error`` frame and the
socket stays usable, except a flood that goes on for a second's worth of frames past the limit,
which is closed with 1008. See PROTOCOL.md (WebSocket details).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from agentos.errors import (
    AgentOSError,
    EventsUnavailable,
    InvalidCursor,
    ShuttingDown,
    StoreUnavailable,
)
from agentos.events import dumps
from agentos.http import forms
from agentos.http.auth import Authenticator, Principal, principal_of
from agentos.http.middleware import POLICY_VIOLATION, error_json
from agentos.runs import RunManager
from agentos.settings import Settings
from agentos.streams import RunStream

__all__ = ["WorkflowSockets"]

logger = logging.getLogger("agentos.ws")

_KIND = "workflows"
#: Close codes: 1000 normal, 1008 policy violation (flood, no authentication in time, too slow).
_POLICY = POLICY_VIOLATION
#: 1012 service restart: this instance drains; reconnect (to another one) and resume.
_RESTART = 1012
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _FrameError(Exception):
    """A client frame that cannot be served; becomes an ``error`` frame."""

    def __init__(self, detail: str, code: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


class _Outbox:
    """The frames waiting for a socket's sender, bounded in count and in size.

    ``put`` waits while the box holds ``max_frames`` frames or a new frame would take it past
    ``max_bytes`` characters of JSON text; an empty box takes any frame, so one larger than the
    bound still goes (alone). Waiting puts go in the order they came, so a large frame waiting
    for an empty box is not passed over by small ones forever.
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max(1, max_frames)
        self.max_bytes = max_bytes
        self.size = 0
        self._frames: collections.deque[str] = collections.deque()
        self._waiting: collections.deque[object] = collections.deque()
        self._changed = asyncio.Condition()

    def _has_room(self, text: str) -> bool:
        if not self._frames:
            return True
        return len(self._frames) < self.max_frames and self.size + len(text) <= self.max_bytes

    async def put(self, text: str) -> None:
        turn = object()
        async with self._changed:
            self._waiting.append(turn)
            try:
                await self._changed.wait_for(
                    lambda: self._waiting[0] is turn and self._has_room(text)
                )
                self._frames.append(text)
                self.size += len(text)
            finally:
                self._waiting.remove(turn)
                self._changed.notify_all()

    async def get(self) -> str:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._frames))
            text = self._frames.popleft()
            self.size -= len(text)
            self._changed.notify_all()
            return text


class WorkflowSockets:
    """The ``/workflows/ws`` endpoint (an ASGI app) on a run manager; it serves every socket.

    Example: ``WebSocketRoute("/workflows/ws", WorkflowSockets(manager, settings))``.
    """

    def __init__(
        self, manager: RunManager, settings: Settings, authenticator: Authenticator | None = None
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.authenticator = authenticator or Authenticator(settings.auth)
        listed = (o.strip().lower().rstrip("/") for o in settings.ws.allowed_origins.split(","))
        self.allowed_origins = frozenset(o for o in listed if o)
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()

    @property
    def followers(self) -> int:
        """Runs followed over the open sockets right now (for metrics; read at scrape time)."""
        return sum(len(connection.followers) for connection in list(self._connections))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        if not self._origin_allowed(headers.get("origin"), headers.get("host")):
            # Closing before accepting: uvicorn answers the handshake with 403.
            await send({"type": "websocket.close", "code": _POLICY, "reason": "origin not allowed"})
            return
        if self.manager.closing:
            # A socket opened here now could neither start a run nor resume another
            # instance's: 503 before the upgrade, which nginx and clients retry elsewhere.
            await self._refuse(scope, receive, send)
            return
        connection = _Connection(
            self.manager,
            self.settings,
            WebSocket(scope, receive, send),
            self.authenticator,
            principal_of(scope),
        )
        self._connections.add(connection)
        try:
            await connection.serve()
        finally:
            self._connections.discard(connection)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        error = ShuttingDown("the server is shutting down; connect to another instance")
        if "websocket.http.response" in scope.get("extensions", {}):
            retry_after = {"Retry-After": str(self.settings.http.retry_after)}
            await websocket.send_denial_response(error_json(error, retry_after))
        else:  # a server without the denial extension answers the handshake with 403
            await websocket.close(_RESTART, error.detail)

    def _origin_allowed(self, origin: str | None, host: str | None) -> bool:
        if origin is None or "*" in self.allowed_origins:
            return True
        origin = origin.strip().lower().rstrip("/")
        return origin in self.allowed_origins or (host is not None and _same_origin(origin, host))


def _same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names the host and port the request was sent to."""
    try:
        sent_from = urlsplit(origin)
        sent_to = urlsplit("//" + host.strip().lower())
        default = _DEFAULT_PORTS.get(sent_from.scheme)
        return (
            default is not None
            and sent_from.hostname is not None
            and not sent_from.username
            and not sent_from.path
            and sent_from.hostname == sent_to.hostname
            and (sent_from.port or default) == (sent_to.port or default)
        )
    except ValueError:  # a port that is not a number or out of range
        return False


class _Connection:
    """One socket: its authentication state, rate limit, followed runs and outgoing queue."""

    def __init__(
        self,
        manager: RunManager,
        settings: Settings,
        websocket: WebSocket,
        authenticator: Authenticator | None = None,
        principal: Principal | None = None,
    ) -> None:
        self.manager = manager
        self.settings = settings.ws
        self.websocket = websocket
        self.outgoing = _Outbox(self.settings.max_queued_frames, settings.streams.max_queued_bytes)
        self.followers: dict[str, asyncio.Task[None]] = {}
        self._receiver: asyncio.Task[None] | None = None
        self.close_code = 1000
        self.close_reason = ""
        self.authenticator = authenticator or Authenticator(settings.auth)
        # From an Authorization header on the upgrade (checked by the security middleware),
        # else set by the in-band authenticate frame; anyone is the operator on an open server.
        if principal is None and not self.authenticator.enabled:
            principal = Principal.operator_key()
        self.principal = principal
        rate = self.settings.max_frames_per_second
        self._tokens = rate
        self._refilled = time.monotonic()
        self._rejected = 0

    async def serve(self) -> None:
        await self.websocket.accept()
        await self.outgoing.put(
            dumps({"event": "connected", "requires_auth": not self.authenticated})
        )
        sender = asyncio.create_task(self._send_loop(), name="agentos-ws-sender")
        receiver = asyncio.create_task(self._receive_loop(), name="agentos-ws-receiver")
        self._receiver = receiver
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = [sender, receiver, *self.followers.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(
                WebSocketDisconnect, WebSocketDisconnected, RuntimeError, OSError
            ):
                await self.websocket.close(self.close_code, self.close_reason)

    # -- outgoing ------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        timeout = self.settings.send_timeout or None
        while True:
            text = await self.outgoing.get()
            try:
                async with asyncio.timeout(timeout):
                    await self.websocket.send_text(text)
            except TimeoutError:
                self._close(_POLICY, "the client reads too slowly")
                return
            except (WebSocketDisconnect, WebSocketDisconnected, RuntimeError, OSError):
                return

    def _close(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason

    async def _error(self, detail: str, code: str, frame: Any = None, **extra: Any) -> None:
        body: dict[str, Any] = {"event": "error", "error": detail, "code": code}
        if isinstance(frame, dict):
            for name in ("action", "run_id"):
                if isinstance(frame.get(name), str):
                    body[name] = frame[name]
        body.update(extra)
        await self.outgoing.put(dumps(body))

    # -- incoming ------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.auth_timeout
        idle = self.settings.idle_timeout or None
        while True:
            try:
                if not self.authenticated:
                    wait_until: float | None = deadline
                else:
                    wait_until = None if idle is None else loop.time() + idle
                async with asyncio.timeout_at(wait_until):
                    message = await self.websocket.receive()
            except TimeoutError:
                if not self.authenticated:
                    self._close(_POLICY, "not authenticated in time")
                    return
                if self.followers:
                    continue  # quiet, but following runs: not idle
                # Neither a frame nor a followed run for ws_idle_timeout: the socket holds a
                # connection slot for nothing (agentos serve caps connections).
                self._close(1000, "idle")
                return
            if message["type"] == "websocket.disconnect":
                return
            if not self._take_token():
                if self._rejected > self.settings.max_frames_per_second:
                    self._close(_POLICY, "too many frames")
                    return
                await self._error("too many frames; slow down", "rate_limited")
                continue
            try:
                await self._handle(message)
            except _FrameError as exc:
                await self._error(exc.detail, exc.code)
            except Exception:
                # Like a 500 over HTTP: logged, and the client learns only that it failed. The
                # socket stays usable (an escaped error used to close it without a word).
                logger.exception("a WebSocket frame could not be served")
                await self._error("internal error", "internal_error")

    def _take_token(self) -> bool:
        """Token bucket: ``ws_max_frames_per_second`` per second, as big a burst."""
        rate = self.settings.max_frames_per_second
        if not rate:
            return True
        now = time.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._rejected = 0
            return True
        self._rejected += 1
        return False

    async def _handle(self, message: Message) -> None:
        text = message.get("text")
        if text is None:
            raise _FrameError("send JSON text frames, not binary ones", "invalid_frame")
        limit = self.settings.max_frame_bytes
        if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
            raise _FrameError(f"the frame is over the limit of {limit} bytes", "frame_too_large")
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            raise _FrameError("the frame is not valid JSON", "invalid_json") from None
        if not isinstance(frame, dict):
            raise _FrameError("the frame must be a JSON object", "invalid_frame")
        action = frame.get("action")
        if action == "authenticate":
            await self._authenticate(frame)
        elif not isinstance(action, str) or action not in ("ping", "start-workflow", "reconnect"):
            await self._error(f"unknown action {action!r}", "unknown_action", frame)
        elif not self.authenticated:
            # Nothing but authenticate is served before it, not even ping.
            await self.outgoing.put(
                dumps({"event": "auth_error", "error": "authenticate first", "action": action})
            )
        elif action == "ping":
            await self.outgoing.put(dumps({"event": "pong"}))
        else:
            try:
                if action == "start-workflow":
                    await self._start(frame)
                else:
                    await self._reconnect(frame)
            except (AgentOSError, _FrameError) as exc:
                await self._error(exc.detail, exc.code, frame)

    @property
    def authenticated(self) -> bool:
        return self.principal is not None

    async def _authenticate(self, frame: dict[str, Any]) -> None:
        """Authenticate, or (a refreshed token of the same user) renew the credential."""
        current = self.principal
        if current is None or current.expires_at is not None:
            token = frame.get("token")
            try:
                fresh = await self.authenticator.authenticate(
                    token if isinstance(token, str) else ""
                )
            except AgentOSError as exc:
                if current is None or current.expired(time.time()):
                    await self.outgoing.put(
                        dumps({"event": "auth_error", "error": exc.detail, "code": exc.code})
                    )
                    return
                fresh = current  # a bad refresh does not undo a credential still valid
            if current is not None and fresh.user_id != current.user_id:
                await self.outgoing.put(
                    dumps(
                        {
                            "event": "auth_error",
                            "error": "a socket stays with the user it authenticated as",
                            "code": "not_authorized",
                        }
                    )
                )
                return
            self.principal = fresh
        await self.outgoing.put(dumps({"event": "authenticated"}))

    async def _start(self, frame: dict[str, Any]) -> None:
        workflow_id = forms.text(frame, "workflow_id", required=True)
        assert workflow_id is not None
        message = forms.message(frame)
        run_id = forms.text(frame, "run_id")
        caller = self._caller("runs:write")
        user_id = caller.user_for_new(forms.text(frame, "user_id"))
        component = self.manager.component(_KIND, workflow_id)
        self._check_room(run_id)
        options = forms.run_options(frame)
        _, stream = await self.manager.start_and_follow(
            component,
            message,
            session_id=forms.text(frame, "session_id"),
            user_id=user_id,
            run_id=run_id,
            options=options,
        )
        self._follow(stream)

    async def _reconnect(self, frame: dict[str, Any]) -> None:
        owner = self._caller("runs:read").owner
        run_id = forms.text(frame, "run_id", required=True)
        assert run_id is not None
        workflow_id = forms.text(frame, "workflow_id")
        session_id = forms.text(frame, "session_id")
        raw = frame.get("last_event_index")
        if isinstance(raw, str):  # a frame is JSON: the cursor is a JSON integer
            raise InvalidCursor("last_event_index must be an integer", run_id)
        cursor = forms.cursor(raw)
        self._check_room(run_id)
        stream = await self.manager.open_stream(
            run_id,
            cursor,
            kind=_KIND,
            component_id=workflow_id,
            session_id=session_id,
            owner=owner,
        )
        if stream is None:
            # The cursor is at the terminal event (SSE answers 204): say the run has ended and
            # that nothing follows.
            meta = await self.manager.replay_at_end(run_id, cursor + 1, owner=owner)
            await self.outgoing.put(meta.data)
            return
        self._follow(stream)

    def _caller(self, scope: str) -> Principal:
        assert self.principal is not None  # _handle serves these actions only once authenticated
        if self.principal.expired(time.time()):
            raise _FrameError(
                "the token has expired: authenticate again with a fresh one", "token_expired"
            )
        return self.principal.require(scope)

    def _check_room(self, run_id: str | None) -> None:
        if run_id is not None and run_id in self.followers:
            raise _FrameError(f"this socket already follows run {run_id!r}", "already_following")
        limit = self.settings.max_runs_per_socket
        if len(self.followers) >= limit:
            raise _FrameError(f"this socket already follows {limit} runs", "too_many_runs")

    # -- followers -----------------------------------------------------------------------------

    def _follow(self, stream: RunStream) -> None:
        run_id = stream.run_id
        task = asyncio.create_task(self._forward(stream), name=f"agentos-ws-follow-{run_id}")
        self.followers[run_id] = task
        task.add_done_callback(lambda _: self.followers.pop(run_id, None))

    async def _forward(self, stream: RunStream) -> None:
        try:
            async with contextlib.aclosing(stream.events()) as items:
                async for item in items:
                    await self.outgoing.put(item.data)
        except (EventsUnavailable, StoreUnavailable) as exc:
            await self._error(exc.detail, exc.code, run_id=stream.run_id)
        except Exception:
            logger.exception("following run %s over a WebSocket failed", stream.run_id)
            await self._error("internal error", "internal_error", run_id=stream.run_id)
        else:
            if not stream.terminal_sent and self.manager.closing:
                # A draining instance stopped tailing another instance's run: the client must
                # resume it elsewhere, so the socket closes now (1012), not once this
                # instance's own runs have ended.
                self._close(_RESTART, "the server is shutting down; reconnect")
                if self._receiver is not None:
                    self._receiver.cancel()
        finally:
            stream.release()
