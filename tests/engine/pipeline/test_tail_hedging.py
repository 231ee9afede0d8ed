"""The end of a job does not wait for its slowest request.

Against the real simulator on loopback through the real openai client: in
a job's tail (input ended, no fresh batch waiting) a request running past
its key's usual latency gets a duplicate on budget the key can spare; the
first answer wins and the other call is cancelled, so the job ends about a
latency after its last send instead of a hang's patience later — and every
chunk is stored exactly once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from engine.engine import Engine
from engine.limits.key_latency import KeyLatency
from engine.observe.snapshot import JobState
from tests.engine.conftest import job_config, sim_keys, write_records

TIMEOUT_S = 60.0
BATCHES = 200


async def until(condition: Callable[[], bool], limit_s: float = 30.0) -> None:
    """Wait for `condition` (the engine and simulator have no event for these counts)."""
    async with asyncio.timeout(limit_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_hang_in_the_tail_is_answered_by_a_duplicate_and_stored_once(
    tmp_path: Path, simulator
) -> None:
    keys = [("k1", 60_000, 10**9)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.1, 0.2), hang_s=3600.0)
    records = write_records(tmp_path / "in.txt", 5 * BATCHES)
    config, secrets = job_config(tmp_path, records, sim.base_url, keys)
    preset = replace(config.preset, concurrency=8, request_timeout_s=TIMEOUT_S, max_retries=8)
    config = replace(config, preset=preset)
    engine = Engine(config, secrets)

    job = asyncio.create_task(engine.run())
    # The last few requests hang (the ones a job's end used to wait for) — just
    # those that arrive in a moment, so the duplicates sent a latency later do not.
    await until(lambda: engine.stats.requests >= BATCHES - 10)
    sim.set_faults(fault_hang=1.0)
    hangs_from = time.monotonic()
    await until(lambda: sim.stats.faults["hang"] >= 1)
    sim.set_faults(fault_hang=0.0)
    assert await job is JobState.DONE
    tail = time.monotonic() - hangs_from

    assert sim.stats.faults["hang"] >= 1
    # Waiting out a hang takes its key's patience at least (then a retry).
    assert tail < KeyLatency.HANG_FLOOR_S / 2
    with sqlite3.connect(config.job.store) as db:
        results, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT chunk_id) FROM results"
        ).fetchone()
        (failures,) = db.execute("SELECT COUNT(*) FROM failures").fetchone()
    assert (results, distinct, failures) == (5 * BATCHES, 5 * BATCHES, 0)
