"""The user's own settings file: the theme and key remaps.

It lives in the platform config dir (`$XDG_CONFIG_HOME/crawldeck/settings.toml`,
else `~/.config/crawldeck/settings.toml`); `CRAWLDECK_CONFIG_DIR` names another
directory, which is how tests stay out of the real one.  It is read with
`tomllib` and written back with `tomlkit`, so the user's comments survive.
Unknown keys are refused: the file is then ignored with a one-line message.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit
import tomlkit.exceptions

CONFIG_DIR_ENV = "CRAWLDECK_CONFIG_DIR"
SETTINGS_FILE = "settings.toml"
_KNOWN_KEYS = frozenset({"theme", "keymap"})


class SettingsError(ValueError):
    """A settings file that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class UserSettings:
    theme: str | None = None
    keymap: Mapping[str, str] = field(default_factory=dict)  # binding id -> keys


def config_dir() -> Path:
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "crawldeck"


def settings_path() -> Path:
    return config_dir() / SETTINGS_FILE


def user_themes_dir() -> Path:
    return config_dir() / "themes"


def user_presets_dir() -> Path:
    """Where the preset editor saves preset files, and the preset picker finds them."""
    return config_dir() / "presets"


def load_settings(path: Path | None = None) -> UserSettings:
    """The settings in `path` (default: the user's file); none yet is empty settings."""
    path = path or settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return UserSettings()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read ({exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise SettingsError(f"{path}: unknown key(s) {', '.join(unknown)}")
    theme = data.get("theme")
    if theme is not None and not isinstance(theme, str):
        raise SettingsError(f"{path}: `theme` must be a string")
    keymap = data.get("keymap", {})
    if not isinstance(keymap, dict) or not all(
        isinstance(keys, str) and keys.strip() for keys in keymap.values()
    ):
        raise SettingsError(
            f"{path}: [keymap] maps binding ids to key names, e.g. 'crawldeck.drain = \"x\"'"
        )
    return UserSettings(theme=theme, keymap={str(k): v.strip() for k, v in keymap.items()})


def save_theme(name: str, path: Path | None = None) -> None:
    """Record the chosen theme, keeping everything else in the file as it was."""
    path = path or settings_path()
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        document = tomlkit.document()
    except tomlkit.exceptions.ParseError as exc:
        raise SettingsError(f"{path}: not valid TOML, theme not saved ({exc})") from exc
    if document.get("theme") == name:
        return
    document["theme"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
