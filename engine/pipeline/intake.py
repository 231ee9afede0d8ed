"""The job's input as blocks of chunks: documents read from files, or a crawl's pages.

Documents are read and chunked in a thread, a block at a time, so a large
input never stalls the event loop; a crawl's pages are chunked as the
crawl stage delivers them.  Either way the blocks go on one bounded queue,
and None after the last says the input has ended.  Memory above its soft
limit holds new input back (`may_read`).

The census counts every chunk up front, in a thread of its own, so
progress and ETA have a total early; a crawl's total is projected from the
chunks per finished site until every site is crawled.  The documents' census
starts once the first request has come back (or after `CENSUS_WAIT_S`):
counting holds the interpreter's lock in turns with the event loop, and
with 21,000 chunks counted beside them the job's opening requests reached
the wire 0.15–0.25 s after the run began (0.08 s with the count deferred).
Input records that cannot be read are skipped, counted and named in the
event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from engine.config.settings import CrawlSettings, JobSettings
from engine.crawl.extraction_unavailable import ExtractionUnavailable
from engine.observe.events import EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.observe.snapshot import CrawlSnapshot
from engine.pipeline.census import count_in_thread
from engine.pipeline.chunking import iter_chunks
from engine.pipeline.inputs import iter_documents
from engine.pipeline.records import Chunk, Document

if TYPE_CHECKING:
    from engine.crawl.crawl_stage import CrawlStage, SharedTargets
    from engine.crawl.extraction import PageFunction
    from engine.store.sqlite_store import Store

READ_BLOCK = 256  # chunks handed from the reading thread per hop
# The longest the documents' census waits for the first request to come back: a job
# that cannot send yet (paused, keys cooling, the Batch API) still gets its total.
CENSUS_WAIT_S = 1.0
# Bad records named one by one in the event log; the rest only counted (a
# million bad lines must not become a million events).  As the crawl does.
NAMED_BAD_RECORDS = 20

Blocks = asyncio.Queue[list[Chunk] | None]


class Gate(Protocol):
    """Something to wait on before taking more input in."""

    async def wait(self) -> object: ...


class CrawlInput(Protocol):
    """What the intake reads of a crawl job's fetch stage (`engine.crawl.crawl_stage`)."""

    @property
    def targets_total(self) -> int | None: ...

    @property
    def targets_finished(self) -> int: ...

    @property
    def targets_read(self) -> int: ...

    @property
    def skipped_lines(self) -> int: ...

    def snapshot(self) -> CrawlSnapshot: ...

    async def count_targets(self) -> None: ...

    async def run(self) -> None: ...


class Intake:
    """Puts the job's input on `blocks`, counts it, and counts what it had to skip.

    `on_fatal(reason)` is told when the input cannot be read at all.  A
    crawl job makes its fetch stage with `start_crawl` (or sets `crawl`)
    before reading.
    """

    def __init__(
        self,
        job: JobSettings,
        blocks: Blocks,
        *,
        stats: RunStats,
        events: EventBus,
        may_read: Gate,
        on_fatal: Callable[[str], None],
        clock: Callable[[], float],
    ) -> None:
        self._job = job
        self._blocks = blocks
        self._stats = stats
        self._events = events
        self._may_read = may_read
        self._on_fatal = on_fatal
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self.crawl: CrawlInput | None = None

    async def read(self) -> None:
        """Put the whole input on the blocks queue, then None."""
        await (self.read_documents() if self.crawl is None else self.read_crawl())

    async def read_none(self) -> None:
        """End the input at once: it is someone else's to read (a shared job's input,
        all enqueued before this worker joined)."""
        await self._blocks.put(None)

    async def census(self, after: asyncio.Event | None = None) -> None:
        """Count the whole input up front, so progress and ETA have a total early;
        documents are counted once `after` is set (the first request came back), or
        `CENSUS_WAIT_S` has passed."""
        if self.crawl is not None:
            await self.crawl.count_targets()
            return
        if after is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CENSUS_WAIT_S):
                    await after.wait()
        await self.count_documents()

    # ---------------------------------------------------------------- documents
    async def read_documents(self) -> None:
        """Reading and chunking run in a thread, a block at a time."""
        self._loop = asyncio.get_running_loop()
        try:
            chunks = self._chunks()

            def next_block() -> list[Chunk]:
                return list(itertools.islice(chunks, READ_BLOCK))

            while True:
                block = await asyncio.to_thread(next_block)
                if not block:
                    break
                # Read, then wait: the end of the input is seen whatever memory
                # says, so a job with nothing left to do always ends.
                await self._may_read.wait()
                await self._blocks.put(block)
        except (OSError, ValueError) as exc:
            self._on_fatal(f"input: {exc}")
            self._events.emit(EventKind.WARNING, f"cannot read input: {exc}")
        # Not in a `finally`: when the run ends (drain, stop, done) the reader is
        # cancelled and nobody reads the queue any more, so a put on a full queue
        # would wait forever.
        await self._blocks.put(None)

    def _chunks(self) -> Iterator[Chunk]:
        job = self._job
        docs = iter_documents(job, on_bad_record=self._bad_record)
        return iter_chunks(docs, job.chunk_tokens, job.chunk_overlap_tokens)

    def _bad_record(self, message: str) -> None:
        # Called from the reading thread: hop to the loop before touching the
        # counters or the bus.  The hop runs before the reader's block comes
        # back, so the count is complete when the input is.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._count_bad_record, message)

    def _count_bad_record(self, message: str) -> None:
        self._stats.records_skipped += 1
        skipped = self._stats.records_skipped
        if skipped <= NAMED_BAD_RECORDS:
            self._events.emit(EventKind.WARNING, f"skipped input record: {message}")
        elif skipped == NAMED_BAD_RECORDS + 1:
            self._events.emit(
                EventKind.WARNING,
                f"more than {NAMED_BAD_RECORDS} input records skipped: the rest are counted, "
                "not named",
            )

    async def count_documents(self) -> None:
        """The census: count every chunk up front (in a thread) so progress and ETA have a total."""
        job = self._job

        def chunks() -> Iterator[Chunk]:
            docs = iter_documents(job, on_bad_record=lambda _message: None)
            return iter_chunks(docs, job.chunk_tokens, job.chunk_overlap_tokens)

        try:
            total = await count_in_thread(chunks)
        except (OSError, ValueError):
            return
        if self._stats.total is None:
            self._stats.total = total

    # -------------------------------------------------------------------- crawl
    def start_crawl(
        self,
        settings: CrawlSettings,
        *,
        store: Store,
        run_id: int,
        running: asyncio.Event,
        page_function: PageFunction | None = None,
        shared: SharedTargets | None = None,
    ) -> CrawlStage:
        """Make the crawl job's fetch stage, whose pages this intake chunks.

        `running` is cleared while the job is paused; `page_function`
        replaces `extract_page` (tests); `shared`: a cluster's worker, whose
        sites and pages are the cluster's (its chunks do not come here).
        """
        # Imported here: the HTML parsers cost start-up time that document
        # jobs need not pay.
        from engine.crawl.crawl_stage import CrawlStage

        crawl = CrawlStage(
            settings,
            store=store,
            run_id=run_id,
            events=self._events,
            deliver=self.deliver_page,
            running=running,
            may_read=self._may_read,
            clock=self._clock,
            page_function=page_function,
            shared=shared,
        )
        self.crawl = crawl
        return crawl

    async def read_crawl(self) -> None:
        """A crawl job's input: pages' text from the crawl stage, chunked as they come."""
        assert self.crawl is not None
        try:
            await self.crawl.run()
        except ExtractionUnavailable as exc:
            self._on_fatal(str(exc))
            self._events.emit(EventKind.WARNING, f"cannot crawl: {exc}")
        except (OSError, ValueError) as exc:
            self._on_fatal(f"crawl targets: {exc}")
            self._events.emit(EventKind.WARNING, f"cannot read crawl targets: {exc}")
        await self._blocks.put(None)  # not in a finally: see `read_documents`

    async def deliver_page(self, document: Document) -> None:
        """The crawl stage's hand-over of one page's text."""
        job = self._job
        block = list(iter_chunks((document,), job.chunk_tokens, job.chunk_overlap_tokens))
        if block:
            await self._blocks.put(block)

    def project_crawl_total(self, *, input_done: bool) -> None:
        """Until every site is crawled the number of chunks is unknown: project it
        from the chunks per finished site, so progress and ETA have a total."""
        crawl, s = self.crawl, self._stats
        if crawl is None or input_done:
            return
        total_targets, finished = crawl.targets_total, crawl.targets_finished
        if total_targets is None or finished == 0:
            return
        per_target = s.seen / finished
        s.total = max(s.seen, round(s.seen + per_target * max(0, total_targets - finished)))

    # ------------------------------------------------------------ what was skipped
    def records_skipped(self) -> int:
        """Input records left out so far: the documents' and a crawl's target lines."""
        crawl_lines = self.crawl.skipped_lines if self.crawl is not None else 0
        return self._stats.records_skipped + crawl_lines

    def nothing_read(self) -> str:
        """Why the job must fail when records were skipped and nothing was read; "" if not.

        Such a run would otherwise end "done" with nothing done, e.g. a file
        of binary data or bad lines.
        """
        skipped = self.records_skipped()
        crawl = self.crawl
        nothing = crawl.targets_read == 0 if crawl is not None else self._stats.seen == 0
        if not (nothing and skipped):
            return ""
        return (
            f"input: every record was skipped ({skipped}), nothing was sent; "
            "the event log names each with its file, line and why"
        )
