"""Presets checked wherever they come from: a job file's table, a preset file, a form, a request.

One set of rules (`preset_findings`) judges them all, and with the running
process's memory floor (`engine.limits.memory_floor`) memory limits it
cannot run under are refused too.  `checked_preset` is what a running job
calls when the operator switches presets.

Preset files are flat TOML tables of `Preset` fields, written fresh with
`tomli_w` (they are ours, so comments need not survive).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomli_w

from engine.config.config_problem import ConfigError, ConfigProblem
from engine.config.setting_bounds import BATCH_SIZE, CONCURRENCY
from engine.config.settings import BUILTIN_PRESETS, Preset, ProviderMode, plain_values
from engine.config.table_check import (
    Finding,
    TableChecker,
    apply_rules,
    not_negative,
    positive,
    read_typed_text,
)
from engine.config.toml_source import Locator, read_toml
from engine.limits.memory_floor import limit_below_floor

__all__ = [
    "PRESET_MODE",
    "checked_preset",
    "load_preset_file",
    "preset_findings",
    "preset_from_text_fields",
    "preset_from_values",
    "read_preset_file",
    "save_preset",
]


def preset_findings(preset: Preset, memory_floor_bytes: int | None = None) -> list[Finding]:
    """What is wrong with `preset`; with `memory_floor_bytes`, limits below it too."""
    findings = apply_rules(
        preset,
        (
            ("concurrency", CONCURRENCY.holds, CONCURRENCY.requirement),
            ("batch_size", BATCH_SIZE.holds, BATCH_SIZE.requirement),
            ("max_retries", not_negative, "must be 0 or more"),
            ("backoff_base_s", not_negative, "must be 0 or more"),
            ("backoff_max_s", not_negative, "must be 0 or more"),
            ("request_timeout_s", positive, "must be more than 0"),
            ("batch_delay_s", not_negative, "must be 0 or more"),
            ("memory_soft_mb", positive, "must be more than 0"),
            ("memory_hard_mb", positive, "must be more than 0"),
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
    return findings + floor_findings(preset, memory_floor_bytes)


def floor_findings(preset: Preset, memory_floor_bytes: int | None) -> list[Finding]:
    """Memory limits this process cannot run under: below its own floor (None: unchecked)."""
    if memory_floor_bytes is None:
        return []
    findings: list[Finding] = []
    for name in ("memory_soft_mb", "memory_hard_mb"):
        problem = limit_below_floor(getattr(preset, name), memory_floor_bytes)
        if problem is not None:
            findings.append((name, problem))
    return findings


PRESET_MODE = {"mode": ProviderMode}
"""What a preset may say beside its fields: the route of the providers that do not
say their own (`engine.config.route_mode`), chosen at the job's start."""


def read_preset_file(
    path: Path, memory_floor_bytes: int | None = None, *, at_start: bool = True
) -> tuple[Preset, list[ConfigProblem], ProviderMode | None]:
    """The preset in `path`, every problem with it (a default preset if unreadable),
    and the route it chooses (`mode`; None: it says none).  A running job cannot
    change route (not `at_start`): a file that says one is refused at its line."""
    try:
        source = read_toml(path)
    except ConfigError as exc:
        return Preset(), exc.problems, None
    name = source.data.get("name", path.stem)
    checker = TableChecker(source.locator)
    if not isinstance(name, str) or not name.strip():
        checker.add(("name",), "must be a non-empty string")
        name = path.stem
    base = replace(BUILTIN_PRESETS.get(name, Preset()), name=name)
    preset, extras = checker.settings(base, source.data, (), extra=PRESET_MODE)
    mode: ProviderMode | None = extras.get("mode")
    if mode is not None and not at_start:
        checker.add(
            ("mode",),
            "chooses the route at the job's start, not while it runs: start the job "
            "with this file as its preset, or leave mode out",
        )
    checker.report((), preset_findings(preset, memory_floor_bytes))
    return preset, checker.problems, mode


def load_preset_file(path: Path, memory_floor_bytes: int | None = None) -> Preset:
    """A preset a running job switches to, from a flat TOML table of `Preset` fields; the
    name defaults to the file's stem.

    A partial file inherits from the built-in preset of that name, else from `Preset()`.
    With `memory_floor_bytes`, memory limits this process cannot run under are refused;
    so is a `mode` (the route is chosen at the job's start: `read_preset_file`).
    """
    preset, problems, _ = read_preset_file(Path(path), memory_floor_bytes, at_start=False)
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
    checker = TableChecker(Locator(source))
    preset, _ = checker.settings(base, values, ())
    if not preset.name.strip():
        checker.add(("name",), "must be a non-empty string")
    checker.report((), preset_findings(preset, memory_floor_bytes))
    checker.raise_problems()
    return preset


def preset_from_text_fields(
    base: Preset, fields_text: Mapping[str, str], source: str = "preset form"
) -> Preset:
    """Like `preset_from_values`, from text typed in a form: each read as a TOML value.

    `32`, `0.5` and `true` take their types; a name stays text.
    """
    return preset_from_values(
        base, {key: read_typed_text(text) for key, text in fields_text.items()}, source
    )


def checked_preset(
    choice: Preset | str | Path, known: Mapping[str, Preset], memory_floor_bytes: int | None
) -> Preset:
    """The preset a running job switches to: a name in `known`, a preset file, or a value.

    A string ending in `.toml` that is not a known name is a file.  An
    unknown name raises `KeyError`; a bad file or value, or memory limits
    below `memory_floor_bytes`, raise `ConfigError` (one line per problem).
    """
    if isinstance(choice, Path) or (
        isinstance(choice, str) and choice not in known and choice.endswith(".toml")
    ):
        return load_preset_file(Path(choice), memory_floor_bytes)
    if isinstance(choice, str):
        if choice not in known:
            raise KeyError(f"unknown preset {choice!r} (known: {', '.join(sorted(known))})")
        return preset_from_values(
            known[choice], {}, source=f"preset {choice!r}", memory_floor_bytes=memory_floor_bytes
        )
    return preset_from_values(
        choice, {}, source=f"preset {choice.name!r}", memory_floor_bytes=memory_floor_bytes
    )


def save_preset(preset: Preset, path: Path) -> None:
    """Write `preset` as a fresh preset file, loadable wherever a preset name is accepted."""
    path = Path(path)
    header = (
        f"# crawldeck preset {preset.name!r}: give this file's path wherever a preset name "
        "is accepted.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + tomli_w.dumps(plain_values(preset)), encoding="utf-8")
