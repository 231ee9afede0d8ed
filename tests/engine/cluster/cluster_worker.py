"""A worker of a shared job, for the cluster tests: the real queue, outcomes and sink.

It is the engine's back half without HTTP: batches come from the
`StreamWorkQueue`, each is "answered" at once by a provider that returns
one result per chunk id, and the real `Outcomes` turn the answer into rows
that go through `ResultsStreamRows` — which is how the lead wires a worker.
Dead letters are given up by the same `Outcomes.give_up`.

Run as a program it is a worker process of its own (a test can SIGKILL it):

    python -m tests.engine.cluster.cluster_worker REDIS_URL PREFIX NAME [--hold-s S]

It prints `took ENTRY…` when it holds batches, `done N` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from engine.cluster.results_stream import ResultsStreamRows
from engine.cluster.stream_queue import SettledHook, StreamWorkQueue
from engine.config.settings import Preset, ProviderSettings, RateLimitWaits
from engine.limits.adaptive_concurrency import AdaptiveConcurrency
from engine.limits.backoff import Backoff
from engine.limits.key_pool import KeyPool, KeyState
from engine.limits.rate_limiter import KeyBudget
from engine.observe.events import EventBus
from engine.observe.run_stats import RunStats
from engine.pipeline.held_work import HeldWork
from engine.pipeline.outcomes import Outcomes
from engine.pipeline.records import Chunk, chunk_id
from engine.pipeline.work_queue import Batch
from engine.provider.client import CallResult

PROMPT_VERSION = "1"
MODEL = "sim-model"
PRESET = Preset(name="test", max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02)


def chunks(count: int, source: str = "doc.txt") -> list[Chunk]:
    """`count` distinct chunks of one source, with stable ids."""
    made = []
    for seq in range(count):
        text = f"chunk {seq} of {source}: some words to read"
        made.append(Chunk(chunk_id(source, text), source, seq, text, est_tokens=12))
    return made


def batches(of: Sequence[Chunk], size: int) -> list[Batch]:
    return [Batch(tuple(of[i : i + size])) for i in range(0, len(of), size)]


@dataclass(frozen=True, slots=True)
class Timing:
    """Short timings so reclaiming and dead letters happen within a test's seconds."""

    visibility_s: float = 1.0
    block_s: float = 0.2
    max_deliveries: int = 5


class Worker:
    """One consumer of the shared job: queue, real outcomes, results sink."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        name: str,
        timing: Timing = Timing(),
        *,
        prefetch: int = 1,
        done_set: str | None = None,
        on_settled: SettledHook | None = None,
    ) -> None:
        self.name = name
        self.events = EventBus()
        self.queue = StreamWorkQueue(
            redis,
            prefix,
            name,
            visibility_s=timing.visibility_s,
            block_s=timing.block_s,
            max_deliveries=timing.max_deliveries,
            prefetch=prefetch,
            events=self.events,
            done_set=done_set,
            on_settled=on_settled,
        )
        self.rows = ResultsStreamRows(self.queue)
        self.held = HeldWork(self.queue)
        self.stats = RunStats()
        provider = ProviderSettings(
            name="sim", base_url="unused: answers are made here", model=MODEL
        )
        key = KeyState(
            "sim/k", "k", provider, KeyBudget(None, None, time.monotonic), time.monotonic
        )
        self.keys = KeyPool([key], events=self.events)
        self.outcomes = Outcomes(
            self.rows,
            run_id=1,
            prompt_version=PROMPT_VERSION,
            first_model=MODEL,
            queue=self.queue,
            held=self.held,
            keys=self.keys,
            stats=self.stats,
            events=self.events,
            attempts=AdaptiveConcurrency(8, time.monotonic()),
            preset=lambda: PRESET,
            backoff=Backoff(lambda: PRESET, random.Random(1)).delay_s,
            waits=RateLimitWaits(),
            clock=time.monotonic,
        )
        self.worked: list[Batch] = []  # every batch this worker took, in order

    async def serve(
        self, hold_s: float = 0.0, on_take: Callable[[Batch], None] | None = None
    ) -> None:
        """Take and answer batches until the job is over; `hold_s` is each call's latency."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.queue.run(self.outcomes), name=f"{self.name}-queue")
            while (batch := await self.queue.get()) is not None:
                self.worked.append(batch)
                if on_take is not None:
                    on_take(batch)
                await self.answer(batch, hold_s)

    async def answer(self, batch: Batch, hold_s: float = 0.0) -> None:
        """What the dispatcher does with a batch, against a provider that answers every id."""
        lease = await self.keys.lease(20 * len(batch.chunks))
        await asyncio.sleep(hold_s)
        content = json.dumps({"results": [{"id": c.id, "worker": self.name} for c in batch.chunks]})
        lease.returned()
        result = CallResult(content, 10 * len(batch.chunks), 5 * len(batch.chunks), {}, hold_s)
        await self.outcomes.answered(batch, lease, result)


async def _main(url: str, prefix: str, name: str, hold_s: float, visibility_s: float) -> None:
    redis = Redis.from_url(url)
    worker = Worker(redis, prefix, name, Timing(visibility_s=visibility_s))

    def say_took(batch: Batch) -> None:
        held = sorted(worker.queue.held_entries)
        print("took", *held, flush=True)

    try:
        await worker.serve(hold_s, on_take=say_took)
        print("done", len(worker.worked), flush=True)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prefix")
    parser.add_argument("name")
    parser.add_argument("--hold-s", type=float, default=0.0)
    parser.add_argument("--visibility-s", type=float, default=1.0)
    options = parser.parse_args()
    asyncio.run(
        _main(options.url, options.prefix, options.name, options.hold_s, options.visibility_s)
    )
    sys.exit(0)
