"""A TOML file read for checking: its values, and the line every key sits on.

`tomllib` keeps no positions, so the text is scanned once for table headers
and `key =` lines; a problem at a key is then reported at that key's line,
or at the line of the nearest table or key that encloses it (a missing key
points at its table's header).

    source = read_toml(path)            # raises ConfigError: unreadable, not TOML
    source.data["colors"]               # what tomllib read
    source.locator.problem(("colors", "primary"), "is required")
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config.config_problem import ConfigError, ConfigProblem, KeyPath, format_key

__all__ = ["LineIndex", "Locator", "TomlSource", "parse_toml", "read_text", "read_toml"]

INVALID_TOML = "invalid TOML"
"""How a syntax error's message begins, unless the reader asks for other words."""

_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_ARRAY_HEADER = re.compile(rf"\s*\[\[\s*({_DOTTED_KEY})\s*\]\]\s*(?:#.*)?")
_TABLE_HEADER = re.compile(rf"\s*\[\s*({_DOTTED_KEY})\s*\]\s*(?:#.*)?")
_KEY_LINE = re.compile(rf"\s*({_DOTTED_KEY})\s*=")


def _split_dotted(key: str) -> tuple[str, ...]:
    parts: list[str] = []
    for match in re.finditer(_KEY_PART, key):
        part = match.group(0)
        if part.startswith('"'):
            part = json.loads(part)  # close enough to TOML's basic-string escapes
        elif part.startswith("'"):
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def _scan_value(text: str, multiline: str | None, depth: int) -> tuple[str | None, int]:
    """Follow a value across lines: are we inside a multi-line string or array after `text`?"""
    i, end = 0, len(text)
    while i < end:
        if multiline:
            close = text.find(multiline, i)
            if close < 0:
                return multiline, depth
            i, multiline = close + 3, None
            continue
        char = text[i]
        if char == "#":
            break
        if text.startswith('"""', i) or text.startswith("'''", i):
            multiline, i = text[i : i + 3], i + 3
            continue
        if char == '"':
            i += 1
            while i < end and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif char == "'":
            close = text.find("'", i + 1)
            i = end if close < 0 else close
        elif char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        i += 1
    return multiline, depth


class LineIndex:
    """Where each table header and key of a TOML text sits (1-based lines).

    Array-of-tables headers are numbered by occurrence, so the second
    `[[providers.keys]]` under the first `[[providers]]` is
    `("providers", 0, "keys", 1)`.
    """

    def __init__(self, text: str) -> None:
        self._entries: list[tuple[KeyPath, int]] = []
        table: KeyPath = ()
        counts: dict[KeyPath, int] = {}
        multiline: str | None = None
        depth = 0
        for number, line in enumerate(text.split("\n"), start=1):
            if multiline or depth:
                multiline, depth = _scan_value(line, multiline, depth)
            elif match := _ARRAY_HEADER.fullmatch(line):
                table = self._resolve(_split_dotted(match.group(1)), counts, new_item=True)
                self._entries.append((table, number))
            elif match := _TABLE_HEADER.fullmatch(line):
                table = self._resolve(_split_dotted(match.group(1)), counts, new_item=False)
                self._entries.append((table, number))
            elif match := _KEY_LINE.match(line):
                self._entries.append((table + _split_dotted(match.group(1)), number))
                multiline, depth = _scan_value(line[match.end() :], None, 0)

    @staticmethod
    def _resolve(parts: tuple[str, ...], counts: dict[KeyPath, int], *, new_item: bool) -> KeyPath:
        resolved: list[str | int] = []
        for i, part in enumerate(parts):
            resolved.append(part)
            key = tuple(resolved)
            if new_item and i == len(parts) - 1:
                index = counts.get(key, 0)
                counts[key] = index + 1
                resolved.append(index)
            elif key in counts:
                resolved.append(counts[key] - 1)  # the array's latest item
        return tuple(resolved)

    def line_of(self, path: KeyPath) -> int | None:
        """The key's own line, else the line of the nearest enclosing table or key."""
        best_length, best_line = 0, None
        for entry, line in self._entries:
            length = len(entry)
            if length <= len(path) and path[:length] == entry:
                if length == len(path):
                    return line
                if length > best_length:
                    best_length, best_line = length, line
        return best_line


class Locator:
    """Turns a key path into a problem naming the file and the key's line.

    Without `text` (values that came from somewhere other than a file: a
    form, a control request) problems carry no line.
    """

    def __init__(self, file: str, text: str = "") -> None:
        self.file = file
        self._lines = LineIndex(text)

    def line_of(self, path: KeyPath) -> int | None:
        """The line `path` is on (or its nearest enclosing table's), if known."""
        return self._lines.line_of(path)

    def problem(self, path: KeyPath, message: str) -> ConfigProblem:
        """`message` about the key at `path`, placed at its line."""
        return ConfigProblem(self.file, self.line_of(path), format_key(path), message)


@dataclass(frozen=True, slots=True)
class TomlSource:
    """A TOML file's values and a locator for problems in it."""

    data: dict[str, Any]
    text: str
    locator: Locator

    @property
    def file(self) -> str:
        """What problems name the file by."""
        return self.locator.file


def read_text(path: Path, file: str | None = None) -> str:
    """The file's text; `ConfigError` if it is missing, unreadable or not UTF-8."""
    file = str(path) if file is None else file
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(file, None, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        problem = ConfigProblem(file, None, "", f"cannot read the file: {exc}")
        raise ConfigError([problem]) from None


def parse_toml(text: str, file: str, *, invalid: str = INVALID_TOML) -> dict[str, Any]:
    """`text` read as TOML; `ConfigError` at the line of a syntax error.

    `invalid` begins the message (`invalid TOML: Expected '=' ...`).
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib puts the place at the end of its message: "... (at line 3, column 9)".
        message = str(exc)
        found = re.search(r"\s*\(at line (\d+), column \d+\)", message)
        if found is None:
            problem = ConfigProblem(file, None, "", f"{invalid}: {message}")
        else:
            problem = ConfigProblem(
                file, int(found.group(1)), "", f"{invalid}: {message[: found.start()]}"
            )
        raise ConfigError([problem]) from None


def read_toml(path: Path, *, file: str | None = None, invalid: str = INVALID_TOML) -> TomlSource:
    """Read and parse `path`, keeping the line of every key.

    `file` is what problems call it (default: the path as given).  Raises
    `ConfigError` with one problem when the file is missing, unreadable or
    not TOML.
    """
    file = str(path) if file is None else file
    text = read_text(path, file)
    return TomlSource(parse_toml(text, file, invalid=invalid), text, Locator(file, text))
