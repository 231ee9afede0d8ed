"""The batcher on its own: repeats counted once, done work skipped, batches of the preset's size.

A real SQLite store answers what is done; the blocks come from a test, the
batches go to the real work queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.observe.run_stats import RunStats
from engine.pipeline.batcher import Batcher
from engine.pipeline.held_work import HeldWork
from engine.pipeline.intake import Blocks
from engine.pipeline.records import Chunk, chunk_id
from engine.pipeline.work_queue import Batch, InProcessWorkQueue
from engine.store.sqlite_store import ResultRow, Store

GUARD = 5.0  # fail instead of hanging when a wake-up never comes


def chunk(n: int) -> Chunk:
    text = f"chunk number {n}"
    return Chunk(id=chunk_id("doc.txt", text), source="doc.txt", seq=n, text=text, est_tokens=4)


def result(c: Chunk, model: str, prompt_version: str = "1") -> ResultRow:
    return ResultRow(
        chunk_id=c.id,
        prompt_version=prompt_version,
        model=model,
        source=c.source,
        seq=c.seq,
        text=c.text,
        result_json="{}",
        provider="p",
        key_alias="k",
        input_tokens=1,
        output_tokens=1,
        latency_ms=1.0,
        cost=0.0,
        run_id=1,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "results.db", batch_rows=50, batch_ms=5)
    writer = asyncio.create_task(store.run_writer())
    yield store
    await store.close()
    await writer


class Line:
    """A batcher between a blocks queue and a work queue, with the job's models."""

    def __init__(self, models: tuple[str, ...] = ("model-a", "model-b"), size: int = 3) -> None:
        self.blocks: Blocks = asyncio.Queue(maxsize=8)
        self.queue = InProcessWorkQueue(maxsize=100)
        self.held = HeldWork(self.queue)
        self.stats = RunStats()
        self.size = size
        self.input_ends: list[int] = []
        self.batcher = Batcher(
            self.blocks,
            self.queue,
            self.held,
            stats=self.stats,
            prompt_version="1",
            models=models,
            batch_size=lambda: self.size,
            on_input_end=lambda: self.input_ends.append(self.held.outstanding),
        )

    async def run(self, store: Store, *blocks: list[Chunk]) -> list[Batch]:
        """Feed `blocks` then the end; the batches made, in order."""
        for block in blocks:
            await self.blocks.put(block)
        await self.blocks.put(None)
        async with asyncio.timeout(GUARD):
            await self.batcher.run(store)
        made: list[Batch] = []
        while self.queue.fresh_count:
            batch = await self.queue.get()
            assert batch is not None
            made.append(batch)
        return made


def sizes(batches: list[Batch]) -> list[int]:
    return [len(b.chunks) for b in batches]


async def test_chunks_are_batched_by_the_size_in_force_and_the_rest_goes_last(
    store: Store,
) -> None:
    line = Line(size=3)

    batches = await line.run(store, [chunk(i) for i in range(7)])

    assert sizes(batches) == [3, 3, 1]
    assert [c.seq for b in batches for c in b.chunks] == list(range(7))
    assert line.stats.seen == 7 and line.stats.total == 7


async def test_a_new_batch_size_applies_from_the_next_batch(store: Store) -> None:
    line = Line(size=2)
    await line.blocks.put([chunk(0), chunk(1), chunk(2)])
    running = asyncio.create_task(line.batcher.run(store))
    async with asyncio.timeout(GUARD):
        first = await line.queue.get()
    line.size = 4  # a preset switched mid-run
    await line.blocks.put([chunk(3), chunk(4), chunk(5), chunk(6)])
    await line.blocks.put(None)

    async with asyncio.timeout(GUARD):
        await running
    rest = [await line.queue.get() for _ in range(line.queue.fresh_count)]

    assert first is not None and len(first.chunks) == 2
    assert sizes([b for b in rest if b is not None]) == [4, 1]


async def test_a_repeat_of_a_chunk_in_hand_is_counted_once_and_sent_once(store: Store) -> None:
    line = Line(size=10)

    batches = await line.run(store, [chunk(1), chunk(2), chunk(1)], [chunk(2)])

    assert [c.seq for b in batches for c in b.chunks] == [1, 2]
    assert line.stats.cached == 2
    assert line.stats.seen == 4


async def test_a_chunk_done_by_any_of_the_jobs_models_is_skipped(store: Store) -> None:
    done_by_a, done_by_b, done_elsewhere, fresh = chunk(1), chunk(2), chunk(3), chunk(4)
    await store.put_result(result(done_by_a, "model-a"))
    await store.put_result(result(done_by_b, "model-b"))
    await store.put_result(result(done_elsewhere, "not-this-jobs-model"))
    await store.put_result(result(fresh, "model-a", prompt_version="0"))  # an older prompt
    await store.flush()
    line = Line(size=10)

    batches = await line.run(store, [done_by_a, done_by_b, done_elsewhere, fresh])

    assert [c.seq for b in batches for c in b.chunks] == [3, 4]
    assert line.stats.skipped == 2
    assert line.held.take(done_by_a.id)  # a skipped chunk is not held: the store answers


async def test_the_queue_closes_when_the_input_has_ended_and_every_batch_is_resolved(
    store: Store,
) -> None:
    line = Line(size=2)

    batches = await line.run(store, [chunk(i) for i in range(4)])

    assert line.input_ends == [2]  # told once, with both batches still out
    assert line.held.input_done
    for _ in batches:
        line.held.batch_resolved()
    async with asyncio.timeout(GUARD):
        assert await line.queue.get() is None  # closed: the dispatcher's cue to end


async def test_an_empty_input_closes_the_queue_at_once(store: Store) -> None:
    line = Line()

    assert await line.run(store) == []

    assert line.stats.total == 0
    async with asyncio.timeout(GUARD):
        assert await line.queue.get() is None
