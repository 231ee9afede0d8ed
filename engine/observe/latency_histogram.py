"""Request latencies in fixed buckets: every answer counted, for a monitoring stack.

The run's percentiles (`RunStats`) come from a bounded window of recent
latencies; a monitoring stack instead wants cumulative bucket counts it can
difference and aggregate over any window it likes.  Counting an answer is a
bisect over a dozen bounds; the snapshot's copy is made on demand.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate

# Upper bounds in seconds: a fast model answers in a fraction of a second, a
# large batch on a busy provider in minutes; past the last bound is +Inf.
LATENCY_BOUNDS_S: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """Answered requests by latency, as Prometheus reads a histogram.

    `cumulative[i]` counts the answers that took at most `bounds[i]`
    seconds; the last entry (bound +Inf) is `count`.  `sum_s` is their
    total latency.
    """

    bounds: tuple[float, ...] = LATENCY_BOUNDS_S
    cumulative: tuple[int, ...] = (0,) * (len(LATENCY_BOUNDS_S) + 1)
    sum_s: float = 0.0

    @property
    def count(self) -> int:
        return self.cumulative[-1]


class LatencyBuckets:
    """The engine's running counts behind `LatencyHistogram` (mutable, engine-owned)."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS_S) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative: one add per answer
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one answer that took `seconds` (a bound is inclusive, as Prometheus's `le`)."""
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def snapshot(self) -> LatencyHistogram:
        return LatencyHistogram(self._bounds, tuple(accumulate(self._counts)), self._sum)
