"""agentos: run agents, teams and workflows in the background and stream resumable events.

The names below are imported on first use (PEP 562), so that ``import agentos.cli`` for a client
command does not load the server, SQLAlchemy and the models.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
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
    from agentos.models.openai import OpenAIChat
    from agentos.records import RunRecord
    from agentos.runs import RunManager
    from agentos.sessions import MessageRecord, Session, SessionRecord
    from agentos.settings import Settings
    from agentos.tools import Tool, tool

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


_LAZY = {
    "Agent": "agentos.components",
    "AgentOS": "agentos.http",
    "AgentOSError": "agentos.errors",
    "ChatModel": "agentos.models",
    "Component": "agentos.components",
    "ComponentNotFound": "agentos.errors",
    "EchoModel": "agentos.models",
    "Event": "agentos.events",
    "EventsUnavailable": "agentos.errors",
    "InvalidCursor": "agentos.errors",
    "InvalidRequest": "agentos.errors",
    "MessageRecord": "agentos.sessions",
    "Meta": "agentos.events",
    "Model": "agentos.models",
    "ModelError": "agentos.errors",
    "ModelTimeout": "agentos.errors",
    "ModelUnavailable": "agentos.errors",
    "NotAuthenticated": "agentos.errors",
    "NotAuthorized": "agentos.errors",
    "OpenAIChat": "agentos.models.openai",
    "Overloaded": "agentos.errors",
    "ReplyTooLarge": "agentos.errors",
    "RequestTimeout": "agentos.errors",
    "RequestTooLarge": "agentos.errors",
    "RunAlreadyExists": "agentos.errors",
    "RunContext": "agentos.context",
    "RunManager": "agentos.runs",
    "RunNotFound": "agentos.errors",
    "RunRecord": "agentos.records",
    "RunStatus": "agentos.events",
    "SQLStore": "agentos.backends.sql",
    "Session": "agentos.sessions",
    "SessionActive": "agentos.errors",
    "SessionNotFound": "agentos.errors",
    "SessionRecord": "agentos.sessions",
    "Settings": "agentos.settings",
    "ShuttingDown": "agentos.errors",
    "Step": "agentos.components",
    "Store": "agentos.backends",
    "Team": "agentos.components",
    "Tool": "agentos.tools",
    "ToolCallsExceeded": "agentos.errors",
    "ToolRoundsExceeded": "agentos.errors",
    "Workflow": "agentos.components",
    "tool": "agentos.tools",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
