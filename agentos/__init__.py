"""agentos: run agents, teams and workflows in the background and stream resumable events."""

from agentos.agent import Agent
from agentos.app import AgentOS
from agentos.component import Component
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
    RequestTooLarge,
    RunAlreadyExists,
    RunNotFound,
    ShuttingDown,
)
from agentos.events import Event, Meta, RunStatus
from agentos.models import EchoModel, Model
from agentos.runs import RunManager
from agentos.settings import Settings
from agentos.store import RunRecord, SQLStore, Store
from agentos.team import Team
from agentos.workflow import Step, Workflow

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
