"""Job configuration in TOML: read it, validate it, write presets back.

The file is read with `tomllib` and turned into the typed values of
`engine.config.settings`.  Precedence is defaults < file < preset < the `--set`
flags the user typed.  Every problem in a file is collected before anything
is raised, each with the file, the line and the dotted key
(`engine.config.toml_source`, `engine.config.table_check`), so one run shows
the user all of them.

Presets, wherever they come from, are checked by `engine.config.presets`.
An edit to the user's own job file is written with `tomlkit`, so their
comments survive.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.config.cluster_table import ClusterSettings, read_cluster_table
from engine.config.config_problem import ConfigError, ConfigProblem, KeyPath, format_key
from engine.config.drift_table import read_drift_table
from engine.config.presets import (
    PRESET_MODE,
    floor_findings,
    preset_findings,
    read_preset_file,
)
from engine.config.prices_table import priced_providers, read_prices_table
from engine.config.route_mode import mixing_findings, providers_in_mode
from engine.config.settings import (
    BUILTIN_PRESETS,
    SIMULATED_DRIFTS,
    CrawlSettings,
    DriftSettings,
    EngineSettings,
    JobConfig,
    JobSettings,
    KeySettings,
    Preset,
    PromptSettings,
    ProviderMode,
    ProviderSettings,
    RateLimitWaits,
    SimulatorSettings,
    plain_values,
)
from engine.config.table_check import (
    Finding,
    TableChecker,
    TypedText,
    a_rate,
    apply_rules,
    at_least_one,
    describe,
    not_negative,
    positive,
    read_typed_text,
    unknown_key_message,
)
from engine.config.toml_source import Locator, parse_toml, read_text
from engine.pipeline.prompt import placeholder_problems, placeholders_in

__all__ = [
    "FLAG_SOURCE",
    "PRESET_FLAG_SOURCE",
    "load_config",
    "missing_key_variables",
    "update_preset_in_file",
]

FLAG_SOURCE = "--set"
"""What a problem names as its file when a `key=value` override caused it."""

PRESET_FLAG_SOURCE = "--preset"
"""What a problem names as its file when the `preset` argument caused it."""

DEFAULT_PRESET = "conservative"


class _FlagAwareLocator(Locator):
    """Places problems in the file, but those at a key a `--set` flag gave: they are the flag's."""

    def __init__(self, file: str, text: str = "", flagged: Sequence[KeyPath] = ()) -> None:
        super().__init__(file, text)
        self._flagged = tuple(flagged)

    def problem(self, path: KeyPath, message: str) -> ConfigProblem:
        if any(path[: len(flag)] == flag for flag in self._flagged):
            return ConfigProblem(FLAG_SOURCE, None, format_key(path), message)
        return super().problem(path, message)


# --------------------------------------------------------------------------
# Rules of the job file's own tables (crawl's and drift's limits are the settings' own)


def _crawl_findings(crawl: CrawlSettings) -> list[Finding]:
    if not crawl.targets.strip():
        return [("targets", "is required: a file of domains or URLs, one per line")]
    return []


def _job_findings(job: JobSettings, crawling: bool = False) -> list[Finding]:
    findings = apply_rules(
        job,
        (
            ("chunk_tokens", at_least_one, "must be at least 1"),
            ("chunk_overlap_tokens", not_negative, "must be 0 or more"),
        ),
    )
    if not job.input.strip() and not crawling:
        findings.append(("input", "is required: a file, a directory or a glob of the documents"))
    if not job.store.strip():
        findings.append(("store", "must name the SQLite file that keeps the results"))
    if job.budget_usd is not None and not (math.isfinite(job.budget_usd) and job.budget_usd > 0):
        findings.append(("budget_usd", "must be more than 0 (US dollars), or left out for no cap"))
    if job.chunk_overlap_tokens >= job.chunk_tokens:
        findings.append(
            (
                "chunk_overlap_tokens",
                f"must be below chunk_tokens ({job.chunk_overlap_tokens} >= {job.chunk_tokens})",
            )
        )
    return findings


def _provider_findings(provider: ProviderSettings) -> list[Finding]:
    findings = apply_rules(
        provider,
        (
            ("price_input_per_m", not_negative, "must be 0 or more"),
            ("price_output_per_m", not_negative, "must be 0 or more"),
            ("request_timeout_s", positive, "must be more than 0"),
            ("max_output_tokens", at_least_one, "must be at least 1"),
            ("batch_price_input_per_m", not_negative, "must be 0 or more"),
            ("batch_price_output_per_m", not_negative, "must be 0 or more"),
            ("batch_deadline_s", positive, "must be more than 0"),
            ("batch_max_requests", at_least_one, "must be at least 1"),
            ("batch_max_bytes", lambda value: value >= 1024, "must be at least 1024"),
            ("batch_poll_s", positive, "must be more than 0"),
            ("batch_poll_max_s", positive, "must be more than 0"),
            ("batch_online_after_s", positive, "must be more than 0"),
        ),
    )
    if provider.batch_poll_max_s < provider.batch_poll_s:
        findings.append(
            ("batch_poll_max_s", f"must be at least batch_poll_s ({provider.batch_poll_s:g})")
        )
    for name in ("name", "base_url", "model"):
        if not getattr(provider, name).strip():
            findings.append((name, "is required"))
    if provider.base_url.strip() and not provider.base_url.startswith(("http://", "https://")):
        findings.append(("base_url", "must start with http:// or https://"))
    return findings


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _key_findings(key: KeySettings) -> list[Finding]:
    findings = apply_rules(
        key,
        (
            ("rpm", positive, "must be more than 0"),
            ("tpm", positive, "must be more than 0"),
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


def _prompt_findings(prompt: PromptSettings) -> list[Finding]:
    findings = apply_rules(
        prompt, (("temperature", lambda value: 0.0 <= value <= 2.0, "must be between 0 and 2"),)
    )
    if not prompt.version.strip():
        findings.append(("version", "must not be empty"))
    if "chunks" not in placeholders_in(prompt.user):
        findings.append(("user", "must contain {chunks}, where the batch's chunks go"))
    findings.extend(placeholder_problems(prompt))
    return findings


def _simulator_findings(simulator: SimulatorSettings) -> list[Finding]:
    findings = apply_rules(
        simulator,
        (
            ("port", lambda value: 0 <= value <= 65535, "must be between 0 and 65535"),
            ("seconds_per_output_token", not_negative, "must be 0 or more"),
            ("fault_5xx", a_rate, "must be between 0 and 1"),
            ("fault_reset", a_rate, "must be between 0 and 1"),
            ("fault_hang", a_rate, "must be between 0 and 1"),
            ("fault_malformed", a_rate, "must be between 0 and 1"),
            ("fault_429", a_rate, "must be between 0 and 1"),
            ("batch_delay_s", not_negative, "must be 0 or more"),
            ("batch_fault_line", a_rate, "must be between 0 and 1"),
            ("batch_fault_fail", a_rate, "must be between 0 and 1"),
            ("batch_fault_expire", a_rate, "must be between 0 and 1"),
            ("limit_scale", positive, "must be more than 0"),
            ("drift_after", not_negative, "must be 0 (never) or more"),
            ("hang_s", positive, "must be more than 0"),
            ("arrival_jitter_s", not_negative, "must be 0 or more"),
            (
                "burst_s",
                lambda value: 0 < value <= 60,
                # A per-minute limit can't let a bucket hold more than its minute.
                "must be more than 0 and at most 60 (seconds of the per-minute limit a key's "
                "bucket holds: 60 a full minute, 1 the minute enforced per second)",
            ),
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
    elif simulator.latency_distribution == "lognormal" and high > 0 and low <= 0:
        findings.append(
            ("latency_s", f"must have a low above 0 for a lognormal latency (got {[low, high]})")
        )
    if not simulator.host.strip():
        findings.append(("host", "must not be empty"))
    return findings


def _rate_limit_waits_findings(waits: RateLimitWaits) -> list[Finding]:
    return apply_rules(
        waits,
        (
            ("key_streak", at_least_one, "must be at least 1"),
            ("key_wait_s", positive, "must be more than 0"),
            ("key_escalations", not_negative, "must be 0 (disable at once) or more"),
            ("key_escalation_s", positive, "must be more than 0"),
            ("batch_429s", at_least_one, "must be at least 1"),
            ("batch_wait_s", positive, "must be more than 0"),
        ),
    )


def _engine_findings(engine: EngineSettings) -> list[Finding]:
    return apply_rules(
        engine,
        (
            ("snapshot_events", at_least_one, "must be at least 1"),
            ("store_batch_rows", at_least_one, "must be at least 1"),
            ("store_batch_ms", at_least_one, "must be at least 1"),
            ("memory_sample_s", positive, "must be more than 0"),
            ("queue_size", at_least_one, "must be at least 1"),
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
    "cluster",
    "prices",
)
# Names people reach for when they paste a secret into the file.
_SECRET_NAMES = frozenset({"key", "api_key", "apikey", "secret", "token", "value", "password"})


def _key_unknown_message(key: str, known: Sequence[str]) -> str:
    if key.lower() in _SECRET_NAMES:
        return (
            "secrets don't belong in the file: put the key in an environment "
            'variable and name it with env = "..."'
        )
    return unknown_key_message(key, known)


class _Reader(TableChecker):
    """Reads the job file's tables into settings values, collecting every problem."""

    def __init__(self, locator: Locator, memory_floor_bytes: int | None = None) -> None:
        super().__init__(locator)
        self.memory_floor_bytes = memory_floor_bytes  # None: memory limits go unchecked
        self.preset_modes: dict[str, ProviderMode] = {}

    def providers(self, value: Any) -> tuple[ProviderSettings, ...]:
        if isinstance(value, TypedText):
            value = value.value
        if value is None or value == []:
            self.add(("providers",), "at least one [[providers]] table is required")
            return ()
        if not isinstance(value, list):
            self.add(("providers",), f"expected [[providers]] tables, got {describe(value)}")
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
        if isinstance(value, TypedText):
            value = value.value
        if value is None or value == []:
            self.add(path, "at least one [[providers.keys]] table with env is required")
            return ()
        if not isinstance(value, list):
            self.add(path, f"expected [[providers.keys]] tables, got {describe(value)}")
            return ()
        keys: list[KeySettings] = []
        for number, item in enumerate(value):
            key_path: KeyPath = (*path, number)
            key, _ = self.settings(
                KeySettings(env=""),
                self.table(item, key_path),
                key_path,
                unknown_message=_key_unknown_message,
            )
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
        preset, extras = self.settings(base, table, path, skip=("name",), extra=PRESET_MODE)
        if "mode" in extras:  # the route of providers without their own (`route_mode`)
            self.preset_modes[name] = extras["mode"]
        self.report(path, preset_findings(preset, self.memory_floor_bytes))
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


def _parse_flags(
    overrides: Sequence[str],
) -> tuple[list[tuple[KeyPath, TypedText]], list[ConfigProblem]]:
    parsed: list[tuple[KeyPath, TypedText]] = []
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
        parsed.append((path, read_typed_text(text)))
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
        if isinstance(node, TypedText):
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
    raw: dict[str, Any], flags: Sequence[tuple[KeyPath, TypedText]], problems: list[ConfigProblem]
) -> list[KeyPath]:
    """Write the flags into the parsed file, so they are checked like the file's own values.

    `preset.*` flags wait for the active preset to be chosen.  Returns the
    paths set, so problems with them are blamed on the flags.
    """
    flagged: list[KeyPath] = []
    reader = _Reader(_FlagAwareLocator(FLAG_SOURCE, flagged=[()]))
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
    text = read_text(path)
    raw = parse_toml(text, file)

    flags, problems = _parse_flags(overrides)
    preset_flags = {p[1]: value for p, value in flags if p[0] == "preset" and len(p) == 2}
    flagged = _merge_flags(raw, flags, problems)

    reader = _Reader(_FlagAwareLocator(file, text, flagged), memory_floor_bytes)
    for key in raw:
        if key not in _SECTIONS:
            reader.add((key,), unknown_key_message(key, _SECTIONS))

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
    prices_table = reader.table(raw.get("prices", {}), ("prices",))
    prices = read_prices_table(reader, prices_table, ("prices",))
    listed = raw.get("providers")
    tables = [t if isinstance(t, dict) else {} for t in listed] if isinstance(listed, list) else []
    providers, unpriced = priced_providers(reader, providers, tables, prices, ("prices",))
    if job.budget_usd is not None:
        for index in unpriced:
            provider = providers[index]
            reader.add(
                ("job", "budget_usd"),
                f"needs every model's price: provider {provider.name!r} gives none for "
                f'{provider.model!r} (add [prices."{provider.model}"] or its '
                "price_input_per_m and price_output_per_m)",
            )
    if job.budget_usd is not None and any(p.mode == "batch" for p in providers):
        reader.add(
            ("job", "budget_usd"),
            "cannot hold in batch mode yet (a batch is paid for as a whole, after it ran): "
            'leave budget_usd out, or send online (no mode = "batch")',
        )
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
    drift = DriftSettings()
    if "drift" in raw:
        drift = read_drift_table(reader, reader.table(raw["drift"], ("drift",)), ("drift",))
    if job.budget_usd is not None and drift.enabled and drift.embeddings:
        reader.add(
            ("job", "budget_usd"),
            "cannot hold with the drift monitor's embedding calls, which are not priced: "
            "set [drift] embeddings = false, or leave budget_usd out",
        )
    cluster: ClusterSettings | None = None
    if "cluster" in raw:
        table = reader.table(raw["cluster"], ("cluster",))
        cluster = read_cluster_table(reader, table, ("cluster",), job.name)
        if any(provider.mode == "batch" for provider in providers):
            reader.add(
                ("cluster",),
                "batch mode cannot be shared by a cluster of workers yet: its batches are "
                'followed by the process that submitted them; remove [cluster] or mode = "batch"',
            )
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
        modes=reader.preset_modes,
    )
    if active is BUILTIN_PRESETS.get(active.name):
        # A built-in the file does not redefine: no table above checked its limits.
        problems.extend(
            reader.locator.problem(("presets", active.name, name), message)
            for name, message in floor_findings(active, memory_floor_bytes)
        )
    if preset_flags:
        active = _apply_preset_flags(
            active, preset_flags, problems, memory_floor_bytes, reader.preset_modes
        )
        catalogue[active.name] = active
    # The preset in force chooses the route of the providers that do not say their own.
    own_mode = [isinstance(table, dict) and "mode" in table for table in tables]
    moved: tuple[str, ...] = ()
    if len(own_mode) == len(providers):
        moved = tuple(p.name for p, own in zip(providers, own_mode, strict=True) if not own)
        mode = reader.preset_modes.get(active.name)
        in_mode = providers_in_mode(providers, own_mode, mode)
        if mode == "batch" and in_mode != providers:
            where = ("presets", active.name, "mode")
            if job.budget_usd is not None:
                problems.append(
                    reader.locator.problem(
                        where,
                        "cannot be batch with [job] budget_usd (a batch is paid for "
                        "as a whole, after it ran): leave one of them out",
                    )
                )
            if cluster is not None:
                problems.append(
                    reader.locator.problem(
                        where, "cannot be batch in a [cluster] job yet: remove one of them"
                    )
                )
        providers = in_mode
    problems.extend(reader.locator.problem(p, m) for p, m in mixing_findings(providers))
    if job.online_sources:
        batch = any(p.mode == "batch" for p in providers)
        online = any(p.mode == "online" for p in providers)
        if not (batch and online):
            problems.append(
                reader.locator.problem(
                    ("job", "online_sources"),
                    "sends these sources online in a job that mixes batch-mode and online "
                    f"providers; this one has {'no online' if batch else 'no batch-mode'} "
                    "provider: add one, or leave online_sources out",
                )
            )

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
        cluster=cluster,
        preset_modes=reader.preset_modes,
        mode_from_preset=moved,
        source=path,
        set_by_flags=tuple(sorted({format_key(flag) for flag in flagged})),
    )


def _choose_preset(
    catalogue: dict[str, Preset],
    *,
    argument: str | None,
    in_job: str | None,
    in_job_flagged: bool,
    locator: Locator,
    base_dir: Path,
    problems: list[ConfigProblem],
    memory_floor_bytes: int | None = None,
    modes: dict[str, ProviderMode] | None = None,
) -> Preset:
    """The active preset: `--set job.preset` > the `preset` argument > `[job] preset`.

    A preset file's `mode` goes into `modes` by the preset's name, as a table's does.
    """
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
        loaded, file_problems, mode = read_preset_file(found, memory_floor_bytes)
        problems.extend(file_problems)
        catalogue[loaded.name] = loaded
        if modes is not None and mode is not None:
            modes[loaded.name] = mode
        return loaded
    available = ", ".join(sorted(catalogue))
    complain(f"unknown preset {choice!r} (available: {available}; or the path of a preset file)")
    return catalogue[DEFAULT_PRESET]


def _apply_preset_flags(
    active: Preset,
    flags: Mapping[str | int, TypedText],
    problems: list[ConfigProblem],
    memory_floor_bytes: int | None = None,
    modes: dict[str, ProviderMode] | None = None,
) -> Preset:
    reader = _Reader(_FlagAwareLocator(FLAG_SOURCE, flagged=[()]))
    table = {str(key): value for key, value in flags.items()}
    changed, extras = reader.settings(active, table, ("preset",), extra=PRESET_MODE)
    if modes is not None and "mode" in extras:  # `--set preset.mode=batch`
        modes[changed.name] = extras["mode"]

    def findings(preset: Preset) -> list[Finding]:
        return preset_findings(preset, memory_floor_bytes)

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
        try:
            text = read_text(Path(config.source))
        except ConfigError:
            text = ""  # changed or gone since it was loaded: the problems just lack lines
    locator = Locator(file, text)
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
    text = read_text(config_path)
    try:
        document = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(
            [ConfigProblem(str(config_path), exc.line, "", f"invalid TOML: {exc}")]
        ) from None

    values = {name: value for name, value in plain_values(preset).items() if name != "name"}
    presets: Any = document.get("presets")
    if presets is None:
        # A super table renders as `[presets.NAME]` alone, without an empty `[presets]`.
        presets = tomlkit.table(is_super_table=True)
        document.append("presets", presets)
    elif not isinstance(presets, dict):
        raise ConfigError(
            [Locator(str(config_path), text).problem(("presets",), "expected a table")]
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
            [Locator(str(config_path), text).problem(("presets", preset.name), "expected a table")]
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
