"""Pick any preset: one the job knows by name, or a preset file.

Files are listed from the user's presets folder (where the preset editor
saves them); any other file can be typed as a path.  A file is read and
checked here, in the viewer, and its values are what the engine receives:
a bad file shows its problems (file, line, key) and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from engine.api import ConfigError, Preset, load_preset_file
from tui.actions import PRESET_PICKER_ACTIONS, bindings

PresetChoice = str | Preset  # a name the job knows, or a preset read from a file
_FILE_PREFIX = "file:"
_NAME_PREFIX = "name:"


def preset_files(folder: Path) -> list[Path]:
    """The `*.toml` files in `folder`, sorted by name; none if it does not exist."""
    try:
        return sorted(path for path in folder.glob("*.toml") if path.is_file())
    except OSError:
        return []


class PresetPicker(ModalScreen[PresetChoice | None]):
    """Dismisses with the chosen preset's name or its checked value; None on Esc."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(PRESET_PICKER_ACTIONS)

    DEFAULT_CSS = """
    PresetPicker { align: center middle; }
    PresetPicker > Vertical { width: 72; max-width: 100%; height: auto; padding: 1 2; }
    PresetPicker OptionList { height: auto; max-height: 12; }
    PresetPicker #preset-problems { height: auto; }
    """

    def __init__(self, names: tuple[str, ...], current: str, folder: Path) -> None:
        super().__init__()
        self._names = names
        self._current = current
        self._folder = folder

    def compose(self) -> ComposeResult:
        options: list[Option] = []
        for name in self._names:
            mark = "  (in use)" if name == self._current else ""
            options.append(Option(f"{name}{mark}", id=f"{_NAME_PREFIX}{name}"))
        for path in preset_files(self._folder):
            options.append(Option(f"{path.name}  (file)", id=f"{_FILE_PREFIX}{path}"))
        with Vertical():
            yield Label("Switch the running job to a preset", classes="view-title")
            yield OptionList(*options, id="preset-options")
            yield Label(f"…or a preset file's path (saved ones live in {self._folder}):")
            yield Input(placeholder="path/to/preset.toml", id="preset-path")
            yield Label("", id="preset-problems")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        option_id = event.option.id or ""
        if option_id.startswith(_NAME_PREFIX):
            self.dismiss(option_id.removeprefix(_NAME_PREFIX))
        else:
            self._choose_file(Path(option_id.removeprefix(_FILE_PREFIX)))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self._choose_file(Path(event.value.strip()).expanduser())

    def _choose_file(self, path: Path) -> None:
        try:
            preset = load_preset_file(path)
        except ConfigError as exc:
            self.query_one("#preset-problems", Label).update(str(exc))
            return
        self.dismiss(preset)

    def action_cancel(self) -> None:
        self.dismiss(None)
