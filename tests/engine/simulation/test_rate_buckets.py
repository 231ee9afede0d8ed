"""The simulator's buckets hold a minute or a second of a per-minute limit, and say so."""

from __future__ import annotations

import pytest

from engine.simulation.rate_buckets import KeyBudget, TokenBucket


def test_a_full_minute_bucket_holds_the_whole_limit_and_refills_it_in_a_minute() -> None:
    bucket = TokenBucket(1200, now=0.0)

    assert bucket.capacity == 1200
    assert bucket.remaining(now=0.0) == 1200
    assert bucket.wait_for(1200, now=0.0) == 0.0
    bucket.take(1200, now=0.0)
    assert bucket.wait_for(1, now=0.0) == pytest.approx(0.05)  # 20 a second
    assert bucket.seconds_until_full(now=0.0) == pytest.approx(60.0)
    assert bucket.remaining(now=30.0) == 600


def test_a_per_second_bucket_holds_a_second_of_the_limit_and_refills_at_the_same_rate() -> None:
    bucket = TokenBucket(1200, now=0.0, burst_s=1)

    assert bucket.capacity == 20
    assert bucket.per_second == 20
    assert bucket.remaining(now=0.0) == 20
    bucket.take(20, now=0.0)
    assert bucket.wait_for(1, now=0.0) == pytest.approx(0.05)
    assert bucket.seconds_until_full(now=0.0) == pytest.approx(1.0)
    # However long the key idles, it never holds more than its second.
    assert bucket.remaining(now=600.0) == 20
    assert bucket.seconds_until_full(now=600.0) == 0.0


def test_the_capacity_is_limit_times_burst_over_sixty() -> None:
    assert TokenBucket(300_000, now=0.0, burst_s=1).capacity == 5_000
    assert TokenBucket(600, now=0.0, burst_s=10).capacity == 100
    assert TokenBucket(90, now=0.0, burst_s=2).capacity == 3
    for burst_s in (0, -1, 60.5, 120):
        with pytest.raises(ValueError, match="burst_s"):
            TokenBucket(60, now=0.0, burst_s=burst_s)


def test_a_request_larger_than_a_small_bucket_waits_for_a_full_bucket_and_leaves_it_in_debt() -> (
    None
):
    budget = KeyBudget(rpm=None, tpm=60_000, now=0.0, burst_s=1)  # 1,000 tokens a second
    assert budget.tokens is not None

    assert budget.admit(3_000, now=0.0).admitted  # within the minute: never refused for good
    assert budget.tokens.level(now=0.0) == -2_000
    refused = budget.admit(3_000, now=0.0)
    assert not refused.admitted and not refused.too_large
    assert refused.retry_after_s == pytest.approx(3.0)  # from -2,000 back to a full 1,000
    assert budget.headers(now=0.0)["x-ratelimit-remaining-tokens"] == "0"
    assert budget.admit(3_000, now=3.0).admitted
    assert budget.admit(60_001, now=600.0).too_large  # over the minute: never fits


def test_a_requests_bucket_smaller_than_one_request_still_paces_at_the_limit() -> None:
    budget = KeyBudget(rpm=30, tpm=None, now=0.0, burst_s=1)  # half a request a second

    assert budget.admit(0, now=0.0).admitted
    refused = budget.admit(0, now=0.0)
    assert refused.limited_by == "requests"
    assert refused.retry_after_s == pytest.approx(2.0)
    assert budget.admit(0, now=2.0).admitted


def test_headers_report_the_per_minute_limit_and_what_the_bucket_holds_now() -> None:
    minute = KeyBudget(rpm=1200, tpm=300_000, now=0.0)
    second = KeyBudget(rpm=1200, tpm=300_000, now=0.0, burst_s=1)
    for budget in (minute, second):
        assert budget.admit(2_000, now=0.0).admitted

    assert minute.headers(now=0.0) == {
        "x-ratelimit-limit-requests": "1200",
        "x-ratelimit-remaining-requests": "1199",
        "x-ratelimit-reset-requests": "50ms",
        "x-ratelimit-limit-tokens": "300000",
        "x-ratelimit-remaining-tokens": "298000",
        "x-ratelimit-reset-tokens": "400ms",
    }
    assert second.headers(now=0.0) == {
        "x-ratelimit-limit-requests": "1200",
        "x-ratelimit-remaining-requests": "19",
        "x-ratelimit-reset-requests": "50ms",
        "x-ratelimit-limit-tokens": "300000",
        "x-ratelimit-remaining-tokens": "3000",
        "x-ratelimit-reset-tokens": "400ms",
    }


def test_a_per_second_key_admits_a_second_of_requests_then_one_per_refill() -> None:
    budget = KeyBudget(rpm=1200, tpm=None, now=0.0, burst_s=1)

    admitted = sum(budget.admit(0, now=0.0).admitted for _ in range(1200))
    assert admitted == 20
    assert budget.admit(0, now=0.0).retry_after_s == pytest.approx(0.05)
    assert sum(budget.admit(0, now=0.5).admitted for _ in range(100)) == 10
