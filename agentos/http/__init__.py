"""The HTTP face of agentos: the only package that imports Starlette and sse-starlette."""

from agentos.http.app import AgentOS

__all__ = ["AgentOS"]
