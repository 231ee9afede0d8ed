"""Edit the preset in force as a form, checked as you type; apply it, or save it as a file.

Every field is read the way the job file reads it (the same checks, the same
one-line messages), so a preset saved here loads anywhere a preset name or
file is accepted.  Nothing reaches the engine until the form is valid.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from engine.api import ConfigError, Preset, preset_from_text_fields, save_preset
from tui.actions import PRESET_EDITOR_ACTIONS, bindings

FIELD_HELP: dict[str, str] = {
    "name": "the preset's name",
    "concurrency": "requests in flight, at most",
    "batch_size": "chunks per request",
    "max_retries": "retries per batch before it fails",
    "backoff_base_s": "first retry's delay, seconds",
    "backoff_max_s": "longest retry delay, seconds",
    "request_timeout_s": "seconds before a request is abandoned",
    "batch_delay_s": "pause between requests, seconds",
    "adaptive_concurrency": "true: back off on 429s and errors",
    "memory_soft_mb": "pause reading above this RSS (MB)",
    "memory_hard_mb": "stop admitting work above this (MB)",
}


@dataclass(frozen=True, slots=True)
class PresetEdit:
    """The editor's answer: the checked preset, and the file it was saved to (if any)."""

    preset: Preset
    saved_to: Path | None = None


def field_text(value: object) -> str:
    """A preset value as the form shows it: TOML spelling, so it reads back the same."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class PresetEditor(ModalScreen[PresetEdit | None]):
    """A form over every preset field; dismisses with a `PresetEdit`, or None on Esc."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(PRESET_EDITOR_ACTIONS)

    DEFAULT_CSS = """
    PresetEditor { align: center middle; }
    PresetEditor > Vertical { width: 84; max-width: 100%; height: auto; max-height: 100%; }
    PresetEditor > Vertical { padding: 0 1; }
    PresetEditor VerticalScroll { height: auto; max-height: 1fr; margin: 1 0; }
    PresetEditor .preset-field, PresetEditor #preset-save-row { height: 1; }
    PresetEditor .preset-field > Label, PresetEditor #preset-save-row > Label { width: 22; }
    PresetEditor .preset-field > Input, PresetEditor #preset-save-row > Input { width: 1fr; }
    PresetEditor #preset-form-problems { height: auto; max-height: 6; }
    PresetEditor #preset-buttons { height: 3; }
    PresetEditor #preset-buttons > Button { width: 1fr; }
    """

    def __init__(self, preset: Preset, folder: Path) -> None:
        super().__init__()
        self._preset = preset
        self._folder = folder
        self._path_typed = False  # once the user edits the path, the name stops driving it

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Edit preset {self._preset.name!r}", classes="view-title")
            with VerticalScroll():
                for spec in fields(Preset):
                    with Horizontal(classes="preset-field"):
                        yield Label(spec.name)
                        yield Input(
                            field_text(getattr(self._preset, spec.name)),
                            placeholder=FIELD_HELP.get(spec.name, ""),
                            tooltip=FIELD_HELP.get(spec.name),
                            id=f"field-{spec.name}",
                            compact=True,
                        )
            with Horizontal(id="preset-save-row"):
                yield Label("save as file")
                yield Input(
                    str(self._default_path(self._preset.name)), id="preset-save-path", compact=True
                )
            yield Label("", id="preset-form-problems")
            with Horizontal(id="preset-buttons"):
                # Each button's id is the action its key runs.
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Save & apply", variant="success", id="save")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        # Each button names its key as bound now, so a remapped key reads true.
        keys = {
            active.binding.action: self.app.get_key_display(active.binding)
            for active in self.active_bindings.values()
            if active.node is self
        }
        for button in self.query(Button):
            if key := keys.get(button.id or ""):  # none if a remap took its key away
                button.label = f"{button.label} ({key})"
        self.query_one("#field-concurrency", Input).focus()

    # ------------------------------------------------------------ checking
    def _texts(self) -> dict[str, str]:
        return {
            spec.name: self.query_one(f"#field-{spec.name}", Input).value for spec in fields(Preset)
        }

    def checked(self) -> Preset | None:
        """The form's preset if every field is valid; else None, with the problems shown."""
        problems = self.query_one("#preset-form-problems", Label)
        for field_input in self.query(".preset-field > Input"):
            field_input.remove_class("-invalid")
        try:
            preset = preset_from_text_fields(self._preset, self._texts())
        except ConfigError as exc:
            problems.update(str(exc))
            for problem in exc.problems:
                for field_input in self.query(f"#field-{problem.key}"):
                    field_input.add_class("-invalid")
            return None
        problems.update("")
        return preset

    def _default_path(self, name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.strip()) or "preset"
        return self._folder / f"{safe}.toml"

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "preset-save-path":
            self._path_typed = self._path_typed or event.input.has_focus
            return
        if event.input.id == "field-name" and not self._path_typed:
            path_input = self.query_one("#preset-save-path", Input)
            path_input.value = str(self._default_path(event.value))
        self.checked()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "preset-save-path":
            self.action_save()
        else:
            self.action_apply()

    # ------------------------------------------------------------ answers
    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "apply":
            self.action_apply()
        elif event.button.id == "save":
            self.action_save()
        else:
            self.action_cancel()

    def action_apply(self) -> None:
        preset = self.checked()
        if preset is not None:
            self.dismiss(PresetEdit(preset))

    def action_save(self) -> None:
        preset = self.checked()
        if preset is None:
            return
        text = self.query_one("#preset-save-path", Input).value.strip()
        if not text:
            self.query_one("#preset-form-problems", Label).update("save as file: give a path")
            return
        path = Path(text).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_preset(preset, path)
        except OSError as exc:
            self.query_one("#preset-form-problems", Label).update(
                f"{path}: cannot save ({exc.strerror or exc})"
            )
            return
        self.dismiss(PresetEdit(preset, path))

    def action_cancel(self) -> None:
        self.dismiss(None)
