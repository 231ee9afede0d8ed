"""A provider's `mode = "batch"` and its batch settings, read from the job file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.config.config_problem import ConfigError, ConfigProblem
from engine.config.job_file import load_config
from engine.config.presets import load_preset_file

JOB = """\
[job]
input = "docs"

[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
price_input_per_m = 0.15
price_output_per_m = 0.6
{extra}

[[providers.keys]]
env = "OPENAI_API_KEY"
"""


def job_file(tmp_path: Path, extra: str, more: str = "") -> Path:
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(JOB.format(extra=extra)) + more, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def line_of(path: Path, text: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, start=1) if line.strip().startswith(text))


def test_a_batch_provider_pays_half_unless_the_file_gives_batch_prices(tmp_path: Path) -> None:
    half = load_config(job_file(tmp_path, 'mode = "batch"')).providers[0]
    assert half.mode == "batch"
    assert half.batch_prices_per_m == (0.075, 0.3)
    assert half.batch_window == "24h" and half.batch_max_requests == 50_000

    priced = load_config(
        job_file(tmp_path, 'mode = "batch"\nbatch_price_input_per_m = 0.1')
    ).providers[0]
    assert priced.batch_prices_per_m == (0.1, 0.3)


def test_an_unknown_mode_is_one_line_at_its_key(tmp_path: Path) -> None:
    path = job_file(tmp_path, 'mode = "bulk"')

    (problem,) = problems_of(path)

    assert problem.key == "providers[0].mode"
    assert problem.line == line_of(path, "mode =")
    assert "bulk" in problem.message and "batch" in problem.message
    assert "\n" not in str(problem)


def test_batch_limits_out_of_range_are_refused_at_their_keys(tmp_path: Path) -> None:
    path = job_file(
        tmp_path, 'mode = "batch"\nbatch_max_requests = 0\nbatch_poll_s = 10\nbatch_poll_max_s = 5'
    )

    problems = problems_of(path)

    assert [p.key for p in problems] == [
        "providers[0].batch_max_requests",
        "providers[0].batch_poll_max_s",
    ]
    assert problems[0].line == line_of(path, "batch_max_requests")


SECOND = """
[[providers]]
name = "now"
base_url = "https://api.example.com/v1"
model = "gpt-4o"
{extra}

[[providers.keys]]
env = "OTHER_KEY"
"""


def test_online_and_batch_providers_mix_in_one_job(tmp_path: Path) -> None:
    path = job_file(
        tmp_path, 'mode = "batch"\nbatch_online_after_s = 3600', SECOND.format(extra="")
    )

    config = load_config(path)

    assert [p.mode for p in config.providers] == ["batch", "online"]
    assert config.providers[0].batch_online_after_s == 3600


def test_the_cut_off_needs_somewhere_online_and_comes_before_the_deadline(
    tmp_path: Path,
) -> None:
    alone = job_file(tmp_path, 'mode = "batch"\nbatch_online_after_s = 60')
    (problem,) = problems_of(alone)
    assert problem.key == "providers[0].batch_online_after_s"
    assert problem.line == line_of(alone, "batch_online_after_s")
    assert "nowhere to send the remainder" in problem.message and "\n" not in str(problem)
    # Its own keys online will do.
    retried = job_file(
        tmp_path, 'mode = "batch"\nbatch_retries = "online"\nbatch_online_after_s = 6'
    )
    assert load_config(retried).providers[0].batch_online_after_s == 6

    late = job_file(
        tmp_path,
        'mode = "batch"\nbatch_deadline_s = 60\nbatch_online_after_s = 60',
        SECOND.format(extra=""),
    )
    (problem,) = problems_of(late)
    assert problem.key == "providers[0].batch_online_after_s"
    assert "must be below batch_deadline_s" in problem.message

    idle = job_file(tmp_path, 'mode = "batch"', SECOND.format(extra=""))
    (problem,) = problems_of(idle)
    assert problem.key == "providers[1].mode"
    assert problem.line == line_of(idle, 'name = "now"') - 1  # its table: it says no mode
    assert "which hand it nothing" in problem.message

    (problem,) = problems_of(
        job_file(tmp_path, 'mode = "batch"\nbatch_retries = "online"\nbatch_online_after_s = 0')
    )
    assert problem.key == "providers[0].batch_online_after_s"
    assert "must be more than 0" in problem.message


PRESETS = """
[job]
input = "docs"
preset = "{chosen}"

[presets.bulk]
mode = "{mode}"
concurrency = 8

[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
price_input_per_m = 0.15
price_output_per_m = 0.6
batch_online_after_s = 3600  # only when batch mode is in force

[[providers.keys]]
env = "OPENAI_API_KEY"

[[providers]]
name = "now"
base_url = "https://api.example.com/v1"
model = "gpt-4o"
mode = "online"
price_input_per_m = 2.5
price_output_per_m = 10.0

[[providers.keys]]
env = "OTHER_KEY"
"""


def presets_file(tmp_path: Path, mode: str = "batch", chosen: str = "bulk", more: str = "") -> Path:
    path = tmp_path / "presets.toml"
    text = PRESETS.format(mode=mode, chosen=chosen).replace("[job]\n", "[job]\n" + more, 1)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_preset_sends_the_providers_without_their_own_mode_through_the_batch_api(
    tmp_path: Path,
) -> None:
    config = load_config(presets_file(tmp_path))

    assert [p.mode for p in config.providers] == ["batch", "online"]  # "now" says its own
    assert config.preset.name == "bulk" and config.preset_modes == {"bulk": "batch"}
    assert config.mode_from_preset == ("openai",)
    # Another preset in force: the providers' own modes (online by default).
    other = load_config(presets_file(tmp_path), preset="aggressive")
    assert [p.mode for p in other.providers] == ["online", "online"]


def test_a_bad_preset_mode_is_one_line_at_its_key(tmp_path: Path) -> None:
    path = presets_file(tmp_path, mode="bulk")

    (problem,) = problems_of(path)

    assert problem.key == "presets.bulk.mode"
    assert problem.line == line_of(path, "mode =")
    assert "'online', 'batch'" in problem.message and "\n" not in str(problem)


def test_a_batch_preset_is_refused_where_batch_mode_is(tmp_path: Path) -> None:
    path = presets_file(tmp_path, more="budget_usd = 5\n")

    (problem,) = problems_of(path)

    assert problem.key == "presets.bulk.mode"
    assert problem.line == line_of(path, "mode =")
    assert "budget_usd" in problem.message


def test_batch_mode_is_not_shared_by_a_cluster(tmp_path: Path) -> None:
    path = job_file(tmp_path, 'mode = "batch"', '\n[cluster]\nredis = "redis://127.0.0.1:6379/0"\n')

    (problem,) = problems_of(path)

    assert problem.key == "cluster"
    assert "batch mode cannot be shared by a cluster" in problem.message


def test_batch_retries_go_to_the_next_batch_or_online(tmp_path: Path) -> None:
    online = load_config(job_file(tmp_path, 'mode = "batch"\nbatch_retries = "online"'))
    assert online.providers[0].batch_retries == "online"

    (problem,) = problems_of(job_file(tmp_path, 'mode = "batch"\nbatch_retries = "later"'))

    assert problem.key == "providers[0].batch_retries"
    assert "'batch', 'online'" in problem.message


def test_a_preset_file_given_at_start_may_choose_the_batch_route(tmp_path: Path) -> None:
    job = presets_file(tmp_path, chosen="aggressive")
    (tmp_path / "overnight.toml").write_text('mode = "batch"\nconcurrency = 8\n', encoding="utf-8")

    config = load_config(job, preset="overnight.toml")

    assert config.preset.name == "overnight" and config.preset.concurrency == 8
    assert [p.mode for p in config.providers] == ["batch", "online"]
    assert config.preset_modes == {"bulk": "batch", "overnight": "batch"}
    assert config.mode_from_preset == ("openai",)


def test_a_flag_may_set_the_preset_in_forces_mode(tmp_path: Path) -> None:
    job = presets_file(tmp_path, chosen="aggressive")

    config = load_config(job, overrides=["preset.mode=batch"])

    assert config.preset.name == "aggressive"
    assert [p.mode for p in config.providers] == ["batch", "online"]

    with pytest.raises(ConfigError) as caught:
        load_config(job, overrides=["preset.mode=bulk"])
    (problem,) = caught.value.problems
    assert problem.key == "preset.mode" and "'online', 'batch'" in problem.message


def test_a_running_job_refuses_a_preset_file_that_chooses_a_route(tmp_path: Path) -> None:
    path = tmp_path / "overnight.toml"
    path.write_text('concurrency = 8\nmode = "batch"\n', encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_preset_file(path)

    (problem,) = caught.value.problems
    assert problem.key == "mode" and problem.line == 2
    assert "at the job's start" in problem.message and "\n" not in str(problem)
    # Without it, the same file is a preset a running job may switch to.
    path.write_text("concurrency = 8\n", encoding="utf-8")
    assert load_preset_file(path).concurrency == 8


def test_sources_sent_online_need_a_job_that_mixes_both_routes(tmp_path: Path) -> None:
    mixed = job_file(tmp_path, 'mode = "batch"\nbatch_retries = "online"', SECOND.format(extra=""))
    text = mixed.read_text(encoding="utf-8").replace(
        'input = "docs"', 'input = "docs"\nonline_sources = ["urgent/*"]'
    )
    mixed.write_text(text, encoding="utf-8")
    assert load_config(mixed).job.online_sources == ("urgent/*",)

    path = job_file(tmp_path, 'mode = "batch"')
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            'input = "docs"', 'input = "docs"\nonline_sources = ["urgent/*"]'
        ),
        encoding="utf-8",
    )
    (problem,) = problems_of(path)
    assert problem.key == "job.online_sources" and problem.line == line_of(path, "online_sources")
    assert "no online provider" in problem.message and "\n" not in str(problem)
