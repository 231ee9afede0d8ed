"""The requests a job would send: its input read, chunked and batched by the engine's own code.

Nothing here re-implements a rule of the pipeline.  Documents come from
`iter_documents` and `iter_chunks` as the intake reads them; a crawl job's
chunks come from the pages its store holds, made into documents as the
crawl stage replays them (`stored_page_document`).  The blocks then go
through the engine's `Batcher` — repeats counted once, chunks the store
already has a result for skipped, the rest grouped by the preset's batch
size — into a queue that only tallies each batch as the dispatcher would
see it: its chunks and the admission estimate of its prompt.

A crawl target whose pages are not stored (never crawled, or its last fetch
failed in a way a rerun fetches again) has no text to plan with: it is
counted apart, as not planned.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.config.settings import JobConfig
from engine.observe.run_stats import RunStats
from engine.pipeline.batcher import Batcher
from engine.pipeline.chunking import iter_chunks
from engine.pipeline.held_work import HeldWork
from engine.pipeline.inputs import iter_documents
from engine.pipeline.intake import READ_BLOCK
from engine.pipeline.prompt import build_messages, estimate_prompt_tokens
from engine.pipeline.records import Chunk, Document, text_key
from engine.pipeline.same_text import StoredAnswers
from engine.pipeline.work_queue import Batch
from engine.planning.stored_work import StoredWork

_TARGET_BLOCK = 256  # crawl targets looked up in the store at a time


@dataclass(frozen=True, slots=True)
class CrawlCoverage:
    """A crawl job's targets, and how many of them the store holds no usable pages for."""

    targets: int
    without_pages: int
    pages: int  # stored pages with text, planned as documents
    skipped_lines: int  # target-file lines that are not a target


@dataclass(frozen=True, slots=True)
class PlannedRequests:
    """What the batcher made of the input.

    `chunks` is every chunk read; `duplicates` repeats of a chunk already
    planned, `already_done` chunks the store has a result for; the rest,
    `pending`, travel in `requests` requests whose prompts the engine
    estimates at `prompt_tokens` in all (admission's estimate).
    """

    chunks: int
    duplicates: int
    already_done: int
    pending: int
    requests: int
    prompt_tokens: int
    records_skipped: int
    crawl: CrawlCoverage | None = None
    # The output tokens a simulated provider's answers to these requests come to
    # (its answers are a function of the input); None for a real provider.
    simulated_output_tokens: int | None = None

    @property
    def chunks_per_request(self) -> float:
        return self.pending / self.requests if self.requests else 0.0

    @property
    def prompt_tokens_per_request(self) -> float:
        return self.prompt_tokens / self.requests if self.requests else 0.0


class _SameTextTally:
    """The run's same-text rule, counted: a chunk whose text was planned already, or
    has a stored answer under another source, needs no request of its own."""

    def __init__(self, config: JobConfig) -> None:
        self._version = config.prompt.version
        self._models = [p.model for p in config.providers]
        self._planned: set[str] = set()
        self.copies = 0

    async def to_send(self, chunks: Sequence[Chunk], stored: StoredAnswers) -> list[Chunk]:
        keys = [text_key(chunk.text) for chunk in chunks]
        answered = await stored.answers_for(keys, self._version, self._models)
        sent: list[Chunk] = []
        for chunk, key in zip(chunks, keys, strict=True):
            if key in answered or key in self._planned:
                self.copies += 1
            else:
                self._planned.add(key)
                sent.append(chunk)
        return sent


class _TallyQueue:
    """A `WorkQueue` that keeps nothing: it counts each batch and its prompt estimate."""

    def __init__(
        self, config: JobConfig, answer_tokens: Callable[[list[dict[str, str]]], int] | None
    ) -> None:
        self._prompt = config.prompt
        self._answer_tokens = answer_tokens
        self.output_tokens = 0
        self.requests = 0
        self.chunks = 0
        self.prompt_tokens = 0

    async def put_many(self, batches: Sequence[Batch]) -> None:
        for batch in batches:
            await self.put(batch)

    async def put(self, batch: Batch) -> None:
        self.requests += 1
        self.chunks += len(batch.chunks)
        # The dispatcher's admission estimate of this batch's prompt.
        messages = build_messages(self._prompt, batch.chunks)
        self.prompt_tokens += estimate_prompt_tokens(messages)
        if self._answer_tokens is not None:
            self.output_tokens += self._answer_tokens(messages)

    def put_retry(self, batch: Batch, delay_s: float = 0.0) -> None:
        raise AssertionError("a plan never retries")

    async def get(self) -> Batch | None:
        return None

    def close(self) -> None:
        pass

    def drain_pending(self) -> list[Batch]:
        return []

    @property
    def fresh_count(self) -> int:
        return 0

    @property
    def retry_count(self) -> int:
        return 0


def stored_page_chunks(config: JobConfig, stored: StoredWork) -> tuple[Iterator[Chunk], list[int]]:
    """A crawl job's chunks from its stored pages, and a tally filled as they are read:
    [targets, targets without usable pages, pages with text, bad target lines]."""
    from engine.crawl.crawl_stage import stored_page_document
    from engine.crawl.outcomes import RETRIED_OUTCOMES
    from engine.crawl.targets import dedupe_targets, read_targets

    crawl, job = config.crawl, config.job
    assert crawl is not None
    tally = [0, 0, 0, 0]

    def bad_line(_line: int, _message: str) -> None:
        tally[3] += 1

    def chunks() -> Iterator[Chunk]:
        targets = dedupe_targets(
            read_targets(Path(crawl.targets), crawl.targets_column or None, on_problem=bad_line)
        )
        while block := list(itertools.islice(targets, _TARGET_BLOCK)):
            known = stored.pages_of([t.url for t in block])
            for target in block:
                tally[0] += 1
                pages = known.get(target.url, [])
                if not pages or pages[0].outcome in RETRIED_OUTCOMES:
                    tally[1] += 1  # a run would fetch it: no text to plan with yet
                    continue
                documents: list[Document] = []
                for page in pages:
                    document = stored_page_document(page)
                    if document is not None:
                        documents.append(document)
                tally[2] += len(documents)
                yield from iter_chunks(documents, job.chunk_tokens, job.chunk_overlap_tokens)

    return chunks(), tally


async def planned_requests(
    config: JobConfig, stored: StoredWork, *, simulated: bool = False
) -> PlannedRequests:
    """Read the job's input (a crawl job: its stored pages) and batch it as a run would.

    Raises what the engine's readers raise for an input that cannot be read
    (InputError, TargetError, OSError).
    """
    job = config.job
    bad_records = 0

    def bad_record(_message: str) -> None:
        nonlocal bad_records
        bad_records += 1

    crawl_tally: list[int] | None = None
    if config.crawl is None:
        documents = iter_documents(job, on_bad_record=bad_record)
        chunks = iter_chunks(documents, job.chunk_tokens, job.chunk_overlap_tokens)
    else:
        chunks, crawl_tally = stored_page_chunks(config, stored)

    counts_answers: Callable[[list[dict[str, str]]], int] | None = None
    if simulated:  # the bundled simulator answers a function of the input: count it
        from engine.simulation.simulator import answer_tokens

        counts_answers = answer_tokens
    tally = _TallyQueue(config, counts_answers)
    # A cluster too sends a text once per run and copies what the job's store answered
    # (`engine.cluster.shared_same_text`): counted as one process counts it.
    same_text = _SameTextTally(config)
    stats = RunStats()
    blocks: asyncio.Queue[list[Chunk] | None] = asyncio.Queue(maxsize=8)
    batcher = Batcher(
        blocks,
        tally,
        HeldWork(tally),
        stats=stats,
        prompt_version=config.prompt.version,
        models=(p.model for p in config.providers),
        batch_size=lambda: config.preset.batch_size,
        on_input_end=lambda: None,
    )

    async def read() -> None:
        def next_block() -> list[Chunk]:
            return list(itertools.islice(chunks, READ_BLOCK))

        while block := await asyncio.to_thread(next_block):
            await blocks.put(block)
        await blocks.put(None)

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(read())
            tasks.create_task(batcher.run(stored, same_text))
    except ExceptionGroup as group:
        raise group.exceptions[0] from None  # the reader's or the store's own error, as a run's
    crawl = None
    if crawl_tally is not None:
        crawl = CrawlCoverage(*crawl_tally)
    return PlannedRequests(
        chunks=stats.seen,
        duplicates=stats.cached + same_text.copies,
        already_done=stats.skipped,
        pending=tally.chunks,
        simulated_output_tokens=tally.output_tokens if simulated else None,
        requests=tally.requests,
        prompt_tokens=tally.prompt_tokens,
        records_skipped=bad_records,
        crawl=crawl,
    )
