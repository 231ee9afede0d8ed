"""Blocks of chunks → batches: repeats counted once, done work skipped, the rest batched.

A chunk already queued or in flight (the same text from the same source
again) is counted as cached: one result serves both.  A chunk with a
stored result for the prompt version, from any of the job's models, is
skipped.  With `same_text`, a chunk whose text (under another source) is
answered already or in flight is not sent either: it gets a copy of that
answer (`engine.pipeline.same_text`).  The rest is grouped into batches of
the preset in force — read at each batch, so a preset switched mid-run
takes effect at once — and queued for the dispatcher.  The queue's bound
pushes back on the reader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from engine.observe.run_stats import RunStats
from engine.pipeline.held_work import HeldWork
from engine.pipeline.records import Chunk
from engine.pipeline.same_text import StoredAnswers
from engine.pipeline.work_queue import Batch, WorkQueue


class TextsToSend(Protocol):
    """Which chunks' texts need a request (`SameText`; a plan counts them the same way)."""

    async def to_send(self, chunks: Sequence[Chunk], stored: StoredAnswers) -> list[Chunk]: ...


class DoneIds(StoredAnswers, Protocol):
    """Where finished work, and answers by text, are looked up (the store)."""

    async def done_ids(
        self, chunk_ids: Sequence[str], prompt_version: str, model: str
    ) -> set[str]: ...


class Batcher:
    """Takes blocks from `blocks` until None, and queues their work as batches on `queue`.

    `batch_size()` is the preset's batch size now; `on_input_end()` is told
    when the input has ended, before the queue may close.
    """

    def __init__(
        self,
        blocks: asyncio.Queue[list[Chunk] | None],
        queue: WorkQueue,
        held: HeldWork,
        *,
        stats: RunStats,
        prompt_version: str,
        models: Iterable[str],
        batch_size: Callable[[], int],
        on_input_end: Callable[[], None],
    ) -> None:
        self._blocks = blocks
        self._queue = queue
        self._held = held
        self._stats = stats
        self._version = prompt_version
        # A result from any of the job's models counts as done.
        self._models = sorted(set(models))
        self._batch_size = batch_size
        self._on_input_end = on_input_end

    async def run(
        self,
        store: DoneIds,
        same_text: TextsToSend | None = None,
        *,
        settles_total: Callable[[], bool] = lambda: True,
    ) -> None:
        """Skip what `store` has done, group the rest into batches, queue them;
        with `same_text`, only the chunks whose text needs a request.  At the input's
        end what was read is the total, unless not `settles_total()` (a worker that
        read none of a shared input: its total is what the job enqueued)."""
        stats, held = self._stats, self._held
        pending: list[Chunk] = []
        while True:
            block = await self._blocks.get()
            if block is None:
                break
            stats.seen += len(block)
            fresh: list[Chunk] = []
            for chunk in block:
                if held.claim_resumed(chunk.id):
                    continue  # a resumed batch's: sent already, counted when it settles
                if held.take(chunk.id):
                    fresh.append(chunk)
                else:
                    stats.cached += 1  # the same chunk again: one result serves both
            ids = [c.id for c in fresh]
            done: set[str] = set()
            for model in self._models:
                done |= await store.done_ids(ids, self._version, model)
            stats.skipped += len(done)
            needed: list[Chunk] = []
            for chunk in fresh:
                if chunk.id in done:
                    held.let_go(chunk.id)
                else:
                    needed.append(chunk)
            if same_text is not None:
                needed = await same_text.to_send(needed, store)
            pending += needed
            full: list[Batch] = []
            while len(pending) >= (size := self._batch_size()):
                full.append(Batch(tuple(pending[:size])))
                del pending[:size]
            await self._enqueue(full)
        if pending:
            await self._enqueue([Batch(tuple(pending))])
        if settles_total() and stats.total != stats.seen:
            stats.total = stats.seen  # the reader is the final word
        self._on_input_end()
        held.input_ended()

    async def _enqueue(self, batches: Sequence[Batch]) -> None:
        # A block's batches together: a shared queue writes them in one round trip.
        for _ in batches:
            self._held.batch_made()
        await self._queue.put_many(batches)
