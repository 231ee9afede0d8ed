"""Run counters, and the rates, latency percentiles and ETA derived from them on a tick."""

from __future__ import annotations

import math

import pytest

from engine.observe.run_stats import RunStats
from engine.observe.snapshot import KeySnapshot


def steady(stats: RunStats, seconds: int, items_per_s: int, start: float = 0.0) -> float:
    """Tick once a second with `items_per_s` items done each second; the last tick's time."""
    now = start
    stats.tick(now)
    for _ in range(seconds):
        now += 1.0
        stats.done += items_per_s
        stats.requests += items_per_s
        stats.tick(now)
    return now


def test_the_first_tick_only_sets_the_baseline() -> None:
    stats = RunStats(done=500, requests=100, tokens=10_000)

    stats.tick(10.0)

    assert (stats.items_per_min, stats.requests_per_min, stats.tokens_per_s) == (0.0, 0.0, 0.0)
    assert list(stats.throughput_history) == []


def test_rates_come_from_the_change_in_counters_since_the_last_tick() -> None:
    stats = RunStats()
    stats.tick(0.0)
    stats.done, stats.failed, stats.requests, stats.tokens = 8, 2, 5, 3000

    stats.tick(2.0)

    assert stats.items_per_min == pytest.approx(300.0)  # 10 items in 2 s
    assert stats.requests_per_min == pytest.approx(150.0)
    assert stats.tokens_per_s == pytest.approx(1500.0)
    assert list(stats.throughput_history) == [pytest.approx(300.0)]


def test_rates_are_smoothed_over_about_twenty_seconds() -> None:
    stats = RunStats()
    steady(stats, seconds=1, items_per_s=10)
    assert stats.items_per_min == pytest.approx(600.0)

    stats.tick(2.0)  # a second with nothing done

    alpha = 1 - math.exp(-1 / 20)
    assert stats.items_per_min == pytest.approx(600.0 * (1 - alpha))
    assert list(stats.throughput_history) == [pytest.approx(600.0), 0.0]  # raw, unsmoothed


def test_a_smoothed_rate_converges_on_a_new_steady_rate() -> None:
    stats = RunStats()
    now = steady(stats, seconds=60, items_per_s=10)

    steady(stats, seconds=120, items_per_s=2, start=now)

    assert stats.items_per_min == pytest.approx(120.0, rel=0.01)


def test_skipped_and_cached_chunks_finish_but_are_not_throughput() -> None:
    stats = RunStats()
    stats.tick(0.0)
    stats.skipped, stats.cached, stats.done, stats.failed = 100, 50, 3, 1

    stats.tick(1.0)

    assert stats.finished == 154
    assert stats.items_per_min == pytest.approx(240.0)


def test_a_tick_at_the_same_instant_changes_nothing() -> None:
    stats = RunStats()
    steady(stats, seconds=1, items_per_s=10)
    stats.done += 1000

    stats.tick(1.0)

    assert stats.items_per_min == pytest.approx(600.0)
    assert len(stats.throughput_history) == 1


def test_the_error_rate_is_failed_attempts_over_requests_per_tick() -> None:
    stats = RunStats()
    stats.tick(0.0)
    stats.requests, stats.attempts_failed = 20, 5
    stats.tick(1.0)
    stats.tick(2.0)  # no requests: no errors, not a division by zero

    assert list(stats.error_rate_history) == [0.25, 0.0]


def test_latency_percentiles_are_computed_on_the_tick() -> None:
    stats = RunStats()
    for ms in range(1, 101):
        stats.record_latency(ms / 100)
    assert stats.p50 is None  # not before a tick

    stats.tick(0.0)

    assert stats.p50 == pytest.approx(0.505)
    assert stats.p95 == pytest.approx(0.9505)
    assert stats.p99 == pytest.approx(0.9901)
    assert list(stats.latency_history) == [pytest.approx(0.505)]


def test_percentiles_cover_only_the_most_recent_latencies() -> None:
    stats = RunStats()
    for _ in range(1000):
        stats.record_latency(60.0)  # a slow start, long gone
    for _ in range(2000):
        stats.record_latency(1.0)

    stats.tick(0.0)

    assert stats.p99 == 1.0


def test_without_latencies_there_are_no_percentiles() -> None:
    stats = RunStats()
    stats.tick(0.0)
    stats.tick(1.0)

    assert (stats.p50, stats.p95, stats.p99) == (None, None, None)
    assert list(stats.latency_history) == []


def test_histories_keep_the_last_ten_minutes() -> None:
    stats = RunStats()

    steady(stats, seconds=700, items_per_s=1)

    assert len(stats.throughput_history) == 600


def test_a_steady_rate_has_a_narrow_band() -> None:
    stats = RunStats()

    steady(stats, seconds=60, items_per_s=10)

    assert stats.items_per_min_low == pytest.approx(600.0)
    assert stats.items_per_min_high == pytest.approx(600.0)


def test_an_uneven_rate_has_a_band_around_the_smoothed_rate() -> None:
    stats = RunStats()
    stats.tick(0.0)
    for t in range(1, 61):
        stats.done += 20 if ((t - 1) // 10) % 2 else 0  # ten idle seconds, ten busy
        stats.tick(float(t))

    assert stats.items_per_min_low <= stats.items_per_min <= stats.items_per_min_high
    assert stats.items_per_min_low == 0.0
    assert stats.items_per_min_high == pytest.approx(1200.0)


def test_eta_is_unknown_while_the_total_is_unknown() -> None:
    assert RunStats(items_per_min=600.0).eta(None) == (None, None, None)


def test_eta_is_zero_when_nothing_remains() -> None:
    assert RunStats().eta(0) == (0.0, 0.0, 0.0)
    assert RunStats().eta(-3) == (0.0, 0.0, 0.0)


def test_there_is_no_eta_while_the_job_is_not_running() -> None:
    stats = RunStats()
    steady(stats, seconds=30, items_per_s=10)

    assert stats.eta(1200)[0] == pytest.approx(120.0)
    assert stats.eta(1200, running=False) == (None, None, None)
    assert stats.eta(0, running=False) == (None, None, None)


def test_eta_is_unknown_without_a_rate_to_go_by() -> None:
    stats = RunStats()
    stats.tick(0.0)
    stats.tick(1.0)

    assert stats.eta(100) == (None, None, None)


def test_before_any_rate_the_keys_limits_give_the_eta() -> None:
    keys = (key(rpm_limit=600, tpm_limit=None), key(rpm_limit=None, state="disabled"))

    eta, low, high = RunStats().eta(1200, keys=keys, batch_size=5)

    # 1,200 chunks, 5 a request, at 10 requests a second.
    assert (eta, low, high) == (pytest.approx(24.0), pytest.approx(24.0), pytest.approx(24.0))


def test_the_keys_token_limit_binds_through_the_tokens_each_request_is_charged() -> None:
    keys = (key(rpm_limit=600, tpm_limit=60_000, rpm_used=100, tpm_used=200_000),)

    eta, _, _ = RunStats().eta(100, keys=keys, batch_size=1)

    # 2,000 tokens a request against 60,000 a minute: 30 requests a minute, not 600.
    assert eta == pytest.approx(200.0)


def test_eta_is_what_remains_at_the_current_rate_with_a_band_around_it() -> None:
    stats = RunStats()
    stats.tick(0.0)
    for t in range(1, 61):
        stats.done += 15 if t % 2 else 5  # 600/min on average, uneven second to second
        stats.tick(float(t))

    eta, low, high = stats.eta(1200)

    assert eta == pytest.approx(120.0, rel=0.05)
    assert eta is not None and low is not None and high is not None
    assert low <= eta <= high


def test_eta_has_no_upper_bound_when_a_recent_stretch_did_nothing() -> None:
    stats = RunStats()
    stats.tick(0.0)
    for t in range(1, 61):
        stats.done += 0 if 44 < t <= 52 else 20
        stats.tick(float(t))

    eta, low, high = stats.eta(1000)

    assert eta is not None and low is not None
    assert high is None


def key(
    rpm_limit: float | None,
    tpm_limit: float | None = None,
    state: str = "ok",
    rpm_used: int = 0,
    tpm_used: int = 0,
) -> KeySnapshot:
    return KeySnapshot(
        key_id="sim/k",
        provider="sim",
        alias="k",
        masked_secret="sk-…k",
        rpm_used=rpm_used,
        rpm_limit=rpm_limit,
        tpm_used=tpm_used,
        tpm_limit=tpm_limit,
        in_flight=0,
        requests=0,
        errors=0,
        rate_limited=0,
        state=state,
    )
