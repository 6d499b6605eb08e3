"""ASGI middleware in front of every route: who is calling, and the instance header."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentos.errors import AgentOSError
from agentos.http.auth import Authenticator, Principal, set_principal

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
    """Who is calling (every route but /health and the public files), before any route.

    Resolves the request's :class:`~agentos.http.auth.Principal` from its ``Authorization``
    header (or a resume token) and records it in the scope's state, where routes read it with
    :func:`~agentos.http.auth.authorize`; a request without a valid credential is answered here.
    """

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, public_paths: Collection[str] = ()
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.authenticator.enabled:
            set_principal(scope, Principal.operator_key())  # an open server: everyone may
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/health" or scope["path"] in self.public_paths:
            set_principal(scope, _NOBODY)
            await self.app(scope, receive, send)
            return
        if (
            scope["type"] == "websocket"
            and scope["path"] == "/workflows/ws"
            and "authorization" not in Headers(scope=scope)
        ):
            # Browsers cannot set headers on a WebSocket: it authenticates in-band (ws.py).
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.authenticator.from_request(scope)
        except AgentOSError as error:
            if scope["type"] == "http":
                await error_json(error)(scope, receive, send)
            else:
                await send(
                    {"type": "websocket.close", "code": POLICY_VIOLATION, "reason": error.detail}
                )
            return
        set_principal(scope, principal)
        await self.app(scope, receive, send)


# Public routes need no credential and grant nothing.
_NOBODY = Principal(user_id=None, scopes=frozenset())


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
