"""Percentiles for every benchmark, one definition.

``pctl`` is the nearest-rank percentile: the smallest value that at least ``q`` of the values
do not exceed. Of 100 values, the p99 is the 99th smallest, not the largest (which is what
an index of ``int(q * n)`` picked): the largest is reported as the max, next to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["pctl"]


def pctl(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` percentile of ``values`` (0 < q <= 1); ValueError when empty."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = math.ceil(q * len(ordered) - 1e-9)  # q * n is not exact in binary
    return ordered[min(len(ordered), max(rank, 1)) - 1]
