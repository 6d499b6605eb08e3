"""agentos: run agents, teams and workflows in the background and stream resumable events."""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from agentos.backends import Store
from agentos.backends.sql import SQLStore
from agentos.components import Agent, Component, Step, Team, Workflow
from agentos.context import RunContext
from agentos.errors import (
    AgentOSError,
    ComponentNotFound,
    EventsUnavailable,
    InvalidCursor,
    InvalidRequest,
    ModelError,
    ModelTimeout,
    ModelUnavailable,
    NotAuthenticated,
    NotAuthorized,
    Overloaded,
    ReplyTooLarge,
    RequestTimeout,
    RequestTooLarge,
    RunAlreadyExists,
    RunNotFound,
    SessionActive,
    SessionNotFound,
    ShuttingDown,
    ToolCallsExceeded,
    ToolRoundsExceeded,
)
from agentos.events import Event, Meta, RunStatus
from agentos.http import AgentOS
from agentos.models import ChatModel, EchoModel, Model
from agentos.records import RunRecord
from agentos.runs import RunManager
from agentos.sessions import MessageRecord, Session, SessionRecord
from agentos.settings import Settings
from agentos.tools import Tool, tool

if _TYPE_CHECKING:
    from agentos.models.openai import OpenAIChat

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentOS",
    "AgentOSError",
    "ChatModel",
    "Component",
    "ComponentNotFound",
    "EchoModel",
    "Event",
    "EventsUnavailable",
    "InvalidCursor",
    "InvalidRequest",
    "MessageRecord",
    "Meta",
    "Model",
    "ModelError",
    "ModelTimeout",
    "ModelUnavailable",
    "NotAuthenticated",
    "NotAuthorized",
    "OpenAIChat",
    "Overloaded",
    "ReplyTooLarge",
    "RequestTimeout",
    "RequestTooLarge",
    "RunAlreadyExists",
    "RunContext",
    "RunManager",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "SQLStore",
    "Session",
    "SessionActive",
    "SessionNotFound",
    "SessionRecord",
    "Settings",
    "ShuttingDown",
    "Step",
    "Store",
    "Team",
    "Tool",
    "ToolCallsExceeded",
    "ToolRoundsExceeded",
    "Workflow",
    "__version__",
    "tool",
]


def __getattr__(name: str) -> _Any:
    # OpenAIChat needs the optional openai package: imported on first use.
    if name == "OpenAIChat":
        from agentos.models.openai import OpenAIChat

        return OpenAIChat
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
