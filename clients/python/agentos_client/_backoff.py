"""The client's one backoff rule: exponential, capped, with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Waits that double from ``initial`` up to ``maximum`` seconds, each scaled by 50-100 %.

    The jitter keeps many clients that lost the same server from coming back in step::

        Backoff(0.25, 5.0).delay(1)   # 0.125 .. 0.25
        Backoff(0.25, 5.0).delay(10)  # 2.5 .. 5.0
    """

    initial: float
    maximum: float

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError("need 0 <= initial <= maximum backoff")

    def delay(self, attempt: int) -> float:
        """The wait before attempt ``attempt`` (1 for the first retry)."""
        base = min(self.maximum, self.initial * 2.0 ** max(0, attempt - 1))
        return base * random.uniform(0.5, 1.0)
