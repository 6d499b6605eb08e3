"""A local OpenAI-compatible chat completions server for the tests (Starlette on 127.0.0.1).

It answers ``POST /v1/chat/completions`` with scripted replies in the real wire shapes of the
streaming API: ``data: {chat.completion.chunk}`` frames, the usage chunk (empty ``choices``),
``finish_reason`` and ``data: [DONE]``. A reply may also be an HTTP error (429 with
``Retry-After``, 500), pause (a stall), or cut the connection mid-stream. The server records
every request body and every client disconnect, so a test can check that a cancelled run
closed its upstream stream::

    fake = FakeOpenAI()
    fake.script(text_reply(["Hel", "lo"]))
    url = serve_thread(fake.app).url + "/v1"      # base_url for OpenAIChat
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

MODEL = "fake-model"


@dataclass(frozen=True)
class Pause:
    """Send nothing for ``seconds`` (ends early when the client disconnects)."""

    seconds: float


@dataclass(frozen=True)
class Cut:
    """Drop the connection here, mid-body (the client sees an incomplete response)."""


@dataclass
class Reply:
    """One scripted answer: a stream of chunks (with pauses and cuts), or an HTTP error."""

    items: Sequence[dict[str, Any] | Pause | Cut] = ()
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = True


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def text_reply(
    pieces: Sequence[str],
    *,
    reasoning: Sequence[str] = (),
    usage: tuple[int, int] = (11, 7),
    pause: float = 0.0,
) -> Reply:
    """A role chunk, reasoning deltas, content deltas, ``finish_reason: stop``, usage."""
    items: list[dict[str, Any] | Pause | Cut] = [chunk({"role": "assistant", "content": ""})]
    for text in reasoning:
        items.append(chunk({"reasoning_content": text}))
    for text in pieces:
        if pause:
            items.append(Pause(pause))
        items.append(chunk({"content": text}))
    items.append(chunk({}, "stop"))
    items.append(usage_chunk(*usage))
    return Reply(items)


def tool_reply(
    calls: Sequence[tuple[str, str, str]], *, piece: int = 3, usage: tuple[int, int] = (20, 9)
) -> Reply:
    """Tool calls ``(id, name, arguments)``: the first delta of each has index, id, name and no
    arguments; the arguments follow in ``piece``-character deltas, interleaved between calls."""
    items: list[dict[str, Any] | Pause | Cut] = [chunk({"role": "assistant", "content": None})]
    for index, (call_id, name, _) in enumerate(calls):
        items.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
    pieces = [[args[i : i + piece] for i in range(0, len(args), piece)] for _, _, args in calls]
    for step in range(max(len(p) for p in pieces)):
        for index, parts in enumerate(pieces):
            if step < len(parts):
                items.append(
                    chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": parts[step]}}]}
                    )
                )
    items.append(chunk({}, "tool_calls"))
    items.append(usage_chunk(*usage))
    return Reply(items)


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, headers=headers or {}, items=[{"message": message}])


class FakeOpenAI:
    """The server's state: scripted replies (in order), requests seen, disconnects seen."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.request_times: list[float] = []
        self.disconnects = 0
        self.completed = 0
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            self.request_times.append(time.monotonic())
            reply = self.replies.popleft() if self.replies else text_reply(["(no script)"])
        if reply.status != 200:
            message = reply.items[0]["message"] if reply.items else "error"  # type: ignore[index]
            return JSONResponse(
                {"error": {"message": message, "type": "fake_error", "code": None}},
                status_code=reply.status,
                headers=reply.headers,
            )
        return _Stream(self, reply)


class _Stream(Response):
    """Streams a reply as SSE and notes a client disconnect (raw ASGI, to see it exactly)."""

    def __init__(self, fake: FakeOpenAI, reply: Reply) -> None:
        super().__init__()
        self.fake = fake
        self.reply = reply

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.create_task(watch())
        finished = cut = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                    ],
                }
            )
            for item in self.reply.items:
                if gone.is_set():
                    break
                if isinstance(item, Pause):
                    sleeper = asyncio.ensure_future(asyncio.sleep(item.seconds))
                    waiter = asyncio.ensure_future(gone.wait())
                    await asyncio.wait([sleeper, waiter], return_when=asyncio.FIRST_COMPLETED)
                    sleeper.cancel()
                    waiter.cancel()
                    continue
                if isinstance(item, Cut):
                    cut = True
                    raise ConnectionAbortedError("scripted cut")  # uvicorn drops the socket
                data = f"data: {json.dumps(item)}\n\n".encode()
                await send({"type": "http.response.body", "body": data, "more_body": True})
                await asyncio.sleep(0)
            if not gone.is_set():
                tail = b"data: [DONE]\n\n" if self.reply.done else b""
                await send({"type": "http.response.body", "body": tail, "more_body": False})
                finished = True
        finally:
            if not finished and not cut:
                # Wait (bounded) for the client's close to arrive, then count it.
                try:
                    async with asyncio.timeout(5):
                        await gone.wait()
                except TimeoutError:
                    pass
            watcher.cancel()
            with self.fake._lock:
                if gone.is_set() and not finished:
                    self.fake.disconnects += 1
                if finished:
                    self.fake.completed += 1
