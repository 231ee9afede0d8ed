"""The rate-limit benchmark measures what it says: the provider's bound, the ETA's error, the store.

The benchmark itself runs on demand (`python -m tests.benchmarks.rate_limit_efficiency`);
these pin its arithmetic on the issue's own figures and run its instrument once on a
tiny job, so a change that breaks the measuring shows up here, not in a misleading table.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.simulation.simulator import ProviderSimulator, SimulatorConfig
from tests.benchmarks.provider_bound import (
    EtaWatch,
    provider_bound_s,
    requests_per_minute,
    tally_store,
)
from tests.benchmarks.rate_limit_efficiency import (
    MEDIAN_LATENCY_S,
    Scenario,
    chosen,
    run,
    scenarios,
)
from tests.engine.conftest import job_config, sim_keys, write_records

UNBOUNDED = 10_000_000


def test_the_bound_is_the_burst_spent_at_once_and_the_rest_at_the_refill_rate() -> None:
    one_key = [(1200, UNBOUNDED)]
    # The figures: 2,100 requests at 1,200 RPM take 45 s on a full-minute
    # bucket, 104 s when the minute is enforced per second.
    assert provider_bound_s(2100, one_key, 300, burst_s=60, floor_s=1) == pytest.approx(45.0)
    assert provider_bound_s(2100, one_key, 300, burst_s=1, floor_s=1) == pytest.approx(104.0)
    # 250 requests charged ~2,000 tokens each at 300k TPM: the tokens bind, 40 s.
    tokens_key = [(10_000, 300_000)]
    assert requests_per_minute(tokens_key, 2000) == pytest.approx(150.0)
    assert provider_bound_s(250, tokens_key, 2000, burst_s=60, floor_s=1) == pytest.approx(40.0)
    # 5,250 requests over keys of 300/600/900/1,200 RPM: 45 s.
    four = [(rpm, UNBOUNDED) for rpm in (300, 600, 900, 1200)]
    assert provider_bound_s(5250, four, 300, burst_s=60, floor_s=1) == pytest.approx(45.0)


def test_a_job_inside_the_burst_is_bounded_by_one_answer_and_no_limit_by_nothing_else() -> None:
    assert provider_bound_s(100, [(1200, UNBOUNDED)], 300, burst_s=60, floor_s=1.0) == 1.0
    assert provider_bound_s(100, [(None, None)], 300, burst_s=60, floor_s=1.0) == 1.0
    assert requests_per_minute([(None, 60_000), (600, None)], 1000) == pytest.approx(660.0)


def test_the_eta_error_compares_what_the_snapshot_said_with_what_the_job_then_took() -> None:
    watch = EtaWatch(total=1000)
    # A recorded run: (elapsed s, chunks finished, the snapshot's ETA).
    for sample in [(0.5, 0, None), (2.0, 60, 40.0), (3.0, 100, 30.0), (3.1, 130, 29.0)]:
        watch.observe(*sample)
    for sample in [(8.0, 240, 20.0), (9.0, 250, 18.0), (10.0, 300, 16.0)]:
        watch.observe(*sample)

    errors = watch.errors(wall_s=27.0)

    assert errors[0.10] == pytest.approx((30.0 - 24.0) / 24.0)  # promised 30 s, took 24
    assert errors[0.25] == pytest.approx((18.0 - 18.0) / 18.0)
    unreached = EtaWatch(total=1000)
    unreached.observe(1.0, 50, 10.0)
    assert unreached.errors(wall_s=5.0) == {0.10: None, 0.25: None}


async def test_the_store_tally_finds_lost_twice_and_unexplained_chunks(tmp_path: Path) -> None:
    keys = (("k1", 6000, UNBOUNDED),)
    async with ProviderSimulator(SimulatorConfig(keys=sim_keys(keys))) as sim:
        config, secrets = job_config(
            tmp_path, write_records(tmp_path / "in.txt", 40), sim.base_url, keys=keys
        )
        await Engine(config, secrets).run()
    db = Path(config.job.store)

    whole = tally_store(db, chunks=40)
    assert (whole.done, whole.failed, whole.lost, whole.twice, whole.whole) == (40, 0, 0, 0, True)

    with closing(sqlite3.connect(db)) as conn, conn:
        (first, second, third) = [
            r[0] for r in conn.execute("SELECT chunk_id FROM results LIMIT 3")
        ]
        conn.execute("DELETE FROM results WHERE chunk_id = ?", (first,))
        conn.execute(
            "INSERT INTO failures SELECT chunk_id, prompt_version, model, source, seq, text, "
            "'timed out', 3, run_id, created_at FROM results WHERE chunk_id = ?",
            (second,),
        )
        conn.execute(
            "INSERT INTO failures SELECT chunk_id, prompt_version, model, source, seq, text, "
            "'', 3, run_id, created_at FROM results WHERE chunk_id = ?",
            (third,),
        )
        conn.execute("DELETE FROM results WHERE chunk_id = ?", (third,))

    broken = tally_store(db, chunks=40)
    assert (broken.done, broken.failed, broken.lost, broken.twice) == (38, 1, 1, 1)
    assert broken.unexplained == 1
    assert not broken.whole


def test_only_picks_a_scenario_on_both_buckets_or_one_run() -> None:
    runs = scenarios(quick=True)

    assert [r.run_name for r in chosen(runs, ["rpm"])] == ["rpm:60", "rpm:1"]
    assert [r.run_name for r in chosen(runs, ["tpm:1", "faults"])] == ["tpm:1", "faults:60"]
    with pytest.raises(SystemExit, match="unknown run"):
        chosen(runs, ["nope"])


async def test_one_run_measures_a_tiny_job_end_to_end(tmp_path: Path) -> None:
    tiny = Scenario("tiny", "a job inside the burst", ((600, UNBOUNDED),), 8, 20, burst_s=60)
    started = time.monotonic()

    out = await run(replace(tiny, configured_scale=2.0), tmp_path)

    assert out.requests >= 8  # the simulator in its own process saw them
    assert out.tokens_per_request > 0
    assert out.bound_s == MEDIAN_LATENCY_S  # it fits in the burst: one answer's time
    assert 0 < out.wall_s <= time.monotonic() - started
    assert (out.tally.done, out.tally.lost, out.tally.twice) == (32, 0, 0)
    assert set(out.eta_errors) == {0.10, 0.25}
