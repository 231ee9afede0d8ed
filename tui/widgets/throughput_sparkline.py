"""Items per minute over the last minutes, one bar per second."""

from __future__ import annotations

from engine.api import Snapshot
from tui.widgets.metric_sparkline import MetricSparkline


class ThroughputSparkline(MetricSparkline):
    """The engine's throughput history (items/min)."""

    def pick(self, snap: Snapshot) -> tuple[tuple[float, ...], str]:
        return snap.throughput_history, f"throughput  {snap.items_per_min:,.0f} items/min"
