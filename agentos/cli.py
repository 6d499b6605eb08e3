"""The ``agentos`` command: serve an app, or look at a running server over HTTP.

::

    agentos serve [module:app] [--host H] [--port P] [--log-level L]
    agentos health
    agentos agents list | agents get ID             (and teams, workflows)
    agentos agents pause ID | agents resume ID     (admin; and teams, workflows)
    agentos runs list agents/echo [--status S] [--session-id S] [--limit N]
    agentos runs get agents/echo RUN_ID
    agentos runs tail agents/echo RUN_ID [--from N]     follows live, resumes after drops
    agentos runs cancel agents/echo RUN_ID
    agentos sessions list [--user-id U] [--component KIND[/ID]] [--limit N]
    agentos sessions get SESSION_ID [--limit N]        runs, oldest first, and their messages
    agentos sessions delete SESSION_ID
    agentos tasks list [--component KIND[/ID]] [--active/--paused] [--tag T] [--limit N]
    agentos tasks get TASK_ID | tasks runs TASK_ID [--status S] [--limit N]
    agentos tasks create agents/echo MESSAGE [--every S | --cron EXPR [--timezone Z] | --at T] ...
    agentos tasks pause TASK_ID | tasks resume TASK_ID | tasks delete TASK_ID
    agentos tasks trigger TASK_ID [--wait [--wait-seconds N]]   exit 1 when the run failed
    agentos db upgrade [--url DB_URL]                  the database schema to this release's

Client commands talk to ``--url`` (``AGENTOS_URL``, default http://127.0.0.1:7777) with the key
from ``AGENTOS_SECURITY_KEY`` (or ``AGENTOS_API_KEY``), through ``agentos_client``; ``--json``
prints what the server answered. Exit codes: 0 ok; 1 the run a command waited for ended in
ERROR or CANCELLED; 2 usage error, not found or refused (4xx); 3 server unreachable or
unavailable (5xx).

Beyond plain uvicorn, ``serve`` puts a deadline on request heads, caps open connections and
rate-limits the log of failing accepts (``http/server.py``; settings ``http_header_timeout``,
``http_max_connections``, ``accept_error_log_interval``), and logs as text or JSON lines
(``logs.py``; setting ``log_format``). It raises its soft open-file limit to the hard one (each
stream is a socket) and warns when ``max_streams`` streams would not fit under it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
import uvicorn
from agentos_client import (
    APIStatusError,
    AsyncClient,
    ClientError,
    Run,
    RunEvent,
    RunFailed,
    TransportError,
)
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["main"]

T = TypeVar("T")

#: Exit codes (README, "Command line").
EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
_KINDS = ("agents", "teams", "workflows")
#: The field of a run object that names its component, by kind.
_ID_FIELDS = (("agents", "agent_id"), ("teams", "team_id"), ("workflows", "workflow_id"))
_DEFAULT_URL = "http://127.0.0.1:7777"

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> NoReturn:
    _err.print(Text(f"agentos: {message}"))
    sys.exit(code)


_url = click.option(
    "--url",
    envvar="AGENTOS_URL",
    default=_DEFAULT_URL,
    show_default=True,
    help="The server (env AGENTOS_URL).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Run agentos, or look at a running server (key from AGENTOS_SECURITY_KEY or AGENTOS_API_KEY).

    Exit codes: 0 ok, 1 a run waited for ended in ERROR or CANCELLED, 2 usage error, not found
    or refused, 3 server unreachable or unavailable.
    """


# -- serve -------------------------------------------------------------------------------------


@cli.command()
@click.argument("app", required=False, metavar="[MODULE:APP]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=7777, show_default=True, type=int, help="Port to bind.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(
        ["critical", "error", "warning", "info", "debug", "trace"], case_sensitive=False
    ),
    help="Log level; the format is AGENTOS_LOG_FORMAT (text or json).",
)
def serve(app: str | None, host: str, port: int, log_level: str) -> None:
    """Serve MODULE:APP (an AgentOS, or an ASGI app built by one) under uvicorn; with no app, the
    built-in demo (agents/echo, teams/echo-team, workflows/echo-workflow)."""
    from agentos import logs
    from agentos.http import AgentOS
    from agentos.http.server import (
        AcceptErrorFilter,
        default_max_connections,
        guarded_protocol,
        open_files_warning,
        raise_open_file_limit,
    )
    from agentos.settings import Settings

    limits = raise_open_file_limit()  # one stream is one socket: before the cap is computed

    try:
        env_settings = Settings.from_env()
    except (TypeError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)
    monitoring = env_settings.monitoring
    context = logs.configure(
        log_level,
        monitoring.log_format,
        flood_lines=monitoring.log_flood_lines,
        flood_interval=monitoring.log_flood_interval,
    )
    if app:
        target = _load(app)
    else:
        from agentos.demo import demo_os

        target = demo_os(env_settings)
    agent_os = (
        target
        if isinstance(target, AgentOS)
        else getattr(target.state, "agent_os", None)
        if hasattr(target, "state")
        else None
    )
    asgi = target.app if isinstance(target, AgentOS) else target
    settings = agent_os.settings if agent_os is not None else env_settings
    context.instance = settings.instance_id
    http = settings.http
    grace = settings.runs.shutdown_grace + http.graceful_shutdown_extra
    logging.getLogger("asyncio").addFilter(AcceptErrorFilter(http.accept_error_log_interval))
    protocol = guarded_protocol(
        http.header_timeout, http.max_connections or default_max_connections()
    )
    log = logging.getLogger("agentos.serve")
    if limits is not None and limits[0] != limits[1]:
        log.debug("open-file limit raised from %d to %d", *limits)
    too_many = open_files_warning(settings.streams.max_open, http.max_connections)
    if too_many:
        log.warning(too_many)
    config = uvicorn.Config(
        asgi,
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,  # logs.configure() set the handler; uvicorn's loggers propagate to it
        timeout_graceful_shutdown=int(grace),
        http=protocol,
    )
    server = _Server(config, agent_os)
    server.run()
    if not server.started:  # start-up failed (e.g. an outdated schema): the log says why
        sys.exit(EXIT_UNAVAILABLE)


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        _fail(f"expected module:attribute, got {target!r}", EXIT_USAGE)
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _fail(f"cannot import {module_name} ({exc})", EXIT_USAGE)
    except SyntaxError as exc:  # a typo in the app: where it is, not a traceback
        _fail(
            f"cannot import {module_name}: {exc.msg} ({exc.filename}, line {exc.lineno})",
            EXIT_USAGE,
        )
    try:
        return getattr(module, attr)
    except AttributeError:
        _fail(f"{module_name} has no attribute {attr!r}", EXIT_USAGE)


class _Server(uvicorn.Server):
    """uvicorn, plus agentos's drain before uvicorn's shutdown.

    The first SIGTERM/SIGINT starts the drain (new runs get 503 ``shutting_down``, running ones
    get ``shutdown_grace``) while the server still listens, so that load balancers and probes
    polling with new connections see it: ``/health`` answers 503 ``draining`` and
    ``/health/ready`` 503, rather than a refused connection. Once no run executes here (at
    most ``shutdown_grace`` + ``shutdown_cancel_grace`` seconds), uvicorn's shutdown closes the
    listener and waits for the open streams. A second signal starts uvicorn's shutdown at once
    (the runs still get the rest of their grace).
    """

    def __init__(self, config: uvicorn.Config, agent_os: Any) -> None:
        super().__init__(config)
        self.agent_os = agent_os
        self._draining: asyncio.Task[None] | None = None
        self._drain_requested = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.agent_os is None or self.should_exit or self._drain_requested:
            super().handle_exit(sig, frame)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop yet: nothing to drain
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        # A signal handler interrupts the loop's own code: start the drain from the loop.
        loop.call_soon_threadsafe(self._start_drain, sig, frame)

    def _start_drain(self, sig: int, frame: Any) -> None:
        self.agent_os.begin_shutdown()
        self._draining = asyncio.get_running_loop().create_task(
            self._drain(sig, frame), name="agentos-drain"
        )

    async def _drain(self, sig: int, frame: Any) -> None:
        runs = self.agent_os.settings.runs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + runs.shutdown_grace + runs.cancel_grace
        manager = self.agent_os.manager
        while manager.active_runs and loop.time() < deadline and not self.should_exit:
            await asyncio.sleep(0.05)
        if not self.should_exit:
            super().handle_exit(sig, frame)


# -- the client commands -----------------------------------------------------------------------


def _key() -> str | None:
    return os.environ.get("AGENTOS_SECURITY_KEY") or os.environ.get("AGENTOS_API_KEY") or None


def _call(url: str, work: Callable[[AsyncClient], Awaitable[T]], **options: Any) -> T:
    """Run ``work`` with a client; client errors become a one-line message and an exit code."""

    async def go() -> T:
        async with AsyncClient(url, _key(), **options) as client:
            return await work(client)

    try:
        return asyncio.run(go())
    except TransportError as exc:
        _fail(f"cannot reach {url}: {exc}", EXIT_UNAVAILABLE)
    except APIStatusError as exc:
        _fail(str(exc), EXIT_UNAVAILABLE if exc.status_code >= 500 else EXIT_USAGE)
    except ClientError as exc:
        _fail(str(exc), EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        sys.exit(130)


def _component(value: str) -> tuple[str, str]:
    kind, slash, component_id = value.partition("/")
    if not slash or kind not in _KINDS or not component_id:
        raise click.BadParameter(f"expected KIND/ID with KIND one of {', '.join(_KINDS)}")
    return kind, component_id


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _time(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_url
def health(url: str, as_json: bool) -> None:
    """The server's health: exit 0 when running or degraded, 3 when down, draining or
    unreachable."""

    data = _call(url, lambda c: c.health())
    if as_json:
        _print_json(data)
    else:
        table = Table(show_header=False, box=None)
        for name, value in data.items():
            if name != "checks":
                table.add_row(name, Text(str(value)))
        checks = data.get("checks")
        for name, check in (checks if isinstance(checks, dict) else {}).items():
            if isinstance(check, dict):
                facts = ", ".join(f"{k}={v}" for k, v in check.items() if k != "ok")
                verdict = "ok" if check.get("ok") else "failing"
                table.add_row(f"check {name}", Text(f"{verdict} ({facts})"))
        _out.print(table)
    if data.get("status") not in ("running", "degraded"):
        sys.exit(EXIT_UNAVAILABLE)


def _component_group(kind: str) -> click.Group:
    @click.group(name=kind, help=f"The {kind} a server serves.")
    def group() -> None:
        pass

    def listed(client: AsyncClient) -> Awaitable[list[dict[str, Any]]]:
        return client.list_components(kind)

    @group.command(name="list")
    @click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
    @_url
    def list_(url: str, as_json: bool) -> None:
        """List them."""
        items = _call(url, listed)
        if as_json:
            _print_json(items)
            return
        table = Table("id", "name", "description")
        for item in items:
            table.add_row(
                Text(str(item.get("id"))),
                Text(str(item.get("name") or "")),
                Text(_short(item.get("description") or "")),
            )
        _out.print(table)

    @group.command()
    @click.argument("component_id", metavar="ID")
    @click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
    @_url
    def get(url: str, component_id: str, as_json: bool) -> None:
        """Show one of them: description, version, tags, paused, stats of its runs."""
        found = _call(url, lambda c: c.get_component(kind, component_id))
        if as_json:
            _print_json(found)
            return
        table = Table(show_header=False, box=None)
        for name, value in found.items():
            table.add_row(name, Text(_short(value, 200)))
        _out.print(table)

    @group.command()
    @click.argument("component_id", metavar="ID")
    @_url
    def pause(url: str, component_id: str) -> None:
        """Pause one: new runs are refused (409) on every instance; runs going on finish."""
        _call(url, lambda c: c.pause_component(kind, component_id))
        _out.print(Text(f"{kind}/{component_id} paused"))

    @group.command()
    @click.argument("component_id", metavar="ID")
    @_url
    def resume(url: str, component_id: str) -> None:
        """Resume one that was paused: it takes new runs again."""
        _call(url, lambda c: c.resume_component(kind, component_id))
        _out.print(Text(f"{kind}/{component_id} resumed"))

    return group


for _kind in _KINDS:
    cli.add_command(_component_group(_kind))


@cli.group()
def runs() -> None:
    """The runs of one component, named KIND/ID (e.g. agents/echo)."""


_COMPONENT = click.argument("component", metavar="KIND/ID")


@runs.command(name="list")
@_COMPONENT
@click.option("--status", help="Only runs with this status (PENDING, RUNNING, COMPLETED ...).")
@click.option("--session-id", help="Only runs of this session.")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_url
def runs_list(
    url: str, component: str, status: str | None, session_id: str | None, limit: int, as_json: bool
) -> None:
    """List runs, newest first."""
    kind, component_id = _component(component)
    try:
        found = _call(
            url,
            lambda c: c.list_runs(
                kind, component_id, session_id=session_id, status=status, limit=limit
            ),
        )
    except ValueError:  # the client checks the status name
        raise click.BadParameter(f"unknown status {status!r}", param_hint="--status") from None
    if as_json:
        _print_json([run.data for run in found])
        return
    table = Table("run_id", "status", "created", "events", "session_id")
    for column in table.columns:
        column.no_wrap = True
    for run in found:
        table.add_row(
            run.run_id,
            run.status.value,
            _time(run.created_at),
            str(run.event_count or 0),
            Text(run.session_id or ""),
        )
    _out.print(table)


@runs.command(name="get")
@_COMPONENT
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_url
def runs_get(url: str, component: str, run_id: str, as_json: bool) -> None:
    """Show one run."""
    kind, component_id = _component(component)
    run = _call(url, lambda c: c.get_run(kind, component_id, run_id))
    if as_json:
        _print_json(run.data)
        return
    _print_run(run)


def _print_run(run: Run) -> None:
    table = Table(show_header=False, box=None)
    for name, value in run.data.items():
        if name in ("created_at", "updated_at"):
            value = f"{_time(value)} ({value})"
        table.add_row(name, Text(_short(value, 200) if value is not None else ""))
    _out.print(table)


@runs.command(name="cancel")
@_COMPONENT
@click.argument("run_id")
@_url
def runs_cancel(url: str, component: str, run_id: str) -> None:
    """Cancel a run (an ended run keeps its status); prints the status."""
    kind, component_id = _component(component)
    status = _call(url, lambda c: c.cancel(kind, component_id, run_id))
    _out.print(Text(status.value))


@runs.command(name="tail")
@_COMPONENT
@click.argument("run_id")
@click.option(
    "--from",
    "cursor",
    type=int,
    default=-1,
    show_default=True,
    help="Start after this event index (-1: from the first event).",
)
@click.option("--json", "as_json", is_flag=True, help="Print each event's JSON on one line.")
@click.option(
    "--max-reconnects",
    type=int,
    default=30,
    show_default=True,
    help="Reconnect attempts in a row before giving up (exit 3).",
)
@_url
def runs_tail(
    url: str, component: str, run_id: str, cursor: int, as_json: bool, max_reconnects: int
) -> None:
    """Follow a run's events live until it ends; resumes after a dropped connection or a server
    restart, each event printed once. Exit 0 when it completed, 1 when it ended in ERROR or
    CANCELLED."""
    kind, component_id = _component(component)
    if cursor < -1:
        raise click.BadParameter("must be -1 or more", param_hint="--from")

    async def work(client: AsyncClient) -> RunEvent | None:
        async with client.resume(kind, component_id, run_id, cursor) as stream:
            async for event in stream:
                if isinstance(event, RunEvent):
                    _print_event(event, as_json)
            return stream.terminal_event

    terminal = _call(url, work, max_reconnects=max_reconnects)
    if terminal is None:  # nothing after the cursor: the run had ended there
        run = _call(url, lambda c: c.get_run(kind, component_id, run_id))
        failed = run.status.value in ("ERROR", "CANCELLED")
    else:
        failed = terminal.event.endswith(("Error", "Cancelled"))
    sys.exit(EXIT_RUN_FAILED if failed else EXIT_OK)


@cli.group()
def sessions() -> None:
    """Sessions: the runs that share a session_id, with their messages."""


def _kind_filter(value: str | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if value in _KINDS:
        return value, None
    return _component(value)


@sessions.command(name="list")
@click.option("--user-id", help="Only sessions of this user.")
@click.option(
    "--component",
    metavar="KIND[/ID]",
    help="Only sessions of this kind or component (agents/echo).",
)
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_url
def sessions_list(
    url: str, user_id: str | None, component: str | None, limit: int, as_json: bool
) -> None:
    """List sessions, most recently active first (one line per session and component)."""
    try:
        kind, component_id = _kind_filter(component)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint="--component") from None
    found = _call(
        url,
        lambda c: c.list_sessions(
            user_id=user_id, kind=kind, component_id=component_id, limit=limit
        ),
    )
    if as_json:
        _print_json(found)
        return
    table = Table("session_id", "component", "user_id", "runs", "created", "updated")
    for column in table.columns[:2]:
        column.no_wrap = True
    for item in found:
        table.add_row(
            Text(str(item.get("session_id"))),
            Text(f"{item.get('kind')}/{item.get('component_id')}"),
            Text(str(item.get("user_id") or "")),
            str(item.get("run_count")),
            _time(item.get("created_at")),
            _time(item.get("updated_at")),
        )
    _out.print(table)


@sessions.command(name="get")
@click.argument("session_id")
@click.option(
    "--limit", type=int, default=None, help="Only the newest this many runs (default: all)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the session's JSON.")
@_url
def sessions_get(url: str, session_id: str, limit: int | None, as_json: bool) -> None:
    """Show a session: its runs, oldest first, and their messages."""
    if limit is not None and limit < 1:
        raise click.BadParameter("must be 1 or more", param_hint="--limit")
    found = _call(url, lambda c: c.get_session(session_id, limit=limit))
    if as_json:
        _print_json(found)
        return
    runs = Table("run_id", "component", "status", "created", "input", title="runs")
    runs.columns[0].no_wrap = True
    for run in found["runs"]:
        who = next((f"{k}/{run[f]}" for k, f in _ID_FIELDS if run.get(f) is not None), "")
        runs.add_row(
            Text(str(run.get("run_id"))),
            Text(who),
            str(run.get("status")),
            _time(run.get("created_at")),
            Text(_short(run.get("input") or "")),
        )
    _out.print(runs)
    if not found["messages"]:
        return
    messages = Table("run_id", "#", "role", "message", title="messages")
    messages.columns[0].no_wrap = True
    for message in found["messages"]:
        messages.add_row(
            Text(str(message.get("run_id"))),
            str(message.get("position")),
            Text(str(message.get("role"))),
            Text(_message_text(message)),
        )
    _out.print(messages)


def _message_text(message: dict[str, Any]) -> str:
    """A message's content, or the tool calls it asks for, on one line."""
    parts = [_short(message["content"], 120)] if message.get("content") else []
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        if isinstance(call, dict):
            parts.append(f"→ {call.get('name')}({_short(call.get('arguments') or '', 80)})")
    if message.get("tool_call_id"):
        parts.insert(0, f"[{message.get('name') or message['tool_call_id']}]")
    return " ".join(parts)


@sessions.command(name="delete")
@click.argument("session_id")
@_url
def sessions_delete(url: str, session_id: str) -> None:
    """Delete a session with its runs, their events and messages (refused while a run of it is
    going: cancel that first)."""
    _call(url, lambda c: c.delete_session(session_id))
    _out.print(Text(f"session {session_id} deleted"))


@cli.group()
def tasks() -> None:
    """Tasks: runs of a component started by hand or on a schedule (PROTOCOL.md, "Tasks")."""


_TASK_ID = click.argument("task_id")


def _schedule_text(task: dict[str, Any]) -> str:
    schedule = task.get("schedule")
    if not isinstance(schedule, dict):
        return ""
    kind = schedule.get("kind")
    if kind == "interval":
        return f"every {schedule.get('every_seconds')} s"
    if kind == "cron":
        return f"cron {schedule.get('cron')} {schedule.get('timezone')}"
    if kind == "once":
        return f"once {schedule.get('at')}"
    return str(kind)


@tasks.command(name="list")
@click.option(
    "--component", metavar="KIND[/ID]", help="Only tasks of this kind or component (agents/echo)."
)
@click.option("--active/--paused", default=None, help="Only active, or only paused, tasks.")
@click.option("--tag", help="Only tasks with this tag.")
@click.option("--user-id", help="Only tasks of this user.")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_url
def tasks_list(
    url: str,
    component: str | None,
    active: bool | None,
    tag: str | None,
    user_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List tasks, oldest first."""
    try:
        kind, component_id = _kind_filter(component)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint="--component") from None
    found = _call(
        url,
        lambda c: c.list_tasks(
            kind=kind,
            component_id=component_id,
            active=active,
            tag=tag,
            user_id=user_id,
            limit=limit,
        ),
    )
    if as_json:
        _print_json(found)
        return
    table = Table("task_id", "component", "schedule", "active", "next", "fired", "skipped")
    table.columns[0].no_wrap = True
    for task in found:
        table.add_row(
            Text(str(task.get("task_id"))),
            Text(f"{task.get('kind')}/{task.get('component_id')}"),
            Text(_schedule_text(task)),
            "yes" if task.get("active") else "paused",
            Text(str(task.get("next_fire_at") or "")),
            str(task.get("fired")),
            str(task.get("skipped")),
        )
    _out.print(table)


def _print_task(task: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for name, value in task.items():
        if name in ("created_at", "updated_at"):
            value = f"{_time(value)} ({value})"
        table.add_row(name, Text(_short(value, 200) if value is not None else ""))
    _out.print(table)


@tasks.command(name="get")
@_TASK_ID
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_url
def tasks_get(url: str, task_id: str, as_json: bool) -> None:
    """Show one task: its schedule, policies, next occurrence and counters."""
    task = _call(url, lambda c: c.get_task(task_id))
    if as_json:
        _print_json(task)
    else:
        _print_task(task)


@tasks.command(name="runs")
@_TASK_ID
@click.option("--status", help="Only runs with this status (QUEUED, RUNNING, COMPLETED ...).")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_url
def tasks_runs(url: str, task_id: str, status: str | None, limit: int, as_json: bool) -> None:
    """List a task's runs, newest first, with the occurrence each stands for."""
    try:
        found = _call(url, lambda c: c.list_task_runs(task_id, status=status, limit=limit))
    except ValueError:  # the client checks the status name
        raise click.BadParameter(f"unknown status {status!r}", param_hint="--status") from None
    if as_json:
        _print_json([run.data for run in found])
        return
    table = Table("run_id", "occurrence", "status", "attempt", "created")
    table.columns[0].no_wrap = True
    for run in found:
        table.add_row(
            run.run_id,
            Text(str(run.data.get("occurrence") or "")),
            run.status.value,
            str(run.data.get("attempt")),
            _time(run.created_at),
        )
    _out.print(table)


@tasks.command(name="create")
@_COMPONENT
@click.argument("message")
@click.option("--id", "task_id", help="The task's id (default: a UUID).")
@click.option("--every", type=float, metavar="SECONDS", help="Fire every SECONDS.")
@click.option(
    "--cron", metavar="EXPR", help='Fire on a five-field cron expression ("0 9 * * 1-5").'
)
@click.option("--timezone", metavar="ZONE", help="The IANA time zone of --cron (default UTC).")
@click.option("--at", metavar="TIME", help="Fire once, at TIME (ISO 8601 with an offset).")
@click.option("--start-at", metavar="TIME", help="With --every: count intervals from TIME.")
@click.option(
    "--overlap",
    type=click.Choice(["skip_if_running", "queue_next", "cancel_previous", "allow_parallel"]),
    help="What an occurrence does while the last run still runs (default skip_if_running).",
)
@click.option(
    "--session-policy",
    type=click.Choice(["task", "run", "fixed"]),
    help="One session for all runs, one per run, or --session-id (default task).",
)
@click.option("--session-id", help="The session of every run (with --session-policy fixed).")
@click.option(
    "--catchup",
    type=click.Choice(["skip", "latest", "all"]),
    help="Occurrences missed while every instance was down (default skip).",
)
@click.option("--timeout", type=float, metavar="SECONDS", help="Each attempt's time limit.")
@click.option("--retry-policy", metavar="JSON", help="E.g. '{\"max_attempts\": 3}'.")
@click.option("--description", help="What the task is for.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat for more).")
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON answer.")
@_url
def tasks_create(
    url: str,
    component: str,
    message: str,
    task_id: str | None,
    every: float | None,
    cron: str | None,
    timezone: str | None,
    at: str | None,
    start_at: str | None,
    overlap: str | None,
    session_policy: str | None,
    session_id: str | None,
    catchup: str | None,
    timeout: float | None,
    retry_policy: str | None,
    description: str | None,
    tags: tuple[str, ...],
    paused: bool,
    as_json: bool,
) -> None:
    """Create a task that runs KIND/ID with MESSAGE: by hand only (trigger), or on a schedule
    (--every, --cron, --at). The server checks every value (exit 2 naming the field)."""
    kind, component_id = _component(component)
    if sum(option is not None for option in (every, cron, at)) > 1:
        raise click.UsageError("give one of --every, --cron and --at")
    schedule: dict[str, Any] | None = None
    if every is not None:
        schedule = {"kind": "interval", "every_seconds": every}
        if start_at is not None:
            schedule["start_at"] = start_at
    elif cron is not None:
        schedule = {"kind": "cron", "cron": cron, "timezone": timezone or "UTC"}
    elif at is not None:
        schedule = {"kind": "once", "at": at}
    if (timezone is not None and cron is None) or (start_at is not None and every is None):
        raise click.UsageError("--timezone goes with --cron, --start-at with --every")
    fields: dict[str, Any] = {}
    for name, value in (
        ("overlap_policy", overlap),
        ("session_policy", session_policy),
        ("session_id", session_id),
        ("catchup", catchup),
        ("timeout_seconds", timeout),
        ("description", description),
    ):
        if value is not None:
            fields[name] = value
    if retry_policy is not None:
        try:
            fields["retry_policy"] = json.loads(retry_policy)
        except ValueError:
            raise click.BadParameter("not JSON", param_hint="--retry-policy") from None
    if tags:
        fields["tags"] = list(tags)
    if paused:
        fields["active"] = False
    task = _call(
        url,
        lambda c: c.create_task(
            kind, component_id, message, schedule=schedule, task_id=task_id, **fields
        ),
    )
    if as_json:
        _print_json(task)
        return
    next_fire = task.get("next_fire_at") or "only when triggered"
    _out.print(Text(f"task {task.get('task_id')} created; next occurrence: {next_fire}"))


@tasks.command(name="pause")
@_TASK_ID
@_url
def tasks_pause(url: str, task_id: str) -> None:
    """Stop firing a task (its running runs go on)."""
    _call(url, lambda c: c.pause_task(task_id))
    _out.print(Text(f"task {task_id} paused"))


@tasks.command(name="resume")
@_TASK_ID
@_url
def tasks_resume(url: str, task_id: str) -> None:
    """Fire a paused task again, from its next occurrence (missed ones follow its catchup)."""
    task = _call(url, lambda c: c.resume_task(task_id))
    next_fire = task.get("next_fire_at") or "only when triggered"
    _out.print(Text(f"task {task_id} resumed; next occurrence: {next_fire}"))


@tasks.command(name="delete")
@_TASK_ID
@_url
def tasks_delete(url: str, task_id: str) -> None:
    """Delete a task; its runs stay (one in flight runs to its end)."""
    _call(url, lambda c: c.delete_task(task_id))
    _out.print(Text(f"task {task_id} deleted"))


@tasks.command(name="trigger")
@_TASK_ID
@click.option("--wait", is_flag=True, help="Wait for the run to end; exit 1 if it failed.")
@click.option(
    "--wait-seconds",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="With --wait: the longest wait (then exit 3; the run goes on).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run's JSON.")
@_url
def tasks_trigger(url: str, task_id: str, wait: bool, wait_seconds: int, as_json: bool) -> None:
    """Start a run of a task now (its overlap policy cancel_previous cancels the running ones
    first); prints the run. With --wait, exit 0 when it completed, 1 when it ended in ERROR or
    CANCELLED."""

    async def work(client: AsyncClient) -> Run:
        try:
            return await client.trigger_task(task_id, wait=wait, wait_seconds=wait_seconds)
        except RunFailed as exc:
            return exc.run

    run = _call(url, work)
    if as_json:
        _print_json(run.data)
    else:
        _print_run(run)
    if wait and run.status.value in ("ERROR", "CANCELLED"):
        sys.exit(EXIT_RUN_FAILED)


@cli.group()
def db() -> None:
    """The database (the server need not run)."""


@db.command()
@click.option(
    "--url",
    envvar="AGENTOS_DB_URL",
    default=None,
    help="SQLAlchemy async URL of the database (env AGENTOS_DB_URL; default: the server's).",
)
def upgrade(url: str | None) -> None:
    """Upgrade the database's schema to this release's (Alembic migrations)."""
    from agentos.backends.base import open_backend
    from agentos.settings import Settings

    try:
        settings = Settings.from_env()
        if url:
            settings = settings.replace(db_url=url)
        store = open_backend(settings).store
    except (TypeError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)
    from agentos.errors import AgentOSError

    try:
        before, after = asyncio.run(store.upgrade())
    except AgentOSError as exc:
        _fail(exc.detail, EXIT_USAGE)
    except OSError as exc:
        _fail(f"cannot reach the database: {exc}", EXIT_UNAVAILABLE)
    if before == after:
        _out.print(Text(f"the database is at revision {after} already"))
    else:
        _out.print(Text(f"upgraded the database from revision {before or '(empty)'} to {after}"))


def _print_event(event: RunEvent, as_json: bool) -> None:
    if as_json:
        click.echo(event.to_json())
        return
    line = Text(f"{event.event_index:>5} ", style="dim")
    line.append(event.event, style="bold red" if event.event.endswith("Error") else "bold")
    who = event.member_id or event.step_id
    if who:
        line.append(f" [{who}]")
    detail = event.error if event.error is not None else event.content
    if detail is not None:
        line.append(" " + _short(detail, 200))
    _out.print(line)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``agentos`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="agentos")


if __name__ == "__main__":
    main()
