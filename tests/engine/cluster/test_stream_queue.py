"""One job's batches shared by many workers through a Redis Stream, against a real server.

Enqueued once however many intakes run; each batch taken by one worker;
acknowledged only with its rows in the results stream; a dead worker's
batches taken over after the visibility timeout, a live one's kept alive;
a batch delivered too often dead-lettered with the reason; `get()` ending
only once everything is settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

import engine.cluster.stream_queue as stream_queue
from engine.cluster.batch_codec import decode_batch, encode_batch
from engine.cluster.redis_connection import connection_troubles, open_redis
from engine.cluster.result_collector import ResultCollector
from engine.cluster.stream_queue import QueueProgress, StreamWorkQueue
from engine.cluster.stream_replies import read_entries
from engine.config.cluster_table import ClusterSettings
from engine.observe.events import EventKind
from engine.observe.run_stats import RunStats
from engine.pipeline.batcher import Batcher
from engine.pipeline.held_work import HeldWork
from engine.pipeline.records import Chunk
from engine.pipeline.work_queue import Batch
from engine.store.sqlite_store import Store
from tests.engine.cluster.cluster_worker import PROMPT_VERSION, Timing, Worker, batches, chunks
from tests.redis_server import RedisServer

PREFIX = "job"
REPO = Path(__file__).resolve().parents[3]
GUARD_S = 20.0  # fail instead of hanging when an end never comes


def ids_of(worked: list[Batch]) -> list[str]:
    return [c.id for b in worked for c in b.chunks]


async def enqueue(queue: StreamWorkQueue, work: list[Batch]) -> None:
    """The intake's part: every batch put, then the input declared complete."""
    for batch in work:
        await queue.put(batch)
    queue.close()


async def stored(redis: Redis, path: Path) -> dict[str, int]:
    """Collect the results stream into a fresh store at `path`; its counts."""
    async with await Store.open(path) as store:
        await ResultCollector(redis, PREFIX, "collector", store).catch_up()
        return await store.counts()


async def test_the_tail_is_known_once_every_batch_is_out_and_not_before(
    redis_client: Redis,
) -> None:
    """`delivered` says the whole input is enqueued and every entry read by some worker:
    the batches left are in flight somewhere, and a worker may hedge its own."""
    # No read-ahead: each entry is read by the get() that takes it.
    a, b = (Worker(redis_client, PREFIX, name, prefetch=0) for name in "ab")
    work = batches(chunks(12), 4)
    for batch in work:
        await a.queue.put(batch)
    async with asyncio.timeout(GUARD_S), asyncio.TaskGroup() as tg:
        tg.create_task(a.queue.run(a.outcomes))
        tg.create_task(b.queue.run(b.outcomes))
        taken = [await a.queue.get(), await b.queue.get()]
        await asyncio.sleep(Timing().block_s * 3)
        assert not a.queue.delivered.is_set(), "the input is not complete yet"
        a.queue.close()
        taken.append(await b.queue.get())  # the last entry: every one is out now
        # Each waits for more, as a worker's admission does at the tail.
        ends = [tg.create_task(a.queue.get()), tg.create_task(b.queue.get())]
        await a.queue.delivered.wait()
        await b.queue.delivered.wait()
        assert not any(end.done() for end in ends), "delivered is not over: batches are out"
        for worker, batch in zip((a, b, b), taken, strict=True):
            assert batch is not None
            await worker.answer(batch)
        assert [await end for end in ends] == [None, None]


async def test_a_worker_knows_the_input_is_complete_from_its_settles_not_only_from_empty_reads(
    redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each settle tells the worker what Redis knows of the input: once it is complete, a
    read that finds nothing new blocks only briefly and the tail begins — not after a
    full blocking read spent not knowing it (up to a second, on the job's wall)."""
    monkeypatch.setattr(stream_queue, "TAIL_BLOCK_S", 0.2)
    slow = Timing(visibility_s=120.0, block_s=60.0)  # an unknowing read: up to 60 s
    intake = Worker(redis_client, PREFIX, "intake", prefetch=0)
    worker = Worker(redis_client, PREFIX, "worker", slow, prefetch=0)
    await enqueue(intake.queue, batches(chunks(12), 4))
    async with asyncio.timeout(GUARD_S), asyncio.TaskGroup() as tg:
        marking = tg.create_task(intake.queue.run(intake.outcomes))  # the input complete
        while not (await intake.queue.progress()).input_complete:
            await asyncio.sleep(0.01)
        tg.create_task(worker.queue.run(worker.outcomes))
        taken = [await worker.queue.get() for _ in range(3)]
        for batch in taken[:2]:
            assert batch is not None
            await worker.answer(batch)  # its settle's reply: the input is complete
        waiting = tg.create_task(worker.queue.get())  # admission, waiting at the tail
        async with asyncio.timeout(5.0):
            await worker.queue.delivered.wait()
        assert taken[2] is not None
        await worker.answer(taken[2])
        assert await waiting is None
        marking.cancel()  # it takes no batches: nothing of its own ends its reading


async def test_the_settle_that_ends_the_job_wakes_the_workers_blocked_in_a_read(
    redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last settle publishes that the job is over: a worker blocked in a read that
    can bring nothing more ends at once, not at its read's timeout."""
    monkeypatch.setattr(stream_queue, "TAIL_BLOCK_S", 60.0)
    slow = Timing(visibility_s=120.0, block_s=60.0)  # an empty read: 60 s
    last, idle = (Worker(redis_client, PREFIX, name, slow, prefetch=0) for name in ("a", "b"))
    work = batches(chunks(8), 4)
    await enqueue(last.queue, work)
    async with asyncio.timeout(GUARD_S), asyncio.TaskGroup() as tg:
        runs = [tg.create_task(w.queue.run(w.outcomes)) for w in (last, idle)]
        taken = [await last.queue.get() for _ in work]
        idle_end = tg.create_task(idle.queue.get())  # its reader blocks: nothing is left
        await asyncio.sleep(0.5)
        for batch in taken:
            assert batch is not None
            await last.answer(batch)
        async with asyncio.timeout(5.0):
            assert await idle_end is None
            await runs[1]


async def test_two_workers_share_the_batches_and_each_chunk_is_worked_once(
    redis_client: Redis, tmp_path: Path
) -> None:
    work = chunks(40)
    a, b = Worker(redis_client, PREFIX, "a"), Worker(redis_client, PREFIX, "b")
    await enqueue(a.queue, batches(work, 4))
    async with asyncio.timeout(GUARD_S):
        await asyncio.gather(a.serve(hold_s=0.02), b.serve(hold_s=0.02))

    assert a.worked and b.worked, "both workers took batches"
    assert sorted(ids_of(a.worked) + ids_of(b.worked)) == sorted(c.id for c in work)
    assert await a.queue.progress() == QueueProgress(
        entries=10, chunks=40, settled=10, settled_chunks=40, input_complete=True
    )
    assert await redis_client.xlen(a.queue.streams.work) == 0, "settled entries are deleted"
    assert await stored(redis_client, tmp_path / "results.db") == {"results": 40, "failures": 0}


async def test_a_second_or_restarted_intake_enqueues_nothing_twice(
    redis_client: Redis, tmp_path: Path
) -> None:
    """Three processes run the same intake through the real batcher, with different batch
    sizes (a preset switched between runs): every chunk is enqueued once."""
    work = chunks(30)
    streams_key = f"{PREFIX}:work"

    async def intake(name: str, batch_size: int) -> StreamWorkQueue:
        queue = StreamWorkQueue(redis_client, PREFIX, name)
        blocks: asyncio.Queue[list[Chunk] | None] = asyncio.Queue()
        for start in range(0, len(work), 7):
            blocks.put_nowait(work[start : start + 7])
        blocks.put_nowait(None)
        batcher = Batcher(
            blocks,
            queue,
            HeldWork(queue),
            stats=RunStats(),
            prompt_version=PROMPT_VERSION,
            models=["m"],
            batch_size=lambda: batch_size,
            on_input_end=queue.close,
        )
        async with await Store.open(tmp_path / f"{name}.db") as store:
            await batcher.run(store)
        return queue

    first = await intake("first", 4)
    after_first = await first.progress()
    assert (after_first.entries, after_first.chunks) == (8, 30)
    await intake("second", 3)
    await intake("restarted", 4)
    assert await first.progress() == after_first
    assert await redis_client.xlen(streams_key) == 8

    # A batch that overlaps what is enqueued adds only its new chunks, as one entry.
    more = chunks(33)
    await first.put(Batch(tuple(more[28:33])))
    progress = await first.progress()
    assert (progress.entries, progress.chunks) == (9, 33)
    (_entry_id, fields), *_ = await redis_client.xrevrange(streams_key, count=1)
    assert decode_batch(fields).ids == tuple(c.id for c in more[30:33])


async def test_a_worker_killed_while_holding_batches_has_them_taken_over(
    redis_server: RedisServer, redis_client: Redis, tmp_path: Path
) -> None:
    """A worker process takes batches and is SIGKILLed mid-call: another worker takes its
    batches over once they are idle past the visibility timeout; nothing is lost."""
    work = chunks(24)
    rescuer = Worker(redis_client, PREFIX, "rescuer")
    await enqueue(rescuer.queue, batches(work, 2))
    doomed = await asyncio.create_subprocess_exec(
        *worker_command(redis_server.url, "doomed", hold_s=60.0),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert doomed.stdout is not None
        async with asyncio.timeout(GUARD_S):
            line = (await doomed.stdout.readline()).decode().split()
        assert line[0] == "took", line
        await asyncio.sleep(0.3)  # let it read ahead too: that entry must come back as well
        held_at_death = await pending_of(redis_client, "doomed")
        assert set(line[1:]) <= held_at_death
    finally:
        with contextlib.suppress(ProcessLookupError):
            doomed.kill()  # SIGKILL: no goodbye, its entries stay pending
        await doomed.wait()

    async with asyncio.timeout(GUARD_S):
        await rescuer.serve()

    reclaims = [e for e in rescuer.events.recent() if e.kind is EventKind.BATCH_RECLAIMED]
    assert {e.data["entry"] for e in reclaims} == held_at_death
    assert all(e.data["deliveries"] == 2 for e in reclaims)
    assert sorted(ids_of(rescuer.worked)) == sorted(c.id for c in work)
    assert await stored(redis_client, tmp_path / "results.db") == {"results": 24, "failures": 0}


async def test_entries_whose_reply_a_dropped_connection_lost_are_read_again_at_once(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    """Redis delivered entries to a worker and its connection dropped before the reply
    arrived (Redis restarted, say): the entries are that worker's, pending, and known to
    no one.  After the trouble it reads its own pending entries again, long before the
    visibility timeout would let another worker take them over."""
    client = open_redis(ClusterSettings(redis=redis_server.url), {})
    try:
        worker = Worker(client, PREFIX, "w1", Timing(visibility_s=60.0, block_s=0.2))
        work = chunks(12)
        await enqueue(worker.queue, batches(work, 2))
        streams = worker.queue.streams
        lost = await redis_client.xreadgroup(
            streams.work_group, "w1", {streams.work: ">"}, count=2
        )  # delivered to w1; the reply never reaches it
        assert len(read_entries(lost)) == 2

        async with asyncio.timeout(GUARD_S), asyncio.TaskGroup() as tg:  # inside 60 s
            tg.create_task(worker.serve())
            while len(worker.worked) < 4:  # the rest: then it waits in blocking reads
                await asyncio.sleep(0.05)
            # Its connections drop, as when Redis restarts: until a kill meets a read
            # in progress (an idle one is reconnected quietly when next used).
            while connection_troubles(client) == 0:
                await redis_client.client_kill_filter(_type="normal", skipme=True)
                await asyncio.sleep(0.5)

        assert sorted(ids_of(worker.worked)) == sorted(c.id for c in work)
        assert worker.queue.recovered == 2 and worker.queue.reclaimed == 0
        assert (await worker.queue.progress()).settled == 6
    finally:
        await client.aclose()


async def test_keep_alive_keeps_a_slow_live_workers_batch(redis_client: Redis) -> None:
    """A call that lasts three visibility timeouts is not taken over while its worker lives."""
    timing = Timing(visibility_s=0.5, block_s=0.1)
    # Both slow: whichever reads the batch first holds it for three timeouts.
    a, b = (Worker(redis_client, PREFIX, name, timing) for name in "ab")
    await enqueue(a.queue, batches(chunks(2), 2))
    async with asyncio.timeout(GUARD_S):
        await asyncio.gather(a.serve(hold_s=1.5), b.serve(hold_s=1.5))
    assert len(a.worked) + len(b.worked) == 1
    assert a.queue.reclaimed == b.queue.reclaimed == 0
    assert a.queue.lost == b.queue.lost == 0
    assert (await a.queue.progress()).settled == 1


async def test_a_batch_delivered_too_often_is_a_dead_letter_with_the_reason(
    redis_client: Redis, tmp_path: Path
) -> None:
    """Two workers take the batch and die; the third delivery is one too many: its chunks
    fail with the reason, and the entry goes to the dead-letter stream."""
    timing = Timing(visibility_s=0.5, block_s=0.1, max_deliveries=2)
    work = chunks(3)
    last = Worker(redis_client, PREFIX, "last", timing)
    await enqueue(last.queue, batches(work, 3))
    for name in ("first-to-die", "second-to-die"):
        dying = Worker(redis_client, PREFIX, name, timing)
        running = asyncio.create_task(dying.queue.run(dying.outcomes))
        async with asyncio.timeout(GUARD_S):
            taken = await dying.queue.get()
        assert taken is not None and taken.ids == tuple(c.id for c in work)
        running.cancel()  # dies holding it: no keep-alive, no settle
        with contextlib.suppress(asyncio.CancelledError):
            await running

    async with asyncio.timeout(GUARD_S):
        await last.serve()

    assert last.worked == [], "a dead letter is never handed out"
    dead = [e for e in last.events.recent() if e.kind is EventKind.DEAD_LETTER]
    assert len(dead) == 1 and dead[0].data["deliveries"] == 3
    reason = dead[0].data["reason"]
    assert "delivered 3 times (more than 2)" in reason
    progress = await last.queue.progress()
    assert (progress.dead, progress.dead_chunks, progress.settled) == (1, 3, 0)
    ((_id, fields),) = await redis_client.xrange(f"{PREFIX}:work:dead")
    assert fields[b"reason"].decode() == reason and fields[b"deliveries"] == b"3"
    assert decode_batch({"v": "1", "chunks": fields[b"chunks"]}).ids == tuple(c.id for c in work)

    path = tmp_path / "results.db"
    assert await stored(redis_client, path) == {"results": 0, "failures": 3}
    async with await Store.open(path) as store, store._turn() as conn:
        reasons = await conn.execute_fetchall("SELECT DISTINCT reason FROM failures")
    assert [r[0] for r in reasons] == [reason]


async def test_an_entry_of_another_format_is_dead_lettered_with_the_reason(
    redis_client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = Worker(redis_client, PREFIX, "w")
    monkeypatch.setattr(stream_queue, "FORMAT_VERSION", "9")  # a newer worker enqueues
    await enqueue(worker.queue, batches(chunks(2), 2))
    monkeypatch.undo()
    async with asyncio.timeout(GUARD_S):
        await worker.serve()
    ((_id, fields),) = await redis_client.xrange(f"{PREFIX}:work:dead")
    assert fields[b"reason"] == b"batch format '9'; this worker reads '1'"
    assert (await worker.queue.progress()).over


async def test_get_ends_only_when_the_input_is_complete_and_every_batch_is_settled(
    redis_client: Redis,
) -> None:
    # Neither reads ahead, so each takes exactly the batch it asks for.
    holder = Worker(redis_client, PREFIX, "holder", prefetch=0)
    worker = Worker(redis_client, PREFIX, "worker", prefetch=0)
    for batch in batches(chunks(4), 2):
        await worker.queue.put(batch)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(holder.queue.run(holder.outcomes))
        tg.create_task(worker.queue.run(worker.outcomes))
        async with asyncio.timeout(GUARD_S):
            held = await holder.queue.get()
            mine = await worker.queue.get()
        assert held is not None and mine is not None
        await worker.answer(mine)

        # Input not yet declared complete: an empty stream is not the end.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(worker.queue.get(), 0.6)
        worker.queue.close()
        # Complete, but another worker holds a batch (alive, kept alive past the
        # visibility timeout): still not the end.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(worker.queue.get(), 1.5)
        await holder.answer(held)
        async with asyncio.timeout(1.0):
            assert await worker.queue.get() is None
            assert await holder.queue.get() is None
    assert (await worker.queue.progress()).over


async def test_put_waits_while_the_backlog_is_full(redis_client: Redis) -> None:
    """The stream never holds more unsettled entries than the bound: the intake waits."""
    intake = StreamWorkQueue(redis_client, PREFIX, "intake", max_backlog=2, block_s=0.2)
    worker = Worker(redis_client, PREFIX, "worker")
    first, second = batches(chunks(4), 2)
    async with asyncio.timeout(GUARD_S), asyncio.TaskGroup() as tg:
        await intake.put(first)
        putting = tg.create_task(intake.put(second))
        await asyncio.sleep(0.6)
        assert not putting.done(), "two entries unsettled: the intake waits"
        running = tg.create_task(worker.queue.run(worker.outcomes))
        taken = await worker.queue.get()
        assert taken is not None
        await worker.answer(taken)
        await putting  # one settled: room again
        running.cancel()
    assert (await intake.progress()).entries == 2


def test_a_batch_survives_its_encoding() -> None:
    batch = Batch(
        tuple(chunks(3)),
        attempt=2,
        last_error="timeout",
        reasons=["timeout: slow", "5xx: busy"],
        refusals=1,
        refused_wait_s=1.5,
        model="m",
    )
    assert decode_batch(encode_batch(batch)) == batch
    assert "history" not in encode_batch(Batch(tuple(chunks(1)))), "fresh work stays compact"


def worker_command(url: str, name: str, *, hold_s: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.engine.cluster.cluster_worker",
        url,
        PREFIX,
        name,
        "--hold-s",
        str(hold_s),
    ]


async def pending_of(redis: Redis, consumer: str) -> set[str]:
    """The entries `consumer` holds (pending, not acknowledged)."""
    pending = await redis.xpending_range(
        f"{PREFIX}:work", "workers", min="-", max="+", count=100, consumername=consumer
    )
    return {p["message_id"].decode() for p in pending}
