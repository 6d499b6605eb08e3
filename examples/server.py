"""Serve your own components: ``agentos serve examples.server:agent_os``."""

from collections.abc import AsyncIterator

from agentos import Agent, AgentOS, EchoModel, Team, Workflow


async def shout(message: str) -> AsyncIterator[str]:
    for word in message.split():
        yield word.upper() + " "


async def count_words(text: str) -> str:
    return f"{len(text.split())} words"


agent_os = AgentOS(
    agents=[Agent(id="shout", fn=shout, description="Shouts the message back")],
    teams=[Team(id="duo", members=[Agent(id="one", model=EchoModel()), Agent(id="two", fn=shout)])],
    workflows=[Workflow(id="count", steps=[Agent(id="echo", model=EchoModel()), count_words])],
)
