"""Our Page-Hinkley is river's, verdict for verdict, without river's import cost."""

from __future__ import annotations

import random

import pytest
from river.drift import PageHinkley as RiverPageHinkley

from engine.drift.detectors import (
    PAGE_HINKLEY_ALLOWANCE,
    PAGE_HINKLEY_THRESHOLD,
    PageHinkley,
)


def stream(seed: int, length: int = 3000) -> list[float]:
    """Uniform ranks whose mean jumps up, back, then down, at random places."""
    rng = random.Random(seed)
    values: list[float] = []
    level = 0.0
    while len(values) < length:
        for _ in range(rng.randint(100, 600)):
            values.append(min(1.0, max(0.0, rng.random() + level)))
        level = rng.choice((-0.45, -0.2, 0.0, 0.2, 0.45))
    return values[:length]


def verdicts(detector: object, values: list[float]) -> list[int]:
    found = []
    for index, value in enumerate(values):
        detector.update(value)  # type: ignore[attr-defined]
        if detector.drift_detected:  # type: ignore[attr-defined]
            found.append(index)
    return found


@pytest.mark.parametrize("mode", ["up", "down", "both"])
@pytest.mark.parametrize(
    ("delta", "threshold", "alpha"),
    [
        (PAGE_HINKLEY_ALLOWANCE, PAGE_HINKLEY_THRESHOLD, 1.0),  # the monitor's settings
        (0.005, 50.0, 1 - 0.0001),  # river's defaults
        (0.05, 3.0, 0.99),
    ],
)
def test_it_flags_the_same_values_as_rivers(
    mode: str, delta: float, threshold: float, alpha: float
) -> None:
    for seed in range(5):
        values = stream(seed)
        settings = {"min_instances": 30, "delta": delta, "threshold": threshold, "alpha": alpha}
        ours = verdicts(PageHinkley(mode=mode, **settings), values)  # type: ignore[arg-type]
        theirs = verdicts(RiverPageHinkley(mode=mode, **settings), values)

        assert ours == theirs
        if (delta, mode) == (PAGE_HINKLEY_ALLOWANCE, "both"):
            assert ours  # not vacuous: the jumps were seen


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        PageHinkley(mode="sideways")  # type: ignore[arg-type]
