"""Components: what runs. The :class:`Component` contract (``base``), agents, teams, workflows."""

from agentos.components.agent import Agent
from agentos.components.base import Component
from agentos.components.team import Team
from agentos.components.workflow import Step, Workflow

__all__ = ["Agent", "Component", "Step", "Team", "Workflow"]
