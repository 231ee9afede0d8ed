"""Drift statistics and the shift detector: zero-ish on equal samples, large on shifted ones,
and calibrated where a threshold depends on it."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from river.drift import ADWIN

from engine.drift.detectors import MeanShiftDetector, baseline_ranks
from engine.drift.statistics import (
    bin_proportions,
    centroid_cosine_distance,
    mmd2_rbf,
    psi,
    psi_by_chance,
    quantile_edges,
    two_proportion_z,
)

# ---------------------------------------------------------------- PSI


def test_psi_of_a_sample_against_itself_is_zero() -> None:
    sample = np.random.default_rng(1).lognormal(5, 0.5, 500)
    assert psi(sample, sample, bins=10) == pytest.approx(0.0, abs=1e-9)


def test_psi_noise_matches_its_expected_size_and_stays_under_the_default_gate() -> None:
    """Same distribution: PSI ≈ (bins − 1)(1/n + 1/m) on average, rarely past 0.25."""
    rng = np.random.default_rng(2)
    for n_base, n_cur in ((1000, 200), (200, 100)):
        values = np.array(
            [
                psi(rng.lognormal(5, 0.5, n_base), rng.lognormal(5, 0.5, n_cur), 5)
                for _ in range(400)
            ]
        )
        expected = psi_by_chance(5, n_base, n_cur)
        assert expected == pytest.approx(4 * (1 / n_base + 1 / n_cur))
        assert 0.7 * expected < values.mean() < 1.3 * expected
        assert np.quantile(values, 0.99) < 0.25


def test_psi_grows_with_the_shift() -> None:
    rng = np.random.default_rng(3)
    baseline = rng.lognormal(5, 0.5, 1000)
    shorter = [psi(baseline, rng.lognormal(5 - shift, 0.5, 200), 5) for shift in (0.2, 0.5, 1.0)]
    assert shorter == sorted(shorter)
    assert shorter[1] > 0.25  # answers 40% shorter: a large shift
    assert shorter[2] > 1.0


def test_psi_of_an_empty_sample_is_zero() -> None:
    assert psi([], [1.0, 2.0]) == 0.0
    assert psi([1.0, 2.0], []) == 0.0


def test_quantile_bins_merge_tied_values_of_a_discrete_feature() -> None:
    items = np.array([0] * 50 + [1] * 30 + [2] * 15 + [5] * 5, dtype=float)
    edges = quantile_edges(items, 10)
    # Deciles fall on 0, 1 and 2 only, and 0 is the minimum: three bins, none empty.
    assert list(edges) == [1.0, 2.0]
    shares = bin_proportions(items, edges)
    assert shares.tolist() == [0.5, 0.3, 0.2]
    # A value at an edge belongs to the bin that edge opens.
    assert bin_proportions([1.0, 2.0, 9.0], edges).tolist() == pytest.approx([0, 1 / 3, 2 / 3])


def test_fewer_items_is_a_large_psi_even_with_ties() -> None:
    rng = np.random.default_rng(4)
    baseline = rng.poisson(2.5, 1000)
    assert psi(baseline, rng.poisson(2.5, 200), 5) < 0.1
    assert psi(baseline, rng.poisson(1.25, 200), 5) > 0.25


# ---------------------------------------------------------------- rates


def fisher_one_sided_z(base_k: int, base_n: int, cur_k: int, cur_n: int) -> float:
    """Fisher's exact one-sided p-value for 'current rate is higher', as a z-score."""
    events, total = base_k + cur_k, base_n + cur_n
    tail = sum(
        math.comb(cur_n, j) * math.comb(base_n, events - j)
        for j in range(cur_k, min(events, cur_n) + 1)
    ) / math.comb(total, events)
    return NormalDist().inv_cdf(1 - tail)


@pytest.mark.parametrize(
    "counts",
    [
        (0, 1000, 3, 200),
        (0, 1000, 4, 200),
        (5, 250, 16, 53),
        (10, 1000, 30, 200),
        (40, 1000, 15, 200),
        (100, 1000, 30, 200),
    ],
)
def test_the_rate_z_agrees_with_fishers_exact_test(counts: tuple[int, int, int, int]) -> None:
    assert two_proportion_z(*counts) == pytest.approx(fisher_one_sided_z(*counts), abs=0.55)


def test_the_rate_z_is_signed_increases_positive() -> None:
    assert two_proportion_z(10, 1000, 40, 200) > 4
    assert two_proportion_z(40, 200, 10, 1000) < -4
    assert two_proportion_z(20, 1000, 4, 200) == pytest.approx(0.0, abs=0.2)
    assert two_proportion_z(0, 0, 5, 10) == 0.0
    assert two_proportion_z(5, 10, 0, 0) == 0.0


def test_the_rate_z_rarely_passes_the_default_gate_by_chance() -> None:
    """Rare events (1%), baseline 1000, windows of 200: z ≥ 4 is vanishingly rare, z ≥ 2 is ~2%."""
    rng = np.random.default_rng(5)
    base = rng.binomial(1000, 0.01, 20_000)
    cur = rng.binomial(200, 0.01, 20_000)
    z = np.array(
        [two_proportion_z(int(b), 1000, int(c), 200) for b, c in zip(base, cur, strict=True)]
    )
    assert (z >= 4).sum() == 0
    assert 0.005 < (z >= 2).mean() < 0.05


# ---------------------------------------------------------------- embeddings


def test_centroid_cosine_distance() -> None:
    x = np.array([[1.0, 0.0], [1.0, 0.2], [1.0, -0.2]])
    assert centroid_cosine_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    assert centroid_cosine_distance([1.0, 0.0], [[0.0, 1.0], [0.0, 2.0]]) == pytest.approx(1.0)
    assert centroid_cosine_distance([1.0, 0.0], [[1.0, 1.0]]) == pytest.approx(1 - math.sqrt(0.5))
    assert centroid_cosine_distance([0.0, 0.0], [[1.0, 1.0]]) == 0.0


def test_mmd2_separates_shifted_embeddings_from_fresh_samples() -> None:
    rng = np.random.default_rng(6)
    base = rng.normal(0, 1, (150, 16))
    same = [mmd2_rbf(base, rng.normal(0, 1, (150, 16))) for _ in range(5)]
    shifted = mmd2_rbf(base, rng.normal(0.5, 1, (150, 16)))
    assert max(abs(value) for value in same) < 0.01
    assert shifted > 10 * max(abs(value) for value in same)


# ---------------------------------------------------------------- shift detector


def test_baseline_ranks_are_uniform_without_drift_and_tie_aware() -> None:
    rng = np.random.default_rng(7)
    baseline = np.sort(rng.lognormal(0, 1, 2000))
    ranks = baseline_ranks(baseline, rng.lognormal(0, 1, 20_000))
    assert ranks.mean() == pytest.approx(0.5, abs=0.02)
    assert ranks.var() == pytest.approx(1 / 12, abs=0.005)
    ties = np.sort(np.array([0.0] * 60 + [1.0] * 40))
    assert baseline_ranks(ties, [0.0, 1.0, 5.0, -1.0]).tolist() == [0.3, 0.8, 1.0, 0.0]


def test_the_shift_detector_is_quiet_on_a_stationary_stream() -> None:
    rng = np.random.default_rng(8)
    detector = MeanShiftDetector(rng.lognormal(0, 0.4, 400))
    assert detector.update(rng.lognormal(0, 0.4, 50_000)) == []


def test_the_shift_detector_flags_a_latency_jump_within_a_few_dozen_answers() -> None:
    rng = np.random.default_rng(9)
    detector = MeanShiftDetector(rng.lognormal(0, 0.25, 400))
    assert detector.update(rng.lognormal(0, 0.25, 2000)) == []
    found = detector.update(rng.lognormal(math.log(2), 0.25, 200))
    assert found and found[0] < 30
    assert detector.detections == len(found)


def test_the_shift_detector_takes_any_river_detector() -> None:
    rng = np.random.default_rng(10)
    detector = MeanShiftDetector(rng.normal(0, 1, 400), lambda: ADWIN(delta=0.002))
    detector.update(rng.normal(0, 1, 1000))
    assert detector.update(rng.normal(3, 1, 1000))
