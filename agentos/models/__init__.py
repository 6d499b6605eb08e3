"""Models: the contracts (``base``) and one module per implementation.

``OpenAIChat`` (``openai.py``) needs the ``openai`` package; it is imported on first use, so the
echo models work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentos.models.base import (
    ChatModel,
    ContentDelta,
    Delta,
    Finish,
    Model,
    ReasoningDelta,
    ToolCall,
    ToolCallPart,
    ToolSpec,
    Usage,
)
from agentos.models.echo import EchoModel

if TYPE_CHECKING:
    from agentos.models.openai import OpenAIChat

__all__ = [
    "ChatModel",
    "ContentDelta",
    "Delta",
    "EchoModel",
    "Finish",
    "Model",
    "OpenAIChat",
    "ReasoningDelta",
    "ToolCall",
    "ToolCallPart",
    "ToolSpec",
    "Usage",
]


def __getattr__(name: str) -> Any:
    if name == "OpenAIChat":
        from agentos.models.openai import OpenAIChat

        return OpenAIChat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
