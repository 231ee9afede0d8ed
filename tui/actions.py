"""Every screen's key bindings, declared once.

Each entry feeds its screen's bindings (with a stable id, so the user's
`[keymap]` can remap it through `App.set_keymap()`), the footer and, for
the dashboard, the command palette.  `BINDING_IDS` is every id of every
screen: the ids a keymap may name.

A dashboard action only calls an engine control; its effect shows in the
next snapshot.  Actions named `app.*` open a view or change the look; they
run on the app, so they stay available whatever the job's state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True, slots=True)
class ScreenAction:
    """One key binding of one screen."""

    id: str  # stable binding id, the key for user remaps
    action: str  # the `action_*` method on its screen, without the prefix (`answer(True)`)
    description: str  # short: the footer's label
    help: str  # longer: the command palette's help line
    keys: str  # default keys, comma-separated Textual key names
    key_display: str | None = None
    show: bool = True  # listed in the footer (every action is in the palette)
    group: str | None = None  # neighbours sharing a group share one footer label: "+- Conc"
    # Checked before the focused widget's own keys: an input takes ctrl+a as "home".
    priority: bool = False


ACTIONS: tuple[ScreenAction, ...] = (
    ScreenAction(
        "crawldeck.pause_resume",
        "toggle_pause",
        "Pause",
        "Pause new requests, or resume a paused job",
        "space,p",
        "space",
    ),
    ScreenAction(
        "crawldeck.concurrency_up",
        "concurrency_up",
        "Conc+",
        "Raise the concurrency ceiling by one",
        "plus",
        "+",
        group="Conc",
    ),
    ScreenAction(
        "crawldeck.concurrency_down",
        "concurrency_down",
        "Conc-",
        "Lower the concurrency ceiling by one",
        "minus",
        "-",
        group="Conc",
    ),
    ScreenAction(
        "crawldeck.concurrency_set",
        "set_concurrency",
        "Conc=",
        "Set the concurrency ceiling (most requests in flight) to an exact value",
        "c",
    ),
    ScreenAction(
        "crawldeck.toggle_preset",
        "toggle_preset",
        "Preset",
        "Switch between the conservative and aggressive presets",
        "t",
    ),
    ScreenAction(
        "crawldeck.pick_preset",
        "pick_preset",
        "Pick",
        "Switch to any preset: one the job names, or a preset file",
        "o",
    ),
    ScreenAction(
        "crawldeck.edit_preset",
        "edit_preset",
        "Edit",
        "Edit the preset in force; apply it, or save it as a preset file",
        "e",
    ),
    ScreenAction(
        "crawldeck.drain",
        "drain",
        "Drain",
        "Finish what is in flight, store it, then stop",
        "d",
    ),
    ScreenAction(
        "crawldeck.quit",
        "request_quit",
        "Quit",
        "Quit the dashboard (asks first while the job runs)",
        "q",
    ),
    ScreenAction(
        "crawldeck.fetch_down",
        "fetch_down",
        "Fetch-",
        "Crawl jobs: allow 8 fewer fetches in flight",
        "left_square_bracket",
        "[",
        group="Fetch",
    ),
    ScreenAction(
        "crawldeck.fetch_up",
        "fetch_up",
        "Fetch+",
        "Crawl jobs: allow 8 more fetches in flight",
        "right_square_bracket",
        "]",
        group="Fetch",
    ),
    ScreenAction(
        "crawldeck.keys",
        "app.show_keys",
        "Keys",
        "Show every API key's usage, limits and errors",
        "k",
    ),
    ScreenAction(
        "crawldeck.results",
        "app.show_results",
        "Results",
        "Search the stored results and failures",
        "r",
    ),
    ScreenAction(
        "crawldeck.event_log",
        "app.show_event_log",
        "Log",
        "Show the full event log",
        "l",
    ),
    ScreenAction(
        "crawldeck.cycle_theme",
        "app.cycle_theme",
        "Theme",
        "Switch to the next crawldeck theme (remembered for next time)",
        "ctrl+t",
        show=False,
    ),
)

# The preset editor's answers (`action` is the editor's `action_*` method).  The
# two that answer work even with the cursor in a field: that is where it always is.
PRESET_EDITOR_ACTIONS: tuple[ScreenAction, ...] = (
    ScreenAction(
        "crawldeck.cancel_editor",
        "cancel",
        "Cancel",
        "Close the editor; the preset in force stays",
        "escape",
    ),
    ScreenAction(
        "crawldeck.save_preset",
        "save",
        "Save & apply",
        "Save the form as a preset file, then apply it",
        "ctrl+s",
        priority=True,
    ),
    ScreenAction(
        "crawldeck.apply_preset",
        "apply",
        "Apply",
        "Apply the form to the running job",
        "ctrl+a",
        priority=True,
    ),
)

# The preset picker's, the exact-concurrency prompt's and the quit question's.
PRESET_PICKER_ACTIONS: tuple[ScreenAction, ...] = (
    ScreenAction(
        "crawldeck.cancel_picker",
        "cancel",
        "Cancel",
        "Close the picker; the preset in force stays",
        "escape",
    ),
)

CONCURRENCY_PROMPT_ACTIONS: tuple[ScreenAction, ...] = (
    ScreenAction(
        "crawldeck.cancel_prompt",
        "cancel",
        "Cancel",
        "Close the prompt; the concurrency stays",
        "escape",
    ),
)

CONFIRM_QUIT_ACTIONS: tuple[ScreenAction, ...] = (
    ScreenAction(
        "crawldeck.confirm_quit",
        "answer(True)",
        "Stop and quit",
        "Stop the job now (in-flight chunks go back to pending) and quit",
        "y",
    ),
    ScreenAction(
        "crawldeck.cancel_quit",
        "answer(False)",
        "Keep running",
        "Stay on the dashboard; the job runs on",
        "n,escape",
    ),
)

CLOSE_VIEW_ID = "crawldeck.close_view"
# Every pushed view (keys, event log, results, a stored row): back to the dashboard.
VIEW_ACTIONS: tuple[ScreenAction, ...] = (
    ScreenAction(CLOSE_VIEW_ID, "dismiss", "Close", "Close this view", "escape"),
)

SCREEN_ACTIONS: Mapping[str, tuple[ScreenAction, ...]] = {
    "dashboard": ACTIONS,
    "preset editor": PRESET_EDITOR_ACTIONS,
    "preset picker": PRESET_PICKER_ACTIONS,
    "concurrency prompt": CONCURRENCY_PROMPT_ACTIONS,
    "quit question": CONFIRM_QUIT_ACTIONS,
    "views": VIEW_ACTIONS,
}
ACTIONS_BY_ID: dict[str, ScreenAction] = {
    a.id: a for actions in SCREEN_ACTIONS.values() for a in actions
}
BINDING_IDS = frozenset(ACTIONS_BY_ID)


def bindings(actions: Iterable[ScreenAction]) -> list[BindingType]:
    """A screen's `BINDINGS`, from its entries here."""
    return [
        Binding(
            action.keys,
            action.action,
            action.description,
            show=action.show,
            key_display=action.key_display,
            priority=action.priority,
            id=action.id,
            group=Binding.Group(action.group, compact=True) if action.group else None,
        )
        for action in actions
    ]
