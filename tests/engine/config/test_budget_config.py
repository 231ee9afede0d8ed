"""`[job] budget_usd` and `[prices."MODEL"]` in the job file: read, resolved, refused at a line."""

from __future__ import annotations

from pathlib import Path

from engine.config.job_file import load_config
from tests.engine.config.test_config_file import line_of, problems_of, write

PROVIDER = """\
[[providers]]
name = "openai"
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"
{prices}
[[providers.keys]]
env = "OPENAI_API_KEY"
"""


def job_file(
    folder: Path, *, job: str = "", prices: str = "", provider_prices: str = "", more: str = ""
) -> Path:
    return write(
        folder,
        f'[job]\ninput = "docs"\n{job}\n' + PROVIDER.format(prices=provider_prices) + prices + more,
    )


def test_a_budget_and_a_models_price_table_are_read_and_the_price_fills_its_provider(
    tmp_path: Path,
) -> None:
    path = job_file(
        tmp_path,
        job="budget_usd = 12.5",
        prices='\n[prices."gpt-4o-mini"]\ninput_per_m = 0.15\noutput_per_m = 0.6\n',
    )

    config = load_config(path)

    assert config.job.budget_usd == 12.5
    (provider,) = config.providers
    assert (provider.price_input_per_m, provider.price_output_per_m) == (0.15, 0.6)


def test_a_providers_own_price_wins_over_its_models_table_field_by_field(tmp_path: Path) -> None:
    path = job_file(
        tmp_path,
        provider_prices="price_input_per_m = 0.1\n",
        prices='\n[prices."gpt-4o-mini"]\ninput_per_m = 0.15\noutput_per_m = 0.6\n',
    )

    (provider,) = load_config(path).providers

    assert (provider.price_input_per_m, provider.price_output_per_m) == (0.1, 0.6)


def test_a_whole_number_budget_reads_as_dollars_and_no_budget_means_no_cap(
    tmp_path: Path,
) -> None:
    capped = job_file(
        tmp_path / "a", job="budget_usd = 5", provider_prices="price_input_per_m = 0.1\n"
    )
    uncapped = job_file(tmp_path / "b")

    assert load_config(capped).job.budget_usd == 5.0
    assert load_config(uncapped).job.budget_usd is None


def test_a_budget_of_zero_or_less_is_one_line_naming_file_line_and_key(tmp_path: Path) -> None:
    path = job_file(tmp_path, job="budget_usd = 0", provider_prices="price_input_per_m = 1.0\n")

    (problem,) = problems_of(path)

    assert (problem.file, problem.line, problem.key) == (
        str(path),
        line_of(path, "budget_usd"),
        "job.budget_usd",
    )
    assert "must be more than 0" in problem.message
    assert "\n" not in str(problem)


def test_a_budget_that_is_not_a_number_is_refused_at_its_line(tmp_path: Path) -> None:
    path = job_file(tmp_path, job='budget_usd = "ten"', provider_prices="price_input_per_m = 1\n")

    (problem,) = problems_of(path)

    assert (problem.line, problem.key) == (line_of(path, "budget_usd"), "job.budget_usd")


def test_a_budget_with_a_model_that_has_no_price_is_refused_naming_the_model_and_the_fix(
    tmp_path: Path,
) -> None:
    path = job_file(tmp_path, job="budget_usd = 10")

    (problem,) = problems_of(path)

    assert (problem.line, problem.key) == (line_of(path, "budget_usd"), "job.budget_usd")
    assert "'gpt-4o-mini'" in problem.message
    assert '[prices."gpt-4o-mini"]' in problem.message


def test_a_price_for_a_model_no_provider_serves_is_refused_as_a_likely_typo(
    tmp_path: Path,
) -> None:
    path = job_file(
        tmp_path, prices='\n[prices."gpt-4o-mni"]\ninput_per_m = 0.15\noutput_per_m = 0.6\n'
    )

    (problem,) = problems_of(path)

    assert problem.key == "prices.gpt-4o-mni"
    assert problem.line == line_of(path, '[prices."gpt-4o-mni"]')
    assert "no provider serves model 'gpt-4o-mni' (models: gpt-4o-mini)" in problem.message


def test_a_half_price_an_unknown_key_and_a_negative_price_are_each_refused(
    tmp_path: Path,
) -> None:
    path = job_file(
        tmp_path,
        prices='\n[prices."gpt-4o-mini"]\ninput_per_m = -1\ninput_per_mm = 2\n',
    )

    problems = {(p.key, p.message.split(" (")[0]) for p in problems_of(path)}

    assert ("prices.gpt-4o-mini", "needs output_per_m") in problems
    assert ("prices.gpt-4o-mini.input_per_m", "must be 0 or more") in problems
    assert any(key == "prices.gpt-4o-mini.input_per_mm" for key, _ in problems)


def test_a_budget_with_a_cluster_is_read_for_every_worker_to_hold_together(
    tmp_path: Path,
) -> None:
    path = job_file(
        tmp_path,
        job="budget_usd = 10",
        provider_prices="price_input_per_m = 0.15\nprice_output_per_m = 0.6\n",
        more='\n[cluster]\nredis = "redis://127.0.0.1:6379/0"\n',
    )

    config = load_config(path)

    assert config.job.budget_usd == 10.0 and config.cluster is not None


def test_a_budget_with_unpriced_embedding_calls_for_the_drift_monitor_is_refused(
    tmp_path: Path,
) -> None:
    path = job_file(
        tmp_path,
        job="budget_usd = 10",
        provider_prices="price_input_per_m = 0.15\nprice_output_per_m = 0.6\n",
        more="\n[drift]\nembeddings = true\n",
    )

    (problem,) = problems_of(path)

    assert (problem.line, problem.key) == (line_of(path, "budget_usd"), "job.budget_usd")
    assert "embeddings = false" in problem.message


def test_a_budget_typed_on_the_command_line_is_checked_and_blamed_on_the_flag(
    tmp_path: Path,
) -> None:
    path = job_file(tmp_path, provider_prices="price_input_per_m = 1\n")

    assert load_config(path, overrides=["job.budget_usd=2.5"]).job.budget_usd == 2.5
    (problem,) = problems_of(path, overrides=["job.budget_usd=-3"])
    assert (problem.file, problem.key) == ("--set", "job.budget_usd")


def test_a_budget_in_batch_mode_is_refused_at_its_line(tmp_path: Path) -> None:
    """A batch is paid for as a whole once it ran: no reservation can hold it back."""
    path = job_file(
        tmp_path,
        job="budget_usd = 10",
        provider_prices='price_input_per_m = 0.15\nprice_output_per_m = 0.6\nmode = "batch"\n',
    )

    (problem,) = problems_of(path)

    assert (problem.line, problem.key) == (line_of(path, "budget_usd"), "job.budget_usd")
    assert "batch mode" in problem.message
