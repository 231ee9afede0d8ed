"""The least time a job's requests can take: the keys' limits with their burst, or latency.

**The limits.**  Key k serves `R_k = min(rpm_k, tpm_k ÷ c)` requests a
minute, c the tokens its provider charges a request at admission, and its
provider's bucket grants `burst_s` seconds of that up front.  N requests
then take at least

    bound_s = 60 × (N ÷ Σ_k R_k − burst_s ÷ 60)

(as `tests/benchmarks/provider_bound.py` and the ETA, `engine.observe.eta`,
count it), and the last of them one latency more.  A job inside the burst
is not bound by the limits at all.

**Latency and concurrency.**  At most C requests are in flight (the
preset's ceiling), each a latency long.  Until a key's first answer the
engine sends cautiously (`FIRST_FILL_S` of its limits: a request or a few),
so the bulk goes out once the fastest of those first requests is back; it
then flows at C ÷ mean latency, and the job ends with the slowest of the
last C.  With a pause between requests (`batch_delay_s`), N of them take N
pauses.

The job's time is the largest of these; the one that gives it *binds*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from engine.limits.rate_limiter import FIRST_FILL_S
from engine.planning.latency_outlook import LatencyOutlook


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """One key as the plan sees it: its provider, alias and per-minute limits (None: unknown)."""

    provider: str
    alias: str
    rpm: float | None
    tpm: float | None

    @property
    def kind(self) -> tuple[str, float | None, float | None]:
        """Keys of one kind: the same provider and limits (a tier)."""
        return self.provider, self.rpm, self.tpm

    def by_tokens(self, charge: float) -> float | None:
        """Requests a minute the tokens limit allows at `charge` tokens a request."""
        return None if self.tpm is None or charge <= 0 else self.tpm / charge

    def per_minute(self, charge: float) -> float | None:
        """min(rpm, tpm ÷ charge) over the known limits; None when neither is known."""
        bounds = [b for b in (self.rpm, self.by_tokens(charge)) if b is not None]
        return min(bounds) if bounds else None

    def binds(self, charge: float) -> str:
        """Which of the key's limits holds it back: "rpm", "tpm" or "unknown"."""
        by_tokens = self.by_tokens(charge)
        if self.rpm is None and by_tokens is None:
            return "unknown"
        if by_tokens is None or (self.rpm is not None and self.rpm <= by_tokens):
            return "rpm"
        return "tpm"


@dataclass(frozen=True, slots=True)
class TimeInputs:
    """What the time depends on, besides the keys."""

    requests: int
    charge: float  # tokens the provider charges a request at admission
    reservation: float  # what the engine reserves a request at admission (prompt + output guess)
    burst_s: float  # seconds of its limits the provider's bucket grants up front
    concurrency: int  # the preset's ceiling on requests in flight
    batch_delay_s: float
    latency: LatencyOutlook


@dataclass(frozen=True, slots=True)
class TimeBound:
    """The bounds on a job's time and which binds (seconds; None: not known).

    `limits_bound_s` is the formula's (0: the job fits in the burst) and
    `limits_s` that plus the last answer's latency; `concurrency_s` the
    latency- and concurrency-bound time; `pace_s` the pauses between requests.
    """

    requests_per_min: float | None
    burst_requests: float | None
    limits_bound_s: float | None
    limits_s: float | None
    concurrency_s: float
    pace_s: float
    time_s: float
    binds: str  # "limits", "concurrency", "batch_delay" or "nothing" (no requests)
    unknown_limits: tuple[str, ...]  # aliases of keys whose limits are not known


def time_bound(keys: Sequence[KeyLimits], inputs: TimeInputs) -> TimeBound:
    """The job's time over `keys` (see the module)."""
    n, latency = inputs.requests, inputs.latency
    unknown = tuple(k.alias for k in keys if k.per_minute(inputs.charge) is None)
    rates = [k.per_minute(inputs.charge) for k in keys]
    rate = None if unknown or not keys else sum(r for r in rates if r is not None)
    if n <= 0:
        return TimeBound(rate, None, 0.0, 0.0, 0.0, 0.0, 0.0, "nothing", unknown)
    burst = limits_bound = limits_s = None
    if rate is not None and rate > 0:
        burst = rate * inputs.burst_s / 60.0
        limits_bound = max(0.0, 60.0 * (n / rate - inputs.burst_s / 60.0))
        limits_s = limits_bound + latency.mean if limits_bound > 0 else 0.0
    concurrency_s = _concurrency_s(keys, inputs)
    pace_s = n * inputs.batch_delay_s + latency.mean if inputs.batch_delay_s > 0 else 0.0
    candidates = {"limits": limits_s or 0.0, "concurrency": concurrency_s, "batch_delay": pace_s}
    binds = max(candidates, key=lambda name: candidates[name])
    return TimeBound(
        rate,
        burst,
        limits_bound,
        limits_s,
        concurrency_s,
        pace_s,
        candidates[binds],
        binds,
        unknown,
    )


def _concurrency_s(keys: Sequence[KeyLimits], inputs: TimeInputs) -> float:
    n, ceiling, latency = inputs.requests, max(1, inputs.concurrency), inputs.latency
    # Before its first answer a key sends FIRST_FILL_S of its limits (at least one request).
    opening = 0
    for key in keys:
        per_minute = key.per_minute(inputs.reservation)
        first = math.inf if per_minute is None else per_minute * FIRST_FILL_S / 60.0
        opening += max(1, int(min(first, ceiling)))
    opening = min(opening, ceiling, n)
    rest = n - opening
    if rest <= 0:
        return latency.expected_max(n)
    first_answer = latency.expected_min(opening)
    flowing = max(0, rest - ceiling) / ceiling * latency.mean
    return first_answer + flowing + latency.expected_max(min(rest, ceiling))


def with_one_more(keys: Sequence[KeyLimits], kind_of: KeyLimits) -> list[KeyLimits]:
    """`keys` and one more key of `kind_of`'s kind."""
    return [*keys, replace(kind_of, alias=f"{kind_of.alias}+1")]
