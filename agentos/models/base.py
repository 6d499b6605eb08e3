"""The contract of a model: what turns an agent's input into streamed text.

A model is any object with ``astream(message) -> AsyncIterator[str]``. Implementations live one per
module beside this one (``echo.py``); only this package imports a model provider's SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

__all__ = ["Model"]


@runtime_checkable
class Model(Protocol):
    """Streams the chunks of a reply."""

    def astream(self, message: str) -> AsyncIterator[str]: ...
