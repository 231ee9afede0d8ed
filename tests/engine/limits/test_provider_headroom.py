"""A key's budget follows the headroom the provider reports, less what is in flight.

Recorded header sequences of the two kinds of provider — one whose bucket
holds a full minute of the limit, one enforcing it per second — drive a
budget on a clock the test moves.  The headers describe the provider's
bucket when the answered request was sent; what was reserved after that is
not in them; since requests reach the provider a little out of the order
they were sent, both bounds are blurred by the key's send spread
(`OPENING_SPREAD_S` until its headers have held for `SETTLE_S`, then
`SEND_SPREAD_S` while they are fully believed).
"""

from __future__ import annotations

import random

import pytest

from engine.limits.provider_headroom import (
    OPENING_SPREAD_S,
    SEND_SPREAD_S,
    SETTLE_S,
    SPREAD_WIDENS_UP_TO,
    BucketReading,
    HeaderTrust,
)
from engine.limits.rate_limiter import BURST_SECONDS, SPEND_LOG_S, KeyBudget, RateHeaders
from tests.engine.limits.test_rate_limiter import FakeClock


def minute_bucket(remaining: int, reset: str, limit: int = 1200) -> RateHeaders:
    """Requests headers as a provider sends them: `reset` is the time until full."""
    return RateHeaders.parse(
        {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": reset,
        }
    )


def admit(budget: KeyBudget, clock: FakeClock, n: int) -> list[tuple[float, tuple[int, int]]]:
    """Reserve `n` requests of 10 tokens now; (sent_at, marks) of each, as a lease keeps them."""
    sent = []
    for _ in range(n):
        assert budget.wait_for(10) == 0.0
        budget.reserve(10)
        sent.append((clock.now, budget.marks()))
    return sent


def test_before_the_provider_says_anything_a_key_may_burst_two_seconds_of_its_limit() -> None:
    budget = KeyBudget(1200, None, FakeClock())

    assert budget.requests.capacity == pytest.approx(20 * BURST_SECONDS)
    assert not budget.headroom_from_headers


def test_a_full_minute_of_headroom_is_spent_less_what_was_sent_after_the_answered_request() -> None:
    clock = FakeClock()
    budget = KeyBudget(1200, None, clock)
    sent = admit(budget, clock, 40)  # the first guess: 2 s of 20 requests/s
    assert budget.wait_for(10) > 0
    clock.advance(0.5)

    # The first request's answer: 1199 left after it, the bucket full again in 50 ms.
    first_sent_at, first_marks = sent[0]
    budget.sync(minute_bucket(1199, "50ms"), sent_at=first_sent_at, marks=first_marks)

    assert budget.requests.capacity == pytest.approx(1200)  # the whole minute
    # 1199 then, less the 40 sent about then (its own included: which of them
    # arrived first is not known), refilled since (from the send's blur on).
    assert budget.requests.level() == pytest.approx(1199 - 40 + (0.5 - OPENING_SPREAD_S) * 20)
    assert budget.wait_for(10) == 0.0


def test_a_provider_that_enforces_the_minute_per_second_is_paced() -> None:
    clock = FakeClock()
    budget = KeyBudget(1200, None, clock)
    sent = admit(budget, clock, 20)
    clock.advance(0.5)

    # A per-second bucket of 20: 19 left after the first request, full in 50 ms.
    first_sent_at, first_marks = sent[0]
    budget.sync(minute_bucket(19, "50ms"), sent_at=first_sent_at, marks=first_marks)

    assert budget.requests.capacity == pytest.approx(20)  # one second of the limit
    # 19 then, less the 20 sent then (its own again), refilled since: the
    # refill that paid for them is not lost to the bucket's cap.
    assert budget.requests.level() == pytest.approx(19 - 20 + (0.5 - OPENING_SPREAD_S) * 20)
    # From here the budget paces at the limit: 20 a second, never a minute's burst.
    clock.advance(5.0)
    assert budget.requests.level() == pytest.approx(20)


def test_headroom_never_counts_what_was_reserved_after_the_answered_request() -> None:
    """A late answer to an early request says more was left than is now: the
    requests sent since are subtracted, so nothing is admitted twice over."""
    clock = FakeClock()
    budget = KeyBudget(1200, None, clock)
    early = admit(budget, clock, 1)[0]
    clock.advance(1.0)
    budget.sync(minute_bucket(1000, "10s"), sent_at=clock.now, marks=budget.marks())
    admit(budget, clock, 900)  # spent from what the provider reported

    budget.sync(minute_bucket(999, "10.05s"), sent_at=early[0], marks=early[1])

    refilled = (1.0 - OPENING_SPREAD_S) * 20
    assert budget.requests.level() == pytest.approx(999 + refilled - 901)


def test_a_stale_answer_is_credited_with_the_refill_since_it_was_sent_up_to_the_bucket() -> None:
    clock = FakeClock()
    budget = KeyBudget(600, None, clock)
    sent_at, marks = admit(budget, clock, 1)[0]
    clock.advance(3.0)  # a slow answer: 30 requests refilled meanwhile at 10/s

    budget.sync(minute_bucket(100, "50s", limit=600), sent_at=sent_at, marks=marks)

    assert budget.requests.level() == pytest.approx(100 + (3.0 - OPENING_SPREAD_S) * 10 - 1)
    clock.advance(120.0)
    assert budget.requests.level() == pytest.approx(600)  # never more than the bucket


def test_a_limit_below_the_providers_keeps_the_burst_within_a_minute_of_our_limit() -> None:
    clock = FakeClock()
    budget = KeyBudget(300, None, clock)  # the job file asks for less than the provider grants

    budget.sync(minute_bucket(1199, "50ms"), sent_at=clock.now, marks=budget.marks())

    assert budget.requests.capacity == pytest.approx(300)
    assert budget.requests.level() == pytest.approx(300)
    assert budget.requests.rate == pytest.approx(5.0)


def test_token_headroom_follows_the_tokens_headers_the_same_way() -> None:
    clock = FakeClock()
    budget = KeyBudget(None, 300_000, clock)
    budget.reserve(2000)
    sent_at, marks = clock.now, budget.marks()
    budget.reserve(2000)  # sent after: not in the answer's headers
    clock.advance(OPENING_SPREAD_S)  # the refill starts once the request surely arrived

    budget.sync(
        RateHeaders.parse(
            {
                "x-ratelimit-limit-tokens": "300000",
                "x-ratelimit-remaining-tokens": "298000",
                "x-ratelimit-reset-tokens": "400ms",
            }
        ),
        sent_at=sent_at,
        marks=marks,
    )

    assert budget.tokens.capacity == pytest.approx(300_000)
    assert budget.tokens.level() == pytest.approx(298_000 - 2 * 2000)


def test_without_sent_time_headers_only_ever_tighten() -> None:
    budget = KeyBudget(1200, None, FakeClock())

    budget.sync(minute_bucket(1199, "50ms"))

    assert budget.requests.capacity == pytest.approx(40)
    assert not budget.headroom_from_headers


def test_a_429_the_headers_did_not_foresee_halves_the_trust_and_the_burst() -> None:
    clock = FakeClock()
    budget = KeyBudget(1200, None, clock)
    budget.sync(minute_bucket(1199, "50ms"), sent_at=clock.now, marks=budget.marks())

    assert budget.distrust() == (1.0, 0.5)

    assert budget.requests.capacity == pytest.approx(600)
    # The next answer's headroom is believed by half.
    budget.sync(minute_bucket(800, "20s"), sent_at=clock.now, marks=budget.marks())
    assert budget.requests.level() == pytest.approx(400)
    # A storm of 429s within seconds is one lesson.
    clock.advance(1.0)
    assert budget.distrust() is None
    assert budget.trust.level == 0.5


def test_trust_comes_back_slowly_once_no_429_has_come_for_a_while() -> None:
    clock = FakeClock()
    trust = HeaderTrust()
    trust.surprised(clock.now)
    clock.advance(HeaderTrust.QUIET_S - 1)
    trust.recover(clock.now)
    assert trust.level == 0.5

    for _ in range(6):
        clock.advance(HeaderTrust.STEP_EVERY_S)
        trust.recover(clock.now)

    assert trust.level == pytest.approx(1.0)


def test_trust_never_falls_below_its_floor() -> None:
    trust = HeaderTrust()
    for second in range(0, 200, 10):
        trust.surprised(float(second))

    assert trust.level == HeaderTrust.FLOOR


def test_the_send_spread_narrows_once_the_headers_have_held_and_widens_with_a_429() -> None:
    """Requests reach the provider out of order by an unknown amount: while a key's
    headers are new (the opening's answers come back while its burst still arrives)
    what an answer may miss reaches back `OPENING_SPREAD_S`; once they have held for
    `SETTLE_S`, `SEND_SPREAD_S`; a 429 they did not foresee widens it again, and it
    comes back with the trust."""
    clock = FakeClock()
    budget = KeyBudget(1200, None, clock)
    budget.sync(minute_bucket(1199, "50ms"), sent_at=clock.now, marks=budget.marks())
    admit(budget, clock, 1)
    clock.advance(1.5 * SEND_SPREAD_S)
    assert budget.trust.spread_s() == pytest.approx(OPENING_SPREAD_S)
    assert budget.marks()[0] == 0  # it may yet arrive after a request sent now

    clock.advance(SETTLE_S)
    budget.sync(minute_bucket(1100, "5s"), sent_at=clock.now, marks=budget.marks())
    admit(budget, clock, 1)
    clock.advance(1.5 * SEND_SPREAD_S)
    assert budget.trust.spread_s() == pytest.approx(SEND_SPREAD_S)
    assert budget.marks()[0] == 2  # reserved before the spread: surely arrived first

    budget.distrust()

    assert budget.trust.spread_s() == pytest.approx(OPENING_SPREAD_S)
    assert budget.marks()[0] == 1  # now it may arrive after a request sent now
    clock.advance(HeaderTrust.QUIET_S)
    for _ in range(5):  # answers keep coming, no 429 among them
        clock.advance(HeaderTrust.STEP_EVERY_S)
        budget.sync(minute_bucket(1000, "10s"), sent_at=clock.now, marks=budget.marks())
    assert budget.trust.level == pytest.approx(1.0)
    assert budget.trust.spread_s() == pytest.approx(SEND_SPREAD_S)


def test_a_trust_fallen_far_widens_the_spread_past_the_opening() -> None:
    trust = HeaderTrust()
    trust.recover(0.0)
    trust.recover(SETTLE_S)
    assert trust.settled
    for second in (10.0, 20.0):
        trust.surprised(second)

    assert trust.level == 0.25
    assert trust.spread_s() == pytest.approx(4 * SEND_SPREAD_S)


def test_a_storm_of_429s_unsettles_the_spread_until_its_last_one_is_past() -> None:
    trust = HeaderTrust()
    trust.recover(0.0)
    trust.recover(SETTLE_S)
    trust.surprised(10.0)
    trust.surprised(14.0)  # the same storm: no second lesson for the trust

    trust.recover(15.5)
    assert not trust.settled  # 5.5 s after the storm began, 1.5 s after its last 429
    assert trust.spread_s() == pytest.approx(OPENING_SPREAD_S)
    trust.recover(14.0 + SETTLE_S)
    assert trust.settled


def test_the_send_spread_stays_bounded_however_low_the_trust() -> None:
    trust = HeaderTrust()
    for second in range(0, 200, 10):
        trust.surprised(float(second))

    assert trust.spread_s() == pytest.approx(SPREAD_WIDENS_UP_TO * SEND_SPREAD_S)


def test_a_reading_without_a_reset_time_proves_only_what_was_left() -> None:
    reading = BucketReading(remaining=500, reset_s=None, limit_per_min=1200, taken_at=0.0)

    assert reading.capacity() == 500
    assert reading.available(now=1.0, rate_per_s=20, reserved_since=10) == pytest.approx(490)


def test_the_tokens_counted_are_how_full_the_providers_bucket_is_in_units_of_the_limit() -> None:
    clock = FakeClock()
    minute = KeyBudget(None, 300_000, clock)
    second = KeyBudget(None, 300_000, clock)
    assert minute.tokens_counted() is None  # no headers: nothing to go by

    def tokens(remaining: int, reset: str) -> RateHeaders:
        return RateHeaders.parse(
            {
                "x-ratelimit-limit-tokens": "300000",
                "x-ratelimit-remaining-tokens": str(remaining),
                "x-ratelimit-reset-tokens": reset,
            }
        )

    minute.sync(tokens(100_000, "40s"), sent_at=clock.now, marks=minute.marks())
    second.sync(tokens(0, "1s"), sent_at=clock.now, marks=second.marks())

    assert minute.tokens_counted() == pytest.approx(200_000)
    assert second.tokens_counted() == pytest.approx(300_000)  # a per-second bucket, full
    clock.advance(60.0)
    assert minute.tokens_counted() == pytest.approx(0)


def test_once_headers_set_the_budget_it_holds_what_the_provider_charges_as_it_counts_it() -> None:
    """The provider charges the prompt at admission, as it counts tokens: the
    budget learns the ratio of its count to our estimate from the answers."""
    clock = FakeClock()
    budget = KeyBudget(None, 300_000, clock)
    for _ in range(40):
        budget.learn_charge(charged=2000, counted=1500)  # it counts a quarter less
    budget.sync(
        RateHeaders.parse(
            {"x-ratelimit-remaining-tokens": "300000", "x-ratelimit-reset-tokens": "0s"}
        ),
        sent_at=clock.now,
        marks=budget.marks(),
    )
    before = budget.tokens.level()

    taken = budget.reserve(2600, charged=2000)  # 600 of expected output, not charged now

    assert taken == pytest.approx(1500, abs=2)
    assert before - budget.tokens.level() == taken


def test_a_key_built_for_a_job_opens_with_one_second_of_its_limit_until_the_provider_speaks() -> (
    None
):
    """A provider enforcing its minute per second grants a second at once: the
    first guess's other second comes as the bucket refills."""
    clock = FakeClock()
    budget = KeyBudget(1200, 300_000, clock)

    budget.open_cautiously()

    assert budget.requests.capacity == pytest.approx(20 * BURST_SECONDS)
    assert budget.requests.level() == pytest.approx(20)
    assert budget.tokens.level() == pytest.approx(5000)
    clock.advance(1.0)
    assert budget.requests.level() == pytest.approx(40)


def test_a_small_bucket_is_replayed_through_what_was_sent_since_not_charged_it_all_at_the_end() -> (
    None
):
    """On a one-second bucket of 5,000 tokens, three requests of 2,000 sent 0.4 s apart
    after the answered one were each paid for by the refill before them: subtracting
    them all from a bucket already full again would leave it in debt for nothing."""
    clock = FakeClock()
    budget = KeyBudget(None, 300_000, clock)
    budget.sync(
        RateHeaders.parse(
            {"x-ratelimit-limit-tokens": "300000", "x-ratelimit-remaining-tokens": "5000"}
        ),
    )
    budget.reserve(2000)
    sent_at, marks = clock.now, budget.marks()
    for _ in range(3):
        clock.advance(0.4)
        budget.reserve(2000)
    clock.advance(0.4)

    # Its answer: 3,000 left after it, full again in 0.4 s (a one-second bucket).
    budget.sync(
        RateHeaders.parse(
            {
                "x-ratelimit-limit-tokens": "300000",
                "x-ratelimit-remaining-tokens": "3000",
                "x-ratelimit-reset-tokens": "400ms",
            }
        ),
        sent_at=sent_at,
        marks=marks,
    )

    # Replayed: 3,000 (its own 2,000 counted again: 1,000), + the refill by the next
    # send (0.4 s less the blur), then each 2,000 met by 2,000 of refill.
    assert budget.tokens.capacity == pytest.approx(5000)
    assert budget.tokens.level() == pytest.approx(1000 + (0.4 - OPENING_SPREAD_S) * 5000)


def test_an_answer_counts_its_own_request_once_on_a_bucket_that_holds_about_one() -> None:
    """A one-second bucket of 2,500 tokens and requests charged 2,004: the answer's
    headers already count its own request, so once they say the bucket has refilled
    the next one may go — taking its charge off again paced at half the rate."""
    clock = FakeClock()
    budget = KeyBudget(None, 150_000, clock)
    tokens_headers = {"x-ratelimit-limit-tokens": "150000"}
    budget.sync(RateHeaders.parse({**tokens_headers, "x-ratelimit-remaining-tokens": "2500"}))
    budget.reserve(2004)
    # What a lease notes in the turn it is made: its send, the marks, and every
    # reservation up to and including its own.
    sent_at, marks = clock.now, budget.marks()
    reserved_at_send = (budget.reserved_requests, budget.reserved_tokens)
    clock.advance(0.8)

    # 496 left after it, full again in 0.8 s.
    answer = RateHeaders.parse(
        {
            **tokens_headers,
            "x-ratelimit-remaining-tokens": "496",
            "x-ratelimit-reset-tokens": "802ms",
        }
    )
    budget.sync(answer, sent_at=sent_at, marks=marks, reserved_at_send=reserved_at_send)

    assert budget.tokens.capacity == pytest.approx(2500, abs=1)
    assert budget.tokens.level() == pytest.approx(496 + (0.8 - OPENING_SPREAD_S) * 2500)
    assert budget.wait_for(2004) == 0.0


def test_requests_not_yet_on_the_wire_are_spent_whatever_an_answer_says() -> None:
    """Five requests wait for new connections (TCP, TLS, a dropped SYN) while a later
    one goes out on a warm connection and is answered: its headers cannot count the
    five, so the budget does not spend them again; once one went out late, answers to
    requests sent before it still leave it out."""
    clock = FakeClock()
    budget = KeyBudget(1200, None, clock)
    budget.sync(minute_bucket(1200, "0s"))  # the provider has said its bucket is full
    for _ in range(5):
        budget.reserve(10)  # requests 0-4: stuck before the wire
    clock.advance(0.5)
    budget.reserve(10)  # request 5: out at once
    sent_at, marks = clock.now, budget.marks()
    budget.wired(5, clock.now)
    clock.advance(0.5)

    budget.sync(
        minute_bucket(1199, "50ms"), sent_at=sent_at, marks=marks, wired_at=sent_at
    )  # only request 5 was counted

    # 1,199 then, refilled to the brim since (the bucket holds 1,200), less the five.
    assert budget.requests.level() == pytest.approx(1200 - 5)

    budget.wired(0, clock.now)  # request 0 reaches the wire, a second late
    budget.sync(minute_bucket(1199, "50ms"), sent_at=sent_at, marks=marks, wired_at=sent_at)
    assert budget.requests.level() == pytest.approx(1200 - 5)  # still not in that reading


def test_a_bucket_sure_to_be_full_again_is_not_replayed_and_reads_as_the_replay_would() -> None:
    """The replay is skipped only where its outcome is sure (a full bucket): on 5,000
    random readings, sizes and reservations, the answer with the shortcut is the replay's."""
    rng = random.Random(20261207)
    skipped = 0
    for _ in range(5000):
        size = rng.choice((20.0, 1200.0, 1e6))
        rate = size / rng.choice((1.0, 60.0))
        taken_at = rng.uniform(0.0, 1.0)
        now = taken_at + rng.uniform(0.0, 3.0)
        remaining = rng.uniform(0.0, size)
        # Its reset: the time until the bucket of `size` is full again.
        reading = BucketReading(remaining, (size - remaining) / rate, rate * 60.0, taken_at)
        times = sorted(rng.uniform(taken_at - 0.2, now) for _ in range(rng.randrange(0, 40)))
        spends = [(when, rng.choice((1.0, 2.0, size / 50.0))) for when in times]
        reserved = sum(amount for _, amount in spends)

        def replay(log: list[tuple[float, float]] = spends) -> list[tuple[float, float]]:
            return log

        exact = reading.available(now, rate, reserved, replay)
        quick = reading.available(
            now, rate, reserved, replay, last_spend_at=times[-1] if times else None
        )
        skipped += quick == reading.capacity() and exact == pytest.approx(quick)
        assert quick == pytest.approx(exact, abs=1e-6 * size)
    assert skipped > 500  # the shortcut was taken, not only never wrong


def test_an_answer_leaves_out_exactly_the_requests_it_cannot_have_counted_among_thousands() -> None:
    """Flat out, most requests reach the wire after the send spread, and thousands are
    remembered as late: each answer leaves out of its reading those reserved before its
    marks that were not on the wire yet, or went on it from just before it — walked
    from the newest, not all of them — and forgets late ones past the spend log."""
    rng = random.Random(7)
    clock = FakeClock()
    budget = KeyBudget(10**7, None, clock)
    wires: dict[int, float | None] = {}  # request: when on the wire (None: not yet)
    charges: dict[int, int] = {}
    reserved_at: dict[int, float] = {}
    for request in range(4000):
        estimate = rng.randrange(5, 50)
        charges[request] = budget.charge_of(estimate, None)
        reserved_at[request] = clock.now
        budget.reserve(estimate)
        wires[request] = None
        clock.advance(0.002)
        for waiting in [r for r, at in wires.items() if at is None]:
            if rng.random() < 0.02:
                wires[waiting] = clock.now
                budget.wired(waiting, clock.now)
        if request % 97 == 0:
            before = rng.randrange(0, request + 1)
            wired_at = clock.now - rng.uniform(0.0, 2.0)
            on_wire_since = wired_at - OPENING_SPREAD_S
            expected = [
                r
                for r, at in wires.items()
                if r < before
                and (at is None or (at - reserved_at[r] > OPENING_SPREAD_S and at >= on_wire_since))
            ]
            assert budget._unseen(before, wired_at) == (
                len(expected),
                sum(charges[r] for r in expected),
            )
    clock.advance(SPEND_LOG_S + 1)  # every late one forgotten, the unwired remembered
    unwired = [r for r, at in wires.items() if at is None]
    assert budget._unseen(4000, clock.now) == (len(unwired), sum(charges[r] for r in unwired))


def test_until_the_provider_answers_a_key_opens_with_half_a_second_and_refills_slower() -> None:
    """Limits configured twice too high on a provider that enforces its minute per
    second would send twice what it grants before its first answer says so; on a
    provider whose bucket holds a minute the opening must still outrun its refill."""
    clock = FakeClock()
    budget = KeyBudget(2400, None, clock)  # configured; the provider grants 20 a second
    budget.open_cautiously()
    budget.pace_until_heard()

    sent = 0
    for _ in range(100):  # the first second, in steps of 10 ms
        while budget.wait_for(10) == 0.0:
            budget.reserve(10)
            sent += 1
        clock.advance(0.01)
    # Half a second of 40 at once, then 30 a second: a third over the 40 the provider
    # grants (twice that without the pacing), and at least what a right limit refills.
    assert 40 <= sent <= 20 + 30 + 1

    budget.heard()  # its first answer
    assert budget.requests.rate == pytest.approx(40)  # the limits in force, at their rate
