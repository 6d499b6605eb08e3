"""A small incremental Server-Sent Events decoder.

It follows the WHATWG parsing rules that matter here: ``field: value`` lines, one optional
space after the colon, ``:`` comment lines, multi-line ``data``, a blank line dispatches the
frame. Unlike a browser it reports each frame's *own* ``id`` (``None`` when the frame had no
``id:`` line), because agentos meta frames are exactly the frames without one.

Lines come from ``httpx.Response.aiter_lines()``, which already splits on CR, LF and CRLF.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEFrame"]


@dataclass(frozen=True)
class SSEFrame:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, line: str) -> SSEFrame | None:
        """Take one line without its terminator; return a frame when ``line`` completes one."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> SSEFrame | None:
        frame = None
        if self._data or self._event or self._id is not None:
            frame = SSEFrame(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self._id,
                retry=self._retry,
            )
        self._event, self._data, self._id, self._retry = "", [], None, None
        return frame
