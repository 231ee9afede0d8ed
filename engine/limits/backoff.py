"""How long to wait before trying again: exponential backoff with full jitter.

The bounds come from the preset in force, read at each call, so a preset
switched mid-run applies to the next retry.  One random source serves every
caller (retries and 429s without a retry-after), as one did before.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from engine.config.settings import Preset


class Backoff:
    """Delays for attempt 1, 2, …: uniform in [0, min(max, base × 2^(attempt-1))]."""

    def __init__(self, preset: Callable[[], Preset], rng: random.Random | None = None) -> None:
        self._preset = preset
        self._rng = rng or random.Random()

    def delay_s(self, attempt: int) -> float:
        """The wait before attempt `attempt + 1`, in seconds."""
        p = self._preset()
        return self._rng.uniform(0.0, min(p.backoff_max_s, p.backoff_base_s * 2 ** (attempt - 1)))
