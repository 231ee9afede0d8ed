"""A crawl job's targets shared by many processes: a Redis Stream with a consumer group.

The targets go the way the batches do (`stream_queue`), one site an entry.
Every process reads the whole targets file and `enqueue`s it: a Lua script
keeps only the targets (by normalised URL) never added before, so a second
or restarted process adds nothing twice.  `input_read()` says this
process's file is all in — so the job's is.

Each process is its own consumer: `next_target()` reads one entry with a
blocking `XREADGROUP`, so a site is crawled by the one worker that read
it, and its politeness holds across the cluster.  While it is crawled the
keep-alive (`run_keep_alive`) resets the entry's idle time; a worker that
dies or stalls leaves it idle, and after the visibility timeout another
takes it over with `XAUTOCLAIM` (delivered more than `max_deliveries`
times, it is a dead letter, with the reason).

A site an earlier run crawled (the job's set of stored sites, kept by the
collector as it stores each site's first page) goes to the run's replays
stream instead: its pages come back from the store, unfetched, and only a
worker beside the store can read them.  The enqueue script delivers each
replay at once to a placeholder consumer (`FOR_THE_STORE`), from which a
worker beside the store claims it before reading new sites; left there
beyond the visibility timeout (no worker beside the store is running), any
worker takes it over as it would a dead worker's site, and fetches it.

`finished(target, rows)` is called once what the site produced is handed
on: its chunks enqueued on the job's batch stream (by the caller, before),
and its page rows appended to the results stream for the collector here
in the same script that acknowledges the entry — never one without the
other.  The crawl is over for every worker when the file is all enqueued
and every target is finished or dead-lettered: `next_target()` returns
None from then on, and not before, so no worker ends while a site is still
being crawled elsewhere (it may die, and its site come back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from engine.cluster.cancel_guard import raise_if_cancelled
from engine.cluster.job_streams import JobStreams
from engine.cluster.stream_replies import as_int, as_text, create_group, entry_fields, read_entries
from engine.crawl.targets import Target
from engine.observe.events import EventBus, EventKind

__all__ = ["TargetProgress", "TargetStream"]

Clock = Callable[[], float]

TARGET_FORMAT = "1"
# The longest blocking read once the whole file is enqueued: the crawl's end (another
# worker finishing the last site) is seen this soon.
TAIL_BLOCK_S = 0.25

# Who a site crawled before waits with until a worker beside the store claims it.
FOR_THE_STORE = "(beside the store)"

# KEYS: targets stream, enqueued set, crawl progress, stored sites, replays stream.
# ARGV: format, group, then 4 per target: url, host, line, fallback ("1"/"0").  Adds the
# targets never added before: a site stored by an earlier run to the replays, delivered
# to `FOR_THE_STORE` (never read as a new entry by anyone), the others to the targets.
_ENQUEUE = """
local added, replays = 0, 0
for at = 3, #ARGV, 4 do
  if redis.call('SADD', KEYS[2], ARGV[at]) == 1 then
    local stream = KEYS[1]
    if redis.call('SISMEMBER', KEYS[4], ARGV[at]) == 1 then
      stream = KEYS[5]
      replays = replays + 1
    end
    redis.call('XADD', stream, '*', 'v', ARGV[1], 'url', ARGV[at], 'host', ARGV[at + 1],
               'line', ARGV[at + 2], 'fallback', ARGV[at + 3])
    added = added + 1
  end
end
if replays > 0 then
  redis.call('XREADGROUP', 'GROUP', ARGV[2], '__FOR_THE_STORE__', 'COUNT', replays,
             'STREAMS', KEYS[5], '>')
end
if added > 0 then redis.call('HINCRBY', KEYS[3], 'targets', added) end
return redis.call('HMGET', KEYS[3], 'targets', 'settled', 'dead')
""".replace("__FOR_THE_STORE__", FOR_THE_STORE)

# KEYS: replays stream.  ARGV: group, consumer.  Claims one replay waiting for a worker
# beside the store (its delivery count set to 1: the placeholder's is no attempt).
_CLAIM_REPLAY = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, '__FOR_THE_STORE__')
if not p[1] then return false end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, p[1][1], 'RETRYCOUNT', 1)
if not claimed[1] then return false end
return claimed[1]
""".replace("__FOR_THE_STORE__", FOR_THE_STORE)

# KEYS: the entry's stream, results stream, crawl progress, crawl dead letters.  ARGV: group,
# entry id, page rows (a JSON array, or ''), dead reason ('' if crawled), url, deliveries.
# The rows are appended even if another worker finished the target first: the
# collector keeps one row a page.
_FINISH = """
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], '*', 'v', '1', 'rows', ARGV[3])
end
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  if ARGV[4] ~= '' then
    redis.call('XADD', KEYS[4], '*', 'entry', ARGV[2], 'url', ARGV[5], 'reason', ARGV[4],
               'deliveries', ARGV[6])
    redis.call('HINCRBY', KEYS[3], 'dead', 1)
  else
    redis.call('HINCRBY', KEYS[3], 'settled', 1)
  end
end
return acked
"""

# KEYS: a targets or replays stream.  ARGV: group, consumer, entry ids.  Resets the idle
# time of the entries this consumer still owns.
_KEEP_ALIVE = """
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  end
end
return 0
"""

# KEYS: a targets or replays stream.  ARGV: group, consumer, min idle ms, cursor.  Takes
# over at most one entry idle too long, with how often it has now been delivered; returns
# the cursor to go on from (XAUTOCLAIM scans ten pending entries a claim asked for, so
# the scan of a long pending list, live workers' sites first, goes on from where it
# stopped).
_RECLAIM = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                           'COUNT', 1)
local entry = claimed[2][1]
if not entry then return {claimed[1]} end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
local deliveries = 0
if p[1] then deliveries = p[1][4] end
return {claimed[1], entry[1], entry[2], deliveries}
"""


@dataclass(frozen=True, slots=True)
class TargetProgress:
    """The crawl's counters in Redis: targets enqueued, crawled, dead-lettered."""

    targets: int = 0
    settled: int = 0
    dead: int = 0
    input_complete: bool = False

    @property
    def over(self) -> bool:
        """The whole file is enqueued and every target is crawled or dead-lettered."""
        return self.input_complete and self.settled + self.dead >= self.targets


class TargetStream:
    """The run's targets as a Redis Stream; this process is consumer `consumer`.

    `prefix` names the run's keys (`JobStreams`); `visibility_s`, an entry
    idle this long is taken over; more than `max_deliveries` deliveries make
    a dead letter; `block_s` bounds a blocking read (then the run's end is
    looked at); `max_backlog`, `enqueue` waits while this many targets are
    enqueued and not finished, so the stream does not hold the whole file.
    `stored_sites` names the job's set of sites its store holds (None: every
    site is fetched); `beside_store`, this worker can read that store, so it
    replays them.
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        consumer: str,
        *,
        visibility_s: float = 60.0,
        max_deliveries: int = 5,
        block_s: float = 1.0,
        max_backlog: int = 10_000,
        events: EventBus | None = None,
        clock: Clock = time.monotonic,
        stored_sites: str | None = None,
        beside_store: bool = False,
    ) -> None:
        if visibility_s <= 0 or block_s <= 0 or max_deliveries < 1 or max_backlog < 1:
            raise ValueError(
                "visibility_s and block_s must be > 0, max_deliveries and max_backlog >= 1"
            )
        self._redis = redis
        self.streams = JobStreams(prefix)
        self.consumer = consumer
        self._visibility_s = visibility_s
        self._max_deliveries = max_deliveries
        self._block_s = block_s
        self._max_backlog = max_backlog
        self._events = events
        self._clock = clock
        # Without a set of stored sites, none is ever in it: an empty set's name.
        self._stored_sites = stored_sites or f"{prefix}:crawl:no-stored-sites"
        self._beside_store = beside_store
        self._enqueue = redis.register_script(_ENQUEUE)
        self._claim_replay = redis.register_script(_CLAIM_REPLAY)
        self._finish = redis.register_script(_FINISH)
        self._keep_alive = redis.register_script(_KEEP_ALIVE)
        self._reclaim = redis.register_script(_RECLAIM)
        self._joined = False
        self._next_reclaim = clock()
        # Where the scan of each stream's idle entries goes on.
        self._cursors = {self.streams.targets: "0-0", self.streams.replays: "0-0"}
        # url → the stream and entry this consumer holds for it
        self._held: dict[str, tuple[str, str]] = {}
        self._tail = False  # the whole file is enqueued
        self.over = False  # every target is crawled or dead-lettered (as this worker saw)
        self.reclaimed = 0  # targets taken over from idle consumers
        self.dead_lettered = 0  # targets this consumer sent to the dead-letter stream

    async def join(self) -> None:
        """Create the crawlers' consumer groups if they do not exist yet (idempotent)."""
        if not self._joined:
            for stream in (self.streams.targets, self.streams.replays):
                await create_group(self._redis, stream, self.streams.crawl_group)
            self._joined = True

    async def enqueue(self, targets: Sequence[Target]) -> None:
        """Add the targets never added before, in one script call; waits while the
        backlog is full."""
        await self.join()
        if targets:
            s = self.streams
            args: list[str | int] = [TARGET_FORMAT, s.crawl_group]
            for t in targets:
                args += [t.url, t.host, t.line, "1" if t.fallback_http else "0"]
            await self._enqueue(
                keys=[
                    s.targets,
                    s.targets_enqueued,
                    s.crawl_progress,
                    self._stored_sites,
                    s.replays,
                ],
                args=args,
            )
        while True:
            progress = await self.progress()
            if progress.targets - progress.settled - progress.dead < self._max_backlog:
                return
            # Other processes' finishes are seen at the next look, as `put_many` does.
            await asyncio.sleep(self._block_s)

    async def input_read(self) -> None:
        """This process has enqueued the whole file: so has the job."""
        await self._redis.hset(self.streams.crawl_progress, "input_complete", 1)

    async def next_target(self) -> Target | None:
        """The next site for this worker: one idle elsewhere too long first, then (beside
        the store) one crawled before, then a new one; None once every target is crawled
        or dead-lettered."""
        await self.join()
        while True:
            raise_if_cancelled()
            now = self._clock()
            if now >= self._next_reclaim:
                target = await self._take_over_idle()
                if target is not None:
                    return target
                self._next_reclaim = now + self._visibility_s / 2
            if self._beside_store:
                claimed: Any = await self._claim_replay(
                    keys=[self.streams.replays], args=[self.streams.crawl_group, self.consumer]
                )
                if claimed:
                    entry_id, fields = claimed
                    return self._hold(self.streams.replays, as_text(entry_id), entry_fields(fields))
            block_s = min(self._block_s, max(0.001, self._next_reclaim - now))
            if self._tail:
                block_s = min(block_s, TAIL_BLOCK_S)
            reply = await self._redis.xreadgroup(
                self.streams.crawl_group,
                self.consumer,
                {self.streams.targets: ">"},
                count=1,
                block=max(1, round(block_s * 1000)),
            )
            for entry_id, fields in read_entries(reply):
                return self._hold(self.streams.targets, as_text(entry_id), entry_fields(fields))
            progress = await self.progress()
            if progress.over:
                self.over = True
                return None
            self._tail = progress.input_complete

    async def finished(self, target: Target, rows: Sequence[str] = ()) -> None:
        """The site is crawled and its chunks enqueued: its page rows (encoded for the
        results stream) go to the collector and its entry is acknowledged, atomically."""
        held = self._held.pop(target.url, None)
        if held is None:
            raise KeyError(f"{target.url} is not a target this worker holds")
        stream, entry_id = held
        await self._run_finish(stream, entry_id, target.url, rows=rows)

    def let_go(self, target: Target) -> None:
        """Forget a target without finishing it (stopping): it stays pending, and another
        worker takes it over once idle beyond the visibility timeout."""
        self._held.pop(target.url, None)

    async def progress(self) -> TargetProgress:
        """The crawl's counters as Redis has them now."""
        values = await self._redis.hmget(
            self.streams.crawl_progress, ["targets", "settled", "dead", "input_complete"]
        )
        targets, settled, dead, complete = (as_int(v) for v in values)
        return TargetProgress(targets, settled, dead, complete == 1)

    async def run_keep_alive(self) -> None:
        """Keep the targets this worker holds from looking idle; run until cancelled."""
        while True:
            # A timer, not polling: the keep-alive is a heartbeat by nature.
            await asyncio.sleep(self._visibility_s / 3)
            by_stream: dict[str, list[str]] = {}
            for stream, entry_id in self._held.values():
                by_stream.setdefault(stream, []).append(entry_id)
            for stream, held in by_stream.items():
                await self._keep_alive(
                    keys=[stream], args=[self.streams.crawl_group, self.consumer, *held]
                )

    # ------------------------------------------------------------ internals
    def _hold(self, stream: str, entry_id: str, fields: Mapping[str, str]) -> Target:
        target = Target(
            url=fields["url"],
            host=fields["host"],
            line=int(fields.get("line", "0")),
            fallback_http=fields.get("fallback") == "1",
        )
        self._held[target.url] = (stream, entry_id)
        return target

    async def _take_over_idle(self) -> Target | None:
        """One target idle beyond the visibility timeout, taken over (or dead-lettered);
        None once a whole scan of the pending entries found none.  A site crawled
        before that no worker beside the store claimed is taken over too: fetched."""
        for stream in self._cursors:
            target = await self._take_over_idle_in(stream)
            if target is not None:
                return target
        return None

    async def _take_over_idle_in(self, stream: str) -> Target | None:
        while True:
            raise_if_cancelled()
            claimed: Any = await self._reclaim(
                keys=[stream],
                args=[
                    self.streams.crawl_group,
                    self.consumer,
                    max(1, round(self._visibility_s * 1000)),
                    self._cursors[stream],
                ],
            )
            self._cursors[stream] = as_text(claimed[0])
            if len(claimed) == 1:
                if self._cursors[stream] == "0-0":
                    return None
                continue  # the scan goes on
            entry_id, fields, deliveries = as_text(claimed[1]), entry_fields(claimed[2]), claimed[3]
            url = fields.get("url", "")
            if int(deliveries) > self._max_deliveries or "host" not in fields:
                reason = (
                    f"dead letter: delivered {deliveries} times (more than "
                    f"{self._max_deliveries}) and never crawled to its end; the workers that "
                    "took it died or stalled"
                    if "host" in fields
                    else "dead letter: an entry that is not a target"
                )
                self.dead_lettered += 1
                self._emit(
                    EventKind.DEAD_LETTER,
                    f"crawl target {url or entry_id} given up, {reason}",
                    entry=entry_id,
                    deliveries=int(deliveries),
                    target=url,
                    reason=reason,
                )
                await self._run_finish(
                    stream, entry_id, url, dead_reason=reason, deliveries=deliveries
                )
                continue
            self.reclaimed += 1
            why = (
                f"crawled before, and no worker beside the store replayed it within "
                f"{self._visibility_s:g}s"
                if stream == self.streams.replays and not self._beside_store
                else f"idle over {self._visibility_s:g}s"
            )
            self._emit(
                EventKind.BATCH_RECLAIMED,
                f"took over crawl target {url} ({why}; delivery {deliveries})",
                entry=entry_id,
                deliveries=int(deliveries),
                target=url,
            )
            return self._hold(stream, entry_id, fields)

    async def _run_finish(
        self,
        stream: str,
        entry_id: str,
        url: str,
        *,
        rows: Sequence[str] = (),
        dead_reason: str = "",
        deliveries: int = 0,
    ) -> None:
        s = self.streams
        await self._finish(
            keys=[stream, s.results, s.crawl_progress, s.crawl_dead],
            args=[
                s.crawl_group,
                entry_id,
                "[" + ",".join(rows) + "]" if rows else "",
                dead_reason,
                url,
                deliveries,
            ],
        )

    def _emit(self, kind: EventKind, message: str, **data: Any) -> None:
        if self._events is not None:
            self._events.emit(kind, message, consumer=self.consumer, **data)
