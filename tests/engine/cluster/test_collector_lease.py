"""One store, one collector: the job's store claimed once, the lease held by one worker at a time,
and a worker beside the store that outlives a dead collector collects what it left.

Against a real `redis-server`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from engine.cluster.collector_lease import (
    CollectorLease,
    CollectorRole,
    StoreClaim,
    claim_store,
)
from engine.cluster.job_runs import join_run, run_prefix
from engine.cluster.result_collector import ResultCollector
from engine.observe.events import EventBus
from engine.store.sqlite_store import Store
from tests.engine.cluster.cluster_worker import Worker, batches, chunks

PREFIX = "job"
GUARD_S = 20.0


async def test_the_first_worker_to_claim_a_store_keeps_it_for_the_job(
    redis_client: Redis,
) -> None:
    first = await claim_store(redis_client, PREFIX, "host-a", "/data/results.db")
    later = await claim_store(redis_client, PREFIX, "host-b", "/data/results.db")

    assert first == later == StoreClaim("host-a", "/data/results.db")
    assert str(later) == "/data/results.db on host-a"


async def test_the_lease_is_one_workers_until_it_lets_go_or_it_runs_out(
    redis_client: Redis,
) -> None:
    a = CollectorLease(redis_client, PREFIX, "a", ttl_s=0.3)
    b = CollectorLease(redis_client, PREFIX, "b", ttl_s=0.3)

    assert await a.take() and not await b.take()
    assert await a.renew() and await a.holder() == "a"
    await b.release()  # not b's to let go
    assert await a.holder() == "a"
    await a.release()
    assert await b.take() and not await a.renew()

    await asyncio.sleep(0.4)  # b died: its lease runs out
    assert await a.take() and await a.holder() == "a"


async def test_a_worker_ending_beside_the_store_collects_what_a_dead_collector_left(
    redis_client: Redis, tmp_path: Path
) -> None:
    """The collector died holding the lease and rows it read; the job is over.  The last
    worker beside the store waits for the lease to run out, then stores every row."""
    worker = Worker(redis_client, PREFIX, "worker")
    for batch in batches(chunks(6), 2):
        await worker.queue.put(batch)
    worker.queue.close()
    async with asyncio.timeout(GUARD_S):
        await worker.serve()
    dead = CollectorLease(redis_client, PREFIX, "dead", ttl_s=0.5)
    assert await dead.take()
    async with await Store.open(tmp_path / "results.db") as store:
        await ResultCollector(redis_client, PREFIX, "dead", store).join()
        await redis_client.xreadgroup("collectors", "dead", {f"{PREFIX}:results": ">"}, count=1)

        last = CollectorRole(
            redis_client,
            CollectorLease(redis_client, PREFIX, "last", ttl_s=0.5),
            ResultCollector(redis_client, PREFIX, "last", store),
            beside=True,
            store=StoreClaim("here", str(tmp_path / "results.db")),
            events=EventBus(),
        )
        async with asyncio.timeout(GUARD_S):
            assert await last.finish(job_over=True) == 6
        assert await store.counts() == {"results": 6, "failures": 0}
    assert await redis_client.get(f"{PREFIX}:collector") is None, "let go at the end"


async def test_a_worker_away_from_the_store_never_collects(
    redis_client: Redis, tmp_path: Path
) -> None:
    worker = Worker(redis_client, PREFIX, "worker")
    for batch in batches(chunks(2), 2):
        await worker.queue.put(batch)
    worker.queue.close()
    async with asyncio.timeout(GUARD_S):
        await worker.serve()
    async with await Store.open(tmp_path / "local.db") as local:
        away = CollectorRole(
            redis_client,
            CollectorLease(redis_client, PREFIX, "away", ttl_s=0.5),
            ResultCollector(redis_client, PREFIX, "away", local),
            beside=False,
            store=StoreClaim("elsewhere", "/data/results.db"),
            events=EventBus(),
        )

        await away.run()  # returns at once: nothing to do here
        assert await away.finish(job_over=True) == 0
        assert await local.counts() == {"results": 0, "failures": 0}
    assert await redis_client.xlen(f"{PREFIX}:results") == 1, "left for the store's machine"


async def test_workers_starting_together_after_a_finished_run_start_one_new_run(
    redis_client: Redis,
) -> None:
    assert await join_run(redis_client, PREFIX) == 1
    worker = Worker(redis_client, run_prefix(PREFIX, 1), "worker")
    for batch in batches(chunks(2), 2):
        await worker.queue.put(batch)
    assert await join_run(redis_client, PREFIX) == 1, "its input is not all enqueued"
    worker.queue.close()
    async with asyncio.timeout(GUARD_S):
        await worker.serve()
    assert await join_run(redis_client, PREFIX) == 1, "its rows are not collected"
    await redis_client.delete(f"{run_prefix(PREFIX, 1)}:results")  # as if collected

    joined = await asyncio.gather(*(join_run(redis_client, PREFIX) for _ in range(4)))

    assert joined == [2, 2, 2, 2]
    assert 0 < await redis_client.ttl(f"{run_prefix(PREFIX, 1)}:work:progress") <= 3600
