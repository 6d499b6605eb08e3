"""``GET /metrics`` for model runs: tokens from each call's usage chunk and tool calls by outcome,
counted for the component served (a team's members and delegations count as the team's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from agentos import Agent, AgentOS, EchoModel, OpenAIChat, Settings, Team, tool
from agentos.context import Meter
from tests.fake_openai import MODEL, FakeOpenAI, text_reply, tool_reply
from tests.server.http.test_metrics import parse, value
from tests.servers import ThreadServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def chat_model(fake: FakeOpenAI) -> OpenAIChat:
    return OpenAIChat(model=MODEL, base_url=fake.base_url, api_key="k")  # type: ignore[attr-defined]


def lookup(city: str) -> str:
    """Look up a city's weather."""
    return f"sunny in {city}"


def broken(city: str) -> str:
    """Always fails."""
    raise RuntimeError("no forecast")


@tool(timeout=0.2)
async def slow(city: str) -> str:
    """Takes far longer than its time limit."""
    await asyncio.sleep(30)
    return "late"


def agent_os(fake: FakeOpenAI, settings: Settings) -> AgentOS:
    weather = Agent(id="weather", model=chat_model(fake), tools=[lookup, broken, slow])
    plain = Agent(id="plain", model=chat_model(fake))
    desk = Team(
        id="desk",
        mode="coordinate",
        model=chat_model(fake),
        members=[
            Agent(id="researcher", model=chat_model(fake)),
            Agent(id="writer", model=EchoModel()),
        ],
    )
    return AgentOS(agents=[weather, plain], teams=[desk], settings=settings)


async def test_tokens_and_tool_calls_move_with_model_runs(
    fake: FakeOpenAI, settings: Settings, serve_thread: Callable[[AgentOS], ThreadServer]
) -> None:
    url = serve_thread(agent_os(fake, settings)).url
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def scrape() -> Samples:
            return parse((await http.get("/metrics")).text)

        async def run(path: str) -> None:
            response = await http.post(path, json={"message": "go", "stream": False})
            assert response.json()["status"] == "COMPLETED", response.text

        def tokens(samples: Samples, kind: str, component: str) -> tuple[float, float]:
            labels = {"kind": kind, "component": component}
            prompt = value(samples, "agentos_model_tokens_total", type="prompt", **labels)
            completion = value(samples, "agentos_model_tokens_total", type="completion", **labels)
            return prompt, completion

        def tool_calls(samples: Samples, component: str) -> dict[str, float]:
            labels = {"kind": "agents", "component": component}
            return {
                outcome: value(samples, "agentos_tool_calls_total", outcome=outcome, **labels)
                for outcome in ("completed", "error", "timeout")
            }

        before = await scrape()
        assert tokens(before, "agents", "weather") == (0, 0)
        fake.script(
            tool_reply(
                [
                    ("c1", "lookup", '{"city": "Paris"}'),
                    ("c2", "broken", '{"city": "Rome"}'),
                    ("c3", "slow", '{"city": "Oslo"}'),
                    ("c4", "no_such_tool", "{}"),
                    ("c5", "lookup", '{"town": "Paris"}'),  # invalid arguments
                ],
                usage=(20, 9),
            ),
            text_reply(["Sunny", " in Paris"], usage=(40, 5)),
        )
        await run("/agents/weather/runs")
        after_weather = await scrape()
        assert tokens(after_weather, "agents", "weather") == (60, 14)
        assert tool_calls(after_weather, "weather") == {"completed": 1, "error": 3, "timeout": 1}
        assert tokens(after_weather, "agents", "plain") == (0, 0)

        fake.script(text_reply(["Hi"], usage=(3, 1)))
        await run("/agents/plain/runs")
        fake.script(
            tool_reply([("d1", "delegate_to_researcher", '{"task": "facts"}')]),  # leader (20, 9)
            text_reply(["Facts"]),  # the researcher (11, 7)
            tool_reply([("d2", "delegate_to_writer", '{"task": "write"}')]),  # leader (20, 9)
            text_reply(["Done"]),  # leader (11, 7)
        )
        await run("/teams/desk/runs")
        after = await scrape()
    assert tokens(after, "agents", "plain") == (3, 1)
    assert tokens(after, "agents", "weather") == (60, 14)  # the others' runs add nothing here
    assert tokens(after, "teams", "desk") == (62, 32)  # the leader's three calls and a member's
    delegations = {"kind": "teams", "component": "desk", "outcome": "completed"}
    assert value(after, "agentos_tool_calls_total", **delegations) == 2
    assert value(after, "agentos_tool_calls_total", kind="agents", component="researcher") == 0


def test_a_meter_ignores_token_counts_no_model_call_could_have() -> None:
    meter = Meter()
    meter.count_tokens(-5, 7)
    meter.count_tokens(3, 2**80)  # a broken server's number: capped, a scrape still renders
    assert (meter.prompt_tokens, meter.completion_tokens) == (3, 7 + 2**32)
