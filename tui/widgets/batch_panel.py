"""A batch-mode job's Batch API batches: what is open at the provider, and the cost."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from engine.api import BatchRouteView, Snapshot, format_duration

SHOWN = 2
"""Open batches listed one a line; the rest are counted."""


class BatchPanel(Widget):
    """A line of totals and cost, then the open batches, oldest first.  Hidden for
    online jobs."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "batch-panel--open",
        "batch-panel--given-up",
        "batch-panel--cost",
    }

    DEFAULT_CSS = """
    BatchPanel {
        height: auto; max-height: 4; display: none;
        text-wrap: nowrap; text-overflow: ellipsis;
    }
    BatchPanel.-batching { display: block; }
    """

    route: reactive[BatchRouteView | None] = reactive(None, init=False)

    def show(self, snap: Snapshot) -> None:
        self.route = snap.batch

    def watch_route(self, route: BatchRouteView | None) -> None:
        self.set_class(route is not None, "-batching")

    def render(self) -> Text:
        route = self.route
        if route is None:
            return Text()
        # Cost first: on a narrow terminal the counts are what gets cut.
        cost = self.get_component_rich_style("batch-panel--cost")
        head = Text("batch  cost ", style="dim")
        head.append(f"${route.cost_usd:.4f}", cost)
        if route.cost_projected_usd is not None:
            head.append("  projected ", "dim")
            head.append(f"${route.cost_projected_usd:.4f}", cost)
            if route.online_cost_projected_usd is not None:
                head.append(f" (online ${route.online_cost_projected_usd:.4f})", "dim")
        for label, value, style in (
            ("open", len(route.batches), "batch-panel--open"),
            ("settled", route.settled, ""),
            ("given up", route.abandoned, "batch-panel--given-up" if route.abandoned else ""),
            ("submitted", route.submitted, ""),
            ("resumed", route.resumed, ""),
            ("collecting", route.collecting, ""),
        ):
            head.append(f"  {label} ", "dim")
            head.append(f"{value:,}", self.get_component_rich_style(style) if style else "bold")
        if route.chunks_sent_online:  # the remainder of batches whose window was at risk
            head.append("  sent online ", "dim")
            head.append(f"{route.chunks_sent_online:,}", "bold")
            head.append(" chunks", "dim")
        lines = [head]
        oldest_first = sorted(route.batches, key=lambda batch: -batch.age_s)
        open_style = self.get_component_rich_style("batch-panel--open")
        given_up_style = self.get_component_rich_style("batch-panel--given-up")
        for batch in oldest_first[:SHOWN]:
            line = Text("  ")
            line.append(batch.state.replace("_", " "), open_style)
            line.append(f"  {batch.completed:,}/{batch.requests:,}", "bold")
            line.append(" requests", "dim")
            if batch.failed:
                line.append(f" ({batch.failed:,} failed)", given_up_style)
            line.append(f"  {format_duration(batch.age_s)}", "bold")
            line.append(f" of {format_duration(batch.window_s)}  ", "dim")
            line.append(batch.batch_id or "(being created)", "bold")
            line.append(f" {batch.key_alias}  {batch.chunks:,} chunks", "dim")
            if batch.resumed:
                line.append("  resumed", "dim")
            lines.append(line)
        if len(oldest_first) > SHOWN:
            lines.append(Text(f"  … {len(oldest_first) - SHOWN} more open", "dim"))
        text = Text("\n").join(lines)
        text.no_wrap, text.overflow = True, "ellipsis"
        return text
