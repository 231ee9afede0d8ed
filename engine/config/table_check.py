"""Checking TOML tables against typed fields, collecting every problem at its key.

A `TableChecker` reads raw tables (as `tomllib` gives them) into values:
keys it does not know are refused with a guess at the one meant, values of
the wrong type are refused saying what was expected, and rules (ranges,
required fields) add their findings.  Nothing stops at the first problem:
each is kept, placed at its key's line by the checker's `Locator`, and
`raise_problems()` raises one `ConfigError` with all of them.

Fields are declared by a frozen dataclass's type hints (`settings()`), or
field by field with a type hint or a reader of one's own (`values()`):

    checker = TableChecker(read_toml(path).locator)
    theme = checker.values(data, (), {"name": str, "dark": bool})
    checker.raise_problems()

A settings dataclass may check itself in `__post_init__` and `refuse()`;
`settings()` reports those problems at their keys too.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from engine.config.config_problem import ConfigError, ConfigProblem, KeyPath, format_key
from engine.config.toml_source import Locator

__all__ = [
    "Finding",
    "Rule",
    "TableChecker",
    "TypedText",
    "ValueReader",
    "WrongType",
    "a_rate",
    "apply_rules",
    "at_least_one",
    "describe",
    "not_negative",
    "positive",
    "read_typed_text",
    "read_value",
    "refuse",
    "unknown_key_message",
]

_T = TypeVar("_T")

Finding = tuple[str, str]
"""(field, message): what a rule found wrong with one field."""

Rule = tuple[str, Callable[[Any], bool], str]
"""(field, holds, requirement): `holds(value)` false means "`requirement` (got value)"."""

ValueReader = Callable[[Any], Any]
"""Reads one raw value as a field's value, or raises `WrongType` saying what was expected."""


class WrongType(Exception):
    """A value that a field can't take; the message says what it should be."""


@dataclass(frozen=True, slots=True)
class TypedText:
    """A value typed as text (a `--set` flag, a form field): its text, and the text read as TOML.

    Kept apart so `prompt.version=2` can still be the string "2".
    """

    text: str
    value: Any


def read_typed_text(text: str) -> TypedText:
    """`text` as typed: `32`, `0.5` and `true` take their types; a bare word stays text."""
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word or a path: take it as typed
    return TypedText(text.strip(), value)


def plain(value: Any) -> Any:
    """`value` with any `TypedText` read as TOML, inside tables and arrays too."""
    if isinstance(value, TypedText):
        return value.value
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


# --------------------------------------------------------------------------
# Types


def describe(value: Any) -> str:
    """What kind of TOML value `value` is, for "got …" in messages."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _wants_text(hint: Any) -> bool:
    if hint is str:
        return True
    if get_origin(hint) is Literal:
        return all(isinstance(arg, str) for arg in get_args(hint))
    return False


def read_value(value: Any, hint: Any) -> Any:
    """`value` as the settings type `hint`, or `WrongType` saying what was expected.

    Understands bool, int, float (an integer will do), str, `Literal` of
    strings, `X | None` (TOML has no null: left out or of type X), `tuple[X, ...]`,
    fixed tuples of numbers, `dict[str, str]` and `dict[str, Any]` (any table).
    """
    if isinstance(value, TypedText):
        return read_value(value.text if _wants_text(hint) else value.value, hint)
    origin = get_origin(hint)
    if origin in (types.UnionType, Union):
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return read_value(value, inner)
    if origin is Literal:
        allowed = get_args(hint)
        if not isinstance(value, str) or value not in allowed:
            choices = ", ".join(repr(choice) for choice in allowed)
            got = repr(value) if isinstance(value, str) else describe(value)
            raise WrongType(f"must be one of {choices} (got {got})")
        return value
    if origin is tuple and len(get_args(hint)) == 2 and get_args(hint)[1] is Ellipsis:
        item_hint = get_args(hint)[0]
        if not isinstance(value, list):
            raise WrongType(f"expected an array, got {describe(value)}")
        try:
            return tuple(read_value(item, item_hint) for item in value)
        except WrongType as exc:
            raise WrongType(f"every item: {exc}") from None
    if origin is dict:
        if get_args(hint)[1] is Any:
            if not isinstance(value, dict):
                raise WrongType(f"expected a table, got {describe(value)}")
            return dict(value)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise WrongType(f"expected a table of strings, got {describe(value)}")
        return dict(value)
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, list) or len(value) != len(args):
            raise WrongType(f"expected an array of {len(args)} numbers, got {describe(value)}")
        try:
            return tuple(read_value(item, arg) for item, arg in zip(value, args, strict=True))
        except WrongType:
            raise WrongType(f"expected an array of {len(args)} numbers") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise WrongType(f"expected true or false, got {describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise WrongType(f"expected an integer, got {describe(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise WrongType(f"expected a number, got {describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise WrongType(f"expected a string, got {describe(value)}")
    raise TypeError(f"no TOML reading for settings type {hint!r}")


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


# --------------------------------------------------------------------------
# Rules


def apply_rules(obj: object, rules: Sequence[Rule]) -> list[Finding]:
    """A finding for every field of `obj` (left alone when None) that breaks its rule."""
    findings: list[Finding] = []
    for name, holds, requirement in rules:
        value = getattr(obj, name)
        if value is not None and not holds(value):
            findings.append((name, f"{requirement} (got {value!r})"))
    return findings


def positive(value: Any) -> bool:
    """More than 0."""
    return bool(value > 0)


def not_negative(value: Any) -> bool:
    """0 or more."""
    return bool(value >= 0)


def at_least_one(value: Any) -> bool:
    """1 or more."""
    return bool(value >= 1)


def a_rate(value: Any) -> bool:
    """From 0 to 1."""
    return bool(0.0 <= value <= 1.0)


def refuse(table: str, findings: Sequence[Finding]) -> None:
    """For a settings value's `__post_init__`: `ConfigError` keyed `table.field`, if any findings.

    `TableChecker.settings()` reports each at its field's line.
    """
    if findings:
        raise ConfigError(
            [ConfigProblem("", None, f"{table}.{name}", message) for name, message in findings]
        )


def unknown_key_message(key: str, known: Sequence[str]) -> str:
    """ "unknown key", with the known key nearest to `key`, or all of them if none is near."""
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (known keys: {', '.join(known)})"


def _unknown_keys_together(noun: str, keys: Sequence[str], known: Sequence[str]) -> str:
    message = f"unknown {noun}(s) {', '.join(keys)}"
    close = difflib.get_close_matches(keys[0], known, n=1) if len(keys) == 1 else []
    return f"{message} (did you mean {close[0]!r}?)" if close else message


# --------------------------------------------------------------------------
# The checker


class TableChecker:
    """Reads raw TOML tables into values, collecting every problem at its key's line."""

    def __init__(self, locator: Locator) -> None:
        self.locator = locator
        self.problems: list[ConfigProblem] = []

    def add(self, path: KeyPath, message: str) -> None:
        """A problem at the key `path`."""
        self.problems.append(self.locator.problem(path, message))

    def report(self, path: KeyPath, findings: Sequence[Finding]) -> None:
        """Each finding as a problem at its field inside the table at `path`."""
        for name, message in findings:
            self.add((*path, name), message)

    def raise_problems(self) -> None:
        """`ConfigError` with every problem so far, if there is any."""
        if self.problems:
            raise ConfigError(self.problems)

    def table(self, value: Any, path: KeyPath) -> dict[str, Any]:
        """`value` if it is a table; else a problem and an empty table."""
        if isinstance(value, TypedText):
            value = value.value
        if isinstance(value, dict):
            return value
        self.add(path, f"expected a table, got {describe(value)}")
        return {}

    def values(
        self,
        table: Mapping[str, Any],
        path: KeyPath,
        expected: Mapping[str, Any],
        *,
        unknown_message: Callable[[str, Sequence[str]], str] = unknown_key_message,
        unknown_together: str | None = None,
    ) -> dict[str, Any]:
        """The table's values of known keys that read as their fields' types.

        `expected` maps each key to a type hint (see `read_value`) or a
        `ValueReader`.  An unknown key is a problem saying
        `unknown_message(key, known)`; with `unknown_together` (a noun, like
        "colour"), all of a table's unknown keys make one problem at the
        first's line: `unknown colour(s) glow, shine`.  Keys of the wrong
        type are problems and are left out, so checks on the rest still run.
        """
        values: dict[str, Any] = {}
        unknown: list[str] = []
        for key, value in table.items():
            if key not in expected:
                if unknown_together is None:
                    self.add((*path, key), unknown_message(key, list(expected)))
                else:
                    unknown.append(key)
                continue
            wanted = expected[key]
            try:
                if _is_type_hint(wanted):
                    values[key] = read_value(value, wanted)
                else:
                    values[key] = wanted(plain(value))
            except WrongType as exc:
                self.add((*path, key), str(exc))
        if unknown:
            assert unknown_together is not None
            message = _unknown_keys_together(unknown_together, unknown, list(expected))
            # Named by their table, at the first one's line.
            problem = self.locator.problem((*path, unknown[0]), message)
            self.problems.append(replace(problem, key=format_key(path)))
        return values

    def settings(
        self,
        base: _T,
        table: Mapping[str, Any],
        path: KeyPath,
        *,
        skip: Sequence[str] = (),
        extra: Mapping[str, Any] | None = None,
        unknown_message: Callable[[str, Sequence[str]], str] = unknown_key_message,
    ) -> tuple[_T, dict[str, Any]]:
        """`base` (a frozen dataclass) with the table's values applied, and the values of `extra`.

        The dataclass's fields (but `skip`) and `extra` (key → type hint)
        are the known keys.  If the new value refuses itself (`refuse()` in
        its `__post_init__`), each problem is reported at its field and the
        fields at fault keep `base`'s values, so later checks still have a
        value to look at.
        """
        settings_type: type = type(base)
        hints = _type_hints(settings_type)
        known = [f.name for f in fields(base) if f.name not in skip]  # type: ignore[arg-type]
        extra = extra or {}
        expected = {**{name: hints[name] for name in known}, **extra}
        read = self.values(table, path, expected, unknown_message=unknown_message)
        extras = {key: read.pop(key) for key in list(read) if key in extra}
        while True:
            try:
                return replace(base, **read), extras  # type: ignore[type-var]
            except ConfigError as refused:
                at_fault = set()
                for problem in refused.problems:
                    field_path = tuple(problem.key.split("."))[1:]  # `table.field`
                    self.add((*path, *field_path), problem.message)
                    at_fault.add(field_path[0] if field_path else "")
                if not at_fault & set(read):
                    return base, extras
                read = {key: value for key, value in read.items() if key not in at_fault}


def _is_type_hint(wanted: Any) -> bool:
    return isinstance(wanted, type) or get_origin(wanted) is not None
