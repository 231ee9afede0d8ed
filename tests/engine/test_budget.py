"""A budget that holds: `[job] budget_usd` against the real simulator and a real SQLite store.

Each request reserves its worst case (its prompt as estimated, with a
margin, plus the `max_tokens` it is sent with, at its model's prices)
before it is sent; the answer settles it at what it cost.  A job capped
below its cost stops with spent ≤ cap, the rest pending; a rerun with a
higher cap finishes; what earlier runs spent counts.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config.settings import JobConfig
from engine.engine import Engine
from engine.observe.events import Event, EventKind
from engine.observe.headless_reporter import status_line
from engine.observe.snapshot import JobState
from engine.observe.snapshot_codec import decode_snapshot, encode_snapshot
from tests.engine.conftest import job_config, sim_keys, write_records

HANG_GUARD_S = 60.0
KEYS = [("k1", 60_000, 100_000_000)]
RECORDS = 100  # one chunk each: 20 requests of 5
# Dear prices, so a handful of requests is dollars and cents: a request of 5
# records is ~250 tokens in and ~170 out here, ~$0.09; its worst case, with
# max_tokens 300, ~$0.15.
PRICE_IN, PRICE_OUT = 100.0, 400.0
MAX_TOKENS = 300


def budgeted(config: JobConfig, budget_usd: float | None) -> JobConfig:
    provider = replace(
        config.providers[0],
        price_input_per_m=PRICE_IN,
        price_output_per_m=PRICE_OUT,
        max_output_tokens=MAX_TOKENS,
    )
    return replace(config, providers=(provider,), job=replace(config.job, budget_usd=budget_usd))


async def run_to_end(engine: Engine) -> JobState:
    async with asyncio.timeout(HANG_GUARD_S):  # a guard: a job that never ends fails here
        return await engine.run()


def store_figures(db: Path) -> tuple[int, int, float, list[dict[str, object]]]:
    """(results, failures, the results' cost, each run's summary) in the store."""
    with sqlite3.connect(db) as conn:
        results, cost = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM results"
        ).fetchone()
        (failures,) = conn.execute("SELECT COUNT(*) FROM failures").fetchone()
        runs = [json.loads(row[0]) for row in conn.execute("SELECT summary_json FROM runs")]
    return int(results), int(failures), float(cost), runs


def budget_events(engine: Engine) -> list[Event]:
    return [e for e in engine.events.recent() if e.kind is EventKind.BUDGET_REACHED]


@pytest.fixture
def records(tmp_path: Path) -> Path:
    return write_records(tmp_path / "in.txt", RECORDS)


async def test_a_job_capped_below_its_cost_stops_under_the_cap_within_one_request_of_it(
    tmp_path: Path, simulator, records: Path
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))
    config, secrets = job_config(tmp_path, records, sim.base_url, KEYS)
    cap = 0.8  # the job costs ~$1.8
    engine = Engine(budgeted(config, cap), secrets)

    state = await run_to_end(engine)

    assert state is JobState.STOPPED
    snap = engine.snapshot()
    assert snap.budget is not None and snap.budget.reached
    spent = snap.budget.spent_usd
    results, failures, results_cost, (summary,) = store_figures(Path(config.job.store))
    # Never above the cap: what was billed, what the store's results cost, what the run says.
    assert spent <= cap
    assert results_cost == pytest.approx(spent)
    assert summary["spent_usd"] == pytest.approx(spent) and summary["budget_usd"] == cap
    # Within one chunk of it: the last room went to single chunks, each sent with the
    # max_tokens what was left paid for, until one chunk's expected cost did not fit.
    (event,) = budget_events(engine)
    needed = float(event.data["needed_usd"])
    assert cap - spent < needed
    assert needed < 0.05  # one chunk's expected cost here (a batch of 5 is ~$0.09)
    # The rest is not started: pending, never failed; nothing is in flight at the end.
    assert failures == 0 and snap.counts.failed == 0
    assert 0 < results < RECORDS
    assert snap.counts.pending == RECORDS - results and snap.counts.in_flight == 0
    assert snap.budget.reserved_usd == 0.0
    assert sim.stats.requests == snap.requests
    assert re.fullmatch(
        rf"budget reached: \${spent:.4f} of \$0\.8000 spent \(\$0\.0000 by earlier runs\); "
        rf"{RECORDS - results} chunks not started — raise \[job\] budget_usd in the job file "
        r"and run again to continue",
        engine.budget_line,
    )
    assert event.message == engine.budget_line
    # Viewers over the control socket (`crawldeck status`, `attach`) get it whole.
    assert decode_snapshot(json.loads(json.dumps(encode_snapshot(snap)))).budget == snap.budget
    line = status_line(snap)
    assert f"budget ${spent:.4f}/$0.8000 ($0.0000 in flight) REACHED" in line


async def test_capped_below_its_cost_a_job_stops_within_one_batch_of_the_cap_and_a_rerun_finishes(
    tmp_path: Path, simulator, records: Path
) -> None:
    """The must-show: spent ≤ cap and cap − spent < one batch's cost; the same cap again
    spends nothing; a higher cap finishes the job with every chunk answered once."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))
    config, secrets = job_config(tmp_path, records, sim.base_url, KEYS)
    db = Path(config.job.store)
    first = Engine(budgeted(config, 0.8), secrets)
    assert await run_to_end(first) is JobState.STOPPED
    spent_first = first.snapshot().budget.spent_usd  # type: ignore[union-attr]
    requests_first = sim.stats.requests

    again = Engine(budgeted(config, 0.8), secrets)
    assert await run_to_end(again) is JobState.STOPPED
    # What the first run spent counts: nothing more is sent.
    assert sim.stats.requests == requests_first
    assert again.snapshot().budget.spent_earlier_usd == pytest.approx(spent_first)  # type: ignore[union-attr]
    assert f"(${spent_first:.4f} by earlier runs)" in again.budget_line

    more = Engine(budgeted(config, 5.0), secrets)
    assert await run_to_end(more) is JobState.DONE

    results, failures, results_cost, runs = store_figures(db)
    assert (results, failures) == (RECORDS, 0)
    # Every chunk answered once over the three runs, none twice.
    assert sim.stats.chunk_ids_answered == RECORDS
    spent = [float(run["spent_usd"]) for run in runs]  # type: ignore[arg-type]
    assert spent[1] == 0.0
    assert sum(spent) == pytest.approx(results_cost) and sum(spent) <= 5.0
    # The first run stopped short of its cap by less than what a batch of 5 costs.
    batch_cost = results_cost / (RECORDS / 5)
    assert spent_first <= 0.8
    assert 0.8 - spent_first < batch_cost
    budget = more.snapshot().budget
    assert (
        budget is not None and not budget.reached and budget.spent_usd == pytest.approx(sum(spent))
    )
    assert more.budget_line == ""


async def test_a_budget_smaller_than_one_request_ends_the_job_at_once_with_nothing_sent(
    tmp_path: Path, simulator, records: Path
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))
    config, secrets = job_config(tmp_path, records, sim.base_url, KEYS)
    engine = Engine(budgeted(config, 0.01), secrets)

    state = await run_to_end(engine)

    assert state is JobState.STOPPED
    assert sim.stats.requests == 0
    assert store_figures(Path(config.job.store))[:3] == (0, 0, 0.0)
    assert re.match(
        r"budget reached: \$0\.0000 of \$0\.0100 spent \(\$0\.0000 by earlier runs\); "
        r"(at least )?\d+ chunks not started",
        engine.budget_line,
    )
    (event,) = budget_events(engine)
    assert float(event.data["needed_usd"]) > 0.01
    assert engine.elapsed_s < 5.0  # it did not wait for anything


async def test_a_cost_the_provider_reports_is_preferred_over_the_token_estimate(
    tmp_path: Path, simulator, records: Path
) -> None:
    # The same job twice: priced from tokens, then by a provider that bills double.
    plain = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))
    billing = await simulator(
        keys=sim_keys(KEYS), latency_s=(0.02, 0.05), cost_per_m=(2 * PRICE_IN, 2 * PRICE_OUT)
    )
    estimated_config, secrets = job_config(tmp_path, records, plain.base_url, KEYS, store="a.db")
    reported_config, _ = job_config(tmp_path, records, billing.base_url, KEYS, store="b.db")
    estimated = Engine(budgeted(estimated_config, 100.0), secrets)
    reported = Engine(budgeted(reported_config, 100.0), secrets)

    assert await run_to_end(estimated) is JobState.DONE
    assert await run_to_end(reported) is JobState.DONE

    estimate = estimated.snapshot()
    billed = reported.snapshot()
    assert estimate.cost_usd > 0
    # No answer was cut short: the same requests, the same tokens, billed double.
    assert billed.requests == estimate.requests and not billed.errors_by_kind
    assert billed.cost_usd == pytest.approx(2 * estimate.cost_usd)
    assert billed.budget is not None and billed.budget.spent_usd == pytest.approx(billed.cost_usd)
    assert store_figures(Path(reported_config.job.store))[2] == pytest.approx(billed.cost_usd)


async def test_a_provider_billing_twice_the_job_s_prices_still_cannot_take_it_past_the_cap(
    tmp_path: Path, simulator, records: Path
) -> None:
    # The job file's prices are half what the provider bills: its first answer says so,
    # and every worst case from then on is scaled to cover it.
    sim = await simulator(
        keys=sim_keys(KEYS), latency_s=(0.02, 0.05), cost_per_m=(2 * PRICE_IN, 2 * PRICE_OUT)
    )
    config, secrets = job_config(tmp_path, records, sim.base_url, KEYS)
    cap = 1.2  # the job is billed ~$3.6
    engine = Engine(budgeted(config, cap), secrets)

    assert await run_to_end(engine) is JobState.STOPPED

    snap = engine.snapshot()
    assert snap.budget is not None
    assert snap.budget.spent_usd == pytest.approx(snap.cost_usd)  # the provider's figures
    assert snap.budget.spent_usd <= cap
    (event,) = budget_events(engine)
    assert cap - snap.budget.spent_usd < float(event.data["needed_usd"])


async def test_requests_that_got_no_answer_count_their_worst_case_and_the_cap_still_holds(
    tmp_path: Path, simulator, records: Path
) -> None:
    # Every connection drops: the provider may have billed them; the budget assumes it did.
    sim = await simulator(keys=sim_keys(KEYS), fault_reset=1.0)
    config, secrets = job_config(tmp_path, records, sim.base_url, KEYS)
    config = replace(config, preset=replace(config.preset, max_retries=50))
    cap = 0.8
    engine = Engine(budgeted(config, cap), secrets)

    state = await run_to_end(engine)

    assert state is JobState.STOPPED
    snap = engine.snapshot()
    assert snap.budget is not None
    assert snap.cost_usd == 0.0  # nothing answered ...
    assert 0 < snap.budget.spent_usd <= cap  # ... yet every request sent counted
    # Each counted what it reserved, so the cap was used up to the last chunk's need.
    (event,) = budget_events(engine)
    assert cap - snap.budget.spent_usd < float(event.data["needed_usd"])
    assert sim.stats.requests == snap.requests
    # The chunks are pending, not failed: a rerun with more budget tries them again.
    assert store_figures(Path(config.job.store))[:2] == (0, 0)
    assert snap.counts.failed == 0
