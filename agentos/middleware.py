"""ASGI middleware in front of every route: the security key and the instance header."""

from __future__ import annotations

import hmac
import time
from collections.abc import Collection
from urllib.parse import parse_qsl

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentos.errors import AgentOSError, NotAuthenticated, NotAuthorized
from agentos.tokens import verify_resume_token

__all__ = ["InstanceHeader", "SecurityGuard", "check_key", "resume_token_valid"]


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
                    await JSONResponse(
                        {"detail": error.detail, "code": error.code}, status_code=error.status
                    )(scope, receive, send)
                else:
                    await send({"type": "websocket.close", "code": 1008, "reason": error.detail})
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


def check_key(headers: Headers, key: str) -> AgentOSError | None:
    authorization = headers.get("authorization")
    if not authorization:
        return NotAuthenticated("this server needs Authorization: Bearer <security key>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        return NotAuthorized("the security key is not valid")
    return None


def resume_token_valid(scope: Scope, key: str) -> bool:
    """A ``GET /{kind}/{id}/runs/{run_id}/resume?token=...`` whose token was signed for that run.

    The token stands in for the key on this one route only, for clients that cannot send
    headers (a browser ``EventSource``); see PROTOCOL.md ("Clients").
    """
    if scope["type"] != "http" or scope["method"] != "GET":
        return False
    parts = scope["path"].split("/")
    if len(parts) != 6 or parts[0] or parts[3] != "runs" or parts[5] != "resume":
        return False
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    token = query.get("token")
    return token is not None and verify_resume_token(key, parts[4], token, now=time.time())
