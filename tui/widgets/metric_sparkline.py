"""A labelled sparkline over one per-second history from the snapshot."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Sparkline, Static

from engine.api import Snapshot


class MetricSparkline(Widget):
    """Base for a sparkline with a caption; subclasses pick the history and caption."""

    DEFAULT_CSS = """
    MetricSparkline { height: 3; }
    MetricSparkline > .sparkline--caption { height: 1; }
    MetricSparkline > Sparkline { height: 2; }
    """

    history: reactive[tuple[float, ...]] = reactive((), init=False)
    caption: reactive[str] = reactive("", init=False)

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._caption = Static(classes="sparkline--caption")
        self._sparkline = Sparkline([])

    def compose(self) -> ComposeResult:
        yield self._caption
        yield self._sparkline

    def pick(self, snap: Snapshot) -> tuple[tuple[float, ...], str]:
        raise NotImplementedError

    def show(self, snap: Snapshot) -> None:
        self.history, self.caption = self.pick(snap)

    def watch_history(self, history: Sequence[float]) -> None:
        # A new list each time: Sparkline only redraws when `data` is replaced.
        self._sparkline.data = list(history)

    def watch_caption(self, caption: str) -> None:
        self._caption.update(Text(caption))
