"""A job with two providers, each with its own model: which model a row names, and
how a later result supersedes a failure (real simulators, real openai client, real SQLite)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from engine.config.settings import KeySettings, ProviderSettings
from engine.engine import Engine
from engine.observe.snapshot import JobState
from engine.simulation.simulator import SimKey
from engine.store.export import export_results
from tests.engine.conftest import job_config, write_records

MODEL_A, MODEL_B = "gpt-4o-mini", "gpt-4o"


def provider(name: str, model: str, base_url: str) -> ProviderSettings:
    return ProviderSettings(
        name=name,
        base_url=base_url,
        model=model,
        keys=(KeySettings(env=f"KEY_{name.upper()}", alias="k", rpm=60_000, tpm=100_000_000),),
    )


def rows(db: Path, table: str) -> list[tuple[str, str]]:
    """(chunk id, model) of every row of `table`, sorted."""
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute(f"SELECT chunk_id, model FROM {table}"))


async def test_a_failure_names_the_model_that_tried_it_and_a_later_result_from_either_supersedes_it(
    tmp_path: Path, simulator
) -> None:
    # Run 1: provider a's key has no quota left (disabled at its first request), so
    # every batch goes to b, whose server fails every request: the chunks fail on b.
    sim_a = await simulator(keys=(SimKey("secret-a", None, None, quota_exhausted=True),))
    sim_b = await simulator(keys=(SimKey("secret-b", None, None),), fault_5xx=1.0)
    config, _ = job_config(tmp_path, write_records(tmp_path / "in.txt", 6), sim_a.base_url)
    config = replace(
        config,
        providers=(provider("a", MODEL_A, sim_a.base_url), provider("b", MODEL_B, sim_b.base_url)),
        preset=replace(config.preset, max_retries=1),
    )
    secrets = {"a/k": "secret-a", "b/k": "secret-b"}
    db = Path(config.job.store)

    first = Engine(config, secrets)
    assert await first.run() is JobState.FINISHED_WITH_FAILURES

    failed = rows(db, "failures")
    assert len(failed) == 6
    assert {model for _, model in failed} == {MODEL_B}  # b tried them last, not the first provider
    assert rows(db, "results") == []

    # Run 2: a answers now and b refuses every key: the chunks are done under a's model,
    # and their failures under b's are gone from the store and from the export.
    healthy_a = await simulator(keys=(SimKey("secret-a", None, None),))
    refusing_b = await simulator(keys=())
    second = Engine(config, secrets, base_urls={"a": healthy_a.base_url, "b": refusing_b.base_url})
    assert await second.run() is JobState.DONE

    assert rows(db, "results") == [(chunk_id, MODEL_A) for chunk_id, _ in failed]
    assert rows(db, "failures") == []
    exported = tmp_path / "out.jsonl"
    assert export_results(db, exported, "jsonl", include_failures=True) == 6
    assert '"status": "failed"' not in exported.read_text(encoding="utf-8")


async def test_a_chunk_that_failed_on_one_model_and_is_answered_by_it_later_keeps_no_failure(
    tmp_path: Path, simulator
) -> None:
    # The first provider is not the one that fails: b fails the chunks, and b answers
    # them on the rerun, so the result and the failure name the same model.
    sim_a = await simulator(keys=(SimKey("secret-a", None, None, quota_exhausted=True),))
    sim_b = await simulator(keys=(SimKey("secret-b", None, None),), fault_5xx=1.0)
    config, _ = job_config(tmp_path, write_records(tmp_path / "in.txt", 4), sim_a.base_url)
    config = replace(
        config,
        providers=(provider("a", MODEL_A, sim_a.base_url), provider("b", MODEL_B, sim_b.base_url)),
        preset=replace(config.preset, max_retries=0),
    )
    secrets = {"a/k": "secret-a", "b/k": "secret-b"}
    db = Path(config.job.store)
    await Engine(config, secrets).run()
    assert {model for _, model in rows(db, "failures")} == {MODEL_B}

    healthy_b = await simulator(keys=(SimKey("secret-b", None, None),))
    again = Engine(config, secrets, base_urls={"b": healthy_b.base_url})
    assert await again.run() is JobState.DONE

    assert {model for _, model in rows(db, "results")} == {MODEL_B}
    assert rows(db, "failures") == []
    assert again.snapshot().counts.done == 4
