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

from engine.config.config_problem import ConfigError
from engine.config.job_file import load_config
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


def mixed_job(
    tmp_path: Path, base_url: str, records: int = 60, **batch: Any
) -> tuple[JobConfig, dict[str, str]]:
    """The bulk through the Batch API on provider "bulk" (key b1), one file of 12
    requests; an online provider "now" (key o1) beside it."""
    config, secrets = batch_job(tmp_path, base_url, records=records, batch_max_requests=12, **batch)
    bulk = replace(
        config.providers[0],
        name="bulk",
        keys=(replace(config.providers[0].keys[0], alias="b1"),),
    )
    now = replace(
        bulk, name="now", mode="online", keys=(replace(bulk.keys[0], env="KEY_O1", alias="o1"),)
    )
    secrets = {"bulk/b1": "secret-b1", "now/o1": "secret-o1"}
    return replace(config, providers=(bulk, now)), secrets


def answered_by(db: Path) -> dict[tuple[str, str], int]:
    """Result rows by (provider, key alias): which route answered."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT provider, key_alias, COUNT(*) FROM results GROUP BY 1, 2")
        return {(provider, alias): n for provider, alias, n in rows}


MIXED_KEYS = [("b1", 6000, 10_000_000), ("o1", 6000, 10_000_000)]


async def test_a_batch_whose_window_is_at_risk_keeps_its_answers_and_sends_the_rest_online(
    tmp_path: Path, simulator
) -> None:
    # The batch takes 2 s; at 1 s it is cut off, having answered about half its requests.
    sim = await simulator(keys=sim_keys(MIXED_KEYS), batch_delay_s=2.0)
    config, secrets = mixed_job(tmp_path, sim.base_url, batch_online_after_s=1.0)

    engine = Engine(config, secrets)
    state = await engine.run()

    db = Path(config.job.store)
    results, failures = stored(db)
    assert state is JobState.DONE and failures == []
    assert len(results) == len(set(results)) == 60  # every chunk once
    assert sim.stats.chunk_ids_answered == 60  # nothing answered twice by the provider
    assert sim.batches.stats.batches_created == sim.batches.stats.batches_cancelled == 1
    by_route = answered_by(db)
    assert set(by_route) == {("bulk", "b1"), ("now", "o1")}  # online on the online key only
    assert 0 < by_route["bulk", "b1"] < 60 and by_route["bulk", "b1"] % 5 == 0
    assert sim.stats.admitted * 5 == by_route["now", "o1"]  # the rest, a request each
    snap = engine.snapshot()
    assert snap.batch is not None and snap.batch.chunks_sent_online == by_route["now", "o1"]
    assert snap.batch.abandoned == 1 and snap.batch.settled == 0
    (cut,) = [e for e in snap.events if e.kind is EventKind.BATCH_TO_ONLINE]
    assert "batch_online_after_s (1s)" in cut.message
    assert f"{by_route['now', 'o1']} chunks sent online" in cut.message
    assert f"{by_route['now', 'o1']} chunks sent online" in status_line(snap)
    assert batch_states(db) == ["abandoned"]
    # Its cost projected at the end is what it cost: the remainder at online prices.
    assert snap.cost_usd > 0 and snap.batch.cost_projected_usd is not None
    assert abs(snap.batch.cost_projected_usd - snap.cost_usd) <= snap.cost_usd * 1e-6


async def test_failed_lines_of_a_mixed_job_are_retried_on_its_online_keys(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(MIXED_KEYS), batch_delay_s=0.05, batch_fault_line=1.0)
    config, secrets = mixed_job(tmp_path, sim.base_url, records=20, batch_retries="online")

    state = await Engine(config, secrets).run()

    db = Path(config.job.store)
    results, failures = stored(db)
    assert state is JobState.DONE and failures == []
    assert len(results) == len(set(results)) == 20
    assert answered_by(db) == {("now", "o1"): 20}
    assert sim.batches.stats.batches_created == 1 and sim.stats.admitted == 4


async def test_sources_that_must_come_back_now_go_online_and_the_bulk_through_the_batch_api(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(MIXED_KEYS), batch_delay_s=0.05)
    config, secrets = mixed_job(tmp_path, sim.base_url, batch_online_after_s=30.0)
    config = replace(config, job=replace(config.job, online_sources=("in.txt#L1?",)))

    engine = Engine(config, secrets)
    state = await engine.run()

    db = Path(config.job.store)
    results, failures = stored(db)
    assert state is JobState.DONE and failures == []
    assert len(results) == len(set(results)) == 60 and sim.stats.chunk_ids_answered == 60
    with sqlite3.connect(db) as conn:
        route = dict(conn.execute("SELECT source, provider FROM results").fetchall())
    # Lines 10-19 went online, in the requests of 5 that hold them (lines 6-20).
    assert {source for source, by in route.items() if by == "now"} == {
        f"in.txt#L{n}" for n in range(6, 21)
    }
    assert answered_by(db) == {("bulk", "b1"): 45, ("now", "o1"): 15}
    snap = engine.snapshot()
    assert snap.batch is not None and snap.batch.chunks_sent_online == 15


async def test_a_preset_chooses_the_batch_route_and_a_switch_off_it_is_refused(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=0.5)
    path = tmp_path / "job.toml"
    path.write_text(
        f"""
[job]
name = "by-preset"
input = "{write_records(tmp_path / "in.txt", 20)}"
input_format = "text"
chunk_tokens = 400
chunk_overlap_tokens = 0
preset = "overnight"

[presets.overnight]
mode = "batch"
batch_size = 5

[presets.overnight-wide]
mode = "batch"
batch_size = 5
concurrency = 32

[[providers]]
name = "sim"
base_url = "{sim.base_url}"
model = "gpt-4o-mini"
batch_poll_s = 0.05
batch_poll_max_s = 0.2

[[providers.keys]]
env = "KEY_K1"
alias = "k1"

[drift]
enabled = false
""",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.providers[0].mode == "batch"  # from the preset: the provider says none
    engine = Engine(config, {"sim/k1": "secret-k1"})
    running = asyncio.create_task(engine.run())
    await wait_for(lambda: sim.batches.stats.batches_created == 1)

    try:
        engine.apply_preset("aggressive")
    except ConfigError as refused:
        assert "the route is chosen at start" in str(refused) and "\n" not in str(refused)
    else:
        raise AssertionError("a switch to an online preset mid-run was accepted")
    engine.apply_preset("overnight-wide")  # batch too: the route stays
    state = await running

    snap = engine.snapshot()
    assert snap.preset.name == "overnight-wide"
    assert any(
        e.kind is EventKind.WARNING and "preset not switched" in e.message for e in snap.events
    )
    assert state is JobState.DONE and len(stored(Path(config.job.store))[0]) == 20
    assert sim.stats.admitted == 0 and sim.batches.stats.batches_created == 1


async def test_a_batch_cut_at_its_deadline_keeps_what_it_finished(
    tmp_path: Path, simulator
) -> None:
    # The batch takes 1 s; at its 0.5 s deadline it has answered about 40 % of its requests.
    sim = await simulator(keys=sim_keys(KEYS), batch_delay_s=1.0)
    config, secrets = batch_job(tmp_path, sim.base_url, batch_max_requests=12, batch_deadline_s=0.5)

    engine = Engine(config, secrets)
    running = asyncio.create_task(engine.run())
    await wait_for(lambda: sim.batches.stats.batches_cancelled == 1)
    sim.set_batch_faults(batch_delay_s=0.05)  # the next file is answered in time
    state = await running

    db = Path(config.job.store)
    results, failures = stored(db)
    assert state is JobState.DONE and failures == []
    assert len(results) == len(set(results)) == 60
    assert sim.stats.chunk_ids_answered == 60  # what the cut batch finished is not paid twice
    assert sim.batches.stats.batches_cancelled == 1
    assert sim.batches.stats.batches_created == 2  # the rest in a later file
    assert sim.stats.admitted == 0  # not one online request
    assert batch_states(db)[0] == "abandoned"
    (cut,) = [e for e in engine.snapshot().events if "cancelled:" in e.message]
    kept = int(cut.message.split("cancelled: ")[1].split(" of ")[0])
    assert 0 < kept < 12  # requests of the cut batch stored from its partial output
