"""The `[drift]` table: defaults for every metric, overrides field by field, and
every problem refused with its file and key named."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from engine.config.config_problem import ConfigError
from engine.config.drift_table import parse_drift_settings
from engine.config.job_file import load_config
from engine.config.settings import DEFAULT_GATES, METRICS, DriftSettings, Gate, GateAction

EXAMPLE = """
[drift]
baseline_size = 300
window_size = 250

[drift.gates]
output_tokens = { threshold = 0.3, action = "warn" }      # PSI
parse_failures = { threshold = 5.0, action = "pause" }    # z-score
latency = { threshold = 0.4 }                             # keeps its default action
"""


def drift_table(text: str) -> dict[str, Any]:
    return tomllib.loads(text)["drift"]


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_drift_settings(raw, "job.toml")
    return str(caught.value).splitlines()


def test_every_metric_has_one_default_gate() -> None:
    assert [gate.metric for gate in DEFAULT_GATES] == list(METRICS)
    settings = DriftSettings()
    assert settings.enabled and not settings.embeddings
    assert (settings.baseline_size, settings.window_size) == (200, 200)
    assert (settings.evaluate_every, settings.min_window) == (25, 100)
    # Malformed output gets smaller batches: slowing down would not mend it.
    assert settings.gate("parse_failures") == Gate(
        "parse_failures", 4.0, GateAction.SMALLER_BATCHES
    )
    assert settings.gate("nonsense") is None
    # No default stops or pauses a job: a headless run would wait forever.
    held = {GateAction.SMALLER_BATCHES, GateAction.CONSERVATIVE}
    assert {gate.action for gate in DEFAULT_GATES} <= {GateAction.WARN, *held}
    # Only latency and server errors, which load can cause, may slow the job down.
    assert [g.metric for g in DEFAULT_GATES if g.action is GateAction.CONSERVATIVE] == [
        "latency",
        "server_errors",
    ]
    assert settings.gate("server_errors") == Gate("server_errors", 4.0, GateAction.CONSERVATIVE)


def test_an_empty_table_is_the_defaults() -> None:
    assert parse_drift_settings({}, "job.toml") == DriftSettings()


def test_the_example_table_overrides_only_what_it_names() -> None:
    settings = parse_drift_settings(drift_table(EXAMPLE), "job.toml")

    assert (settings.baseline_size, settings.window_size) == (300, 250)
    assert settings.evaluate_every == 25
    assert settings.gate("output_tokens") == Gate("output_tokens", 0.3, GateAction.WARN)
    assert settings.gate("parse_failures") == Gate("parse_failures", 5.0, GateAction.PAUSE)
    # A partial gate keeps the default action; untouched gates keep everything.
    assert settings.gate("latency") == Gate("latency", 0.4, GateAction.CONSERVATIVE)
    assert settings.gate("refusals") == DriftSettings().gate("refusals")
    assert [gate.metric for gate in settings.gates] == list(METRICS)


def test_a_job_file_may_set_the_server_errors_gate_and_is_told_its_mistakes_by_line(
    tmp_path: Path,
) -> None:
    job = tmp_path / "job.toml"
    minimal = (
        '[job]\ninput = "docs"\n\n[[providers]]\nname = "p"\n'
        'base_url = "https://api.example.com/v1"\nmodel = "m"\n\n'
        '[[providers.keys]]\nenv = "KEY"\n\n'
    )
    job.write_text(
        minimal + '[drift.gates]\nserver_errors = { threshold = 6.0, action = "pause" }\n'
    )
    assert load_config(job).drift.gate("server_errors") == Gate(
        "server_errors", 6.0, GateAction.PAUSE
    )

    job.write_text(
        minimal + '[drift.gates]\nserver_errors = { threshold = 0, action = "slower" }\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(job)
    line = minimal.count("\n") + 2
    assert str(caught.value).splitlines() == [
        f"{job}:{line}: drift.gates.server_errors.threshold: must be a positive number (got 0)",
        f"{job}:{line}: drift.gates.server_errors.action: "
        "must be one of warn, smaller_batches, conservative, pause, stop (got 'slower')",
    ]


def test_a_bad_action_is_named_on_one_line() -> None:
    raw = drift_table('[drift.gates]\noutput_tokens = { threshold = 0.25, action = "paws" }')
    assert problems_of(raw) == [
        "job.toml: drift.gates.output_tokens.action: "
        "must be one of warn, smaller_batches, conservative, pause, stop (got 'paws')"
    ]


@pytest.mark.parametrize(
    ("toml", "key", "says"),
    [
        ("window = 200", "drift.window", "unknown key"),
        ("baseline_size = 20.5", "drift.baseline_size", "whole number"),
        ("baseline_size = true", "drift.baseline_size", "whole number"),
        ("baseline_size = 5", "drift.baseline_size", "at least 20"),
        ("enabled = 'yes'", "drift.enabled", "true or false"),
        ("evaluate_every = 0", "drift.evaluate_every", "at least 1"),
        ("evaluate_every = 500", "drift.evaluate_every", "at most window_size 200"),
        ("min_window = 300", "drift.min_window", "at most window_size 200"),
        # The default min_window (100) only conflicts because window_size changed.
        ("window_size = 50", "drift.window_size", "at least min_window 100"),
        ("gates = 3", "drift.gates", "must be a table"),
        ("[drift.gates]\nlatncy = { threshold = 1 }", "drift.gates.latncy", "no such metric"),
        ("[drift.gates]\nlatency = 0.3", "drift.gates.latency", "must be a table"),
        (
            "[drift.gates]\nlatency = { threshold = -1 }",
            "drift.gates.latency.threshold",
            "positive",
        ),
        ("[drift.gates]\nlatency = { threshold = 'high' }", "drift.gates.latency.threshold", ""),
        ("[drift.gates]\nlatency = { threshold = inf }", "drift.gates.latency.threshold", ""),
        ("[drift.gates]\nlatency = { action = 3 }", "drift.gates.latency.action", "one of"),
        ("[drift.gates]\nlatency = { limit = 3 }", "drift.gates.latency.limit", "unknown key"),
    ],
)
def test_each_problem_names_its_key(toml: str, key: str, says: str) -> None:
    lines = problems_of(drift_table(f"[drift]\n{toml}"))
    assert len(lines) == 1
    assert lines[0].startswith(f"job.toml: {key}: ")
    assert says in lines[0]


def test_every_problem_is_reported_at_once() -> None:
    raw = drift_table(
        '[drift]\nwindow_size = "big"\nembeddings = 1\n'
        '[drift.gates]\ncost = { action = "paws" }\nrefusals = { threshold = 0 }'
    )
    with pytest.raises(ConfigError) as caught:
        parse_drift_settings(raw, "job.toml")
    assert isinstance(caught.value, ValueError)
    assert caught.value.keys == (
        "drift.window_size",
        "drift.embeddings",
        "drift.gates.cost.action",
        "drift.gates.refusals.threshold",
    )


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"drift\.min_window"):
        DriftSettings(window_size=50)
    with pytest.raises(ConfigError, match=r"drift\.gates\.speed: no such metric"):
        DriftSettings(gates=(Gate("speed", 1.0),))
    with pytest.raises(ConfigError, match="has two gates"):
        DriftSettings(gates=(Gate("cost", 1.0), Gate("cost", 2.0)))
    with pytest.raises(ConfigError, match=r"drift\.gates\.cost\.threshold"):
        DriftSettings(gates=(Gate("cost", float("nan")),))
