"""Per-key request and token budgets: reserve → reconcile → sync from headers.

No limiter library can refund or adjust usage after a response, so this is
a small dual token bucket.  Each bucket refills continuously at limit/60
per second, like the providers' own limiters.  Admission may drive a bucket
into debt (a request bigger than the burst still gets through once the
bucket is full), which keeps the long-run rate exactly at the limit.

A bucket starts with a short burst (a couple of seconds of the limit): some
providers enforce a per-minute limit over shorter quanta, and a
minute-sized burst would earn 429s there.  Once the provider's headers say
how big its bucket is and what is left in it
(`engine.limits.provider_headroom`), the budget takes that as what it may
spend now — a full minute where the provider grants one.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from engine.limits.provider_headroom import SEND_SPREAD_S, BucketReading, HeaderTrust

Clock = Callable[[], float]

# The first guess at a bucket's size, while the provider has said nothing.
BURST_SECONDS = 2.0
# What a key may send at once before its provider has said anything, in
# seconds of its limit (`KeyBudget.open_cautiously`).
FIRST_FILL_S = 1.0
# The share of the configured limits a key refills at until its provider first answers.
PACE_UNTIL_HEARD = 0.75
# Below this many requests per minute a 2 s burst would be < 1 request.
MIN_CAPACITY = 1.0
# How long each reservation is remembered, for answers to replay the bucket
# through those made after them (older answers fall back to a plain sum).
SPEND_LOG_S = 30.0
_SPEND_LOG_TRIM = 1024
# Waiting exactly `wait_for()` seconds can leave the level a rounding error
# short; without this slack the next answer is a wait of ~1e-14 s, forever.
LEVEL_SLACK = 1e-9


class TokenBucket:
    """A continuously refilling bucket that may go into debt."""

    __slots__ = ("_clock", "_level", "_stamp", "burst_s", "capacity", "rate")

    def __init__(self, per_minute: float | None, clock: Clock) -> None:
        self._clock = clock
        self.rate = 0.0  # units per second; 0 with capacity inf means unlimited
        self.capacity = math.inf
        self.burst_s = BURST_SECONDS  # the capacity, in seconds of the limit
        self._stamp = clock()
        self._level = math.inf
        self.set_limit(per_minute)

    def set_limit(self, per_minute: float | None) -> None:
        """Change the limit; None means unlimited (nothing known yet)."""
        self._refill()
        if per_minute is None:
            self.rate, self.capacity, self._level = 0.0, math.inf, math.inf
            return
        self.rate = per_minute / 60.0
        self.capacity = max(MIN_CAPACITY, self.rate * self.burst_s)
        self._level = self.capacity if math.isinf(self._level) else min(self._level, self.capacity)

    def set_burst(self, seconds: float) -> None:
        """Hold at most `seconds` of the limit (what the provider's bucket holds)."""
        self._refill()
        self.burst_s = seconds
        if not self.unlimited:
            self.capacity = max(MIN_CAPACITY, self.rate * seconds)
            self._level = min(self._level, self.capacity)

    def set_level(self, level: float) -> None:
        """The provider says this much is left for us now (up to the capacity; may be a debt)."""
        self._refill()
        if not self.unlimited:
            self._level = min(self.capacity, level)

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.capacity)

    def _refill(self) -> None:
        now = self._clock()
        if not math.isinf(self._level):
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def level(self) -> float:
        self._refill()
        return self._level

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` can be admitted (0 if now)."""
        if self.unlimited:
            return 0.0
        need = min(amount, self.capacity)
        level = self.level()
        if level >= need - LEVEL_SLACK:
            return 0.0
        return (need - level) / self.rate if self.rate > 0 else math.inf

    def take(self, amount: float) -> None:
        self._refill()
        if not self.unlimited:
            self._level -= amount

    def give_back(self, amount: float) -> None:
        self._refill()
        if not self.unlimited:
            self._level = min(self.capacity, self._level + amount)

    def clamp_to(self, level: float) -> None:
        """Never let local headroom exceed what the provider says is left."""
        self._refill()
        if not self.unlimited and level < self._level:
            self._level = level

    def drain(self) -> None:
        """The provider said we're at the limit: start from empty."""
        self._refill()
        if not self.unlimited:
            self._level = min(self._level, 0.0)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None) -> float | None:
    """Seconds from an OpenAI-style duration (`"1s"`, `"6m0s"`, `"120ms"`, `"0.5"`)."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    total, matched = 0.0, False
    for number, unit in _DURATION_PART.findall(value):
        matched = True
        total += float(number) * _UNIT_S[unit]
    return total if matched else None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` (preferred, finer) or `retry-after`
    (seconds, or the HTTP date to retry at)."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            return _until_http_date(raw, headers.get("date"))
    return None


def _until_http_date(value: str, sent: str | None) -> float | None:
    """Seconds from the answer's own `date` (else now) to the HTTP date `value`.

    A gateway or proxy in front of a provider may say when rather than how
    long (RFC 9110 allows both).  Measured from the answer's `date`, both
    times are the server's clock, so a skew between its clock and ours
    does not stretch or cut the wait.
    """
    at = _http_date(value)
    if at is None:
        return None
    since = _http_date(sent) if sent else None
    return max(0.0, at - (time.time() if since is None else since))


def _http_date(value: str) -> float | None:
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC, its zone unsaid
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# "Please try again in 1.5s" / "in 120ms" / "in 6m0s" (OpenAI), "Please retry after
# 20 seconds" (Azure): the wait a 429's own text asks for.
_WAIT_IN_TEXT = re.compile(
    r"(?:try again|retry)(?:\s+after|\s+in)?\s+"
    r"((?:\d+(?:\.\d+)?\s*(?:milliseconds?|seconds?|minutes?|hours?|ms|h|m|s)\s*)+)",
    re.IGNORECASE,
)
_TEXT_PART = re.compile(
    r"(\d+(?:\.\d+)?)\s*(milliseconds?|seconds?|minutes?|hours?|ms|h|m|s)", re.IGNORECASE
)
_WORD_S = _UNIT_S | {"millisecond": 0.001, "second": 1.0, "minute": 60.0, "hour": 3600.0}


def wait_in_message(message: str) -> float | None:
    """Seconds a 429's message asks to wait (`"... Please try again in 120ms."`), or
    None: OpenAI says it there, not always in a `retry-after` header."""
    found = _WAIT_IN_TEXT.search(message)
    if found is None:
        return None
    total = 0.0
    for number, unit in _TEXT_PART.findall(found.group(1)):
        unit = unit.lower()
        total += float(number) * _WORD_S[unit if len(unit) <= 2 else unit.removesuffix("s")]
    return total


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What a response's `x-ratelimit-*` headers say (None: not sent)."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> RateHeaders:
        return cls(
            limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
            limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
            remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
            remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
            reset_requests_s=parse_reset(headers.get("x-ratelimit-reset-requests")),
            reset_tokens_s=parse_reset(headers.get("x-ratelimit-reset-tokens")),
        )


class KeyBudget:
    """The request and token budget of one API key.

    `configured_*` are what the job file says; `limit_*` are what is in
    force: the configured values, lowered by what the provider's headers
    report and by what 429s teach when there are no headers.  `spread_s` is
    how far apart admission and arrival at the provider may be once its
    headers have held and while they are fully believed
    (`engine.limits.provider_headroom`).
    """

    # After a 429 without limit headers, the limit drops to this share of
    # the rate we were sending at; it creeps back up slowly while no 429s come.
    _CHARGE_LEARNING = 0.2
    BACKOFF_FACTOR = 0.85
    RECOVERY_PER_MINUTE = 0.02
    RECOVERY_EVERY_S = 10.0
    LESSON_S = 5.0  # 429s closer together than this are one storm: one lesson
    _RATE_WINDOW_S = 60.0

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        clock: Clock = time.monotonic,
        spread_s: float = SEND_SPREAD_S,
    ) -> None:
        self._clock = clock
        self.configured_rpm = rpm
        self.configured_tpm = tpm
        self.limit_rpm: float | None = rpm
        self.limit_tpm: float | None = tpm
        self._ceiling_rpm: float | None = None  # learned from 429s without headers
        self._header_rpm: float | None = None  # the provider's word caps any recovery
        self._last_backoff = -math.inf
        self._last_recovery = clock()
        self.requests = TokenBucket(rpm, clock)
        self.tokens = TokenBucket(tpm, clock)
        self.header_limits_seen = False
        # Once an answer said what is left, the provider's word sets the budget.
        self.headroom_from_headers = False
        self.trust = HeaderTrust(spread_s)
        # Every reservation ever: an answer's headers miss those made after it was sent.
        self.reserved_requests = 0
        self.reserved_tokens = 0
        self._token_reading: BucketReading | None = None  # the last, for the instruments
        # Per bucket, the last reading, and the requests and amount reserved up to
        # and including its own (the ETA's).
        self._readings: dict[str, tuple[BucketReading, int, int]] = {}
        # (time, tokens reserved before it) of every reservation of the last
        # SPEND_LOG_S, the `_spend_base`-th first: the marks of a send and the
        # replay of what was reserved after one both read it.
        self._spends: list[tuple[float, int]] = []
        self._spend_base = 0
        # Reservations whose request is not on the wire yet — (reserved at, tokens) by
        # number — and those that reached it late — (on the wire at, tokens): a new
        # connection's TCP and TLS, or a listen queue that dropped its SYN, can hold a
        # request for a second, and no answer's headers count it until it is sent.
        self._unwired: dict[int, tuple[float, int]] = {}
        self._late: dict[int, tuple[float, int]] = {}
        # What the provider counts of a prompt for each token we estimate (learned).
        self.charge_ratio = 1.0
        self._pacing = False  # refilling at half the limits until the provider answers
        self._charges_learned = 0

    # admission -----------------------------------------------------------
    def wait_for(self, est_tokens: int, charged: int | None = None, spare: int = 0) -> float:
        """Seconds until a request of `est_tokens` (`charged` at admission) fits both budgets
        — with room for `spare` more like it left over (`KeyBudgets.lease`)."""
        return max(
            self.requests.wait_for(1 + spare),
            self.tokens.wait_for(self._needed(est_tokens, charged) * (1 + spare)),
        )

    def charge_of(self, est_tokens: int, charged: int | None) -> int:
        """What the provider will count at admission, as far as we can tell."""
        if charged is None:
            return est_tokens
        return math.ceil(charged * self.charge_ratio)

    def _needed(self, est_tokens: int, charged: int | None) -> int:
        # Once headers set the budget they count the admission charge, and
        # correct it after; before, the whole estimate is held.
        return self.charge_of(est_tokens, charged) if self.headroom_from_headers else est_tokens

    def learn_charge(self, charged: int, counted: int) -> None:
        """The provider counted `counted` prompt tokens where we estimated
        `charged`: our estimates are scaled by what it counts (a moving mean)."""
        if charged > 0 and counted > 0:
            ratio = min(4.0, max(0.25, counted / charged))
            # The first answers teach as a plain mean (the first one alone sets the ratio):
            # the opening burst is admitted on it.
            self._charges_learned += 1
            weight = max(self._CHARGE_LEARNING, 1.0 / self._charges_learned)
            self.charge_ratio += (ratio - self.charge_ratio) * weight

    def requests_left(self) -> float | None:
        """Requests the budget may send at once now (None: no request limit)."""
        return None if self.requests.unlimited else max(0.0, self.requests.level())

    def tokens_left(self) -> float | None:
        """Tokens the budget may spend at once now (None: no token limit)."""
        return None if self.tokens.unlimited else max(0.0, self.tokens.level())

    def unspent(self) -> tuple[float | None, float | None]:
        """(requests, tokens) the provider's buckets hold for us now, as best known.

        Its last word refilled since, less what was reserved after the
        request it answered — without the caution admission adds
        (the send spread, trust): the ETA's view of the burst still to
        spend, not a licence to send.  Before any word, the budget's level.
        None: no such limit.
        """
        now = self._clock()
        left: list[float | None] = []
        for name, bucket, reserved in (
            ("requests", self.requests, self.reserved_requests),
            ("tokens", self.tokens, self.reserved_tokens),
        ):
            if bucket.unlimited:
                left.append(None)
                continue
            seen = self._readings.get(name)
            if seen is None:
                left.append(max(0.0, bucket.level()))
                continue
            reading, request_then, reserved_then = seen
            tokens = name == "tokens"
            available = reading.available(
                now,
                bucket.rate,
                reserved - reserved_then,
                functools.partial(self._spends_from, request_then, tokens),
                spread_s=0.0,
            )
            left.append(max(0.0, available))
        return left[0], left[1]

    def headroom(self) -> float:
        """A 0..1 measure of free budget, for picking the emptiest key."""
        shares = []
        for bucket in (self.requests, self.tokens):
            if not bucket.unlimited:
                shares.append(max(0.0, bucket.level()) / bucket.capacity)
        return min(shares) if shares else 1.0

    def reserve(self, est_tokens: int, charged: int | None = None) -> int:
        """Take a request and its tokens; returns the tokens taken.

        `est_tokens` is the prompt and the expected output; `charged` what
        the provider counts at admission (the prompt, plus `max_tokens` when
        sent; `est_tokens` when not given).  Once the provider's headers set
        the budget, they count what it charged, so only that is taken — and
        counted as what its headers miss of requests sent after the one they
        answer.
        """
        charge = self.charge_of(est_tokens, charged)
        taken = self._needed(est_tokens, charged)
        self.requests.take(1)
        self.tokens.take(taken)
        now = self._clock()
        self._log_spend(now)
        self._unwired[self.reserved_requests] = (now, charge)
        self.reserved_requests += 1
        self.reserved_tokens += charge
        return taken

    def wired(self, request: int, now: float) -> None:
        """The `request`-th reservation's request went on the wire at `now`."""
        entry = self._unwired.pop(request, None)
        if entry is not None and now - entry[0] > self.trust.spread_s():
            self._late[request] = (now, entry[1])

    def sent_or_not(self, request: int) -> None:
        """The `request`-th reservation's call ended: it waits for the wire no more."""
        self._unwired.pop(request, None)

    def _unseen(self, before: int, wired_at: float) -> tuple[int, int]:
        """(requests, tokens) reserved before the `before`-th that an answer sent on the
        wire at `wired_at` cannot have counted: not on the wire yet, or put on it late."""
        requests = tokens = 0
        # Both logs are in order (reservation numbers, wire times): each walk stops
        # where nothing further can count — flat out, thousands go on the wire late
        # within `SPEND_LOG_S`, and every answer walking them all cost more than its send.
        for request, (_, charge) in self._unwired.items():
            if request >= before:
                break
            requests += 1
            tokens += charge
        late = self._late
        if late:
            forget = self._clock() - SPEND_LOG_S
            while late:
                oldest = next(iter(late))
                if late[oldest][0] >= forget:
                    break
                del late[oldest]
            cutoff = wired_at - self.trust.spread_s()
            for request, (on_wire, charge) in reversed(late.items()):
                if on_wire < cutoff:
                    break
                if request < before:
                    requests += 1
                    tokens += charge
        return requests, tokens

    def _log_spend(self, now: float) -> None:
        spends = self._spends
        spends.append((now, self.reserved_tokens))
        if len(spends) > _SPEND_LOG_TRIM and spends[0][0] < now - SPEND_LOG_S:
            cut = bisect.bisect_left(spends, now - SPEND_LOG_S, key=lambda spend: spend[0])
            del spends[:cut]
            self._spend_base += cut

    def _spends_from(
        self, request: int, tokens: bool, skip: int = -1
    ) -> Iterator[tuple[float, float]] | None:
        """(time, amount) of every reservation from the `request`-th on but the
        `skip`-th; None if forgotten."""
        offset = request - self._spend_base
        if offset < 0:
            return None
        tail = self._spends[offset:]
        if not tail:
            return iter(())
        skipped = skip - request  # its place in `tail` (outside it when not there)
        if not tokens:
            return ((when, 1.0) for i, (when, _) in enumerate(tail) if i != skipped)
        # Each reservation's tokens: what was reserved before the next, less before it.
        after = [before for _, before in tail[1:]] + [self.reserved_tokens]
        return (
            (when, float(end - before))
            for i, ((when, before), end) in enumerate(zip(tail, after, strict=True))
            if i != skipped
        )

    def _charge_of_request(self, request: int, reserved_through: int) -> int:
        """The tokens the `request`-th reservation took, given the tokens reserved
        up to and including it (0 once the log has forgotten it)."""
        offset = request - self._spend_base
        if not 0 <= offset < len(self._spends):
            return 0
        return reserved_through - self._spends[offset][1]

    def marks(self) -> tuple[int, int]:
        """(requests, tokens) reserved before the key's last send spread: headers
        answered for a request sent now may miss anything reserved after that."""
        spends, cutoff = self._spends, self._clock() - self.trust.spread_s()
        first = bisect.bisect_left(spends, cutoff, key=lambda spend: spend[0])
        if first < len(spends):
            return self._spend_base + first, spends[first][1]
        return self.reserved_requests, self.reserved_tokens

    def reconcile(self, reserved_tokens: int, used_tokens: int) -> None:
        """Settle a reservation with the real usage: refund or charge the difference."""
        diff = reserved_tokens - used_tokens
        if diff > 0:
            self.tokens.give_back(diff)
        elif diff < 0:
            self.tokens.take(-diff)

    def release(self, reserved_tokens: int) -> None:
        """A request that never reached the provider gives its tokens back.

        The request slot is not refunded: we cannot know whether the
        provider counted it.
        """
        self.tokens.give_back(reserved_tokens)

    # learning from the provider -----------------------------------------
    def sync(
        self,
        headers: RateHeaders,
        *,
        sent_at: float | None = None,
        marks: tuple[int, int] = (0, 0),
        reserved_at_send: tuple[int, int] | None = None,
        wired_at: float | None = None,
        own_charge: int | None = None,
    ) -> tuple[str, float, float] | None:
        """Take what headers say; returns (which, old, new) when a limit was learned.

        With `sent_at` (when the answered request was sent) and `marks` (the
        reservations up to it), what the provider says is left, less what was
        reserved since, becomes what the key may spend now, and the bucket's
        size follows the provider's (`engine.limits.provider_headroom`).
        Without them, remaining headers only ever tighten the budget.
        `reserved_at_send` (every reservation up to and including the
        answered request's) lets `unspent` read the provider's word without
        the caution admission needs; `wired_at` (when the answered request
        went on the wire) which requests sent late it cannot have counted;
        `own_charge` the answered request's tokens where a budget kept
        elsewhere reserved it (this one finds them in its log).
        """
        learned = None
        if headers.limit_requests:
            self.header_limits_seen = True
            self._header_rpm = float(headers.limit_requests)
            if self.limit_rpm is None or headers.limit_requests < self.limit_rpm:
                learned = ("rpm", self.limit_rpm or 0.0, float(headers.limit_requests))
                self.limit_rpm = float(headers.limit_requests)
                self.requests.set_limit(self.limit_rpm)
        if headers.limit_tokens:
            self.header_limits_seen = True
            if self.limit_tpm is None or headers.limit_tokens < self.limit_tpm:
                learned = learned or ("tpm", self.limit_tpm or 0.0, float(headers.limit_tokens))
                self.limit_tpm = float(headers.limit_tokens)
                self.tokens.set_limit(self.limit_tpm)
        if sent_at is None:
            if headers.remaining_requests is not None:
                self.requests.clamp_to(float(headers.remaining_requests))
            if headers.remaining_tokens is not None:
                self.tokens.clamp_to(float(headers.remaining_tokens))
            return learned
        now = self._clock()
        self.trust.recover(now)
        sent_requests, sent_tokens = marks
        exact_requests, exact_tokens = reserved_at_send or marks
        unseen_requests, unseen_tokens = self._unseen(
            sent_requests, sent_at if wired_at is None else wired_at
        )
        # The answered request itself is in its own headers (the provider's
        # remaining is counted after taking it), though reserved after the marks:
        # subtracting it again would, on a bucket of one second holding one
        # request, pace at half the rate.
        own, own_requests, own_tokens = -1, 0, 0
        if reserved_at_send is not None and exact_requests > sent_requests:
            own, own_requests = exact_requests - 1, 1
            own_tokens = (
                self._charge_of_request(own, exact_tokens) if own_charge is None else own_charge
            )
        self._take_headroom(
            "requests",
            (sent_requests, exact_requests, exact_requests, own),
            self.requests,
            headers.remaining_requests,
            headers.reset_requests_s,
            headers.limit_requests,
            sent_at,
            self.reserved_requests - sent_requests - own_requests,
            unseen_requests,
        )
        reading = self._take_headroom(
            "tokens",
            (sent_requests, exact_requests, exact_tokens, own),
            self.tokens,
            headers.remaining_tokens,
            headers.reset_tokens_s,
            headers.limit_tokens,
            sent_at,
            self.reserved_tokens - sent_tokens - own_tokens,
            unseen_tokens,
        )
        if reading is not None:
            self._token_reading = reading
        return learned

    def _take_headroom(
        self,
        name: str,
        requests_then: tuple[int, int, int, int],
        bucket: TokenBucket,
        remaining: int | None,
        reset_s: float | None,
        provider_limit: int | None,
        sent_at: float,
        reserved_since: float,
        unseen: float = 0.0,
    ) -> BucketReading | None:
        if remaining is None or bucket.unlimited:
            return None
        in_force = bucket.rate * 60.0
        reading = BucketReading(
            float(remaining), reset_s, float(provider_limit or in_force), sent_at
        )
        # Without a reset time the bucket holds at least what was left: never
        # less than the first guess.
        size = (
            reading.capacity()
            if reset_s is not None
            else max(reading.remaining, bucket.rate * BURST_SECONDS)
        )
        size = min(size, in_force)  # never more than a minute of the limit in force
        # (requests reserved before the send's blur, and up to and including it;
        # amount then; its own number)
        blurred, exact, amount, own = requests_then
        self._readings[name] = (reading, exact, amount)
        self.headroom_from_headers = True
        bucket.set_burst(self.trust.level * size / bucket.rate)
        tokens = name == "tokens"
        available = reading.available(
            self._clock(),
            bucket.rate,
            reserved_since,
            lambda: self._spends_from(blurred, tokens, own),
            spread_s=self.trust.spread_s(),
            last_spend_at=self._spends[-1][0] if self._spends else None,
        )
        # Sent late or not yet: spent, whatever the reading says.
        bucket.set_level(self.trust.of(available - unseen))
        return reading

    def open_cautiously(self) -> None:
        """Before the provider has said anything, hold half the first guess's
        burst back: the rest comes as it refills.  A provider that enforces
        its minute per second grants one second at once, no more."""
        for bucket in (self.requests, self.tokens):
            if not bucket.unlimited:
                bucket.set_level(min(bucket.level(), max(1.0, bucket.rate * FIRST_FILL_S)))

    def pace_until_heard(self) -> None:
        """Until the provider first answers, hold half the opening of requests and
        refill them at `PACE_UNTIL_HEARD` of the configured limit.

        With limits configured too high (twice the real ones, say) on a
        provider that enforces its minute per second, the first second would
        otherwise send twice what it grants.  A provider whose bucket holds a
        minute must not see it fill up again meanwhile (its refill would be
        lost): taking half a second at once and three quarters of the rate
        leaves it short for two seconds, longer than a first answer takes.
        """
        self._pacing = True
        # Requests only: a request's tokens are a large share of a second's (2,000 of
        # 5,000 at 300k TPM), so a slower opening would let the bucket fill up again.
        level, limit = self.requests.level(), self.limit_rpm
        if limit is not None:
            self.requests.set_limit(limit * PACE_UNTIL_HEARD)
            self.requests.set_level(level / 2)

    def heard(self) -> None:
        """The provider answered (or refused): the limits in force refill at their rate."""
        if not self._pacing:
            return
        self._pacing = False
        if self.limit_rpm is not None and not self.requests.unlimited:
            self.requests.set_limit(self.limit_rpm)

    def distrust(self) -> tuple[float, float] | None:
        """A 429 the headers said would not come: believe them less (old, new trust).

        The bursts taken from them shrink at once; a storm is one lesson.
        """
        fell = self.trust.surprised(self._clock())
        if fell is None:
            return None
        old, new = fell
        for bucket in (self.requests, self.tokens):
            if not bucket.unlimited:
                bucket.set_burst(bucket.burst_s * new / old)
        return fell

    def tokens_counted(self) -> float | None:
        """Tokens the provider holds against the per-minute limit now, by its last headers.

        How full its bucket is, in units of the limit: near the limit means
        the key is full, whatever the bucket's size.  None without headers.
        """
        reading = self._token_reading
        if reading is None or self.limit_tpm is None:
            return None
        size = max(reading.capacity(), reading.remaining, 1.0)
        spread = self.trust.spread_s()
        left = min(size, reading.available(self._clock(), self.tokens.rate, 0.0, spread_s=spread))
        return max(0.0, self.limit_tpm * (1.0 - left / size))

    def on_rate_limited(self, kind: str, sent_rpm: float) -> tuple[str, float, float] | None:
        """A 429: empty the exhausted bucket; without header limits, lower the limit.

        `sent_rpm` is the rate this key was actually sending at.  Returns
        (which, old, new) when the limit was lowered.
        """
        bucket = self.tokens if kind == "tokens" else self.requests
        bucket.drain()
        if self.header_limits_seen:
            return None  # the headers already told us the real limit
        now = self._clock()
        if now - self._last_backoff < self.LESSON_S:
            return None  # one 429 storm is one lesson, not twenty
        self._last_backoff = now
        self._last_recovery = now
        if kind == "tokens":
            return None  # token limits without headers: the drain + backoff is enough
        base = (
            min(x for x in (self.limit_rpm, sent_rpm) if x) if (self.limit_rpm or sent_rpm) else 0
        )
        if not base:
            return None
        new = max(1.0, base * self.BACKOFF_FACTOR)
        old = self.limit_rpm or 0.0
        self.limit_rpm = new
        self._ceiling_rpm = new
        self.requests.set_limit(new)
        self.requests.drain()
        return ("rpm", old, new)

    def recover(self) -> None:
        """Creep a 429-learned limit back up towards the configured or header-reported one."""
        if self._ceiling_rpm is None or self.limit_rpm is None:
            return
        now = self._clock()
        elapsed = now - self._last_recovery
        if elapsed < self.RECOVERY_EVERY_S:
            return
        self._last_recovery = now
        target = min(self.configured_rpm or math.inf, self._header_rpm or math.inf)
        grown = self.limit_rpm * (1.0 + self.RECOVERY_PER_MINUTE * elapsed / 60.0)
        self.limit_rpm = min(target, grown)
        self.requests.set_limit(self.limit_rpm)
