"""The crawl stage: targets → fetch → extract → documents for the LLM pipeline.

It runs beside the LLM stage with limits of its own (fetches in flight,
per host), so slow or broken sites hold fetch slots, never API keys.  Every
page's outcome is stored, with its text when it has some: a rerun feeds the
pipeline from the store instead of fetching a finished site again, and
retries only sites that failed for a reason that may pass (a timeout, a
refused connection, an HTTP error).

Extraction runs in worker processes (`PageExtractor`), so parsing HTML never
stalls the event loop the engine runs on; a page whose extraction runs past
the job's `extract_timeout_s` is stored as `extraction_timed_out`, one the
parser raised on (or whose worker died) as `extraction_failed`, and the site
goes on without it.

A crawl shared by a cluster of workers (`shared`, `engine.cluster.shared_crawl`)
takes its targets from the cluster instead of the file — every worker
enqueues the file, each reads sites one at a time — and hands each site's
chunks and page rows to the cluster, which acknowledges the site only once
both are handed on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from engine.config.settings import CrawlSettings
from engine.crawl.address_policy import AddressPolicy, Resolver
from engine.crawl.extraction import (
    ExtractedPage,
    ExtractionFailed,
    ExtractionTimedOut,
    PageExtractor,
    PageFunction,
    extract_page,
)
from engine.crawl.fetcher import Fetcher
from engine.crawl.host_politeness import SharedHostTurns
from engine.crawl.outcomes import RETRIED_OUTCOMES, FetchOutcome, FetchResult
from engine.crawl.pinned_resolver import PinnedResolver
from engine.crawl.targets import Target, TargetError, dedupe_targets, read_targets
from engine.limits.concurrency_limit import ConcurrencyLimit
from engine.observe.events import EventBus, EventKind
from engine.observe.snapshot import CrawlSnapshot
from engine.pipeline.census import count_in_thread
from engine.pipeline.records import Document
from engine.store.sqlite_store import PageRow, Store, StoredPage

_TARGET_BLOCK = 256  # targets read (and looked up in the store) at a time
_WARNED_LINES = 20  # bad target lines reported one by one; the rest only counted
_RATE_ALPHA = 0.3  # smoothing of pages per minute, per one-second tick

Deliver = Callable[[Document], Awaitable[None]]


class Gate(Protocol):
    """Something to wait on before starting a site (an `asyncio.Event` will do)."""

    async def wait(self) -> object: ...


class SharedTargets(Protocol):
    """A crawl shared by a cluster of workers (`engine.cluster.shared_crawl.SharedCrawl`)."""

    @property
    def host_clock(self) -> SharedHostTurns:
        """Every worker's turns at each host: the politeness delay holds across them."""

    async def enqueue(self, targets: Sequence[Target]) -> None:
        """Add the targets no worker added before (waits while many are unfinished)."""

    async def input_read(self) -> None:
        """This worker's targets file is all enqueued."""

    async def next_target(self) -> Target | None:
        """The next site for this worker; None once every site is crawled."""

    async def deliver(self, target: Target, document: Document) -> None:
        """One page's text of `target`, to be chunked and shared as batches."""

    async def finished(self, target: Target, pages: Sequence[PageRow]) -> None:
        """`target` is crawled: its remaining chunks and its pages handed on, then it is
        acknowledged."""

    def let_go(self, target: Target) -> None:
        """`target` was not finished here (stopping): another worker will take it over."""

    async def flush(self) -> None:
        """The crawl here has ended: chunks held back for a fuller batch are handed on,
        and the sites waiting on them acknowledged."""


def page_document(url: str, page: ExtractedPage) -> Document:
    """A page as the pipeline's document: its title, then its main text."""
    text = f"{page.title}\n\n{page.text}" if page.title else page.text
    return Document(source=url, text=text)


def stored_page_document(page: StoredPage) -> Document | None:
    """A page an earlier run stored, as the document a rerun replays (None: it has no text)."""
    if not page.text:
        return None
    text = f"{page.title}\n\n{page.text}" if page.title else page.text
    return Document(source=page.url, text=text)


@dataclass
class _Counters:
    targets_total: int | None = None
    read: int = 0  # distinct targets read from the file
    started: int = 0
    finished: int = 0
    resumed: int = 0
    pages: int = 0
    extracting: int = 0
    bad_lines: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    pages_per_min: float = 0.0
    last_tick: float | None = None
    pages_at_tick: int = 0


class CrawlStage:
    """Crawls the job's targets and hands each page's text to `deliver`.

    `running` is cleared while the job is paused and `may_read` holds while
    memory is above its soft limit: no new fetch starts then; after
    `stop_starting()` none ever does.  With `shared`, the targets come from
    (and the pages go to) a cluster of workers.  `resolver` and
    `extractor` may be given (tests); by default names go to DNS (with the
    job's pins) and extraction to a process pool of the stage's own, which
    runs `page_function` (tests) instead of `extract_page` when given.
    """

    def __init__(
        self,
        settings: CrawlSettings,
        *,
        store: Store,
        run_id: int,
        events: EventBus,
        deliver: Deliver,
        running: asyncio.Event,
        may_read: Gate,
        resolver: Resolver | None = None,
        extractor: PageExtractor | None = None,
        page_function: PageFunction | None = None,
        shared: SharedTargets | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._shared = shared
        # A shared crawl's page rows, by target, until the target is finished.
        self._pages: dict[str, list[PageRow]] = {}
        self._input_error: Exception | None = None
        self._store = store
        self._run_id = run_id
        self._events = events
        self._deliver = deliver
        self._running = running
        self._may_read = may_read
        self._clock = clock
        self._resolver = resolver if resolver is not None else PinnedResolver(settings.resolve)
        self._extractor = extractor
        self._own_extractor = extractor is None
        self._page_function = page_function or extract_page
        self._fetcher: Fetcher | None = None
        # Targets being crawled at once; the fetcher's own limit caps requests.
        self._slots = ConcurrencyLimit(settings.concurrency)
        self._c = _Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped_starting = False

    # ------------------------------------------------------------ controls
    def set_concurrency(self, value: int) -> int:
        """Fetches in flight across all hosts, effective at once; returns the old value."""
        value = max(1, int(value))
        old = self._slots.limit
        self._slots.set_limit(value)
        if self._fetcher is not None:
            self._fetcher.set_concurrency(value)
        return old

    @property
    def concurrency(self) -> int:
        return self._slots.limit

    def stop_starting(self) -> None:
        """Start no new site; those under way finish, and `run` returns after them."""
        self._stopped_starting = True

    # ------------------------------------------------------------ reading
    def snapshot(self) -> CrawlSnapshot:
        c = self._c
        stats = self._fetcher.stats() if self._fetcher is not None else None
        return CrawlSnapshot(
            targets_total=c.targets_total,
            targets_started=c.started,
            targets_finished=c.finished,
            fetches_in_flight=stats.in_flight if stats is not None else 0,
            fetch_concurrency=self._slots.limit,
            per_host=self.settings.per_host,
            pages=c.pages,
            pages_per_min=c.pages_per_min,
            bytes=stats.bytes if stats is not None else 0,
            outcomes=tuple(sorted(c.outcomes.items(), key=lambda kv: (-kv[1], kv[0]))),
            extracting=c.extracting,
            resumed=c.resumed,
        )

    @property
    def targets_total(self) -> int | None:
        return self._c.targets_total

    @property
    def targets_finished(self) -> int:
        return self._c.finished

    @property
    def targets_read(self) -> int:
        """Distinct targets read from the file so far (a cluster's worker may crawl none)."""
        return self._c.read

    def tick(self, now: float) -> None:
        """Update the page rate; the engine calls this once a second."""
        c = self._c
        if c.last_tick is not None and now > c.last_tick:
            rate = (c.pages - c.pages_at_tick) * 60.0 / (now - c.last_tick)
            smoothed = _RATE_ALPHA * rate + (1 - _RATE_ALPHA) * c.pages_per_min
            c.pages_per_min = rate if c.pages_at_tick == 0 else smoothed
        c.last_tick, c.pages_at_tick = now, c.pages

    # ------------------------------------------------------------ running
    @property
    def skipped_lines(self) -> int:
        """Lines of the targets file skipped so far as not being a target."""
        return self._c.bad_lines

    async def count_targets(self) -> None:
        """Count the distinct targets (in a thread) so progress has a total."""

        def targets() -> Iterator[Target]:
            read = read_targets(
                Path(self.settings.targets),
                self.settings.targets_column or None,
                on_problem=lambda _line, _message: None,
            )
            return dedupe_targets(read)

        try:
            self._c.targets_total = await count_in_thread(targets)
        except (OSError, TargetError, ValueError):
            return  # the reader reports it

    async def run(self) -> None:
        """Crawl every target; returns once each has an outcome (or raises on bad input)."""
        self._loop = asyncio.get_running_loop()
        extractor = self._extractor
        if extractor is None:
            extractor = PageExtractor(
                self.settings.extract_workers or None,
                time_limit_s=self.settings.extract_timeout_s,
                page_function=self._page_function,
            )
        policy = AddressPolicy(self.settings.allow_addresses)
        try:
            async with Fetcher(
                self.settings,
                resolver=self._resolver,
                policy=policy,
                clock=self._clock,
                shared_hosts=None if self._shared is None else self._shared.host_clock,
            ) as fetcher:
                self._fetcher = fetcher
                fetcher.set_concurrency(self._slots.limit)
                async with asyncio.TaskGroup() as crawls:
                    if self._shared is None:
                        await self._start_targets(crawls, fetcher, extractor)
                    else:
                        starting = self._start_shared_targets(crawls, fetcher, extractor)
                        sites = crawls.create_task(starting, name="crawl-start")
                        await self._enqueue_targets(self._shared, sites)
                if self._shared is not None:
                    await self._shared.flush()  # stopped early: what the sites left
            if self._input_error is not None:
                raise self._input_error
        finally:
            self._fetcher = None
            if self._own_extractor:
                await extractor.aclose()

    def _target_blocks(self) -> Callable[[], list[Target]]:
        """What reads the targets file's next block of distinct targets (called in a
        worker thread; an empty block at its end)."""
        targets = dedupe_targets(
            read_targets(
                Path(self.settings.targets),
                self.settings.targets_column or None,
                on_problem=self._bad_line,
            )
        )

        def next_block(source: Iterator[Target] = targets) -> list[Target]:
            return list(itertools.islice(source, _TARGET_BLOCK))

        return next_block

    async def _start_targets(
        self, crawls: asyncio.TaskGroup, fetcher: Fetcher, extractor: PageExtractor
    ) -> None:
        next_block = self._target_blocks()
        while True:
            block = await asyncio.to_thread(next_block)
            if not block:
                return
            known = await self._store.pages_of([t.url for t in block])
            for target in block:
                await self._may_read.wait()  # memory above its soft limit: start nothing new
                await self._running.wait()  # paused
                if self._stopped_starting:
                    return
                await self._slots.acquire()
                if self._stopped_starting:
                    self._slots.release()
                    return
                self._c.read += 1
                self._c.started += 1
                crawls.create_task(
                    self._crawl(target, known.get(target.url, []), fetcher, extractor),
                    name=f"crawl {target.host}",
                )

    async def _start_shared_targets(
        self, crawls: asyncio.TaskGroup, fetcher: Fetcher, extractor: PageExtractor
    ) -> None:
        """A cluster's crawl: sites read one at a time (the file is enqueued beside)."""
        shared = self._shared
        assert shared is not None
        while True:
            await self._may_read.wait()  # memory above its soft limit: start nothing new
            await self._running.wait()  # paused
            if self._stopped_starting:
                return
            await self._slots.acquire()
            target = None if self._stopped_starting else await shared.next_target()
            if target is None or self._stopped_starting:
                if target is not None:
                    shared.let_go(target)
                self._slots.release()
                return
            self._c.started += 1
            crawls.create_task(
                self._crawl(target, None, fetcher, extractor), name=f"crawl {target.host}"
            )

    async def _enqueue_targets(self, shared: SharedTargets, sites: asyncio.Task[None]) -> None:
        """Every target of the file to the cluster (others' copies add nothing); if the
        file cannot be read, `sites` (the task starting them) is cancelled."""
        try:
            next_block = self._target_blocks()
            while block := await asyncio.to_thread(next_block):
                self._c.read += len(block)
                await shared.enqueue(block)
        except (OSError, TargetError, ValueError) as exc:
            # Raised by `run` once the sites under way end: this worker cannot read
            # the file, so it starts nothing more (the others may have read it).
            self._input_error = exc
            self.stop_starting()
            sites.cancel()  # it may wait on the cluster for a site
            return
        await shared.input_read()

    def _bad_line(self, line: int, message: str) -> None:
        # Called from the reading thread: hop to the loop before touching the bus.
        self._c.bad_lines += 1
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._count, str(FetchOutcome.INVALID_URL))
        if self._c.bad_lines <= _WARNED_LINES:
            text = f"{self.settings.targets}:{line}: skipped target: {message}"
            self._loop.call_soon_threadsafe(lambda: self._events.emit(EventKind.WARNING, text))

    async def _crawl(
        self,
        target: Target,
        stored: list[StoredPage] | None,
        fetcher: Fetcher,
        extractor: PageExtractor,
    ) -> None:
        """Crawl one site; `stored`: its pages from an earlier run (None: look them up
        here, in the site's own task, so a store busy committing delays only this site)."""
        try:
            if stored is None:
                stored = (await self._store.pages_of([target.url])).get(target.url, [])
            if stored and stored[0].outcome not in RETRIED_OUTCOMES:
                await self._replay(target, stored)
            else:
                await self._fetch_site(target, fetcher, extractor)
            if self._shared is not None:
                await self._shared.finished(target, self._pages.pop(target.url, []))
        finally:
            if self._shared is not None:
                self._pages.pop(target.url, None)
                self._shared.let_go(target)  # unfinished (cancelled): another takes it over
            self._slots.release()
            self._c.finished += 1

    async def _replay(self, target: Target, stored: list[StoredPage]) -> None:
        """A site crawled by an earlier run: its stored text goes through again, unfetched.

        Chunks that already have results are skipped downstream, so only the
        ones the earlier run did not finish are sent.
        """
        self._c.resumed += 1
        for page in stored:
            self._count(page.outcome)
            document = stored_page_document(page)
            if document is not None:
                await self._hand_on(target, document)

    async def _fetch_site(self, target: Target, fetcher: Fetcher, extractor: PageExtractor) -> None:
        """The target's page, then same-site links breadth first, within depth and page caps."""
        frontier: deque[tuple[str, int]] = deque([(target.url, 0)])
        seen = {target.url}
        fetched = 0
        while frontier and fetched < self.settings.max_pages_per_domain:
            url, depth = frontier.popleft()
            await self._running.wait()
            if depth == 0 and target.fallback_http:
                result = await fetcher.fetch_target(urlsplit(target.url).netloc)
            else:
                result = await fetcher.fetch(url)
            fetched += 1
            try:
                page = await self._extract(result, extractor)
            except (ExtractionTimedOut, ExtractionFailed) as given_up:
                # One page's parser trouble is that page's outcome; the crawl goes on.
                self._events.emit(EventKind.WARNING, f"{url}: {given_up}")
                result = replace(result, error=str(given_up))
                outcome = (
                    FetchOutcome.EXTRACTION_TIMED_OUT
                    if isinstance(given_up, ExtractionTimedOut)
                    else FetchOutcome.EXTRACTION_FAILED
                )
                await self._record(target, url, depth, result, outcome, None)
                continue
            outcome = result.outcome
            if page is not None and not page.text.strip():
                outcome = FetchOutcome.EMPTY_TEXT
            await self._record(target, url, depth, result, outcome, page)
            if page is None or outcome is FetchOutcome.EMPTY_TEXT:
                continue
            await self._hand_on(target, page_document(url, page))
            if depth < self.settings.max_depth:
                for link in page.links:
                    if link not in seen:
                        seen.add(link)
                        frontier.append((link, depth + 1))

    async def _hand_on(self, target: Target, document: Document) -> None:
        if self._shared is None:
            await self._deliver(document)
        else:
            await self._shared.deliver(target, document)

    async def _extract(self, result: FetchResult, extractor: PageExtractor) -> ExtractedPage | None:
        if not result.outcome.has_page:
            return None
        self._c.extracting += 1
        try:
            return await extractor.extract(result.body, result.final_url, result.content_type)
        finally:
            self._c.extracting -= 1

    async def _record(
        self,
        target: Target,
        url: str,
        depth: int,
        result: FetchResult,
        outcome: FetchOutcome,
        page: ExtractedPage | None,
    ) -> None:
        self._count(outcome)
        row = PageRow(
            url=url,
            target=target.url,
            host=target.host,
            depth=depth,
            outcome=str(outcome),
            status=result.status,
            final_url=result.final_url,
            redirects=result.redirects,
            bytes=len(result.body),
            elapsed_ms=result.elapsed_s * 1000.0,
            error=result.error,
            title=page.title if page is not None else "",
            text=page.text if page is not None and page.text.strip() else None,
            run_id=self._run_id,
        )
        if self._shared is None:
            await self._store.put_page(row)
        else:  # to the cluster's collector with the site's acknowledgement
            self._pages.setdefault(target.url, []).append(row)

    def _count(self, outcome: str) -> None:
        self._c.pages += 1
        self._c.outcomes[str(outcome)] = self._c.outcomes.get(str(outcome), 0) + 1
