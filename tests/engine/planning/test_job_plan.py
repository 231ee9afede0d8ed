"""A plan against the run that follows it: the real engine, the simulator on loopback, real stores.

What a plan says it counts — chunks, requests, the chunks the store already
has — must be exactly what the run then reads and sends; what it estimates
(output tokens, cost) comes from the stored answers once there are some.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from engine.config.settings import CrawlSettings, JobConfig
from engine.engine import Engine
from engine.observe.snapshot import JobState
from engine.planning.job_plan import DEFAULT_OUTPUT_TOKENS_PER_CHUNK, PlanHints, make_plan
from engine.simulation.simulator import ProviderSimulator
from tests.engine.conftest import job_config, sim_keys, write_records

KEYS = (("k1", 60_000, 100_000_000),)
BATCH = 5
# At a job's tail the engine sends a batch slow to answer a second time and
# cancels the loser (hedging), so the simulator sees more requests than
# batches.  With latencies in [0.5, 0.6] s (±10 % jitter) a second request,
# sent at the median, is answered a third of a second after the first at the
# soonest, long after it was cancelled: the simulator's count of answers sent
# is then exactly the requests the job's batches needed.
LATENCY_S = (0.5, 0.6)


async def started(simulator: Callable[..., object]) -> ProviderSimulator:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=LATENCY_S)  # type: ignore[misc]
    assert isinstance(sim, ProviderSimulator)
    return sim


def stored_cost(config: JobConfig) -> float:
    import sqlite3

    with sqlite3.connect(config.job.store) as conn:
        (cost,) = conn.execute(
            "SELECT SUM(cost) FROM results WHERE prompt_version = ?", (config.prompt.version,)
        ).fetchone()
    return float(cost)


async def test_the_plan_counts_the_chunks_and_requests_the_run_then_sends(
    tmp_path: Path, simulator: Callable[..., object]
) -> None:
    sim = await started(simulator)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 63), sim.base_url, KEYS
    )

    plan = await make_plan(config)

    assert (plan.work.chunks, plan.work.pending, plan.work.already_done) == (63, 63, 0)
    assert plan.work.requests == math.ceil(63 / BATCH)
    assert not Path(config.job.store).exists()  # a plan writes nothing, not even a store
    assert plan.output_source.startswith("default")
    assert plan.output_tokens == DEFAULT_OUTPUT_TOKENS_PER_CHUNK * 63

    engine = Engine(config, secrets)
    assert await engine.run() is JobState.DONE
    assert engine.stats.seen == plan.work.chunks
    assert engine.stats.requests == plan.work.requests
    assert sim.stats.answers == plan.work.requests


async def test_work_the_store_already_has_is_subtracted_and_the_rerun_sends_the_rest(
    tmp_path: Path, simulator: Callable[..., object]
) -> None:
    sim = await started(simulator)
    records = tmp_path / "in.txt"
    config, secrets = job_config(tmp_path, write_records(records, 40), sim.base_url, KEYS)
    first = Engine(config, secrets)
    assert await first.run() is JobState.DONE
    answered_before = sim.stats.answers

    # The week's new input: the old records and 23 more.
    write_records(records, 63)
    plan = await make_plan(config)

    assert (plan.work.chunks, plan.work.already_done, plan.work.pending) == (63, 40, 23)
    assert plan.work.requests == math.ceil(23 / BATCH)
    again = Engine(config, secrets)
    assert await again.run() is JobState.DONE
    assert again.stats.skipped == plan.work.already_done
    assert sim.stats.answers - answered_before == plan.work.requests


async def test_output_tokens_and_cost_come_from_the_stored_answers_once_there_are_any(
    tmp_path: Path, simulator: Callable[..., object]
) -> None:
    sim = await started(simulator)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 60), sim.base_url, KEYS
    )
    hinted = await make_plan(config, PlanHints(output_tokens_per_chunk=40))
    assert (hinted.output_source, hinted.output_tokens) == ("given", 40 * 60)
    assert await Engine(config, secrets).run() is JobState.DONE

    # The same job with a new prompt version: every chunk goes again.
    again = replace(config, prompt=replace(config.prompt, version="2"))
    plan = await make_plan(again, PlanHints(output_tokens_per_chunk=40))

    assert plan.work.pending == 60 and plan.work.already_done == 0
    assert plan.output_source == "stored results (60 chunks)"  # the store wins over a hint
    assert plan.billed_source.startswith("stored results")
    assert plan.time.binds == "concurrency"  # limits far above this job: latency-bound
    assert plan.record()["time"]["latency_source"] == "stored results (12 requests)"
    assert plan.cost_batch_usd == plan.cost_online_usd / 2

    assert await Engine(again, secrets).run() is JobState.DONE
    assert abs(stored_cost(again) / plan.cost_online_usd - 1) < 0.10


async def test_a_crawl_job_with_no_stored_pages_says_its_targets_are_not_counted(
    tmp_path: Path,
) -> None:
    config, _ = job_config(tmp_path, tmp_path / "unused.txt", "http://127.0.0.1:9/v1", KEYS)
    targets = tmp_path / "domains.txt"
    targets.write_text("example.com\nexample.org\nnot a domain!\nexample.com\n", encoding="utf-8")
    config = replace(
        config,
        job=replace(config.job, input=""),
        crawl=CrawlSettings(targets=str(targets)),
    )

    plan = await make_plan(config)

    crawl = plan.record()["input"]["crawl"]
    assert crawl == {
        "targets": 2,
        "targets_without_pages": 2,
        "pages": 0,
        "target_lines_skipped": 1,
    }
    assert (plan.work.chunks, plan.work.requests, plan.time.time_s) == (0, 0, 0.0)
    json.dumps(plan.record())  # what --json prints
