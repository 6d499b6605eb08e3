"""Who may call: the security key check, and run-scoped resume tokens.

The operator's security key is sent as ``Authorization: Bearer <key>`` (HTTP, and the WebSocket
upgrade) or in the WebSocket's ``authenticate`` frame; :func:`key_matches` is the one comparison
of a presented key with the real one (constant time).

Resume tokens are for clients that cannot send an ``Authorization`` header.

A browser ``EventSource`` sends no custom headers, so when a security key protects the server
the ``GET .../runs/{run_id}/resume`` route also accepts ``?token=<resume token>``. The token is
minted when the run is created and only opens that run's event stream until it expires; it
never grants anything else, and it never contains the key.

Shape: ``<expiry>.<signature>`` where ``expiry`` is a Unix time in whole seconds and
``signature`` is the unpadded base64url HMAC-SHA256, keyed with the security key, over
``agentos-resume-v1 NUL run_id NUL expiry``. The prefix keeps a signature made here from
being valid for any other use of the same key.

Both functions are pure: the caller passes the clock, which keeps them trivial to test.

    token = sign_resume_token(key, run_id, ttl=3600, now=time.time())
    assert verify_resume_token(key, run_id, token, now=time.time())

A token in a URL would land in the access log: :func:`redact_tokens_in_logs` (installed by the
app) rewrites every ``token=`` query value in uvicorn's log records to ``[redacted]``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from urllib.parse import parse_qsl, unquote_plus

from starlette.datastructures import Headers
from starlette.types import Scope

from agentos.errors import AgentOSError, NotAuthenticated, NotAuthorized

__all__ = [
    "bearer_token",
    "check_key",
    "key_matches",
    "redact_tokens_in_logs",
    "resume_token_valid",
    "sign_resume_token",
    "verify_resume_token",
]

_PURPOSE = b"agentos-resume-v1"
# A real token is about 55 characters; refusing anything much longer keeps the work bounded.
_MAX_TOKEN_LENGTH = 128
# A name=value pair of a query string inside a log line (the access log's path, a WebSocket's URL).
_QUERY_PAIR = re.compile(r"(?<=[?&])([^=&#\s\"]*)=([^&#\s\"]*)")
# uvicorn logs each request's path and query to uvicorn.access, and each WebSocket's to
# uvicorn.error.
_URL_LOGGERS = ("uvicorn.access", "uvicorn.error")


def _signature(key: str, run_id: str, expiry: int) -> str:
    message = b"\x00".join((_PURPOSE, run_id.encode(), str(expiry).encode()))
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_resume_token(key: str, run_id: str, ttl: float, now: float) -> str:
    """Return a token that lets its bearer resume ``run_id`` until ``now + ttl``."""
    if not key:
        raise ValueError("a resume token needs a non-empty key")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    expiry = int(now + ttl)
    return f"{expiry}.{_signature(key, run_id, expiry)}"


def verify_resume_token(key: str, run_id: str, token: str, now: float) -> bool:
    """Tell whether ``token`` was signed with ``key`` for ``run_id`` and is not yet expired."""
    if not key or not token or len(token) > _MAX_TOKEN_LENGTH:
        return False
    expiry_text, dot, signature = token.partition(".")
    if not dot or not expiry_text.isascii() or not expiry_text.isdigit():
        return False
    expiry = int(expiry_text)
    if now >= expiry:
        return False
    return hmac.compare_digest(signature, _signature(key, run_id, expiry))


def key_matches(presented: object, key: str) -> bool:
    """Whether ``presented`` is the security key (compared in constant time)."""
    return isinstance(presented, str) and hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), key.encode()
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def check_key(headers: Headers, key: str) -> AgentOSError | None:
    """The error to answer a request whose headers do not carry the key, or None."""
    authorization = headers.get("authorization")
    if not authorization:
        return NotAuthenticated("this server needs Authorization: Bearer <security key>")
    if not key_matches(bearer_token(authorization), key):
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


def redact_tokens_in_logs() -> None:
    """Make uvicorn's loggers write ``token=[redacted]`` for any ``token=`` query value.

    A filter on the logger (not on a handler) sees every record before any handler, including
    handlers configured later; ``logging.config.dictConfig`` (uvicorn's ``--log-config``) keeps a
    logger's filters. Idempotent: the app calls it when built and again at start-up.
    """
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactTokens) for f in logger.filters):
            logger.addFilter(_RedactTokens())


class _RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access formatter unpacks the arguments by position: keep their shape.
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: _redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        elif not record.args and isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        return True


def _redact(text: str) -> str:
    if "=" not in text:
        return text
    return _QUERY_PAIR.sub(_redact_pair, text)


def _redact_pair(match: re.Match[str]) -> str:
    name = match.group(1)
    if unquote_plus(name).strip().lower() != "token":
        return match.group(0)
    return f"{name}=[redacted]"
