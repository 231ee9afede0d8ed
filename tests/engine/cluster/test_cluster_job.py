"""Engines joined to one job through a real Redis: the work shared, steered as one, run again.

Two `Engine`s in one event loop, each with its own `ClusterJob` (its own
Redis connection and worker id), against the real simulator on loopback:
what `crawldeck run` does in two processes, seen from inside.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

from redis.asyncio import Redis

from engine.cluster.cluster_job import ClusterJob, joined_cluster
from engine.config.cluster_table import ClusterSettings
from engine.config.settings import JobConfig
from engine.control.controls import RunnableJob
from engine.engine import Engine
from engine.observe.snapshot import JobState
from tests.engine.conftest import job_config, sim_keys, write_records
from tests.redis_server import RedisServer

GUARD_S = 60.0
KEYS = [("k1", 60_000, 100_000_000)]


def shared(config: JobConfig, redis_url: str, **cluster: object) -> JobConfig:
    """`config` with a `[cluster]` table on `redis_url`, timings short for a test."""
    values: dict[str, object] = {"heartbeat_s": 0.2, "visibility_timeout_s": 2.0, **cluster}
    table = ClusterSettings(redis=redis_url, prefix="test-job", **values)  # type: ignore[arg-type]
    return replace(config, cluster=table)


def elsewhere(config: JobConfig, store: Path) -> JobConfig:
    """The same job run on another machine: its store path is not the job's."""
    return replace(config, job=replace(config.job, store=str(store)))


@asynccontextmanager
async def workers(*configs: JobConfig) -> AsyncIterator[list[ClusterJob]]:
    """Each config joined to its job as one worker, in order (the first claims the store)."""
    async with AsyncExitStack() as stack:
        joined = []
        for config in configs:
            cluster = await stack.enter_async_context(joined_cluster(config, {}))
            assert cluster is not None
            joined.append(cluster)
        yield joined


async def run_together(
    config: JobConfig, other: JobConfig, secrets: dict[str, str], guard_s: float = GUARD_S
) -> tuple[Engine, Engine, list[JobState]]:
    """Two workers of one job run to their end: `config`'s (the first, which claims the
    store) and `other`'s; the engines, and the states they ended in."""
    async with workers(config, other) as (here, there):
        a = Engine(config, secrets, cluster=here)
        b = Engine(other, secrets, cluster=there)
        async with asyncio.timeout(guard_s):
            states = await asyncio.gather(a.run(), b.run())
    return a, b, list(states)


def two_machines(
    tmp_path: Path,
    base_url: str,
    redis_url: str,
    *,
    records: int,
    concurrency: int,
    **cluster: object,
) -> tuple[JobConfig, JobConfig, dict[str, str]]:
    """A job over `records` text records shared through `redis_url`, each worker at
    `concurrency`: as the first machine runs it (beside its store), as a second one
    does (its store path not the job's), and the secrets."""
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", records), base_url, KEYS
    )
    config = shared(config, redis_url, **cluster)
    config = replace(config, preset=replace(config.preset, concurrency=concurrency))
    return config, elsewhere(config, tmp_path / "other" / "results.db"), secrets


def results(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(DISTINCT chunk_id) FROM results").fetchone()[0])


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD_S):
        while not condition():
            await asyncio.sleep(0.02)


async def test_two_engines_share_the_work_and_a_pause_on_one_holds_both(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.05, 0.05))
    config, other, secrets = two_machines(
        tmp_path, sim.base_url, redis_server.url, records=300, concurrency=2
    )
    async with workers(config, other) as (here, there):
        a = Engine(config, secrets, cluster=here)
        b = Engine(other, secrets, cluster=there)
        running = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
        await until(lambda: (a.snapshot().counts.done + b.snapshot().counts.done) >= 30)

        here.steered(a).pause()  # what `crawldeck attach` to worker a sends
        await until(lambda: b.snapshot().state is JobState.PAUSED)
        assert a.snapshot().state is JobState.PAUSED
        await until(lambda: a.snapshot().in_flight_requests == b.snapshot().in_flight_requests == 0)
        paused_at = sim.stats.requests
        await asyncio.sleep(0.3)
        assert sim.stats.requests == paused_at, "neither worker sends while paused"

        there.steered(b).resume()
        async with asyncio.timeout(GUARD_S):
            states = await asyncio.gather(*running)

    assert states == [JobState.DONE, JobState.DONE]
    assert a.stats.done > 0 and b.stats.done > 0
    assert a.stats.done + b.stats.done == 300
    assert results(Path(config.job.store)) == 300
    view = a.snapshot().cluster
    assert view is not None and view.run == 1
    assert (view.chunks_total, view.chunks_done, view.chunks_failed) == (300, 300, 0)
    assert view.store == f"{Path(config.job.store).resolve()} on {here.store.host}"
    assert "| cluster run 1: 300/300 chunks (done 300, failed 0" in b.summary_line()


async def test_a_rerun_is_a_new_run_that_sends_only_what_is_not_stored(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    """The job run once to its end on one machine; then run again with more input from a
    machine without the store: a new run, which sends only the new records."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.01, 0.01))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 40), sim.base_url, KEYS
    )
    config = shared(config, redis_server.url)
    async with workers(config) as (first,):
        assert await Engine(config, secrets, cluster=first).run() is JobState.DONE
    sent_first = sim.stats.chunk_ids_answered
    assert sent_first == 40

    write_records(tmp_path / "in.txt", 50)  # ten records more
    other = elsewhere(config, tmp_path / "other" / "results.db")
    async with workers(other) as (again,):
        assert again.run == 2 and not again.beside_store
        engine = Engine(other, secrets, cluster=again)
        assert await engine.run() is JobState.DONE

    assert sim.stats.chunk_ids_answered - sent_first == 10
    assert engine.stats.done == 10
    # Its results wait in Redis for a worker beside the job's store; one collects them.
    assert "10 rows" not in engine.summary_line()
    assert "result entries wait in Redis for a worker on" in engine.summary_line()
    async with workers(config) as (collector,):
        assert collector.run == 2, "the run is not finished while its rows wait"
        last = Engine(config, secrets, cluster=collector)
        assert await last.run() is JobState.DONE
    assert results(Path(config.job.store)) == 50
    assert last.stats.done == 0 and "this worker stored 10 rows in it" in last.summary_line()


async def test_quitting_one_workers_dashboard_stops_it_alone_and_the_other_finishes_the_job(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    """The dashboard runs its worker as a `RunnableJob` whose `stop` (quitting) is its own:
    the other worker goes on, takes over what the stopped one held, and ends the job."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.05, 0.05))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 200), sim.base_url, KEYS
    )
    config = shared(config, redis_server.url, visibility_timeout_s=1.0)
    config = replace(config, preset=replace(config.preset, concurrency=2))
    # The dashboard's worker on another machine: two engines of one process on one
    # SQLite file would contend for its lock, which no two workers in the field do.
    other = elsewhere(config, tmp_path / "other" / "results.db")
    async with workers(config, other) as (there, here):
        a = Engine(other, secrets, cluster=here)
        b = Engine(config, secrets, cluster=there)
        dashboard_job = here.steered(a)
        assert isinstance(dashboard_job, RunnableJob)
        running = [asyncio.create_task(dashboard_job.run()), asyncio.create_task(b.run())]
        await until(lambda: a.snapshot().counts.done >= 10)

        dashboard_job.stop()
        async with asyncio.timeout(GUARD_S):
            states = await asyncio.gather(*running)

    assert states == [JobState.STOPPED, JobState.DONE], (
        b.failure_reason,
        [e.message for e in b.events.recent()][-8:],
    )
    assert results(Path(config.job.store)) == 200


async def test_a_worker_whose_key_is_refused_leaves_its_batches_to_the_others(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    """One machine has a wrong secret for the key: its worker stops taking batches and
    fails none of them; the other worker does the whole job."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.05, 0.05))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 100), sim.base_url, KEYS
    )
    config = shared(config, redis_server.url, visibility_timeout_s=1.0)
    wrong = {key: "sk-not-this-one" for key in secrets}
    async with workers(config, config) as (here, there):
        refused = Engine(config, wrong, cluster=here)
        serving = Engine(config, secrets, cluster=there)
        async with asyncio.timeout(GUARD_S):
            # The refused one first: started together on a busy machine, the other could
            # finish the whole job before this one had sent anything to be refused for.
            states = [await refused.run(), await serving.run()]

    assert states == [JobState.FAILED, JobState.DONE], serving.failure_reason
    assert refused.failure_reason.startswith("no API key can serve any more")
    assert refused.stats.failed == 0 and serving.stats.done == 100
    with sqlite3.connect(config.job.store) as conn:
        assert conn.execute("SELECT count(*) FROM failures").fetchone()[0] == 0
    assert results(Path(config.job.store)) == 100


async def test_workers_starting_together_read_the_input_once(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    """Two workers started at once on one job: one takes the run's intake and reads the
    whole input; the other reads none of it, works on what the first enqueues, and
    counts against the job's total."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))
    config, other, secrets = two_machines(
        tmp_path, sim.base_url, redis_server.url, records=400, concurrency=4
    )
    a, b, states = await run_together(config, other, secrets)

    assert states == [JobState.DONE, JobState.DONE], (a.failure_reason, b.failure_reason)
    assert sorted((a.stats.seen, b.stats.seen)) == [0, 400], "read once, by one of them"
    assert a.stats.done > 0 and b.stats.done > 0 and a.stats.done + b.stats.done == 400
    assert a.stats.total == b.stats.total == 400
    assert results(Path(config.job.store)) == 400


async def test_a_worker_on_a_machine_without_the_input_works_on_what_another_enqueues(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    """The input is on the first machine only: the second worker starts first, waits for
    its turn without one, and does its share once the first enqueues the input."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))
    config, other, secrets = two_machines(
        tmp_path, sim.base_url, redis_server.url, records=300, concurrency=4
    )
    other = replace(other, job=replace(other.job, input=str(tmp_path / "other" / "in.txt")))
    async with workers(config, other) as (here, there):
        b = Engine(other, secrets, cluster=there)
        without = asyncio.create_task(b.run())
        await until(lambda: any("is not on this machine" in e.message for e in b.events.recent()))
        a = Engine(config, secrets, cluster=here)
        async with asyncio.timeout(GUARD_S):
            states = await asyncio.gather(a.run(), without)

    assert states == [JobState.DONE, JobState.DONE], (a.failure_reason, b.failure_reason)
    assert (a.stats.seen, b.stats.seen) == (300, 0)
    assert b.stats.done > 0 and a.stats.done + b.stats.done == 300
    assert results(Path(config.job.store)) == 300


async def test_a_worker_without_the_input_ends_failed_when_no_worker_reads_it(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    """Nobody that has the input is reading it: the worker without it waits no longer
    than the visibility timeout, then ends FAILED in one line naming the input — and
    the input is not marked enqueued, so a worker that has it still can."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))
    missing = tmp_path / "nowhere" / "in.txt"
    config, secrets = job_config(tmp_path, missing, sim.base_url, KEYS)
    config = shared(config, redis_server.url, visibility_timeout_s=1.0)
    async with workers(config) as (alone,):
        engine = Engine(config, secrets, cluster=alone)
        async with asyncio.timeout(GUARD_S):
            assert await engine.run() is JobState.FAILED
        assert await alone.input_enqueued() is None

    assert engine.failure_reason == (
        f"input {missing} is not on this machine, and no worker that has it enqueued it within 1s"
    )
    assert sim.stats.requests == 0


async def test_a_reader_that_stops_hands_its_turn_to_a_waiting_worker(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    """The worker reading the input is stopped before it has enqueued all of it (the
    queue's backlog holds its intake back): it gives the intake lease back, the worker
    waiting for its turn reads the input from the start, and the job ends with one
    result per chunk — what the first enqueued is not enqueued twice."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.05, 0.1))
    config, other, secrets = two_machines(
        tmp_path,
        sim.base_url,
        redis_server.url,
        records=1000,
        concurrency=4,
        visibility_timeout_s=2.0,
    )
    # 200 batches, at most 64 waiting in the stream: the intake is held back a while.
    config, other = (replace(c, engine=replace(c.engine, queue_size=64)) for c in (config, other))
    async with workers(config, other) as (here, there):
        # The reader away from the store; the worker beside it collects every row.
        a = Engine(other, secrets, cluster=there)
        first = asyncio.create_task(a.run())
        await until(lambda: a.stats.seen > 0)  # a holds the intake
        b = Engine(config, secrets, cluster=here)
        second = asyncio.create_task(b.run())
        await until(lambda: b.snapshot().counts.done > 0)  # b works on a's batches
        assert b.stats.seen == 0 and await here.input_enqueued() is None
        a.stop()
        async with asyncio.timeout(GUARD_S):
            states = await asyncio.gather(first, second)

    assert states == [JobState.STOPPED, JobState.DONE], b.failure_reason
    assert b.stats.seen > 0, "b read the input once a let it go"
    assert results(Path(config.job.store)) == 1000


async def test_an_input_no_worker_can_read_is_never_taken_for_all_enqueued(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    """The csv lacks the column the job reads: the worker whose turn it is fails to read
    it, says why, and gives its turn up without marking the input all enqueued — so the
    other worker does not end DONE on an input nobody read; it tries, and fails alike."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))
    table = tmp_path / "in.csv"
    table.write_text("id,body\n1,hello there\n2,general kenobi\n", encoding="utf-8")
    config, secrets = job_config(tmp_path, table, sim.base_url, KEYS)
    config = shared(replace(config, job=replace(config.job, input_format="csv")), redis_server.url)
    other = elsewhere(config, tmp_path / "other" / "results.db")
    a, b, states = await run_together(config, other, secrets)

    assert states == [JobState.FAILED, JobState.FAILED]
    redis = Redis.from_url(redis_server.url)
    try:
        assert await redis.hget("test-job:run:1:work:progress", "input_complete") is None
    finally:
        await redis.aclose()
    for engine in (a, b):
        assert engine.failure_reason.startswith("input: "), engine.failure_reason
        assert "text" in engine.failure_reason
    assert sim.stats.requests == 0
