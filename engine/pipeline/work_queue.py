"""The queue of batches waiting for a key: fresh work plus retries with a due time.

Behind a small interface (`WorkQueue`) so a later Redis Streams
implementation can share one job between machines.  Retries never block
(a 429 must always be able to put its batch back) and go first once due,
so a requeued batch is not stuck behind a full queue of fresh work.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.pipeline.records import Chunk


@dataclass(slots=True)
class Batch:
    """Chunks that travel together in one request, and their retry history."""

    chunks: tuple[Chunk, ...]
    attempt: int = 0  # failed attempts so far (429s are not failures)
    last_error: str = ""
    est_prompt_tokens: int = 0
    reasons: list[str] = field(default_factory=list)
    refusals: int = 0  # 429s taken
    refused_wait_s: float = 0.0  # the cool-downs those 429s asked for, in all
    model: str = ""  # the model of the key that last tried it ("" before any has)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.chunks)


class WorkQueue(Protocol):
    """Where batches wait for dispatch."""

    async def put(self, batch: Batch) -> None: ...

    async def put_many(self, batches: Sequence[Batch]) -> None:
        """`put` each of `batches`, in order (a shared queue writes them in one round trip)."""
        ...

    def put_retry(self, batch: Batch, delay_s: float = 0.0) -> None: ...

    async def get(self) -> Batch | None: ...

    def close(self) -> None: ...

    def drain_pending(self) -> list[Batch]: ...

    @property
    def fresh_count(self) -> int: ...

    @property
    def retry_count(self) -> int: ...


class InProcessWorkQueue:
    """An asyncio implementation of `WorkQueue` for one process.

    `get()` returns None once the queue is closed and empty.
    """

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._fresh: deque[Batch] = deque()
        self._maxsize = maxsize
        self._retries: list[tuple[float, int, Batch]] = []
        self._seq = itertools.count()
        self._clock = clock
        self._changed = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closed = False

    @property
    def fresh_count(self) -> int:
        return len(self._fresh)

    @property
    def retry_count(self) -> int:
        return len(self._retries)

    async def put(self, batch: Batch) -> None:
        while len(self._fresh) >= self._maxsize:
            self._space.clear()
            await self._space.wait()
        self._fresh.append(batch)
        self._changed.set()

    async def put_many(self, batches: Sequence[Batch]) -> None:
        for batch in batches:
            await self.put(batch)

    def put_retry(self, batch: Batch, delay_s: float = 0.0) -> None:
        heapq.heappush(self._retries, (self._clock() + delay_s, next(self._seq), batch))
        self._changed.set()

    def close(self) -> None:
        """No more fresh work will come."""
        self._closed = True
        self._changed.set()

    async def get(self) -> Batch | None:
        while True:
            now = self._clock()
            if self._retries and self._retries[0][0] <= now:
                return heapq.heappop(self._retries)[2]
            if self._fresh:
                batch = self._fresh.popleft()
                self._space.set()
                return batch
            if self._closed and not self._retries:
                return None
            self._changed.clear()
            if self._retries:
                timeout = max(0.0, self._retries[0][0] - now)
                try:
                    async with asyncio.timeout(timeout):
                        await self._changed.wait()
                except TimeoutError:
                    pass
            else:
                await self._changed.wait()

    def drain_pending(self) -> list[Batch]:
        """Take everything still waiting (used when stopping)."""
        pending = list(self._fresh) + [entry[2] for entry in self._retries]
        self._fresh.clear()
        self._retries.clear()
        self._space.set()
        return pending
