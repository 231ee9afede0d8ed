"""One budget for every worker of a cluster, through a real redis-server.

Two `Engine`s joined to one job (what two `crawldeck run` processes do),
against the real simulator on loopback: together they never pass the cap,
and a rerun with a higher one finishes the job.  The shared tally itself:
the last room goes to one worker only, and a worker that dies holding a
reservation has it counted as spent until a late settle corrects it.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from engine.cluster.shared_spend import SharedSpendBudget
from engine.config.settings import JobConfig
from engine.engine import Engine
from engine.limits.spend_budget import Costs
from engine.observe.snapshot import JobState
from tests.engine.cluster.test_cluster_job import elsewhere, results, run_together, shared, workers
from tests.engine.conftest import job_config, sim_keys, write_records
from tests.redis_server import RedisServer

GUARD_S = 60.0
KEYS = [("k1", 60_000, 100_000_000)]
RECORDS = 100


def costs(worst: float, least: float | None = None) -> Costs:
    """A request that may cost `worst` and can be sent for `least` (else only for `worst`)."""
    return lambda: (worst, worst if least is None else least)


def budgeted(config: JobConfig, budget_usd: float) -> JobConfig:
    """Dear prices (a request of 5 records ~$0.09) and max_tokens 300, as test_budget's."""
    provider = replace(
        config.providers[0],
        price_input_per_m=100.0,
        price_output_per_m=400.0,
        max_output_tokens=300,
    )
    return replace(config, providers=(provider,), job=replace(config.job, budget_usd=budget_usd))


async def tally(redis: Redis) -> float:
    return float(await redis.hget("test-job:spend", "spent") or 0.0)


async def test_two_workers_hold_one_cap_together_and_a_rerun_with_a_higher_one_finishes(
    redis_server: RedisServer, redis_client: Redis, tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", RECORDS), sim.base_url, KEYS
    )
    config = budgeted(shared(config, redis_server.url), 0.8)  # the job costs ~$1.8
    config = replace(config, preset=replace(config.preset, concurrency=4))
    other = elsewhere(config, tmp_path / "other" / "results.db")

    a, b, states = await run_together(config, other, secrets)

    assert states == [JobState.STOPPED, JobState.STOPPED]
    spent = await tally(redis_client)
    assert spent == pytest.approx(a.stats.cost_usd + b.stats.cost_usd)
    assert spent <= 0.8  # both workers together, never above the cap
    # Short of it by less than a batch's expected cost (a cluster does not split its
    # batches at the end: a split entry settles with its last chunk).
    assert 0.8 - spent < 1.5 * spent / (a.stats.requests + b.stats.requests)
    assert a.stats.done > 0 and b.stats.done > 0  # both worked on it
    # Settled by the workers; the store has them, or they wait in Redis for its collector.
    answered = a.stats.done + b.stats.done
    assert sim.stats.chunk_ids_answered == answered < RECORDS
    assert 0 < results(Path(config.job.store)) <= answered
    assert a.budget_line.startswith("budget reached: $") and "chunks not started" in a.budget_line
    view = a.snapshot().budget
    assert view is not None and view.reached and view.reserved_usd == 0.0

    more = budgeted(config, 5.0)
    async with workers(more) as (again,):
        finished = Engine(more, secrets, cluster=again)
        async with asyncio.timeout(GUARD_S):
            assert await finished.run() is JobState.DONE

    assert results(Path(config.job.store)) == RECORDS
    assert sim.stats.chunk_ids_answered == RECORDS  # every chunk once, over both runs
    assert finished.snapshot().budget.spent_earlier_usd == pytest.approx(spent)  # type: ignore[union-attr]
    assert await tally(redis_client) <= 5.0


async def test_the_last_room_goes_to_one_worker_and_the_other_is_told_there_is_none(
    redis_client: Redis,
) -> None:
    one = SharedSpendBudget(1.0, redis_client, "test-job", "w1", hold_s=30.0)
    two = SharedSpendBudget(1.0, redis_client, "test-job", "w2", hold_s=30.0)
    await one.open()
    await two.open()
    writers = [asyncio.create_task(one.run_writer()), asyncio.create_task(two.run_writer())]

    first = await one.reserve(costs(0.7))
    waiting = asyncio.create_task(two.reserve(costs(0.7, 0.2)))
    await asyncio.sleep(0.1)
    assert first is not None and not waiting.done()  # 0.7 may come back: it waits

    first.settle(0.5)  # written by one's writer; two hears of it through Redis
    second = await asyncio.wait_for(waiting, GUARD_S)
    assert second is not None and second.worst_usd == pytest.approx(0.5)  # the last room

    more = asyncio.create_task(one.reserve(costs(0.3, 0.1)))
    await asyncio.sleep(0.1)
    assert not more.done()  # two's request is out: what it leaves may do
    second.settle(0.45)
    assert await asyncio.wait_for(more, GUARD_S) is None  # 0.05 left, nothing out: none

    for budget in (one, two):
        budget.close_writer()
    await asyncio.gather(*writers)
    assert await tally(redis_client) == pytest.approx(0.95)
    await one.aclose()
    await two.aclose()


async def test_a_reservation_its_worker_stopped_renewing_counts_as_spent_until_settled(
    redis_client: Redis,
) -> None:
    gone = SharedSpendBudget(1.0, redis_client, "test-job", "gone", hold_s=0.2)
    alive = SharedSpendBudget(1.0, redis_client, "test-job", "alive", hold_s=30.0)
    await gone.open()
    await alive.open()

    held = await gone.reserve(costs(0.6))  # and its worker dies: no writer renews it
    assert held is not None
    late = await asyncio.wait_for(alive.reserve(costs(0.6, 0.3)), GUARD_S)

    # The hold ran out: its worst case counts as spent, so only 0.4 was left.
    assert late is not None and late.worst_usd == pytest.approx(0.4)
    assert await tally(redis_client) == pytest.approx(0.6)

    held.settle(0.1)  # it was alive after all: the tally learns what it cost
    writer = asyncio.create_task(gone.run_writer())
    gone.close_writer()
    await writer
    assert await tally(redis_client) == pytest.approx(0.1)
    await gone.aclose()
    await alive.aclose()


async def test_a_live_worker_keeps_its_reservations_however_busy_its_writer_is(
    redis_client: Redis,
) -> None:
    busy = SharedSpendBudget(1.0, redis_client, "test-job", "busy", hold_s=0.4)
    await busy.open()
    writer = asyncio.create_task(busy.run_writer())
    probe = await busy.reserve(costs(0.01))  # a worker's first request goes alone
    assert probe is not None
    probe.settle(0.01)
    held = await busy.reserve(costs(0.6))  # a request waiting long for its key, say
    assert held is not None
    for _ in range(23):  # a settle every 0.05 s keeps the writer busy for 3 holds
        quick = await busy.reserve(costs(0.01))
        assert quick is not None
        quick.settle(0.01)
        await asyncio.sleep(0.05)

    look = SharedSpendBudget(1.0, redis_client, "test-job", "look", hold_s=30.0)
    await look.open()  # a read: a hold past its time would be counted as spent now
    assert await tally(redis_client) == pytest.approx(0.24)

    held.settle(0.2)
    busy.close_writer()
    await writer
    assert await tally(redis_client) == pytest.approx(0.44)
    await busy.aclose()
    await look.aclose()
