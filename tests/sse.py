"""A small SSE reader for tests: frames as the wire carries them, over a real socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


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


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """Parse the frames of an open ``text/event-stream`` response (comments skipped)."""
    event: str | None = None
    id_: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield Frame(event, id_, "\n".join(data))
            event, id_, data = None, None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "id":
            id_ = value
        elif field == "data":
            data.append(value)


async def collect(response: httpx.Response) -> list[Frame]:
    return [frame async for frame in frames(response)]


def events_only(items: list[Frame]) -> list[Frame]:
    return [f for f in items if not f.is_meta]
