"""Your own agents on your model: ``agentos serve examples.assistant:agent_os``.

Needs ``pip install 'agentos[openai]'``, ``OPENAI_API_KEY`` (any value for a local server),
``OPENAI_BASE_URL`` for a server other than OpenAI, and ``MODEL`` (default ``gpt-4o-mini``).
"""

from __future__ import annotations

import os

from agentos import Agent, AgentOS, OpenAIChat, Settings, Team, tool


@tool
def word_count(text: str) -> int:
    """Count the words of a text.

    Args:
        text: the text to count
    """
    return len(text.split())


def build(model_name: str | None = None, settings: Settings | None = None) -> AgentOS:
    model = OpenAIChat(model=model_name or os.environ.get("MODEL", "gpt-4o-mini"))
    counter = Agent(
        id="counter",
        model=model,
        instructions="Count words with the word_count tool; never count yourself.",
        tools=[word_count],
        description="counts words",
    )
    editor = Agent(
        id="editor",
        model=model,
        instructions="Make the text shorter.",
        description="shortens texts",
    )
    desk = Team(
        id="desk",
        mode="coordinate",
        model=model,
        instructions="Have the editor shorten the text, then the counter count the result.",
        members=[counter, editor],
    )
    return AgentOS(agents=[counter, editor], teams=[desk], settings=settings)


def __getattr__(name: str) -> object:
    # Built on first use, so importing this module reads no environment.
    if name == "agent_os":
        return build()
    raise AttributeError(name)
