"""Streaming detection of sudden shifts in a feature's mean.

PSI and z compare a whole window with the baseline, so a shift shows only
once it fills enough of the window.  A sequential detector watches the
stream itself and flags a jump after a few dozen samples.

The detectors' bounds assume values on a fixed scale, and our features are
heavy-tailed (a few answers are ten times the median).  So each value is
replaced by its mid-rank among the baseline samples: a number in [0, 1],
uniform (mean ½, variance 1/12) while nothing changes, whatever the
feature's scale or shape.

The default is river's two-sided Page-Hinkley (a CUSUM) rather than ADWIN.
Measured by `python -m tests.benchmarks.drift_overhead` on synthetic
answers, where latency is known once per answer (~40 samples per 200
results): after a 2.5× latency jump Page-Hinkley with the settings below
flagged it a median 118 results later (worst 170, 20 runs); ADWIN with
δ = 1e-5 missed 13 of 20 within 600 results, and with δ = 1e-3 took a
median 340.  None of the three raised a false alarm in 60,000 results.

`PageHinkley` is river's Page-Hinkley, step for step (a test feeds both
the same streams and compares every verdict), written out here because
importing `river.drift` loads scipy — its KSWIN and bundled data sets —
and cost 1.1–2.5 s of start-up CPU before the first request, for 20 lines
of arithmetic.  Any detector with river's `update(x)` / `drift_detected`
(river's ADWIN, say) still plugs in: `ShiftDetector`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "PAGE_HINKLEY_ALLOWANCE",
    "PAGE_HINKLEY_THRESHOLD",
    "MeanShiftDetector",
    "PageHinkley",
    "ShiftDetector",
    "baseline_ranks",
    "page_hinkley",
]

PAGE_HINKLEY_ALLOWANCE = 0.15
"""Page-Hinkley's δ, in rank units: drifts of the mean smaller than this are ignored.
A sudden shift moves the mean rank by 0.3–0.5."""

PAGE_HINKLEY_THRESHOLD = 5.0
"""Page-Hinkley's λ: the cumulative excess that counts as a change.  With δ above,
a random walk of uniform ranks reaches it by chance with probability ~exp(−2δλ·12)
= exp(−18) per excursion; a jump of the mean rank by 0.45 reaches it in ~17 samples."""

_MIN_SAMPLES = 30  # river's default: no verdict before the detector has seen this many


class ShiftDetector(Protocol):
    """A sequential detector as river shapes them: fed one value at a time."""

    def update(self, x: float) -> object:
        """Take the next value of the stream."""
        ...

    @property
    def drift_detected(self) -> bool:
        """Whether the last value completed a change."""
        ...


class PageHinkley:
    """The Page-Hinkley test of a stream's mean, as `river.drift.PageHinkley` runs it.

    Cumulative deviations from the running mean, less (or plus) the
    allowance `delta`, each faded by `alpha`; a change is a rise of the
    upward sum above its minimum (or a fall of the downward sum below its
    maximum) by more than `threshold`, once `min_instances` values are in.
    After a change the next value starts the test afresh.
    """

    __slots__ = (
        "_drift",
        "_max_decrease",
        "_mean",
        "_min_increase",
        "_n",
        "_sum_decrease",
        "_sum_increase",
        "alpha",
        "delta",
        "min_instances",
        "mode",
        "threshold",
    )

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: Literal["up", "down", "both"] = "both",
    ) -> None:
        if mode not in ("up", "down", "both"):
            raise ValueError(f"mode must be 'up', 'down' or 'both', not {mode!r}")
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._reset()

    def _reset(self) -> None:
        self._drift = False
        self._n = 0.0
        self._mean = 0.0
        self._sum_increase = 0.0
        self._sum_decrease = 0.0
        self._min_increase = math.inf
        self._max_decrease = -1.0

    @property
    def drift_detected(self) -> bool:
        """Whether the last value completed a change."""
        return self._drift

    def update(self, x: float) -> None:
        """Take the next value (river's arithmetic, in its order, so verdicts match)."""
        if self._drift:
            self._reset()
        self._n += 1.0
        self._mean += (1.0 / self._n) * (x - self._mean)
        dev = x - self._mean
        self._sum_increase = self.alpha * self._sum_increase + dev - self.delta
        self._sum_decrease = self.alpha * self._sum_decrease + dev + self.delta
        if self._sum_increase < self._min_increase:
            self._min_increase = self._sum_increase
        if self._sum_decrease > self._max_decrease:
            self._max_decrease = self._sum_decrease
        if self._n >= self.min_instances:
            rise = self._sum_increase - self._min_increase > self.threshold
            fall = self._max_decrease - self._sum_decrease > self.threshold
            mode = self.mode
            self._drift = rise if mode == "up" else fall if mode == "down" else rise or fall


def page_hinkley() -> ShiftDetector:
    """The default detector: two-sided Page-Hinkley without forgetting."""
    return PageHinkley(
        min_instances=_MIN_SAMPLES,
        delta=PAGE_HINKLEY_ALLOWANCE,
        threshold=PAGE_HINKLEY_THRESHOLD,
        alpha=1.0,
        mode="both",
    )


def baseline_ranks(sorted_baseline: NDArray[np.float64], values: ArrayLike) -> NDArray[np.float64]:
    """Each value's mid-rank in the sorted baseline, scaled to [0, 1].

    Ties count half below and half above, so a discrete feature whose value
    equals most of the baseline (0 items, say) maps to the middle of its
    tie, not to an end.
    """
    array = np.asarray(values, dtype=np.float64)
    n = sorted_baseline.size
    if n == 0:
        return np.full(array.shape, 0.5)
    below = np.searchsorted(sorted_baseline, array, side="left")
    at_or_below = np.searchsorted(sorted_baseline, array, side="right")
    return (below + at_or_below) / (2.0 * n)


class MeanShiftDetector:
    """A sequential detector over one feature's baseline ranks.

    `detector` makes the detector (Page-Hinkley by default; pass
    `lambda: river.drift.ADWIN(...)` to compare).
    """

    def __init__(
        self, baseline: ArrayLike, detector: Callable[[], ShiftDetector] = page_hinkley
    ) -> None:
        self._sorted = np.sort(np.asarray(baseline, dtype=np.float64))
        self._detector = detector()
        self.detections = 0

    def update(self, values: ArrayLike) -> list[int]:
        """Feed values in arrival order; the indexes (into `values`) where a shift was detected.

        After a detection the detector restarts on the next value, so
        a shift to a new level is reported once, not for as long as it lasts.
        """
        detector = self._detector
        found: list[int] = []
        for index, rank in enumerate(baseline_ranks(self._sorted, values).tolist()):
            detector.update(rank)
            if detector.drift_detected:
                found.append(index)
        self.detections += len(found)
        return found
