"""How long a request's answer takes, as a distribution a plan can ask two questions of.

A job the limits do not bind is as quick as its answers: its end is the
slowest of the last requests in flight, and its first answer — until which
the engine sends cautiously — the fastest of the first ones.  So a plan
needs more than a mean: the expected maximum and minimum of k latencies.
The distribution is the job's own stored answers when there are any, else
the bundled simulator's configured latency (plus its time per output token)
when the job's providers are the simulator, else a given or default value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from engine.config.settings import SimulatorSettings

DEFAULT_LATENCY_S = 2.0
"""A request's latency when nothing says better: a guess, and the plan says so."""

_GRID = 401  # quantiles taken of a configured distribution
_Z_95 = NormalDist().inv_cdf(0.95)  # the simulator's lognormal low/high are its 5th/95th


@dataclass(frozen=True, slots=True)
class LatencyOutlook:
    """Latencies in seconds, sorted (an empirical distribution), and where they came from."""

    samples: tuple[float, ...]
    source: str

    @classmethod
    def of(cls, samples: Sequence[float], source: str) -> LatencyOutlook:
        return cls(tuple(sorted(samples)) or (DEFAULT_LATENCY_S,), source)

    @classmethod
    def simulated(cls, sim: SimulatorSettings, output_tokens: float) -> LatencyOutlook:
        """The simulator's answer time: its base latency plus `output_tokens` at its pace."""
        low, high = sim.latency_s
        extra = sim.seconds_per_output_token * output_tokens
        quantiles = [(i + 0.5) / _GRID for i in range(_GRID)]
        if high <= 0:
            base = [0.0] * _GRID
        elif sim.latency_distribution == "lognormal":
            mu = (math.log(low) + math.log(high)) / 2
            sigma = (math.log(high) - math.log(low)) / (2 * _Z_95)
            normal = NormalDist(mu, sigma) if sigma > 0 else None
            base = [math.exp(normal.inv_cdf(q)) if normal else low for q in quantiles]
        else:
            base = [low + (high - low) * q for q in quantiles]
        what = f"{sim.latency_distribution} {low:g}–{high:g} s"
        return cls.of([b + extra for b in base], f"the simulator's latency ({what})")

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)

    def expected_max(self, k: int) -> float:
        """The expected slowest of `k` latencies drawn from the samples (0 for k < 1)."""
        if k < 1:
            return 0.0
        m = len(self.samples)
        # P(max <= the i-th smallest) = (i/m)^k: weight each sample by its step.
        return sum(x * ((i / m) ** k - ((i - 1) / m) ** k) for i, x in enumerate(self.samples, 1))

    def expected_min(self, k: int) -> float:
        """The expected fastest of `k` latencies drawn from the samples (0 for k < 1)."""
        if k < 1:
            return 0.0
        m = len(self.samples)
        return sum(
            x * ((1 - (i - 1) / m) ** k - (1 - i / m) ** k) for i, x in enumerate(self.samples, 1)
        )
