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
from engine.cluster.shared_same_text import SharedSameText
from engine.cluster.stream_queue import StreamWorkQueue
from engine.cluster.stream_replies import entry_fields
from engine.cluster.target_stream import TargetStream
from engine.config.settings import JobSettings
from engine.crawl.targets import Target, normalise_target
from engine.observe.run_stats import RunStats
from engine.pipeline.records import Document
from engine.pipeline.work_queue import Batch

PREFIX = "job:run:1"
BATCH = 4
GUARD_S = 5.0


def crawl_share(
    redis: Redis,
    max_backlog: int = 10_000,
    *,
    worker: str = "w",
    visibility_s: float = 30.0,
    same_text: bool = False,
) -> SharedCrawl:
    """One worker's shared side of a crawl, batches of `BATCH` chunks; with `same_text`,
    a text the run met before is not sent again."""
    queue = StreamWorkQueue(
        redis, PREFIX, worker, visibility_s=visibility_s, block_s=0.1, max_backlog=max_backlog
    )
    texts = SharedSameText(redis, PREFIX, queue.done_set, prompt_version="1", models=["m"])
    return SharedCrawl(
        TargetStream(redis, PREFIX, worker, visibility_s=visibility_s, block_s=0.1),
        queue,
        JobSettings(chunk_tokens=50, chunk_overlap_tokens=0),
        stats=RunStats(),
        batch_size=lambda: BATCH,
        host_clock=SharedHostClock(redis, PREFIX),
        same_text=texts if same_text else None,
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
    return [len(batch.chunks) for batch in await enqueued(redis)]


async def enqueued(redis: Redis) -> list[Batch]:
    entries = await redis.xrange(f"{PREFIX}:work") or []
    return [decode_batch(entry_fields(fields)) for _id, fields in entries]


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


async def test_a_text_whose_chunk_a_changed_page_never_sent_again_is_sent_once_all_is_crawled(
    redis_client: Redis,
) -> None:
    """A worker stops mid-site after its page's footer claimed the run's footer text; a
    second site's footer waits for that chunk.  The site taken over has changed, and
    that chunk never comes again: once every site is crawled, the waiting footer is
    sent in its place — it is neither lost nor counted twice."""
    first = crawl_share(redis_client, worker="w1", same_text=True)
    second = crawl_share(redis_client, worker="w2", visibility_s=0.2, same_text=True)
    a, b = normalise_target("a.test", 1), normalise_target("b.test", 2)
    await first.enqueue([a, b])
    await first.input_read()
    async with asyncio.timeout(GUARD_S):
        # Both taken at once: a is not idle long enough yet for the second to take it.
        assert (await first.next_target(), await second.next_target()) == (a, b)
        await first.deliver(a, Document(source=a.url, text="the same footer"))
        first.let_go(a)  # stopping: a's chunk was never enqueued

        await second.deliver(b, Document(source=f"{b.url}about", text="the same footer"))
        await second.finished(b, [])
        assert await enqueued(redis_client) == [], "b's footer waits for a's"

        await asyncio.sleep(0.3)  # a is idle beyond the visibility timeout: taken over
        assert await second.next_target() == a
        await second.deliver(a, Document(source=a.url, text="a page rewritten since"))
        await second.finished(a, [])
        assert await second.next_target() is None
        await second.flush()  # the crawl here has ended

    sent = [chunk.text for batch in await enqueued(redis_client) for chunk in batch.chunks]
    assert sorted(sent) == ["a page rewritten since", "the same footer"]
    counted = StreamWorkQueue(redis_client, PREFIX, "reader", visibility_s=30.0)
    assert (await counted.progress()).chunks == 2, "each counted once"
