"""A batch-mode job end to end: the provider's Batch API on the real simulator, the real
`openai` client, a real SQLite store — and restarts, failed lines and failed batches."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.config.settings import JobConfig
from engine.engine import Engine
from engine.observe.events import EventKind
from engine.observe.headless_reporter import status_line
from engine.observe.snapshot import JobState
from engine.pipeline.batch_route import MAX_POLL_FAILURES
from tests.engine.conftest import job_config, sim_keys, stored, write_records

KEYS = [("k1", 6000, 10_000_000)]


def batch_job(
    tmp_path: Path, base_url: str, records: int = 60, **batch: Any
) -> tuple[JobConfig, dict[str, str]]:
    """`records` chunks in requests of 5, through the Batch API, 5 requests a file."""
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", records), base_url, KEYS
    )
    settings = {
        "mode": "batch",
        "batch_max_requests": 5,
        "batch_poll_s": 0.05,
        "batch_poll_max_s": 0.2,
        **batch,
    }
    provider = replace(config.providers[0], **settings)
    # Drift watching is the online route's business; it has nothing to do with this.
    return replace(config, providers=(provider,), drift=replace(config.drift, enabled=False)), (
        secrets
    )


async def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


def batch_states(db: Path) -> list[str]:
    """The state of each batch the store has recorded (none before the store is made)."""
    if not db.exists():
        return []
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        try:
            return [row[0] for row in conn.execute("SELECT state FROM provider_batches")]
        except sqlite3.OperationalError:  # the store is being made
            return []


def stored_cost(db: Path) -> float:
    with sqlite3.connect(db) as conn:
        return float(conn.execute("SELECT SUM(cost) FROM results").fetchone()[0])


async def test_a_batch_mode_job_stores_every_chunk_once(tmp_path: Path, simulator) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.2)
    config, secrets = batch_job(tmp_path, sim.base_url)

    engine = Engine(config, secrets)
    state = await engine.run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.DONE
    assert len(results) == len(set(results)) == 60 and failures == []
    assert sim.stats.chunk_ids_answered == 60  # each chunk answered once by the provider
    assert sim.stats.admitted == 0  # not one online request
    assert sim.batches.stats.batches_created == 3  # 12 requests, 5 a file
    snap = engine.snapshot()
    assert snap.counts.done == 60 and snap.requests == 12
    assert snap.batch is not None
    assert snap.batch.submitted == snap.batch.settled == 3 and snap.batch.batches == ()
    assert snap.eta_s is None  # the keys' limits say nothing of when a batch comes back
    assert "| batches none open; settled 3, given up 0, projected $" in status_line(snap)
    assert batch_states(Path(config.job.store)) == ["settled"] * 3


async def test_failed_lines_are_retried_in_the_next_batch(tmp_path: Path, simulator) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.1, batch_fault_line=0.3, seed=5)
    config, secrets = batch_job(tmp_path, sim.base_url)

    state = await Engine(config, secrets).run()

    results, failures = stored(Path(config.job.store))
    assert sim.batches.stats.batch_lines_failed > 0
    assert sim.batches.stats.batches_created > 3  # the failed lines went in later files
    assert state is JobState.DONE
    assert sorted(results) == sorted(set(results)) and len(results) == 60 and failures == []


async def test_lines_that_keep_failing_end_failed_with_their_reason(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.05, batch_fault_line=1.0)
    config, secrets = batch_job(tmp_path, sim.base_url, records=10)
    config = replace(config, preset=replace(config.preset, max_retries=2))

    state = await Engine(config, secrets).run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.FINISHED_WITH_FAILURES
    assert results == [] and len(failures) == 10
    assert all("server_error" in reason and "after 3 attempts" in reason for _, reason in failures)
    assert sim.batches.stats.batches_created == 3  # the first try and two retries


async def test_a_restart_picks_up_pending_batches_by_id(tmp_path: Path, simulator) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=1.5)
    config, secrets = batch_job(tmp_path, sim.base_url)
    db = Path(config.job.store)

    first = Engine(config, secrets)
    running = asyncio.create_task(first.run())
    await wait_for(lambda: sim.batches.stats.batches_created == 3)
    await wait_for(lambda: batch_states(db) == ["open"] * 3)
    view = first.snapshot().batch
    assert view is not None and len(view.batches) == 3
    assert {b.state for b in view.batches} <= {"validating", "in_progress"}
    assert all(b.window_s == 86_400 and b.requests in (5, 2) for b in view.batches)
    assert first.snapshot().counts.in_flight == 60
    first.stop()  # the batches are still in progress at the provider
    assert await running is JobState.STOPPED
    assert stored(db) == ([], [])

    second = Engine(config, secrets)
    state = await second.run()

    results, failures = stored(db)
    assert state is JobState.DONE
    assert len(results) == len(set(results)) == 60 and failures == []
    assert sim.batches.stats.batches_created == 3  # followed by id, not submitted again
    assert sim.stats.chunk_ids_answered == 60
    snap = second.snapshot()
    assert snap.batch is not None and snap.batch.resumed == 3 and snap.batch.submitted == 0
    assert snap.batch.cost_projected_usd is not None  # at batch prices, from the answers
    assert snap.counts.done == 60 and snap.counts.cached == 0 and snap.counts.skipped == 0


async def test_a_failed_batch_is_submitted_again(tmp_path: Path, simulator) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.05, batch_fault_fail=1.0)
    config, secrets = batch_job(tmp_path, sim.base_url, records=10)
    engine = Engine(config, secrets)
    running = asyncio.create_task(engine.run())

    def a_batch_failed() -> bool:
        return any(
            event.kind is EventKind.BATCH_ENDED and event.data.get("state") == "failed"
            for event in engine.snapshot().events
        )

    await wait_for(a_batch_failed)
    sim.set_batch_faults(batch_fault_fail=0.0)
    state = await running

    results, failures = stored(Path(config.job.store))
    assert state is JobState.DONE and len(results) == 10 and failures == []
    assert sim.batches.stats.batches_created >= 2


async def test_a_batch_stuck_past_its_deadline_is_cancelled_and_sent_again(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.05, batch_fault_stuck=1.0)
    config, secrets = batch_job(tmp_path, sim.base_url, records=10, batch_deadline_s=0.5)
    engine = Engine(config, secrets)
    running = asyncio.create_task(engine.run())

    await wait_for(lambda: sim.batches.stats.batches_cancelled >= 1)
    sim.set_batch_faults(batch_fault_stuck=0.0)
    state = await running

    results, failures = stored(Path(config.job.store))
    assert state is JobState.DONE and len(results) == 10 and failures == []
    assert "abandoned" in batch_states(Path(config.job.store))


async def test_batch_mode_costs_half_the_online_price(tmp_path: Path, simulator) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.05)
    batch_config, secrets = batch_job(tmp_path, sim.base_url, records=40)
    online_config = replace(
        batch_config,
        providers=(replace(batch_config.providers[0], mode="online"),),
        job=replace(batch_config.job, store=str(tmp_path / "online.db")),
    )

    batch_engine = Engine(batch_config, secrets)
    await batch_engine.run()
    online_engine = Engine(online_config, secrets)
    await online_engine.run()

    batch_cost = stored_cost(Path(batch_config.job.store))
    online_cost = stored_cost(Path(online_config.job.store))
    assert online_cost > 0
    assert abs(batch_cost - online_cost / 2) <= online_cost * 1e-9
    assert abs(batch_engine.snapshot().cost_usd - batch_cost) <= 1e-9
    view = batch_engine.snapshot().batch
    assert view is not None and view.cost_projected_usd is not None
    assert abs(view.cost_projected_usd - batch_cost) <= batch_cost * 1e-6
    assert view.online_cost_projected_usd is not None
    assert abs(view.online_cost_projected_usd - online_cost) <= online_cost * 1e-6


async def test_batch_prices_from_the_job_file_are_used(tmp_path: Path, simulator) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.05)
    prices = {"batch_price_input_per_m": 0.0, "batch_price_output_per_m": 1.0}
    config, secrets = batch_job(tmp_path, sim.base_url, records=10, **prices)

    await Engine(config, secrets).run()

    with sqlite3.connect(config.job.store) as conn:
        output_tokens, cost = conn.execute(
            "SELECT SUM(output_tokens), SUM(cost) FROM results"
        ).fetchone()
    assert output_tokens > 0 and abs(cost - output_tokens / 1e6) <= cost * 0.05


async def test_failed_looks_at_a_batch_are_retried(tmp_path: Path, simulator) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.1, batch_fault_poll=0.5, seed=2)
    config, secrets = batch_job(tmp_path, sim.base_url, records=20)

    state = await Engine(config, secrets).run()

    results, failures = stored(Path(config.job.store))
    assert sim.batches.stats.polls_failed > 0
    assert state is JobState.DONE and len(results) == 20 and failures == []
    assert sim.batches.stats.batches_created == 1  # every batch followed to its end


async def test_a_batch_that_cannot_be_followed_ends_failed_with_the_reason(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.05, batch_fault_poll=1.0)
    config, secrets = batch_job(tmp_path, sim.base_url, records=5, batch_poll_max_s=0.05)
    config = replace(config, preset=replace(config.preset, max_retries=1))

    state = await Engine(config, secrets).run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.FINISHED_WITH_FAILURES and results == []
    assert len(failures) == 5
    assert all("could not be followed" in reason for _, reason in failures)
    assert sim.batches.stats.batches_created == 2  # submitted, given up, once more, given up
    assert sim.batches.stats.polls_failed == 2 * MAX_POLL_FAILURES
    assert sim.batches.stats.batches_cancelled == 2  # neither can come back and be paid twice


async def test_a_batch_created_but_not_yet_recorded_is_found_by_its_file(
    tmp_path: Path, simulator
) -> None:
    """A run that died between the provider's create and the store's update of the record."""
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=1.0)
    config, secrets = batch_job(tmp_path, sim.base_url, records=10)
    db = Path(config.job.store)
    first = Engine(config, secrets)
    running = asyncio.create_task(first.run())
    await wait_for(lambda: batch_states(db) == ["open"] and sim.batches.stats.batches_created == 1)
    first.stop()
    await running
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE provider_batches SET batch_id = NULL")

    state = await Engine(config, secrets).run()

    assert state is JobState.DONE and len(stored(db)[0]) == 10
    assert sim.batches.stats.batches_created == 1


async def test_a_key_the_provider_refuses_fails_the_job_with_the_reason(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys([("other", None, None)]), batch_delay_s=0.05)
    config, secrets = batch_job(tmp_path, sim.base_url, records=10)

    engine = Engine(config, secrets)
    state = await engine.run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.FAILED and results == [] and len(failures) == 10
    assert all("no usable key" in reason and "sim/k1" in reason for _, reason in failures)
    assert "secret-k1" not in engine.failure_reason + "".join(r for _, r in failures)
    assert sim.batches.stats.batches_created == 0


async def test_retries_can_go_online_instead_of_into_the_next_batch(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.05, batch_fault_line=1.0)
    config, secrets = batch_job(tmp_path, sim.base_url, batch_retries="online")

    engine = Engine(config, secrets)
    state = await engine.run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.DONE and len(results) == 60 and failures == []
    assert sim.batches.stats.batches_created == 3  # no file of retries
    assert sim.batches.stats.batch_lines_failed == 12
    assert sim.stats.admitted == 12  # every request once more, online
    with sqlite3.connect(config.job.store) as conn:
        ((cost,),) = conn.execute("SELECT SUM(cost) FROM results").fetchall()
    assert abs(engine.snapshot().cost_usd - cost) <= 1e-9  # online answers at online prices


async def test_a_batch_past_its_deadline_sends_the_remainder_online(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.05, batch_fault_stuck=1.0)
    config, secrets = batch_job(
        tmp_path, sim.base_url, records=10, batch_deadline_s=0.3, batch_retries="online"
    )

    state = await Engine(config, secrets).run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.DONE and len(results) == 10 and failures == []
    assert sim.batches.stats.batches_created == 1 and sim.batches.stats.batches_cancelled == 1
    assert sim.stats.admitted == 2  # its two requests, online


async def test_a_file_past_the_providers_bytes_is_split_into_more_batches(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.05)
    config, secrets = batch_job(tmp_path, sim.base_url, batch_max_requests=1000)
    few_bytes = replace(config.providers[0], batch_max_bytes=3000)  # two lines of ~1.2 kB
    config = replace(config, providers=(few_bytes,))

    state = await Engine(config, secrets).run()

    results, _ = stored(Path(config.job.store))
    assert state is JobState.DONE and len(results) == 60
    assert sim.batches.stats.batches_created == 6  # 12 requests, 2 a file
    assert sim.stats.chunk_ids_answered == 60


async def test_answers_that_do_not_validate_are_retried_like_online_ones(
    tmp_path: Path, simulator
) -> None:
    """Lines whose answers leave chunks out or are not the JSON asked for, as online."""
    sim = await simulator(
        keys=sim_keys(KEYS),
        batch_delay_s=0.05,
        drift_after=1,
        drift_until=9,
        drift=("missing_ids", "malformed"),
    )
    config, secrets = batch_job(tmp_path, sim.base_url)

    engine = Engine(config, secrets)
    state = await engine.run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.DONE and len(results) == len(set(results)) == 60 and failures == []
    assert sim.stats.drifted_answers == 8
    assert dict(engine.snapshot().errors_by_kind).get("malformed", 0) > 0
    assert sim.batches.stats.batch_lines_answered > 12  # what they left out was asked again
