"""Quality gates: which drift metrics exist, when each trips, and what a trip does.

`DriftSettings` is the typed `[drift]` table; `parse_drift_settings` turns
the raw TOML table into it and names the key of every problem, e.g.

    job.toml: drift.gates.cost.action: must be one of warn, conservative, pause, stop (got 'paws')

A user's gate table overrides the default gate of that metric field by
field, so `latency = { threshold = 0.4 }` keeps latency's default action.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

__all__ = [
    "DEFAULT_GATES",
    "METRICS",
    "DriftSettings",
    "DriftSettingsError",
    "DriftSettingsProblem",
    "Gate",
    "GateAction",
    "parse_drift_settings",
]


class GateAction(StrEnum):
    """What the engine does when a gate trips, mildest first."""

    WARN = "warn"  # an event, nothing else
    CONSERVATIVE = "conservative"  # switch to the conservative preset
    PAUSE = "pause"  # stop dispatching until the operator resumes
    STOP = "stop"  # drain and end the job


METRICS: tuple[str, ...] = (
    "output_tokens",  # PSI of output tokens per chunk, per answer
    "answer_chars",  # PSI of each result's JSON length
    "items",  # PSI of items extracted per chunk
    "latency",  # PSI of answer latency
    "cost",  # PSI of cost per chunk, per answer
    "parse_failures",  # z of the rate of answers that are not the expected JSON
    "missing_ids",  # z of the rate of parsed answers that left out chunk ids
    "refusals",  # z of the rate of empty or refusal-like results
    "sudden_shift",  # features whose mean jumped within the window (Page-Hinkley)
    "embeddings",  # cosine distance of the outputs' embedding centroid
)
"""Every metric a gate can name, in the order the dashboard shows them."""


@dataclass(frozen=True, slots=True)
class Gate:
    """Trip `metric` when its statistic reaches `threshold`; then do `action`."""

    metric: str
    threshold: float
    action: GateAction = GateAction.WARN


# Why these thresholds (noise measured on synthetic answers, 100,000 results
# in 10 runs, by tests/benchmarks/drift_overhead.py): PSI 0.25 is the usual
# "large shift" line; the monitor's PSI, net of chance, peaked at 0.15–0.21
# without drift.  z 4.0 is rare by chance (one-sided p ≈ 3e-5 per evaluation;
# noise peaked at 3.1) yet reached by a jump of a few percent to a third
# within one window.  One sudden shift is worth a trip.  A cosine distance of
# 0.1 between centroids is ~7× the noise of topical outputs (mean 0.015,
# peak 0.04) but depends on the embedding model: see `baseline show`'s spread.
# Actions default to warn or the conservative preset, never pause or stop: a
# headless job paused by a gate nobody chose waits forever.  A job file asks
# for pause or stop where its operators want them (config.example.toml does).
DEFAULT_GATES: tuple[Gate, ...] = (
    Gate("output_tokens", 0.25, GateAction.WARN),
    Gate("answer_chars", 0.25, GateAction.WARN),
    Gate("items", 0.25, GateAction.WARN),
    Gate("latency", 0.25, GateAction.CONSERVATIVE),
    Gate("cost", 0.25, GateAction.WARN),
    Gate("parse_failures", 4.0, GateAction.CONSERVATIVE),
    Gate("missing_ids", 4.0, GateAction.WARN),
    Gate("refusals", 4.0, GateAction.WARN),
    Gate("sudden_shift", 1.0, GateAction.WARN),
    Gate("embeddings", 0.1, GateAction.WARN),
)

_MIN_SAMPLES = 20  # below this no statistic here means anything


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """How the drift monitor learns, looks and judges.

    Sizes count samples of each metric's own unit: results for per-chunk
    metrics, answers for per-answer ones.  The baseline is done when it
    holds `baseline_size` of both.  Every `evaluate_every` results (or
    failed answers) each metric whose window holds `min_window` samples is
    evaluated against its gate.
    """

    enabled: bool = True
    baseline_size: int = 200
    window_size: int = 200
    evaluate_every: int = 25
    min_window: int = 100
    gates: tuple[Gate, ...] = DEFAULT_GATES
    embeddings: bool = False
    embedding_model: str = "text-embedding-3-small"  # asked of the job's own keys

    def __post_init__(self) -> None:
        sizes = {key: getattr(self, key) for key in _SIZE_KEYS}
        problems = _size_problems(sizes, given=set(_SIZE_KEYS))
        seen: set[str] = set()
        for gate in self.gates:
            if gate.metric not in METRICS:
                problems.append((f"gates.{gate.metric}", _unknown_metric(gate.metric)))
            elif gate.metric in seen:
                problems.append((f"gates.{gate.metric}", "has two gates"))
            elif not _valid_threshold(gate.threshold):
                problems.append((f"gates.{gate.metric}.threshold", "must be a positive number"))
            seen.add(gate.metric)
        if problems:
            raise DriftSettingsError(
                [DriftSettingsProblem("", f"drift.{key}", message) for key, message in problems]
            )

    def gate(self, metric: str) -> Gate | None:
        """The gate of `metric`, or None if it has none."""
        return next((gate for gate in self.gates if gate.metric == metric), None)


@dataclass(frozen=True, slots=True)
class DriftSettingsProblem:
    """One thing wrong with a `[drift]` table: the file, the dotted key, what is wrong."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.file}: {self.key}: {self.message}"
            if self.file
            else f"{self.key}: {self.message}"
        )


class DriftSettingsError(ValueError):
    """A `[drift]` table that can't be used; `problems` has every reason, one line each."""

    def __init__(self, problems: list[DriftSettingsProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))

    @property
    def keys(self) -> tuple[str, ...]:
        """The dotted keys at fault, in the order found."""
        return tuple(problem.key for problem in self.problems)


_SIZE_KEYS = ("baseline_size", "window_size", "evaluate_every", "min_window")
_BOOL_KEYS = ("enabled", "embeddings")
_GATE_KEYS = ("threshold", "action")


def parse_drift_settings(raw: Mapping[str, Any], file: str) -> DriftSettings:
    """The `[drift]` table's contents (as `tomllib` gives them) as settings.

    Unknown keys are refused.  Every problem is collected before raising
    `DriftSettingsError`, so one run shows the user all of them.
    """
    problems: list[DriftSettingsProblem] = []

    def problem(key: str, message: str) -> None:
        problems.append(DriftSettingsProblem(file, f"drift.{key}", message))

    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SIZE_KEYS:
            if isinstance(value, bool) or not isinstance(value, int):
                problem(key, f"must be a whole number (got {_shown(value)})")
            else:
                values[key] = value
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                problem(key, f"must be true or false (got {_shown(value)})")
            else:
                values[key] = value
        elif key == "gates":
            values["gates"] = _parse_gates(value, problem)
        elif key == "embedding_model":
            if not isinstance(value, str) or not value.strip():
                problem(key, f"must name a model (got {_shown(value)})")
            else:
                values[key] = value
        else:
            known = ", ".join((*_SIZE_KEYS, *_BOOL_KEYS, "embedding_model", "gates"))
            problem(key, f"unknown key (known: {known})")
    defaults = DriftSettings()
    given = {key for key in _SIZE_KEYS if key in values}
    sizes = {key: values.get(key, getattr(defaults, key)) for key in _SIZE_KEYS}
    for key, message in _size_problems(sizes, given):
        problem(key, message)
    if problems:
        raise DriftSettingsError(problems)
    return replace(defaults, **values)


def _parse_gates(raw: Any, problem: Any) -> tuple[Gate, ...]:
    """The default gates with the user's overrides applied."""
    gates = {gate.metric: gate for gate in DEFAULT_GATES}
    if not isinstance(raw, Mapping):
        problem("gates", "must be a table like { output_tokens = { threshold = 0.25 } }")
        return tuple(gates.values())
    for metric, table in raw.items():
        key = f"gates.{metric}"
        if metric not in METRICS:
            problem(key, _unknown_metric(metric))
            continue
        if not isinstance(table, Mapping):
            example = '{ threshold = 0.25, action = "warn" }'
            problem(key, f"must be a table like {example} (got {_shown(table)})")
            continue
        gate = gates[metric]
        for name, value in table.items():
            if name == "threshold":
                if _valid_threshold(value):
                    gate = replace(gate, threshold=float(value))
                else:
                    problem(f"{key}.threshold", f"must be a positive number (got {_shown(value)})")
            elif name == "action":
                if isinstance(value, str) and value in GateAction.__members__.values():
                    gate = replace(gate, action=GateAction(value))
                else:
                    choices = ", ".join(action.value for action in GateAction)
                    problem(f"{key}.action", f"must be one of {choices} (got {_shown(value)})")
            else:
                problem(f"{key}.{name}", f"unknown key (known: {', '.join(_GATE_KEYS)})")
        gates[metric] = gate
    return tuple(gates.values())


def _shown(value: Any) -> str:
    """A value as the user wrote it in TOML, near enough: `true`, not `True`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _valid_threshold(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _unknown_metric(metric: str) -> str:
    return f"no such metric {metric!r} (metrics: {', '.join(METRICS)})"


def _size_problems(sizes: Mapping[str, int], given: set[str]) -> list[tuple[str, str]]:
    """(key, message) for each size out of range or at odds with `window_size`.

    When two sizes disagree, the one the user wrote (`given`) is named, so
    shrinking `window_size` below the default `min_window` blames `window_size`.
    """
    problems: list[tuple[str, str]] = []
    floors = {
        "baseline_size": _MIN_SAMPLES,
        "window_size": _MIN_SAMPLES,
        "evaluate_every": 1,
        "min_window": _MIN_SAMPLES,
    }
    for key, floor in floors.items():
        if sizes[key] < floor:
            problems.append((key, f"must be at least {floor} (got {sizes[key]})"))
    window = sizes["window_size"]
    for key in ("evaluate_every", "min_window"):
        if sizes[key] <= window or any(k == key for k, _ in problems):
            continue
        if "window_size" in given and key not in given:
            problems.append(("window_size", f"must be at least {key} {sizes[key]} (got {window})"))
        else:
            problems.append((key, f"must be at most window_size {window} (got {sizes[key]})"))
    return problems
