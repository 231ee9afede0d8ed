"""Finds the concurrency the providers actually sustain (AIMD).

The operator's concurrency is a ceiling.  A burst of 429s halves the
working limit's headroom (multiplicative decrease); a quiet spell while
requests queue for a slot adds one (additive increase).  A limit that
led to a 429 storm is remembered, and growth holds just under it for
minutes before probing it again, so the controller settles just under the
real limit instead of oscillating.
"""

from __future__ import annotations

from collections import deque


class AdaptiveConcurrency:
    """Decides the working concurrency from the stream of outcomes."""

    STORM_SHARE = 0.05  # 429s above this share of recent requests is a storm
    WINDOW_S = 10.0
    GROW_EVERY_S = 3.0
    QUIET_S = 15.0
    # How long to sit one below a limit that stormed before probing it again.
    # A probe costs a short storm, and the climb back takes ~30 s, so a short
    # hold (it was 30 s) made a 60 s cycle of storms instead of settling.
    HOLD_BELOW_STORM_S = 600.0

    def __init__(self, ceiling: int, now: float) -> None:
        self.ceiling = max(1, ceiling)
        self.current = self.ceiling
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._last_change = now
        self._last_storm = -1e18
        self._storm_limit: int | None = None

    def set_ceiling(self, ceiling: int, now: float) -> None:
        """The operator or a preset set a new maximum: start from it."""
        self.ceiling = max(1, ceiling)
        self.current = self.ceiling
        self._storm_limit = None
        self._last_change = now

    def record(self, now: float, rate_limited: bool) -> None:
        self._outcomes.append((now, rate_limited))

    def update(self, now: float, saturated: bool) -> int | None:
        """Called on a tick; returns the new limit when it changes.

        `saturated`: work was waiting for a concurrency slot in the last tick.
        """
        while self._outcomes and self._outcomes[0][0] < now - self.WINDOW_S:
            self._outcomes.popleft()
        total = len(self._outcomes)
        limited = sum(1 for _, hit in self._outcomes if hit)
        if total >= 10 and limited / total > self.STORM_SHARE and now - self._last_change >= 2.0:
            self._storm_limit = self.current
            self._last_storm = now
            new = max(1, int(self.current * 0.7))
            self._outcomes.clear()
            return self._set(new, now)
        if (
            saturated
            and self.current < self.ceiling
            and now - self._last_storm >= self.QUIET_S
            and now - self._last_change >= self.GROW_EVERY_S
        ):
            if self._storm_limit is not None and self.current + 1 >= self._storm_limit:
                held = now - self._last_change
                if self.current < self._storm_limit:
                    if held < self.HOLD_BELOW_STORM_S:
                        return None  # just under the limit that stormed: stay
                elif held < self.QUIET_S:
                    return None  # probing the storm limit: stay until it proves quiet
                else:
                    self._storm_limit = None  # the real limit has risen: grow freely
            return self._set(self.current + 1, now)
        return None

    def _set(self, value: int, now: float) -> int | None:
        value = max(1, min(self.ceiling, value))
        self._last_change = now
        if value == self.current:
            return None
        self.current = value
        return value
