"""Redis killed and restarted mid-job, with its append-only file on: nothing is lost.

Two workers and the collector run through the outage on a client whose
`Retry` reconnects; every chunk ends with exactly one result in the store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from engine.cluster.result_collector import ResultCollector
from engine.store.sqlite_store import Store
from tests.engine.cluster.cluster_worker import Worker, batches, chunks
from tests.redis_server import RedisServer

PREFIX = "job"
GUARD_S = 30.0


async def test_a_redis_restart_mid_job_loses_nothing(tmp_path: Path) -> None:
    work = chunks(60)
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        # Up to ~20 s of reconnecting: the outage here lasts about a second.
        client = Redis.from_url(
            server.url, retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=100)
        )
        a, b = Worker(client, PREFIX, "a"), Worker(client, PREFIX, "b")
        for batch in batches(work, 2):
            await a.queue.put(batch)
        a.queue.close()
        a_third_taken = asyncio.Event()

        def count(_batch: object) -> None:
            if len(a.worked) + len(b.worked) >= 10:
                a_third_taken.set()

        store = await Store.open(tmp_path / "results.db")
        collector = ResultCollector(client, PREFIX, "collector", store)
        try:
            async with asyncio.timeout(GUARD_S), asyncio.TaskGroup() as tg:
                collecting = tg.create_task(collector.run())
                serving = [
                    tg.create_task(a.serve(hold_s=0.05, on_take=count)),
                    tg.create_task(b.serve(hold_s=0.05, on_take=count)),
                ]
                await a_third_taken.wait()
                server.kill()
                await asyncio.sleep(0.5)  # down for a while: every call in flight fails
                server.start()
                await asyncio.gather(*serving)
                collecting.cancel()
            await collector.catch_up()
            assert await store.counts() == {"results": 60, "failures": 0}
            progress = await a.queue.progress()
            assert (progress.settled_chunks, progress.dead) == (60, 0)
        finally:
            await store.close()
            await client.aclose()
