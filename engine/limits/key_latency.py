"""How long a key's answers take: the recent distribution, and when a wait has become a hang.

Kept per key (keys of different providers answer at different speeds) from
answered chat calls only.  Two uses: the mean feeds Little's law (how many
requests in flight the budget's rate needs), and a high quantile times a
margin is the patience after which a request is taken for hung — abandoned
and its batch requeued, instead of waiting out the whole request timeout.
Patience is given only once there are enough samples to say what is normal,
and never below a floor, so a fast key's occasional slow answer survives.
A request sent before then (a full bucket's opening burst) is told when
patience becomes known (`when_known`), so a hang in the burst is not waited
out for the whole timeout.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class KeyLatency:
    """The last `WINDOW` answer latencies of one key."""

    WINDOW = 256
    MIN_SAMPLES = 20
    HANG_QUANTILE = 0.99
    HANG_MARGIN = 2.0
    HANG_FLOOR_S = 3.0
    # At the job's tail (`engine.limits.job_tail`) the end waits for a hang: a
    # request past this quantile times this margin is sent again instead.
    TAIL_QUANTILE = 0.95
    TAIL_MARGIN = 1.25
    TAIL_FLOOR_S = 1.0

    __slots__ = ("_samples", "_sorted", "_total", "_waiting")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=self.WINDOW)
        self._total = 0.0
        self._sorted: list[float] | None = None  # made on demand, dropped on change
        self._waiting: set[Callable[[], None]] = set()  # told once patience is known

    def record(self, seconds: float) -> None:
        if len(self._samples) == self._samples.maxlen:
            self._total -= self._samples[0]
        self._samples.append(seconds)
        self._total += seconds
        self._sorted = None
        if self._waiting and len(self._samples) >= self.MIN_SAMPLES:
            waiting, self._waiting = self._waiting, set()
            for known in waiting:
                known()

    @property
    def knows_patience(self) -> bool:
        """Whether there are enough answers to say when a request is hung."""
        return len(self._samples) >= self.MIN_SAMPLES

    def when_known(self, known: Callable[[], None]) -> None:
        """Call `known` once patience becomes known (see `knows_patience`)."""
        self._waiting.add(known)

    def forget(self, known: Callable[[], None]) -> None:
        """`known` no longer needs telling (its request ended)."""
        self._waiting.discard(known)

    @property
    def count(self) -> int:
        return len(self._samples)

    def mean(self) -> float | None:
        """The mean latency, None before any answer."""
        return self._total / len(self._samples) if self._samples else None

    def quantile(self, q: float) -> float | None:
        if not self._samples:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._samples)
        ordered = self._sorted
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def patience(self, ceiling_s: float, *, tail: bool = False) -> float:
        """How long a request on this key may go unanswered before it counts as hung.

        `ceiling_s` (the preset's request timeout) until there are enough
        samples; then the high quantile times the margin, within
        [`HANG_FLOOR_S`, `ceiling_s`] — at the job's `tail`, a lower quantile
        and margin, within [`TAIL_FLOOR_S`, `ceiling_s`].
        """
        if len(self._samples) < self.MIN_SAMPLES:
            return ceiling_s
        if tail:
            high = self.quantile(self.TAIL_QUANTILE) or 0.0
            return min(ceiling_s, max(self.TAIL_FLOOR_S, high * self.TAIL_MARGIN))
        high = self.quantile(self.HANG_QUANTILE) or 0.0
        return min(ceiling_s, max(self.HANG_FLOOR_S, high * self.HANG_MARGIN))
