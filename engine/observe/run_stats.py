"""Counters of a run, and the rates, latencies and ETA derived from them.

Rates come from counter deltas on a one-second tick (as Scrapy's LogStats
does), smoothed; percentiles are computed on the tick from a bounded
window of recent latencies, so taking a snapshot costs almost nothing.
The ETA comes from the keys' limits and the chunks finished on the tick
(`engine.observe.eta`).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.observe.eta import (
    UNKNOWN,
    EtaEstimator,
    KeyOutlook,
    capacity_of,
    charge_per_request,
    tokens_per_request,
)
from engine.observe.latency_histogram import LatencyBuckets
from engine.observe.snapshot import KeySnapshot

_HISTORY = 600  # seconds of per-second history kept for the charts
_LATENCY_WINDOW = 2000


@dataclass(slots=True)
class RunStats:
    """Mutable counters owned by the engine; read only through the engine's snapshot."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    cached: int = 0  # a result without a request of its own (see `Counts.cached`)
    records_skipped: int = 0  # input records left out (unreadable, binary, no text): not chunks
    seen: int = 0
    total: int | None = None
    requests: int = 0
    attempts_failed: int = 0
    rate_limited: int = 0
    hedged: int = 0  # second requests sent for a batch at the job's tail
    tokens: int = 0
    tokens_out: int = 0  # completion tokens of parsed answers
    prompt_tokens: int = 0  # every answer's usage, parsed or not
    completion_tokens: int = 0
    chunks_answered: int = 0
    cost_usd: float = 0.0
    errors_by_kind: Counter[str] = field(default_factory=Counter)
    errors_by_key: Counter[str] = field(default_factory=Counter)
    _latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    latency_buckets: LatencyBuckets = field(default_factory=LatencyBuckets)
    # derived on tick
    items_per_min: float = 0.0
    requests_per_min: float = 0.0
    tokens_per_s: float = 0.0
    items_per_min_low: float = 0.0
    items_per_min_high: float = 0.0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    throughput_history: deque[float] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    latency_history: deque[float] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    error_rate_history: deque[float] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    _per_second_items: deque[int] = field(default_factory=lambda: deque(maxlen=60))
    _last: tuple[float, int, int, int, int, int] | None = None
    _ewma_items: float | None = None
    _ewma_requests: float | None = None
    _ewma_tokens: float | None = None
    _eta: EtaEstimator = field(default_factory=EtaEstimator)

    def record_latency(self, seconds: float) -> None:
        self._latencies.append(seconds)
        self.latency_buckets.observe(seconds)

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped + self.cached

    def tick(self, now: float) -> None:
        """Derive rates from the counters' change since the last tick."""
        current = (
            now,
            self.done + self.failed,
            self.requests,
            self.tokens,
            self.attempts_failed,
            self.rate_limited,
        )
        if self._last is not None:
            dt = now - self._last[0]
            if dt > 0:
                d_items = current[1] - self._last[1]
                d_req = current[2] - self._last[2]
                d_tok = current[3] - self._last[3]
                d_fail = current[4] - self._last[4]
                self._per_second_items.append(d_items)
                # ~20 s smoothing: steady for the eye, quick enough for a preset switch.
                alpha = 1.0 - math.exp(-dt / 20.0)
                self._ewma_items = _ewma(self._ewma_items, d_items / dt * 60.0, alpha)
                self._ewma_requests = _ewma(self._ewma_requests, d_req / dt * 60.0, alpha)
                self._ewma_tokens = _ewma(self._ewma_tokens, d_tok / dt, alpha)
                self.items_per_min = self._ewma_items
                self.requests_per_min = self._ewma_requests
                self.tokens_per_s = self._ewma_tokens
                self._band()
                self.throughput_history.append(d_items / dt * 60.0)
                self.error_rate_history.append(d_fail / d_req if d_req else 0.0)
        self._last = current
        self._eta.observe(now, current[1])
        if self._latencies:
            values = np.fromiter(self._latencies, dtype=np.float64, count=len(self._latencies))
            p50, p95, p99 = np.percentile(values, (50, 95, 99))
            self.p50, self.p95, self.p99 = float(p50), float(p95), float(p99)
            self.latency_history.append(self.p50)

    def _band(self) -> None:
        # The band spans the rates seen over 10 s windows in the last minute.
        samples = list(self._per_second_items)
        if len(samples) < 10:
            self.items_per_min_low = self.items_per_min_high = self.items_per_min
            return
        windows = [sum(samples[i : i + 10]) * 6.0 for i in range(0, len(samples) - 9, 5)]
        self.items_per_min_low = min(min(windows), self.items_per_min)
        self.items_per_min_high = max(max(windows), self.items_per_min)

    def summary_line(self, job_name: str, elapsed_s: float, records_skipped: int) -> str:
        """The run in one line, as the job's end prints it."""
        records = records_skipped
        return (
            f"{job_name}: {self.done} done, {self.failed} failed, {self.skipped} skipped, "
            f"{self.cached} cached, "
            + (f"{records} input records skipped, " if records else "")
            + f"{self.requests} requests ({self.rate_limited} rate-limited) "
            f"in {elapsed_s:.1f}s, cost ${self.cost_usd:.4f}"
        )

    def summary(self, elapsed_s: float, records_skipped: int, fatal: str) -> dict[str, object]:
        """The run's figures as its `runs` row in the store keeps them."""
        return {
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "cached": self.cached,
            "records_skipped": records_skipped,
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "tokens": self.tokens,
            "cost_usd": self.cost_usd,
            "elapsed_s": elapsed_s,
            "fatal": fatal,
        }

    def eta(
        self,
        remaining: int | None,
        *,
        running: bool = True,
        keys: Sequence[KeySnapshot] = (),
        outlooks: Sequence[KeyOutlook] = (),
        batch_size: int = 1,
        in_flight_limit: int | None = None,
    ) -> tuple[float | None, float | None, float | None]:
        """(eta, low, high) in seconds; None while there is nothing to go by.

        From the `keys`' limits (and each one's `outlooks`, in the same
        order: its burst left, its charge per request, its latency) at first,
        for `batch_size` chunks a request, at most `in_flight_limit` requests
        in flight at once, and more and more from the rate
        measured on the tick.  None too when
        the job is not `running` (paused, draining, stopping or ended): its
        rate no longer says when it will end, so front ends show the job's
        state in the ETA's place instead of a countdown.
        """
        if not running:
            return UNKNOWN.as_tuple()
        if remaining is not None:
            # Answered chunks on their way to the store need no request and no rate.
            remaining -= max(0, self.chunks_answered - self.done)
        # A failed attempt or a 429 spends a request and finishes no chunk.
        spent = self.attempts_failed + self.rate_limited
        carried = batch_size * (1.0 - spent / self.requests) if self.requests else batch_size
        # What the provider counts at admission binds the tokens limit; the
        # tokens answers used are a stand-in until a request was admitted.
        per_request = charge_per_request(outlooks) or tokens_per_request(keys)
        if per_request is None and self.requests > spent:
            per_request = self.tokens / (self.requests - spent) or None
        known: Sequence[KeyOutlook | None] = outlooks or [None] * len(keys)
        return self._eta.estimate(
            remaining,
            [capacity_of(key, outlook) for key, outlook in zip(keys, known, strict=True)],
            chunks_per_request=carried,
            tokens_per_request=per_request,
            in_flight_limit=in_flight_limit,
        ).as_tuple()


def _ewma(previous: float | None, value: float, alpha: float) -> float:
    return value if previous is None else previous + alpha * (value - previous)
