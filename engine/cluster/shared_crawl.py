"""A crawl job's fetch work shared by a cluster: sites from Redis, chunks and pages back to it.

The crawl stage (`engine.crawl.crawl_stage`) of every worker runs as it
does alone, but with this as its `shared` side:

- targets: the file is enqueued once to the run's targets stream and each
  worker reads sites from it, one site by one worker at a time
  (`TargetStream`);
- chunks: each page's text is chunked here and put on the job's batch
  stream (`StreamWorkQueue.put_many`) in batches of the preset in force, so
  any worker does the LLM work; a site's chunks are batched together, its
  last partial batch enqueued when the site is finished;
- pages: a site's page rows go to the results stream for the job's
  collector to store, in the script that acknowledges the site;
- politeness: each request takes its host's turn from a clock every
  worker shares (`SharedHostClock`), so two sites on one host crawled by
  two workers still keep the delay between them.

So a site is acknowledged only once its chunks are enqueued and its pages
are in the results stream; a worker that dies before that leaves the site
pending, and whoever takes it over crawls it again (the batch stream keeps
each chunk once, the store one row a page).  The batch stream's "input
complete" is written when this worker's crawl ends, and its crawl ends
only when every site of the run is crawled or dead-lettered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from engine.cluster.results_stream import encode_row
from engine.cluster.shared_host_clock import SharedHostClock
from engine.cluster.stream_queue import StreamWorkQueue
from engine.cluster.target_stream import TargetStream
from engine.config.settings import JobSettings
from engine.crawl.targets import Target
from engine.observe.run_stats import RunStats
from engine.pipeline.chunking import iter_chunks
from engine.pipeline.records import Chunk, Document
from engine.pipeline.work_queue import Batch
from engine.store.sqlite_store import PageRow

__all__ = ["SharedCrawl"]


class SharedCrawl:
    """The crawl stage's `SharedTargets` in a cluster: `targets` for the sites, `queue`
    (the job's batch stream) for their chunks, cut as `job` says and batched by
    `batch_size()`; `stats` counts the chunks this worker's crawl produced."""

    def __init__(
        self,
        targets: TargetStream,
        queue: StreamWorkQueue,
        job: JobSettings,
        *,
        stats: RunStats,
        batch_size: Callable[[], int],
        host_clock: SharedHostClock,
    ) -> None:
        self.targets = targets
        self.host_clock = host_clock
        self._queue = queue
        self._job = job
        self._stats = stats
        self._batch_size = batch_size
        self._unbatched: dict[str, list[Chunk]] = {}  # a site's chunks short of a batch

    async def enqueue(self, targets: Sequence[Target]) -> None:
        await self.targets.enqueue(targets)

    async def input_read(self) -> None:
        await self.targets.input_read()

    async def next_target(self) -> Target | None:
        return await self.targets.next_target()

    async def deliver(self, target: Target, document: Document) -> None:
        """One page's chunks: full batches enqueued now, the rest with the site's next."""
        job = self._job
        chunks = list(iter_chunks((document,), job.chunk_tokens, job.chunk_overlap_tokens))
        self._stats.seen += len(chunks)
        pending = self._unbatched.setdefault(target.url, [])
        pending += chunks
        size = max(1, self._batch_size())
        full = [
            Batch(tuple(pending[i : i + size])) for i in range(0, len(pending) // size * size, size)
        ]
        del pending[: len(full) * size]
        await self._queue.put_many(full)

    async def finished(self, target: Target, pages: Sequence[PageRow]) -> None:
        """The site's last chunks enqueued, then its pages and acknowledgement, atomically."""
        rest = self._unbatched.pop(target.url, [])
        if rest:
            await self._queue.put_many([Batch(tuple(rest))])
        await self.targets.finished(target, [encode_row(page) for page in pages])

    def let_go(self, target: Target) -> None:
        self._unbatched.pop(target.url, None)
        self.targets.let_go(target)
