"""How long 429s are waited out: rounds, longer cool-downs, disabling, and a batch's bound.

Pure arithmetic on times the test chooses: no clock, no network.
"""

from __future__ import annotations

import pytest

from engine.config.settings import RateLimitWaits
from engine.limits.rate_limit_patience import KeyRefusals, batch_gives_up, format_wait

DEFAULTS = RateLimitWaits()


def refuse_rounds(
    refusals: KeyRefusals, count: int, *, start: float = 0.0, retry_after_s: float = 1.0
) -> list[tuple[float, int, str]]:
    """`count` rounds, each a request sent after the previous 429 and refused at once."""
    verdicts = []
    now = start
    for _ in range(count):
        now += 1.0
        cooling = refusals.refused(DEFAULTS, now=now, sent_at=now, retry_after_s=retry_after_s)
        verdicts.append((cooling.wait_s, cooling.longer, cooling.disabled_reason))
        now += cooling.wait_s
    return verdicts


def test_a_burst_of_429s_on_requests_already_in_flight_counts_as_one_round() -> None:
    refusals = KeyRefusals()
    # Sixty-four requests went out at t=10; their 429s come back from t=11 on.
    first = refusals.refused(DEFAULTS, now=11.0, sent_at=10.0, retry_after_s=2.0)
    rest = [
        refusals.refused(DEFAULTS, now=11.0 + i / 100, sent_at=10.0, retry_after_s=2.0)
        for i in range(63)
    ]

    assert (first.counted, first.rounds) == (True, 1)
    assert all(not c.counted and c.wait_s == 2.0 and not c.disabled_reason for c in rest)
    assert refusals.rounds == 1


def test_a_key_that_is_refused_now_and_then_but_answers_is_never_disabled() -> None:
    # A provider enforcing its minute per second: a few 429s, then answers, all day.
    refusals = KeyRefusals()
    now = 0.0
    for _ in range(10_000):
        for _ in range(DEFAULTS.key_streak - 1):
            now += 1.0
            cooling = refusals.refused(DEFAULTS, now=now, sent_at=now, retry_after_s=1.0)
            assert cooling.disabled_reason == ""
            assert cooling.longer == 0
        refusals.answered()
    assert refusals.rounds == 0


def test_the_streak_brings_longer_cool_downs_doubling_then_disables_the_key() -> None:
    refusals = KeyRefusals()

    verdicts = refuse_rounds(refusals, DEFAULTS.key_streak + DEFAULTS.key_escalations)

    ordinary = verdicts[: DEFAULTS.key_streak - 1]
    assert all(v == (1.0, 0, "") for v in ordinary)
    longer = verdicts[DEFAULTS.key_streak - 1 : -1]
    assert longer == [(30.0, 1, ""), (60.0, 2, ""), (120.0, 3, "")]
    assert verdicts[-1][2] == (
        "rate limited: 429 on 13 tries in a row over 3m51s with no answer, "
        "after 3 longer cool-down(s) (rate_limit_waits)"
    )


def test_an_answer_during_the_longer_cool_downs_restores_the_key() -> None:
    refusals = KeyRefusals()
    refuse_rounds(refusals, DEFAULTS.key_streak + 1)
    assert refusals.longer == 2

    refusals.answered()

    assert refuse_rounds(refusals, 1, start=10_000.0) == [(1.0, 0, "")]


def test_cool_downs_past_the_key_wait_bound_escalate_before_the_streak_does() -> None:
    refusals = KeyRefusals()

    # retry-after 60 s: the fifth round would make 300 s, the sixth passes it.
    verdicts = refuse_rounds(refusals, 6, retry_after_s=60.0)

    assert [longer for _, longer, _ in verdicts] == [0, 0, 0, 0, 0, 1]
    assert verdicts[-1][0] == 60.0  # the provider's wait is longer than the first step


def test_a_retry_after_longer_than_the_key_may_wait_disables_it_at_once() -> None:
    refusals = KeyRefusals()

    cooling = refusals.refused(DEFAULTS, now=5.0, sent_at=5.0, retry_after_s=6 * 3600.0)

    assert cooling.disabled_reason == (
        "rate limited: the provider asked for a 6h00m wait, longer than "
        "rate_limit_waits.key_wait_s (5m00s)"
    )


def test_no_longer_cool_downs_at_all_disables_at_the_end_of_the_streak() -> None:
    waits = RateLimitWaits(key_streak=2, key_escalations=0)
    refusals = KeyRefusals()

    first = refusals.refused(waits, now=1.0, sent_at=1.0, retry_after_s=0.1)
    second = refusals.refused(waits, now=2.0, sent_at=2.0, retry_after_s=0.1)

    assert first.disabled_reason == ""
    assert second.disabled_reason.startswith("rate limited: 429 on 2 tries in a row")


@pytest.mark.parametrize(
    ("refusals", "waited_s", "reason"),
    [
        (19, 899.0, ""),
        (20, 10.0, "refused with 429 20 times (rate_limit_waits.batch_429s)"),
        (
            3,
            901.0,
            "429s asked it to wait 15m01s in all, more than rate_limit_waits.batch_wait_s (15m00s)",
        ),
    ],
)
def test_a_batch_gives_up_past_its_count_or_its_total_wait(
    refusals: int, waited_s: float, reason: str
) -> None:
    assert batch_gives_up(DEFAULTS, refusals, waited_s) == reason


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (4.5, "4.5s"), (150.0, "2m30s"), (21_600.0, "6h00m")],
)
def test_waits_read_as_a_person_would_write_them(seconds: float, text: str) -> None:
    assert format_wait(seconds) == text
