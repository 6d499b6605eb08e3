"""The built-in demo served by ``agentos serve`` with no app: an echo agent, team and workflow."""

from __future__ import annotations

from agentos.components import Agent, Team, Workflow
from agentos.http import AgentOS
from agentos.models import EchoModel
from agentos.settings import Settings

__all__ = ["demo_os"]


def demo_os(settings: Settings | None = None) -> AgentOS:
    """``agents/echo``, ``teams/echo-team`` (two echo members) and ``workflows/echo-workflow``
    (two steps), streaming word by word with ``demo_delay`` seconds per word."""
    settings = settings if settings is not None else Settings.from_env()
    delay = settings.demo_delay
    echo = Agent(
        id="echo", model=EchoModel(delay), name="Echo", description="Streams the message back"
    )
    team = Team(
        id="echo-team",
        name="Echo team",
        description="Two echo members, one after the other",
        members=[
            Agent(id="echo-a", model=EchoModel(delay, prefix="A: ")),
            Agent(id="echo-b", model=EchoModel(delay, prefix="B: ")),
        ],
    )
    workflow = Workflow(
        id="echo-workflow",
        name="Echo workflow",
        description="Drafts an echo, then reviews it",
        steps=[
            Agent(id="draft", model=EchoModel(delay)),
            Agent(id="review", model=EchoModel(delay, prefix="Reviewed: ")),
        ],
    )
    return AgentOS(agents=[echo], teams=[team], workflows=[workflow], settings=settings)
