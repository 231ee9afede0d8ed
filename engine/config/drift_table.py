"""Reading the `[drift]` table into `DriftSettings`, naming the key of every problem, e.g.

    job.toml:28: drift.window_size: must be at least min_window 100 (got 50)

A user's gate table overrides the default gate of that metric field by
field, so `latency = { threshold = 0.4 }` keeps latency's default action.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from engine.config.config_problem import KeyPath
from engine.config.settings import (
    DEFAULT_GATES,
    DRIFT_SIZE_KEYS,
    METRICS,
    DriftSettings,
    Gate,
    GateAction,
    drift_size_findings,
    unknown_metric,
    valid_threshold,
)
from engine.config.table_check import TableChecker, WrongType
from engine.config.toml_source import Locator

__all__ = ["parse_drift_settings", "read_drift_table"]


def parse_drift_settings(raw: Mapping[str, Any], file: str) -> DriftSettings:
    """The `[drift]` table's contents (as `tomllib` gives them) as settings.

    Unknown keys are refused.  Every problem is collected before raising
    `ConfigError` (naming `file` and the key, without a line: there is no
    text here to find one in), so one run shows the user all of them.
    """
    checker = TableChecker(Locator(file))
    settings = read_drift_table(checker, raw, ("drift",))
    checker.raise_problems()
    return settings


def read_drift_table(checker: TableChecker, raw: Mapping[str, Any], path: KeyPath) -> DriftSettings:
    """The table at `path` as settings; its problems go to `checker` (then: the defaults)."""
    before = len(checker.problems)
    values = checker.values(
        raw,
        path,
        {
            **{key: _whole_number for key in DRIFT_SIZE_KEYS},
            "enabled": _true_or_false,
            "embeddings": _true_or_false,
            "embedding_model": _model_name,
            "gates": lambda table: table,  # read below, metric by metric
        },
    )
    if "gates" in values:
        values["gates"] = _read_gates(checker, values["gates"], (*path, "gates"))
    defaults = DriftSettings()
    given = {key for key in DRIFT_SIZE_KEYS if key in values}
    sizes = {key: values.get(key, getattr(defaults, key)) for key in DRIFT_SIZE_KEYS}
    checker.report(path, drift_size_findings(sizes, given))
    if len(checker.problems) > before:
        return defaults
    return replace(defaults, **values)


def _read_gates(checker: TableChecker, raw: Any, path: KeyPath) -> tuple[Gate, ...]:
    """The default gates with the user's overrides applied."""
    gates = {gate.metric: gate for gate in DEFAULT_GATES}
    if not isinstance(raw, Mapping):
        checker.add(path, "must be a table like { output_tokens = { threshold = 0.25 } }")
        return tuple(gates.values())
    for metric, table in raw.items():
        if metric not in METRICS:
            checker.add((*path, metric), unknown_metric(metric))
            continue
        if not isinstance(table, Mapping):
            example = '{ threshold = 0.25, action = "warn" }'
            checker.add((*path, metric), f"must be a table like {example} (got {_shown(table)})")
            continue
        changes = checker.values(
            table, (*path, metric), {"threshold": _threshold, "action": _gate_action}
        )
        gates[metric] = replace(gates[metric], **changes)
    return tuple(gates.values())


def _whole_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WrongType(f"must be a whole number (got {_shown(value)})")
    return value


def _true_or_false(value: Any) -> bool:
    if not isinstance(value, bool):
        raise WrongType(f"must be true or false (got {_shown(value)})")
    return value


def _model_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise WrongType(f"must name a model (got {_shown(value)})")
    return value


def _threshold(value: Any) -> float:
    if not valid_threshold(value):
        raise WrongType(f"must be a positive number (got {_shown(value)})")
    return float(value)


def _gate_action(value: Any) -> GateAction:
    if isinstance(value, str) and value in GateAction.__members__.values():
        return GateAction(value)
    choices = ", ".join(action.value for action in GateAction)
    raise WrongType(f"must be one of {choices} (got {_shown(value)})")


def _shown(value: Any) -> str:
    """A value as the user wrote it in TOML, near enough: `true`, not `True`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
