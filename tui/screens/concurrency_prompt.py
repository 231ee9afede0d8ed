"""Asks for an exact concurrency: the number of requests allowed in flight."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.validation import Number
from textual.widgets import Input, Label

from engine.api import CONCURRENCY
from tui.actions import CONCURRENCY_PROMPT_ACTIONS, bindings

# The engine's own bounds, so the dialog never offers what the engine refuses.
_RANGE_HINT = f"Enter a whole number from {CONCURRENCY.low} to {CONCURRENCY.high}."


class ConcurrencyPrompt(ModalScreen[int | None]):
    """Dismisses with the typed value (within `CONCURRENCY`), or None when cancelled."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(CONCURRENCY_PROMPT_ACTIONS)

    DEFAULT_CSS = """
    ConcurrencyPrompt { align: center middle; }
    ConcurrencyPrompt > Vertical { width: 48; height: auto; padding: 1 2; }
    ConcurrencyPrompt #concurrency-error { height: auto; }
    """

    def __init__(self, current: int) -> None:
        super().__init__()
        self._current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(
                f"Most requests in flight (now {self._current})\nEnter sets it, Esc cancels"
            )
            yield Input(
                str(self._current),
                type="integer",
                validators=[Number(minimum=CONCURRENCY.low, maximum=CONCURRENCY.high)],
                id="concurrency-value",
            )
            yield Label("", id="concurrency-error")

    def on_mount(self) -> None:
        field = self.query_one(Input)
        field.focus()
        field.select_all()

    def on_input_changed(self, event: Input.Changed) -> None:
        error = self.query_one("#concurrency-error", Label)
        result = event.validation_result
        error.update("" if result is None or result.is_valid else _RANGE_HINT)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        result = event.validation_result
        if result is not None and not result.is_valid:
            self.query_one("#concurrency-error", Label).update(_RANGE_HINT)
            return
        self.dismiss(int(event.value))

    def action_cancel(self) -> None:
        self.dismiss(None)
