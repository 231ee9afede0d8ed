"""The job's collector: the results stream, written to the one SQLite store.

Workers anywhere append rows to the results stream (`results_stream`) —
results, failures, and a crawl job's pages; the
collector, in the process beside the store, reads them with a consumer
group of its own, hands them to the store and acknowledges (and deletes)
an entry only once the store has committed its rows.  A collector that
dies between the commit and the acknowledgement leaves its entries
pending; the next one (or a restart under the same name) writes them
again, and the store keeps exactly one result per chunk: results are
`INSERT OR IGNORE`, and a failure never stands beside a result.

Run `run()` while the job runs (cancel it to stop), then `catch_up()` once
the work queue says the job is over: every row is in the stream by then,
because a batch is acknowledged in the same script that appends its rows.

The ids of chunks whose result is committed go to the done set (in the
same transaction as the acknowledgement), which the work queue reads so a
chunk stored once is never enqueued again, by any worker, in any run.
Likewise a crawled site whose first page is committed goes to the job's
stored sites, so a rerun replays it from this store instead of fetching it
(`target_stream`).

With `copies` (`shared_same_text`), a committed row of a chunk sent for a
text that others repeat is followed by their copies of its answer (or
their failures, if it failed), and an entry of copies to make — chunks
enqueued once their text was answered — by those copies; all committed
before the entries are acknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis

from engine.cluster.batch_codec import BatchFormatError
from engine.cluster.cancel_guard import raise_if_cancelled
from engine.cluster.job_streams import JobStreams
from engine.cluster.results_stream import RowFormatError, decode_rows
from engine.cluster.shared_same_text import COPIES_FIELD, LateCopy, TextCopies, late_copies
from engine.cluster.stream_replies import as_text, create_group, entry_fields, read_entries
from engine.crawl.outcomes import RETRIED_OUTCOMES
from engine.observe.events import EventBus, EventKind
from engine.pipeline.same_text import StoredAnswers
from engine.store.sqlite_store import FailureRow, PageRow, ResultRow

Clock = Callable[[], float]


class RowStore(StoredAnswers, Protocol):
    """Where collected rows are committed (`engine.store.sqlite_store.Store`); its
    answers by text serve copies enqueued once their text was answered."""

    async def put_result(self, row: ResultRow) -> None: ...

    async def put_failure(self, row: FailureRow) -> None: ...

    async def put_page(self, row: PageRow) -> None: ...

    async def flush(self) -> None: ...


class ResultCollector:
    """Reads the job's results stream as consumer `consumer` and commits its rows to `store`.

    `run_id`, when given, is stamped on every row: the run in this store
    that collected it (a worker's own run id means nothing here).
    `visibility_s`: a collector's entries idle this long are taken over.
    `done_set` names the set of stored chunk ids (default: one under `prefix`);
    `stored_sites`, the set of crawl targets whose pages the store holds for a
    rerun to replay (a site's first page stored with an outcome not retried).
    `copies`: the run's texts sent once (`shared_same_text`), whose copies are made here.
    """

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        consumer: str,
        store: RowStore,
        *,
        run_id: int | None = None,
        visibility_s: float = 60.0,
        block_s: float = 1.0,
        read_count: int = 200,
        events: EventBus | None = None,
        clock: Clock = time.monotonic,
        done_set: str | None = None,
        stored_sites: str | None = None,
        copies: TextCopies | None = None,
    ) -> None:
        if visibility_s <= 0 or block_s <= 0 or read_count < 1:
            raise ValueError("visibility_s and block_s must be > 0, read_count >= 1")
        self._redis = redis
        self.streams = JobStreams(prefix)
        self.consumer = consumer
        self.done_set = done_set or self.streams.done
        self.stored_sites = stored_sites
        self._copies = copies
        self._store = store
        self._run_id = run_id
        self._visibility_s = visibility_s
        self._block_s = block_s
        self._read_count = read_count
        self._events = events
        self._clock = clock
        self._joined = False
        self.rows_collected = 0  # rows handed to the store (repeats included)
        self.entries_collected = 0

    async def join(self) -> None:
        """Create the collectors' consumer group if it does not exist yet (idempotent)."""
        if not self._joined:
            await create_group(self._redis, self.streams.results, self.streams.results_group)
            self._joined = True

    async def run(self) -> None:
        """Collect until cancelled: own pending first, then new rows and idle collectors'."""
        await self.join()
        await self._collect_own_pending()
        next_reclaim = self._clock()
        while True:
            raise_if_cancelled()
            now = self._clock()
            if now >= next_reclaim:
                taken = await self._take_over_idle()
                next_reclaim = now if taken else now + self._visibility_s / 2
            block_s = min(self._block_s, max(0.001, next_reclaim - self._clock()))
            await self._collect_new(block_s)

    async def catch_up(self) -> int:
        """Commit everything in the stream now (own pending, then new), without blocking;
        returns the rows handed to the store."""
        await self.join()
        before = self.rows_collected
        await self._collect_own_pending()
        while await self._collect_new(None):
            raise_if_cancelled()
        return self.rows_collected - before

    async def adopt_pending(self) -> int:
        """Commit every entry another collector read and left unacknowledged, however
        briefly idle; returns the rows handed to the store.

        For a collector that has just become the only one (it holds the job's
        collector lease): the one before it is gone, or a moment from knowing it
        is not the collector any more — and a row committed twice is kept once.
        """
        await self.join()
        before = self.rows_collected
        start = "0-0"
        while True:
            raise_if_cancelled()
            start, claimed, *_deleted = await self._redis.xautoclaim(
                self.streams.results,
                self.streams.results_group,
                self.consumer,
                min_idle_time=0,
                start_id=start,
                count=self._read_count,
            )
            if claimed:
                await self._commit(claimed)
            start = as_text(start)
            if start == "0-0":
                return self.rows_collected - before

    # ------------------------------------------------------------ internals
    async def _collect_own_pending(self) -> None:
        """Entries delivered to this consumer and never acknowledged (a cancel, a restart)."""
        while True:
            raise_if_cancelled()
            reply = await self._redis.xreadgroup(
                self.streams.results_group,
                self.consumer,
                {self.streams.results: "0"},
                count=self._read_count,
            )
            entries = read_entries(reply)
            if not entries:
                return
            await self._commit(entries)

    async def _collect_new(self, block_s: float | None) -> int:
        """Read new entries (blocking up to `block_s`, or not at all) and commit them."""
        reply = await self._redis.xreadgroup(
            self.streams.results_group,
            self.consumer,
            {self.streams.results: ">"},
            count=self._read_count,
            block=None if block_s is None else max(1, round(block_s * 1000)),
        )
        entries = read_entries(reply)
        if entries:
            await self._commit(entries)
        return len(entries)

    async def _take_over_idle(self) -> bool:
        """Commit entries another collector left idle beyond the visibility timeout."""
        _cursor, claimed, *_deleted = await self._redis.xautoclaim(
            self.streams.results,
            self.streams.results_group,
            self.consumer,
            min_idle_time=max(1, round(self._visibility_s * 1000)),
            start_id="0-0",
            count=self._read_count,
        )
        if claimed:
            await self._commit(claimed)
        return bool(claimed)

    async def _commit(self, entries: Sequence[Any]) -> None:
        """Rows to the store, committed; then their entries acknowledged and deleted."""
        ids: list[str] = []
        done: list[str] = []
        sites: list[str] = []
        results: list[ResultRow] = []
        failures: list[FailureRow] = []
        late: list[LateCopy] = []
        for entry_id, raw in entries:
            entry = as_text(entry_id)
            ids.append(entry)
            fields = entry_fields(raw)
            try:
                if COPIES_FIELD in fields and self._copies is not None:
                    late += late_copies(fields[COPIES_FIELD])
                    continue
                rows = decode_rows(fields, self._run_id)
            except (RowFormatError, BatchFormatError) as exc:
                await self._set_aside(entry, raw, str(exc))
                continue
            for row in rows:
                if isinstance(row, ResultRow):
                    await self._store.put_result(row)
                    done.append(row.chunk_id)
                    results.append(row)
                elif isinstance(row, PageRow):
                    await self._store.put_page(row)  # a crawled page's outcome
                    if row.depth == 0 and row.outcome not in RETRIED_OUTCOMES:
                        sites.append(row.target)  # a rerun replays it from here
                else:
                    await self._store.put_failure(row)
                    failures.append(row)
            self.rows_collected += len(rows)
        await self._store.flush()  # committed: only now may the stream let them go
        texts, copies = self._copies, None
        if texts is not None and (results or failures or late):
            # The texts are marked answered only now that their answers are committed.
            copies = await texts.made_for(results, failures, late, self._store, self._run_id or 0)
            for copy in copies.rows:
                if isinstance(copy, ResultRow):
                    await self._store.put_result(copy)
                else:
                    await self._store.put_failure(copy)
            done += copies.copied
            self.rows_collected += len(copies.rows)
            if copies.rows:
                await self._store.flush()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.streams.results, self.streams.results_group, *ids)
            pipe.xdel(self.streams.results, *ids)
            if done:
                pipe.sadd(self.done_set, *done)
            if sites and self.stored_sites is not None:
                pipe.sadd(self.stored_sites, *sites)
            if texts is not None and copies is not None:
                texts.settle(pipe, copies)
            await pipe.execute()
        self.entries_collected += len(ids)

    async def _set_aside(self, entry: str, fields: Any, reason: str) -> None:
        """An entry of rows this collector cannot read goes to the dead-letter stream."""
        aside: dict[Any, Any] = {**entry_fields(fields), "results_entry": entry, "reason": reason}
        await self._redis.xadd(self.streams.dead, aside)
        if self._events is not None:
            self._events.emit(
                EventKind.WARNING,
                f"results entry {entry} set aside in {self.streams.dead}: {reason}",
                entry=entry,
            )
