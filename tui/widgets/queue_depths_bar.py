"""How much work waits at each stage of the pipeline."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from engine.api import QueueDepths, Snapshot


class QueueDepthsBar(Static):
    """One line of queue depths: chunks read ahead, batches, retries, store backlog."""

    DEFAULT_CSS = """
    QueueDepthsBar { height: 1; }
    """

    depths: reactive[tuple[QueueDepths, int] | None] = reactive(None, init=False)

    def show(self, snap: Snapshot) -> None:
        self.depths = (snap.queues, snap.counts.pending)

    def watch_depths(self, depths: tuple[QueueDepths, int] | None) -> None:
        if depths is None:
            return
        queues, pending = depths
        parts: list[tuple[str, int]] = [
            ("pending", pending),
            ("chunks", queues.chunks),
            ("batches", queues.batches),
            ("retries", queues.retries),
            ("store", queues.store),
        ]
        text = Text("queues ", style="dim")
        for name, value in parts:
            text.append(f" {name} ", style="dim")
            text.append(f"{value:,}", style="bold")
        self.update(text)
