"""The `WorkQueue` of a job shared by many processes: a Redis Stream with a consumer group.

Enqueue once.  Every process runs the same intake; `put` hands a batch to
a Lua script that keeps only the chunks never enqueued before (a set of
chunk ids) and never stored (the collector's set of done chunk ids) and
adds them as one stream entry, so a second or restarted process adds
nothing twice — whatever its batch sizes, since the check is per chunk.
`close()` says this process's intake has ended; that means the whole
input is in the stream, and a marker in Redis tells every consumer that
an empty stream now means done.

Each process is its own consumer.  A reader task (`run`) takes entries
with a blocking `XREADGROUP` (a bounded block: that is the event) and
keeps at most `prefetch` of them ready for `get()`.  From the moment an
entry is read until it is settled, the keep-alive resets its idle time
(`XCLAIM … JUSTID`, only while this consumer still owns it), so a slow
batch is not stolen from a live owner.  Retries stay in this process with
their due time and keep their entry pending and alive.

An entry is settled when every chunk of it has its row: the rows go to the
results stream and the entry is acknowledged (`XACK`) in one atomic script,
so an entry is never acknowledged without its rows, and rows never wait
on an entry that is already gone.  A batch split by the outcomes (a chunk
left out, a bad request) settles its entry when its last chunk does.

Reclaim: entries idle beyond the visibility timeout (their consumer died or
stalled) are taken over with `XAUTOCLAIM`.  A read whose connection dropped
may have lost a reply Redis had sent: those entries are this consumer's,
pending, and known to no one; after any connection trouble it reads its
own pending entries again (`XREADGROUP … 0`) instead of leaving them to
the visibility timeout.  One delivered more than
`max_deliveries` times is a dead letter: its chunks are given up with the
reason (`run(failures)`: the outcomes' `give_up`), and when their failure
rows settle it, it goes to the dead-letter stream with that reason.

The job is over for a consumer when the input is fully enqueued and every
entry is settled or dead-lettered — counters kept by the scripts, so
another consumer's pending work (it may die) keeps everyone waiting until
it is settled or reclaimed.  `get()` returns None from then on.  The
settle that ends the job publishes a notice (`JobStreams.work_over`): the
other workers, blocked in a read that can bring nothing any more, stop at
once instead of at its timeout — each worker's exit is on the job's wall.
A notice missed (a dropped subscription) costs that timeout, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.cluster.batch_codec import (
    FORMAT_VERSION,
    BatchFormatError,
    decode_batch,
    encode_batch,
    encode_chunk,
    encode_history,
)
from engine.cluster.call_coalescer import CallCoalescer
from engine.cluster.cancel_guard import raise_if_cancelled
from engine.cluster.job_streams import JobStreams
from engine.cluster.redis_connection import connection_troubles
from engine.cluster.stream_replies import (
    as_int,
    as_text,
    create_group,
    entry_fields,
    read_entries,
)
from engine.observe.events import EventBus, EventKind
from engine.pipeline.work_queue import Batch

Clock = Callable[[], float]
# One entry's settle: its id, chunks, rows, dead reason, deliveries, dead chunks, dead
# history, failures (the settle script's arguments for it, in order).
_Settle = tuple[str, int, str, str, int, str, str, int]

# Ids per keep-alive script call: bounds one script's run time on the server.
KEEP_ALIVE_IDS_PER_CALL = 500
RECOVER_PAGE = 100  # own pending entries read at a time after a connection trouble
# The reader's longest block once the whole input is enqueued (a read blocks only
# when the stream has nothing new: at the run's tail).
TAIL_BLOCK_S = 0.25

# KEYS: work, enqueued, progress, done.  ARGV: version, then for each batch: n, n chunk
# ids, n encoded chunks, history.  Keeps each batch's chunks never added and never stored
# and adds them as one entry.  Many batches a call: one round trip for an input block.
_ENQUEUE = """
local version = ARGV[1]
local at = 2
while at <= #ARGV do
  local n = tonumber(ARGV[at])
  local kept = {}
  for i = 1, n do
    if redis.call('SISMEMBER', KEYS[4], ARGV[at + i]) == 0
       and redis.call('SADD', KEYS[2], ARGV[at + i]) == 1 then
      kept[#kept + 1] = ARGV[at + n + i]
    end
  end
  if #kept > 0 then
    local chunks = '[' .. table.concat(kept, ',') .. ']'
    local history = ARGV[at + 2 * n + 1]
    if history == '' then
      redis.call('XADD', KEYS[1], '*', 'v', version, 'chunks', chunks)
    else
      redis.call('XADD', KEYS[1], '*', 'v', version, 'chunks', chunks, 'history', history)
    end
    redis.call('HINCRBY', KEYS[3], 'entries', 1)
    redis.call('HINCRBY', KEYS[3], 'chunks', #kept)
  end
  at = at + 2 * n + 2
end
return redis.call('HMGET', KEYS[3], 'entries', 'settled', 'dead')
"""

# KEYS: work, results, progress, dead.  ARGV: group, the job-over channel, then 8 for each
# entry: its id, chunks in it, rows (a JSON array, or ''), dead reason ('' if settled),
# deliveries, chunks JSON, history JSON, and how many of the rows are failures.  Returns
# whether each entry was acknowledged here, and the progress after them all.
# Rows are appended even when another consumer settled the entry first: a late
# result still supersedes a dead letter's failure, and the collector ignores repeats.
_SETTLE = """
local acks, any = {}, false
for at = 3, #ARGV, 8 do
  if ARGV[at + 2] ~= '' then
    redis.call('XADD', KEYS[2], '*', 'v', '1', 'rows', ARGV[at + 2])
  end
  local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[at])
  if acked == 1 then
    any = true
    redis.call('XDEL', KEYS[1], ARGV[at])
    if ARGV[at + 3] ~= '' then
      redis.call('XADD', KEYS[4], '*', 'entry', ARGV[at], 'reason', ARGV[at + 3],
                 'deliveries', ARGV[at + 4], 'chunks', ARGV[at + 5], 'history', ARGV[at + 6])
      redis.call('HINCRBY', KEYS[3], 'dead', 1)
      redis.call('HINCRBY', KEYS[3], 'dead_chunks', tonumber(ARGV[at + 1]))
    else
      redis.call('HINCRBY', KEYS[3], 'settled', 1)
      redis.call('HINCRBY', KEYS[3], 'settled_chunks', tonumber(ARGV[at + 1]))
      redis.call('HINCRBY', KEYS[3], 'failed_chunks', tonumber(ARGV[at + 7]))
    end
  end
  acks[#acks + 1] = acked
end
local p = redis.call('HMGET', KEYS[3], 'input_complete', 'entries', 'settled', 'dead')
if any and p[1] == '1' and
   (tonumber(p[2]) or 0) - (tonumber(p[3]) or 0) - (tonumber(p[4]) or 0) <= 0 then
  redis.call('PUBLISH', ARGV[2], 'over')
end
return {acks, p}
"""

# KEYS: work.  ARGV: group, consumer, entry ids.  Resets the idle time of the
# entries this consumer still owns; returns the ones another consumer took over.
_KEEP_ALIVE = """
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# KEYS: work.  ARGV: group, consumer, min idle ms, cursor, count.  Takes over
# entries idle too long and says how often each has now been delivered.
_RECLAIM = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                           'COUNT', ARGV[5])
local out = {}
for _, entry in ipairs(claimed[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
  local deliveries = 0
  if p[1] then deliveries = p[1][4] end
  out[#out + 1] = {entry[1], entry[2], deliveries}
end
return {claimed[1], out}
"""


class GivesUp(Protocol):
    """Who turns a dead letter's chunks into failure rows (`Outcomes.give_up`)."""

    async def give_up(self, batch: Batch, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class QueueProgress:
    """The job's counters in Redis: entries (and their chunks) enqueued, settled, dead.

    `failed_chunks` are chunks of settled entries whose row is a failure; the
    chunks of dead letters are `dead_chunks`.  `chunks` also counts the chunks
    that are not sent because another chunk carries their text
    (`shared_same_text`): of those, `copied` are stored as copies of its
    answer and `unanswered` as failed with it.
    """

    entries: int = 0
    chunks: int = 0
    settled: int = 0
    settled_chunks: int = 0
    dead: int = 0
    dead_chunks: int = 0
    input_complete: bool = False
    failed_chunks: int = 0
    copied: int = 0
    unanswered: int = 0

    @property
    def chunks_done(self) -> int:
        """Chunks with a result: answered in a settled entry, or copied from an answer."""
        return self.settled_chunks - self.failed_chunks + self.copied

    @property
    def chunks_failed(self) -> int:
        """Chunks stored as failed: in a settled entry, a dead letter, or because the
        chunk sent for their text failed."""
        return self.failed_chunks + self.dead_chunks + self.unanswered

    @property
    def backlog(self) -> int:
        """Entries enqueued and not yet settled or dead-lettered."""
        return self.entries - self.settled - self.dead

    @property
    def over(self) -> bool:
        """The whole input is enqueued and every entry is settled or dead-lettered."""
        return self.input_complete and self.backlog <= 0


@dataclass(slots=True, eq=False)
class _Holding:
    """An entry this consumer read and has not settled: its chunks' rows gather here."""

    entry_id: str
    batch: Batch
    deliveries: int
    unsettled: set[str]
    rows: list[str] = field(default_factory=list)
    failures: int = 0  # rows that are failures
    owned: bool = True  # False once another consumer took it over
    dead_reason: str = ""


SettledHook = Callable[[int, int], None]
"""Told (results, failures) of each entry this consumer settled (acknowledged)."""


class StreamWorkQueue:
    """A `WorkQueue` over the job's Redis Stream; this process is consumer `consumer`.

    `redis` is a connected client (its `Retry` rides out a restart; its
    socket timeout must exceed `block_s`); `prefix` names the job's keys
    (`JobStreams`).  `run(failures)` must run while the queue is used: it
    reads, keeps entries alive, reclaims and dead-letters.  Rows reach
    Redis through `settle` (`ResultsStreamRows` is the outcomes' sink).

    `visibility_s`: an entry idle this long is taken over.  `max_deliveries`:
    more deliveries than this make a dead letter.  `prefetch`: entries read
    ahead of `get()` (0: read only while a `get()` waits).  `max_backlog`:
    `put` waits while the job has this many entries unsettled, so the stream
    does not hold the whole input.  `done_set`: a Redis set of chunk ids
    whose results are stored (the collector's); those are never enqueued
    (default: one under `prefix`).  `on_settled` is told what each entry this
    consumer settled held.
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
        prefetch: int = 1,
        max_backlog: int = 10_000,
        events: EventBus | None = None,
        clock: Clock = time.monotonic,
        done_set: str | None = None,
        on_settled: SettledHook | None = None,
    ) -> None:
        if visibility_s <= 0 or block_s <= 0 or max_deliveries < 1 or prefetch < 0:
            raise ValueError(
                "visibility_s and block_s must be > 0, max_deliveries >= 1, prefetch >= 0"
            )
        if max_backlog < 1:
            raise ValueError("max_backlog must be >= 1")
        self._redis = redis
        self.streams = JobStreams(prefix)
        self.consumer = consumer
        self.done_set = done_set or self.streams.done
        self._on_settled = on_settled
        self._visibility_s = visibility_s
        self._max_deliveries = max_deliveries
        self._block_s = block_s
        self._prefetch = prefetch
        self._max_backlog = max_backlog
        self._events = events
        self._clock = clock
        # Well inside the visibility timeout, so a live owner's entry never looks idle.
        self._keep_alive_every_s = visibility_s / 3
        self._reclaim_every_s = visibility_s / 2
        self._enqueue = redis.register_script(_ENQUEUE)
        self._settle = redis.register_script(_SETTLE)
        # Entries settled while a settle call is out go together in the next.
        self._settles: CallCoalescer[_Settle, bool] = CallCoalescer(self._settle_many)
        self._keep_alive_script = redis.register_script(_KEEP_ALIVE)
        self._reclaim = redis.register_script(_RECLAIM)
        self._holdings: dict[str, _Holding] = {}
        self._settling: set[str] = set()  # entries whose settle script is on its way
        self._entry_of: dict[str, str] = {}  # chunk id → the entry holding it
        self._ready: deque[Batch] = deque()
        self._retries: list[tuple[float, int, Batch]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()
        self._space = asyncio.Event()  # room to read: fewer ready than prefetch + getters
        self._space.set()
        self._getters = 0  # `get()` calls waiting
        self._settled_here = asyncio.Event()
        self._input_ended = asyncio.Event()
        self._joined = False
        self._cursor = "0-0"
        self._troubles = connection_troubles(redis)  # as last looked at
        self._over = False
        self._input_complete_seen = False
        # Set once this worker wrote that the input is all enqueued.
        self.input_marked = asyncio.Event()
        # Set once the whole input is enqueued and every entry has been read by some
        # consumer: what is left is in flight somewhere — the run's tail.
        self.delivered = asyncio.Event()
        self.reclaimed = 0  # entries taken over from idle consumers
        self.recovered = 0  # entries delivered here whose reply a dropped connection lost
        self.dead_lettered = 0  # entries this consumer sent to the dead-letter stream
        self.lost = 0  # entries another consumer took over from this one

    # ------------------------------------------------------------ WorkQueue
    @property
    def fresh_count(self) -> int:
        """Batches read from the stream, waiting for `get()`."""
        return len(self._ready)

    @property
    def retry_count(self) -> int:
        return len(self._retries)

    async def put(self, batch: Batch) -> None:
        """Enqueue the chunks of `batch` that were never enqueued; waits while the backlog
        is full."""
        await self.put_many((batch,))

    async def put_many(self, batches: Sequence[Batch], *, wait_for_room: bool = True) -> None:
        """`put` each of `batches`, in one round trip: on a busy machine a round trip is
        tens of milliseconds, and one per batch would pace the whole job's intake.
        Without `wait_for_room`, returns once they are enqueued, however full the
        backlog (a worker handing on its last batches as it stops)."""
        if not batches:
            return
        await self.join()
        keys = [self.streams.work, self.streams.enqueued, self.streams.progress, self.done_set]
        args: list[str | int] = [FORMAT_VERSION]
        for batch in batches:
            args.append(len(batch.chunks))
            args += [c.id for c in batch.chunks]
            args += [encode_chunk(c) for c in batch.chunks]
            args.append(encode_history(batch))
        # One script call, not a pipeline of them: a call that meets a restarted Redis
        # (its scripts gone) loads the script again, a retried pipeline does not.
        counters = await self._enqueue(keys=keys, args=args)
        raise_if_cancelled()
        entries, settled, dead = (as_int(v) for v in counters)
        backlog = entries - settled - dead
        while wait_for_room and backlog >= self._max_backlog and not self._over:
            raise_if_cancelled()
            # Settles here are an event; other processes' are seen at the next look,
            # every `block_s` — the same bound as the reader's blocking read.
            self._settled_here.clear()
            try:
                async with asyncio.timeout(self._block_s):
                    await self._settled_here.wait()
            except TimeoutError:
                pass
            backlog = (await self.progress()).backlog

    def put_retry(self, batch: Batch, delay_s: float = 0.0) -> None:
        """Try `batch` again here after `delay_s`; its entry stays pending and kept alive."""
        heapq.heappush(self._retries, (self._clock() + delay_s, next(self._seq), batch))
        self._changed.set()

    async def get(self) -> Batch | None:
        """The next batch: a due retry first, then one read from the stream; None once the
        job is over (everything enqueued is settled or dead-lettered)."""
        while True:
            if self._over:
                return None  # what waits here belongs to entries settled elsewhere
            now = self._clock()
            if self._retries and self._retries[0][0] <= now:
                return heapq.heappop(self._retries)[2]
            if self._ready:
                batch = self._ready.popleft()
                self._space.set()
                return batch
            self._changed.clear()
            timeout = max(0.0, self._retries[0][0] - now) if self._retries else None
            self._getters += 1
            self._space.set()
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            except TimeoutError:
                pass
            finally:
                self._getters -= 1

    def close(self) -> None:
        """This process's intake has enqueued everything: so has the job (see the module)."""
        self._input_ended.set()

    def drain_pending(self) -> list[Batch]:
        """Take what waits here (stopping); its entries stay pending and are reclaimed by
        another consumer once idle beyond the visibility timeout."""
        pending = list(self._ready) + [entry[2] for entry in self._retries]
        self._ready.clear()
        self._retries.clear()
        self._space.set()
        return pending

    # ------------------------------------------------------------- cluster
    async def join(self) -> None:
        """Create the job's consumer group if it does not exist yet (idempotent)."""
        if self._joined:
            return
        await create_group(self._redis, self.streams.work, self.streams.work_group)
        self._joined = True

    async def run(self, failures: GivesUp) -> None:
        """Read, keep alive, reclaim and dead-letter until the job is over; then return.

        `failures.give_up(batch, reason)` turns a dead letter's chunks into
        failure rows, which come back through `settle`.
        """
        await self.join()
        async with asyncio.TaskGroup() as tg:
            marker = tg.create_task(self._mark_input_complete(), name="queue-input-marker")
            alive = tg.create_task(self._keep_alive(), name="queue-keep-alive")
            reading = tg.create_task(self._read(failures), name="queue-reader")
            notice = tg.create_task(self._hear_the_end(reading), name="queue-over-notice")
            await asyncio.wait((reading,))  # ended, or cancelled by the notice
            for task in (notice, alive, marker):
                task.cancel()  # over: someone's intake has written the marker already

    async def settle(self, chunk_id: str, row: str, *, failure: bool = False) -> None:
        """A chunk's row (encoded for the results stream) is ready; `failure` if it is one.

        Once every chunk of its entry has a row, the rows are appended to the
        results stream and the entry acknowledged, in one atomic script.
        """
        entry_id = self._entry_of.get(chunk_id)
        holding = self._holdings.get(entry_id) if entry_id is not None else None
        if holding is None:
            # No entry of ours holds it (settled already): the row still goes to
            # the collector, which keeps one result per chunk.
            await self._redis.xadd(self.streams.results, {"v": "1", "rows": f"[{row}]"})
            return
        holding.rows.append(row)
        holding.failures += failure
        holding.unsettled.discard(chunk_id)
        if not holding.unsettled:
            await self._settle_entry(holding)

    async def progress(self) -> QueueProgress:
        """The job's counters as Redis has them now."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(
                self.streams.progress,
                [
                    "entries",
                    "chunks",
                    "settled",
                    "settled_chunks",
                    "dead",
                    "dead_chunks",
                    "input_complete",
                    "failed_chunks",
                ],
            )
            pipe.scard(self.streams.texts_copied)
            pipe.scard(self.streams.texts_unanswered)
            values, copied, unanswered = await pipe.execute()
        entries, chunks, settled, settled_chunks, dead, dead_chunks, complete, failed = (
            as_int(v) for v in values
        )
        return QueueProgress(
            copied=as_int(copied),
            unanswered=as_int(unanswered),
            entries=entries,
            chunks=chunks,
            settled=settled,
            settled_chunks=settled_chunks,
            dead=dead,
            dead_chunks=dead_chunks,
            input_complete=complete == 1,
            failed_chunks=failed,
        )

    @property
    def over(self) -> bool:
        """This consumer knows the job is over (`get()` returns None)."""
        return self._over

    @property
    def held_entries(self) -> tuple[str, ...]:
        """The entries this consumer holds now: read, and not yet settled."""
        return tuple(self._holdings)

    # ------------------------------------------------------------ internals
    async def _read(self, failures: GivesUp) -> None:
        # Reclaim first: a process joining (or rejoining) takes over dead
        # consumers' work before new work.
        next_reclaim = self._clock()
        while not self._over:
            raise_if_cancelled()
            troubles = connection_troubles(self._redis)
            if troubles != self._troubles:
                self._troubles = troubles
                await self._recover_delivered(failures)
            if self._room() <= 0:
                self._space.clear()
                await self._space.wait()
                continue
            now = self._clock()
            if now >= next_reclaim:
                found = await self._take_over_idle(failures)
                # Keep going while entries come back or the scan is unfinished.
                busy = found or self._cursor != "0-0"
                next_reclaim = now if busy else now + self._reclaim_every_s
                if busy:
                    continue
            room = self._room()  # a waiting get() may have been served meanwhile
            if room <= 0:
                continue
            block_s = min(self._block_s, max(0.001, next_reclaim - now))
            if self._input_complete_seen:
                # Near the tail: the last entry's delivery, and then the run's end
                # (another consumer settling the last entry), are seen this soon.
                block_s = min(block_s, TAIL_BLOCK_S)
            complete_before = self._input_complete_seen
            if await self._read_new(failures, room, block_s):
                continue
            if self._over:
                continue
            progress = await self.progress()
            if progress.over:
                self._finish()
                continue
            self._input_complete_seen = progress.input_complete
            if complete_before:
                # Complete before a read that found nothing new: every entry is out.
                self.delivered.set()

    async def _read_new(self, failures: GivesUp, room: int, block_s: float) -> bool:
        """Read up to `room` new entries (never 0: that means all), blocking up to `block_s`."""
        reply = await self._redis.xreadgroup(
            self.streams.work_group,
            self.consumer,
            {self.streams.work: ">"},
            count=room,
            block=max(1, round(block_s * 1000)),
        )
        entries = read_entries(reply)
        for entry_id, fields in entries:
            await self._hold(as_text(entry_id), entry_fields(fields), 1, failures)
        return bool(entries)

    async def _recover_delivered(self, failures: GivesUp) -> None:
        """Hold this consumer's pending entries that it does not know of: delivered by a
        read whose reply was lost with its connection."""
        after = "0-0"
        while True:
            reply = await self._redis.xreadgroup(
                self.streams.work_group,
                self.consumer,
                {self.streams.work: after},
                count=RECOVER_PAGE,
            )
            entries = read_entries(reply)
            if not entries:
                return
            for entry_id, fields in entries:
                entry = as_text(entry_id)
                known = entry in self._holdings or entry in self._settling
                if not known and fields is not None:
                    self.recovered += 1
                    await self._hold(entry, entry_fields(fields), 1, failures)
            after = as_text(entries[-1][0])

    async def _take_over_idle(self, failures: GivesUp) -> bool:
        """Claim entries idle beyond the visibility timeout; True if any came back."""
        room = max(1, self._room())
        cursor, claimed = await self._reclaim(
            keys=[self.streams.work],
            args=[
                self.streams.work_group,
                self.consumer,
                max(1, round(self._visibility_s * 1000)),
                self._cursor,
                room,
            ],
        )
        self._cursor = as_text(cursor)
        for entry_id, flat, deliveries in claimed:
            entry = as_text(entry_id)
            held = self._holdings.get(entry)
            if held is not None:
                held.owned = True  # our own, idle while this process stalled: keep it
                continue
            self.reclaimed += 1
            await self._hold(entry, entry_fields(flat), int(deliveries), failures, reclaimed=True)
        return bool(claimed)

    async def _hold(
        self,
        entry_id: str,
        fields: Mapping[str, str],
        deliveries: int,
        failures: GivesUp,
        *,
        reclaimed: bool = False,
    ) -> None:
        """Keep an entry just read; ready for `get()`, or given up when delivered too often."""
        try:
            batch = decode_batch(fields)
        except BatchFormatError as exc:
            await self._dead_letter_unreadable(entry_id, fields, deliveries, str(exc))
            return
        if reclaimed:
            self._emit(
                EventKind.BATCH_RECLAIMED,
                f"took over batch {entry_id} ({len(batch.chunks)} chunks, idle over "
                f"{self._visibility_s:g}s; delivery {deliveries})",
                entry=entry_id,
                deliveries=deliveries,
                chunks=len(batch.chunks),
            )
        holding = _Holding(entry_id, batch, deliveries, {c.id for c in batch.chunks})
        self._holdings[entry_id] = holding
        for chunk in batch.chunks:
            self._entry_of[chunk.id] = entry_id
        if deliveries > self._max_deliveries:
            reason = (
                f"dead letter: delivered {deliveries} times (more than {self._max_deliveries}) "
                "and never settled; the workers that took it died or stalled"
            )
            holding.dead_reason = reason
            self._emit(
                EventKind.DEAD_LETTER,
                f"batch {entry_id} ({len(batch.chunks)} chunks) given up, {reason}",
                entry=entry_id,
                deliveries=deliveries,
                chunks=len(batch.chunks),
                reason=reason,
            )
            await failures.give_up(batch, reason)  # its failure rows settle it
            return
        self._ready.append(batch)
        self._changed.set()

    async def _settle_entry(self, holding: _Holding) -> None:
        # Forgotten before the script: if it fails, the entry stays pending,
        # unkept, and is reclaimed and redone — never acknowledged without rows.
        del self._holdings[holding.entry_id]
        for chunk in holding.batch.chunks:
            if self._entry_of.get(chunk.id) == holding.entry_id:
                del self._entry_of[chunk.id]
        dead = encode_batch(holding.batch) if holding.dead_reason else {}
        # Still pending until the script lands: not an entry a lost reply delivered.
        self._settling.add(holding.entry_id)
        try:
            acked = await self._run_settle(
                holding.entry_id,
                chunks=len(holding.batch.chunks),
                rows="[" + ",".join(holding.rows) + "]" if holding.rows else "",
                dead_reason=holding.dead_reason,
                deliveries=holding.deliveries,
                dead_chunks=dead.get("chunks", ""),
                dead_history=dead.get("history", ""),
                failures=holding.failures,
            )
        finally:
            self._settling.discard(holding.entry_id)
        if holding.dead_reason:
            self.dead_lettered += 1
        if acked and self._on_settled is not None:
            # Counted once, by the consumer whose script acknowledged the entry.
            self._on_settled(len(holding.rows) - holding.failures, holding.failures)

    async def _dead_letter_unreadable(
        self, entry_id: str, fields: Mapping[str, str], deliveries: int, reason: str
    ) -> None:
        """An entry no chunk can be read from goes straight to the dead-letter stream."""
        self.dead_lettered += 1
        self._emit(
            EventKind.DEAD_LETTER,
            f"batch {entry_id} is a dead letter: {reason}",
            entry=entry_id,
            deliveries=deliveries,
            chunks=0,
            reason=reason,
        )
        await self._run_settle(
            entry_id,
            chunks=0,
            rows="",
            dead_reason=reason,
            deliveries=deliveries,
            dead_chunks=fields.get("chunks", ""),
            dead_history=fields.get("history", ""),
            failures=0,
        )

    async def _run_settle(
        self,
        entry_id: str,
        *,
        chunks: int,
        rows: str,
        dead_reason: str,
        deliveries: int,
        dead_chunks: str,
        dead_history: str,
        failures: int,
    ) -> bool:
        """Run the settle script for the entry (with others settled meanwhile);
        whether this call acknowledged it."""
        return await self._settles.ask(
            (
                entry_id,
                chunks,
                rows,
                dead_reason,
                deliveries,
                dead_chunks,
                dead_history,
                failures,
            )
        )

    async def _settle_many(self, settles: list[_Settle]) -> list[bool]:
        """One settle script call for `settles`; whether each was acknowledged here."""
        s = self.streams
        args: list[str | int] = [s.work_group, s.work_over]
        for settle in settles:
            args += settle
        acks, (complete, entries, settled, dead) = await self._settle(
            keys=[s.work, s.results, s.progress, s.dead], args=args
        )
        acked = [bool(as_int(a)) for a in acks]
        if any(acked):
            self._settled_here.set()
        if as_int(complete) == 1:
            self._input_complete_seen = True  # known at every settle, not only when reads dry up
            if as_int(entries) - as_int(settled) - as_int(dead) <= 0:
                self._finish()
        return acked

    def _room(self) -> int:
        """How many entries to read now: the read-ahead plus one per waiting `get()`."""
        return self._prefetch + self._getters - len(self._ready)

    def _finish(self) -> None:
        self._over = True
        self._changed.set()
        self._space.set()

    async def _keep_alive(self) -> None:
        while True:
            # A timer, not polling: the keep-alive is a heartbeat by nature.
            await asyncio.sleep(self._keep_alive_every_s)
            raise_if_cancelled()
            owned = [h.entry_id for h in self._holdings.values() if h.owned]
            for start in range(0, len(owned), KEEP_ALIVE_IDS_PER_CALL):
                part = owned[start : start + KEEP_ALIVE_IDS_PER_CALL]
                lost = await self._keep_alive_script(
                    keys=[self.streams.work],
                    args=[self.streams.work_group, self.consumer, *part],
                )
                for entry_id in map(as_text, lost):
                    holding = self._holdings.get(entry_id)
                    if holding is None or not holding.owned:
                        continue  # settled meanwhile
                    holding.owned = False
                    self.lost += 1
                    self._emit(
                        EventKind.WARNING,
                        f"batch {entry_id} was taken over by another worker "
                        f"(this one held it past the {self._visibility_s:g}s visibility "
                        "timeout); both may finish it, one result per chunk is kept",
                        entry=entry_id,
                    )

    async def _hear_the_end(self, reading: asyncio.Task[None]) -> None:
        """Wait for the notice that the job is over; once the counters confirm it, end
        `reading` (its blocked read can bring nothing).  Quietly gives up on Redis
        trouble: the reader's own look at the counters ends the job then."""
        notices = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await notices.subscribe(self.streams.work_over)
            # Subscribed first, then looked: an end that came before is not missed.
            while not (await self.progress()).over:
                raise_if_cancelled()  # a call may have dropped it (see cancel_guard)
                await notices.get_message(timeout=None)
        except RedisError:
            return
        finally:
            with contextlib.suppress(RedisError):
                await notices.aclose()
        self._finish()
        reading.cancel()

    async def _mark_input_complete(self) -> None:
        await self._input_ended.wait()
        await self._redis.hset(self.streams.progress, "input_complete", 1)
        self._input_complete_seen = True
        self.input_marked.set()
        # Wakes the workers waiting for their turn to read it (`intake_lease`).
        with contextlib.suppress(RedisError):
            await self._redis.publish(self.streams.input_notice, "complete")

    def _emit(self, kind: EventKind, message: str, **data: Any) -> None:
        if self._events is not None:
            self._events.emit(kind, message, consumer=self.consumer, **data)
