"""The ETA from the keys' limits, blended with the measured rate as the run goes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.observe.eta import (
    Eta,
    EtaEstimator,
    KeyCapacity,
    sustained_requests_per_s,
)

# A whole engine run against the simulator in its own process (1 key at 1,200 RPM, a bucket
# holding its minute, latency 0.5-2 s, 8,400 chunks 4 a request: 47 s), as
# `python -m tests.benchmarks.eta_accuracy --record`
# kept it: every call the engine made on its estimator, at the job's elapsed seconds.
RECORDED_RUN = Path(__file__).with_name("eta_recorded_run.json")


def steady(estimator: EtaEstimator, seconds: int, per_s: float, start: float = 0.0) -> None:
    """Observe once a second, `per_s` chunks finished each second, from `start`."""
    finished = 0.0
    estimator.observe(start, 0)
    for t in range(1, seconds + 1):
        finished += per_s
        estimator.observe(start + t, int(finished))


def test_the_keys_sustain_the_sum_of_each_keys_tighter_limit() -> None:
    keys = [
        KeyCapacity(rpm=600, tpm=None),  # 600 a minute
        KeyCapacity(rpm=1200, tpm=300_000),  # 300,000 ÷ 2,000 tokens = 150 a minute
        KeyCapacity(rpm=10_000, tpm=None, usable=False),  # disabled: counts for nothing
    ]

    assert sustained_requests_per_s(keys, tokens_per_request=2000) == pytest.approx(750 / 60)
    # Before the charge per request is known only the request limits can bind.
    assert sustained_requests_per_s(keys, tokens_per_request=None) == pytest.approx(1800 / 60)
    # A usable key without limits bounds nothing; no usable key sustains nothing.
    assert sustained_requests_per_s([KeyCapacity(None, None)], 2000) is None
    assert sustained_requests_per_s([KeyCapacity(600, None, usable=False)], 2000) is None


def test_before_any_answer_the_eta_is_the_work_beyond_the_burst_at_the_limits_rate() -> None:
    keys = [KeyCapacity(rpm=1200, tpm=None, requests_left=300)]

    eta = EtaEstimator().estimate(
        8400, keys, chunks_per_request=4, tokens_per_request=None
    )  # 2,100 requests, 300 of them in the burst, the rest at 20 a second

    assert eta == Eta(90.0, 90.0, 90.0)


def test_requests_in_flight_do_not_wait_for_the_rate_their_budget_is_spent() -> None:
    # 2,100 requests: 500 sent and not back yet, 200 more the burst lets through at once.
    keys = [KeyCapacity(rpm=1200, tpm=None, requests_left=200, in_flight=500)]

    eta = EtaEstimator().estimate(8400, keys, chunks_per_request=4, tokens_per_request=None)

    assert eta == Eta(70.0, 70.0, 70.0)  # (2,100 - 700) ÷ 20 a second


def test_a_job_the_burst_holds_whole_ends_as_fast_as_the_requests_in_flight_allow() -> None:
    # 800 requests, all within the 1,200 the bucket holds: no wait for the rate,
    # but at most 256 in flight at once, each answered in 1.2 s on average.
    keys = [KeyCapacity(rpm=1200, tpm=None, requests_left=1200, latency_s=1.2)]
    estimator = EtaEstimator()

    eta = estimator.estimate(3200, keys, chunks_per_request=4, tokens_per_request=None)
    paced = estimator.estimate(
        3200, keys, chunks_per_request=4, tokens_per_request=None, in_flight_limit=256
    )
    last = estimator.estimate(
        40, keys, chunks_per_request=4, tokens_per_request=None, in_flight_limit=256
    )

    assert eta == Eta(0.0, 0.0, 0.0)  # the limits alone: nothing to wait for
    assert paced.eta_s == pytest.approx(800 * 1.2 / 256)
    assert last.eta_s == pytest.approx(1.2)  # the last ten still take a latency


def test_a_measured_rate_above_the_limits_is_the_burst_and_changes_nothing() -> None:
    estimator = EtaEstimator()
    steady(estimator, seconds=10, per_s=200)  # 50 requests a second against a limit of 20
    keys = [KeyCapacity(rpm=1200, tpm=None)]

    eta = estimator.estimate(8000, keys, chunks_per_request=4, tokens_per_request=None)

    assert eta.eta_s == pytest.approx(100.0)


def test_a_job_far_slower_than_its_limits_goes_by_what_it_measures() -> None:
    estimator = EtaEstimator()
    steady(estimator, seconds=5, per_s=40)  # latency-bound: 10 requests a second of 20,000
    keys = [KeyCapacity(rpm=1_200_000, tpm=None)]

    eta = estimator.estimate(4000, keys, chunks_per_request=4, tokens_per_request=None)

    assert eta.eta_s == pytest.approx(100.0, rel=0.01)


def test_a_rate_a_little_below_the_limits_takes_over_as_evidence_accumulates() -> None:
    keys = [KeyCapacity(rpm=1200, tpm=None)]  # 80 chunks a second, 4 a request
    by_limits, by_measure = 8000 / 80, 8000 / 64

    def after(seconds: int) -> float:
        estimator = EtaEstimator(window_s=60)
        steady(estimator, seconds=seconds, per_s=64)  # 80 % of what the limits allow
        eta = estimator.estimate(8000, keys, chunks_per_request=4, tokens_per_request=None)
        assert eta.eta_s is not None
        return eta.eta_s

    early, late = after(3), after(50)

    assert by_limits < early < late < by_measure
    assert late == pytest.approx(by_measure, rel=0.05)


def replay(run: dict[str, Any]) -> list[tuple[float, int, float | None, float | None]]:
    """(elapsed, remaining, recorded ETA, replayed ETA) for each estimate of the run."""
    estimator = EtaEstimator()
    estimates = []
    for call in run["calls"]:
        if call[0] == "observe":
            _, elapsed, finished = call
            estimator.observe(elapsed, finished)
            continue
        _, elapsed, remaining, keys, chunks_per_request, tokens_per_request, limit, recorded = call
        replayed = estimator.estimate(
            remaining,
            [KeyCapacity(**key) for key in keys],
            chunks_per_request=chunks_per_request,
            tokens_per_request=tokens_per_request,
            in_flight_limit=limit,
        )
        estimates.append((elapsed, remaining, recorded, replayed.eta_s))
    return estimates


def test_on_a_recorded_run_the_eta_at_10_and_25_percent_is_within_10_percent() -> None:
    run = json.loads(RECORDED_RUN.read_text(encoding="utf-8"))
    estimates = replay(run)
    total = estimates[0][1]

    # The estimator is pinned: fed the same sequence, it says what it said in the run
    # (near enough: the recording keeps times to the millisecond).
    for _, _, recorded, replayed in estimates:
        assert replayed == pytest.approx(recorded, rel=1e-4)
    for mark in (0.10, 0.25):
        elapsed, _, _, eta = next(e for e in estimates if e[1] <= (1 - mark) * total)
        took = run["wall_s"] - elapsed
        assert eta == pytest.approx(took, rel=0.10), f"at {mark:.0%} done"
