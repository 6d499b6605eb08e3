"""Components and apps the tests serve (in-process and in subprocesses)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from agentos import Agent, AgentOS, EchoModel, Settings, Team, Workflow


def words(n: int, tag: str = "w") -> str:
    """A message of ``n`` numbered words: ``w0 w1 w2 ...``."""
    return " ".join(f"{tag}{i}" for i in range(n))


WORDS = words(20)


def flaky(failures: int, slow_first: float = 0.0) -> Callable[[str], AsyncIterator[str]]:
    """An agent function that raises the first ``failures`` times it sees a message, and is
    ``slow_first`` seconds slow the first time (each call makes one with its own count)."""
    seen: dict[str, int] = {}

    async def agent(message: str) -> AsyncIterator[str]:
        count = seen[message] = seen.get(message, 0) + 1
        yield f"attempt {count} "
        if count == 1 and slow_first:
            await asyncio.sleep(slow_first)
        if count <= failures:
            raise ConnectionError(f"upstream gone ({count})")
        yield "done"

    return agent


async def _fails_midway(message: str) -> AsyncIterator[str]:
    for word in message.split()[:3]:
        await asyncio.sleep(0.01)
        yield word + " "
    raise RuntimeError("the tool broke")


async def _tools(message: str) -> AsyncIterator[object]:
    yield {"event": "ToolCallStarted", "tool_name": "upper", "tool_args": {"text": message}}
    yield {"event": "ToolCallCompleted", "tool_name": "upper", "result": message.upper()}
    yield message.upper()


async def _shout(text: str) -> str:
    await asyncio.sleep(0.01)
    return text.upper()


#: The retry policies of ``durable`` (one retry) and ``tenacious`` (four, and five times slower
#: words: long runs at a low event rate): at once, no jitter.
RETRY_ONCE = {"max_attempts": 2, "delay": 0, "jitter": 0}
RETRY_OFTEN = {"max_attempts": 5, "delay": 0, "jitter": 0}


def components(delay: float) -> dict[str, list[object]]:
    return {
        "agents": [
            Agent(id="echo", model=EchoModel(delay)),
            Agent(id="durable", model=EchoModel(delay), retry_policy=RETRY_ONCE),
            Agent(id="tenacious", model=EchoModel(delay * 5), retry_policy=RETRY_OFTEN),
            Agent(id="fails", fn=_fails_midway),
            Agent(id="tools", fn=_tools),
        ],
        "teams": [
            Team(
                id="team",
                members=[
                    Agent(id="m1", model=EchoModel(delay, prefix="one: ")),
                    Agent(id="m2", model=EchoModel(delay, prefix="two: ")),
                ],
            ),
            Team(
                id="parallel-team",
                mode="parallel",
                members=[
                    Agent(id="p1", model=EchoModel(delay)),
                    Agent(id="p2", model=EchoModel(delay)),
                ],
            ),
        ],
        "workflows": [
            Workflow(
                id="flow",
                steps=[Agent(id="draft", model=EchoModel(delay)), _shout],
            )
        ],
    }


def build(settings: Settings) -> AgentOS:
    parts = components(settings.demo_delay)
    return AgentOS(
        agents=parts["agents"],  # type: ignore[arg-type]
        teams=parts["teams"],  # type: ignore[arg-type]
        workflows=parts["workflows"],  # type: ignore[arg-type]
        settings=settings,
    )


def agent_os() -> AgentOS:
    """For subprocess servers: ``agentos serve tests.apps:served`` reads AGENTOS_* variables."""
    return build(Settings.from_env())


def __getattr__(name: str) -> object:
    # Built lazily so importing this module in tests does not read the environment.
    if name == "served":
        return agent_os()
    if name == "served_app":  # for plain ``uvicorn tests.apps:served_app``
        return agent_os().app
    raise AttributeError(name)
