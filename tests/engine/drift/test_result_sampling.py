"""Past a rate, the drift monitor looks at a sample of the results, spread evenly."""

from __future__ import annotations

from engine.drift.result_sampling import MAX_PER_S, ResultSampling


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_every_result_is_looked_at_while_they_come_slower_than_the_rate() -> None:
    clock = Clock()
    sampling = ResultSampling(clock, max_per_s=100)
    for _ in range(50):
        clock.now += 0.05  # 5 results every 50 ms: 100 a second
        assert sampling.sample(list(range(5))) == [0, 1, 2, 3, 4]


def test_past_the_rate_a_sample_spread_through_each_arrival() -> None:
    clock = Clock()
    sampling = ResultSampling(clock, max_per_s=100)
    assert len(sampling.sample(list(range(400)))) == 100  # a second of them at once
    assert sampling.sample(list(range(10))) == ()
    clock.now += 0.5
    taken = sampling.sample(list(range(200)))
    assert taken == list(range(0, 200, 4)), "50 of 200, every fourth"


def test_the_default_rate_keeps_a_fast_jobs_monitor_to_a_sixth_of_its_results() -> None:
    clock = Clock()
    sampling = ResultSampling(clock)
    looked_at = 0
    for _ in range(3000):  # 3,000 results a second, 5 at a time, for 10 s
        clock.now += 1 / 300
        looked_at += len(sampling.sample(list(range(5))))
    assert abs(looked_at - MAX_PER_S * 10) <= MAX_PER_S  # the first second's bucket aside
