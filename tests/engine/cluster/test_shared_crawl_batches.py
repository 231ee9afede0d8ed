"""The chunks of the sites one worker crawls share batches, as they would in one process.

`SharedCrawl` against a real `redis-server`: pages' chunks go onto the
job's batch stream in full batches whichever site they are from; a finished
site is acknowledged only once all its chunks are on the stream — when a
batch fills, when the last site here finishes, or after `FLUSH_S`.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from engine.cluster.batch_codec import decode_batch
from engine.cluster.shared_crawl import FLUSH_S, SharedCrawl
from engine.cluster.shared_host_clock import SharedHostClock
from engine.cluster.stream_queue import StreamWorkQueue
from engine.cluster.stream_replies import entry_fields
from engine.cluster.target_stream import TargetStream
from engine.config.settings import JobSettings
from engine.crawl.targets import Target, normalise_target
from engine.observe.run_stats import RunStats
from engine.pipeline.records import Document

PREFIX = "job:run:1"
BATCH = 4
GUARD_S = 5.0


def crawl_share(redis: Redis, max_backlog: int = 10_000) -> SharedCrawl:
    """One worker's shared side of a crawl, batches of `BATCH` chunks."""
    return SharedCrawl(
        TargetStream(redis, PREFIX, "w", visibility_s=30.0, block_s=0.1),
        StreamWorkQueue(
            redis, PREFIX, "w", visibility_s=30.0, block_s=0.1, max_backlog=max_backlog
        ),
        JobSettings(chunk_tokens=50, chunk_overlap_tokens=0),
        stats=RunStats(),
        batch_size=lambda: BATCH,
        host_clock=SharedHostClock(redis, PREFIX),
    )


async def taken(share: SharedCrawl, count: int) -> list[Target]:
    """`count` sites enqueued and taken by this worker, in order."""
    sites = [normalise_target(f"site-{n:04d}.test", n) for n in range(1, count + 1)]
    await share.enqueue(sites)
    await share.input_read()
    return [site for site in [await share.next_target() for _ in sites] if site is not None]


async def page(share: SharedCrawl, site: Target, n: int) -> None:
    """One page of `site`: a short text, one chunk."""
    await share.deliver(site, Document(source=f"{site.url}p{n}", text=f"page {n} of {site.host}"))


async def batch_sizes(redis: Redis) -> list[int]:
    entries = await redis.xrange(f"{PREFIX}:work") or []
    return [len(decode_batch(entry_fields(fields)).chunks) for _id, fields in entries]


async def acknowledged(share: SharedCrawl) -> int:
    return (await share.targets.progress()).settled


async def test_sites_chunks_fill_one_batch_and_a_site_is_acknowledged_once_its_chunks_are_out(
    redis_client: Redis,
) -> None:
    share = crawl_share(redis_client)
    a, b, c = await taken(share, 3)
    await page(share, a, 1)
    await share.finished(a, [])  # its one chunk waits for a fuller batch
    await page(share, b, 1)
    await page(share, b, 2)
    await share.finished(b, [])
    assert (await batch_sizes(redis_client), await acknowledged(share)) == ([], 0)

    await page(share, c, 1)  # the fourth chunk: a full batch, a's and b's all in it
    assert (await batch_sizes(redis_client), await acknowledged(share)) == ([4], 2)

    await page(share, c, 2)
    await share.finished(c, [])  # the last site here: what is left goes as it is
    assert (await batch_sizes(redis_client), await acknowledged(share)) == ([4, 1], 3)


async def test_a_finished_sites_chunks_wait_at_most_the_flush_time_for_a_fuller_batch(
    redis_client: Redis,
) -> None:
    share = crawl_share(redis_client)
    a, _still_crawling = await taken(share, 2)
    async with asyncio.TaskGroup() as tg:
        flusher = tg.create_task(share.run_flusher())
        await page(share, a, 1)
        await share.finished(a, [])
        await asyncio.sleep(FLUSH_S / 2)
        assert await acknowledged(share) == 0
        async with asyncio.timeout(GUARD_S):
            while await acknowledged(share) == 0:
                await asyncio.sleep(0.05)
        flusher.cancel()
    assert await batch_sizes(redis_client) == [1]


async def test_a_site_let_go_unfinished_takes_its_chunks_back_and_stays_pending(
    redis_client: Redis,
) -> None:
    share = crawl_share(redis_client)
    a, b = await taken(share, 2)
    await page(share, a, 1)
    await page(share, b, 1)
    await share.finished(a, [])  # b is still crawling: a waits
    share.let_go(b)  # stopping: b is another worker's to crawl again

    await share.flush()

    assert await batch_sizes(redis_client) == [1]  # a's chunk alone
    progress = await share.targets.progress()
    assert (progress.targets, progress.settled) == (2, 1)


async def test_sites_crawled_at_once_are_each_acknowledged_once_with_every_chunk_out(
    redis_client: Redis,
) -> None:
    """Twenty sites' pages handed on concurrently (their batches' script calls
    interleaving): every chunk on the stream once, every site acknowledged once."""
    share = crawl_share(redis_client)
    sites = await taken(share, 20)

    async def crawled(site: Target, pages: int) -> None:
        for n in range(pages):
            await page(share, site, n)
        await share.finished(site, [])

    async with asyncio.timeout(GUARD_S):
        await asyncio.gather(*(crawled(site, 1 + i % 3) for i, site in enumerate(sites)))

    sizes = await batch_sizes(redis_client)
    assert sum(sizes) == sum(1 + i % 3 for i in range(20)) == 39
    assert sizes.count(BATCH) == 9  # all full but the last
    progress = await share.targets.progress()
    assert (progress.settled, progress.over) == (20, True)


async def test_a_worker_leaving_hands_on_its_last_chunks_however_full_the_backlog(
    redis_client: Redis,
) -> None:
    """Stopping, a worker enqueues what its finished sites left short of a batch without
    waiting for room that only other workers (perhaps none) would make."""
    share = crawl_share(redis_client, max_backlog=2)
    a, b, _c = await taken(share, 3)
    async with asyncio.timeout(GUARD_S):
        for n in range(BATCH):
            await page(share, b, n)  # a full batch: one entry in the backlog
        await page(share, a, 1)
        await share.finished(a, [])  # c is still crawling: a's chunk waits
        await share.flush(leaving=True)  # its batch fills the backlog: no wait for room

    assert await batch_sizes(redis_client) == [BATCH, 1]
    assert await acknowledged(share) == 1
