"""Connection limits for ``agentos serve``: a request-head deadline, a connection cap, and a
rate-limited log of accept errors.

uvicorn closes idle keep-alive connections (``--timeout-keep-alive``) but sets no deadline on a
request head: a client that opens a connection and sends its head a byte at a time, or never
finishes it (slowloris), holds the connection and its file descriptor for ever. Enough of them
use up the open-file limit; then asyncio's accept loop fails with EMFILE and logs every failure,
up to the listen backlog (2048) times a second, while no new client gets in.

:func:`guarded_protocol` subclasses uvicorn's HTTP protocol (h11 or httptools) so that

- a connection has ``header_timeout`` seconds, from its opening or from the end of its previous
  response, to complete a request head; otherwise it is closed. The timer is off from a complete
  head to the end of its response (the body is read under ``http_body_timeout`` in
  ``forms.read_fields``; the response may be an SSE stream that lasts hours) and for good once
  the connection has become a WebSocket;
- at most ``max_connections`` connections are open: a connection past the cap takes the place of
  the one that has waited longest for its request head (most likely a slowloris one), and is
  closed itself when none is waiting. A cap below the open-file limit keeps accept() working.

:class:`AcceptErrorFilter` lets the first accept error through, then one counted line per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = [
    "AcceptErrorFilter",
    "default_max_connections",
    "guarded_protocol",
    "open_files_warning",
    "raise_open_file_limit",
]

#: File descriptors the default connection cap leaves for the database, logs and files.
_RESERVED_FDS = 128


def default_max_connections() -> int:
    """The process's open-file limit minus a reserve (0, no cap, when there is no limit)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(soft - _RESERVED_FDS, 16)


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise the process's soft open-file limit to its hard limit, as many servers do;
    returns the soft limit before and after (None when there is no limit to read: not Unix).

    Every open stream is a socket, so a file descriptor; the usual soft limit (1,024 in a shell)
    would cap an instance at about a thousand streams while the hard limit allows far more.
    Raising the soft limit up to the hard one needs no privilege; the hard limit stays as the
    system set it (``ulimit -Hn``, systemd ``LimitNOFILE=``).
    """
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # an unlimited hard limit beyond what the kernel allows
        return soft, soft
    return soft, hard


def open_files_warning(max_streams: int, max_connections: int) -> str | None:
    """Why ``max_streams`` open streams would not fit, or None when they do.

    A stream holds one connection; ``max_connections`` (0: none set) and the open-file limit
    minus a reserve cap them all. Past the cap, new connections take the place of idle ones or
    are closed, whatever ``max_streams`` says.
    """
    caps = [cap for cap in (max_connections, default_max_connections()) if cap]
    if not caps or max_streams <= min(caps):
        return None
    cap = min(caps)
    if cap == max_connections:
        return (
            f"max_streams is {max_streams:,} but http_max_connections lets only {cap:,} "
            "connections be open: raise it (and the open-file limit with it) or lower max_streams"
        )
    return (
        f"max_streams is {max_streams:,} but at most {cap:,} connections can be open (the "
        f"open-file limit, {cap + _RESERVED_FDS:,}, less {_RESERVED_FDS} kept for files): raise "
        f"the limit to at least {max_streams + _RESERVED_FDS:,} plus the other connections the "
        "server holds (`ulimit -n`, systemd LimitNOFILE=) or lower max_streams"
    )


def guarded_protocol(
    header_timeout: float, max_connections: int, base: type[asyncio.Protocol] | None = None
) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class (``uvicorn.Config(http=...)``) with a deadline on request
    heads (0: none) and a cap on open connections (0: none); one class per server.

    ``base`` is uvicorn's ``H11Protocol`` or ``HttpToolsProtocol``; by default the one uvicorn's
    ``--http auto`` picks.
    """
    parent: Any = AutoHTTPProtocol if base is None else base
    # Connections of this server waiting for a request head, the longest-waiting first.
    waiting: OrderedDict[Any, None] = OrderedDict()

    def evict_oldest() -> bool:
        while waiting:
            victim, _ = waiting.popitem(last=False)
            victim._stop_waiting()
            if not victim.transport.is_closing():
                victim.transport.close()
                return True
        return False

    class GuardedProtocol(parent):  # type: ignore[misc]
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if max_connections and len(self.connections) > max_connections:
                if not evict_oldest():
                    transport.close()
                    return
            self._watch()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _watch(self) -> None:
            """Start the head deadline when the connection waits for a request head (unless it
            already runs); stop it while a request is under way or after an upgrade."""
            busy = self.cycle is not None and not self.cycle.response_complete
            transport = self.transport
            if busy or transport.is_closing() or transport.get_protocol() is not self:
                self._stop_waiting()
            elif self not in waiting:
                waiting[self] = None
                if header_timeout:
                    self._head_timer = self.loop.call_later(header_timeout, self._head_late)

        def _stop_waiting(self) -> None:
            waiting.pop(self, None)
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            self._stop_waiting()
            if not self.transport.is_closing():
                self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{parent.__name__}"
    return GuardedProtocol


class AcceptErrorFilter(logging.Filter):
    """For the ``asyncio`` logger: the first accept error passes with its traceback; later ones
    pass at most once per ``interval`` seconds, as one line that counts those left out.

    asyncio logs an accept() that fails for want of file descriptors once per connection in
    the listen backlog, each time with a traceback: megabytes a minute under a connection flood.
    """

    _MESSAGES = (
        "socket.accept() out of system resource",
        # The retries asyncio schedules after each such error, when they outlive the server.
        "Exception in callback BaseSelectorEventLoop._start_serving(",
    )

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._next_line = float("-inf")
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(self._MESSAGES):
            return True
        now = self._clock()
        if now < self._next_line:
            self._left_out += 1
            return False
        self._next_line = now + self.interval
        if self._left_out:
            first_line = record.getMessage().split("\n", 1)[0]
            record.msg = f"{first_line} ({self._left_out} more since the last such line)"
            record.args = ()
            record.exc_info = record.exc_text = None
            self._left_out = 0
        return True
