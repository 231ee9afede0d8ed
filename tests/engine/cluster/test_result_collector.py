"""One store of results: the results stream, collected into SQLite exactly once per chunk.

Rows reach the collector more than once when a worker stalls past the
visibility timeout and both it and the worker that took its batch over
finish it, or when a collector dies before acknowledging what it read;
the store keeps one result per chunk either way, and counts it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from redis.asyncio import Redis

from engine.cluster.result_collector import ResultCollector
from engine.observe.events import EventKind
from engine.store.sqlite_store import Committed, Store
from tests.engine.cluster.cluster_worker import Timing, Worker, batches, chunks

PREFIX = "job"
GUARD_S = 20.0


async def test_a_batch_answered_twice_is_stored_once_per_chunk(
    redis_client: Redis, tmp_path: Path
) -> None:
    """A worker stalls holding a batch; another takes it over and answers it; then the
    stalled one answers too.  Both answers reach the stream; the store keeps the first."""
    timing = Timing(visibility_s=0.5, block_s=0.1)
    work = chunks(4)
    stalled = Worker(redis_client, PREFIX, "stalled", timing)
    rescuer = Worker(redis_client, PREFIX, "rescuer", timing)
    for batch in batches(work, 4):
        await stalled.queue.put(batch)
    stalled.queue.close()

    running = asyncio.create_task(stalled.queue.run(stalled.outcomes))
    async with asyncio.timeout(GUARD_S):
        held = await stalled.queue.get()
    assert held is not None
    running.cancel()  # its event loop "stalls": no keep-alive from here on
    with contextlib.suppress(asyncio.CancelledError):
        await running
    async with asyncio.timeout(GUARD_S):
        await rescuer.serve()
    assert [e.kind for e in rescuer.events.recent()].count(EventKind.BATCH_RECLAIMED) == 1
    await stalled.answer(held)  # it wakes up and finishes the batch it no longer owns

    assert await redis_client.xlen(f"{PREFIX}:results") == 2, "both answers are in the stream"
    progress = await rescuer.queue.progress()
    assert (progress.settled, progress.settled_chunks) == (1, 4), "settled once"

    committed: list[Committed] = []
    async with await Store.open(tmp_path / "results.db", on_commit=committed.append) as store:
        collector = ResultCollector(redis_client, PREFIX, "collector", store, run_id=42)
        assert await collector.catch_up() == 8, "eight rows handed over"
        assert await store.counts() == {"results": 4, "failures": 0}
        async with store._turn() as conn:
            rows = await conn.execute_fetchall("SELECT result_json, run_id FROM results")
    assert sum(c.results for c in committed) == 4, "each chunk counted done once"
    assert {json.loads(r[0])["worker"] for r in rows} == {"rescuer"}, "the first answer stays"
    assert {r[1] for r in rows} == {42}, "stamped with the collecting run"
    assert await redis_client.xlen(f"{PREFIX}:results") == 0, "collected entries are deleted"


async def test_what_a_dead_collector_read_is_collected_by_the_next(
    redis_client: Redis, tmp_path: Path
) -> None:
    """A collector reads rows and dies before acknowledging them: once they are idle past
    the visibility timeout, the next collector takes them over and stores them."""
    worker = Worker(redis_client, PREFIX, "worker")
    for batch in batches(chunks(6), 2):
        await worker.queue.put(batch)
    worker.queue.close()
    async with asyncio.timeout(GUARD_S):
        await worker.serve()

    async with await Store.open(tmp_path / "results.db") as store:
        await ResultCollector(redis_client, PREFIX, "dead", store).join()
        # The dead collector's last act: it read every entry, and never acknowledged one.
        read = await redis_client.xreadgroup(
            "collectors", "dead", {f"{PREFIX}:results": ">"}, count=100
        )
        assert read, "it took the entries"

        survivor = ResultCollector(redis_client, PREFIX, "survivor", store, visibility_s=0.5)
        assert await survivor.catch_up() == 0, "not idle long enough yet: left alone"
        collecting = asyncio.create_task(survivor.run())
        try:
            async with asyncio.timeout(GUARD_S):
                while (await store.counts())["results"] < 6:
                    await asyncio.sleep(0.1)
        finally:
            collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collecting
        assert await store.counts() == {"results": 6, "failures": 0}
    assert await redis_client.xlen(f"{PREFIX}:results") == 0


async def test_the_one_collector_adopts_what_the_one_before_it_read_at_once(
    redis_client: Redis, tmp_path: Path
) -> None:
    """A collector that has just taken the job's collector lease need not wait out the
    visibility timeout: whatever another collector read and left is its to store now."""
    worker = Worker(redis_client, PREFIX, "worker")
    for batch in batches(chunks(6), 2):
        await worker.queue.put(batch)
    worker.queue.close()
    async with asyncio.timeout(GUARD_S):
        await worker.serve()
    async with await Store.open(tmp_path / "results.db") as store:
        await ResultCollector(redis_client, PREFIX, "gone", store).join()
        await redis_client.xreadgroup("collectors", "gone", {f"{PREFIX}:results": ">"}, count=1)

        successor = ResultCollector(redis_client, PREFIX, "successor", store, visibility_s=60)
        assert await successor.adopt_pending() == 2, "the entry the one before it read"
        assert await successor.catch_up() == 4, "and the rest, as they come"
        assert await store.counts() == {"results": 6, "failures": 0}


async def test_a_stored_chunk_is_never_enqueued_again_by_any_worker(
    redis_client: Redis, tmp_path: Path
) -> None:
    """The collector records each chunk whose result it stored; a later intake (a rerun,
    a worker on a machine without the store) adds none of them, only what is not stored."""
    work = chunks(6)
    first = Worker(redis_client, PREFIX, "first")
    for batch in batches(work[:4], 2):
        await first.queue.put(batch)
    first.queue.close()
    async with asyncio.timeout(GUARD_S):
        await first.serve()
    async with await Store.open(tmp_path / "results.db") as store:
        await ResultCollector(redis_client, PREFIX, "collector", store).catch_up()
    assert await redis_client.smembers(f"{PREFIX}:done") == {c.id.encode() for c in work[:4]}

    # Another run of the job: its own queue, the job's one done set.
    later = Worker(redis_client, "job-again", "later", done_set=f"{PREFIX}:done")
    for batch in batches(work, 2):
        await later.queue.put(batch)

    progress = await later.queue.progress()
    assert (progress.entries, progress.chunks) == (1, 2), "only the two never stored"


async def test_each_settled_entry_is_counted_once_by_the_worker_that_settled_it(
    redis_client: Redis,
) -> None:
    """What a worker reports as its done and failed: the rows of the entries it settled;
    failures are counted in Redis too, so every worker reads the cluster's."""
    settled: list[tuple[int, int]] = []
    worker = Worker(
        redis_client,
        PREFIX,
        "worker",
        on_settled=lambda done, failed: settled.append((done, failed)),
    )
    work = chunks(4)
    for batch in batches(work, 2):
        await worker.queue.put(batch)
    worker.queue.close()
    running = asyncio.create_task(worker.queue.run(worker.outcomes))
    async with asyncio.timeout(GUARD_S):
        answered = await worker.queue.get()
        assert answered is not None
        await worker.answer(answered)
        failing = await worker.queue.get()
        assert failing is not None
        await worker.outcomes.give_up(failing, "refused for the test")
        await running

    assert settled == [(2, 0), (0, 2)]
    progress = await worker.queue.progress()
    assert (progress.settled_chunks, progress.failed_chunks) == (4, 2)
