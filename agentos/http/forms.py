"""The fields of a request: from a JSON object, a urlencoded or a multipart form body.

Routes take what they need from the resulting dict with the typed readers below, each raising
InvalidRequest (422) with a message that names the field.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import Request

from agentos.errors import InvalidCursor, InvalidRequest, RequestTimeout, RequestTooLarge
from agentos.events import RunStatus
from agentos.records import check_id, check_text
from agentos.retries import RetryPolicy, RunOptions

__all__ = [
    "client_run_id",
    "cursor",
    "filter_id",
    "filter_text",
    "flag",
    "idempotency_key",
    "integer",
    "message",
    "number",
    "read_fields",
    "run_options",
    "text",
]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
# An integer as text: an optional minus and ASCII digits. Python's int() also takes "0_1", "+1",
# white space and any Unicode digit (U+0661, U+FF11); 18 digits keep it within a 64-bit column.
_INTEGER = re.compile(r"-?[0-9]{1,18}")
# A number of seconds as text: ASCII digits and an optional fraction (no sign, exponent, inf).
_NUMBER = re.compile(r"[0-9]{1,15}(\.[0-9]{1,9})?")
#: Largest ``timeout_seconds`` (a week, as RunOptions allows).
_MAX_RUN_TIMEOUT = 7 * 24 * 3600.0
# An Idempotency-Key: 1 to 200 printable ASCII characters.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,200}")


async def read_fields(request: Request, limit: int, timeout: float) -> dict[str, Any]:
    """The request's fields from a JSON object, a urlencoded or a multipart form body.

    The body must be at most ``limit`` bytes (RequestTooLarge) and arrive within ``timeout``
    seconds, 0 for no limit (RequestTimeout).
    """
    declared = request.headers.get("content-length")
    if declared is not None and _INTEGER.fullmatch(declared) and int(declared) > limit:
        raise RequestTooLarge(f"the request body is over the limit of {limit} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout or None):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise RequestTooLarge(f"the request body is over the limit of {limit} bytes")
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body.strip():
        return {}
    if content_type in ("application/json", "") or content_type.endswith("+json"):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            raise InvalidRequest("the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidRequest("the JSON body must be an object")
        return data
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, errors="strict")
            return dict(pairs)
        except UnicodeDecodeError:
            raise InvalidRequest("the form body is not UTF-8") from None
    if content_type == "multipart/form-data":
        return await _multipart(request, bytes(body))
    raise InvalidRequest(f"unsupported content type {content_type!r}; send JSON or a form")


async def _multipart(request: Request, body: bytes) -> dict[str, Any]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, receive).form() as form:
            return {k: v for k, v in form.items() if isinstance(v, str)}
    except HTTPException as exc:  # starlette's multipart parse errors
        raise InvalidRequest("the multipart body could not be parsed") from exc


def flag(fields: Mapping[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise InvalidRequest(f"{name} must be true or false")


def message(fields: Mapping[str, Any]) -> str:
    """The run's input: required, a string (blank ones are refused by the run manager)."""
    value = fields.get("message")
    if value is None:
        raise InvalidRequest("message is required")
    if not isinstance(value, str):
        raise InvalidRequest("message must be a string")
    return value


def text(fields: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    """An optional string field (a missing or empty one is None), or a required one."""
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string")
    return value


def client_run_id(request: Request, fields: Mapping[str, Any]) -> str | None:
    """The client-chosen run id: body field, ``run_id`` query parameter or ``X-Run-Id`` header."""
    given = {
        v
        for v in (
            text(fields, "run_id"),
            request.query_params.get("run_id") or None,
            request.headers.get("x-run-id") or None,
        )
        if v is not None
    }
    if len(given) > 1:
        raise InvalidRequest("run_id is given twice with different values")
    return given.pop() if given else None


def integer(value: Any, name: str) -> int:
    """An integer field: a JSON integer, or text of an optional minus and ASCII digits."""
    number = _integer(value)
    if number is None:
        raise InvalidRequest(f"{name} must be an integer (ASCII digits)")
    return number


def cursor(value: Any) -> int:
    """``last_event_index`` (body, query or ``Last-Event-ID``); a missing or empty one is -1."""
    if value is None or value == "":
        return -1
    number = _integer(value)
    if number is None:
        raise InvalidCursor("last_event_index must be an integer (ASCII digits)")
    return number


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    return None


#: The most items one page of a list holds (``limit``).
MAX_LIMIT = 1000


def limit(params: Mapping[str, str]) -> int:
    """A list's ``limit``: 1 to MAX_LIMIT, 100 when absent."""
    value = integer(params.get("limit", "100"), "limit")
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}")
    return value


def offset(params: Mapping[str, str], high: int) -> int:
    """A list's ``offset``: 0 to ``high``, 0 when absent."""
    value = integer(params.get("offset", "0"), "offset")
    if not 0 <= value <= high:
        raise InvalidRequest(f"offset must be between 0 and {high}")
    return value


def run_status(params: Mapping[str, str]) -> RunStatus | None:
    """A list's ``status`` filter, in any case; absent/empty is None."""
    status = params.get("status")
    try:
        return RunStatus(status.upper()) if status else None
    except ValueError:
        raise InvalidRequest(
            f"status must be one of {', '.join(s.value for s in RunStatus)}"
        ) from None


def filter_text(params: Mapping[str, str], name: str) -> str | None:
    """A free-text filter of a list (``user_id``): absent/empty is None; text every database can
    compare (no NUL, no lone surrogates), else 422 naming it."""
    value = params.get(name) or None
    return None if value is None else check_text(name, value)


def filter_id(params: Mapping[str, str], name: str) -> str | None:
    """An id filter of a list (``session_id``): absent/empty is None; an id, else 422."""
    value = params.get(name) or None
    return None if value is None else check_id(name, value)


def number(fields: Mapping[str, Any], name: str, high: float) -> float | None:
    """An optional number of seconds from 0 to ``high``: a JSON number, or text of ASCII digits
    with an optional fraction (``1.5``); a missing or empty one is None."""
    value = fields.get(name)
    if value is None or value == "":
        return None
    found: int | float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        found = value  # compared before float(): an int of 400 digits overflows a float
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        found = float(value)
    if found is None or not 0 <= found <= high:  # NaN fails it too, infinity is above high
        raise InvalidRequest(f"{name} must be a number from 0 to {high:g}")
    return float(found)


def run_options(fields: Mapping[str, Any]) -> RunOptions:
    """A create's ``retry_policy`` (a JSON object; in a form, its JSON text),
    ``timeout_seconds`` and ``multitask``; 422 naming the field that is not right."""
    policy = fields.get("retry_policy")
    if isinstance(policy, str):
        if policy.strip() == "":
            policy = None
        else:
            try:
                policy = json.loads(policy)
            except (ValueError, RecursionError):  # RecursionError: nested too deep
                raise InvalidRequest("retry_policy must be a JSON object") from None
    if policy is not None and not isinstance(policy, Mapping):
        raise InvalidRequest("retry_policy must be a JSON object")
    return RunOptions(
        retry_policy=None if policy is None else RetryPolicy.parse(policy),
        timeout=number(fields, "timeout_seconds", _MAX_RUN_TIMEOUT),
        multitask=text(fields, "multitask"),
    )


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header: None when absent; 1 to 200 printable ASCII characters,
    else 422."""
    given = set(request.headers.getlist("idempotency-key"))
    if not given:
        return None
    if len(given) > 1:
        raise InvalidRequest("Idempotency-Key is given twice with different values")
    key = given.pop()
    if _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise InvalidRequest("Idempotency-Key must be 1 to 200 printable ASCII characters")
    return key
