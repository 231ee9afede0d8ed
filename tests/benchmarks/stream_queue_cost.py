"""What sharing a job through Redis costs one process: enqueue, take and settle, collect.

    python -m tests.benchmarks.stream_queue_cost [--batches 2000]

A local `redis-server` of its own (no persistence, then the append-only file
with `appendfsync always`, as the restart test runs it), batches of 4 chunks
of ~600 bytes.  It times, on the wall clock and on this process's CPU clock:

- the intake enqueueing every batch (`StreamWorkQueue.put`, one script each);
- one worker taking and answering them one after another (the real queue and
  `Outcomes`, a provider that answers at once), each settle appending the rows
  to the results stream and acknowledging the batch in one script;
- the collector writing the results stream into a SQLite store.

Nothing is asserted: it prints batches (or rows) per second and CPU
microseconds per batch, to set against the ~1–2 ms the SDK spends on each
request.  Redis runs in its own process; its CPU is not in these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

from engine.cluster.result_collector import ResultCollector
from engine.pipeline.records import Chunk, chunk_id
from engine.pipeline.work_queue import Batch
from engine.store.sqlite_store import Store
from tests.engine.cluster.cluster_worker import Worker
from tests.redis_server import RedisServer

WORDS = ("the", "customer", "asked", "for", "a", "refund", "because", "order", "arrived", "late")


def work(batches: int) -> list[Batch]:
    made = []
    for b in range(batches):
        chunks = []
        for seq in range(4):
            text = f"record {b}.{seq}: " + " ".join(
                WORDS[(b + seq + i) % len(WORDS)] for i in range(100)
            )
            chunks.append(Chunk(chunk_id("bench", text), "bench", b * 4 + seq, text, 150))
        made.append(Batch(tuple(chunks)))
    return made


async def timed(step: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await step()
    return time.perf_counter() - wall, time.process_time() - cpu


async def measure(folder: Path, batches: int, appendonly: bool) -> list[str]:
    todo = work(batches)
    with RedisServer(folder / "redis", appendonly=appendonly) as server:
        redis = Redis.from_url(server.url)
        worker = Worker(redis, "bench", "w")

        async def enqueue() -> None:
            for batch in todo:
                await worker.queue.put(batch)
            worker.queue.close()

        async def collect() -> None:
            async with await Store.open(folder / f"results-{appendonly}.db") as store:
                await ResultCollector(redis, "bench", "c", store, read_count=500).catch_up()

        lines = []
        for name, step, unit in (
            ("enqueue", enqueue, batches),
            ("take + settle", worker.serve, batches),
            ("collect rows", collect, batches * 4),
        ):
            wall, cpu = await timed(step)
            lines.append(
                f"{'AOF always' if appendonly else 'no persistence':15} {name:14}"
                f" {unit / wall:9.0f}/s   {cpu / batches * 1e6:7.0f} µs CPU per batch"
            )
        await redis.aclose()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=2000)
    batches = parser.parse_args().batches
    with tempfile.TemporaryDirectory() as folder:
        for appendonly in (False, True):
            for line in asyncio.run(measure(Path(folder) / str(appendonly), batches, appendonly)):
                print(line)


if __name__ == "__main__":
    main()
