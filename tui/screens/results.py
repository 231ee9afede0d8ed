"""Browse the job's stored results and failures, searching their text.

The store is opened read-only with plain `sqlite3` in a thread worker, so a
search never blocks the dashboard or the engine's writer.  The worker only
posts a message; the screen's handler fills the table.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from tui.actions import VIEW_ACTIONS, bindings

LIMIT = 200
_EXCERPT = 48

# Newest first; the chunk id breaks ties so equal timestamps sort the same every time.
_SEARCH = """
SELECT 'result', chunk_id, source, seq, model, text, result_json, created_at FROM results
WHERE text LIKE ?1 ESCAPE '\\' OR result_json LIKE ?1 ESCAPE '\\'
UNION ALL
SELECT 'failure', chunk_id, source, seq, model, text, reason, created_at FROM failures
WHERE text LIKE ?1 ESCAPE '\\' OR reason LIKE ?1 ESCAPE '\\'
ORDER BY 8 DESC, 2
LIMIT ?2
"""


@dataclass(frozen=True, slots=True)
class StoredRow:
    kind: str  # "result" or "failure"
    chunk_id: str
    source: str
    seq: int
    model: str
    text: str
    detail: str  # the result JSON, or the failure's reason
    created_at: float


def like_pattern(query: str) -> str:
    escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_store(path: Path, query: str, limit: int = LIMIT) -> list[StoredRow]:
    """Rows whose text (or result JSON, or failure reason) contains `query`."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(_SEARCH, (like_pattern(query), limit)).fetchall()
    finally:
        conn.close()
    return [StoredRow(*row) for row in rows]


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _EXCERPT else flat[: _EXCERPT - 1] + "…"


class ResultsScreen(Screen[None]):
    """A search box over a table of stored rows; Enter opens one."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(VIEW_ACTIONS)

    class Found(Message):
        """A search finished (posted from the worker thread)."""

        def __init__(self, query: str, rows: list[StoredRow]) -> None:
            super().__init__()
            self.query = query
            self.rows = rows

    class SearchFailed(Message):
        def __init__(self, reason: str) -> None:
            super().__init__()
            self.reason = reason

    def __init__(self, store_path: Path | None) -> None:
        super().__init__()
        self.store_path = store_path
        self.rows: list[StoredRow] = []

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search text, result JSON or failure reason", id="results-query")
        yield DataTable(id="results-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="results-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("kind", "chunk", "source", "seq", "text")
        self.search("")

    @on(Input.Changed, "#results-query")
    def _query_changed(self, event: Input.Changed) -> None:
        self.search(event.value)

    @on(Input.Submitted, "#results-query")
    def _query_submitted(self) -> None:
        self.query_one(DataTable).focus()

    def search(self, query: str) -> None:
        if self.store_path is None:
            self._status("No store for this job: nothing to browse.")
            return
        self._search(self.store_path, query)

    @work(thread=True, exclusive=True, group="results-search", exit_on_error=False)
    def _search(self, path: Path, query: str) -> None:
        try:
            rows = search_store(path, query)
        except sqlite3.Error as exc:
            self.post_message(self.SearchFailed(f"Cannot read {path.name}: {exc}"))
            return
        if not get_current_worker().is_cancelled:  # a newer search replaced this one
            self.post_message(self.Found(query, rows))

    def on_results_screen_found(self, message: Found) -> None:
        self.rows = message.rows
        table: DataTable[str] = self.query_one(DataTable)
        table.clear()
        for index, row in enumerate(message.rows):
            table.add_row(
                row.kind, row.chunk_id, row.source, str(row.seq), _excerpt(row.text), key=str(index)
            )
        shown = f"{len(message.rows)}" if len(message.rows) < LIMIT else f"newest {LIMIT}"
        where = f" matching {message.query!r}" if message.query else ""
        self._status(f"{shown} row(s){where}, newest first. Enter opens one.")

    def on_results_screen_search_failed(self, message: SearchFailed) -> None:
        self._status(message.reason)

    def _status(self, text: str) -> None:
        self.query_one("#results-status", Static).update(text)

    @on(DataTable.RowSelected, "#results-table")
    def _open_row(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.app.push_screen(StoredRowScreen(self.rows[int(event.row_key.value)]))


def _pretty(detail: str) -> str:
    try:
        return json.dumps(json.loads(detail), indent=2, ensure_ascii=False)
    except ValueError:
        return detail


class StoredRowScreen(Screen[None]):
    """One stored row: the chunk's text and its result JSON or failure reason."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(VIEW_ACTIONS)

    def __init__(self, row: StoredRow) -> None:
        super().__init__()
        self.row = row

    def compose(self) -> ComposeResult:
        row = self.row
        heading = f"{row.kind} · chunk {row.chunk_id} · {row.source} #{row.seq} · {row.model}"
        yield Static(heading, classes="view-title")
        with VerticalScroll(id="row-detail"):
            yield Static("chunk text", classes="view-subtitle")
            yield Static(row.text, id="row-text", markup=False)
            label = "result JSON" if row.kind == "result" else "failure reason"
            yield Static(label, classes="view-subtitle")
            yield Static(_pretty(row.detail), id="row-detail-text", markup=False)
        yield Footer()
