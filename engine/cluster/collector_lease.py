"""Who writes a shared job's one SQLite store: the job's store, and the one collector beside it.

Workers on other machines cannot reach a SQLite file, so the job has one
store, chosen once: the store path of the worker that first started the
job, on its host (`StoreClaim`, kept under the job's prefix for every
later run).  Only workers on that host with that store path may collect,
and one at a time: the one holding the collector lease, a Redis key with
a time to live that its holder renews.  If the holder dies, the lease
runs out and another worker beside the store takes over, adopting what
the dead one had read and not acknowledged (committing a row twice keeps
it once).  With no worker beside the store, rows wait in the results
stream, in Redis, until one runs there.

    PREFIX:store      {"host": ..., "path": ...}   set once, by the first worker
    PREFIX:collector  the holder's worker id, with a time to live
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from engine.cluster.result_collector import ResultCollector
from engine.observe.events import EventBus, EventKind

__all__ = ["CollectorLease", "CollectorRole", "StoreClaim", "claim_store"]

# KEYS: the lease.  ARGV: worker id, time to live (ms).  1 if this worker holds it now.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: the lease.  ARGV: worker id, time to live (ms).  1 if this worker still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: the lease.  ARGV: worker id.  Lets go only of this worker's own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class StoreClaim:
    """The job's one store: the file at `path` on the host named `host`."""

    host: str
    path: str

    def __str__(self) -> str:
        return f"{self.path} on {self.host}"


async def claim_store(redis: Redis, prefix: str, host: str, path: str) -> StoreClaim:
    """The job's store: this worker's, if no worker claimed one before; else the earlier claim."""
    key = f"{prefix}:store"
    await redis.set(key, json.dumps({"host": host, "path": path}), nx=True)
    raw = await redis.get(key)
    try:
        claimed = json.loads(raw or "{}")
        return StoreClaim(str(claimed["host"]), str(claimed["path"]))
    except (ValueError, KeyError, TypeError):
        # Not a claim this version wrote: ours stands in its place, and says so.
        await redis.set(key, json.dumps({"host": host, "path": path}))
        return StoreClaim(host, path)


class CollectorLease:
    """The job's collector lease, as worker `worker_id` sees it; `ttl_s` its time to live."""

    def __init__(self, redis: Redis, prefix: str, worker_id: str, ttl_s: float) -> None:
        self.key = f"{prefix}:collector"
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._redis = redis

    async def take(self) -> bool:
        """Hold the lease (or keep holding it); False while another worker holds it."""
        return bool(await self._take(keys=[self.key], args=[self.worker_id, self._ttl_ms]))

    async def renew(self) -> bool:
        """Keep it for another `ttl_s`; False if it ran out and another worker took it."""
        return bool(await self._renew(keys=[self.key], args=[self.worker_id, self._ttl_ms]))

    async def release(self) -> None:
        """Let it go now (only if this worker holds it), so another may take over at once."""
        await self._release(keys=[self.key], args=[self.worker_id])

    async def holder(self) -> str:
        """The worker id holding it now ("" when nobody does)."""
        raw = await self._redis.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else (raw or "")


class CollectorRole:
    """A worker beside the job's store: collects while it holds the lease, hands over after.

    `run()` (a task beside the job, cancelled at its end) takes the lease
    when it is free, adopts what the previous holder left and collects
    until the lease is lost; `finish(job_over)` then collects what is left
    and lets the lease go.  A worker not `beside` the store does nothing.
    """

    def __init__(
        self,
        redis: Redis,
        lease: CollectorLease,
        collector: ResultCollector,
        *,
        beside: bool,
        store: StoreClaim,
        events: EventBus,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self.lease = lease
        self.collector = collector
        self.beside = beside
        self.store = store
        self.holding = False
        self._events = events
        self._clock = clock
        self._every_s = lease.ttl_s / 3  # renewals well inside the time to live

    async def run(self) -> None:
        """Collect whenever this worker holds the lease, until cancelled."""
        if not self.beside:
            return
        while True:
            if await self._take():
                await self._collect_while_held()
            # A lease is a clock by nature: the holder renews it on a timer, others look on one.
            await asyncio.sleep(self._every_s)

    async def finish(self, *, job_over: bool) -> int:
        """Collect what is left and let the lease go; returns the rows handed to the store.

        A worker beside the store that ends with the job over and does not
        hold the lease waits (at most two of the lease's lifetimes) for the
        holder to collect everything, or for its lease to run out and take
        over: a holder that died must not leave rows behind in Redis.
        """
        if not self.beside:
            return 0
        deadline = self._clock() + 2 * self.lease.ttl_s
        while not self.holding and not await self._take():
            if not job_over or await self._all_collected() or self._clock() >= deadline:
                return 0
            await asyncio.sleep(self._every_s)
        try:
            collected = await self.collector.adopt_pending()
            collected += await self.collector.catch_up()
            return collected
        finally:
            self.holding = False
            await self.lease.release()

    async def _take(self) -> bool:
        self.holding = await self.lease.take()
        return self.holding

    async def _collect_while_held(self) -> None:
        await self.collector.adopt_pending()
        async with asyncio.TaskGroup() as tg:
            collecting = tg.create_task(self.collector.run(), name="result-collector")
            while True:
                await asyncio.sleep(self._every_s)
                if not await self.lease.renew():
                    break
            collecting.cancel()
        self.holding = False
        self._events.emit(
            EventKind.WARNING,
            "this worker lost the collector lease (it could not renew it in time): "
            "another worker beside the store collects now",
        )

    async def _all_collected(self) -> bool:
        # Entries leave the results stream only once committed to the store.
        return int(await self._redis.xlen(self.collector.streams.results)) == 0
