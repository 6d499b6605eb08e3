"""Errors raised by the agentos client.

One hierarchy, rooted at :class:`ClientError`, so ``except ClientError`` catches everything the
client raises on purpose::

    ClientError
     ├── ClientClosed      the client was used after close()/aclose()
     ├── TransportError    no usable answer: connection failed or dropped, read timeout,
     │                     or a stream ran out of reconnect attempts
     ├── APIStatusError    the server answered with an error status (status_code, code, detail)
     ├── StreamError       a stream broke its contract: an "error" meta frame, a skipped index
     ├── RunFailed         the run ended with status ERROR (run, error)
     └── WaitTimeout       wait() gave up before the run ended, or the server's wait did
                           (504 wait_timeout); the run goes on

Errors from httpx are translated in one place (``_client._translate``) with ``raise ... from``,
so the original exception stays available as ``__cause__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import Run

__all__ = [
    "APIStatusError",
    "ClientClosed",
    "ClientError",
    "RunFailed",
    "StreamError",
    "TransportError",
    "WaitTimeout",
]


class ClientError(Exception):
    """Base class of every error the client raises on purpose."""


class ClientClosed(ClientError):
    """The client was used after ``close()`` / ``aclose()``."""

    def __init__(self) -> None:
        super().__init__("the client has been closed; create a new one to send requests")


class TransportError(ClientError):
    """The server could not be reached or stopped answering.

    ``run_id`` is set when the error ends a stream, so the caller can resume it later with
    ``resume(kind, id, run_id, last_event_index)``; ``last_event_index`` is the last index the
    stream yielded (-1 if none).
    """

    def __init__(
        self, message: str, *, run_id: str | None = None, last_event_index: int = -1
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.last_event_index = last_event_index


class APIStatusError(ClientError):
    """The server answered with an error status.

    ``status_code`` is the HTTP status, ``code`` and ``detail`` come from the JSON error body
    ``{"detail": ..., "code": ...}`` when there is one.
    """

    def __init__(
        self,
        status_code: int,
        *,
        code: str | None = None,
        detail: str | None = None,
        run_id: str | None = None,
    ) -> None:
        text = f"HTTP {status_code}"
        if code:
            text += f" {code}"
        if detail:
            text += f": {detail}"
        super().__init__(text)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.run_id = run_id


class StreamError(ClientError):
    """The event stream cannot go on: the server sent an ``error`` meta frame, or the stream
    broke the protocol (for example an index was skipped)."""

    def __init__(self, message: str, *, code: str | None = None, run_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.run_id = run_id


class RunFailed(ClientError):
    """The run ended with status ERROR; ``run`` is the final run object, ``error`` its error."""

    def __init__(self, run: Run) -> None:
        super().__init__(f"run {run.run_id} failed: {run.error or 'no error message'}")
        self.run = run
        self.run_id = run.run_id
        self.error = run.error


class WaitTimeout(ClientError):
    """``wait()`` gave up before the run reached a terminal status, or a waiting create's
    budget ran out on the server (504 ``wait_timeout``). The run goes on: follow it with
    ``resume`` or ``wait`` by ``run_id``; ``status`` is its status when the wait ended, when
    known."""

    def __init__(self, run_id: str, timeout: float, *, status: str | None = None) -> None:
        super().__init__(f"run {run_id} did not end within {timeout} s")
        self.run_id = run_id
        self.timeout = timeout
        self.status = status
