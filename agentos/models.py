"""Models: what turns an agent's input into streamed text.

A model is any object with ``astream(message) -> AsyncIterator[str]``. :class:`EchoModel` streams the
input back word by word, so everything runs offline with no API key.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

__all__ = ["EchoModel", "Model"]

_WORDS = re.compile(r"\s*\S+")


@runtime_checkable
class Model(Protocol):
    """Streams the chunks of a reply."""

    def astream(self, message: str) -> AsyncIterator[str]: ...


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
