"""The echo model: streams the input back word by word, so everything runs offline."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

__all__ = ["EchoModel"]

_WORDS = re.compile(r"\s*\S+")


class EchoModel:
    """Streams the message back word by word, waiting ``delay`` seconds before each word.

    The chunks keep their leading white space, so ``"".join(chunks)`` is the message (trailing
    white space aside)::

        >>> [chunk async for chunk in EchoModel().astream("hello big world")]
        ['hello', ' big', ' world']
    """

    def __init__(self, delay: float = 0.0, prefix: str = "") -> None:
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.delay = delay
        self.prefix = prefix

    async def astream(self, message: str) -> AsyncIterator[str]:
        for i, word in enumerate(_WORDS.findall(self.prefix + message)):
            if self.delay:
                await asyncio.sleep(self.delay)
            elif i % 64 == 63:
                await asyncio.sleep(0)  # let other runs and the writer in
            yield word
