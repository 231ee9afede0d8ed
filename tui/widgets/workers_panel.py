"""A shared job's workers: the cluster's totals, then one line per worker.

Drawn from `Snapshot.cluster`, which the worker's own snapshot already
carries (read from Redis by the engine at its heartbeat), so the panel asks
the engine for nothing.  Hidden for a job that is not shared.
"""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from engine.api import ClusterView, Snapshot, WorkerView, format_duration

SHOWN = 6
"""Workers listed one a line; the rest are counted."""

_ID_WIDTH = 8
_HOST_WIDTH = 22
# (heading, width): numbers right-aligned under their heading.
_FIGURES = (("done", 9), ("failed", 7), ("in flight", 10), ("req/min", 8), ("heartbeat", 10))
_AGE = 4  # the heartbeat's column in _FIGURES


def short_id(worker: WorkerView) -> str:
    """The part of a worker's id that host and pid don't already say (ids are host-pid-token)."""
    own = worker.worker_id.removeprefix(f"{worker.host}-{worker.pid}-")
    return own[:_ID_WIDTH]


def _listed_first(worker: WorkerView) -> int:
    # Lost workers first (they need someone), ended ones last (they are history);
    # the sort is stable, so the cluster's own order (by start) holds within each.
    return 0 if worker.lost else 2 if worker.ended else 1


def _cell(text: str, width: int, *, right: bool = False) -> str:
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)


class WorkersPanel(Widget):
    """The cluster's progress, workers and rates on a line, then each worker.  Hidden
    unless the job is shared through Redis."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "workers-panel--live",
        "workers-panel--lost",
        "workers-panel--ended",
        "workers-panel--warning",
        "workers-panel--heading",
    }

    DEFAULT_CSS = """
    WorkersPanel {
        height: auto; max-height: 9; display: none;
        text-wrap: nowrap; text-overflow: ellipsis;
    }
    WorkersPanel.-clustered { display: block; }
    """

    cluster: reactive[ClusterView | None] = reactive(None, init=False)

    def show(self, snap: Snapshot) -> None:
        self.cluster = snap.cluster

    def watch_cluster(self, cluster: ClusterView | None) -> None:
        self.set_class(cluster is not None, "-clustered")

    def render(self) -> Text:
        cluster = self.cluster
        if cluster is None:
            return Text()
        lines = [self._totals(cluster), self._headings()]
        listed = sorted(cluster.workers, key=_listed_first)
        lines.extend(self._worker_line(worker, cluster) for worker in listed[:SHOWN])
        if len(listed) > SHOWN:
            rest = listed[SHOWN:]
            lost = sum(1 for worker in rest if worker.lost)
            more = f"  … {len(rest)} more" + (f" ({lost} lost)" if lost else "")
            lines.append(Text(more, "dim"))
        text = Text("\n").join(lines)
        text.no_wrap, text.overflow = True, "ellipsis"
        return text

    def _totals(self, cluster: ClusterView) -> Text:
        # Workers first: on a narrow terminal the rates are what gets cut.
        line = Text("workers ", "dim")
        line.append(f"{cluster.live}", self.get_component_rich_style("workers-panel--live"))
        line.append(" live  ", "dim")
        lost_style = self.get_component_rich_style("workers-panel--lost") if cluster.lost else None
        line.append(f"{cluster.lost}", lost_style or "bold")
        line.append(" lost", "dim")
        if cluster.ended:
            line.append(f"  {cluster.ended}", "bold")
            line.append(" ended", "dim")
        total = cluster.chunks_total
        line.append("  chunks ", "dim")
        line.append(f"{cluster.chunks_finished:,}/{'?' if total is None else f'{total:,}'}", "bold")
        for label, value in (
            ("done", cluster.chunks_done),
            ("copied", cluster.chunks_copied),  # of the done: their text was sent once
            ("failed", cluster.chunks_failed),
            ("in flight", cluster.in_flight),
        ):
            if label == "copied" and not value:
                continue
            line.append(f"  {label} ", "dim")
            line.append(f"{value:,}", "bold")
        if cluster.sites_enqueued:  # a crawl job: its sites crawled by any worker
            line.append("  sites ", "dim")
            finished = cluster.sites_crawled + cluster.sites_dead
            line.append(f"{finished:,}/{cluster.sites_enqueued:,}", "bold")
        if cluster.dead_letters:
            line.append("  dead letters ", "dim")
            line.append(
                f"{cluster.dead_letters:,}", self.get_component_rich_style("workers-panel--warning")
            )
        line.append(f"  {cluster.items_per_min:,.0f}", "bold")
        line.append(" items/min  ", "dim")
        line.append(f"{cluster.requests_per_min:,.0f}", "bold")
        line.append(" req/min", "dim")
        return line

    def _headings(self) -> Text:
        cells = [_cell("worker", _ID_WIDTH), _cell("host:pid", _HOST_WIDTH), _cell("state", 9)]
        cells.extend(_cell(heading, width, right=True) for heading, width in _FIGURES)
        return Text(
            "  " + "  ".join(cells), self.get_component_rich_style("workers-panel--heading")
        )

    def _worker_line(self, worker: WorkerView, cluster: ClusterView) -> Text:
        if worker.lost:
            state, state_style = "LOST", self.get_component_rich_style("workers-panel--lost")
        elif worker.ended:
            state, state_style = worker.state, Style()
        else:
            state, state_style = worker.state, self.get_component_rich_style("workers-panel--live")
        # A live worker past its heartbeat is late, though not lost yet.
        late = worker.live and worker.age_s > worker.heartbeat_s
        age_style = self.get_component_rich_style("workers-panel--warning") if late else Style()
        figures = (
            f"{worker.done:,}",
            f"{worker.failed:,}",
            # A lost or ended worker's in flight and rate are stale or zero: not shown.
            f"{worker.in_flight:,}" if worker.live else "–",
            f"{worker.requests_per_min:,.0f}" if worker.live else "–",
            f"{format_duration(worker.age_s)} ago",
        )
        line = Text("  ")
        line.append(_cell(short_id(worker), _ID_WIDTH), "bold")
        line.append("  " + _cell(f"{worker.host}:{worker.pid}", _HOST_WIDTH))
        line.append("  ")
        line.append(_cell(state, 9), state_style)
        for column, ((_, width), figure) in enumerate(zip(_FIGURES, figures, strict=True)):
            line.append("  ")
            line.append(_cell(figure, width, right=True), age_style if column == _AGE else Style())
        roles = [
            role
            for role, here in (
                ("this", worker.worker_id == cluster.worker_id),
                ("collector", worker.worker_id == cluster.collector),
            )
            if here
        ]
        if roles:
            line.append("  " + ", ".join(roles), "dim")
        if worker.ended:
            # Ended workers are history: the whole line recedes.
            line.stylize(self.get_component_rich_style("workers-panel--ended"))
        return line
