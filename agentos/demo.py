"""The built-in demo served by ``agentos serve`` with no app: an echo agent, team and workflow,
and with ``AGENTOS_MODEL`` set, an ``assistant`` agent on that model with two harmless tools."""

from __future__ import annotations

import ast
import datetime
import operator
import zoneinfo
from collections.abc import Callable
from typing import Any

from agentos.components import Agent, Component, Team, Workflow
from agentos.http import AgentOS
from agentos.models import EchoModel
from agentos.settings import Settings

__all__ = ["assistant", "calculate", "current_time", "demo_os"]


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
    agents: list[Component] = [echo]
    if settings.agents.model:
        agents.append(assistant(settings.agents.model))
    return AgentOS(agents=agents, teams=[team], workflows=[workflow], settings=settings)


def assistant(model_name: str) -> Agent:
    """The demo's ``assistant``: ``model_name`` behind ``OPENAI_BASE_URL`` with
    ``OPENAI_API_KEY`` (the openai SDK's variables), and two tools."""
    try:
        from agentos.models.openai import OpenAIChat
    except ImportError as exc:
        raise SystemExit(f"agentos: AGENTOS_MODEL is set, but {exc}") from None
    try:
        model = OpenAIChat(model=model_name)
    except ValueError as exc:
        raise SystemExit(f"agentos: AGENTOS_MODEL is set, but {exc}") from None
    return Agent(
        id="assistant",
        name="Assistant",
        description=f"{model_name}, with a clock and a calculator",
        model=model,
        instructions=(
            "You are a helpful assistant. Use the tools for the current time and for "
            "arithmetic instead of guessing. Answer briefly."
        ),
        tools=[current_time, calculate],
    )


def current_time(timezone: str = "UTC") -> str:
    """The current date and time in a time zone.

    Args:
        timezone: an IANA time zone name, such as UTC or Europe/Paris
    """
    try:
        zone = zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    return datetime.datetime.now(zone).isoformat(timespec="seconds")


_OPERATORS: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_MAX_EXPRESSION = 200
_MAX_NUMBER = 10**100


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses.

    Args:
        expression: for example (2 + 3) * 4.5 / 7
    """
    if len(expression) > _MAX_EXPRESSION:
        raise ValueError(f"expressions are limited to {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    return repr(_evaluate(tree.body))


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        if isinstance(node.value, bool):
            raise ValueError("only numbers, + - * / // % ** and parentheses are allowed")
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        result: int | float = _OPERATORS[type(node.op)](_evaluate(node.operand))
        return result
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ValueError("exponents are limited to 100")
        result = _OPERATORS[type(node.op)](left, right)
        if abs(result) > _MAX_NUMBER:
            raise ValueError("the result is too large")
        return result
    raise ValueError("only numbers, + - * / // % ** and parentheses are allowed")
