"""A small SSE reader for tests: frames as the wire carries them, over a real socket.

Lines are split on CR, LF and CRLF only, by the client's line decoder: httpx's ``iter_lines``
splits like ``str.splitlines()``, also on U+2028, U+2029 and U+0085, which JSON leaves unescaped.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from agentos_client._sse import SSELineDecoder


@dataclass
class Frame:
    event: str | None
    id: str | None
    data: str

    @property
    def payload(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.data)
        return result

    @property
    def is_meta(self) -> bool:
        return self.id is None


class _Parser:
    """Lines in, frames out (comments skipped)."""

    def __init__(self) -> None:
        self.event: str | None = None
        self.id: str | None = None
        self.data: list[str] = []

    def feed(self, line: str) -> Frame | None:
        if line == "":
            frame = Frame(self.event, self.id, "\n".join(self.data)) if self.data else None
            self.event, self.id, self.data = None, None, []
            return frame
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self.event = value
        elif field == "id":
            self.id = value
        elif field == "data":
            self.data.append(value)
        return None


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The frames of an open ``text/event-stream`` response."""
    parser = _Parser()
    async for line in lines(response):
        if frame := parser.feed(line):
            yield frame


def iter_frames(response: httpx.Response) -> Iterator[Frame]:
    """:func:`frames` for a sync response."""
    parser = _Parser()
    for line in iter_lines(response):
        if frame := parser.feed(line):
            yield frame


def parse_frames(text: str) -> list[Frame]:
    """The frames of a whole ``text/event-stream`` body (what ``curl -N`` printed)."""
    parser = _Parser()
    found = [parser.feed(line) for line in SSELineDecoder().decode(text.encode() + b"\n\n")]
    return [frame for frame in found if frame is not None]


async def lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of an open ``text/event-stream`` response, without their line ends."""
    decoder = SSELineDecoder()
    async for chunk in response.aiter_bytes():
        for line in decoder.decode(chunk):
            yield line


def iter_lines(response: httpx.Response) -> Iterator[str]:
    """:func:`lines` of a response opened with the sync client."""
    decoder = SSELineDecoder()
    for chunk in response.iter_bytes():
        yield from decoder.decode(chunk)


async def collect(response: httpx.Response) -> list[Frame]:
    return [frame async for frame in frames(response)]


def events_only(items: list[Frame]) -> list[Frame]:
    return [f for f in items if not f.is_meta]
