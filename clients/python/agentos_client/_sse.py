"""A small incremental Server-Sent Events decoder.

It follows the WHATWG parsing rules that matter here: the body is UTF-8, lines end with CR, LF
or CRLF and with nothing else, ``field: value`` lines, one optional space after the colon,
``:`` comment lines, multi-line ``data``, a blank line dispatches the frame. Unlike a browser it
reports each frame's *own* ``id`` (``None`` when the frame had no ``id:`` line), because agentos
meta frames are exactly the frames without one.

Lines are split here, not by ``httpx.Response.aiter_lines()``: that one splits like
``str.splitlines()``, also on U+2028, U+2029, U+0085 and a few control characters, which JSON
leaves unescaped inside strings, so an event whose text holds one would be cut in two.

    async for frame in aiter_frames(response.aiter_bytes()):
        ...
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEFrame", "SSELineDecoder", "aiter_frames"]

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEFrame:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSELineDecoder:
    """Bytes in, complete lines out (without their terminator), split on CR, LF and CRLF only.

    Invalid UTF-8 becomes U+FFFD and a leading byte order mark is dropped, as in a browser.
    """

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._parts: list[str] = []  # the line so far, in pieces (a long line costs no rescans)
        self._after_cr = False  # the last chunk ended with CR: a LF next completes that CRLF
        self._started = False

    def decode(self, chunk: bytes) -> list[str]:
        text = self._text.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text:
            self._after_cr = False
            text = text.removeprefix("\n")
        lines = []
        start = 0
        for end in _LINE_END.finditer(text):
            self._parts.append(text[start : end.start()])
            lines.append("".join(self._parts))
            self._parts = []
            start = end.end()
        if start < len(text):
            self._parts.append(text[start:])
        elif text.endswith("\r"):
            self._after_cr = True
        return lines


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


async def aiter_frames(chunks: AsyncIterable[bytes]) -> AsyncIterator[SSEFrame]:
    """The frames of an ``text/event-stream`` body; an unfinished last frame is not one."""
    lines, decoder = SSELineDecoder(), SSEDecoder()
    async for chunk in chunks:
        for line in lines.decode(chunk):
            frame = decoder.feed(line)
            if frame is not None:
                yield frame
