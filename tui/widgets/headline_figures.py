"""The four numbers an operator looks at first: rate, ETA, progress, cost.

Every figure comes from the snapshot as the engine computed it; nothing here
derives a rate or an ETA.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static

from engine.api import Snapshot, eta_text

# (label, value, note) for each figure, left to right
Figures = tuple[tuple[str, str, str], ...]

_FIGURE_IDS = ("rate", "eta", "progress", "cost")


def headline_figures(snap: Snapshot) -> Figures:
    counts = snap.counts
    total = "?" if counts.total is None else f"{counts.total:,}"
    if counts.total is not None and counts.total_estimated:
        total = f"~{total}"  # a crawl's total, projected from the sites crawled so far
    eta, band = eta_text(snap)  # the job's state instead, while paused, draining or over
    projected = "" if snap.cost_projected_usd is None else f"~${snap.cost_projected_usd:,.4f} total"
    if snap.budget is not None:  # spent by every run of the job, and held by requests out now
        budget = snap.budget
        projected = (
            f"{'REACHED ' if budget.reached else ''}${budget.spent_usd:,.4f} of "
            f"${budget.cap_usd:,.2f} · ${budget.reserved_usd:,.4f} out"
        )
    outcome = f"{counts.failed:,} failed"
    if counts.cached:  # a copy of an answer to the same text: no request of its own
        outcome += f" · {counts.cached:,} cached"
    if counts.records_skipped:  # input that never became chunks: not in done/total
        outcome += f" · {counts.records_skipped:,} bad input"
    return (
        ("items/min", f"{snap.items_per_min:,.0f}", f"{snap.requests_per_min:,.0f} req/min"),
        ("ETA", eta, band),
        ("done/total", f"{counts.finished:,}/{total}", outcome),
        ("cost", f"${snap.cost_usd:,.4f}", projected),
    )


class HeadlineFigures(Widget):
    """Items per minute, ETA with its band, done/total and cost, side by side."""

    DEFAULT_CSS = """
    HeadlineFigures { layout: horizontal; height: 3; }
    HeadlineFigures > .figure { width: 1fr; height: 3; }
    """

    figures: reactive[Figures] = reactive((), init=False)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._statics = [Static(id=f"figure-{name}", classes="figure") for name in _FIGURE_IDS]

    def compose(self) -> ComposeResult:
        yield from self._statics

    def show(self, snap: Snapshot) -> None:
        self.figures = headline_figures(snap)

    def watch_figures(self, old: Figures, new: Figures) -> None:
        for index, figure in enumerate(new):
            if index < len(old) and old[index] == figure:
                continue  # unchanged: leave the widget alone
            label, value, note = figure
            text = Text.assemble((label, "dim"), "\n", (value, "bold"), "\n", (note, "dim"))
            # A long note is cut, never wrapped: the figures keep their three rows.
            text.no_wrap = True
            text.overflow = "ellipsis"
            self._statics[index].update(text)
