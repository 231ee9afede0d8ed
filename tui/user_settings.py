"""The user's own settings file: the theme and key remaps.

It lives in the platform config dir (`$XDG_CONFIG_HOME/crawldeck/settings.toml`,
else `~/.config/crawldeck/settings.toml`); `CRAWLDECK_CONFIG_DIR` names another
directory, which is how tests stay out of the real one.  It is read with
`tomllib` and written back with `tomlkit`, so the user's comments survive.
Unknown keys are refused: the file is then ignored with a one-line message
a problem, naming the file, the line and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from engine.api import ConfigError, ConfigProblem, TableChecker, read_toml

CONFIG_DIR_ENV = "CRAWLDECK_CONFIG_DIR"
SETTINGS_FILE = "settings.toml"
_FIELDS: dict[str, Any] = {"theme": str, "keymap": dict[str, Any]}

SettingsError = ConfigError
"""What a settings file that cannot be used raises (the app catches it by this name)."""


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
    if not path.exists():
        return UserSettings()
    source = read_toml(path, invalid="not valid TOML")
    checker = TableChecker(source.locator)
    values = checker.values(source.data, (), _FIELDS, unknown_together="key")
    keymap: dict[str, str] = {}
    for binding, keys in values.get("keymap", {}).items():
        if isinstance(keys, str) and keys.strip():
            keymap[binding] = keys.strip()
        else:
            checker.add(("keymap", binding), 'must name the keys to bind, like "x" or "ctrl+d"')
    checker.raise_problems()
    return UserSettings(theme=values.get("theme"), keymap=keymap)


def save_theme(name: str, path: Path | None = None) -> None:
    """Record the chosen theme, keeping everything else in the file as it was."""
    path = path or settings_path()
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        document = tomlkit.document()
    except tomlkit.exceptions.ParseError as exc:
        problem = ConfigProblem(str(path), exc.line, "", f"not valid TOML, theme not saved ({exc})")
        raise ConfigError([problem]) from exc
    if document.get("theme") == name:
        return
    document["theme"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
