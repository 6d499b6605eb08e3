"""Tools: plain typed Python functions an agent's model may call.

The JSON schema a model sees comes from the function's signature, type hints and docstring;
pydantic validates the model's arguments against it before the function runs::

    @tool
    def add(a: float, b: float) -> float:
        \"\"\"Add two numbers.

        Args:
            a: the first number
            b: the second number
        \"\"\"
        return a + b

    @tool(name="now", timeout=5)
    async def current_time(timezone: str = "UTC") -> str: ...

    agent = Agent(id="calc", model=OpenAIChat(model="..."), tools=[add, current_time])

A plain function given in ``tools=[...]`` is wrapped as if decorated. Sync functions run in a
worker thread. :meth:`Tool.execute` returns the text sent back to the model, cut to
``result_bytes``, or raises :class:`ToolFailed` (invalid arguments, an exception, a timeout),
whose message the agent sends back to the model instead so it can recover.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, overload

import pydantic

from agentos.errors import describe_error
from agentos.events import dumps
from agentos.models.base import ToolSpec

__all__ = ["Tool", "ToolFailed", "ToolTimedOut", "as_tools", "tool"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PARAM_LINE = re.compile(r"^\s*(?::param\s+)?\*{0,2}(\w+)(?:\s*\([^)]*\))?\s*:\s*(.*)$")
_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:\s*$", re.IGNORECASE)
_OTHER_SECTION = re.compile(
    r"^\s*(Returns?|Raises|Yields|Examples?|Notes?)\s*:\s*$|^\s*:(returns?|raises?|rtype)\b",
    re.IGNORECASE,
)


class ToolFailed(Exception):
    """A tool call that did not produce a result; the message goes back to the model."""


class ToolTimedOut(ToolFailed):
    """A tool call that ran past its time limit."""


def _parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The summary (text before the first section) and each parameter's description."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    in_args = False
    current: str | None = None
    for line in lines:
        if _SECTION.match(line):
            in_args, current = True, None
            continue
        if _OTHER_SECTION.match(line):
            in_args, current = False, None
            continue
        sphinx = line.strip().startswith(":param ")
        match = _PARAM_LINE.match(line) if (in_args or sphinx) else None
        if match:
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif (in_args or current) and line.strip() and current is not None:
            params[current] = f"{params[current]} {line.strip()}".strip()
        elif not params and not in_args:
            summary.append(line)
    return " ".join(" ".join(summary).split()), params


class Tool:
    """A function the model may call, with its name, description and argument schema.

    Build one with :func:`tool`. ``timeout`` (seconds) and ``result_bytes`` override the
    ``tool_timeout`` and ``tool_result_bytes`` settings for this tool.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        result_bytes: int | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError("a tool wraps a function")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", ""))
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"tool name must be 1 to 64 of [A-Za-z0-9_-], got {self.name!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be above 0")
        if result_bytes is not None and result_bytes <= 0:
            raise ValueError("result_bytes must be above 0")
        self.timeout = timeout
        self.result_bytes = result_bytes
        self.is_async = inspect.iscoroutinefunction(fn)
        summary, param_docs = _parse_docstring(inspect.getdoc(fn))
        self.description = description if description is not None else summary
        self._arguments = _arguments_model(fn, self.name, param_docs)
        schema = self._arguments.model_json_schema()
        schema.pop("title", None)
        self.parameters: dict[str, Any] = schema

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r})"

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    def validate(self, arguments: str) -> dict[str, Any]:
        """The model's JSON arguments, checked against the signature; raises ToolFailed."""
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise ToolFailed(f"arguments are not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ToolFailed("arguments must be a JSON object")
        try:
            model = self._arguments.model_validate(parsed)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            )
            raise ToolFailed(f"invalid arguments: {problems}") from None
        return {field: getattr(model, field) for field in type(model).model_fields}

    async def execute(
        self,
        arguments: str,
        *,
        timeout: float,
        result_bytes: int,
        threads: ToolThreads | None = None,
    ) -> str:
        """Validate, call with a time limit, and return the result as text for the model.

        A sync tool runs in ``threads`` (a private pool of one thread when none is given).
        """
        kwargs = self.validate(arguments)
        limit = self.timeout if self.timeout is not None else timeout
        try:
            async with asyncio.timeout(limit or None):
                if self.is_async:
                    result = await self.fn(**kwargs)
                else:
                    pool = threads if threads is not None else ToolThreads(1)
                    result = await pool.call(self.fn, kwargs)
                    if inspect.isawaitable(result):
                        result = await result
        except TimeoutError:
            raise ToolTimedOut(f"timed out after {limit:g} s") from None
        except Exception as exc:
            raise ToolFailed(describe_error(exc)) from exc
        text = result if isinstance(result, str) else dumps(result)
        return _cut(text, self.result_bytes if self.result_bytes is not None else result_bytes)


class ToolThreads:
    """The threads sync tools run in: at most ``size`` at once.

    Python cannot stop a thread: a sync tool that outlives its timeout keeps its thread until
    the function returns. Counting those, a pool whose threads all hang refuses further sync
    calls at once (a ToolCallError the model sees) instead of queueing them for ever; async tools
    are never affected. A sync tool that never returns also holds up the process's exit, so
    long-running tools should be async.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.busy = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.size, thread_name_prefix="agentos-tool"
        )

    async def call(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if self.busy >= self.size:
            raise ToolFailed(
                f"all {self.size} threads for sync tools are busy (calls still running past "
                "their timeout); try again later"
            )
        loop = asyncio.get_running_loop()
        self.busy += 1
        work = self._executor.submit(functools.partial(fn, **kwargs))
        # Released when the function returns, not when the caller stops waiting.
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(work)

    def _release(self) -> None:
        self.busy -= 1

    def shutdown(self) -> None:
        """Take no more calls; threads still running end when their function returns."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _arguments_model(
    fn: Callable[..., Any], name: str, docs: dict[str, str]
) -> type[pydantic.BaseModel]:
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception as exc:
        raise TypeError(f"tool {name!r}: cannot resolve its type hints ({exc})") from exc
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args and **kwargs cannot be described to a model")
        if param.kind is param.POSITIONAL_ONLY:
            raise TypeError(f"tool {name!r}: positional-only parameters are not supported")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (
            annotation,
            pydantic.Field(default, description=docs.get(param.name)),
        )
    config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=False)
    model: type[pydantic.BaseModel] = pydantic.create_model(
        f"{name}_arguments", __config__=config, **fields
    )
    return model


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` UTF-8 bytes, saying how much was cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    kept = data[:limit].decode("utf-8", "ignore")
    return f"{kept}\n[truncated: {len(data) - limit} more bytes]"


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    result_bytes: int | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    result_bytes: int | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a :class:`Tool`: ``@tool`` or ``@tool(name=..., timeout=...)``."""

    def wrap(function: Callable[..., Any]) -> Tool:
        return Tool(
            function,
            name=name,
            description=description,
            timeout=timeout,
            result_bytes=result_bytes,
        )

    return wrap if fn is None else wrap(fn)


def as_tools(tools: Sequence[Tool | Callable[..., Any]]) -> dict[str, Tool]:
    """Tools by name; plain functions are wrapped. Raises ValueError on a repeated name."""
    result: dict[str, Tool] = {}
    for item in tools:
        found = item if isinstance(item, Tool) else Tool(item)
        if found.name in result:
            raise ValueError(f"two tools are named {found.name!r}")
        result[found.name] = found
    return result
