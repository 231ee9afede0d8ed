"""A scrolling log of the engine's events, newest at the bottom."""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.widgets import RichLog

from engine.api import Event, EventKind, Snapshot

_WARNING_KINDS = {
    EventKind.RATE_LIMITED,
    EventKind.RETRY,
    EventKind.MEMORY_SOFT,
    EventKind.WARNING,
    EventKind.DRAINING,
    EventKind.STOPPING,
    EventKind.BATCH_RECLAIMED,
    EventKind.BUDGET_REACHED,
    EventKind.BATCH_TO_ONLINE,
}
_ERROR_KINDS = {
    EventKind.KEY_DISABLED,
    EventKind.CHUNK_FAILED,
    EventKind.MEMORY_HARD,
    EventKind.DEAD_LETTER,
}


def _offset(seconds: float) -> str:
    """Time since the job started, as +MM:SS (or +H:MM:SS): readable and host-independent."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"+{hours}:{minutes:02d}:{secs:02d}" if hours else f"+{minutes:02d}:{secs:02d}"


class EventLog(RichLog):
    """Appends the events that are new in each snapshot."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "event-log--time",
        "event-log--warning",
        "event-log--error",
    }

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, max_lines=1000, wrap=False, markup=False)
        self._last: Event | None = None

    def show(self, snap: Snapshot) -> None:
        events = snap.events
        if not events or events[-1] is self._last:
            return
        start = 0
        # The snapshot holds a rolling window: find where this log left off.
        for index in range(len(events) - 1, -1, -1):
            if events[index] is self._last:
                start = index + 1
                break
        job_started = snap.taken_at - snap.elapsed_s
        for event in events[start:]:
            self.write(self._line(event, event.ts - job_started))
        self._last = events[-1]

    def _line(self, event: Event, since_start: float) -> Text:
        if event.kind in _ERROR_KINDS:
            kind_style = self.get_component_rich_style("event-log--error")
        elif event.kind in _WARNING_KINDS:
            kind_style = self.get_component_rich_style("event-log--warning")
        else:
            kind_style = Style()
        return Text.assemble(
            (_offset(since_start), self.get_component_rich_style("event-log--time")),
            " ",
            (f"{event.kind:<19}", kind_style),
            " ",
            event.message,
            no_wrap=True,
        )
