"""Median request latency over the last minutes, one bar per second."""

from __future__ import annotations

from engine.api import Snapshot
from tui.widgets.metric_sparkline import MetricSparkline


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}s"


class LatencySparkline(MetricSparkline):
    """The engine's p50 latency history, captioned with p50/p95/p99."""

    def pick(self, snap: Snapshot) -> tuple[tuple[float, ...], str]:
        caption = (
            f"latency  p50 {_seconds(snap.latency_p50_s)}  p95 {_seconds(snap.latency_p95_s)}"
            f"  p99 {_seconds(snap.latency_p99_s)}"
        )
        return snap.latency_history, caption
