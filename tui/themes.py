"""crawldeck's themes: TOML files validated into Textual `Theme`s.

A theme file holds `name`, an optional `dark` flag and a `[colors]` table
(`primary` is required; the other colours are Textual's theme slots).  The
shipped themes live in the `themes` package; users may add their own in
`<config dir>/themes/`.  A file that does not validate is skipped with a
one-line message, and the app falls back to the default theme.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from textual.color import Color, ColorParseError
from textual.theme import Theme

import themes

SHIPPED_DIR = Path(themes.__file__).parent
DEFAULT_THEME = "crawldeck-dark"

_TOP_KEYS = frozenset({"name", "dark", "colors", "luminosity_spread", "text_alpha"})
_COLOR_KEYS = frozenset(
    {
        "primary",
        "secondary",
        "warning",
        "error",
        "success",
        "accent",
        "foreground",
        "background",
        "surface",
        "panel",
        "boost",
    }
)


class ThemeFileError(ValueError):
    """A theme file that cannot be used; the message is one line, naming the file."""


@dataclass(frozen=True, slots=True)
class LoadedThemes:
    themes: tuple[Theme, ...]
    problems: tuple[str, ...]  # one line per skipped file


def load_theme_file(path: Path) -> Theme:
    """Read and validate one theme file, refusing unknown keys and bad colours."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ThemeFileError(f"{path.name}: cannot read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ThemeFileError(f"{path.name}: not valid TOML ({exc})") from exc
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ThemeFileError(f"{path.name}: unknown key(s) {', '.join(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ThemeFileError(f"{path.name}: `name` must be a non-empty string")
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise ThemeFileError(f"{path.name}: `dark` must be true or false")
    colors = data.get("colors")
    if not isinstance(colors, dict):
        raise ThemeFileError(f"{path.name}: a [colors] table is required")
    unknown = sorted(set(colors) - _COLOR_KEYS)
    if unknown:
        raise ThemeFileError(f"{path.name}: unknown colour(s) {', '.join(unknown)}")
    if "primary" not in colors:
        raise ThemeFileError(f"{path.name}: colors.primary is required")
    for key, value in colors.items():
        try:
            if not isinstance(value, str):
                raise ColorParseError(f"{value!r} is not a string")
            Color.parse(value)
        except ColorParseError:
            raise ThemeFileError(f"{path.name}: colors.{key} = {value!r} is not a colour") from None
    theme = Theme(name=name.strip(), dark=dark, **colors)
    for key in ("luminosity_spread", "text_alpha"):
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ThemeFileError(f"{path.name}: `{key}` must be a number")
            setattr(theme, key, float(value))
    return theme


def load_themes(directories: Iterable[Path]) -> LoadedThemes:
    """Every `*.toml` theme in `directories` (missing ones are fine), in name order.

    A later directory's theme replaces an earlier one of the same name, so a
    user can restyle a shipped theme.
    """
    found: dict[str, Theme] = {}
    problems: list[str] = []
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            try:
                theme = load_theme_file(path)
            except ThemeFileError as exc:
                problems.append(f"Theme file skipped: {exc}")
                continue
            found[theme.name] = theme
    return LoadedThemes(tuple(found[name] for name in sorted(found)), tuple(problems))
