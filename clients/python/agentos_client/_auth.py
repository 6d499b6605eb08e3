"""Bearer credentials: a fixed token (JWT or security key), or one fetched again on 401.

``token_provider`` is a callable, plain or async, that returns a fresh token: the clients call it
when they have no token yet, and again once when a request is answered 401 (an expired JWT),
then send that request once more with the new token.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable

import httpx

__all__ = ["BearerAuth", "TokenProvider"]

#: Returns a token (a JWT, or the security key), synchronously or as an awaitable.
TokenProvider = Callable[[], "str | Awaitable[str]"]


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <token>`` on each request; on 401, one more try with a new token."""

    def __init__(self, token: str | None, provider: TokenProvider | None) -> None:
        self.token = token
        self.provider = provider

    async def fresh(self) -> str | None:
        """Ask the provider for a new token (None without a provider)."""
        if self.provider is None:
            return self.token
        token = self.provider()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str):
            raise TypeError("token_provider must return a str")
        self.token = token
        return token

    async def current(self) -> str | None:
        """The token to send now: the one held, else the provider's first."""
        return self.token if self.token is not None else await self.fresh()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        sent = await self.current()
        if sent is not None:
            request.headers["Authorization"] = f"Bearer {sent}"
        response = yield request
        if response.status_code != 401 or self.provider is None:
            return
        # Another request may have refreshed the token meanwhile: use that one if so.
        token = self.token if self.token != sent else await self.fresh()
        if token is None:
            return
        request.headers["Authorization"] = f"Bearer {token}"
        yield request
