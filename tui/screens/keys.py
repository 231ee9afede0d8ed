"""Every API key in full: one column per key, one row per field, then errors by key."""

from __future__ import annotations

from dataclasses import fields
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine.api import KeySnapshot, Snapshot
from tui.actions import VIEW_ACTIONS, bindings

KEY_FIELDS = tuple(f.name for f in fields(KeySnapshot))


def _cell(value: object) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:,.1f}" if value % 1 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value) or "-"


class KeysScreen(Screen[None]):
    """Shown over the dashboard; fed snapshots only while it is on top."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(VIEW_ACTIONS)

    def __init__(self) -> None:
        super().__init__()
        self._shown: tuple[tuple[KeySnapshot, ...], tuple[tuple[str, int], ...]] | None = None

    def compose(self) -> ComposeResult:
        yield Static("API keys and providers", id="keys-title", classes="view-title")
        yield DataTable(id="key-fields", cursor_type="none", zebra_stripes=True)
        yield Static("errors by key", classes="view-subtitle")
        yield DataTable(id="key-errors", cursor_type="none", zebra_stripes=True)
        yield Footer()

    def show(self, snap: Snapshot) -> None:
        """Redraw when the keys or their error counts changed."""
        shown = (snap.keys, snap.errors_by_key)
        if shown == self._shown:
            return
        self._shown = shown
        table: DataTable[str] = self.query_one("#key-fields", DataTable)
        table.clear(columns=True)
        table.add_column("field", key="field")
        for key in snap.keys:
            table.add_column(key.key_id, key=key.key_id)
        for name in KEY_FIELDS:
            table.add_row(name, *(_cell(getattr(key, name)) for key in snap.keys), key=name)
        errors: DataTable[str] = self.query_one("#key-errors", DataTable)
        errors.clear(columns=True)
        errors.add_columns("key", "errors")
        if not snap.errors_by_key:
            errors.add_row("(none)", "0")
        for key_id, count in snap.errors_by_key:
            errors.add_row(key_id, f"{count:,}", key=key_id)
