"""How a job's TOML file becomes settings, and how presets are written back."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config.config_problem import ConfigError, ConfigProblem
from engine.config.job_file import load_config, missing_key_variables, update_preset_in_file
from engine.config.presets import load_preset_file, save_preset
from engine.config.settings import (
    BUILTIN_PRESETS,
    EngineSettings,
    JobSettings,
    Preset,
    PromptSettings,
    RateLimitWaits,
    SimulatorSettings,
    effective_settings,
)

REPO = Path(__file__).resolve().parents[3]

MINIMAL = """\
[job]
input = "docs"

[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"

[[providers.keys]]
env = "OPENAI_API_KEY"
"""


def write(folder: Path, text: str, name: str = "job.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, **kwargs: object) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return caught.value.problems


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of `path` that starts with `text`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, start=1) if line.strip().startswith(text))


# --- defaults and precedence -------------------------------------------------


def test_a_minimal_file_gets_every_other_setting_from_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)

    config = load_config(path)

    assert config.source == path
    assert config.job == JobSettings(
        input=str(tmp_path / "docs"), store=str(tmp_path / "crawldeck.db")
    )
    assert config.prompt == PromptSettings()
    assert config.simulator == SimulatorSettings()
    assert config.engine == EngineSettings()
    assert config.presets == BUILTIN_PRESETS
    assert config.preset == BUILTIN_PRESETS["conservative"]
    (provider,) = config.providers
    assert (provider.name, provider.model, provider.max_output_tokens) == (
        "openai",
        "gpt-4o-mini",
        1024,
    )
    assert [(key.env, key.alias, key.rpm, key.tpm) for key in provider.keys] == [
        ("OPENAI_API_KEY", "openai-1", None, None)
    ]


def test_relative_paths_in_the_file_are_relative_to_the_files_folder(tmp_path: Path) -> None:
    path = write(tmp_path / "jobs", MINIMAL.replace('input = "docs"', 'input = "../in/*.txt"'))

    job = load_config(path).job

    assert job.input == str(tmp_path / "jobs" / ".." / "in" / "*.txt")
    assert job.store == str(tmp_path / "jobs" / "crawldeck.db")


def test_absolute_paths_in_the_file_are_kept(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "out.db"
    path = write(tmp_path, MINIMAL.replace("[job]\n", f'[job]\nstore = "{elsewhere}"\n'))

    assert load_config(path).job.store == str(elsewhere)


def test_values_in_the_file_beat_the_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
        [prompt]
        version = "7"

        [simulator]
        autostart = true
        latency_s = [0, 0.25]

        [engine]
        queue_size = 64
        """,
    )

    config = load_config(path)

    assert config.prompt.version == "7"
    assert config.simulator.autostart is True
    assert config.simulator.latency_s == (0.0, 0.25)
    assert config.engine.queue_size == 64


def test_a_preset_table_inherits_from_the_builtin_of_its_name_else_from_the_defaults(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
        [presets.aggressive]
        concurrency = 8

        [presets.tiny]
        batch_size = 2
        """,
    )

    presets = load_config(path).presets

    assert presets["aggressive"] == replace(BUILTIN_PRESETS["aggressive"], concurrency=8)
    assert presets["tiny"] == Preset(name="tiny", batch_size=2)
    assert presets["conservative"] == BUILTIN_PRESETS["conservative"]


def test_the_file_chooses_the_active_preset(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace("[job]\n", '[job]\npreset = "aggressive"\n')
        + "\n[presets.aggressive]\nbatch_size = 3\n",
    )

    assert load_config(path).preset == replace(BUILTIN_PRESETS["aggressive"], batch_size=3)


def test_the_preset_argument_beats_the_files_choice(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("[job]\n", '[job]\npreset = "aggressive"\n'))

    assert load_config(path, preset="conservative").preset == BUILTIN_PRESETS["conservative"]


def test_overrides_beat_the_preset_and_change_only_what_they_name(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[presets.aggressive]\nbatch_size = 3\n")

    config = load_config(path, preset="aggressive", overrides=["preset.concurrency=32"])

    expected = replace(BUILTIN_PRESETS["aggressive"], batch_size=3, concurrency=32)
    assert config.preset == expected
    assert config.presets["aggressive"] == expected


def test_overrides_reach_every_section_and_read_their_values_as_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL)
    shell_folder = tmp_path / "shell"
    shell_folder.mkdir()
    monkeypatch.chdir(shell_folder)

    config = load_config(
        path,
        overrides=[
            "job.store=x.db",
            "prompt.version=2",
            "simulator.fault_5xx=0.02",
            "simulator.latency_s=[0.1, 0.2]",
            "providers[0].keys[0].rpm = 100",
            "presets.aggressive.batch_size=12",
            "job.preset=aggressive",
        ],
    )

    # A path typed on the command line is the shell's, not the file's.
    assert config.job.store == str(shell_folder / "x.db")
    assert config.job.input == str(tmp_path / "docs")
    assert config.prompt.version == "2"
    assert config.simulator.fault_5xx == 0.02
    assert config.simulator.latency_s == (0.1, 0.2)
    assert config.providers[0].keys[0].rpm == 100
    assert config.preset == replace(BUILTIN_PRESETS["aggressive"], batch_size=12)


def test_a_preset_can_come_from_a_file_named_by_its_stem(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    preset_file = write(tmp_path, "concurrency = 3\nbatch_delay_s = 1\n", name="night.toml")

    config = load_config(path, preset=str(preset_file), overrides=["preset.batch_size=2"])

    assert config.preset == Preset(name="night", concurrency=3, batch_delay_s=1.0, batch_size=2)
    assert config.presets["night"] == config.preset


def test_a_preset_file_may_name_itself(tmp_path: Path) -> None:
    preset_file = write(tmp_path, 'name = "steady"\nconcurrency = 5\n', name="p.toml")

    assert load_preset_file(preset_file) == Preset(name="steady", concurrency=5)


def test_save_preset_writes_a_file_that_loads_back_as_the_same_preset(tmp_path: Path) -> None:
    preset = Preset(name="night", concurrency=3, backoff_max_s=12.5, adaptive_concurrency=False)
    preset_file = tmp_path / "presets" / "night.toml"

    save_preset(preset, preset_file)

    assert load_preset_file(preset_file) == preset
    assert load_config(write(tmp_path, MINIMAL), preset=str(preset_file)).preset == preset


def test_an_unknown_preset_name_lists_the_available_ones(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[presets.night]\nconcurrency = 2\n")

    (problem,) = problems_of(path, preset="nigth")

    assert str(problem) == (
        "--preset: unknown preset 'nigth' "
        "(available: aggressive, conservative, night; or the path of a preset file)"
    )


# --- problems ----------------------------------------------------------------


def test_an_unknown_key_suggests_the_right_one_at_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
        # faster, for the night shift
        [presets.aggressive]
        batch_size = 8
        concurency = 96
        """,
    )

    (problem,) = problems_of(path)

    assert str(problem) == (
        f"{path}:{line_of(path, 'concurency')}: presets.aggressive.concurency: "
        "unknown key (did you mean 'concurrency'?)"
    )


def test_every_problem_is_reported_at_once_one_line_each_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [job]
        input = "docs"
        chunk_tokens = 100
        chunk_overlap_tokens = 100

        [[providers]]
        name = "openai"
        base_url = "https://api.openai.com/v1"
        model = "gpt-4o-mini"

        [[providers.keys]]
        env = "OPENAI_KEY_1"

        [[providers.keys]]
        alais = "second"

        [prompt]
        temprature = 0.2

        [simulator]
        fault_5xx = 2
        """,
    )

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    problems = caught.value.problems
    assert [(p.line, p.key) for p in problems] == [
        (4, "job.chunk_overlap_tokens"),
        # The missing env has no line of its own: it points at its [[providers.keys]] header.
        (14, "providers[0].keys[1].env"),
        (15, "providers[0].keys[1].alais"),
        (18, "prompt.temprature"),
        (21, "simulator.fault_5xx"),
    ]
    assert str(caught.value).splitlines() == [str(p) for p in problems]
    assert str(problems[2]).endswith("unknown key (did you mean 'alias'?)")


def test_a_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[job]\nname = "x"\ninput = \n')

    (problem,) = problems_of(path)

    assert (problem.file, problem.line) == (str(path), 3)
    assert str(problem).startswith(f"{path}:3: invalid TOML: ")


def test_a_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "nope.toml")

    assert str(problem) == f"{tmp_path / 'nope.toml'}: file not found"


@pytest.mark.parametrize(
    ("table", "line", "message"),
    [
        ("presets.x", 'concurrency = "8"', "expected an integer, got a string"),
        ("presets.x", "concurrency = true", "expected an integer, got true/false"),
        ("presets.x", "concurrency = 8.0", "expected an integer, got a number"),
        ("presets.x", 'backoff_base_s = "1"', "expected a number, got a string"),
        ("presets.x", "adaptive_concurrency = 1", "expected true or false, got an integer"),
        ("job", "name = 3", "expected a string, got an integer"),
        ("job", 'input_format = "pdf"', "must be one of 'auto', 'text', 'csv', 'jsonl', "),
        ("simulator", "latency_s = [1]", "expected an array of 2 numbers, got an array"),
        ("simulator", 'latency_s = [1, "2"]', "expected an array of 2 numbers"),
        ("simulator", "latency_s = 1.0", "expected an array of 2 numbers, got a number"),
    ],
)
def test_values_of_the_wrong_type_are_refused(
    tmp_path: Path, table: str, line: str, message: str
) -> None:
    if table == "job":
        path = write(tmp_path, MINIMAL.replace("[job]\n", f"[job]\n{line}\n"))
    else:
        path = write(tmp_path, MINIMAL + f"\n[{table}]\n{line}\n")

    (problem,) = problems_of(path)

    assert message in problem.message
    assert problem.line == line_of(path, line)


def test_an_integer_is_a_fine_number_for_a_float_setting(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[presets.x]\nbackoff_base_s = 1\n")

    backoff = load_config(path).presets["x"].backoff_base_s

    assert backoff == 1.0
    assert isinstance(backoff, float)


@pytest.mark.parametrize(
    ("table", "lines", "key", "message"),
    [
        ("presets.x", "concurrency = 0", "concurrency", "must be from 1 to 4096 (got 0)"),
        ("presets.x", "batch_size = 0", "batch_size", "must be from 1 to 1000 (got 0)"),
        ("presets.x", "max_retries = -1", "max_retries", "must be 0 or more (got -1)"),
        ("presets.x", "request_timeout_s = 0", "request_timeout_s", "must be more than 0"),
        (
            "presets.x",
            "memory_soft_mb = 2048\nmemory_hard_mb = 2048",
            "memory_soft_mb",
            "must be below memory_hard_mb (2048 >= 2048)",
        ),
        ("simulator", "fault_hang = 1.5", "fault_hang", "must be between 0 and 1 (got 1.5)"),
        ("simulator", "latency_s = [2, 1]", "latency_s", "0 <= low <= high"),
        ("simulator", "latency_s = [-1, 1]", "latency_s", "0 <= low <= high"),
        ("engine", "queue_size = 0", "queue_size", "must be at least 1 (got 0)"),
        ("simulator", "fault_429 = 2", "fault_429", "must be between 0 and 1 (got 2.0)"),
        ("simulator", "burst_s = 0", "burst_s", "must be more than 0 and at most 60"),
        ("simulator", "burst_s = 61", "burst_s", "must be more than 0 and at most 60"),
        ("simulator", "hang_s = 0", "hang_s", "must be more than 0 (got 0.0)"),
        ("simulator", "arrival_jitter_s = -0.1", "arrival_jitter_s", "must be 0 or more"),
        (
            "simulator",
            'latency_distribution = "lognormal"\nlatency_s = [0, 2]',
            "latency_s",
            "must have a low above 0 for a lognormal latency",
        ),
        ("simulator", 'latency_distribution = "normal"', "latency_distribution", "'lognormal'"),
        ("rate_limit_waits", "key_streak = 0", "key_streak", "must be at least 1 (got 0)"),
        ("rate_limit_waits", "key_wait_s = 0", "key_wait_s", "must be more than 0"),
        ("rate_limit_waits", "key_escalations = -1", "key_escalations", "must be 0 (disable"),
        ("rate_limit_waits", "key_escalation_s = 0", "key_escalation_s", "must be more than 0"),
        ("rate_limit_waits", "batch_429s = 0", "batch_429s", "must be at least 1 (got 0)"),
        ("rate_limit_waits", "batch_wait_s = -3", "batch_wait_s", "must be more than 0"),
    ],
)
def test_values_out_of_range_are_refused(
    tmp_path: Path, table: str, lines: str, key: str, message: str
) -> None:
    path = write(tmp_path, MINIMAL + f"\n[{table}]\n{lines}\n")

    (problem,) = problems_of(path)

    assert problem.key == f"{table}.{key}"
    assert message in problem.message


def test_the_simulators_bucket_size_and_latency_shape_are_read_and_checked_at_their_line(
    tmp_path: Path,
) -> None:
    assert load_config(write(tmp_path, MINIMAL)).simulator.burst_s == 60.0  # a full minute
    table = '\n[simulator]\nburst_s = 1\nlatency_distribution = "lognormal"\nhang_s = 120\n'
    simulator = load_config(write(tmp_path, MINIMAL + table)).simulator
    assert (simulator.burst_s, simulator.latency_distribution, simulator.hang_s) == (
        1.0,
        "lognormal",
        120.0,
    )

    path = write(tmp_path, MINIMAL + "\n[simulator]\nseed = 2\nburst_s = 600\n")

    (problem,) = problems_of(path)
    assert str(problem) == (
        f"{path}:{line_of(path, 'burst_s')}: simulator.burst_s: must be more than 0 and at most "
        "60 (seconds of the per-minute limit a key's bucket holds: 60 a full minute, 1 the "
        "minute enforced per second) (got 600.0)"
    )
    assert "\n" not in str(problem)


def test_the_extraction_time_limit_is_read_and_must_be_positive(tmp_path: Path) -> None:
    crawl = '\n[crawl]\ntargets = "domains.txt"\n'
    default = load_config(write(tmp_path, MINIMAL + crawl)).crawl
    assert default is not None and default.extract_timeout_s == 20.0
    chosen = load_config(write(tmp_path, MINIMAL + crawl + "extract_timeout_s = 5\n")).crawl
    assert chosen is not None and chosen.extract_timeout_s == 5.0

    path = write(tmp_path, MINIMAL + crawl + "extract_timeout_s = 0\n")

    (problem,) = problems_of(path)
    assert str(problem) == (
        f"{path}:{line_of(path, 'extract_timeout_s')}: crawl.extract_timeout_s: "
        "must be more than 0 (got 0.0)"
    )


def test_rate_limit_waits_are_read_and_a_typo_is_caught_at_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + "\n[rate_limit_waits]\nkey_streak = 4\nbatch_wait_s = 60\nbatch_429 = 3\n",
    )

    (problem,) = problems_of(path)
    assert str(problem) == (
        f"{path}:{line_of(path, 'batch_429 =')}: rate_limit_waits.batch_429: "
        "unknown key (did you mean 'batch_429s'?)"
    )
    fixed = write(tmp_path, path.read_text().replace("batch_429 = 3", "batch_429s = 3"))
    assert load_config(fixed).rate_limit_waits == RateLimitWaits(
        key_streak=4, batch_wait_s=60.0, batch_429s=3
    )


# --- memory limits against the process's own floor ---------------------------

FLOOR = 152 * 2**20  # what a started process holds, as `engine.limits.memory_floor` measures it


def test_a_preset_below_the_process_floor_is_refused_at_its_file_line_and_key(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        MINIMAL + "\n[presets.tight]\nmemory_soft_mb = 100\nmemory_hard_mb = 400\n",
    )

    (problem,) = problems_of(path, memory_floor_bytes=FLOOR)

    assert str(problem) == (
        f"{path}:{line_of(path, 'memory_soft_mb')}: presets.tight.memory_soft_mb: 100 MB is "
        "below this process's own floor of 152 MB (its memory once started) plus a 64 MB "
        "margin: the breaker would hold input from the start; use at least 216"
    )
    assert load_config(path).presets["tight"].memory_soft_mb == 100  # no floor: not judged


def test_limits_below_the_floor_are_blamed_on_the_flag_or_preset_file_that_set_them(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, MINIMAL)
    preset_file = write(tmp_path, "memory_soft_mb = 120\nmemory_hard_mb = 180\n", "small.toml")

    flagged = problems_of(path, overrides=["preset.memory_soft_mb=150"], memory_floor_bytes=FLOOR)
    from_file = problems_of(path, preset=str(preset_file), memory_floor_bytes=FLOOR)

    assert [str(p).split(" is below")[0] for p in flagged] == [
        "--set: preset.memory_soft_mb: 150 MB"
    ]
    assert [str(p).split(" is below")[0] for p in from_file] == [
        f"{preset_file}:1: memory_soft_mb: 120 MB",
        f"{preset_file}:2: memory_hard_mb: 180 MB",
    ]


def test_a_built_in_preset_is_judged_against_the_floor_too(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)

    problems = problems_of(path, memory_floor_bytes=1200 * 2**20)

    assert [(p.file, p.line, p.key) for p in problems] == [
        (str(path), None, "presets.conservative.memory_soft_mb")
    ]
    assert load_config(path, memory_floor_bytes=FLOOR).preset == BUILTIN_PRESETS["conservative"]


def test_job_and_key_ranges_are_checked_too(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace("[job]\n", "[job]\nchunk_tokens = 50\nchunk_overlap_tokens = 60\n")
        + "rpm = 0\ntpm = -5\n",
    )

    keys = {problem.key for problem in problems_of(path)}

    assert keys == {
        "job.chunk_overlap_tokens",
        "providers[0].keys[0].rpm",
        "providers[0].keys[0].tpm",
    }


def test_input_and_a_provider_with_a_key_are_required(tmp_path: Path) -> None:
    path = write(tmp_path, '[job]\nname = "empty"\n')

    assert [str(p) for p in problems_of(path)] == [
        f"{path}:1: job.input: is required: a file, a directory or a glob of the documents",
        f"{path}: providers: at least one [[providers]] table is required",
    ]


def test_a_provider_needs_a_name_url_model_and_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[job]\ninput = "docs"\n\n[[providers]]\nprice_input_per_m = 1\n')

    problems = problems_of(path)

    assert {p.key for p in problems} == {
        "providers[0].name",
        "providers[0].base_url",
        "providers[0].model",
        "providers[0].keys",
    }
    assert {p.line for p in problems} == {4}


def test_duplicate_provider_names_and_key_aliases_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [job]
        input = "docs"

        [[providers]]
        name = "openai"
        base_url = "https://api.openai.com/v1"
        model = "gpt-4o-mini"
        keys = [{ env = "A", alias = "main" }]

        [[providers]]
        name = "openai"
        base_url = "https://eu.api.openai.com/v1"
        model = "gpt-4o-mini"

        [[providers.keys]]
        env = "B"

        [[providers.keys]]
        env = "C"
        alias = "main"
        """,
    )

    problems = problems_of(path)

    assert [str(p) for p in problems] == [
        f"{path}:11: providers[1].name: duplicate provider name 'openai' (also providers[0])",
        f"{path}:20: providers[1].keys[1].alias: duplicate key alias 'main' "
        "(also providers[0].keys[0])",
    ]


def test_a_secret_pasted_into_the_file_is_refused_without_being_repeated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace('env = "OPENAI_API_KEY"', 'env = "sk-live-SECRET123"\nkey = "sk-OTHER"'),
    )

    problems = problems_of(path)

    assert [p.key for p in problems] == ["providers[0].keys[0].env", "providers[0].keys[0].key"]
    assert not any("SECRET" in str(p) or "OTHER" in str(p) for p in problems)


def test_lines_inside_multiline_strings_are_not_mistaken_for_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + '''
        [prompt]
        user = """
        [presets.aggressive]
        concurency = 1
        {chunks}"""
        temprature = 0.1
        ''',
    )

    (problem,) = problems_of(path)

    assert (problem.key, problem.line) == ("prompt.temprature", line_of(path, "temprature"))


def test_an_unknown_prompt_placeholder_is_refused_at_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + '''
        [prompt]
        system = "You read {language} text."
        user = """Answer with JSON of this shape: {shape}
        Chunks: {chunk}
        {{chunks}} is escaped, {"json": "is not a placeholder"}"""
        ''',
    )

    problems = [str(p) for p in problems_of(path)]

    assert problems == [
        f"{path}:{line_of(path, 'system')}: prompt.system: unknown placeholder {{language}} "
        "(known: none; write {{language}} to send it as text)",
        f"{path}:{line_of(path, 'user')}: prompt.user: must contain {{chunks}}, "
        "where the batch's chunks go",
        f"{path}:{line_of(path, 'user')}: prompt.user: unknown placeholder {{chunk}} "
        "(known: {chunks}, {shape}; write {{chunk}} to send it as text)",
    ]
    fixed = path.read_text().replace("{chunk}", "{chunks}").replace("{language}", "{{language}}")
    path.write_text(fixed, encoding="utf-8")
    assert load_config(path).prompt.system == "You read {{language}} text."


def test_a_placeholder_typed_in_a_flag_is_blamed_on_the_flag(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)

    problems = problems_of(path, overrides=["prompt.user={chunks} in {lang}"])

    assert [str(p) for p in problems] == [
        "--set: prompt.user: unknown placeholder {lang} "
        "(known: {chunks}, {shape}; write {{lang}} to send it as text)"
    ]


def test_bad_overrides_are_blamed_on_the_flags(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[presets.aggressive]\nconcurrency = 8\n")

    problems = problems_of(
        path,
        preset="aggressive",
        overrides=["preset.concurency=3", "preset.batch_size=0", "providers[3].model=x", "oops"],
    )

    assert sorted(str(p) for p in problems) == [
        "--set: oops: expected key=value with a dotted key, like preset.concurrency=32",
        "--set: preset.batch_size: must be from 1 to 1000 (got 0)",
        "--set: preset.concurency: unknown key (did you mean 'concurrency'?)",
        "--set: providers[3].model: there is no providers[3] to change",
    ]


def test_a_problem_without_a_known_line_leaves_the_line_out() -> None:
    problem = ConfigProblem("config.toml", None, "job.input", "is required")

    assert str(problem) == "config.toml: job.input: is required"
    assert str(replace(problem, line=12)) == "config.toml:12: job.input: is required"


# --- environment variables -----------------------------------------------------


def test_missing_key_variables_names_the_variable_and_never_a_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [job]
        input = "docs"

        [[providers]]
        name = "openai"
        base_url = "https://api.openai.com/v1"
        model = "gpt-4o-mini"

        [[providers.keys]]
        env = "OPENAI_KEY_1"

        [[providers.keys]]
        env = "OPENAI_KEY_2"

        [[providers.keys]]
        env = "OPENAI_KEY_3"
        """,
    )
    config = load_config(path)

    problems = missing_key_variables(config, {"OPENAI_KEY_1": "sk-live-SECRET", "OPENAI_KEY_3": ""})

    assert [str(p) for p in problems] == [
        f"{path}:13: providers[0].keys[1].env: environment variable OPENAI_KEY_2 is not set",
        f"{path}:16: providers[0].keys[2].env: environment variable OPENAI_KEY_3 is empty",
    ]
    assert missing_key_variables(config, {f"OPENAI_KEY_{n}": "x" for n in (1, 2, 3)}) == []

    # A key that an HTTP header cannot carry, named by its variable, never shown.
    unsendable = {"OPENAI_KEY_1": "sk-live-SECRET\n", "OPENAI_KEY_2": "sk-live-SÉCRET"}
    problems = missing_key_variables(config, {**unsendable, "OPENAI_KEY_3": "sk live"})
    assert [str(p) for p in problems] == [
        f"{path}:{line}: providers[0].keys[{n}].env: environment variable OPENAI_KEY_{n + 1} "
        "holds a space, a control or a non-ASCII character (an API key has none)"
        for n, line in ((0, 10), (1, 13), (2, 16))
    ]


# --- writing -------------------------------------------------------------------

COMMENTED = """\
# My job — hand-tuned, please keep these notes.
[job]
input = "docs"   # the March export
preset = "aggressive"

[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"

[[providers.keys]]
env = "OPENAI_API_KEY"

# For the night shift only.
[presets.aggressive]
concurrency = 64   # the provider allows more, but the DB can't keep up
batch_size = 10
request_timeout_s = 60    # seconds

[engine]
queue_size = 1_024  # deliberately written with a separator
"""


def test_update_preset_in_file_changes_only_the_changed_values(tmp_path: Path) -> None:
    path = write(tmp_path, COMMENTED)
    preset = replace(load_config(path).preset, concurrency=48)

    update_preset_in_file(path, preset)

    assert path.read_text() == COMMENTED.replace(
        "concurrency = 64   # the provider", "concurrency = 48   # the provider"
    )
    assert load_config(path).preset == preset


def test_update_preset_in_file_adds_values_the_table_inherited(tmp_path: Path) -> None:
    path = write(tmp_path, COMMENTED)
    preset = replace(load_config(path).preset, max_retries=9)

    update_preset_in_file(path, preset)

    assert path.read_text() == COMMENTED.replace("# seconds\n", "# seconds\nmax_retries = 9\n")
    assert load_config(path).preset == preset


def test_update_preset_in_file_adds_a_new_table_beside_the_other_presets(tmp_path: Path) -> None:
    path = write(tmp_path, COMMENTED)
    night = Preset(name="night", concurrency=2, batch_delay_s=1.5)

    update_preset_in_file(path, night)

    text = path.read_text()
    added = text[text.index("[presets.night]") : text.index("[engine]")]
    assert added.startswith("[presets.night]\nconcurrency = 2\nbatch_size = 5\n")
    assert added.endswith("memory_hard_mb = 2048\n\n")
    assert text.replace(added, "") == COMMENTED
    assert load_config(path, preset="night").preset == night


def test_update_preset_in_file_adds_presets_to_a_file_without_any(tmp_path: Path) -> None:
    original = "# just the basics\n" + MINIMAL
    path = write(tmp_path, original)
    night = Preset(name="night", concurrency=2)

    update_preset_in_file(path, night)

    text = path.read_text()
    assert text.startswith(original + "\n[presets.night]\nconcurrency = 2\n")
    assert text.endswith("memory_hard_mb = 2048\n")
    assert load_config(path, preset="night").preset == night


def test_effective_settings_are_plain_json_with_variable_names_only(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    config = load_config(path)

    settings = effective_settings(config)

    assert json.loads(json.dumps(settings)) == settings
    assert settings["providers"][0]["keys"][0] == {
        "env": "OPENAI_API_KEY",
        "alias": "openai-1",
        "rpm": None,
        "tpm": None,
    }
    assert settings["preset"]["name"] == "conservative"
    assert settings["simulator"]["latency_s"] == [0.5, 2.0]
    assert settings["source"] == str(path)


# --- the shipped examples --------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "transcripts"),
    [
        (REPO / "config.example.toml", REPO / "engine" / "sample" / "transcripts"),
        (REPO / "engine" / "sample" / "demo.toml", REPO / "engine" / "sample" / "transcripts"),
    ],
)
def test_the_shipped_examples_load_without_problems(example: Path, transcripts: Path) -> None:
    config = load_config(example)

    assert config.job.name == "transcripts-demo"
    assert config.job.input == str(transcripts)
    assert config.job.input_format == "documents"
    assert (config.job.chunk_tokens, config.job.chunk_overlap_tokens) == (400, 40)
    assert config.preset == BUILTIN_PRESETS["aggressive"]
    assert config.presets == BUILTIN_PRESETS
    assert config.prompt == PromptSettings()
    assert config.engine == EngineSettings()
    assert config.rate_limit_waits == RateLimitWaits()
    assert config.simulator.autostart is True
    assert config.simulator.latency_s == (0.5, 2.0)
    (sim,) = config.providers
    assert (sim.name, sim.base_url, sim.model) == ("sim", "http://127.0.0.1:0/v1", "gpt-4o-mini")
    assert (sim.price_input_per_m, sim.price_output_per_m) == (0.15, 0.60)
    assert [(k.env, k.rpm, k.tpm) for k in sim.keys] == [
        ("CRAWLDECK_SIM_KEY_1", 600, 400000),
        ("CRAWLDECK_SIM_KEY_2", 300, 200000),
    ]
    assert [p.message for p in missing_key_variables(config, {})] == [
        "environment variable CRAWLDECK_SIM_KEY_1 is not set",
        "environment variable CRAWLDECK_SIM_KEY_2 is not set",
    ]
