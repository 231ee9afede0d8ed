"""A crawl job's fetch work shared by a cluster: sites from Redis, chunks and pages back to it.

The crawl stage (`engine.crawl.crawl_stage`) of every worker runs as it
does alone, but with this as its `shared` side:

- targets: the file is enqueued once to the run's targets stream and each
  worker reads sites from it, one site by one worker at a time
  (`TargetStream`);
- chunks: each page's text is chunked here and put on the job's batch
  stream (`StreamWorkQueue.put_many`) in batches of the preset in force, so
  any worker does the LLM work — but a chunk whose text another chunk of
  the run carries waits for its answer instead (`SharedSameText`).  Chunks
  of the sites this worker crawls go into the same batches, as they would
  in one process: a site of a few chunks, batched alone, would cost a
  request of its own — on a rate-limited job, up to half as many requests
  again as the chunks need;
- pages: a site's page rows go to the results stream for the job's
  collector to store, in the script that acknowledges the site;
- politeness: each request takes its host's turn from a clock every
  worker shares (`SharedHostClock`), so two sites on one host crawled by
  two workers still keep the delay between them.

So a site is acknowledged only once its chunks are enqueued and its pages
are in the results stream: a finished site whose last chunks wait in a
batch short of full is acknowledged when that batch fills, or when it has
waited `FLUSH_S` (`run_flusher`), or when the crawl here ends (`flush`).
A worker that dies before that leaves the site pending, and whoever takes
it over crawls it again (the batch stream keeps
each chunk once, the store one row a page; a chunk whose text waited on one
of the first crawl's chunks that the second did not meet again is sent once
every site is crawled: `SharedSameText.orphaned`).  The batch stream's "input
complete" is written when this worker's crawl ends, and its crawl ends
only when every site of the run is crawled or dead-lettered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence

from engine.cluster.results_stream import encode_row
from engine.cluster.shared_host_clock import SharedHostClock
from engine.cluster.shared_same_text import SharedSameText
from engine.cluster.stream_queue import StreamWorkQueue
from engine.cluster.target_stream import TargetStream
from engine.config.settings import JobSettings
from engine.crawl.targets import Target
from engine.observe.run_stats import RunStats
from engine.pipeline.chunking import iter_chunks
from engine.pipeline.records import Chunk, Document
from engine.pipeline.same_text import StoredAnswers
from engine.pipeline.work_queue import Batch
from engine.store.sqlite_store import PageRow

__all__ = ["SharedCrawl"]


FLUSH_S = 0.5
"""A finished site's last chunks wait at most this long for other sites' to fill a batch."""


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
        same_text: SharedSameText | None = None,
        stored: StoredAnswers | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.targets = targets
        self.host_clock = host_clock
        self._same_text = same_text
        self._stored = stored  # answers from earlier runs, when this is the job's store
        self._queue = queue
        self._job = job
        self._stats = stats
        self._batch_size = batch_size
        self._clock = clock
        # Chunks short of a batch, with the site each is from, in the order they came.
        self._partial: list[tuple[str, Chunk]] = []
        self._unbatched: Counter[str] = Counter()  # site url → its chunks in `_partial`
        # Finished sites whose last chunks wait in `_partial`: their page rows, encoded.
        self._finished: dict[str, tuple[Target, list[str]]] = {}
        self._oldest_finished: float | None = None  # when the first of them finished
        self._crawling: set[str] = set()  # sites taken here and not finished
        self._finished_waits = asyncio.Event()

    async def enqueue(self, targets: Sequence[Target]) -> None:
        await self.targets.enqueue(targets)

    async def input_read(self) -> None:
        await self.targets.input_read()

    async def next_target(self) -> Target | None:
        target = await self.targets.next_target()
        if target is not None:
            self._crawling.add(target.url)
        return target

    async def deliver(self, target: Target, document: Document) -> None:
        """One page's chunks: with the chunks other sites left short of a batch, the
        full batches enqueued now, the rest with the next."""
        job = self._job
        chunks = list(iter_chunks((document,), job.chunk_tokens, job.chunk_overlap_tokens))
        self._stats.seen += len(chunks)
        if self._same_text is not None:  # a text another chunk carries is not sent again
            chunks = await self._same_text.to_send(chunks, self._stored)
        self._partial += [(target.url, chunk) for chunk in chunks]
        self._unbatched[target.url] += len(chunks)
        size = max(1, self._batch_size())
        full = len(self._partial) // size * size
        if full:
            taken, self._partial = self._partial[:full], self._partial[full:]
            await self._put(taken, size)

    async def finished(self, target: Target, pages: Sequence[PageRow]) -> None:
        """The site is crawled: acknowledged with its pages now if all its chunks are
        enqueued, else once they are (`deliver`, `run_flusher`, `flush`)."""
        self._crawling.discard(target.url)
        rows = [encode_row(page) for page in pages]
        if self._unbatched[target.url]:
            self._finished[target.url] = (target, rows)
        else:
            await self.targets.finished(target, rows)
        if not self._finished:
            return
        if not self._crawling:
            await self.flush()  # no site here to fill the batch: the tail, or a lull
        elif self._oldest_finished is None:
            self._oldest_finished = self._clock()
            self._finished_waits.set()

    def let_go(self, target: Target) -> None:
        """An unfinished site (stopping): its chunks are not enqueued — whoever takes it
        over crawls it again; a finished one stays to be acknowledged."""
        if target.url not in self._crawling:
            return  # finished: acknowledged, or to be once its chunks are enqueued
        self._crawling.discard(target.url)
        if self._unbatched.pop(target.url, 0):
            self._partial = [(url, chunk) for url, chunk in self._partial if url != target.url]
        self.targets.let_go(target)

    async def flush(self, *, leaving: bool = False) -> None:
        """Enqueue the chunks short of a batch as they are: every finished site is
        acknowledged (the crawl here has ended, or they waited `FLUSH_S`).  Once every
        site of the run is crawled, chunks left waiting on a text nobody will send are
        sent too (`_send_orphaned`).  `leaving`: this worker is ending — no wait for
        room in the backlog, which only other workers would make."""
        self._oldest_finished = None
        self._finished_waits.clear()
        if self._partial:
            taken, self._partial = self._partial, []
            await self._put(taken, max(1, self._batch_size()), wait_for_room=not leaving)
        if self.targets.over and self._same_text is not None:
            await self._send_orphaned(self._same_text, leaving=leaving)

    async def _send_orphaned(self, same_text: SharedSameText, *, leaving: bool) -> None:
        """Every site is crawled: chunks still waiting for a text whose chunk was never
        enqueued (its page changed before its site was crawled again, or its site was
        dead-lettered) are sent now."""
        waiting = await same_text.orphaned()
        if not waiting:
            return
        chunks = await same_text.to_send(waiting, self._stored)
        size = max(1, self._batch_size())
        await self._queue.put_many(
            _batches(chunks, size),
            wait_for_room=not leaving,
        )

    async def run_flusher(self) -> None:
        """Flush a batch short of full that a finished site has waited on for `FLUSH_S`;
        run beside the crawl until cancelled."""
        while True:
            await self._finished_waits.wait()
            since = self._oldest_finished
            if since is None:
                self._finished_waits.clear()
                continue
            # A deadline, not polling: this sleeps once per batch that waits.
            await asyncio.sleep(max(0.0, since + FLUSH_S - self._clock()))
            if self._oldest_finished == since:
                await self.flush()

    async def _put(
        self, taken: list[tuple[str, Chunk]], size: int, *, wait_for_room: bool = True
    ) -> None:
        """`taken` on the batch stream in batches of `size`; then each finished site none
        of whose chunks wait any more is acknowledged."""
        chunks = [chunk for _url, chunk in taken]
        await self._queue.put_many(
            _batches(chunks, size),
            wait_for_room=wait_for_room,
        )
        for url, _chunk in taken:
            left = self._unbatched.get(url)
            if left is None:
                continue  # let go meanwhile: whoever takes it over counts its own
            if left > 1:
                self._unbatched[url] = left - 1
            else:
                del self._unbatched[url]
        # Taken out before the first await: another `_put` may end meanwhile.
        done = [
            self._finished.pop(url) for url in list(self._finished) if url not in self._unbatched
        ]
        for target, rows in done:
            await self.targets.finished(target, rows)
        if not self._finished:
            self._oldest_finished = None
            self._finished_waits.clear()


def _batches(chunks: Sequence[Chunk], size: int) -> list[Batch]:
    """`chunks` in order, in batches of `size` (the last one shorter)."""
    return [Batch(tuple(chunks[i : i + size])) for i in range(0, len(chunks), size)]
