"""How many stored results the drift monitor looks at: every one up to a rate, a sample past it.

A result's features and the monitor's bookkeeping cost ~13 µs of CPU
(`tests/benchmarks/drift_overhead.py`).  At a few hundred results a second
that is noise; a job bound by CPU — a fast provider, 5 chunks a request,
~3,000 results a second — paid 5–9 % of its wall time for them
(`tests/benchmarks/drift_gate_cost.py`, latency × 0.7, on a 2-core VM).
Past `MAX_PER_S`, results are looked at as a token bucket allows (a second
of them at most at once) and the rest passed over, spread evenly through
each arrival: the distributions the gates compare are the same on a
sample, and at such rates a window of sampled results still spans well
under a second.  While the baseline is learned, the caller takes every
result (`DriftWatch`): it fills in its few hundred results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["MAX_PER_S", "ResultSampling"]

MAX_PER_S = 500.0
"""Results a second the monitor looks at, at most (past the baseline)."""

Item = TypeVar("Item")


class ResultSampling:
    """A token bucket of `max_per_s` results a second, holding a second of them."""

    __slots__ = ("_clock", "_level", "_max_per_s", "_then")

    def __init__(self, clock: Callable[[], float], max_per_s: float = MAX_PER_S) -> None:
        if max_per_s <= 0:
            raise ValueError("max_per_s must be > 0")
        self._clock = clock
        self._max_per_s = max_per_s
        self._level = max_per_s
        self._then = clock()

    def sample(self, items: Sequence[Item]) -> Sequence[Item]:
        """Of `items` arriving now, the ones to look at: all while the rate allows,
        else as many as it allows, evenly spread through them."""
        now = self._clock()
        self._level = min(self._max_per_s, self._level + (now - self._then) * self._max_per_s)
        self._then = now
        taken = min(len(items), math.floor(self._level))
        self._level -= taken
        if taken == len(items):
            return items
        if taken == 0:
            return ()
        step = len(items) / taken
        return [items[int(i * step)] for i in range(taken)]
