"""crawldeck's themes: TOML files validated into Textual `Theme`s.

A theme file holds `name`, an optional `dark` flag and a `[colors]` table
(`primary` is required; the other colours are Textual's theme slots).  The
shipped themes live in the `themes` package; users may add their own in
`<config dir>/themes/`.  A file that does not validate is skipped with a
one-line message a problem, naming the file, the line and the key, and the
app falls back to the default theme.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import Theme

import themes
from engine.api import ConfigError, TableChecker, WrongType, read_toml

SHIPPED_DIR = Path(themes.__file__).parent
DEFAULT_THEME = "crawldeck-dark"

_COLOR_KEYS = (
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
)


def _theme_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WrongType("must be a non-empty string")
    return value.strip()


def _colour(value: Any) -> str:
    try:
        if not isinstance(value, str):
            raise ColorParseError(f"{value!r} is not a string")
        Color.parse(value)
    except ColorParseError:
        raise WrongType(f"{value!r} is not a colour") from None
    return value


_TOP_FIELDS: dict[str, Any] = {
    "name": _theme_name,
    "dark": bool,
    "colors": dict[str, Any],
    "luminosity_spread": float,
    "text_alpha": float,
}


@dataclass(frozen=True, slots=True)
class LoadedThemes:
    themes: tuple[Theme, ...]
    problems: tuple[str, ...]  # one line per skipped file


def load_theme_file(path: Path) -> Theme:
    """Read and validate one theme file, refusing unknown keys and bad colours.

    Raises `ConfigError` with every problem, each naming the file (by its
    name: the folder is the user's themes folder or ours), line and key.
    """
    source = read_toml(path, file=path.name, invalid="not valid TOML")
    checker = TableChecker(source.locator)
    top = checker.values(source.data, (), _TOP_FIELDS, unknown_together="key")
    if "name" not in source.data:
        checker.add(("name",), "is required: the name the theme is chosen by")
    colors: dict[str, Any] = {}
    if "colors" not in source.data:
        checker.add(("colors",), "is required: a table of colours, primary at least")
    elif "colors" in top:
        colors = checker.values(
            top["colors"],
            ("colors",),
            dict.fromkeys(_COLOR_KEYS, _colour),
            unknown_together="colour",
        )
        if "primary" not in top["colors"]:
            checker.add(("colors",), "primary is required")
    checker.raise_problems()
    theme = Theme(name=top["name"], dark=top.get("dark", True), **colors)
    for key in ("luminosity_spread", "text_alpha"):
        if key in top:
            setattr(theme, key, top[key])
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
            except ConfigError as exc:
                problems.extend(f"Theme file skipped: {problem}" for problem in exc.problems)
                continue
            found[theme.name] = theme
    return LoadedThemes(tuple(found[name] for name in sorted(found)), tuple(problems))
