"""Run streams that survive a dropped connection.

A :class:`RunStream` is an async iterator of :class:`RunEvent` (and, on request, of
:class:`MetaEvent`). For a background run it reconnects on connection loss, read timeout (no
event and no ``: ping`` comment within ``read_timeout``), HTTP 502/503/504, or a stream that
closes before the terminal event, and resumes from the last index it yielded::

      create (POST, background stream)          resume (GET ...?last_event_index=N)
    ─────────────────────────────────────┐    ┌─────────────────────────────────────
     0 RunStarted, 1 RunContent, ...  ✂  │ ── │  catch_up | replay, N+1, N+2, ... terminal
                                          └────┘
                     backoff: initial * 2**(attempt-1), capped, with jitter;
                     attempts reset after every yielded event

Indices at or below the cursor are dropped (a duplicate), a jump past ``cursor + 1`` raises
:class:`StreamError` (a skipped event is never hidden), and the stream ends right after the
terminal event of its kind. The create request carries a run id chosen by the client, so a
create that is retried after a lost answer finds its own run (409) and switches to resume
instead of starting a second run.

An inline stream (``background=False``) cannot be resumed: the server cancels the run when
the connection drops, so any transport failure raises :class:`TransportError` at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Generator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from ._errors import StreamError, TransportError
from ._models import Event, MetaEvent, RunEvent
from ._sse import SSEFrame, aiter_frames

if TYPE_CHECKING:
    from ._client import AsyncClient

__all__ = ["RunStream"]

# Answers that a proxy or a restarting server gives for a moment; anything else is final.
RETRY_STATUSES = frozenset({502, 503, 504})


class _Retry(Exception):
    """Internal: this connection is lost, try again after a backoff."""


class RunStream:
    """The events of one run, in order, each exactly once.

    Use it with ``async for``, preferably inside ``async with`` so the connection is released
    if you stop early::

        async with client.arun("agents", "echo", "hi", stream=True, background=True) as stream:
            async for event in stream:
                print(event.event_index, event.event, event.content)

    Awaiting it is optional: ``await client.arun(..., stream=True)`` opens the connection and
    reads the first event ahead, so a 404 or 401 is raised at the ``await``, as with the
    in-process ``await agent.arun(..., stream=True)``; the event is still yielded first.

    ``run_id`` is known before the first event for background runs (the client picks it),
    ``last_event_index`` is the index of the last event yielded (-1 before the first), and
    ``terminal_event`` is the event that ended the stream.
    """

    def __init__(
        self,
        client: AsyncClient,
        kind: str,
        id: str,
        *,
        run_id: str | None,
        create: Mapping[str, Any] | None = None,
        create_headers: Mapping[str, str] | None = None,
        session_id: str | None = None,
        last_event_index: int = -1,
        meta: bool = False,
        resumable: bool = True,
    ) -> None:
        self.kind = kind
        self.id = id
        self.run_id = run_id
        self.session_id = session_id
        self.last_event_index = last_event_index
        self.resume_token: str | None = None
        self.terminal_event: RunEvent | None = None
        #: How many times this stream has reconnected, for logging and tests.
        self.reconnects = 0
        self._client = client
        self._create = create
        self._create_headers = dict(create_headers or {})
        self._meta = meta
        self._resumable = resumable
        self._gen: AsyncGenerator[Event, None] | None = None
        self._ahead: list[Event] = []

    def __aiter__(self) -> RunStream:
        return self

    async def __anext__(self) -> Event:
        if self._ahead:
            return self._ahead.pop()
        if self._gen is None:
            self._gen = self._iterate()
        return await self._gen.__anext__()

    def __await__(self) -> Generator[Any, None, RunStream]:
        return self._start().__await__()

    async def _start(self) -> RunStream:
        if self._gen is None:
            self._gen = self._iterate()
            try:
                self._ahead.append(await self._gen.__anext__())
            except StopAsyncIteration:
                pass
        return self

    async def aclose(self) -> None:
        """Stop following the run and release the connection (the run itself goes on)."""
        if self._gen is not None:
            await self._gen.aclose()

    async def __aenter__(self) -> RunStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _open(self) -> httpx.Response:
        if self._create is not None:
            return await self._client._send_stream(
                "POST",
                f"/{self.kind}/{self.id}/runs",
                json=dict(self._create),
                headers=self._create_headers,
            )
        params: dict[str, Any] = {"last_event_index": self.last_event_index}
        if self.session_id is not None:
            params["session_id"] = self.session_id
        return await self._client._send_stream(
            "GET", f"/{self.kind}/{self.id}/runs/{self.run_id}/resume", params=params
        )

    async def _iterate(self) -> AsyncGenerator[Event, None]:
        attempt = 0
        while True:
            try:
                response = await self._open()
                try:
                    if response.status_code == 409 and self._create is not None and attempt:
                        # An earlier create got through before its answer was lost.
                        self._create = None
                        continue
                    if response.status_code == 204:
                        return  # the cursor already sits on the terminal event
                    if response.status_code in RETRY_STATUSES and self._resumable:
                        raise _Retry(f"HTTP {response.status_code}")
                    if response.status_code >= 400:
                        await response.aread()
                        raise self._client._status_error(response, run_id=self.run_id)
                    if self._create is not None:
                        self._take_create_headers(response)
                    async for item in self._read(response):
                        if isinstance(item, RunEvent):
                            attempt = 0
                        yield item
                        if isinstance(item, RunEvent) and item.terminal:
                            return
                finally:
                    await response.aclose()
                raise _Retry("the stream closed before the terminal event")
            except (httpx.TransportError, _Retry) as exc:
                if not self._resumable:
                    raise TransportError(
                        f"stream lost: {exc}",
                        run_id=self.run_id,
                        last_event_index=self.last_event_index,
                    ) from exc
                attempt += 1
                if attempt > self._client.max_reconnects:
                    raise TransportError(
                        f"gave up after {self._client.max_reconnects} reconnect attempts: {exc}",
                        run_id=self.run_id,
                        last_event_index=self.last_event_index,
                    ) from exc
                self.reconnects += 1
                await asyncio.sleep(self._client._backoff(attempt))

    def _take_create_headers(self, response: httpx.Response) -> None:
        self.run_id = response.headers.get("x-run-id", self.run_id)
        self.session_id = response.headers.get("x-session-id", self.session_id)
        self.resume_token = response.headers.get("x-resume-token")
        # From now on every reconnect is a resume of this run.
        self._create = None

    async def _read(self, response: httpx.Response) -> AsyncGenerator[Event, None]:
        async for frame in aiter_frames(response.aiter_bytes()):
            if frame.id is None:
                meta = MetaEvent(frame.event, self._decode(frame))
                if meta.event == "error":
                    if meta.data.get("code") == "database_unavailable" and self._resumable:
                        raise _Retry("the server's database is unavailable")
                    raise StreamError(
                        str(meta.data.get("error") or "the server ended the stream"),
                        code=_opt_str(meta.data.get("code")),
                        run_id=self.run_id,
                    )
                if self._meta:
                    yield meta
                continue
            event = self._event(frame)
            if event.event_index <= self.last_event_index:
                continue
            if event.event_index != self.last_event_index + 1:
                raise StreamError(
                    f"expected event {self.last_event_index + 1}, got {event.event_index}",
                    code="index_gap",
                    run_id=self.run_id,
                )
            if self.run_id is None:
                self.run_id = event.run_id
            if self.session_id is None:
                self.session_id = event.session_id
            self.last_event_index = event.event_index
            if event.terminal:
                self.terminal_event = event
            yield event

    def _decode(self, frame: SSEFrame) -> dict[str, Any]:
        try:
            data = json.loads(frame.data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise StreamError(
                f"frame {frame.event!r} is not JSON", code="bad_frame", run_id=self.run_id
            ) from exc
        if not isinstance(data, dict):
            raise StreamError(
                f"frame {frame.event!r} is not a JSON object", code="bad_frame", run_id=self.run_id
            )
        return data

    def _event(self, frame: SSEFrame) -> RunEvent:
        data = self._decode(frame)
        try:
            return RunEvent.from_json(data, kind=self.kind)
        except (KeyError, TypeError, ValueError) as exc:
            raise StreamError(
                f"event frame {frame.id!r} lacks event, event_index or run_id",
                code="bad_frame",
                run_id=self.run_id,
            ) from exc


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
