"""What is wrong with a settings file: one problem per line, naming the file, line and key.

Every reader of TOML settings (job files, preset files, the `[drift]` table,
theme files, the user's settings) reports through these two types, so a
caller catches one error and prints one kind of line:

    job.toml:12: presets.night.concurency: unknown key (did you mean 'concurrency'?)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigProblem", "KeyPath", "format_key"]

KeyPath = tuple[str | int, ...]
"""A key inside a TOML document: `("providers", 0, "keys", 1, "env")`."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key(path: KeyPath) -> str:
    """`("providers", 0, "keys", 1, "env")` → `providers[0].keys[1].env`.

    A part that TOML would have to quote is quoted, so `("keymap", "a.b")`
    reads `keymap."a.b"`.
    """
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text = f"{text}.{name}" if text else name
    return text


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration, pointing at where it is.

    `file` is what the user knows the source by (a path, `--set`, `preset
    form`; empty for a value built in code), `line` is 1-based or None when
    unknown, `key` the dotted key (empty for the file as a whole).
    """

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [part for part in (where, self.key, self.message) if part]
        return ": ".join(parts)


class ConfigError(ValueError):
    """Settings that can't be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))

    @property
    def keys(self) -> tuple[str, ...]:
        """The dotted keys at fault, in the order found."""
        return tuple(problem.key for problem in self.problems)
