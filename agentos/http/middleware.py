"""ASGI middleware in front of every route: the security key and the instance header."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentos.errors import AgentOSError
from agentos.http.auth import check_key, resume_token_valid

__all__ = ["POLICY_VIOLATION", "InstanceHeader", "SecurityGuard", "error_body", "error_json"]

#: WebSocket close code for a policy violation (no or bad credentials, flood, too slow).
POLICY_VIOLATION = 1008


def error_body(
    detail: str, code: str, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one JSON shape of an error answer: ``{"detail": ..., "code": ...}``."""
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def error_json(exc: AgentOSError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The error answer of a domain error."""
    return error_body(exc.detail, exc.code, exc.status, headers)


class SecurityGuard:
    """Security key check (every route but /health) and draining state, before any route."""

    def __init__(
        self, app: ASGIApp, security_key: str | None, public_paths: Collection[str] = ()
    ) -> None:
        self.app = app
        self.security_key = security_key
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.security_key
        if (
            key is not None
            and scope["type"] in ("http", "websocket")
            and scope["path"] != "/health"
            and scope["path"] not in self.public_paths
        ):
            headers = Headers(scope=scope)
            if (
                scope["type"] == "websocket"
                and scope["path"] == "/workflows/ws"
                and "authorization" not in headers
            ):
                # Browsers cannot set headers on a WebSocket: it authenticates in-band (ws.py).
                await self.app(scope, receive, send)
                return
            error = check_key(headers, key)
            if error is not None and resume_token_valid(scope, key):
                error = None
            if error is not None:
                if scope["type"] == "http":
                    await error_json(error)(scope, receive, send)
                else:
                    await send(
                        {
                            "type": "websocket.close",
                            "code": POLICY_VIOLATION,
                            "reason": error.detail,
                        }
                    )
                return
        await self.app(scope, receive, send)


class InstanceHeader:
    """``X-AgentOS-Instance: <instance_id>`` on every response: which instance answered."""

    def __init__(self, app: ASGIApp, instance_id: str) -> None:
        self.app = app
        self.header = (b"x-agentos-instance", instance_id.encode("latin-1", "replace"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)
