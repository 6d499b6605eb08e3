"""agentos: run agents, teams and workflows in the background and stream resumable events."""

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
    NotAuthenticated,
    NotAuthorized,
    Overloaded,
    RequestTimeout,
    RequestTooLarge,
    RunAlreadyExists,
    RunNotFound,
    ShuttingDown,
)
from agentos.events import Event, Meta, RunStatus
from agentos.http import AgentOS
from agentos.models import EchoModel, Model
from agentos.records import RunRecord
from agentos.runs import RunManager
from agentos.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentOS",
    "AgentOSError",
    "Component",
    "ComponentNotFound",
    "EchoModel",
    "Event",
    "EventsUnavailable",
    "InvalidCursor",
    "InvalidRequest",
    "Meta",
    "Model",
    "NotAuthenticated",
    "NotAuthorized",
    "Overloaded",
    "RequestTimeout",
    "RequestTooLarge",
    "RunAlreadyExists",
    "RunContext",
    "RunManager",
    "RunNotFound",
    "RunRecord",
    "RunStatus",
    "SQLStore",
    "Settings",
    "ShuttingDown",
    "Step",
    "Store",
    "Team",
    "Workflow",
    "__version__",
]
