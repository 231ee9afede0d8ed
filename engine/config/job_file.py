"""Job configuration in TOML: read it, validate it, write presets back.

The file is read with `tomllib` and turned into the typed values of
`engine.config.settings`.  Precedence is defaults < file < preset < the `--set`
flags the user typed.  Every problem in a file is collected before anything
is raised, each with the file, the line (found by scanning the text, since
`tomllib` keeps none) and the dotted key, so one run shows the user all of
them.

Writing goes two ways: `tomli_w` for preset files we generate from scratch,
`tomlkit` for edits to the user's own job file, so their comments survive.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import json
import os
import re
import shutil
import tempfile
import tomllib
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import tomli_w

from engine.config.setting_bounds import BATCH_SIZE, CONCURRENCY, FETCH_CONCURRENCY
from engine.config.settings import (
    BUILTIN_PRESETS,
    SIMULATED_DRIFTS,
    CrawlSettings,
    EngineSettings,
    JobConfig,
    JobSettings,
    KeySettings,
    Preset,
    PromptSettings,
    ProviderSettings,
    RateLimitWaits,
    SimulatorSettings,
)
from engine.drift.gates import DriftSettings, DriftSettingsError, parse_drift_settings
from engine.limits.memory_floor import limit_below_floor
from engine.pipeline.prompt import placeholder_problems, placeholders_in

__all__ = [
    "FLAG_SOURCE",
    "PRESET_FLAG_SOURCE",
    "ConfigError",
    "ConfigProblem",
    "effective_settings",
    "format_key",
    "load_config",
    "load_preset_file",
    "missing_key_variables",
    "preset_from_text_fields",
    "preset_from_values",
    "save_preset",
    "update_preset_in_file",
]

FLAG_SOURCE = "--set"
"""What a problem names as its file when a `key=value` override caused it."""

PRESET_FLAG_SOURCE = "--preset"
"""What a problem names as its file when the `preset` argument caused it."""

DEFAULT_PRESET = "conservative"

KeyPath = tuple[str | int, ...]
_T = TypeVar("_T")


# --------------------------------------------------------------------------
# Problems


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration, pointing at where it is."""

    file: str
    line: int | None
    key: str  # dotted path, like `presets.aggressive.concurrency` or `providers[0].keys[1].env`
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration that can't be used; `problems` lists every reason."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def format_key(path: KeyPath) -> str:
    """`("providers", 0, "keys", 1, "env")` → `providers[0].keys[1].env`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text = f"{text}.{name}" if text else name
    return text


# --------------------------------------------------------------------------
# Finding line numbers in TOML text

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
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


class _LineIndex:
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


class _Locator:
    """Turns a key path into a problem with the right file and line."""

    def __init__(self, file: str, text: str = "", flagged: Sequence[KeyPath] = ()) -> None:
        self._file = file
        self._lines = _LineIndex(text)
        self._flagged = tuple(flagged)

    def problem(self, path: KeyPath, message: str) -> ConfigProblem:
        if any(path[: len(flag)] == flag for flag in self._flagged):
            return ConfigProblem(FLAG_SOURCE, None, format_key(path), message)
        return ConfigProblem(self._file, self._lines.line_of(path), format_key(path), message)


def _syntax_problem(file: str, exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    # tomllib puts the place at the end of its message: "... (at line 3, column 9)".
    message = str(exc)
    found = re.search(r"\s*\(at line (\d+), column \d+\)", message)
    if found is None:
        return ConfigProblem(file, None, "", f"invalid TOML: {message}")
    return ConfigProblem(file, int(found.group(1)), "", f"invalid TOML: {message[: found.start()]}")


# --------------------------------------------------------------------------
# Types and ranges


@dataclass(frozen=True, slots=True)
class _FlagValue:
    """A value typed on the command line: its text, and the text read as TOML.

    Kept apart so `prompt.version=2` can still be the string "2".
    """

    text: str
    value: Any


class _WrongType(Exception):
    pass


def _describe(value: Any) -> str:
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


def _coerce(value: Any, hint: Any) -> Any:
    """`value` as the settings type `hint`, or `_WrongType` saying what was expected."""
    if isinstance(value, _FlagValue):
        return _coerce(value.text if _wants_text(hint) else value.value, hint)
    origin = get_origin(hint)
    if origin in (types.UnionType, Union):
        # TOML has no null: an optional setting is either left out or of its type.
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return _coerce(value, inner)
    if origin is Literal:
        allowed = get_args(hint)
        if not isinstance(value, str) or value not in allowed:
            choices = ", ".join(repr(choice) for choice in allowed)
            got = repr(value) if isinstance(value, str) else _describe(value)
            raise _WrongType(f"must be one of {choices} (got {got})")
        return value
    if origin is tuple and len(get_args(hint)) == 2 and get_args(hint)[1] is Ellipsis:
        item_hint = get_args(hint)[0]
        if not isinstance(value, list):
            raise _WrongType(f"expected an array, got {_describe(value)}")
        try:
            return tuple(_coerce(item, item_hint) for item in value)
        except _WrongType as exc:
            raise _WrongType(f"every item: {exc}") from None
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise _WrongType(f"expected a table of strings, got {_describe(value)}")
        return dict(value)
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, list) or len(value) != len(args):
            raise _WrongType(f"expected an array of {len(args)} numbers, got {_describe(value)}")
        try:
            return tuple(_coerce(item, arg) for item, arg in zip(value, args, strict=True))
        except _WrongType:
            raise _WrongType(f"expected an array of {len(args)} numbers") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _WrongType(f"expected true or false, got {_describe(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _WrongType(f"expected an integer, got {_describe(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _WrongType(f"expected a number, got {_describe(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _WrongType(f"expected a string, got {_describe(value)}")
    raise TypeError(f"no TOML reading for settings type {hint!r}")


_Rule = tuple[str, Callable[[Any], bool], str]
_Finding = tuple[str, str]  # (field, message)


def _apply_rules(obj: object, rules: Sequence[_Rule]) -> list[_Finding]:
    findings: list[_Finding] = []
    for name, holds, requirement in rules:
        value = getattr(obj, name)
        if value is not None and not holds(value):
            findings.append((name, f"{requirement} (got {value!r})"))
    return findings


def _positive(value: Any) -> bool:
    return bool(value > 0)


def _not_negative(value: Any) -> bool:
    return bool(value >= 0)


def _at_least_one(value: Any) -> bool:
    return bool(value >= 1)


def _a_rate(value: Any) -> bool:
    return bool(0.0 <= value <= 1.0)


def _preset_findings(preset: Preset) -> list[_Finding]:
    findings = _apply_rules(
        preset,
        (
            ("concurrency", CONCURRENCY.holds, CONCURRENCY.requirement),
            ("batch_size", BATCH_SIZE.holds, BATCH_SIZE.requirement),
            ("max_retries", _not_negative, "must be 0 or more"),
            ("backoff_base_s", _not_negative, "must be 0 or more"),
            ("backoff_max_s", _not_negative, "must be 0 or more"),
            ("request_timeout_s", _positive, "must be more than 0"),
            ("batch_delay_s", _not_negative, "must be 0 or more"),
            ("memory_soft_mb", _positive, "must be more than 0"),
            ("memory_hard_mb", _positive, "must be more than 0"),
        ),
    )
    if preset.memory_soft_mb >= preset.memory_hard_mb:
        findings.append(
            (
                "memory_soft_mb",
                f"must be below memory_hard_mb ({preset.memory_soft_mb} >= "
                f"{preset.memory_hard_mb})",
            )
        )
    if preset.backoff_base_s > preset.backoff_max_s:
        findings.append(
            (
                "backoff_base_s",
                f"must not exceed backoff_max_s ({preset.backoff_base_s} > {preset.backoff_max_s})",
            )
        )
    return findings


def _floor_findings(preset: Preset, memory_floor_bytes: int | None) -> list[_Finding]:
    """Memory limits this process cannot run under: below its own floor (None: unchecked)."""
    if memory_floor_bytes is None:
        return []
    findings: list[_Finding] = []
    for name in ("memory_soft_mb", "memory_hard_mb"):
        problem = limit_below_floor(getattr(preset, name), memory_floor_bytes)
        if problem is not None:
            findings.append((name, problem))
    return findings


def _crawl_findings(crawl: CrawlSettings) -> list[_Finding]:
    findings = _apply_rules(
        crawl,
        (
            ("concurrency", FETCH_CONCURRENCY.holds, FETCH_CONCURRENCY.requirement),
            ("per_host", _at_least_one, "must be at least 1"),
            ("politeness_delay_s", _not_negative, "must be 0 or more"),
            ("connect_timeout_s", _positive, "must be more than 0"),
            ("read_timeout_s", _positive, "must be more than 0"),
            ("total_timeout_s", _positive, "must be more than 0"),
            ("max_body_bytes", _at_least_one, "must be at least 1"),
            ("max_redirects", _not_negative, "must be 0 or more"),
            ("max_depth", _not_negative, "must be 0 or more"),
            ("max_pages_per_domain", _at_least_one, "must be at least 1"),
            ("extract_workers", _not_negative, "must be 0 or more (0: one per core but one)"),
            ("extract_timeout_s", _positive, "must be more than 0"),
        ),
    )
    if not crawl.targets.strip():
        findings.append(("targets", "is required: a file of domains or URLs, one per line"))
    for entry in crawl.allow_addresses:
        if not _cidr_or_host(entry):
            findings.append(("allow_addresses", f"{entry!r} is neither a CIDR nor a host name"))
    for pattern, address in crawl.resolve.items():
        try:
            ipaddress.ip_address(address)
        except ValueError:
            findings.append(("resolve", f"{pattern} = {address!r} is not an IP address"))
    return findings


def _cidr_or_host(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return bool(re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9*.-]*[A-Za-z0-9])?", entry))


def _job_findings(job: JobSettings, crawling: bool = False) -> list[_Finding]:
    findings = _apply_rules(
        job,
        (
            ("chunk_tokens", _at_least_one, "must be at least 1"),
            ("chunk_overlap_tokens", _not_negative, "must be 0 or more"),
        ),
    )
    if not job.input.strip() and not crawling:
        findings.append(("input", "is required: a file, a directory or a glob of the documents"))
    if not job.store.strip():
        findings.append(("store", "must name the SQLite file that keeps the results"))
    if job.chunk_overlap_tokens >= job.chunk_tokens:
        findings.append(
            (
                "chunk_overlap_tokens",
                f"must be below chunk_tokens ({job.chunk_overlap_tokens} >= {job.chunk_tokens})",
            )
        )
    return findings


def _provider_findings(provider: ProviderSettings) -> list[_Finding]:
    findings = _apply_rules(
        provider,
        (
            ("price_input_per_m", _not_negative, "must be 0 or more"),
            ("price_output_per_m", _not_negative, "must be 0 or more"),
            ("request_timeout_s", _positive, "must be more than 0"),
            ("max_output_tokens", _at_least_one, "must be at least 1"),
        ),
    )
    for name in ("name", "base_url", "model"):
        if not getattr(provider, name).strip():
            findings.append((name, "is required"))
    if provider.base_url.strip() and not provider.base_url.startswith(("http://", "https://")):
        findings.append(("base_url", "must start with http:// or https://"))
    return findings


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _key_findings(key: KeySettings) -> list[_Finding]:
    findings = _apply_rules(
        key,
        (
            ("rpm", _positive, "must be more than 0"),
            ("tpm", _positive, "must be more than 0"),
        ),
    )
    if not key.env:
        findings.append(("env", "is required: the name of the environment variable with the key"))
    elif not _ENV_NAME.fullmatch(key.env):
        # Never echo it: a value here that isn't a variable name may well be the secret.
        findings.append(
            ("env", "must name an environment variable (like OPENAI_API_KEY), not hold the key")
        )
    return findings


def _prompt_findings(prompt: PromptSettings) -> list[_Finding]:
    findings = _apply_rules(
        prompt, (("temperature", lambda value: 0.0 <= value <= 2.0, "must be between 0 and 2"),)
    )
    if not prompt.version.strip():
        findings.append(("version", "must not be empty"))
    if "chunks" not in placeholders_in(prompt.user):
        findings.append(("user", "must contain {chunks}, where the batch's chunks go"))
    findings.extend(placeholder_problems(prompt))
    return findings


def _simulator_findings(simulator: SimulatorSettings) -> list[_Finding]:
    findings = _apply_rules(
        simulator,
        (
            ("port", lambda value: 0 <= value <= 65535, "must be between 0 and 65535"),
            ("seconds_per_output_token", _not_negative, "must be 0 or more"),
            ("fault_5xx", _a_rate, "must be between 0 and 1"),
            ("fault_reset", _a_rate, "must be between 0 and 1"),
            ("fault_hang", _a_rate, "must be between 0 and 1"),
            ("fault_malformed", _a_rate, "must be between 0 and 1"),
            ("fault_429", _a_rate, "must be between 0 and 1"),
            ("limit_scale", _positive, "must be more than 0"),
            ("drift_after", _not_negative, "must be 0 (never) or more"),
        ),
    )
    for kind in simulator.drift:
        if kind not in SIMULATED_DRIFTS:
            close = difflib.get_close_matches(kind, SIMULATED_DRIFTS, n=1)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"one of {', '.join(SIMULATED_DRIFTS)}"
            )
            findings.append(("drift", f"{kind!r} is not a simulated drift ({hint})"))
    low, high = simulator.latency_s
    if low < 0 or high < 0 or low > high:
        findings.append(
            ("latency_s", f"must be [low, high] with 0 <= low <= high (got {[low, high]})")
        )
    if not simulator.host.strip():
        findings.append(("host", "must not be empty"))
    return findings


def _rate_limit_waits_findings(waits: RateLimitWaits) -> list[_Finding]:
    return _apply_rules(
        waits,
        (
            ("key_streak", _at_least_one, "must be at least 1"),
            ("key_wait_s", _positive, "must be more than 0"),
            ("key_escalations", _not_negative, "must be 0 (disable at once) or more"),
            ("key_escalation_s", _positive, "must be more than 0"),
            ("batch_429s", _at_least_one, "must be at least 1"),
            ("batch_wait_s", _positive, "must be more than 0"),
        ),
    )


def _engine_findings(engine: EngineSettings) -> list[_Finding]:
    return _apply_rules(
        engine,
        (
            ("snapshot_events", _at_least_one, "must be at least 1"),
            ("store_batch_rows", _at_least_one, "must be at least 1"),
            ("store_batch_ms", _at_least_one, "must be at least 1"),
            ("memory_sample_s", _positive, "must be more than 0"),
            ("queue_size", _at_least_one, "must be at least 1"),
            # Viewers ask at least once a second; a shorter timeout would drop live ones.
            ("control_idle_timeout_s", lambda value: value >= 2.0, "must be at least 2"),
        ),
    )


# --------------------------------------------------------------------------
# Reading tables into settings

_SECTIONS = (
    "job",
    "providers",
    "prompt",
    "presets",
    "simulator",
    "engine",
    "crawl",
    "drift",
    "rate_limit_waits",
)
# Names people reach for when they paste a secret into the file.
_SECRET_NAMES = frozenset({"key", "api_key", "apikey", "secret", "token", "value", "password"})


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _unknown_key_message(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (known keys: {', '.join(known)})"


class _Reader:
    """Reads raw TOML tables into settings values, collecting every problem."""

    def __init__(self, locator: _Locator, memory_floor_bytes: int | None = None) -> None:
        self.locator = locator
        self.problems: list[ConfigProblem] = []
        self.memory_floor_bytes = memory_floor_bytes  # None: memory limits go unchecked

    def add(self, path: KeyPath, message: str) -> None:
        self.problems.append(self.locator.problem(path, message))

    def report(self, path: KeyPath, findings: Sequence[_Finding]) -> None:
        for name, message in findings:
            self.add((*path, name), message)

    def table(self, value: Any, path: KeyPath) -> dict[str, Any]:
        """`value` if it is a table; else a problem and an empty table."""
        if isinstance(value, _FlagValue):
            value = value.value
        if isinstance(value, dict):
            return value
        self.add(path, f"expected a table, got {_describe(value)}")
        return {}

    def settings(
        self,
        base: _T,
        table: Mapping[str, Any],
        path: KeyPath,
        *,
        skip: Sequence[str] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[_T, dict[str, Any]]:
        """`base` with the table's values applied, and the values of `extra` keys.

        Keys that are unknown or of the wrong type become problems and are
        left out, so checks on the rest still run.
        """
        settings_type: type = type(base)
        hints = _type_hints(settings_type)
        known = [f.name for f in fields(base) if f.name not in skip]  # type: ignore[arg-type]
        extra = extra or {}
        expected = {**{name: hints[name] for name in known}, **extra}
        values: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for key, value in table.items():
            if key not in expected:
                if base.__class__ is KeySettings and key.lower() in _SECRET_NAMES:
                    self.add(
                        (*path, key),
                        "secrets don't belong in the file: put the key in an environment "
                        'variable and name it with env = "..."',
                    )
                else:
                    self.add((*path, key), _unknown_key_message(key, list(expected)))
                continue
            try:
                converted = _coerce(value, expected[key])
            except _WrongType as exc:
                self.add((*path, key), str(exc))
                continue
            (extras if key in extra else values)[key] = converted
        return replace(base, **values), extras  # type: ignore[type-var]

    def providers(self, value: Any) -> tuple[ProviderSettings, ...]:
        if isinstance(value, _FlagValue):
            value = value.value
        if value is None or value == []:
            self.add(("providers",), "at least one [[providers]] table is required")
            return ()
        if not isinstance(value, list):
            self.add(("providers",), f"expected [[providers]] tables, got {_describe(value)}")
            return ()
        providers: list[ProviderSettings] = []
        first_with_name: dict[str, int] = {}
        first_with_alias: dict[str, KeyPath] = {}
        for index, item in enumerate(value):
            path: KeyPath = ("providers", index)
            table = self.table(item, path)
            fields_only = {key: item for key, item in table.items() if key != "keys"}
            provider, _ = self.settings(
                ProviderSettings(name="", base_url="", model=""), fields_only, path, skip=("keys",)
            )
            self.report(path, _provider_findings(provider))
            if provider.name in first_with_name:
                self.add(
                    (*path, "name"),
                    f"duplicate provider name {provider.name!r} "
                    f"(also providers[{first_with_name[provider.name]}])",
                )
            elif provider.name:
                first_with_name[provider.name] = index
            keys = self.keys(provider.name, table.get("keys"), (*path, "keys"))
            for number, key in enumerate(keys):
                key_path: KeyPath = (*path, "keys", number)
                if key.alias in first_with_alias:
                    self.add(
                        (*key_path, "alias"),
                        f"duplicate key alias {key.alias!r} "
                        f"(also {format_key(first_with_alias[key.alias])})",
                    )
                else:
                    first_with_alias[key.alias] = key_path
            providers.append(replace(provider, keys=keys))
        return tuple(providers)

    def keys(self, provider: str, value: Any, path: KeyPath) -> tuple[KeySettings, ...]:
        if isinstance(value, _FlagValue):
            value = value.value
        if value is None or value == []:
            self.add(path, "at least one [[providers.keys]] table with env is required")
            return ()
        if not isinstance(value, list):
            self.add(path, f"expected [[providers.keys]] tables, got {_describe(value)}")
            return ()
        keys: list[KeySettings] = []
        for number, item in enumerate(value):
            key_path: KeyPath = (*path, number)
            key, _ = self.settings(KeySettings(env=""), self.table(item, key_path), key_path)
            self.report(key_path, _key_findings(key))
            if not key.alias:
                key = replace(key, alias=f"{provider or 'provider'}-{number + 1}")
            keys.append(key)
        return tuple(keys)

    def preset(self, name: str, value: Any, path: KeyPath) -> Preset:
        """A `[presets.NAME]` table: a partial one inherits from the built-in of that name."""
        table = dict(self.table(value, path))
        written_name = table.pop("name", name)
        if written_name != name:
            self.add(
                (*path, "name"),
                f"the preset's name comes from its table ({name!r}); leave name out",
            )
        base = replace(BUILTIN_PRESETS.get(name, Preset()), name=name)
        preset, _ = self.settings(base, table, path, skip=("name",))
        self.report(
            path, _preset_findings(preset) + _floor_findings(preset, self.memory_floor_bytes)
        )
        return preset


# --------------------------------------------------------------------------
# Overrides (`--set key=value`)

_FLAG_PART = re.compile(r"([A-Za-z0-9_-]+)((?:\[\d+\])*)")


def _parse_flag_path(key: str) -> KeyPath | None:
    path: list[str | int] = []
    for part in key.split("."):
        match = _FLAG_PART.fullmatch(part.strip())
        if not match:
            return None
        name = match.group(1)
        path.append(int(name) if name.isdigit() else name)
        path.extend(int(index) for index in re.findall(r"\d+", match.group(2)))
    if not path or isinstance(path[0], int):
        return None
    return tuple(path)


def _read_flag_value(text: str) -> _FlagValue:
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word or a path: take it as typed
    return _FlagValue(text.strip(), value)


def _parse_flags(
    overrides: Sequence[str],
) -> tuple[list[tuple[KeyPath, _FlagValue]], list[ConfigProblem]]:
    parsed: list[tuple[KeyPath, _FlagValue]] = []
    problems: list[ConfigProblem] = []
    for override in overrides:
        key, equals, text = override.partition("=")
        path = _parse_flag_path(key.strip()) if equals else None
        if path is None:
            message = "expected key=value with a dotted key, like preset.concurrency=32"
            problems.append(ConfigProblem(FLAG_SOURCE, None, key.strip(), message))
            continue
        if path == ("preset",):
            path = ("job", "preset")  # `preset=NAME` chooses the preset
        parsed.append((path, _read_flag_value(text)))
    return parsed, problems


def _set_in(raw: dict[str, Any], path: KeyPath, value: Any) -> str | None:
    """Put `value` at `path` inside the parsed TOML; an error message if there's no such place."""
    node: Any = raw
    for depth, part in enumerate(path[:-1]):
        where = format_key(path[: depth + 1])
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return f"there is no {where} to change"
            node = node[part]
        else:
            if not isinstance(node, dict):
                return f"{format_key(path[:depth])} is not a table"
            if part not in node:
                if isinstance(path[depth + 1], int):
                    return f"there is no {where} to change"
                node[part] = {}
            node = node[part]
        if isinstance(node, _FlagValue):
            node = node.value
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            return f"there is no {format_key(path)} to change"
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        return f"{format_key(path[:-1])} is not a table"
    return None


def _merge_flags(
    raw: dict[str, Any], flags: Sequence[tuple[KeyPath, _FlagValue]], problems: list[ConfigProblem]
) -> list[KeyPath]:
    """Write the flags into the parsed file, so they are checked like the file's own values.

    `preset.*` flags wait for the active preset to be chosen.  Returns the
    paths set, so problems with them are blamed on the flags.
    """
    flagged: list[KeyPath] = []
    reader = _Reader(_Locator(FLAG_SOURCE, flagged=[()]))
    for path, value in flags:
        if path[0] == "preset":
            if len(path) != 2:
                reader.add(path, "expected preset.<setting>=value")
            continue
        error = _set_in(raw, path, value)
        if error:
            reader.add(path, error)
        else:
            flagged.append(path)
    problems.extend(reader.problems)
    return flagged


# --------------------------------------------------------------------------
# Loading


def _read_text(path: Path) -> tuple[str | None, ConfigProblem | None]:
    try:
        return path.read_bytes().decode("utf-8"), None
    except FileNotFoundError:
        return None, ConfigProblem(str(path), None, "", "file not found")
    except (OSError, UnicodeDecodeError) as exc:
        return None, ConfigProblem(str(path), None, "", f"cannot read the file: {exc}")


def _resolve_path(value: str, base_dir: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).absolute())


def _with_absolute_paths(
    job: JobSettings, base_dir: Path, flagged: Sequence[KeyPath]
) -> JobSettings:
    """Relative paths in the file are the file's; typed on the command line, the shell's."""

    def absolute(name: str, value: str) -> str:
        if not value.strip():
            return value  # left empty: already reported as a problem
        origin = Path.cwd() if ("job", name) in flagged else base_dir
        return _resolve_path(value, origin)

    return replace(job, input=absolute("input", job.input), store=absolute("store", job.store))


def _looks_like_path(choice: str) -> bool:
    return choice.endswith(".toml") or "/" in choice or os.sep in choice


def _read_preset_file(
    path: Path, memory_floor_bytes: int | None = None
) -> tuple[Preset, list[ConfigProblem]]:
    text, problem = _read_text(path)
    if text is None:
        assert problem is not None
        return Preset(), [problem]
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return Preset(), [_syntax_problem(str(path), exc)]
    name = raw.get("name", path.stem)
    reader = _Reader(_Locator(str(path), text), memory_floor_bytes)
    if not isinstance(name, str) or not name.strip():
        reader.add(("name",), "must be a non-empty string")
        name = path.stem
    base = replace(BUILTIN_PRESETS.get(name, Preset()), name=name)
    preset, _ = reader.settings(base, raw, ())
    reader.report((), _preset_findings(preset) + _floor_findings(preset, memory_floor_bytes))
    return preset, reader.problems


def load_preset_file(path: Path, memory_floor_bytes: int | None = None) -> Preset:
    """A preset from a flat TOML table of `Preset` fields; the name defaults to the file's stem.

    A partial file inherits from the built-in preset of that name, else from `Preset()`.
    With `memory_floor_bytes`, memory limits this process cannot run under are refused.
    """
    preset, problems = _read_preset_file(Path(path), memory_floor_bytes)
    if problems:
        raise ConfigError(problems)
    return preset


def preset_from_values(
    base: Preset,
    values: Mapping[str, Any],
    source: str = "preset",
    memory_floor_bytes: int | None = None,
) -> Preset:
    """`base` with `values` (TOML/JSON values by field name) applied and checked.

    Every problem is a `ConfigProblem` naming `source` and the field;
    `ConfigError` holds all of them and nothing is applied.  With
    `memory_floor_bytes`, memory limits this process cannot run under are refused.
    """
    reader = _Reader(_Locator(source))
    preset, _ = reader.settings(base, values, ())
    if not preset.name.strip():
        reader.add(("name",), "must be a non-empty string")
    reader.report((), _preset_findings(preset) + _floor_findings(preset, memory_floor_bytes))
    if reader.problems:
        raise ConfigError(reader.problems)
    return preset


def preset_from_text_fields(
    base: Preset, fields_text: Mapping[str, str], source: str = "preset form"
) -> Preset:
    """Like `preset_from_values`, from text typed in a form: each read as a TOML value.

    `32`, `0.5` and `true` take their types; a name stays text.
    """
    return preset_from_values(
        base, {key: _read_flag_value(text) for key, text in fields_text.items()}, source
    )


def _sorted(problems: list[ConfigProblem], main_file: str) -> list[ConfigProblem]:
    # The file's problems in reading order, then the ones from flags.
    return sorted(
        problems,
        key=lambda p: (p.file != main_file, p.line is None, p.line or 0),
    )


def load_config(
    path: Path,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    *,
    memory_floor_bytes: int | None = None,
) -> JobConfig:
    """Read and validate a job file: defaults < file < preset < overrides.

    `preset` is a preset name (built-in or `[presets.NAME]` in the file) or
    the path of a preset file; without it, `[job] preset` chooses, else
    "conservative".  `overrides` are `key=value` strings such as
    `preset.concurrency=32` or `job.store=out.db`; the value is read as TOML,
    falling back to the bare text.  Relative `job.input`/`job.store` in the
    file are resolved against the file's folder; typed on the command line,
    against the current folder.  With `memory_floor_bytes` (the running
    process's own, `engine.limits.memory_floor`), presets whose memory limits it
    cannot run under are refused.  Raises `ConfigError` with every problem.
    """
    path = Path(path)
    file = str(path)
    text, problem = _read_text(path)
    if text is None:
        assert problem is not None
        raise ConfigError([problem])
    try:
        raw: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(file, exc)]) from None

    flags, problems = _parse_flags(overrides)
    preset_flags = {p[1]: value for p, value in flags if p[0] == "preset" and len(p) == 2}
    flagged = _merge_flags(raw, flags, problems)

    reader = _Reader(_Locator(file, text, flagged), memory_floor_bytes)
    for key in raw:
        if key not in _SECTIONS:
            reader.add((key,), _unknown_key_message(key, _SECTIONS))

    base_dir = path.parent
    job, job_extras = reader.settings(
        JobSettings(), reader.table(raw.get("job", {}), ("job",)), ("job",), extra={"preset": str}
    )
    crawl: CrawlSettings | None = None
    if "crawl" in raw:
        read, _ = reader.settings(
            CrawlSettings(), reader.table(raw["crawl"], ("crawl",)), ("crawl",)
        )
        reader.report(("crawl",), _crawl_findings(read))
        if read.targets.strip():
            origin = Path.cwd() if ("crawl", "targets") in flagged else base_dir
            read = replace(read, targets=_resolve_path(read.targets, origin))
        crawl = read
    reader.report(("job",), _job_findings(job, crawling=crawl is not None))
    job = _with_absolute_paths(job, base_dir, flagged)

    providers = reader.providers(raw.get("providers"))
    prompt, _ = reader.settings(
        PromptSettings(), reader.table(raw.get("prompt", {}), ("prompt",)), ("prompt",)
    )
    reader.report(("prompt",), _prompt_findings(prompt))

    catalogue = dict(BUILTIN_PRESETS)
    for name, table in reader.table(raw.get("presets", {}), ("presets",)).items():
        catalogue[name] = reader.preset(name, table, ("presets", name))

    simulator, _ = reader.settings(
        SimulatorSettings(), reader.table(raw.get("simulator", {}), ("simulator",)), ("simulator",)
    )
    reader.report(("simulator",), _simulator_findings(simulator))
    engine, _ = reader.settings(
        EngineSettings(), reader.table(raw.get("engine", {}), ("engine",)), ("engine",)
    )
    reader.report(("engine",), _engine_findings(engine))
    rate_limit_waits, _ = reader.settings(
        RateLimitWaits(),
        reader.table(raw.get("rate_limit_waits", {}), ("rate_limit_waits",)),
        ("rate_limit_waits",),
    )
    reader.report(("rate_limit_waits",), _rate_limit_waits_findings(rate_limit_waits))
    drift = _read_drift(reader, raw, file)
    problems.extend(reader.problems)

    active = _choose_preset(
        catalogue,
        argument=preset,
        in_job=job_extras.get("preset"),
        in_job_flagged=("job", "preset") in flagged,
        locator=reader.locator,
        base_dir=base_dir,
        problems=problems,
        memory_floor_bytes=memory_floor_bytes,
    )
    if active is BUILTIN_PRESETS.get(active.name):
        # A built-in the file does not redefine: no table above checked its limits.
        problems.extend(
            reader.locator.problem(("presets", active.name, name), message)
            for name, message in _floor_findings(active, memory_floor_bytes)
        )
    if preset_flags:
        active = _apply_preset_flags(active, preset_flags, problems, memory_floor_bytes)
        catalogue[active.name] = active

    if problems:
        raise ConfigError(_sorted(problems, file))
    return JobConfig(
        job=job,
        providers=providers,
        prompt=prompt,
        presets=catalogue,
        preset=active,
        simulator=simulator,
        engine=engine,
        crawl=crawl,
        drift=drift,
        rate_limit_waits=rate_limit_waits,
        source=path,
    )


def _read_drift(reader: _Reader, raw: Mapping[str, Any], file: str) -> DriftSettings:
    """The `[drift]` table; each problem is reported at its own key and line."""
    if "drift" not in raw:
        return DriftSettings()
    table = _without_flag_wrappers(reader.table(raw["drift"], ("drift",)))
    try:
        return parse_drift_settings(table, file)
    except DriftSettingsError as exc:
        for problem in exc.problems:
            path = tuple(problem.key.split("."))
            reader.add(path, problem.message)
        return DriftSettings()


def _without_flag_wrappers(value: Any) -> Any:
    # `--set drift.x=...` values arrive wrapped; the drift reader wants plain TOML values.
    if isinstance(value, _FlagValue):
        return value.value
    if isinstance(value, dict):
        return {key: _without_flag_wrappers(item) for key, item in value.items()}
    return value


def _choose_preset(
    catalogue: dict[str, Preset],
    *,
    argument: str | None,
    in_job: str | None,
    in_job_flagged: bool,
    locator: _Locator,
    base_dir: Path,
    problems: list[ConfigProblem],
    memory_floor_bytes: int | None = None,
) -> Preset:
    """The active preset: `--set job.preset` > the `preset` argument > `[job] preset`."""
    from_file = in_job is not None and (in_job_flagged or argument is None)
    if from_file:
        assert in_job is not None
        choice = in_job
        folders = [Path.cwd(), base_dir] if in_job_flagged else [base_dir]
    elif argument is not None:
        choice = argument
        folders = [Path.cwd(), base_dir]
    else:
        return catalogue.get(DEFAULT_PRESET, BUILTIN_PRESETS[DEFAULT_PRESET])

    def complain(message: str) -> None:
        if from_file:
            problems.append(locator.problem(("job", "preset"), message))
        else:
            problems.append(ConfigProblem(PRESET_FLAG_SOURCE, None, "", message))

    if choice in catalogue:
        return catalogue[choice]
    if _looks_like_path(choice):
        candidate = Path(choice).expanduser()
        found = next(
            (
                folder / candidate
                for folder in folders
                if (folder / candidate).is_file()  # an absolute candidate ignores the folder
            ),
            None,
        )
        if found is None:
            complain(f"preset file not found: {choice}")
            return catalogue[DEFAULT_PRESET]
        loaded, file_problems = _read_preset_file(found, memory_floor_bytes)
        problems.extend(file_problems)
        catalogue[loaded.name] = loaded
        return loaded
    available = ", ".join(sorted(catalogue))
    complain(f"unknown preset {choice!r} (available: {available}; or the path of a preset file)")
    return catalogue[DEFAULT_PRESET]


def _apply_preset_flags(
    active: Preset,
    flags: Mapping[str | int, _FlagValue],
    problems: list[ConfigProblem],
    memory_floor_bytes: int | None = None,
) -> Preset:
    reader = _Reader(_Locator(FLAG_SOURCE, flagged=[()]))
    table = {str(key): value for key, value in flags.items()}
    changed, _ = reader.settings(active, table, ("preset",))

    def findings(preset: Preset) -> list[_Finding]:
        return _preset_findings(preset) + _floor_findings(preset, memory_floor_bytes)

    # Only what the flags broke: the preset itself was checked where it was defined.
    before = set(findings(active))
    reader.report(("preset",), [f for f in findings(changed) if f not in before])
    problems.extend(reader.problems)
    return changed


# What an Authorization header can carry: a key with anything else fails in
# the transport (a traceback quoting part of it, or endless connection errors).
_SENDABLE_SECRET = re.compile(r"[\x21-\x7e]+")


def missing_key_variables(config: JobConfig, environ: Mapping[str, str]) -> list[ConfigProblem]:
    """One problem per key whose environment variable is unset, empty or unsendable.

    Names the variable, never a value.  Separate from `load_config` because
    the bundled simulator supplies throwaway secrets.
    """
    text = ""
    file = "<config>"
    if config.source is not None:
        file = str(config.source)
        text = _read_text(Path(config.source))[0] or ""
    locator = _Locator(file, text)
    problems: list[ConfigProblem] = []
    for index, provider in enumerate(config.providers):
        for number, key in enumerate(provider.keys):
            value = environ.get(key.env)
            if not value:
                state = "is not set" if value is None else "is empty"
            elif not _SENDABLE_SECRET.fullmatch(value):
                state = "holds a space, a control or a non-ASCII character (an API key has none)"
            else:
                continue
            problems.append(
                locator.problem(
                    ("providers", index, "keys", number, "env"),
                    f"environment variable {key.env} {state}",
                )
            )
    return problems


# --------------------------------------------------------------------------
# Writing


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def effective_settings(config: JobConfig) -> dict[str, Any]:
    """Everything the run uses, as plain JSON-able values (only env var names, no secrets)."""
    settings: dict[str, Any] = _plain(config)
    return settings


def save_preset(preset: Preset, path: Path) -> None:
    """Write `preset` as a fresh preset file, loadable with `load_config(..., preset=str(path))`."""
    path = Path(path)
    header = (
        f"# crawldeck preset {preset.name!r}: give this file's path wherever a preset name "
        "is accepted.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + tomli_w.dumps(_plain(preset)), encoding="utf-8")


def update_preset_in_file(config_path: Path, preset: Preset) -> None:
    """Write `preset` into `[presets.<name>]` of the user's job file, keeping everything else.

    Only values that differ from what the table says (or inherits) are
    touched, so comments and formatting survive byte for byte; a missing
    table is added with every field written out.
    """
    # Loaded here: only saving into a job file needs it, and every CLI start
    # (`--help`, `status`) would pay ~60 ms for it otherwise.
    import tomlkit
    import tomlkit.exceptions

    config_path = Path(config_path).resolve()
    text, problem = _read_text(config_path)
    if text is None:
        assert problem is not None
        raise ConfigError([problem])
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(
            [ConfigProblem(str(config_path), exc.line, "", f"invalid TOML: {exc}")]
        ) from None

    values = {name: value for name, value in _plain(preset).items() if name != "name"}
    presets: Any = document.get("presets")
    if presets is None:
        # A super table renders as `[presets.NAME]` alone, without an empty `[presets]`.
        presets = tomlkit.table(is_super_table=True)
        document.append("presets", presets)
    elif not isinstance(presets, dict):
        raise ConfigError(
            [_Locator(str(config_path), text).problem(("presets",), "expected a table")]
        )

    existing = presets.get(preset.name)
    if existing is None:
        table = tomlkit.table()
        for name, value in values.items():
            table.add(name, value)
        table.add(tomlkit.nl())  # keep a blank line before whatever table follows
        presets.append(preset.name, table)
    elif isinstance(existing, dict):
        inherited = BUILTIN_PRESETS.get(preset.name, Preset())
        for name, value in values.items():
            current = existing.get(name)
            if current is None:
                current = getattr(inherited, name)
            else:
                current = current.unwrap() if hasattr(current, "unwrap") else current
            # `60` already says 60.0: leave the user's spelling alone.
            if current == value and isinstance(current, bool) == isinstance(value, bool):
                continue
            existing[name] = value
    else:
        raise ConfigError(
            [_Locator(str(config_path), text).problem(("presets", preset.name), "expected a table")]
        )
    updated = tomlkit.dumps(document)
    if updated.endswith("\n\n") and not text.endswith("\n\n"):
        updated = updated.rstrip("\n") + "\n"  # the new table was the last thing in the file
    _replace_file(config_path, updated)


def _replace_file(path: Path, text: str) -> None:
    # Write beside it, then swap: a crash mid-write must not cost the user their file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(text.encode("utf-8"))
        shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
