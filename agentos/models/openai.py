"""OpenAI-compatible chat models, through the official ``openai`` SDK (``AsyncOpenAI``).

Any server that speaks the chat completions streaming API works: OpenAI, vLLM, Ollama,
llama.cpp, LM Studio, OpenRouter, Groq::

    OpenAIChat(model="gpt-4o-mini")                                  # OPENAI_API_KEY
    OpenAIChat(model="llama3.2", base_url="http://127.0.0.1:11434/v1", api_key="ollama")

This is the only module that imports ``openai``; the SDK's errors stop here and come out as
:class:`~agentos.errors.ModelUnavailable` (connection, 429 with its ``Retry-After``, 5xx, a
stream cut short: worth a retry) or :class:`~agentos.errors.ModelError`. The SDK's own retries
are off (``max_retries=0``): the agent retries, and only before a call's first output.

What the wire chunks become (``ChatCompletionChunk``, read as the JSON objects they are)::

    choices[0].delta.content                       ──▶ ContentDelta
    choices[0].delta.reasoning_content / reasoning ──▶ ReasoningDelta (vLLM, DeepSeek, OpenRouter)
    choices[0].delta.tool_calls[i] (index, id, function.name, arguments split over chunks)
                                                   ──▶ ToolCallPart per piece (the agent joins
                                                       the pieces of an index, within limits)
    usage (stream_options.include_usage)           ──▶ Usage
    choices[0].finish_reason, then [DONE]          ──▶ Finish (a stream that ends without a
                                                       finish_reason was cut short)
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from agentos.errors import ModelError, ModelUnavailable
from agentos.models.base import (
    ContentDelta,
    Delta,
    Finish,
    ReasoningDelta,
    ToolCallPart,
    ToolSpec,
    Usage,
)

try:
    import openai
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("OpenAIChat needs the openai package: pip install 'agentos[openai]'") from exc

__all__ = ["OpenAIChat"]

logger = logging.getLogger("agentos.models.openai")

_MAX_ERROR_TEXT = 500
#: Fields of a chat message the API takes (history may hold more, such as a tool's name).
_MESSAGE_FIELDS = ("role", "content", "tool_calls", "tool_call_id")


class OpenAIChat:
    """A chat model behind an OpenAI-compatible chat completions API.

    ``api_key`` defaults to ``OPENAI_API_KEY`` and ``base_url`` to ``OPENAI_BASE_URL`` (the
    SDK's own variables); without a key this raises at once, not mid-run (local servers take
    any value, e.g. ``api_key="none"``). ``options`` go into every request as they are
    (``temperature``, ``max_tokens``, ``extra_body``...).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        default_headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        if not model:
            raise ValueError("OpenAIChat needs a model name")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ValueError(
                "OpenAIChat needs an API key: pass api_key= or set OPENAI_API_KEY "
                "(a local server such as Ollama or vLLM takes any value, e.g. 'none')"
            )
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.options = options
        self._api_key = key
        self._timeout = timeout
        self._headers = dict(default_headers or {})
        self._client: tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI] | None = None

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def name(self) -> str:
        return self.model

    def client(self) -> openai.AsyncOpenAI:
        """The SDK client of the running event loop (its connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            client = openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                max_retries=0,
                timeout=self._timeout,
                default_headers=self._headers or None,
            )
            self._client = (loop, client)
        return self._client[1]

    async def aclose(self) -> None:
        """Close the SDK client's connections (those of the running loop's client)."""
        if self._client is not None:
            loop, client = self._client
            self._client = None
            if loop is asyncio.get_running_loop():
                await client.close()

    async def astream_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[Delta]:
        params: dict[str, Any] = {
            **self.options,
            "model": self.model,
            "messages": [
                {k: m.get(k) for k in _MESSAGE_FIELDS if m.get(k) is not None or k == "content"}
                for m in messages
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
        try:
            # The chunks come as the JSON objects on the wire (cast_to=object): the SDK still
            # sends the request, decodes the SSE stream and raises its errors, but skips
            # building a pydantic model per chunk, which cost more than all of agentos's own
            # work per delta (bench/model_relay.py).
            stream = await self.client().post(
                "/chat/completions",
                body=params,
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
        except openai.APIError as exc:
            raise _translate(exc) from exc
        finish: str | None = None
        model: str | None = None
        try:
            async for chunk in stream:
                if not isinstance(chunk, dict):
                    continue
                if isinstance(chunk.get("model"), str):
                    model = chunk["model"]
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    yield Usage(
                        _count(usage.get("prompt_tokens")),
                        _count(usage.get("completion_tokens")),
                        _count(usage.get("total_tokens")),
                    )
                for choice in chunk.get("choices") or ():
                    if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta")
                    if isinstance(delta, dict):
                        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                        if isinstance(reasoning, str) and reasoning:
                            yield ReasoningDelta(reasoning)
                        content = delta.get("content")
                        if isinstance(content, str) and content:
                            yield ContentDelta(content)
                        for part in delta.get("tool_calls") or ():
                            if isinstance(part, dict):
                                yield _call_part(part)
                    reason = choice.get("finish_reason")
                    if isinstance(reason, str) and reason:
                        finish = reason
        except openai.APIError as exc:
            raise _translate(exc) from exc
        finally:
            await stream.close()
        if finish is None:
            raise ModelUnavailable("the model's stream ended before the model finished")
        yield Finish(finish, model)


def _call_part(part: dict[str, Any]) -> ToolCallPart:
    """One streamed piece of a tool call (index, id, name, arguments) as the wire has it."""
    index = part.get("index")
    function = part.get("function")
    if not isinstance(function, dict):
        function = {}
    return ToolCallPart(
        index if isinstance(index, int) and not isinstance(index, bool) else None,
        _text(part.get("id")),
        _text(function.get("name")),
        _text(function.get("arguments")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _translate(exc: openai.APIError) -> ModelError:
    """The agent's error for the SDK's: retry-worthy failures become ModelUnavailable."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return ModelUnavailable(f"cannot reach the model server: {type(exc).__name__}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        # The server's own text stays in the log: it may quote the key (masked) or the request.
        logger.info("the model server answered %s: %s", status, _short(exc.message))
        if status == 429 or status >= 500 or status == 408:
            return ModelUnavailable(
                f"the model server answered {status}",
                retry_after=_retry_after(exc.response.headers),
            )
        return ModelError(f"the model server answered {status}")
    logger.info("the model server failed: %s", _short(exc.message))
    return ModelError("the model server failed")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(float(raw_ms) / 1000, 0.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[:_MAX_ERROR_TEXT] + "..."
