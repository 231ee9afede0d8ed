"""Repeated text in a job shared through Redis: nothing lost, and the answers filed by text.

Workers of a cluster send what the queue gives them (one request per text
is a one-process matter), so every chunk has its own answer; the collector
files them by text all the same, so a later run in one process copies them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

from engine.engine import Engine
from engine.observe.snapshot import JobState
from tests.engine.cluster.test_cluster_job import GUARD_S, KEYS, elsewhere, shared, workers
from tests.engine.conftest import job_config, sim_keys
from tests.engine.test_same_text import lines_with_repeats, write_lines
from tests.redis_server import RedisServer


def stored_sources(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {str(row[0]) for row in conn.execute("SELECT source FROM results")}


async def test_two_workers_store_every_chunk_and_a_later_run_copies_their_answers(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.01, 0.03))
    lines = lines_with_repeats(distinct=40, repeats=10)
    config, secrets = job_config(tmp_path, write_lines(tmp_path / "in.txt", lines), sim.base_url)
    config = replace(config, preset=replace(config.preset, concurrency=2))
    clustered = shared(config, redis_server.url)
    other = elsewhere(clustered, tmp_path / "other" / "results.db")
    async with workers(clustered, other) as (here, there):
        a = Engine(clustered, secrets, cluster=here)
        b = Engine(other, secrets, cluster=there)
        async with asyncio.timeout(GUARD_S):
            states = await asyncio.gather(a.run(), b.run())

    assert states == [JobState.DONE, JobState.DONE]
    assert stored_sources(Path(config.job.store)) == {f"in.txt#L{n}" for n in range(1, 51)}

    # The same texts mirrored under new sources, in one process on the job's store.
    mirror = replace(
        config, job=replace(config.job, input=str(write_lines(tmp_path / "mirror.txt", lines)))
    )
    engine = Engine(mirror, secrets)
    sent_before = sim.stats.chunks_received
    assert await engine.run() is JobState.DONE

    assert sim.stats.chunks_received == sent_before  # nothing sent: every text had an answer
    assert (engine.snapshot().counts.done, engine.snapshot().counts.cached) == (0, 50)
    assert len(stored_sources(Path(config.job.store))) == 100
