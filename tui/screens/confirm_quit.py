"""Asks before quitting while the job still runs (quitting stops it now)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Grid
from textual.screen import ModalScreen
from textual.widgets import Button, Label

from tui.actions import CONFIRM_QUIT_ACTIONS, bindings


class ConfirmQuitScreen(ModalScreen[bool]):
    """Dismisses with True to stop the job and quit, False to stay."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(CONFIRM_QUIT_ACTIONS)

    DEFAULT_CSS = """
    ConfirmQuitScreen { align: center middle; }
    ConfirmQuitScreen > Grid {
        grid-size: 2;
        grid-gutter: 1 2;
        grid-rows: auto 3;
        width: 56;
        height: auto;
        padding: 1 2;
    }
    ConfirmQuitScreen #question { column-span: 2; width: 1fr; }
    ConfirmQuitScreen Button { width: 1fr; }
    """

    def compose(self) -> ComposeResult:
        with Grid():
            yield Label(
                "The job is still running. Quit and stop it now?\n"
                "In-flight chunks go back to pending; a rerun resumes them.",
                id="question",
            )
            yield Button("Stop and quit (y)", variant="error", id="quit")
            yield Button("Keep running (n)", variant="primary", id="stay")

    def on_mount(self) -> None:
        self.query_one("#stay", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "quit")

    def action_answer(self, quit_now: bool) -> None:
        self.dismiss(quit_now)
