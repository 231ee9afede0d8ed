"""When the job will end: from the rate its keys' limits will sustain, then from what it does.

A rate-limited job runs at the rate its keys allow, and that rate is known
before the first answer: over the usable keys, Σ min(rpm, tpm ÷ c) ÷ 60
requests a second, c the tokens charged per request, times the chunks a
request carries.  What is left of the keys' burst is spent at once.  So at
the start the ETA is what remains beyond the burst at that rate, which a
measured rate, ramping up and noisy, cannot tell for many seconds.

The measured rate (chunks finished over the last `window_s`, counted from
the first one finished, so the first answers' latency is no lull) takes
over as evidence accumulates, but only where it says the job is *slower*
than its limits: a job held back by latency, concurrency or failures.  A
measured rate above the limits is the burst being spent, which says
nothing about the rate after it.  Its weight is t ÷ (t + e), t the seconds
measured and e = `evidence_s` × (measured ÷ limit rate)²: a rate a little
below the limits may be the run ramping up and needs some seconds to be
believed; one far below them is a job its limits do not bind.  The band
comes from the fastest and slowest `slice_s` stretches of the window,
through the same rule.

Limits are not the only bound: at most so many requests are in flight at
once, each a latency long, so a job whose rest fits in the burst still
takes (requests left × latency ÷ in flight) — without it the ETA of a
short job on a full-minute bucket says 0 s for the seconds it runs.

The estimator reads a key through its snapshot only (`capacity_of`): its
limits, whether it can serve, and its fresh-bucket remaining when the
snapshot carries one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.observe.snapshot import KeySnapshot

__all__ = [
    "Eta",
    "EtaEstimator",
    "KeyCapacity",
    "KeyOutlook",
    "capacity_of",
    "sustained_requests_per_s",
    "tokens_per_request",
]


@dataclass(frozen=True, slots=True)
class Eta:
    """Seconds until the job ends, with a band around it; None where there is nothing to go by."""

    eta_s: float | None = None
    low_s: float | None = None
    high_s: float | None = None

    def as_tuple(self) -> tuple[float | None, float | None, float | None]:
        return self.eta_s, self.low_s, self.high_s


UNKNOWN = Eta()
ENDED = Eta(0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class KeyCapacity:
    """What one key lets through: its per-minute limits (None: none known), whether it
    can serve at all, and what is left of its burst now (None: not known)."""

    rpm: float | None
    tpm: float | None
    usable: bool = True
    requests_left: float | None = None
    tokens_left: float | None = None
    in_flight: int = 0  # requests sent, their budget already spent
    latency_s: float | None = None  # its answers' mean latency (None: none yet)


@dataclass(frozen=True, slots=True)
class KeyOutlook:
    """What a key's budget says now beyond its snapshot: the burst its
    provider still holds (requests, tokens; None: no such limit or not
    known), what a request is charged at admission, and its mean latency.

    Kept out of the snapshot: it changes by the millisecond, and a
    snapshot of a finished job must hold still.
    """

    requests_left: float | None = None
    tokens_left: float | None = None
    charge_per_request: float | None = None
    latency_s: float | None = None


def capacity_of(key: KeySnapshot, outlook: KeyOutlook | None = None) -> KeyCapacity:
    """A key's capacity as its snapshot shows it, with its `outlook` when known."""
    now = outlook or KeyOutlook()
    return KeyCapacity(
        key.rpm_limit,
        key.tpm_limit,
        usable=key.state != "disabled",
        requests_left=now.requests_left,
        tokens_left=now.tokens_left,
        in_flight=key.in_flight,
        latency_s=now.latency_s,
    )


def charge_per_request(outlooks: Iterable[KeyOutlook]) -> float | None:
    """The mean admission charge of a request over the keys that know one."""
    charges = [o.charge_per_request for o in outlooks if o.charge_per_request]
    return sum(charges) / len(charges) if charges else None


def tokens_per_request(keys: Iterable[KeySnapshot]) -> float | None:
    """Tokens counted against the keys per request over the last minute; None before any."""
    requests = tokens = 0
    for key in keys:
        requests += key.rpm_used
        tokens += key.tpm_used
    return tokens / requests if requests and tokens else None


def sustained_requests_per_s(
    keys: Iterable[KeyCapacity], tokens_per_request: float | None
) -> float | None:
    """Σ over usable keys of min(rpm, tpm ÷ c) ÷ 60; None when a usable key has no limit
    (nothing bounds the rate) or no key is usable."""
    total = 0.0
    usable = False
    for key in keys:
        if not key.usable:
            continue
        usable = True
        per_minute = _key_per_minute(key.rpm, key.tpm, tokens_per_request)
        if per_minute is None:
            return None
        total += per_minute
    return total / 60.0 if usable and total > 0 else None


def _burst_requests(keys: Iterable[KeyCapacity], tokens_per_request: float | None) -> float:
    """Requests that do not wait for the keys' steady rate: what their unspent
    bursts let through at once (0 where not known), and those already in flight
    (their budget is spent; they end within a latency)."""
    total = 0.0
    for key in keys:
        if key.usable:
            left = _key_per_minute(key.requests_left, key.tokens_left, tokens_per_request)
            total += max(0.0, left or 0.0) + key.in_flight
    return total


def _tail_s(keys: Iterable[KeyCapacity]) -> float:
    """The last request sent still takes a latency to come back: the keys' mean."""
    latencies = [k.latency_s for k in keys if k.usable and k.latency_s is not None]
    return sum(latencies) / len(latencies) if latencies else 0.0


def _concurrency_bound_s(
    requests: float, keys: Iterable[KeyCapacity], in_flight_limit: int | None
) -> float:
    """The least time `requests` take when at most `in_flight_limit` are in flight at
    once, each for the keys' mean latency — and however few are left, the last of
    them takes a latency (0 where either is not known)."""
    if not in_flight_limit or requests <= 0:
        return 0.0
    return _tail_s(keys) * max(1.0, requests / in_flight_limit)


def _key_per_minute(
    requests: float | None, tokens: float | None, tokens_per_request: float | None
) -> float | None:
    """min(requests, tokens ÷ c) over the axes that are known; None if neither is."""
    bounds = [requests] if requests is not None else []
    if tokens is not None and tokens_per_request:
        bounds.append(tokens / tokens_per_request)
    return min(bounds) if bounds else None


class EtaEstimator:
    """Fed the chunks finished on a clock (`observe`), estimates when the rest will be done.

    Pure arithmetic on what it is given: a recorded sequence of
    (time, finished, limits) gives the same estimates every time.
    """

    def __init__(self, window_s: float = 20.0, evidence_s: float = 10.0, slice_s: float = 5.0):
        self._window_s = window_s
        self._evidence_s = evidence_s
        self._slice_s = slice_s
        self._samples: deque[tuple[float, int]] = deque()
        self._started_at: float | None = None  # the last observation before the first finish

    def observe(self, now: float, finished: int) -> None:
        """`finished` chunks (done or failed by calls, not skipped) by time `now`."""
        samples = self._samples
        if samples and now <= samples[-1][0]:
            return
        if self._started_at is None:
            # Until the first chunk finishes only the latest observation is kept: the
            # first answers' latency is not a lull in the rate.
            if samples and finished > samples[-1][1]:
                self._started_at = samples[-1][0]
            else:
                samples.clear()
        samples.append((now, finished))
        # Keep one sample at or before the window's start, to measure the whole window.
        while len(samples) > 2 and samples[1][0] <= now - self._window_s:
            samples.popleft()

    def measured(self) -> tuple[float, float, float, float] | None:
        """(rate, slowest, fastest, seconds measured), chunks per second; None before 2 s."""
        if self._started_at is None or len(self._samples) < 2:
            return None
        (t0, f0), (t1, f1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 2.0:
            return None
        rate = (f1 - f0) / (t1 - t0)
        slices = self._slice_rates()
        slowest, fastest = (min(slices), max(slices)) if len(slices) >= 2 else (rate, rate)
        return rate, min(slowest, rate), max(fastest, rate), t1 - self._started_at

    def _slice_rates(self) -> list[float]:
        rates: list[float] = []
        start_t, start_f = self._samples[0]
        for t, f in self._samples:
            if t - start_t >= self._slice_s:
                rates.append((f - start_f) / (t - start_t))
                start_t, start_f = t, f
        return rates

    def estimate(
        self,
        remaining: int | None,
        keys: Sequence[KeyCapacity],
        *,
        chunks_per_request: float,
        tokens_per_request: float | None,
        in_flight_limit: int | None = None,
    ) -> Eta:
        """When the `remaining` chunks will be done, with its band.

        `in_flight_limit` (the requests that may be in flight at once) bounds
        the pace too: a job whose rest fits in the keys' burst is not done at
        once but as fast as that many requests, each a latency long, go.
        """
        if remaining is None:
            return UNKNOWN
        if remaining <= 0:
            return ENDED
        per_request = max(1.0, chunks_per_request)
        requests_per_s = sustained_requests_per_s(keys, tokens_per_request)
        limit_rate = None if requests_per_s is None else requests_per_s * per_request
        burst = _burst_requests(keys, tokens_per_request) * per_request
        # Work beyond the burst waits for the rate; its last request then takes a latency.
        beyond = max(0.0, remaining - burst)
        tail = _tail_s(keys) if beyond > 0 else 0.0
        paced = _concurrency_bound_s(remaining / per_request, keys, in_flight_limit)
        measured = self.measured()
        if measured is None:
            if limit_rate is None:
                return Eta(paced, paced, paced) if paced > 0 else UNKNOWN
            only = max(beyond / limit_rate + tail, paced)
            return Eta(only, only, only)
        rate, slowest, fastest, seconds = measured

        def eta_at(measured_rate: float) -> float | None:
            if limit_rate is None:
                return remaining / measured_rate if measured_rate > 0 else None
            by_limits = max(beyond / limit_rate + tail, paced)
            if measured_rate >= limit_rate:
                return by_limits  # the burst being spent, or limits understated: they bind
            if measured_rate <= 0:
                return None
            # The further below the limits the job runs, the less a ramp-up can explain
            # it: (measured / limit)² scales the evidence the measure needs.
            needed = self._evidence_s * (measured_rate / limit_rate) ** 2
            weight = seconds / (seconds + needed)
            return (1.0 - weight) * by_limits + weight * remaining / measured_rate

        return Eta(eta_at(rate), eta_at(fastest), eta_at(slowest))
