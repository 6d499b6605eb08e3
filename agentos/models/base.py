"""The contracts of a model: what turns an agent's input into streamed output.

Two shapes, one per kind of model:

- :class:`Model`: ``astream(message) -> AsyncIterator[str]``, text in, text chunks out (the echo
  model, or any simple generator).
- :class:`ChatModel`: ``astream_chat(messages, tools) -> AsyncIterator[Delta]``, a conversation in
  (OpenAI-style message dicts), typed deltas out. The agent drives the tool loop: it sends the
  conversation, streams :class:`ContentDelta` and :class:`ReasoningDelta` as events, runs the
  :class:`ToolCall` requests the turn ended with, appends their results and calls again::

      messages ──▶ astream_chat ──▶ ContentDelta* ReasoningDelta* ToolCallPart* Usage? Finish
                        ▲                                          │
                        └──────────── tool results ◀── run tools ◀─┘

A chat model yields tool calls as they come: a server that streams a call in pieces (the OpenAI
wire format: an index, then its id, name and argument fragments) gives one :class:`ToolCallPart`
per piece, and the agent assembles them within its limits (``max_tool_calls`` per turn,
``tool_argument_bytes`` per call), so no call is held whole before it is checked; a model that
has whole calls yields :class:`ToolCall`. It raises :class:`~agentos.errors.ModelUnavailable`
for failures worth a retry and :class:`~agentos.errors.ModelError` for the others; retries,
timeouts and cancellation are the agent's business. Implementations live one per module beside this one
(``echo.py``, ``openai.py``); only this package imports a model provider's SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ChatModel",
    "ContentDelta",
    "Delta",
    "Finish",
    "Model",
    "ReasoningDelta",
    "ToolCall",
    "ToolCallPart",
    "ToolSpec",
    "Usage",
]


@runtime_checkable
class Model(Protocol):
    """Streams the chunks of a reply."""

    def astream(self, message: str) -> AsyncIterator[str]: ...


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """A piece of the reply's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning, where the server streams it."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call the model asked for: its id, the tool's name, the JSON arguments."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """A piece of a tool call as a server streams it: the parts with one ``index`` are one call,
    their ``arguments`` fragments joined in order (``id`` and ``name`` usually come first).

    A part without an index is a whole call (servers that send calls in one piece).
    """

    index: int | None
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one model call."""

    input_tokens: int
    output_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class Finish:
    """The end of one model call: why it stopped, and the model that answered."""

    reason: str
    model: str | None = None


Delta = ContentDelta | ReasoningDelta | ToolCall | ToolCallPart | Usage | Finish


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model sees it: name, description and JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@runtime_checkable
class ChatModel(Protocol):
    """Streams one model call over a conversation, as typed deltas."""

    @property
    def name(self) -> str:
        """The model's name (reported in the run's metrics)."""
        ...

    def astream_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[Delta]: ...
