"""Repeated text in a job shared through Redis: one request per text for the whole run.

Whichever worker reads a chunk, a text another chunk of the run carries is
not sent again: the chunk waits for that answer (or, answered already, is
copied from the store) and the collector stores it as a copy under its own
id.  If the chunk sent for a text fails for good, the chunks that waited
for it are stored failed, saying why, and the text may be sent again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

from redis.asyncio import Redis

from engine.cluster.result_collector import ResultCollector
from engine.cluster.shared_same_text import SharedSameText, TextCopies
from engine.engine import Engine
from engine.observe.snapshot import JobState
from engine.pipeline.records import Chunk, chunk_id
from engine.store.sqlite_store import Store
from tests.engine.cluster.cluster_worker import MODEL, PROMPT_VERSION, Worker, batches
from tests.engine.cluster.test_cluster_job import GUARD_S, KEYS, elsewhere, shared, workers
from tests.engine.conftest import job_config, sim_keys
from tests.engine.test_same_text import lines_with_repeats, write_lines
from tests.redis_server import RedisServer

PREFIX = "job"


def of(source: str, *texts: str) -> list[Chunk]:
    """Chunks of `source` with these texts, in order."""
    return [
        Chunk(chunk_id(source, text), source, seq, text, est_tokens=12)
        for seq, text in enumerate(texts)
    ]


def stored(db: Path) -> dict[str, tuple[str, bool]]:
    """Each stored result's chunk id → (the id its answer names, whether it is a copy:
    no key was used for it)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT chunk_id, result_json, key_alias FROM results").fetchall()
    return {str(c): (json.loads(r)["id"], not k) for c, r, k in rows}


def failed(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return {str(c): str(r) for c, r in conn.execute("SELECT chunk_id, reason FROM failures")}


def shared_same_text(
    redis: Redis,
    done_set: str,
    prefix: str = PREFIX,
    *,
    beside_store: bool = True,
    model: str = MODEL,
) -> SharedSameText:
    """A worker's side, in run `prefix` of the job `PREFIX`."""
    return SharedSameText(
        redis,
        prefix,
        done_set,
        prompt_version=PROMPT_VERSION,
        models=[model],
        job_prefix=PREFIX,
        beside_store=beside_store,
    )


async def script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def collector(
    redis: Redis, store: Store, prefix: str = PREFIX, *, recorded: bool = True
) -> ResultCollector:
    """The collector of run `prefix`; `recorded`: it keeps the texts it stores answers to
    for later runs (as a cluster's does; a store filled otherwise has none kept)."""
    copies = TextCopies(
        redis,
        prefix,
        prompt_version=PROMPT_VERSION,
        models=[MODEL],
        job_prefix=PREFIX if recorded else None,
    )
    return ResultCollector(redis, prefix, "collector", store, run_id=1, copies=copies)


async def work_through(worker: Worker, sent: list[Chunk]) -> None:
    """`sent` enqueued as batches of two and answered, the input then complete."""
    for batch in batches(sent, 2):
        await worker.queue.put(batch)
    worker.queue.close()
    async with asyncio.timeout(GUARD_S):
        await worker.serve()


async def test_a_text_repeated_across_sources_is_sent_once_and_copied_to_the_others(
    redis_client: Redis, tmp_path: Path
) -> None:
    worker = Worker(redis_client, PREFIX, "w")
    texts = shared_same_text(redis_client, worker.queue.done_set)
    a = of("a.txt", "intro", "one", "two", "outro")
    b = of("b.txt", "intro", "three", "outro")  # two texts a.txt carries, in flight

    sent = await texts.to_send(a) + await texts.to_send(b)
    assert sent == [*a, b[1]]
    await work_through(worker, sent)
    async with await Store.open(tmp_path / "results.db") as store:
        await collector(redis_client, store).catch_up()
    rows = stored(tmp_path / "results.db")

    assert sum(len(batch.chunks) for batch in worker.worked) == 5, "each text sent once"
    copies = {chunk: answer_id for chunk, (answer_id, copy) in rows.items() if copy}
    assert copies == {b[0].id: b[0].id, b[2].id: b[2].id}, "copies, under their own ids"
    assert set(rows) == {c.id for c in (*a, *b)}
    progress = await worker.queue.progress()
    assert (progress.chunks, progress.copied, progress.chunks_done) == (7, 2, 7)
    assert await redis_client.keys(f"{PREFIX}:texts:waiting:*") == [], "the waits are over"

    # Met again once its answer is stored: copied from the store, nothing sent.
    c = of("c.txt", "one")
    assert await texts.to_send(c) == []
    async with await Store.open(tmp_path / "results.db") as store:
        await collector(redis_client, store).catch_up()
    assert stored(tmp_path / "results.db")[c[0].id] == (c[0].id, True)
    assert (await worker.queue.progress()).copied == 3
    assert await redis_client.xlen(f"{PREFIX}:results") == 0


async def test_a_text_an_earlier_run_answered_is_copied_by_a_worker_anywhere(
    redis_client: Redis, tmp_path: Path
) -> None:
    """Run 1 answers a text; in run 2 (its own keys) the chunks of new sources carrying
    it are copied from the job's store whichever worker reads them — one on a machine
    without the store too.  An answer from another model does not serve."""
    first = Worker(redis_client, PREFIX, "w")
    a = of("a.txt", "boilerplate")
    await work_through(first, await shared_same_text(redis_client, first.queue.done_set).to_send(a))
    async with await Store.open(tmp_path / "results.db") as store:
        await collector(redis_client, store).catch_up()

    run2 = f"{PREFIX}:run:2"
    b, c = of("b.txt", "boilerplate", "news"), of("c.txt", "boilerplate")
    elsewhere = shared_same_text(redis_client, first.queue.done_set, run2, beside_store=False)
    assert await elsewhere.to_send(b) == [b[1]]
    assert await elsewhere.to_send(c) == []
    other_model = shared_same_text(
        redis_client, first.queue.done_set, f"{PREFIX}:run:3", model="another-model"
    )
    d = of("d.txt", "boilerplate")
    assert await other_model.to_send(d) == d
    async with await Store.open(tmp_path / "results.db") as store:
        await collector(redis_client, store, run2).catch_up()
    rows = stored(tmp_path / "results.db")

    assert rows[b[0].id] == (b[0].id, True) and rows[c[0].id] == (c[0].id, True), "copies"
    assert failed(tmp_path / "results.db") == {}


async def test_a_text_in_a_store_filled_outside_the_cluster_is_copied_beside_the_store(
    redis_client: Redis, tmp_path: Path
) -> None:
    """Run 1 answers a text but keeps no record of it (the store was filled by one
    process); in run 2 a chunk of a new source carrying it is copied from the store by
    the worker beside it, and so are the repeats any other worker meets later in that
    run."""
    first = Worker(redis_client, PREFIX, "w")
    a = of("a.txt", "boilerplate")
    await work_through(first, await shared_same_text(redis_client, first.queue.done_set).to_send(a))
    async with await Store.open(tmp_path / "results.db") as store:
        await collector(redis_client, store, recorded=False).catch_up()

    run2 = f"{PREFIX}:run:2"
    b, c = of("b.txt", "boilerplate", "news"), of("c.txt", "boilerplate")
    async with await Store.open(tmp_path / "results.db") as store:
        elsewhere = shared_same_text(redis_client, first.queue.done_set, run2, beside_store=False)
        # A worker elsewhere does not read its own store (not the job's): it would send.
        assert await elsewhere.to_send(b, store) == b
        run3 = f"{PREFIX}:run:3"
        beside = shared_same_text(redis_client, first.queue.done_set, run3)
        elsewhere = shared_same_text(redis_client, first.queue.done_set, run3, beside_store=False)
        assert await beside.to_send(b, store) == [b[1]]
        assert await elsewhere.to_send(c) == [], "the run knows it now"
        await collector(redis_client, store, run3).catch_up()
    rows = stored(tmp_path / "results.db")

    assert rows[b[0].id] == (b[0].id, True) and rows[c[0].id] == (c[0].id, True)
    assert b[1].id not in rows, "a new text is sent"


async def test_when_the_chunk_sent_for_a_text_fails_its_waiting_chunks_fail_saying_why(
    redis_client: Redis, tmp_path: Path
) -> None:
    worker = Worker(redis_client, PREFIX, "w")
    texts = shared_same_text(redis_client, worker.queue.done_set)
    a, b = of("a.txt", "refused text"), of("b.txt", "refused text")
    assert await texts.to_send(a) == a and await texts.to_send(b) == []

    await worker.queue.put(batches(a, 1)[0])
    worker.queue.close()
    async with asyncio.timeout(GUARD_S), asyncio.TaskGroup() as tg:
        tg.create_task(worker.queue.run(worker.outcomes))
        batch = await worker.queue.get()
        assert batch is not None
        await worker.outcomes.give_up(batch, "the provider refused it")
        assert await worker.queue.get() is None
    async with await Store.open(tmp_path / "results.db") as store:
        await collector(redis_client, store).catch_up()
    failures = failed(tmp_path / "results.db")

    assert set(failures) == {a[0].id, b[0].id}, "none lost"
    assert a[0].id in failures[b[0].id] and "the provider refused it" in failures[b[0].id]
    progress = await worker.queue.progress()
    assert (progress.chunks, progress.unanswered, progress.chunks_failed) == (2, 1, 2)
    # Nobody holds the text now: the next chunk carrying it is sent.
    c = of("c.txt", "refused text")
    assert await texts.to_send(c) == c


async def test_an_input_read_again_adds_no_waiting_chunk_twice(
    redis_client: Redis, tmp_path: Path
) -> None:
    """A second reader (the first stopped mid-intake) reads the input from the start."""
    worker = Worker(redis_client, PREFIX, "w")
    first = shared_same_text(redis_client, worker.queue.done_set)
    second = shared_same_text(redis_client, worker.queue.done_set)
    a, b = of("a.txt", "x", "y"), of("b.txt", "x", "y")
    assert await first.to_send(a) == a and await first.to_send(b) == []

    # The holders were never enqueued (the first reader stopped): read again, they are sent.
    assert await second.to_send(a) == a
    await second.to_send(b)
    await work_through(worker, a)
    async with await Store.open(tmp_path / "results.db") as store:
        await collector(redis_client, store).catch_up()

    assert set(stored(tmp_path / "results.db")) == {c.id for c in (*a, *b)}
    progress = await worker.queue.progress()
    assert (progress.chunks, progress.copied, progress.chunks_done) == (4, 2, 4)


async def test_pages_asked_for_together_share_one_call_and_the_first_holds_the_text(
    redis_client: Redis,
) -> None:
    texts = shared_same_text(redis_client, f"{PREFIX}:done")
    await texts.to_send(of("warm/", "the script loaded"))
    calls_before = await script_calls(redis_client)
    pages = [of(f"site{n}/", "cookie banner", f"page {n}") for n in range(5)]
    sent = await asyncio.gather(*(texts.to_send(page) for page in pages))

    assert await script_calls(redis_client) - calls_before == 1, "asked at once: one call"
    assert sent == [pages[0], *([page[1]] for page in pages[1:])]
    waiting = await redis_client.lrange(f"{PREFIX}:texts:waiting:{pages[0][0].id}", 0, -1)
    assert len(waiting) == 4


async def test_two_workers_send_each_text_once_and_later_runs_copy_their_answers(
    redis_server: RedisServer, tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.01, 0.03))
    lines = lines_with_repeats(distinct=40, repeats=10)
    config, secrets = job_config(tmp_path, write_lines(tmp_path / "in.txt", lines), sim.base_url)
    config = replace(config, preset=replace(config.preset, concurrency=2))
    clustered = shared(config, redis_server.url)
    other = elsewhere(clustered, tmp_path / "other" / "results.db")
    async with workers(clustered, other) as (here, there):
        a = Engine(clustered, secrets, cluster=here)
        b = Engine(other, secrets, cluster=there)
        async with asyncio.timeout(GUARD_S):
            states = await asyncio.gather(a.run(), b.run())
        view = here.view()

    assert states == [JobState.DONE, JobState.DONE]
    assert sim.stats.chunks_received == 40, "each text sent once"
    rows = stored(Path(config.job.store))
    assert len(rows) == 50 and sum(1 for _, copied in rows.values() if copied) == 10
    assert all(answer_id == chunk for chunk, (answer_id, _) in rows.items())
    assert view is not None
    assert (view.chunks_done, view.chunks_copied, view.chunks_total) == (50, 10, 50)
    assert "done 50 (10 copied)" in a.summary_line()
    assert "this worker stored 50 rows in it" in a.summary_line(), "copies are rows it stored"

    # The same texts mirrored under new sources: the job's next run, by the worker beside
    # the store, copies every one from it; then one process on the store does too.
    sent_before = sim.stats.chunks_received
    mirrored = replace(
        clustered,
        job=replace(config.job, input=str(write_lines(tmp_path / "mirror.txt", lines))),
    )
    async with workers(mirrored) as (here,):
        async with asyncio.timeout(GUARD_S):
            assert await Engine(mirrored, secrets, cluster=here).run() is JobState.DONE
        view = here.view()
    assert sim.stats.chunks_received == sent_before, "nothing sent: every text had an answer"
    assert view is not None and (view.chunks_done, view.chunks_copied) == (50, 50)

    alone = replace(
        config, job=replace(config.job, input=str(write_lines(tmp_path / "again.txt", lines)))
    )
    engine = Engine(alone, secrets)
    assert await engine.run() is JobState.DONE

    assert sim.stats.chunks_received == sent_before
    assert (engine.snapshot().counts.done, engine.snapshot().counts.cached) == (0, 50)
    assert len(stored(Path(config.job.store))) == 150
