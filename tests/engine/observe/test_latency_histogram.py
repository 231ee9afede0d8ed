"""Answers counted into fixed latency buckets, read as Prometheus reads a histogram."""

from __future__ import annotations

from engine.observe.latency_histogram import LATENCY_BOUNDS_S, LatencyBuckets, LatencyHistogram


def test_an_empty_histogram_has_every_bucket_at_zero() -> None:
    empty = LatencyBuckets().snapshot()
    assert empty == LatencyHistogram()
    assert empty.count == 0 and empty.sum_s == 0.0
    assert len(empty.cumulative) == len(LATENCY_BOUNDS_S) + 1  # the last is +Inf


def test_counts_are_cumulative_and_a_bound_holds_the_answers_equal_to_it() -> None:
    buckets = LatencyBuckets((0.5, 1.0, 2.0))
    for seconds in (0.1, 0.5, 0.7, 1.0, 1.5, 9.0):
        buckets.observe(seconds)

    histogram = buckets.snapshot()
    # le=0.5: 0.1 and 0.5; le=1: and 0.7, 1.0; le=2: and 1.5; +Inf: and 9.0
    assert histogram.cumulative == (2, 4, 5, 6)
    assert histogram.count == 6
    assert histogram.sum_s == 0.1 + 0.5 + 0.7 + 1.0 + 1.5 + 9.0


def test_a_snapshot_is_a_value_that_later_answers_do_not_change() -> None:
    buckets = LatencyBuckets((1.0,))
    buckets.observe(0.2)
    before = buckets.snapshot()
    buckets.observe(3.0)
    assert before.cumulative == (1, 1)
    assert buckets.snapshot().cumulative == (1, 2)
