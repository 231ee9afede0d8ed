"""The simulator's per-key rate limits, modelled on OpenAI's.

Each key has a requests bucket and a tokens bucket.  A bucket refills
continuously at limit/60 per second and holds `burst_s` seconds of that:
`limit × burst_s / 60`.  Providers differ here.  With `burst_s = 60` (as
OpenAI documents its limits) a key that has been idle for a minute may
spend its whole per-minute limit at once; with `burst_s = 1` the minute is
enforced per second, so a fresh key may send only a second's worth before
it must pace.  A request is admitted only when both buckets can cover it;
a rejected request takes nothing.  A request larger than a small bucket
(but within the per-minute limit) waits for a full bucket and leaves it in
debt, so it costs the time its size is worth and is never refused for good.
Time is passed in explicitly, so the arithmetic is testable without a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

LimitKind = Literal["requests", "tokens"]


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI writes it in headers and messages.

    Go's `time.Duration` style, rounded up to the millisecond so a client
    that waits this long is never early: `"120ms"`, `"1s"`, `"1.5s"`,
    `"6m0s"`, `"1h0m0s"`.
    """
    # The epsilon stops float noise (0.12 * 1000 = 120.00000000000001) from rounding up.
    total_ms = math.ceil(seconds * 1000 - 1e-9)
    if total_ms <= 0:
        return "0s"
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest_ms = divmod(total_ms, 3_600_000)
    minutes, seconds_ms = divmod(rest_ms, 60_000)
    secs = f"{seconds_ms / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


FULL_MINUTE_S = 60.0
"""A bucket that holds a whole minute of its per-minute limit (OpenAI's kind)."""


class TokenBucket:
    """Capacity `limit × burst_s / 60`, refilled continuously at `limit / 60` per second.

    `limit` stays the per-minute limit whatever the bucket's size: it is
    what `x-ratelimit-limit-*` reports.
    """

    __slots__ = ("_level", "_updated", "capacity", "limit", "per_second")

    def __init__(self, limit: int, now: float, burst_s: float = FULL_MINUTE_S) -> None:
        if limit <= 0:
            raise ValueError(f"a per-minute limit must be positive, got {limit}")
        if not 0.0 < burst_s <= FULL_MINUTE_S:
            raise ValueError(f"burst_s must be more than 0 and at most 60, got {burst_s}")
        self.limit = limit
        self.per_second = limit / 60.0
        self.capacity = limit * burst_s / 60.0
        self._level = self.capacity  # a fresh key starts with a full bucket
        self._updated = now

    def level(self, now: float) -> float:
        """How much the bucket holds at `now` (refilling first); below 0 while in debt."""
        if now > self._updated:
            self._level = min(self.capacity, self._level + (now - self._updated) * self.per_second)
            self._updated = now
        return self._level

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until the bucket can cover `amount` (0 when it already can).

        An amount larger than the bucket waits for a full bucket only.
        """
        level = self.level(now)
        needed = min(amount, self.capacity)
        if level >= needed:
            return 0.0
        return (needed - level) / self.per_second

    def take(self, amount: float, now: float) -> None:
        """Remove `amount` (the level may go below 0); callers check `wait_for` first."""
        self._level = self.level(now) - amount

    def remaining(self, now: float) -> int:
        """Whole units available now, as `x-ratelimit-remaining-*` reports them."""
        return max(0, math.floor(self.level(now)))

    def seconds_until_full(self, now: float) -> float:
        """As `x-ratelimit-reset-*` reports: how long until the bucket is full again."""
        return (self.capacity - self.level(now)) / self.per_second


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one request.

    When not admitted, `limited_by` names the bucket that binds (the one
    with the longer wait), `limit`/`used`/`requested` fill the 429 message,
    and `retry_after_s` is how long until both buckets could cover the
    request; `None` when no wait helps (the request exceeds the limit).
    """

    admitted: bool
    limited_by: LimitKind | None = None
    limit: int = 0
    used: int = 0
    requested: int = 0
    retry_after_s: float | None = None

    @property
    def too_large(self) -> bool:
        """The request can never fit, however long the caller waits."""
        return not self.admitted and self.retry_after_s is None


_ADMITTED = Admission(admitted=True)


class KeyBudget:
    """One key's pair of buckets, each holding `burst_s` seconds of its limit.

    A limit of None means no limit on that axis.
    """

    __slots__ = ("requests", "tokens")

    def __init__(
        self, rpm: int | None, tpm: int | None, now: float, burst_s: float = FULL_MINUTE_S
    ) -> None:
        self.requests = TokenBucket(rpm, now, burst_s) if rpm is not None else None
        self.tokens = TokenBucket(tpm, now, burst_s) if tpm is not None else None

    def admit(self, token_cost: int, now: float) -> Admission:
        """Take one request and `token_cost` tokens, or take nothing and say why."""
        tokens = self.tokens
        requests = self.requests
        if tokens is not None and token_cost > tokens.limit:
            return Admission(
                admitted=False,
                limited_by="tokens",
                limit=tokens.limit,
                used=tokens.limit - tokens.remaining(now),
                requested=token_cost,
            )
        wait_requests = requests.wait_for(1, now) if requests is not None else 0.0
        wait_tokens = tokens.wait_for(token_cost, now) if tokens is not None else 0.0
        if wait_requests == 0.0 and wait_tokens == 0.0:
            if requests is not None:
                requests.take(1, now)
            if tokens is not None:
                tokens.take(token_cost, now)
            return _ADMITTED
        # Name the bucket with the longer wait: it is the one that binds.
        kind: LimitKind
        if requests is not None and wait_requests >= wait_tokens:
            bucket, kind, requested = requests, "requests", 1
        else:
            assert tokens is not None  # a positive wait implies the bucket exists
            bucket, kind, requested = tokens, "tokens", token_cost
        return Admission(
            admitted=False,
            limited_by=kind,
            limit=bucket.limit,
            used=bucket.limit - bucket.remaining(now),
            requested=requested,
            retry_after_s=max(wait_requests, wait_tokens),
        )

    def headers(self, now: float) -> dict[str, str]:
        """The six `x-ratelimit-*` headers for the buckets this key has.

        `limit` is the per-minute limit, as OpenAI reports it; `remaining`
        what the bucket holds now (a second's quanta when the minute is
        enforced per second); `reset` how long until the bucket is full.
        """
        headers: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is None:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining(now))
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.seconds_until_full(now))
        return headers
