"""Quality drift: one chart per monitored metric, with its gate's threshold drawn in.

The series come from the engine's drift monitor (`Snapshot.drift`).  A job
without one still gets the two quality signals every run has: the median
latency and the error rate, per second, drawn without a threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.reactive import reactive
from textual.widget import Widget

from engine.api import DriftMetric, Snapshot

_EIGHTHS = " ▁▂▃▄▅▆▇█"
_LABEL_WIDTH = 16
_FIGURE_WIDTH = 22
_MAX_CHART_ROWS = 6  # taller charts add no reading, only empty space


@dataclass(frozen=True, slots=True)
class DriftSeries:
    """What one chart row draws: a series, its threshold (if gated) and its state."""

    label: str
    values: tuple[float, ...]
    current: float | None
    threshold: float | None
    state: str  # a `DriftState` value, or "ungated"
    unit: str  # "psi", "z", "s", "%", …


def drift_series(snap: Snapshot) -> tuple[DriftSeries, ...]:
    """The charts for a snapshot: the monitor's metrics, else latency and error rate."""
    if snap.drift:
        return tuple(_from_metric(metric) for metric in snap.drift)
    latency = snap.latency_history
    errors = tuple(100.0 * rate for rate in snap.error_rate_history)
    return (
        DriftSeries("latency p50", latency, latency[-1] if latency else None, None, "ungated", "s"),
        DriftSeries("error rate", errors, errors[-1] if errors else None, None, "ungated", "%"),
    )


def _from_metric(metric: DriftMetric) -> DriftSeries:
    return DriftSeries(
        metric.label or metric.name,
        metric.values,
        metric.current,
        metric.threshold if metric.threshold > 0 else None,
        str(metric.state),
        metric.statistic,
    )


class DriftPanel(Widget):
    """A chart per metric; bars past the threshold take the tripped colour.

    The rows each chart gets follow the panel's height, so CSS decides how
    much room drift has: sized by its content (`height: auto`) it takes one
    row per metric, as at 80×24; given more, as at 200×60, the charts grow.
    The threshold is the dashed line; the scale tops out at twice the
    threshold, so the line always sits half way up.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "drift-panel--label",
        "drift-panel--ok",
        "drift-panel--warning",
        "drift-panel--tripped",
        "drift-panel--learning",
        "drift-panel--ungated",
        "drift-panel--threshold",
    }

    DEFAULT_CSS = """
    DriftPanel { height: auto; }
    """

    series: reactive[tuple[DriftSeries, ...]] = reactive((), init=False)

    def show(self, snap: Snapshot) -> None:
        self.series = drift_series(snap)

    def watch_series(self, old: tuple[DriftSeries, ...], new: tuple[DriftSeries, ...]) -> None:
        if len(old) != len(new):
            self.refresh(layout=True)  # only the number of charts changes the panel's size

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(1, len(self.series))  # a line per metric

    def render(self) -> Text:
        rows = self.series
        if not rows:
            return Text("drift: waiting for results", style="dim")
        height = max(1, self.content_size.height)
        if len(rows) > height:
            # Not enough room for every metric: the worst ones keep theirs.
            rows = tuple(sorted(rows, key=_severity))[:height]
        per_chart = max(1, min(_MAX_CHART_ROWS, height // len(rows)))
        width = max(1, self.content_size.width - _LABEL_WIDTH - _FIGURE_WIDTH - 2)
        out = Text(no_wrap=True, overflow="ellipsis")
        for index, row in enumerate(rows):
            if index:
                out.append("\n")
            self._render_chart(out, row, per_chart, width)
        return out

    # ------------------------------------------------------------ drawing
    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"drift-panel--{name}")

    def _render_chart(self, out: Text, row: DriftSeries, rows: int, width: int) -> None:
        values = row.values[-width:]
        top = _scale_top(values, row.threshold)
        line_at = rows * row.threshold / top if row.threshold is not None and top > 0 else None
        threshold_style = self._style("threshold")
        for level in range(rows - 1, -1, -1):
            if level == rows - 1:
                out.append(f"{row.label[: _LABEL_WIDTH - 1]:<{_LABEL_WIDTH}}", self._style("label"))
            else:
                out.append(" " * _LABEL_WIDTH)
            out.append(" " * (width - len(values)))
            on_line = line_at is not None and level == min(rows - 1, int(line_at))
            for value in values:
                eighths = 0 if top <= 0 else round(8 * (rows * value / top - level))
                eighths = max(0, min(8, eighths))
                if eighths == 0 and on_line:
                    out.append("╌", threshold_style)
                elif eighths == 0:
                    out.append(" ")
                else:
                    out.append(_EIGHTHS[eighths], self._style(_bar_state(value, row)))
            if level == rows - 1:
                out.append("  ")
                out.append(_figure(row), self._style(row.state))
            if level:
                out.append("\n")


_SEVERITY = {"tripped": 0, "warning": 1, "ok": 2, "ungated": 2, "learning": 3}


def _severity(row: DriftSeries) -> int:
    return _SEVERITY.get(row.state, 2)


def _scale_top(values: Sequence[float], threshold: float | None) -> float:
    if threshold is not None and threshold > 0:
        return max(2.0 * threshold, max(values, default=0.0))
    return max(values, default=0.0)


def _bar_state(value: float, row: DriftSeries) -> str:
    if row.threshold is None:
        return "ungated"
    if value >= row.threshold:
        return "tripped"
    if value >= row.threshold / 2:
        return "warning"
    return "ok"


def _number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f}s"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:.3g}"


def _figure(row: DriftSeries) -> str:
    current = "—" if row.current is None else _number(row.current, row.unit)
    if row.threshold is None:
        text = f"{current} (no gate)"
    else:
        text = f"{current}/{_number(row.threshold, row.unit)} {row.unit} {row.state}"
    return text[:_FIGURE_WIDTH]
