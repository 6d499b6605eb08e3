"""``agentos serve [module:app] [--host H] [--port P]``: run a server under uvicorn.

Beyond plain uvicorn, it puts a deadline on request heads, caps open connections and rate-limits
the log of failing accepts (``http/server.py``; settings ``http_header_timeout``,
``http_max_connections``, ``accept_error_log_interval``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from agentos.http import AgentOS
from agentos.http.server import AcceptErrorFilter, default_max_connections, guarded_protocol
from agentos.settings import Settings

__all__ = ["main"]


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"agentos: expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"agentos: {module_name} has no attribute {attr!r}") from None


class _Server(uvicorn.Server):
    """uvicorn, plus: the first SIGTERM/SIGINT starts agentos's drain at once."""

    def __init__(self, config: uvicorn.Config, agent_os: AgentOS | None) -> None:
        super().__init__(config)
        self.agent_os = agent_os

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.agent_os is not None and not self.should_exit:
            try:
                self.agent_os.begin_shutdown()
            except RuntimeError:  # no running loop yet
                pass
        super().handle_exit(sig, frame)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="agentos", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve an app (default: the built-in demo)")
    serve.add_argument("app", nargs="?", help="module:attribute of an AgentOS or ASGI app")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7777)
    serve.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.app:
        target = _load(args.app)
    else:
        from agentos.demo import demo_os

        target = demo_os(Settings.from_env())
    agent_os = (
        target
        if isinstance(target, AgentOS)
        else getattr(target.state, "agent_os", None)
        if hasattr(target, "state")
        else None
    )
    app = target.app if isinstance(target, AgentOS) else target
    settings = agent_os.settings if agent_os is not None else Settings.from_env()
    http = settings.http
    grace = settings.runs.shutdown_grace + http.graceful_shutdown_extra
    logging.getLogger("asyncio").addFilter(AcceptErrorFilter(http.accept_error_log_interval))
    protocol = guarded_protocol(
        http.header_timeout, http.max_connections or default_max_connections()
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(grace),
        http=protocol,
    )
    _Server(config, agent_os).run()


if __name__ == "__main__":
    main()
