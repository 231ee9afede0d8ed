"""A hung request costs a latency, not a timeout.

Against the real simulator on loopback through the real openai client: once
a key's answers say what is usual, a request far beyond it is abandoned and
its batch requeued — long before the request timeout — and every chunk
ends stored exactly once.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.limits.key_latency import KeyLatency
from engine.observe.events import EventKind
from engine.observe.snapshot import JobState
from engine.pipeline.dispatcher import HEDGE_SHARE
from tests.engine.conftest import job_config, sim_keys, write_records

TIMEOUT_S = 60.0


async def until(condition: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Wait for `condition` (the engine has no event for "n answers")."""
    async with asyncio.timeout(limit_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_hang_is_abandoned_long_before_the_timeout_and_nothing_is_lost_or_doubled(
    tmp_path: Path, simulator
) -> None:
    keys = [("k1", 60_000, 10**9)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.01, 0.05), hang_s=3600.0)
    records = write_records(tmp_path / "in.txt", 5 * 150)
    config, secrets = job_config(tmp_path, records, sim.base_url, keys)
    preset = replace(config.preset, concurrency=8, request_timeout_s=TIMEOUT_S, max_retries=8)
    config = replace(config, preset=preset)
    engine = Engine(config, secrets)

    started = time.monotonic()
    job = asyncio.create_task(engine.run())
    # Hangs begin once the key's answers have said what its latency usually is.
    await until(lambda: engine.stats.requests >= KeyLatency.MIN_SAMPLES + 10)
    sim.set_faults(fault_hang=0.1)
    assert await job is JobState.DONE
    wall = time.monotonic() - started

    assert sim.stats.faults["hang"] > 0
    assert wall < TIMEOUT_S / 4  # each hang cost seconds, not the 60 s timeout
    hung = [e for e in engine.events.recent() if e.kind is EventKind.RETRY and "hung" in e.message]
    assert hung
    with sqlite3.connect(config.job.store) as db:
        results, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT chunk_id) FROM results"
        ).fetchone()
        (failures,) = db.execute("SELECT COUNT(*) FROM failures").fetchone()
    assert (results, distinct, failures) == (5 * 150, 5 * 150, 0)


async def test_a_hang_in_the_opening_burst_is_abandoned_once_the_key_has_answered_enough(
    tmp_path: Path, simulator
) -> None:
    # A full bucket lets the whole first wave go before any answer: no request in
    # it had a patience when it was sent, and a hang among them used to hold the
    # job's end for the whole request timeout.
    keys = [("k1", 60_000, 10**9)]
    sim = await simulator(
        keys=sim_keys(keys), latency_s=(0.3, 0.6), hang_s=3600.0, fault_hang=0.2, seed=3
    )
    records = write_records(tmp_path / "in.txt", 5 * 120)
    config, secrets = job_config(tmp_path, records, sim.base_url, keys)
    preset = replace(config.preset, concurrency=64, request_timeout_s=TIMEOUT_S, max_retries=8)
    config = replace(config, preset=preset)
    engine = Engine(config, secrets)

    started = time.monotonic()
    job = asyncio.create_task(engine.run())
    # Hangs only among the first wave, sent before the key had answered at all.
    await until(lambda: sim.stats.requests_by_key.get("secret-k1", 0) >= 64 or job.done())
    first_answers = engine.stats.requests
    sim.set_faults(fault_hang=0.0)
    assert await job is JobState.DONE
    wall = time.monotonic() - started

    assert first_answers == 0 and sim.stats.faults["hang"] > 0
    assert wall < TIMEOUT_S / 6  # each hang cost its key's patience, not the 60 s timeout
    hung = [e for e in engine.events.recent() if e.kind is EventKind.RETRY and "hung" in e.message]
    # Abandoned as hung, or — the whole job being its own tail — answered by a hedge.
    assert hung or engine.stats.hedged
    with sqlite3.connect(config.job.store) as db:
        results, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT chunk_id) FROM results"
        ).fetchone()
        (failures,) = db.execute("SELECT COUNT(*) FROM failures").fetchone()
    assert (results, distinct, failures) == (5 * 120, 5 * 120, 0)


def test_patience_waits_for_enough_answers_and_stays_within_its_floor_and_the_timeout() -> None:
    latency = KeyLatency()
    for _ in range(KeyLatency.MIN_SAMPLES - 1):
        latency.record(0.1)
    assert latency.patience(TIMEOUT_S) == TIMEOUT_S  # too few answers to say what is usual

    latency.record(0.1)
    assert latency.patience(TIMEOUT_S) == KeyLatency.HANG_FLOOR_S  # 0.4 s would be too eager

    for _ in range(KeyLatency.WINDOW):
        latency.record(2.0)
    assert latency.patience(TIMEOUT_S) == 2.0 * KeyLatency.HANG_MARGIN
    assert latency.patience(3.5) == 3.5  # the timeout stays the ceiling


async def test_at_the_tail_a_slow_batch_is_sent_again_and_stored_once(
    tmp_path: Path, simulator
) -> None:
    """Once nothing waits to be sent, a request out longer than its key's median latency
    is sent a second time: the first answer settles the batch, the other is dropped."""
    keys = [("k1", 60_000, 10**9)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.05, 0.4), hang_s=3600.0, seed=5)
    records = write_records(tmp_path / "in.txt", 5 * 200)
    config, secrets = job_config(tmp_path, records, sim.base_url, keys)
    preset = replace(config.preset, concurrency=16, request_timeout_s=TIMEOUT_S, max_retries=8)
    config = replace(config, preset=preset)
    engine = Engine(config, secrets)

    job = asyncio.create_task(engine.run())
    await until(lambda: engine.stats.requests >= 150 or job.done())
    sim.set_faults(fault_hang=0.2)  # the last requests: a fifth of them never answer
    started = time.monotonic()
    assert await job is JobState.DONE

    assert engine.stats.hedged > 0
    assert time.monotonic() - started < KeyLatency.HANG_FLOOR_S * 2
    with sqlite3.connect(config.job.store) as db:
        results, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT chunk_id) FROM results"
        ).fetchone()
        (failures,) = db.execute("SELECT COUNT(*) FROM failures").fetchone()
    assert (results, distinct, failures) == (5 * 200, 5 * 200, 0)


async def test_a_job_that_is_all_tail_sends_few_of_its_batches_twice(
    tmp_path: Path, simulator
) -> None:
    """A job smaller than the concurrency is tail from its first request: hedges are
    capped at a share of its requests, each being paid for like any other."""
    keys = [("k1", 60_000, 10**9)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.05, 0.4), seed=3)
    records = write_records(tmp_path / "in.txt", 5 * 60)
    config, secrets = job_config(tmp_path, records, sim.base_url, keys)
    config = replace(config, preset=replace(config.preset, concurrency=64))
    engine = Engine(config, secrets)

    assert await engine.run() is JobState.DONE

    assert 1 <= engine.stats.hedged <= math.ceil(HEDGE_SHARE * 60)
    assert sim.stats.requests <= 60 + math.ceil(HEDGE_SHARE * 60)


@pytest.mark.parametrize("seed", [1, 4, 7])
async def test_a_hedge_waiting_for_budget_as_the_last_answer_comes_does_not_hold_the_end(
    tmp_path: Path, simulator, seed: int
) -> None:
    """Two batches on a one-second bucket of two requests: the second, the job's last,
    is hedged at the first's latency, and the hedge waits for budget past the moment
    the second is answered and admission ends.  The job ends then all the same.
    (With these seeds the second answer comes during that wait: the job used to wait
    forever on a wake-up spent before it looked.)"""
    keys = [("k1", 120, 10**9)]  # 2 a second, enforced per second
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.2, 0.4), burst_s=1.0, seed=seed)
    records = write_records(tmp_path / "in.txt", 8)
    config, secrets = job_config(tmp_path, records, sim.base_url, keys)
    preset = replace(config.preset, concurrency=16, batch_size=4)
    engine = Engine(replace(config, preset=preset), secrets)

    async with asyncio.timeout(10):
        assert await engine.run() is JobState.DONE
    assert engine.snapshot().counts.done == 8
