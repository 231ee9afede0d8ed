"""What the provider's `x-ratelimit-*` headers say a key may spend now, and how far to believe it.

Each answer's headers describe the provider's bucket at the moment it took
that request: `remaining` units then, and `reset` — the time until the
bucket is full again.  Together they give the bucket's size (remaining plus
what refills before the reset), which tells the two kinds of provider apart:
one whose bucket holds a full minute of the limit (spend it) and one that
enforces the minute in per-second quanta (pace).

Requests admitted after the answered one was sent are not in its headers:
they are subtracted (reserved in flight), and the refill since it was sent
is added, so the estimate never over-admits on stale news.  Requests do not
reach the provider in the order they were admitted (connections open, the
event loop is busy), so the bounds are blurred by the key's send spread:
what was admitted shortly before counts as possibly missing too, and the
refill is counted from shortly after.  A 429 where the headers promised room
lowers the trust in them for that key: the headroom and the burst taken from
them shrink, the spread widens, and all creep back while no 429 comes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# How far apart admission and arrival at the provider may be, either way, while a
# key's headers are fully believed, when each request's time on the wire is known:
# the jitter of the path to the provider, not its delay (a steady delay shifts the
# reading and our sends alike).  Each request of blur costs pacing twice over
# (counted missing, refilled later): at 0.1 s the 4-key benchmark lagged its line
# by ~0.3 s of a 45 s job.  A 429 the headers did not foresee widens it as the
# trust falls, up to `SPREAD_WIDENS_UP_TO` times.
SEND_SPREAD_S = 0.03
SPREAD_WIDENS_UP_TO = 8.0
# Until a key's headers have held for `SETTLE_S` — at the opening, when the first
# answers come back while the burst is still arriving, and again after a 429 they did
# not foresee — its spread is at least `OPENING_SPREAD_S`: behind a path that delays
# requests by up to 0.15 s at random, 0.03 s drew a storm of 429s at the first answers
# (13 of 500 requests) and none after; 0.1 s drew none.
OPENING_SPREAD_S = 0.1
SETTLE_S = 5.0


@dataclass(frozen=True, slots=True)
class BucketReading:
    """One bucket (requests or tokens) as one answer's headers describe it.

    `limit_per_min` is the provider's limit when it says (else the one in
    force); `taken_at` is when the answered request was sent.
    """

    remaining: float
    reset_s: float | None
    limit_per_min: float
    taken_at: float

    def capacity(self) -> float:
        """The provider's bucket size: what was left plus what refills before it is full.

        Without a reset time, only that it holds at least what was left.
        """
        if self.reset_s is None:
            return self.remaining
        return min(self.limit_per_min, self.remaining + self.reset_s * self.limit_per_min / 60.0)

    def available(
        self,
        now: float,
        rate_per_s: float,
        reserved_since: float,
        spends: Callable[[], Iterable[tuple[float, float]] | None] | None = None,
        spread_s: float = SEND_SPREAD_S,
        last_spend_at: float | None = None,
    ) -> float:
        """What the provider's bucket holds now for us: the reading refilled
        since it was taken (never past the bucket's size) less what we
        reserved after it (`reserved_since`).

        When the bucket may have filled up meanwhile, subtracting the
        reservations at the end would count a refill that spent them as
        lost: with `spends` ((time, amount) of each of those reservations, in
        order; None when forgotten) the bucket is replayed through them
        instead — on a bucket of one second that is most of its size.
        `last_spend_at`, when the latest of them was made, spares the replay
        where its outcome is sure: a full bucket.
        """
        size = max(self.capacity(), self.remaining)
        start = self.taken_at + spread_s
        refilled = self.remaining + max(0.0, now - start) * rate_per_s
        if (
            refilled > size
            and last_spend_at is not None
            and refilled - reserved_since >= size
            and (now - max(start, last_spend_at)) * rate_per_s >= reserved_since
        ):
            # Full at the end whether or not it filled up between the reservations
            # (if it did, what refilled since the last of them makes up all of
            # them): the replay's answer, without walking every reservation in
            # flight on every answer (~3 % of a busy process's CPU).
            return size
        replayed = None if refilled <= size or spends is None else spends()
        if replayed is None:  # never full meanwhile, or the reservations are forgotten
            return min(size, refilled) - reserved_since
        level, at = self.remaining, start
        for when, amount in replayed:
            if when > at:
                level, at = min(size, level + (when - at) * rate_per_s), when
            level -= amount
        return min(size, level + max(0.0, now - at) * rate_per_s)


class HeaderTrust:
    """How far a key's headers are believed, from 1 (fully) down to `FLOOR`,
    and how far apart its requests may reach the provider (`spread_s`).

    A 429 the headers did not foresee halves it (a storm of them within
    `STORM_S` is one lesson); after `QUIET_S` without one it grows back by
    `STEP` every `STEP_EVERY_S`.  `settled`: the headers have held for
    `SETTLE_S` since they were first read or last surprised (a storm's last
    429 included).
    """

    FLOOR = 1 / 16
    STORM_S = 5.0
    QUIET_S = 30.0
    STEP = 0.1
    STEP_EVERY_S = 10.0

    __slots__ = (
        "_held_since",
        "_last_step",
        "_last_surprise",
        "base_spread_s",
        "level",
        "settled",
    )

    def __init__(self, base_spread_s: float = SEND_SPREAD_S) -> None:
        self.level = 1.0
        self.base_spread_s = base_spread_s
        self.settled = False
        self._held_since: float | None = None  # first read, or last surprised
        self._last_surprise = -math.inf
        self._last_step = -math.inf

    def surprised(self, now: float) -> tuple[float, float] | None:
        """A 429 the headers said would not come; (old, new) trust when it fell."""
        self.settled, self._held_since = False, now
        if now - self._last_surprise < self.STORM_S:
            return None
        self._last_surprise = now
        self._last_step = now
        old = self.level
        self.level = max(self.FLOOR, old / 2.0)
        return (old, self.level) if self.level < old else None

    def recover(self, now: float) -> None:
        """Headers read at `now`: settled once they have held for `SETTLE_S`;
        quiet long enough, believe them a little more."""
        if self._held_since is None:
            self._held_since = now
        if not self.settled and now - self._held_since >= SETTLE_S:
            self.settled = True
        if self.level >= 1.0 or now - self._last_surprise < self.QUIET_S:
            return
        if now - self._last_step < self.STEP_EVERY_S:
            return
        self._last_step = now
        self.level = min(1.0, self.level + self.STEP)

    def spread_s(self) -> float:
        """How far apart admission and arrival at the provider may be for this
        key: `base_spread_s` while its headers are fully believed and settled,
        wider as the trust falls (up to `SPREAD_WIDENS_UP_TO` times)."""
        return self.spread_at(self.level)

    def spread_at(self, level: float) -> float:
        """The send spread at trust `level` (at least `OPENING_SPREAD_S` until settled)."""
        spread = self.base_spread_s / max(level, 1.0 / SPREAD_WIDENS_UP_TO)
        return spread if self.settled else max(OPENING_SPREAD_S, spread)

    def of(self, headroom: float) -> float:
        """The share of `headroom` to spend; a debt is a debt, whole."""
        return headroom * self.level if headroom > 0 else headroom
