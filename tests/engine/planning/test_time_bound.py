"""The time a plan gives: the keys' limits with their burst, or latency and concurrency.

Pure arithmetic, checked against the bound the rate-limit benchmarks measure
runs by (`tests/benchmarks/provider_bound.py`) and against order statistics
of a uniform latency.
"""

from __future__ import annotations

import pytest

from engine.config.settings import SimulatorSettings
from engine.planning.latency_outlook import LatencyOutlook
from engine.planning.time_bound import KeyLimits, TimeInputs, time_bound, with_one_more
from tests.benchmarks.provider_bound import provider_bound_s

UNIFORM = LatencyOutlook.simulated(SimulatorSettings(latency_s=(0.5, 2.0)), output_tokens=0)


def inputs(requests: int, **changes: object) -> TimeInputs:
    values: dict[str, object] = {
        "requests": requests,
        "charge": 2000.0,
        "reservation": 2500.0,
        "burst_s": 60.0,
        "concurrency": 256,
        "batch_delay_s": 0.0,
        "latency": UNIFORM,
    }
    values.update(changes)
    return TimeInputs(**values)  # type: ignore[arg-type]


def test_a_rate_bound_job_takes_the_benchmarks_bound_plus_its_last_answer() -> None:
    keys = [KeyLimits("p", "a", 300, 10_000_000), KeyLimits("p", "b", 10_000, 300_000)]
    bound = time_bound(keys, inputs(2000))

    expected = provider_bound_s(2000, [(300, 10_000_000), (10_000, 300_000)], 2000.0, 60.0, 0.0)
    assert bound.limits_bound_s == pytest.approx(expected)  # 60 × (2000 ÷ 450 − 1) = 206.7 s
    assert bound.time_s == pytest.approx(expected + UNIFORM.mean)
    assert bound.binds == "limits"
    assert [k.binds(2000.0) for k in keys] == ["rpm", "tpm"]  # b: 300,000 ÷ 2,000 = 150 a minute


def test_one_more_key_of_a_kind_adds_its_rate() -> None:
    keys = [KeyLimits("p", "a", 600, None)]
    alone = time_bound(keys, inputs(3000, burst_s=1.0))
    doubled = time_bound(with_one_more(keys, keys[0]), inputs(3000, burst_s=1.0))

    assert alone.limits_bound_s == pytest.approx(60 * (3000 / 600 - 1 / 60))
    assert doubled.limits_bound_s == pytest.approx(60 * (3000 / 1200 - 1 / 60))


def test_a_job_inside_the_burst_is_bound_by_latency_and_says_so() -> None:
    keys = [KeyLimits("p", "a", 600, 10_000_000)]
    bound = time_bound(keys, inputs(60, concurrency=64))

    assert bound.limits_bound_s == 0.0
    assert bound.binds == "concurrency"
    # Before the key's first answer the engine sends a second of its limit (10 requests
    # at 600 RPM); the rest go when the fastest of those is back, and the job ends
    # with the slowest of them.
    opening = 10
    rest = 60 - opening
    assert bound.time_s == pytest.approx(UNIFORM.expected_min(opening) + UNIFORM.expected_max(rest))


def test_more_requests_than_the_ceiling_flow_at_ceiling_over_latency() -> None:
    keys = [KeyLimits("p", "a", None, None)]
    bound = time_bound(keys, inputs(1000, concurrency=10))

    assert bound.limits_bound_s is None and bound.unknown_limits == ("a",)
    # 1,000 requests, 10 at a time, 1.25 s each: about 125 s.
    assert bound.time_s == pytest.approx(1000 / 10 * UNIFORM.mean, rel=0.02)
    assert bound.binds == "concurrency"


def test_a_pause_between_requests_binds_when_it_is_the_longest() -> None:
    keys = [KeyLimits("p", "a", 100_000, None)]
    bound = time_bound(keys, inputs(400, batch_delay_s=0.25))

    assert bound.binds == "batch_delay"
    assert bound.time_s == pytest.approx(400 * 0.25 + UNIFORM.mean)


def test_the_slowest_and_fastest_of_k_uniform_latencies() -> None:
    # Order statistics of U(a, b): E[max of k] = a + (b − a)·k/(k + 1),
    # E[min of k] = a + (b − a)/(k + 1).
    for k in (1, 4, 60):
        assert UNIFORM.expected_max(k) == pytest.approx(0.5 + 1.5 * k / (k + 1), abs=0.01)
        assert UNIFORM.expected_min(k) == pytest.approx(0.5 + 1.5 / (k + 1), abs=0.01)
    assert UNIFORM.mean == pytest.approx(1.25, abs=1e-3)
