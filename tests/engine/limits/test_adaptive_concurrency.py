"""AIMD concurrency: storms of 429s lower it, quiet saturated spells raise it, and it settles."""

from __future__ import annotations

import random
from itertools import pairwise

from engine.limits.adaptive_concurrency import AdaptiveConcurrency


def outcomes(ctrl: AdaptiveConcurrency, at: float, total: int, limited: int) -> None:
    """Record `total` finished requests at time `at`, the first `limited` of them 429s."""
    for i in range(total):
        ctrl.record(at, i < limited)


def grow_for(ctrl: AdaptiveConcurrency, start: float, seconds: int) -> list[tuple[float, int]]:
    """Tick once a second with work waiting and no 429s; the changes made."""
    changes = []
    for t in range(1, seconds + 1):
        now = start + t
        outcomes(ctrl, now, 5, 0)
        new = ctrl.update(now, saturated=True)
        if new is not None:
            changes.append((now, new))
    return changes


def test_it_starts_at_the_ceiling() -> None:
    ctrl = AdaptiveConcurrency(32, now=0.0)

    assert ctrl.current == ctrl.ceiling == 32


def test_the_ceiling_is_at_least_one() -> None:
    assert AdaptiveConcurrency(0, now=0.0).current == 1


def test_a_storm_of_429s_lowers_the_limit_by_thirty_percent() -> None:
    ctrl = AdaptiveConcurrency(40, now=0.0)
    outcomes(ctrl, 5.0, total=20, limited=5)

    assert ctrl.update(5.0, saturated=True) == 28
    assert ctrl.current == 28


def test_a_few_429s_are_not_a_storm() -> None:
    ctrl = AdaptiveConcurrency(40, now=0.0)
    outcomes(ctrl, 5.0, total=40, limited=2)  # exactly 5 %

    assert ctrl.update(5.0, saturated=True) is None
    assert ctrl.current == 40


def test_too_few_requests_are_not_a_storm_however_many_were_429s() -> None:
    ctrl = AdaptiveConcurrency(40, now=0.0)
    outcomes(ctrl, 5.0, total=9, limited=9)

    assert ctrl.update(5.0, saturated=True) is None


def test_429s_older_than_the_window_are_forgotten() -> None:
    ctrl = AdaptiveConcurrency(40, now=0.0)
    outcomes(ctrl, 5.0, total=20, limited=20)

    assert ctrl.update(15.1, saturated=True) is None


def test_one_storm_lowers_once_and_a_continuing_storm_lowers_again() -> None:
    ctrl = AdaptiveConcurrency(40, now=0.0)
    outcomes(ctrl, 5.0, total=20, limited=20)
    assert ctrl.update(5.0, saturated=True) == 28

    assert ctrl.update(6.0, saturated=True) is None  # the storm's outcomes were used up
    outcomes(ctrl, 6.5, total=20, limited=20)
    assert ctrl.update(6.5, saturated=True) is None  # too soon after the last change
    assert ctrl.update(7.0, saturated=True) == 19


def test_it_never_goes_below_one() -> None:
    ctrl = AdaptiveConcurrency(1, now=0.0)
    outcomes(ctrl, 5.0, total=20, limited=20)

    assert ctrl.update(5.0, saturated=True) is None
    assert ctrl.current == 1


def test_a_quiet_saturated_spell_raises_the_limit_one_step_at_a_time() -> None:
    ctrl = AdaptiveConcurrency(40, now=0.0)
    outcomes(ctrl, 5.0, total=20, limited=20)
    ctrl.update(5.0, saturated=True)  # 40 → 28 at t=5

    changes = grow_for(ctrl, start=5.0, seconds=30)

    # Nothing for 15 s after the storm, then +1 every 3 s.
    assert changes == [(20.0, 29), (23.0, 30), (26.0, 31), (29.0, 32), (32.0, 33), (35.0, 34)]


def test_without_work_waiting_the_limit_does_not_grow() -> None:
    ctrl = AdaptiveConcurrency(40, now=0.0)
    outcomes(ctrl, 5.0, total=20, limited=20)
    ctrl.update(5.0, saturated=True)

    for t in range(6, 100):
        assert ctrl.update(float(t), saturated=False) is None
    assert ctrl.current == 28


def test_growth_stops_at_the_ceiling() -> None:
    ctrl = AdaptiveConcurrency(10, now=0.0)
    outcomes(ctrl, 5.0, total=20, limited=20)
    ctrl.update(5.0, saturated=True)  # 10 → 7, and 10 is now the storm limit

    grow_for(ctrl, start=5.0, seconds=3600)

    assert ctrl.current == 10


def test_it_holds_just_under_a_limit_that_stormed() -> None:
    ctrl = AdaptiveConcurrency(64, now=0.0)
    outcomes(ctrl, 5.0, total=30, limited=30)
    ctrl.update(5.0, saturated=True)  # stormed at 64 → 44

    changes = grow_for(ctrl, start=5.0, seconds=500)

    assert ctrl.current == 63
    assert changes[-1][1] == 63
    assert all(value < 64 for _, value in changes)


def test_after_a_quiet_probe_of_the_storm_limit_growth_resumes_its_pace() -> None:
    ctrl = AdaptiveConcurrency(40, now=0.0)
    outcomes(ctrl, 5.0, total=20, limited=20)
    ctrl.update(5.0, saturated=True)  # 40 → 28
    outcomes(ctrl, 7.0, total=20, limited=20)
    ctrl.update(7.0, saturated=True)  # 28 → 19: 28 is the storm limit, under the ceiling

    changes = grow_for(ctrl, start=7.0, seconds=900)

    # Up to 27, a long hold there, one probe of 28 that stays quiet...
    probe = next(t for t, value in changes if value == 28)
    held_from = next(t for t, value in changes if value == 27)
    assert probe - held_from >= AdaptiveConcurrency.HOLD_BELOW_STORM_S
    # ...then the old storm limit is forgotten and growth resumes its pace.
    after = [t for t, value in changes if value > 28]
    assert after[0] - probe == AdaptiveConcurrency.QUIET_S
    assert after[1] - after[0] == AdaptiveConcurrency.GROW_EVERY_S


def test_set_ceiling_starts_from_the_new_maximum_up_or_down() -> None:
    ctrl = AdaptiveConcurrency(40, now=0.0)
    outcomes(ctrl, 5.0, total=20, limited=20)
    ctrl.update(5.0, saturated=True)  # 40 → 28

    ctrl.set_ceiling(50, now=6.0)
    assert ctrl.current == ctrl.ceiling == 50

    ctrl.set_ceiling(8, now=7.0)
    assert ctrl.current == ctrl.ceiling == 8


def simulate_capacity(
    seconds: int, capacity: int, ceiling: int, share_429: float, seed: int = 7
) -> list[int]:
    """A provider that sustains `capacity` in flight: above it, `share_429` of requests 429.

    Each slot finishes one request a second and work always waits for a slot.
    Returns the limit after every one-second tick.
    """
    rng = random.Random(seed)
    ctrl = AdaptiveConcurrency(ceiling, now=0.0)
    history = []
    for t in range(1, seconds + 1):
        in_flight = ctrl.current
        for i in range(in_flight):
            over = in_flight > capacity and rng.random() < share_429
            ctrl.record(t - 1 + (i + 0.5) / in_flight, over)
        ctrl.update(float(t), saturated=True)
        history.append(ctrl.current)
    return history


def direction_changes(history: list[int]) -> int:
    steps = [b - a for a, b in pairwise(history) if b != a]
    return sum(1 for a, b in pairwise(steps) if (a > 0) != (b > 0))


def test_it_settles_just_under_the_real_capacity_instead_of_oscillating() -> None:
    history = simulate_capacity(seconds=600, capacity=20, ceiling=64, share_429=0.3)

    last_five_minutes = history[300:]
    assert all(12 <= limit <= 20 for limit in last_five_minutes)
    assert history[-1] >= 18  # close to the capacity, not cowering far below it
    assert direction_changes(history) <= 3


def test_it_settles_whatever_the_luck_of_the_draw() -> None:
    for seed in range(10):
        history = simulate_capacity(seconds=600, capacity=20, ceiling=64, share_429=0.3, seed=seed)

        assert all(12 <= limit <= 20 for limit in history[300:]), seed
        assert direction_changes(history) <= 3, seed
