"""Per-key budgets: token buckets, header parsing, and what 429s and headers teach."""

from __future__ import annotations

import email.utils
import math
import time

import pytest

from engine.limits.rate_limiter import (
    BURST_SECONDS,
    KeyBudget,
    RateHeaders,
    TokenBucket,
    parse_reset,
    parse_retry_after,
    wait_in_message,
)


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admit_greedily(bucket: TokenBucket, clock: FakeClock, amount: float, seconds: float) -> int:
    """Admit `amount`-sized requests as soon as the bucket allows, for `seconds` of fake time."""
    admitted = 0
    end = clock.now + seconds
    while True:
        wait = bucket.wait_for(amount)
        if clock.now + wait > end:
            return admitted
        clock.advance(wait)
        bucket.take(amount)
        admitted += 1


# TokenBucket --------------------------------------------------------------------------


def test_a_new_bucket_starts_full_with_a_burst_of_two_seconds_of_the_limit() -> None:
    bucket = TokenBucket(600, FakeClock())

    assert bucket.rate == 10.0
    assert bucket.capacity == 10.0 * BURST_SECONDS
    assert bucket.level() == bucket.capacity
    assert bucket.wait_for(1) == 0.0


def test_a_tiny_limit_still_has_room_for_one_request() -> None:
    bucket = TokenBucket(6, FakeClock())

    assert bucket.capacity == 1.0
    assert bucket.wait_for(1) == 0.0


def test_the_bucket_refills_continuously_at_the_limit_and_never_beyond_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, clock)
    bucket.take(20)

    clock.advance(0.5)
    assert bucket.level() == pytest.approx(5.0)
    clock.advance(60.0)
    assert bucket.level() == pytest.approx(bucket.capacity)


def test_wait_for_is_the_time_until_the_missing_amount_has_refilled() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, clock)
    bucket.take(20)

    assert bucket.wait_for(3) == pytest.approx(0.3)
    clock.advance(0.3)
    assert bucket.wait_for(3) == 0.0


def test_the_long_run_admitted_rate_equals_the_limit() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, clock)

    admitted = admit_greedily(bucket, clock, 1, 120.0)

    # 600/min over two minutes, plus at most the initial burst.
    assert 1200 <= admitted <= 1200 + bucket.capacity + 1


def test_waiting_exactly_as_long_as_told_always_admits() -> None:
    # Rounding once left the level 1e-13 short, and the bucket answered
    # "wait 4e-14 s" forever: a fake clock never got past it.
    clock = FakeClock()
    bucket = TokenBucket(600, clock)
    bucket.take(bucket.capacity)

    for _ in range(1000):
        clock.advance(bucket.wait_for(1))
        assert bucket.wait_for(1) == 0.0
        bucket.take(1)


def test_a_request_bigger_than_the_burst_gets_through_once_the_bucket_is_full() -> None:
    clock = FakeClock()
    bucket = TokenBucket(6000, clock)  # 100/s, burst 200
    bucket.take(150)

    assert bucket.wait_for(1000) == pytest.approx(1.5)  # until full, not until 1000 are there
    clock.advance(1.5)
    assert bucket.wait_for(1000) == 0.0
    bucket.take(1000)
    assert bucket.level() == pytest.approx(-800.0)  # the debt is paid back by waiting
    assert bucket.wait_for(1) == pytest.approx(8.01)


def test_debt_keeps_the_long_run_rate_of_oversized_requests_at_the_limit() -> None:
    clock = FakeClock()
    bucket = TokenBucket(6000, clock)

    admitted = admit_greedily(bucket, clock, 1000, 120.0)

    # 100 tokens/s for two minutes, give or take one request and the burst.
    assert admitted * 1000 == pytest.approx(100 * 120, abs=1000 + bucket.capacity)


def test_an_unlimited_bucket_never_waits_and_never_runs_down() -> None:
    bucket = TokenBucket(None, FakeClock())

    bucket.take(1e12)

    assert bucket.unlimited
    assert bucket.wait_for(1e12) == 0.0
    assert bucket.level() == math.inf


def test_a_limit_set_on_an_unlimited_bucket_starts_it_full() -> None:
    bucket = TokenBucket(None, FakeClock())

    bucket.set_limit(120)

    assert not bucket.unlimited
    assert bucket.level() == bucket.capacity == 4.0


def test_lowering_the_limit_caps_the_level_at_the_new_burst() -> None:
    bucket = TokenBucket(600, FakeClock())

    bucket.set_limit(60)

    assert bucket.capacity == 2.0
    assert bucket.level() == 2.0


def test_raising_the_limit_keeps_what_was_used() -> None:
    bucket = TokenBucket(600, FakeClock())
    bucket.take(15)

    bucket.set_limit(1200)

    assert bucket.level() == pytest.approx(5.0)


def test_clamping_lowers_the_level_but_never_raises_it() -> None:
    bucket = TokenBucket(600, FakeClock())

    bucket.clamp_to(50)
    assert bucket.level() == 20.0
    bucket.clamp_to(3)
    assert bucket.level() == 3.0


def test_draining_empties_the_bucket_but_keeps_a_debt() -> None:
    bucket = TokenBucket(600, FakeClock())
    bucket.drain()
    assert bucket.level() == 0.0

    bucket.take(5)
    bucket.drain()
    assert bucket.level() == -5.0


def test_giving_back_never_overfills() -> None:
    bucket = TokenBucket(600, FakeClock())
    bucket.take(2)

    bucket.give_back(10)

    assert bucket.level() == bucket.capacity


# parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        (" 2 ", 2.0),
        ("", None),
        (None, None),
        ("soon", None),
    ],
)
def test_parse_reset_reads_openai_style_durations(value: str | None, seconds: float | None) -> None:
    assert parse_reset(value) == (None if seconds is None else pytest.approx(seconds))


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "oops", "retry-after": "3"}, 3.0),
        ({"retry-after": "-4"}, 0.0),
        # A date is counted from the answer's own date: the server's clock, not ours.
        (
            {
                "retry-after": "Wed, 21 Oct 2015 07:28:30 GMT",
                "date": "Wed, 21 Oct 2015 07:28:00 GMT",
            },
            30.0,
        ),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # long past, by our clock
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after_prefers_milliseconds_and_reads_dates_on_the_servers_clock(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert parse_retry_after(headers) == seconds


def test_a_retry_after_date_without_the_answers_date_counts_from_now() -> None:
    at = email.utils.formatdate(time.time() + 20.0, usegmt=True)
    # The date has whole seconds: 19–20 s from now.
    assert 18.9 <= (parse_retry_after({"retry-after": at}) or 0.0) <= 20.0


@pytest.mark.parametrize(
    ("message", "seconds"),
    [
        ("... Requested 1. Please try again in 20s. Visit https://platform.openai.com/...", 20.0),
        ("Please try again in 120ms.", 0.12),
        ("Please try again in 6m0s.", 360.0),
        ("Please try again in 1.5s", 1.5),
        ("... S0 pricing tier. Please retry after 20 seconds.", 20.0),
        ("Please retry after 1 second", 1.0),
        ("Please try again in 2 minutes", 120.0),
        ("Too many requests", None),
        ("try again in a moment", None),
    ],
)
def test_wait_in_message_reads_what_a_429_says_in_words(
    message: str, seconds: float | None
) -> None:
    assert wait_in_message(message) == (None if seconds is None else pytest.approx(seconds))


def test_rate_headers_parse_every_limit_header() -> None:
    parsed = RateHeaders.parse(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-limit-tokens": "90000",
            "x-ratelimit-remaining-requests": "499.0",
            "x-ratelimit-remaining-tokens": "89000",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )

    assert parsed == RateHeaders(500, 90000, 499, 89000, parsed.reset_requests_s, 360.0)
    assert parsed.reset_requests_s == pytest.approx(0.12)


def test_rate_headers_that_are_missing_or_garbled_read_as_unknown() -> None:
    assert RateHeaders.parse({"x-ratelimit-limit-requests": "lots"}) == RateHeaders()


# KeyBudget: admission -------------------------------------------------------------------


def test_a_budget_with_no_known_limits_never_waits() -> None:
    budget = KeyBudget(None, None, FakeClock())
    for _ in range(1000):
        budget.reserve(100_000)

    assert budget.wait_for(100_000) == 0.0
    assert budget.headroom() == 1.0


def test_a_request_waits_for_whichever_budget_is_shorter() -> None:
    clock = FakeClock()
    budget = KeyBudget(600, 6000, clock)  # 10 req/s, 100 tok/s
    budget.reserve(200)

    assert budget.wait_for(100) == pytest.approx(1.0)  # tokens bind, requests don't
    assert budget.wait_for(0) == 0.0


def test_reserving_takes_one_request_and_the_estimated_tokens() -> None:
    budget = KeyBudget(600, 6000, FakeClock())

    budget.reserve(50)

    assert budget.requests.level() == pytest.approx(19.0)
    assert budget.tokens.level() == pytest.approx(150.0)


def test_a_refund_lets_the_next_request_in_sooner() -> None:
    budget = KeyBudget(None, 6000, FakeClock())
    budget.reserve(200)
    assert budget.wait_for(200) == pytest.approx(2.0)

    budget.reconcile(reserved_tokens=200, used_tokens=50)

    assert budget.wait_for(200) == pytest.approx(0.5)


def test_an_underestimate_is_charged_after_the_fact() -> None:
    budget = KeyBudget(None, 6000, FakeClock())
    budget.reserve(100)

    budget.reconcile(reserved_tokens=100, used_tokens=250)

    assert budget.tokens.level() == pytest.approx(-50.0)


def test_releasing_returns_the_tokens_but_not_the_request_slot() -> None:
    budget = KeyBudget(600, 6000, FakeClock())
    budget.reserve(150)

    budget.release(150)

    assert budget.tokens.level() == pytest.approx(200.0)
    assert budget.requests.level() == pytest.approx(19.0)


def test_headroom_is_the_emptier_budget_and_debt_counts_as_empty() -> None:
    budget = KeyBudget(600, 6000, FakeClock())
    budget.reserve(50)
    assert budget.headroom() == pytest.approx(0.75)  # tokens 150/200 beat requests 19/20

    budget.reserve(1000)
    assert budget.headroom() == 0.0


# KeyBudget: learning from headers ---------------------------------------------------


def test_headers_teach_a_lower_limit_than_configured() -> None:
    budget = KeyBudget(1000, 100_000, FakeClock())

    learned = budget.sync(RateHeaders(limit_requests=500))

    assert learned == ("rpm", 1000.0, 500.0)
    assert budget.limit_rpm == 500.0
    assert budget.requests.rate == pytest.approx(500 / 60)
    assert budget.header_limits_seen


def test_headers_teach_a_limit_that_was_not_configured() -> None:
    budget = KeyBudget(None, None, FakeClock())

    learned = budget.sync(RateHeaders(limit_tokens=30_000))

    assert learned == ("tpm", 0.0, 30_000.0)
    assert not budget.tokens.unlimited
    assert budget.requests.unlimited


def test_headers_never_raise_a_limit_above_the_configured_one() -> None:
    budget = KeyBudget(1000, 100_000, FakeClock())

    assert budget.sync(RateHeaders(limit_requests=5000, limit_tokens=900_000)) is None
    assert budget.limit_rpm == 1000
    assert budget.limit_tpm == 100_000


def test_headers_with_less_remaining_tighten_the_budget() -> None:
    budget = KeyBudget(600, 6000, FakeClock())

    budget.sync(RateHeaders(remaining_requests=3, remaining_tokens=40))

    assert budget.requests.level() == 3.0
    assert budget.tokens.level() == 40.0


def test_headers_with_more_remaining_never_loosen_the_budget() -> None:
    budget = KeyBudget(600, 6000, FakeClock())
    budget.reserve(150)

    budget.sync(RateHeaders(remaining_requests=599, remaining_tokens=5999))

    assert budget.requests.level() == pytest.approx(19.0)
    assert budget.tokens.level() == pytest.approx(50.0)


# KeyBudget: learning from 429s ------------------------------------------------------


def test_a_429_with_header_limits_known_only_empties_the_bucket() -> None:
    budget = KeyBudget(600, None, FakeClock())
    budget.sync(RateHeaders(limit_requests=600))

    assert budget.on_rate_limited("requests", sent_rpm=600) is None
    assert budget.limit_rpm == 600
    assert budget.requests.level() == 0.0


def test_a_429_without_header_limits_lowers_the_limit_below_the_rate_sent() -> None:
    budget = KeyBudget(1000, None, FakeClock())

    lowered = budget.on_rate_limited("requests", sent_rpm=400)

    assert lowered == ("rpm", 1000.0, pytest.approx(340.0))
    assert budget.limit_rpm == pytest.approx(340.0)
    assert budget.requests.level() == 0.0


def test_a_429_lowers_from_the_limit_when_that_is_below_the_rate_sent() -> None:
    budget = KeyBudget(100, None, FakeClock())

    assert budget.on_rate_limited("requests", sent_rpm=400) == ("rpm", 100.0, pytest.approx(85.0))


def test_a_429_on_a_key_with_no_limit_learns_one_from_the_rate_sent() -> None:
    budget = KeyBudget(None, None, FakeClock())

    assert budget.on_rate_limited("requests", sent_rpm=200) == ("rpm", 0.0, pytest.approx(170.0))
    assert not budget.requests.unlimited


def test_a_429_with_nothing_to_go_by_teaches_nothing() -> None:
    budget = KeyBudget(None, None, FakeClock())

    assert budget.on_rate_limited("requests", sent_rpm=0.0) is None
    assert budget.limit_rpm is None


def test_a_storm_of_429s_within_five_seconds_is_one_lesson() -> None:
    clock = FakeClock()
    budget = KeyBudget(1000, None, clock)

    assert budget.on_rate_limited("requests", sent_rpm=1000) is not None
    for _ in range(20):
        clock.advance(0.2)
        assert budget.on_rate_limited("requests", sent_rpm=1000) is None
    assert budget.limit_rpm == pytest.approx(850.0)

    clock.advance(1.0)  # five seconds after the first
    assert budget.on_rate_limited("requests", sent_rpm=1000) == (
        "rpm",
        pytest.approx(850.0),
        pytest.approx(722.5),
    )


def test_a_token_429_empties_the_token_budget_and_leaves_the_request_limit() -> None:
    budget = KeyBudget(1000, 6000, FakeClock())

    assert budget.on_rate_limited("tokens", sent_rpm=1000) is None
    assert budget.tokens.level() == 0.0
    assert budget.limit_rpm == 1000


def test_a_limit_learned_from_429s_creeps_back_towards_the_configured_one() -> None:
    clock = FakeClock()
    budget = KeyBudget(100, None, clock)
    budget.on_rate_limited("requests", sent_rpm=100)

    clock.advance(9.0)
    budget.recover()
    assert budget.limit_rpm == pytest.approx(85.0)  # not yet: at most every ten seconds

    clock.advance(51.0)
    budget.recover()
    assert budget.limit_rpm == pytest.approx(85.0 * 1.02)  # 2 % a minute

    for _ in range(1000):
        clock.advance(10.0)
        budget.recover()
    assert budget.limit_rpm == 100.0


def test_a_limit_learned_from_429s_recovers_no_further_than_the_headers_allow() -> None:
    # A 429 before any header taught 85; the headers then said 100.  Recovery
    # used to creep past 100 towards "no limit", relearning 100 every ten seconds.
    clock = FakeClock()
    budget = KeyBudget(None, None, clock)
    budget.on_rate_limited("requests", sent_rpm=100)
    budget.sync(RateHeaders(limit_requests=100))

    for _ in range(1000):
        clock.advance(10.0)
        budget.recover()

    assert budget.limit_rpm == 100.0
    assert budget.sync(RateHeaders(limit_requests=100)) is None


def test_recovery_leaves_configured_and_header_limits_alone() -> None:
    clock = FakeClock()
    budget = KeyBudget(100, None, clock)
    budget.sync(RateHeaders(limit_requests=80))

    clock.advance(3600.0)
    budget.recover()

    assert budget.limit_rpm == 80.0
