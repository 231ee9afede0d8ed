"""The intake on its own: the input as blocks of chunks, the census, and what was skipped.

Real files in `tmp_path`; the memory hold is an `asyncio.Event` (a gate that
is open or shut) and a crawl is a small stand-in with the figures the intake
reads of one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config.settings import JobSettings
from engine.observe.events import EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.observe.snapshot import CrawlSnapshot
from engine.pipeline.intake import NAMED_BAD_RECORDS, READ_BLOCK, Blocks, Intake
from engine.pipeline.records import Chunk, Document

GUARD = 5.0  # fail instead of hanging when a wake-up never comes


def text_job(path: Path, fmt: str = "text") -> JobSettings:
    return JobSettings(
        name="intake",
        input=str(path),
        input_format=fmt,  # type: ignore[arg-type]
        chunk_tokens=400,
        chunk_overlap_tokens=0,
    )


def write_lines(path: Path, count: int) -> Path:
    path.write_text("".join(f"record {i}: some words\n" for i in range(count)), encoding="utf-8")
    return path


class Made:
    """An intake and what it talks to, for one test."""

    def __init__(self, job: JobSettings, *, gate_open: bool = True) -> None:
        self.blocks: Blocks = asyncio.Queue(maxsize=8)
        self.stats = RunStats()
        self.events = EventBus()
        self.gate = asyncio.Event()
        if gate_open:
            self.gate.set()
        self.fatal: list[str] = []
        self.intake = Intake(
            job,
            self.blocks,
            stats=self.stats,
            events=self.events,
            may_read=self.gate,
            on_fatal=self.fatal.append,
            clock=time.monotonic,
        )

    async def drain(self) -> list[list[Chunk]]:
        """Every block up to the None that ends the input."""
        taken: list[list[Chunk]] = []
        async with asyncio.timeout(GUARD):
            while (block := await self.blocks.get()) is not None:
                taken.append(block)
        return taken


class StandInCrawl:
    """The figures the intake reads of a crawl stage."""

    def __init__(self, total: int | None, started: int, finished: int, bad_lines: int = 0) -> None:
        self.targets_total = total
        self.targets_finished = finished
        self.skipped_lines = bad_lines
        self.targets_read = started  # a stage alone reads each target it starts
        self._started = started
        self.ran = False

    def snapshot(self) -> CrawlSnapshot:
        return CrawlSnapshot(targets_started=self._started, targets_finished=self.targets_finished)

    async def count_targets(self) -> None:
        self.targets_total = 7

    async def run(self) -> None:
        self.ran = True


# -- documents -------------------------------------------------------------------


async def test_the_input_arrives_as_blocks_of_chunks_in_order_then_none(tmp_path: Path) -> None:
    made = Made(text_job(write_lines(tmp_path / "in.txt", READ_BLOCK + 10)))
    reader = asyncio.create_task(made.intake.read())

    blocks = await made.drain()
    await reader

    assert [len(b) for b in blocks] == [READ_BLOCK, 10]
    texts = [c.text for b in blocks for c in b]
    assert texts[0].startswith("record 0:") and texts[-1].startswith(f"record {READ_BLOCK + 9}:")
    assert made.fatal == []


async def test_a_shut_memory_gate_holds_the_block_that_was_read(tmp_path: Path) -> None:
    made = Made(text_job(write_lines(tmp_path / "in.txt", 3)), gate_open=False)
    reader = asyncio.create_task(made.intake.read_documents())
    await asyncio.sleep(0.2)  # long enough for the reading thread to come back
    assert made.blocks.empty()

    made.gate.set()
    blocks = await made.drain()
    await reader

    assert [len(b) for b in blocks] == [3]


async def test_bad_records_are_counted_and_named_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": "good one"}), "not json", json.dumps({"text": "good two"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    made = Made(text_job(path, "jsonl"))

    reader = asyncio.create_task(made.intake.read())
    blocks = await made.drain()
    await reader

    assert [c.text for b in blocks for c in b] == ["good one", "good two"]
    assert made.stats.records_skipped == 1
    assert made.intake.records_skipped() == 1
    warnings = [e.message for e in made.events.recent() if e.kind is EventKind.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("skipped input record:")
    assert "in.jsonl" in warnings[0]
    made.stats.seen = 2  # the batcher counts what it takes
    assert made.intake.nothing_read() == ""


async def test_past_twenty_bad_records_are_counted_but_not_named_one_by_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.jsonl"
    lines = ["not json"] * 500 + [json.dumps({"text": "the good one"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    made = Made(text_job(path, "jsonl"))

    reader = asyncio.create_task(made.intake.read())
    blocks = await made.drain()
    await reader

    assert [c.text for b in blocks for c in b] == ["the good one"]
    assert made.intake.records_skipped() == 500
    warnings = [e.message for e in made.events.recent() if e.kind is EventKind.WARNING]
    named = [w for w in warnings if w.startswith("skipped input record:")]
    assert len(named) == NAMED_BAD_RECORDS
    assert named[0].startswith("skipped input record: ") and ":1:" in named[0]
    assert warnings[-1] == (
        f"more than {NAMED_BAD_RECORDS} input records skipped: the rest are counted, not named"
    )
    assert len(warnings) == NAMED_BAD_RECORDS + 1


async def test_an_input_of_nothing_but_bad_records_says_why_the_job_must_fail(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("not json\nnor this\n", encoding="utf-8")
    made = Made(text_job(path, "jsonl"))

    reader = asyncio.create_task(made.intake.read())
    assert await made.drain() == []
    await reader
    made.stats.seen = 0  # the batcher counts what it takes: nothing

    assert made.intake.nothing_read().startswith("input: every record was skipped (2)")


async def test_an_input_that_cannot_be_read_is_fatal_and_still_ends(tmp_path: Path) -> None:
    made = Made(text_job(tmp_path / "missing.txt"))

    reader = asyncio.create_task(made.intake.read())
    assert await made.drain() == []
    await reader

    assert len(made.fatal) == 1 and made.fatal[0].startswith("input: ")
    assert "missing.txt" in made.fatal[0]
    assert any(e.message.startswith("cannot read input:") for e in made.events.recent())


# -- the census ------------------------------------------------------------------


async def test_the_census_counts_every_chunk_up_front(tmp_path: Path) -> None:
    made = Made(text_job(write_lines(tmp_path / "in.txt", 1234)))

    await made.intake.census()

    assert made.stats.total == 1234


async def test_the_census_leaves_a_total_the_reader_already_settled(tmp_path: Path) -> None:
    made = Made(text_job(write_lines(tmp_path / "in.txt", 50)))
    made.stats.total = 49  # the reader came first: its word is final

    await made.intake.census()

    assert made.stats.total == 49


async def test_the_census_waits_for_the_first_request_to_come_back(tmp_path: Path) -> None:
    # Counting holds the interpreter's lock in turns with the event loop: the
    # job's opening requests go out first.
    made = Made(text_job(write_lines(tmp_path / "in.txt", 300)))
    first_reply = asyncio.Event()
    census = asyncio.create_task(made.intake.census(after=first_reply))
    await asyncio.sleep(0.1)
    assert made.stats.total is None and not census.done()

    first_reply.set()
    async with asyncio.timeout(GUARD):
        await census

    assert made.stats.total == 300


async def test_a_job_that_sends_nothing_yet_still_gets_its_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("engine.pipeline.intake.CENSUS_WAIT_S", 0.05)
    made = Made(text_job(write_lines(tmp_path / "in.txt", 300)))

    async with asyncio.timeout(GUARD):
        await made.intake.census(after=asyncio.Event())  # paused, cooling: never set here

    assert made.stats.total == 300


async def test_a_cancelled_census_stops_counting_in_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An input without end: the census can only stop because it was told to,
    # however slowly a loaded machine runs this test.
    counting = threading.Event()
    stopped = threading.Event()  # the counting thread let go of the input
    test_over = threading.Event()  # so a census that fails to stop does not outlive the test

    def endless_documents(job: JobSettings, on_bad_record: object = None) -> Iterator[Document]:
        try:
            for i in itertools.count():
                counting.set()
                if test_over.is_set():
                    return
                yield Document(source=f"endless#{i}", text=f"record {i}: some words")
        finally:
            stopped.set()

    monkeypatch.setattr("engine.pipeline.intake.iter_documents", endless_documents)
    made = Made(text_job(write_lines(tmp_path / "in.txt", 1)))
    census = asyncio.create_task(made.intake.census())
    try:
        assert await asyncio.to_thread(counting.wait, GUARD)  # the thread is counting

        census.cancel()
        await asyncio.gather(census, return_exceptions=True)
        started = time.monotonic()
        let_go = await asyncio.to_thread(stopped.wait, GUARD)
    finally:
        test_over.set()

    assert census.cancelled()
    assert let_go, "the counting thread went on after the census was cancelled"
    assert time.monotonic() - started < 0.5
    assert made.stats.total is None


# -- a crawl job's input -----------------------------------------------------------


async def test_a_delivered_page_becomes_one_block_of_its_chunks(tmp_path: Path) -> None:
    made = Made(text_job(tmp_path / "unused.txt"))

    await made.intake.deliver_page(Document("https://example.test/", "Title\n\nSome text."))
    await made.intake.deliver_page(Document("https://example.test/empty", "   "))

    block = made.blocks.get_nowait()
    assert block is not None and [c.source for c in block] == ["https://example.test/"]
    assert made.blocks.empty()  # a page without text makes no block


async def test_a_crawl_is_read_and_counted_through_its_stage(tmp_path: Path) -> None:
    made = Made(text_job(tmp_path / "unused.txt"))
    crawl = StandInCrawl(total=None, started=0, finished=0, bad_lines=2)
    made.intake.crawl = crawl

    await made.intake.census()
    await made.intake.read()

    assert crawl.targets_total == 7 and crawl.ran
    assert made.blocks.get_nowait() is None
    assert made.intake.records_skipped() == 2  # the crawl's bad target lines count too
    assert made.intake.nothing_read().startswith("input: every record was skipped (2)")


async def test_a_crawls_total_is_projected_from_the_chunks_per_finished_site(
    tmp_path: Path,
) -> None:
    made = Made(text_job(tmp_path / "unused.txt"))
    made.intake.crawl = StandInCrawl(total=10, started=3, finished=2)
    made.stats.seen = 8  # 4 chunks per finished site

    made.intake.project_crawl_total(input_done=False)
    assert made.stats.total == 8 + 4 * 8

    made.stats.total = 9
    made.intake.project_crawl_total(input_done=True)  # the reader's count is final
    assert made.stats.total == 9


async def test_no_crawl_total_is_projected_before_a_site_is_finished(tmp_path: Path) -> None:
    made = Made(text_job(tmp_path / "unused.txt"))
    made.intake.crawl = StandInCrawl(total=10, started=1, finished=0)
    made.stats.seen = 5

    made.intake.project_crawl_total(input_done=False)

    assert made.stats.total is None
