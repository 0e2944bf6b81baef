"""The latency sketch of a roll-up row: DDSketch's log buckets, each within ``ALPHA`` of its durations.

Latency sketch (DDSketch's log buckets, ``ALPHA`` = 1%): a duration d >= 1 ms falls in bucket
``ceil(log(d) / log(gamma))`` with ``gamma = (1 + ALPHA) / (1 - ALPHA)``; a bucket's representative
value is within ``ALPHA`` (relative) of every duration in it. A percentile takes the two ranks that
numpy's linear interpolation uses and interpolates between their representatives with numpy's
weight, so **each p50/p95/p99 is within 1% (relative) of the exact figure** of ``aggregate_sql``.
Counts, tokens and cost are exact.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from services._mlflow_internal.aggregate_rows import PERCENTILES

ALPHA = 0.01
_GAMMA = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA = math.log(_GAMMA)


def sketch_index(duration_ms: float) -> int:
    """The sketch bucket of a duration (0 for durations under 1 ms)."""
    return 0 if duration_ms < 1 else max(1, math.ceil(math.log(duration_ms) / _LOG_GAMMA))


def _value(index: int) -> float:
    return 0.0 if index <= 0 else 2 * _GAMMA ** index / (_GAMMA + 1)


def sketch_of(durations: Iterable[float]) -> dict[int, int]:
    """Count the durations per sketch bucket."""
    counts: dict[int, int] = {}
    for d in durations:
        i = sketch_index(d)
        counts[i] = counts.get(i, 0) + 1
    return counts


def encode_sketch(counts: dict[int, int]) -> str:
    """A sketch as stored in a roll-up row: ``index:count`` pairs."""
    return ",".join(f"{i}:{n}" for i, n in sorted(counts.items()))


def decode_sketch_into(text: str | None, into: dict[int, int]) -> None:
    """Add a stored sketch's counts to ``into``."""
    if text:
        for part in text.split(","):
            i, n = part.split(":")
            into[int(i)] = into.get(int(i), 0) + int(n)


def sketch_percentiles(counts: dict[int, int], percentiles: Sequence[float] = PERCENTILES) -> list[float | None]:
    """numpy-style linear percentiles from a sketch, each within ``ALPHA`` of the exact one."""
    total = sum(counts.values())
    if not total:
        return [None] * len(percentiles)
    ordered = sorted(counts.items())

    def at(rank: int) -> float:
        seen = 0
        for index, n in ordered:
            seen += n
            if seen > rank:
                return _value(index)
        return _value(ordered[-1][0])

    out = []
    for p in percentiles:
        position = p / 100 * (total - 1)
        low = math.floor(position)
        frac = position - low
        lo = at(low)
        out.append(lo if frac == 0 else lo + frac * (at(low + 1) - lo))
    return out
