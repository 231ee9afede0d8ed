"""The full event log: every event the snapshot holds, newest at the bottom."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.screen import Screen
from textual.widgets import Footer

from engine.api import Snapshot
from tui.actions import VIEW_ACTIONS, bindings
from tui.widgets.event_log import EventLog


class EventLogScreen(Screen[None]):
    """Shown over the dashboard; fed snapshots only while it is on top."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(VIEW_ACTIONS)

    def compose(self) -> ComposeResult:
        yield EventLog(id="full-event-log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(EventLog).border_title = "event log"

    def show(self, snap: Snapshot) -> None:
        self.query_one(EventLog).show(snap)
