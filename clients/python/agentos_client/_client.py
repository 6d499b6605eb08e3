"""The HTTP clients: :class:`AsyncClient` and its blocking twin :class:`Client`.

``arun`` has the four modes of the in-process ``agent.arun`` with the same spelling, so moving
code between local and remote is a one-line change::

    async with AsyncClient("http://127.0.0.1:7777") as client:
        run = await client.arun("agents", "echo", "hello")                  # JSON, waits
        run = await client.arun("agents", "echo", "hello", background=True) # 202, PENDING
        async for event in client.arun("agents", "echo", "hello", stream=True, background=True):
            print(event.event_index, event.event, event.content)           # resumable stream

The blocking :class:`Client` drives one :class:`AsyncClient` on a private event loop in a
daemon thread, so both share a single implementation of the resume logic.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import httpx

from ._auth import BearerAuth, TokenProvider
from ._backoff import Backoff
from ._errors import (
    APIStatusError,
    ClientClosed,
    ClientError,
    RunFailed,
    TransportError,
    WaitTimeout,
)
from ._models import Event, Run, RunStatus
from ._stream import RunStream

__all__ = ["AsyncClient", "Client", "SyncRunStream"]

T = TypeVar("T")

# Polls of the run object after its stream has ended, while the status catches up.
_STATUS_POLLS = 20
_STATUS_POLL_BACKOFF = Backoff(0.02, 0.5)


class AsyncClient:
    """An asyncio client for an agentos server.

    Settings (all keyword arguments, with their defaults):

    - ``timeout=30.0``: seconds for connect, write and for reading ordinary answers.
    - ``read_timeout=45.0``: seconds a stream may stay silent (no event, no ``: ping``) before
      it counts as lost; the server pings every 15 s by default.
    - ``max_reconnects=10``: reconnect attempts in a row before a stream raises
      :class:`TransportError`; the count starts over after each event.
    - ``backoff_initial=0.25`` and ``backoff_max=5.0``: the wait before attempt ``n`` is
      ``min(backoff_max, backoff_initial * 2**(n-1))``, scaled by a random 50-100 %.
    - ``security_key``: sent as ``Authorization: Bearer <key>`` on every request.
    - ``token``: a JWT from your identity provider, sent the same way (instead of the key).
    - ``token_provider``: a callable (plain or async) returning a fresh token; called when
      there is no token yet, and again once per request answered 401 (an expired JWT), which
      is then sent once more.
    - ``transport``: an ``httpx.AsyncBaseTransport``, for tests.

    Use it as an async context manager, or call :meth:`aclose` when done.
    """

    def __init__(
        self,
        base_url: str,
        security_key: str | None = None,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        timeout: float = 30.0,
        read_timeout: float = 45.0,
        max_reconnects: int = 10,
        backoff_initial: float = 0.25,
        backoff_max: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_reconnects < 0:
            raise ValueError("max_reconnects must be >= 0")
        self._backoff_rule = Backoff(backoff_initial, backoff_max)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.max_reconnects = max_reconnects
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        headers = {"Accept": "application/json"}
        credential = token or security_key or None
        self._auth = (
            BearerAuth(credential, token_provider)
            if credential is not None or token_provider is not None
            else None
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            auth=self._auth,
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Closing twice is harmless; using the client after is not."""
        self._closed = True
        await self._http.aclose()

    @property
    def is_closed(self) -> bool:
        return self._closed

    # -- runs ----------------------------------------------------------------------------

    @overload
    def arun(
        self,
        kind: str,
        id: str,
        message: str,
        *,
        stream: Literal[True],
        background: bool = ...,
        session_id: str | None = ...,
        user_id: str | None = ...,
        run_id: str | None = ...,
        meta: bool = ...,
        retry_policy: Mapping[str, Any] | None = ...,
        timeout_seconds: float | None = ...,
        multitask: str | None = ...,
        idempotency_key: str | None = ...,
        wait_timeout_seconds: float | None = ...,
    ) -> RunStream: ...

    @overload
    def arun(
        self,
        kind: str,
        id: str,
        message: str,
        *,
        stream: Literal[False] = ...,
        background: bool = ...,
        session_id: str | None = ...,
        user_id: str | None = ...,
        run_id: str | None = ...,
        meta: bool = ...,
        retry_policy: Mapping[str, Any] | None = ...,
        timeout_seconds: float | None = ...,
        multitask: str | None = ...,
        idempotency_key: str | None = ...,
        wait_timeout_seconds: float | None = ...,
    ) -> Coroutine[Any, Any, Run]: ...

    def arun(
        self,
        kind: str,
        id: str,
        message: str,
        *,
        stream: bool = False,
        background: bool = False,
        session_id: str | None = None,
        user_id: str | None = None,
        run_id: str | None = None,
        meta: bool = False,
        retry_policy: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        multitask: str | None = None,
        idempotency_key: str | None = None,
        wait_timeout_seconds: float | None = None,
    ) -> RunStream | Coroutine[Any, Any, Run]:
        """Start a run of ``kind`` (``agents``, ``teams``, ``workflows``) component ``id``.

        ============  ==========  ============================================================
        stream        background  result
        ============  ==========  ============================================================
        False         False       ``await`` it: the final :class:`Run` (raises
                                  :class:`RunFailed` if the run ends in ERROR, and
                                  :class:`WaitTimeout` when the server's wait ends first)
        False         True        ``await`` it: a :class:`Run` with status PENDING
        True          False       a :class:`RunStream`; the run is cancelled if it drops
        True          True        a :class:`RunStream` that resumes after any drop
        ============  ==========  ============================================================

        ``meta=True`` also yields the meta events (``catch_up``, ``replay`` ...).

        Run options (PROTOCOL.md): ``retry_policy`` (``{"max_attempts": 3, "delay": 1, ...}``),
        ``timeout_seconds`` per attempt, ``multitask`` (``parallel``, ``reject``, ``enqueue``,
        ``interrupt``), and for a waiting create ``wait_timeout_seconds`` (capped by the
        server's ``max_wait_seconds``). With ``idempotency_key`` (1 to 200 printable ASCII
        characters), the server answers a repeat of this create with the same run; a waiting or
        background create whose answer is lost (connection error, 502, 503) is then sent again
        with it, as a background stream's create already is.
        """
        self._check_open()
        body: dict[str, Any] = {"message": message, "stream": stream, "background": background}
        if stream and background and run_id is None and idempotency_key is None:
            # Choosing the id here lets a retried create recognise its own run (409). With a
            # key, a retried create is answered with its run anyway, and the same key must
            # come with the same request (a new id each time would be another request).
            run_id = str(uuid.uuid4())
        for name, value in (
            ("session_id", session_id),
            ("user_id", user_id),
            ("run_id", run_id),
            ("retry_policy", None if retry_policy is None else dict(retry_policy)),
            ("timeout_seconds", timeout_seconds),
            ("multitask", multitask),
            ("wait_timeout_seconds", None if stream or background else wait_timeout_seconds),
        ):
            if value is not None:
                body[name] = value
        headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
        if stream:
            return RunStream(
                self,
                kind,
                id,
                run_id=run_id,
                create=body,
                create_headers=headers,
                session_id=session_id,
                meta=meta,
                resumable=background,
            )
        return self._create_run(kind, id, body, wait=not background, headers=headers)

    def resume(
        self,
        kind: str,
        id: str,
        run_id: str,
        last_event_index: int = -1,
        *,
        session_id: str | None = None,
        meta: bool = False,
    ) -> RunStream:
        """Follow a run's events after ``last_event_index`` (-1: from the start).

        The result reconnects like a background stream. Use it after a process restart, with
        the last index you handled::

            async for event in client.resume("agents", "echo", run_id, last_event_index=41):
                ...
        """
        self._check_open()
        if last_event_index < -1:
            raise ValueError("last_event_index must be >= -1")
        return RunStream(
            self,
            kind,
            id,
            run_id=run_id,
            session_id=session_id,
            last_event_index=last_event_index,
            meta=meta,
        )

    async def health(self) -> dict[str, Any]:
        """``GET /health``: the JSON body, also when the server answers 503 (``down``,
        ``draining``); look at its ``status`` (``running``, ``degraded``, ``down``,
        ``draining``) and its ``checks``."""
        self._check_open()
        try:
            response = await self._http.get("/health")
        except httpx.TransportError as exc:
            raise TransportError(f"GET /health: {exc!r}") from exc
        if response.status_code not in (200, 503):
            raise self._status_error(response, run_id=None)
        return _as_object(_decode(response))

    async def list_components(self, kind: str) -> list[dict[str, Any]]:
        """The components of ``kind`` the server serves (``GET /{kind}``), as JSON objects."""
        data = await self._json("GET", f"/{kind}")
        if not isinstance(data, list):
            raise ClientError("the component list is not a JSON list")
        return [_as_object(item) for item in data]

    async def get_component(self, kind: str, id: str) -> dict[str, Any]:
        """One component (``GET /{kind}/{id}``): description, version, tags, registered_at,
        paused, and stats of its runs."""
        return _as_object(await self._json("GET", f"/{kind}/{id}"))

    async def pause_component(self, kind: str, id: str) -> dict[str, Any]:
        """Pause a component (``POST /{kind}/{id}/pause``; needs the operator key or ``admin``):
        new runs get 409 ``component_paused``, runs in flight finish. Returns the component."""
        return _as_object(await self._json("POST", f"/{kind}/{id}/pause"))

    async def resume_component(self, kind: str, id: str) -> dict[str, Any]:
        """Let a paused component take runs again (``POST /{kind}/{id}/resume``)."""
        return _as_object(await self._json("POST", f"/{kind}/{id}/resume"))

    async def get_run(self, kind: str, id: str, run_id: str) -> Run:
        """The run object; :class:`APIStatusError` with ``status_code == 404`` if unknown."""
        data = await self._json("GET", f"/{kind}/{id}/runs/{run_id}", run_id=run_id)
        return Run.from_json(_as_object(data))

    async def attempts(self, kind: str, id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's attempts, oldest first: ``{"attempt", "instance_id", "started_at",
        "ended_at", "outcome", "error"}`` each (``outcome``: why a retried attempt ended, or
        the run's final status; None while it runs). 404 as :meth:`get_run`."""
        data = await self._json("GET", f"/{kind}/{id}/runs/{run_id}/attempts", run_id=run_id)
        if not isinstance(data, list):
            raise ClientError("the attempt list is not a JSON list")
        return [_as_object(item) for item in data]

    async def list_runs(
        self,
        kind: str,
        id: str,
        *,
        session_id: str | None = None,
        status: RunStatus | str | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """Runs of one component, newest first, optionally filtered.

        Listed runs carry ``input``, ``content`` and ``error`` cut to the server's
        ``list_max_field_chars`` (``run.data["truncated"]`` says so); :meth:`get_run` has them
        whole. A list the server sends in pages (``X-Next-Offset``) is read to ``limit`` runs.
        """
        params: dict[str, Any] = {}
        if session_id is not None:
            params["session_id"] = session_id
        if status is not None:
            params["status"] = RunStatus(str.upper(status)).value
        if limit is not None:
            params["limit"] = limit
        runs: list[Run] = []
        while True:
            response = await self._send("GET", f"/{kind}/{id}/runs", params=params)
            data = _decode(response)
            if isinstance(data, dict):
                data = data.get("runs", data.get("data"))
            if not isinstance(data, list):
                raise ClientError("the run list is not a JSON list")
            runs.extend(Run.from_json(_as_object(item)) for item in data)
            next_offset = response.headers.get("x-next-offset")
            wanted = limit if limit is not None else 100
            if not data or next_offset is None or len(runs) >= wanted:
                return runs
            params["offset"] = next_offset
            params["limit"] = wanted - len(runs)

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        kind: str | None = None,
        component_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Sessions ``{"session_id","kind","component_id","user_id","run_count",...}``, most
        recently active first (one entry per session and component)."""
        params: dict[str, Any] = {}
        for name, value in (
            ("user_id", user_id),
            ("kind", kind),
            ("component_id", component_id),
            ("limit", limit),
        ):
            if value is not None:
                params[name] = value
        data = await self._json("GET", "/sessions", params=params)
        if not isinstance(data, list):
            raise ClientError("the session list is not a JSON list")
        return [_as_object(item) for item in data]

    async def get_session(self, session_id: str, *, limit: int | None = None) -> dict[str, Any]:
        """``{"session_id","runs","messages"}``: the session's runs, oldest first, and their
        messages; :class:`APIStatusError` 404 if unknown.

        Every run of the session, or only its newest ``limit``. A session the server sends in
        pages (``X-Next-Offset``, newest runs first) is read page by page; a run that shows up
        twice (runs started meanwhile shift the pages) is kept once.
        """
        if limit is not None and limit < 1:
            raise ValueError("limit must be 1 or more")
        pages: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
        seen: set[str] = set()
        params: dict[str, Any] = {}
        found = session_id
        while True:
            response = await self._send("GET", f"/sessions/{session_id}", params=params)
            page = _as_object(_decode(response))
            runs, messages = page.get("runs"), page.get("messages")
            if not isinstance(runs, list) or not isinstance(messages, list):
                raise ClientError("a session has no runs and messages lists")
            found = str(page.get("session_id", found))
            fresh = [r for r in map(_as_object, runs) if r.get("run_id") not in seen]
            ids = {str(r.get("run_id")) for r in fresh}
            pages.append((fresh, [m for m in map(_as_object, messages) if m.get("run_id") in ids]))
            seen |= ids
            next_offset = response.headers.get("x-next-offset")
            if not runs or next_offset is None or (limit is not None and len(seen) >= limit):
                break
            params["offset"] = next_offset
        all_runs = [run for page_runs, _ in reversed(pages) for run in page_runs]
        all_messages = [m for _, page_messages in reversed(pages) for m in page_messages]
        if limit is not None and len(all_runs) > limit:
            all_runs = all_runs[-limit:]
            kept = {run.get("run_id") for run in all_runs}
            all_messages = [m for m in all_messages if m.get("run_id") in kept]
        return {"session_id": found, "runs": all_runs, "messages": all_messages}

    async def delete_session(self, session_id: str) -> None:
        """Delete a session with its runs, events and messages (409 while a run is going)."""
        await self._send("DELETE", f"/sessions/{session_id}")

    # -- tasks ---------------------------------------------------------------------------

    async def create_task(
        self,
        kind: str,
        id: str,
        message: str,
        *,
        schedule: Mapping[str, Any] | str | None = None,
        task_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Create a task that starts runs of ``kind`` component ``id`` with ``message``
        (``POST /tasks``); returns the task object. ``schedule``: ``{"kind": "cron", "cron":
        "0 9 * * 1-5", "timezone": "Europe/Berlin"}``, ``{"kind": "interval",
        "every_seconds": 60}``, ``{"kind": "once", "at": "2030-01-01T09:00:00Z"}`` or None
        (manual). Other fields (``overlap_policy``, ``retry_policy``, ``timeout_seconds``,
        ``session_policy``, ``catchup``, ``description``, ``tags`` ...) as PROTOCOL.md lists
        them; 422 names a bad one::

            task = await client.create_task(
                "agents", "reporter", "the nightly report",
                schedule={"kind": "cron", "cron": "0 2 * * *", "timezone": "Europe/Berlin"},
            )
        """
        body: dict[str, Any] = {"kind": kind, "component_id": id, "message": message, **fields}
        if schedule is not None:
            body["schedule"] = schedule
        if task_id is not None:
            body["task_id"] = task_id
        return _as_object(await self._json("POST", "/tasks", json=body))

    async def list_tasks(
        self,
        *,
        kind: str | None = None,
        component_id: str | None = None,
        active: bool | None = None,
        tag: str | None = None,
        user_id: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[dict[str, Any]]:
        """Tasks, oldest first (``GET /tasks``), filtered by component, active or paused, tag
        or owner."""
        params: dict[str, Any] = {}
        for name, value in (
            ("kind", kind),
            ("component_id", component_id),
            ("tag", tag),
            ("user_id", user_id),
            ("limit", limit),
            ("offset", offset),
        ):
            if value is not None:
                params[name] = value
        if active is not None:
            params["active"] = "true" if active else "false"
        data = await self._json("GET", "/tasks", params=params)
        if not isinstance(data, list):
            raise ClientError("the task list is not a JSON list")
        return [_as_object(item) for item in data]

    async def get_task(self, task_id: str) -> dict[str, Any]:
        """One task; :class:`APIStatusError` 404 (``task_not_found``) if unknown."""
        return _as_object(await self._json("GET", f"/tasks/{task_id}"))

    async def update_task(self, task_id: str, **fields: Any) -> dict[str, Any]:
        """Change some fields of a task (``PATCH /tasks/{task_id}``); a new ``schedule``
        starts from now. Returns the task."""
        return _as_object(await self._json("PATCH", f"/tasks/{task_id}", json=fields))

    async def delete_task(self, task_id: str) -> None:
        """Delete a task; its runs stay (one in flight runs to its end)."""
        await self._send("DELETE", f"/tasks/{task_id}")

    async def pause_task(self, task_id: str) -> dict[str, Any]:
        """Stop firing a task (its running runs go on); returns the task."""
        return _as_object(await self._json("POST", f"/tasks/{task_id}/pause"))

    async def resume_task(self, task_id: str) -> dict[str, Any]:
        """Fire a paused task again from its next occurrence (what it missed meanwhile follows
        its ``catchup``); returns the task."""
        return _as_object(await self._json("POST", f"/tasks/{task_id}/resume"))

    async def trigger_task(
        self, task_id: str, *, wait: bool = False, wait_seconds: float = 60.0
    ) -> Run:
        """Start a run of the task now (``POST /tasks/{task_id}/trigger``) and return it.

        With ``wait=True`` the server answers once the run has ended, within ``wait_seconds``
        (whole seconds, at most the server's ``task_wait_timeout``, 60 by default): a run that
        ended in ERROR raises :class:`RunFailed`, one still going when the budget ran out
        :class:`WaitTimeout` (with its ``run_id``: follow it with :meth:`resume`).
        """
        params: dict[str, Any] = {}
        timeout = None
        if wait:
            params["wait"] = "true"
            params["wait_seconds"] = max(1, math.ceil(wait_seconds))
            # The server holds the request for its wait budget: no read timeout of ours.
            timeout = httpx.Timeout(self.timeout, read=None)
        try:
            response = await self._send(
                "POST", f"/tasks/{task_id}/trigger", params=params, request_timeout=timeout
            )
        except APIStatusError as exc:
            if exc.code == "wait_timeout" and exc.run_id is not None:
                raise WaitTimeout(exc.run_id, params["wait_seconds"]) from exc
            raise
        run = Run.from_json(_as_object(_decode(response)))
        if wait and run.status is RunStatus.ERROR:
            raise RunFailed(run)
        return run

    async def list_task_runs(
        self,
        task_id: str,
        *,
        status: RunStatus | str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        """A task's runs, newest first, with their ``status``; ``run.data`` also has
        ``attempt``, ``task_id`` and ``occurrence`` (the scheduled time the run stands for).
        Follow one with ``resume(kind, id, run.run_id)`` like any run."""
        params: dict[str, Any] = {}
        if status is not None:
            params["status"] = RunStatus(str.upper(status)).value
        if limit is not None:
            params["limit"] = limit
        if offset is not None:
            params["offset"] = offset
        data = await self._json("GET", f"/tasks/{task_id}/runs", params=params)
        if not isinstance(data, list):
            raise ClientError("the task's run list is not a JSON list")
        return [Run.from_json(_as_object(item)) for item in data]

    async def cancel(self, kind: str, id: str, run_id: str) -> RunStatus:
        """Ask the server to cancel a run; returns its status. Idempotent, and an ended run
        keeps its final status."""
        data = _as_object(
            await self._json("POST", f"/{kind}/{id}/runs/{run_id}/cancel", run_id=run_id)
        )
        return RunStatus(str(data["status"]).upper())

    async def wait(
        self,
        kind: str,
        id: str,
        run_id: str,
        timeout: float | None = None,
    ) -> Run:
        """Wait until the run ends and return it.

        Raises :class:`RunFailed` if it ended in ERROR and :class:`WaitTimeout` after
        ``timeout`` seconds (``None``: no limit). A CANCELLED run is returned as it is.
        """
        self._check_open()
        try:
            run = await asyncio.wait_for(self._wait(kind, id, run_id), timeout)
        except TimeoutError as exc:
            raise WaitTimeout(run_id, timeout or 0.0) from exc
        if run.status is RunStatus.ERROR:
            raise RunFailed(run)
        return run

    # -- internals -----------------------------------------------------------------------

    async def _wait(self, kind: str, id: str, run_id: str) -> Run:
        run = await self.get_run(kind, id, run_id)
        while not run.status.is_terminal:
            cursor = (run.event_count or 0) - 1
            try:
                await self._drain(self.resume(kind, id, run_id, max(cursor, -1)))
            except APIStatusError as exc:
                if exc.status_code != 422:
                    raise
                # The count ran ahead of the committed events: read from the start instead.
                await self._drain(self.resume(kind, id, run_id, -1))
            # The terminal event is committed; the status may land a moment later.
            for attempt in range(_STATUS_POLLS):
                run = await self.get_run(kind, id, run_id)
                if run.status.is_terminal:
                    break
                await asyncio.sleep(_STATUS_POLL_BACKOFF.delay(attempt + 1))
        return run

    @staticmethod
    async def _drain(stream: RunStream) -> None:
        async with stream:
            async for _ in stream:
                pass

    async def _create_run(
        self, kind: str, id: str, body: dict[str, Any], *, wait: bool, headers: dict[str, str]
    ) -> Run:
        # A run that is awaited inline may take as long as the server waits: no read timeout.
        timeout = httpx.Timeout(self.timeout, read=None) if wait else None
        attempt = 0
        while True:
            try:
                response = await self._send(
                    "POST",
                    f"/{kind}/{id}/runs",
                    json=body,
                    headers=headers,
                    request_timeout=timeout,
                    accept=(504,),
                )
                break
            except (TransportError, APIStatusError) as exc:
                # Only a create with an Idempotency-Key can be sent again: the server answers
                # a repeat with the run the first one made, never with a second run.
                retry = "Idempotency-Key" in headers and (
                    isinstance(exc, TransportError) or exc.status_code in (502, 503)
                )
                attempt += 1
                if not retry or attempt > self.max_reconnects:
                    raise
                await asyncio.sleep(self._backoff(attempt))
        if response.status_code == 504:
            raise self._wait_timeout(response)
        data = _as_object(_decode(response))
        run = Run.from_json(data, resume_token=response.headers.get("x-resume-token"))
        if wait and run.status is RunStatus.ERROR:
            raise RunFailed(run)
        return run

    async def _json(self, method: str, path: str, *, run_id: str | None = None, **kw: Any) -> Any:
        return _decode(await self._send(method, path, run_id=run_id, **kw))

    async def _send(
        self,
        method: str,
        path: str,
        *,
        run_id: str | None = None,
        request_timeout: httpx.Timeout | None = None,
        accept: tuple[int, ...] = (),
        **kw: Any,
    ) -> httpx.Response:
        self._check_open()
        try:
            if request_timeout is None:
                response = await self._http.request(method, path, **kw)
            else:
                response = await self._http.request(method, path, timeout=request_timeout, **kw)
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {path}: {exc!r}", run_id=run_id) from exc
        if response.status_code >= 400 and response.status_code not in accept:
            raise self._status_error(response, run_id=run_id)
        return response

    async def _send_stream(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        """Open a streaming response; httpx errors are left to the stream's retry logic."""
        self._check_open()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
        timeout = httpx.Timeout(self.timeout, read=self.read_timeout)
        request = self._http.build_request(method, path, headers=headers, timeout=timeout, **kw)
        return await self._http.send(request, stream=True)

    @classmethod
    def _wait_timeout(cls, response: httpx.Response) -> ClientError:
        """The error of a 504: WaitTimeout when the server's wait ended (its JSON names the
        run), else (a proxy's 504) an APIStatusError."""
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("code") != "wait_timeout":
            return cls._status_error(response, run_id=None)
        seconds = data.get("wait_timeout_seconds")
        return WaitTimeout(
            str(data.get("run_id")),
            float(seconds) if isinstance(seconds, int | float) else 0.0,
            status=_opt(data.get("status")),
        )

    @staticmethod
    def _status_error(response: httpx.Response, *, run_id: str | None) -> APIStatusError:
        code = detail = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            code = None if body.get("code") is None else str(body["code"])
            detail = None if body.get("detail") is None else str(body["detail"])
        run_id = run_id or response.headers.get("x-run-id")
        return APIStatusError(response.status_code, code=code, detail=detail, run_id=run_id)

    def _backoff(self, attempt: int) -> float:
        return self._backoff_rule.delay(attempt)

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed()


def _decode(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ClientError(f"expected JSON, got {response.text[:100]!r}") from exc


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def _as_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ClientError("expected a JSON object")
    return data


class SyncRunStream:
    """The blocking face of a :class:`RunStream`: iterate it with ``for``.

    Attributes (``run_id``, ``last_event_index`` ...) read through to the async stream.
    """

    def __init__(self, client: Client, stream: RunStream) -> None:
        self._client = client
        self._stream = stream

    @property
    def run_id(self) -> str | None:
        return self._stream.run_id

    @property
    def session_id(self) -> str | None:
        return self._stream.session_id

    @property
    def last_event_index(self) -> int:
        return self._stream.last_event_index

    @property
    def resume_token(self) -> str | None:
        return self._stream.resume_token

    @property
    def reconnects(self) -> int:
        return self._stream.reconnects

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        try:
            return self._client._call(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stop following the run and release the connection (the run itself goes on)."""
        if not self._client._loop.is_closed():
            self._client._call(self._stream.aclose())

    def __enter__(self) -> SyncRunStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Client:
    """The blocking client: the same methods as :class:`AsyncClient` without the ``a``.

    ::

        with Client("http://127.0.0.1:7777") as client:
            for event in client.run("agents", "echo", "hi", stream=True, background=True):
                print(event.event_index, event.event)

    It takes the same settings as :class:`AsyncClient`.
    """

    def __init__(self, base_url: str, security_key: str | None = None, **settings: Any) -> None:
        self._async = AsyncClient(base_url, security_key, **settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="agentos-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    def __enter__(self) -> Client:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the client's thread. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._async.aclose())
            # Streams left open end here, on their own loop, not later in a garbage collector.
            self._call(self._loop.shutdown_asyncgens())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    @property
    def is_closed(self) -> bool:
        return self._closed

    @overload
    def run(
        self,
        kind: str,
        id: str,
        message: str,
        *,
        stream: Literal[True],
        background: bool = ...,
        session_id: str | None = ...,
        user_id: str | None = ...,
        run_id: str | None = ...,
        meta: bool = ...,
        retry_policy: Mapping[str, Any] | None = ...,
        timeout_seconds: float | None = ...,
        multitask: str | None = ...,
        idempotency_key: str | None = ...,
        wait_timeout_seconds: float | None = ...,
    ) -> SyncRunStream: ...

    @overload
    def run(
        self,
        kind: str,
        id: str,
        message: str,
        *,
        stream: Literal[False] = ...,
        background: bool = ...,
        session_id: str | None = ...,
        user_id: str | None = ...,
        run_id: str | None = ...,
        meta: bool = ...,
        retry_policy: Mapping[str, Any] | None = ...,
        timeout_seconds: float | None = ...,
        multitask: str | None = ...,
        idempotency_key: str | None = ...,
        wait_timeout_seconds: float | None = ...,
    ) -> Run: ...

    def run(
        self,
        kind: str,
        id: str,
        message: str,
        *,
        stream: bool = False,
        background: bool = False,
        session_id: str | None = None,
        user_id: str | None = None,
        run_id: str | None = None,
        meta: bool = False,
        retry_policy: Mapping[str, Any] | None = None,
        timeout_seconds: float | None = None,
        multitask: str | None = None,
        idempotency_key: str | None = None,
        wait_timeout_seconds: float | None = None,
    ) -> SyncRunStream | Run:
        """See :meth:`AsyncClient.arun`; streams come back as a :class:`SyncRunStream`."""
        self._check_open()
        options: dict[str, Any] = {
            "background": background,
            "session_id": session_id,
            "user_id": user_id,
            "run_id": run_id,
            "meta": meta,
            "retry_policy": retry_policy,
            "timeout_seconds": timeout_seconds,
            "multitask": multitask,
            "idempotency_key": idempotency_key,
            "wait_timeout_seconds": wait_timeout_seconds,
        }
        if stream:
            return SyncRunStream(self, self._async.arun(kind, id, message, stream=True, **options))
        return self._call(self._async.arun(kind, id, message, stream=False, **options))

    def resume(
        self,
        kind: str,
        id: str,
        run_id: str,
        last_event_index: int = -1,
        *,
        session_id: str | None = None,
        meta: bool = False,
    ) -> SyncRunStream:
        """See :meth:`AsyncClient.resume`."""
        self._check_open()
        stream = self._async.resume(
            kind, id, run_id, last_event_index, session_id=session_id, meta=meta
        )
        return SyncRunStream(self, stream)

    def health(self) -> dict[str, Any]:
        """See :meth:`AsyncClient.health`."""
        return self._call(self._async.health())

    def list_components(self, kind: str) -> list[dict[str, Any]]:
        """See :meth:`AsyncClient.list_components`."""
        return self._call(self._async.list_components(kind))

    def get_component(self, kind: str, id: str) -> dict[str, Any]:
        """See :meth:`AsyncClient.get_component`."""
        return self._call(self._async.get_component(kind, id))

    def pause_component(self, kind: str, id: str) -> dict[str, Any]:
        """See :meth:`AsyncClient.pause_component`."""
        return self._call(self._async.pause_component(kind, id))

    def resume_component(self, kind: str, id: str) -> dict[str, Any]:
        """See :meth:`AsyncClient.resume_component`."""
        return self._call(self._async.resume_component(kind, id))

    def get_run(self, kind: str, id: str, run_id: str) -> Run:
        """See :meth:`AsyncClient.get_run`."""
        return self._call(self._async.get_run(kind, id, run_id))

    def attempts(self, kind: str, id: str, run_id: str) -> list[dict[str, Any]]:
        """See :meth:`AsyncClient.attempts`."""
        return self._call(self._async.attempts(kind, id, run_id))

    def list_runs(
        self,
        kind: str,
        id: str,
        *,
        session_id: str | None = None,
        status: RunStatus | str | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """See :meth:`AsyncClient.list_runs`."""
        return self._call(
            self._async.list_runs(kind, id, session_id=session_id, status=status, limit=limit)
        )

    def list_sessions(
        self,
        *,
        user_id: str | None = None,
        kind: str | None = None,
        component_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """See :meth:`AsyncClient.list_sessions`."""
        return self._call(
            self._async.list_sessions(
                user_id=user_id, kind=kind, component_id=component_id, limit=limit
            )
        )

    def get_session(self, session_id: str, *, limit: int | None = None) -> dict[str, Any]:
        """See :meth:`AsyncClient.get_session`."""
        return self._call(self._async.get_session(session_id, limit=limit))

    def delete_session(self, session_id: str) -> None:
        """See :meth:`AsyncClient.delete_session`."""
        self._call(self._async.delete_session(session_id))

    def create_task(
        self,
        kind: str,
        id: str,
        message: str,
        *,
        schedule: Mapping[str, Any] | str | None = None,
        task_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """See :meth:`AsyncClient.create_task`."""
        return self._call(
            self._async.create_task(kind, id, message, schedule=schedule, task_id=task_id, **fields)
        )

    def list_tasks(self, **filters: Any) -> list[dict[str, Any]]:
        """See :meth:`AsyncClient.list_tasks` (the same keyword filters)."""
        return self._call(self._async.list_tasks(**filters))

    def get_task(self, task_id: str) -> dict[str, Any]:
        """See :meth:`AsyncClient.get_task`."""
        return self._call(self._async.get_task(task_id))

    def update_task(self, task_id: str, **fields: Any) -> dict[str, Any]:
        """See :meth:`AsyncClient.update_task`."""
        return self._call(self._async.update_task(task_id, **fields))

    def delete_task(self, task_id: str) -> None:
        """See :meth:`AsyncClient.delete_task`."""
        self._call(self._async.delete_task(task_id))

    def pause_task(self, task_id: str) -> dict[str, Any]:
        """See :meth:`AsyncClient.pause_task`."""
        return self._call(self._async.pause_task(task_id))

    def resume_task(self, task_id: str) -> dict[str, Any]:
        """See :meth:`AsyncClient.resume_task`."""
        return self._call(self._async.resume_task(task_id))

    def trigger_task(self, task_id: str, *, wait: bool = False, wait_seconds: float = 60.0) -> Run:
        """See :meth:`AsyncClient.trigger_task`."""
        return self._call(self._async.trigger_task(task_id, wait=wait, wait_seconds=wait_seconds))

    def list_task_runs(
        self,
        task_id: str,
        *,
        status: RunStatus | str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[Run]:
        """See :meth:`AsyncClient.list_task_runs`."""
        return self._call(
            self._async.list_task_runs(task_id, status=status, limit=limit, offset=offset)
        )

    def cancel(self, kind: str, id: str, run_id: str) -> RunStatus:
        """See :meth:`AsyncClient.cancel`."""
        return self._call(self._async.cancel(kind, id, run_id))

    def wait(self, kind: str, id: str, run_id: str, timeout: float | None = None) -> Run:
        """See :meth:`AsyncClient.wait`."""
        return self._call(self._async.wait(kind, id, run_id, timeout))

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise ClientClosed()
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C or the caller's own cancellation: do not leave the request running.
            future.cancel()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed()
