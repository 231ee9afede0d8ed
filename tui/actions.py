"""The dashboard's controls, and the preset editor's, declared once.

Each entry feeds the key bindings (with a stable id, so `App.set_keymap()`
can remap it), the footer and the command palette.  An action only calls an
engine control; its effect shows in the next snapshot.  Actions named
`app.*` open a view or change the look; they run on the app, so they stay
available whatever the job's state.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True, slots=True)
class DashboardAction:
    id: str  # stable binding id, the key for user remaps
    action: str  # the `action_*` method on its screen (the dashboard's), without the prefix
    description: str  # short: the footer's label
    help: str  # longer: the command palette's help line
    keys: str  # default keys, comma-separated Textual key names
    key_display: str | None = None
    show: bool = True  # listed in the footer (every action is in the palette)
    group: str | None = None  # neighbours sharing a group share one footer label: "+- Conc"
    # Checked before the focused widget's own keys: an input takes ctrl+a as "home".
    priority: bool = False


ACTIONS: tuple[DashboardAction, ...] = (
    DashboardAction(
        "crawldeck.pause_resume",
        "toggle_pause",
        "Pause",
        "Pause new requests, or resume a paused job",
        "space,p",
        "space",
    ),
    DashboardAction(
        "crawldeck.concurrency_up",
        "concurrency_up",
        "Conc+",
        "Allow one more request in flight",
        "plus",
        "+",
        group="Conc",
    ),
    DashboardAction(
        "crawldeck.concurrency_down",
        "concurrency_down",
        "Conc-",
        "Allow one fewer request in flight",
        "minus",
        "-",
        group="Conc",
    ),
    DashboardAction(
        "crawldeck.concurrency_set",
        "set_concurrency",
        "Conc=",
        "Set the number of requests in flight to an exact value",
        "c",
    ),
    DashboardAction(
        "crawldeck.toggle_preset",
        "toggle_preset",
        "Preset",
        "Switch between the conservative and aggressive presets",
        "t",
    ),
    DashboardAction(
        "crawldeck.pick_preset",
        "pick_preset",
        "Pick",
        "Switch to any preset: one the job names, or a preset file",
        "o",
    ),
    DashboardAction(
        "crawldeck.edit_preset",
        "edit_preset",
        "Edit",
        "Edit the preset in force; apply it, or save it as a preset file",
        "e",
    ),
    DashboardAction(
        "crawldeck.drain",
        "drain",
        "Drain",
        "Finish what is in flight, store it, then stop",
        "d",
    ),
    DashboardAction(
        "crawldeck.quit",
        "request_quit",
        "Quit",
        "Quit the dashboard (asks first while the job runs)",
        "q",
    ),
    DashboardAction(
        "crawldeck.fetch_down",
        "fetch_down",
        "Fetch-",
        "Crawl jobs: allow 8 fewer fetches in flight",
        "left_square_bracket",
        "[",
        group="Fetch",
    ),
    DashboardAction(
        "crawldeck.fetch_up",
        "fetch_up",
        "Fetch+",
        "Crawl jobs: allow 8 more fetches in flight",
        "right_square_bracket",
        "]",
        group="Fetch",
    ),
    DashboardAction(
        "crawldeck.keys",
        "app.show_keys",
        "Keys",
        "Show every API key's usage, limits and errors",
        "k",
    ),
    DashboardAction(
        "crawldeck.results",
        "app.show_results",
        "Results",
        "Search the stored results and failures",
        "r",
    ),
    DashboardAction(
        "crawldeck.event_log",
        "app.show_event_log",
        "Log",
        "Show the full event log",
        "l",
    ),
    DashboardAction(
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
PRESET_EDITOR_ACTIONS: tuple[DashboardAction, ...] = (
    DashboardAction(
        "crawldeck.cancel_editor",
        "cancel",
        "Cancel",
        "Close the editor; the preset in force stays",
        "escape",
    ),
    DashboardAction(
        "crawldeck.save_preset",
        "save",
        "Save & apply",
        "Save the form as a preset file, then apply it",
        "ctrl+s",
        priority=True,
    ),
    DashboardAction(
        "crawldeck.apply_preset",
        "apply",
        "Apply",
        "Apply the form to the running job",
        "ctrl+a",
        priority=True,
    ),
)

ACTIONS_BY_ID: dict[str, DashboardAction] = {a.id: a for a in ACTIONS}
CLOSE_VIEW_ID = "crawldeck.close_view"  # escape, on every pushed view
BINDING_IDS = frozenset(ACTIONS_BY_ID) | {a.id for a in PRESET_EDITOR_ACTIONS} | {CLOSE_VIEW_ID}


def _binding(action: DashboardAction) -> Binding:
    return Binding(
        action.keys,
        action.action,
        action.description,
        show=action.show,
        key_display=action.key_display,
        priority=action.priority,
        id=action.id,
        group=Binding.Group(action.group, compact=True) if action.group else None,
    )


def dashboard_bindings() -> list[Binding]:
    return [_binding(a) for a in ACTIONS]


def preset_editor_bindings() -> list[Binding]:
    return [_binding(a) for a in PRESET_EDITOR_ACTIONS]


def close_view_binding() -> Binding:
    return Binding("escape", "dismiss", "Close", id=CLOSE_VIEW_ID)
