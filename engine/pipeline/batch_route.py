"""The batch route: a batch-mode job's batches go through the provider's Batch API.

It takes the dispatcher's place for a job whose providers say
`mode = "batch"`: the batches the batcher made (exactly as for the online
route) are collected into input files — one request per batch, the body the
online route sends — uploaded and submitted with a batch-mode key, then
followed until the provider ends them.  A file is submitted when it is full
(the provider's requests or bytes per file), when no more work has come for
a moment, or when it has collected for long enough.

Each batch is recorded in the store when its file is uploaded and again
when the provider has created it (`store.batch_records`), before the run
goes on; a restarted run picks the open ones up by id (`resume`) and
follows them instead of submitting them again, and their chunks are not
sent again when the input brings them.

Following a batch is polling — the provider has no other way to say — at an
interval that grows from the provider's `batch_poll_s` to its
`batch_poll_max_s`; a failed look is retried at the same pace, and after
`MAX_POLL_FAILURES` in a row the batch is given up.  When it ends, its
output and error files are read: each answer goes to the outcomes as an
online answer does (parsed, validated, stored one row per chunk, costed at
batch prices); a failed line, a request the files leave out, and every
request of a batch that failed, expired, was cancelled or is still open past
its deadline (`batch_deadline_s`, else the completion window) go back to
the queue as a failed attempt — into the next file — until the preset's
`max_retries`, then fail with the reason.  So every job ends.

A job that also sends online (providers without `mode = "batch"`, or
`batch_retries = "online"`) hands the online dispatcher's queue to the route:
the retries go there with `batch_retries = "online"`, and a batch still open
`batch_online_after_s` after it was submitted — its window at risk — is
cancelled, the lines it already answered are stored from its partial output,
and the requests it never reached go online at once, not counted as a failed
attempt.  A batch cut off (at that point or its deadline) is followed until
the provider says it is cancelled, for at most `CANCEL_GRACE_S`, so what it
finished is never paid for twice.  Once a chunk went online it stays online.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Protocol

from engine.config.settings import PromptSettings, ProviderSettings
from engine.limits.key_pool import KeyState
from engine.observe.batch_view import BatchRoute as BatchRouteView
from engine.observe.batch_view import SubmittedBatch
from engine.observe.events import EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.pipeline.batch_file import BatchInput, LineAnswer, read_lines
from engine.pipeline.held_work import HeldWork
from engine.pipeline.outcomes import priced_usage
from engine.pipeline.prompt import build_messages, estimate_prompt_tokens
from engine.pipeline.work_queue import Batch, WorkQueue
from engine.provider.batch_client import BatchCallError, BatchClient, BatchStatus
from engine.provider.client import CallFailure, CallResult, FailureKind, classify_status
from engine.provider.redaction import Redactor
from engine.store.batch_records import ABANDONED, SETTLED, BatchRecord

LINGER_S = 1.0
"""A file with requests in it is submitted once no more work has come for this long."""
MAX_COLLECT_S = 30.0
"""…or once it has been collecting for this long, however steadily work comes."""
MAX_POLL_FAILURES = 8
"""Looks at a batch that may fail in a row before it is given up (its chunks sent again)."""
WINDOW_S = {"24h": 24 * 3600.0}
CANCEL_GRACE_S = 600.0
"""How long a cancelled batch is followed for its partial output (OpenAI: up to 10 minutes);
past it, what it did not give is sent again."""
_OUTPUT_PER_CHUNK = 150  # tokens, for a projection before any answer has come


class BatchOutcomes(Protocol):
    """Where a batch line's fate is decided (`engine.pipeline.outcomes.Outcomes`)."""

    async def answered_in_batch(
        self, batch: Batch, key: KeyState, result: CallResult, prices: tuple[float, float]
    ) -> None: ...

    async def line_failed(
        self, batch: Batch, key_id: str, kind: FailureKind, reason: str
    ) -> None: ...

    async def give_up(self, batch: Batch, reason: str, *, announce: bool = True) -> None: ...


class BatchStore(Protocol):
    """Where submitted batches are kept (`engine.store.sqlite_store.Store`)."""

    async def record_batch(self, record: BatchRecord) -> None: ...

    async def update_batch(
        self,
        input_file_id: str,
        *,
        state: str | None = None,
        batch_id: str | None = None,
        provider_state: str | None = None,
    ) -> None: ...

    async def open_batches(self) -> list[BatchRecord]: ...

    async def done_ids(
        self, chunk_ids: Sequence[str], prompt_version: str, model: str
    ) -> set[str]: ...

    async def flush(self) -> None: ...


class BatchClients(Protocol):
    """The provider clients (`engine.provider.client.ProviderClients`)."""

    def batch_client(self, key_id: str) -> BatchClient: ...

    def completion(
        self, answer: object, headers: dict[str, str], latency_s: float
    ) -> CallResult | CallFailure: ...

    @property
    def redactor(self) -> Redactor: ...


@dataclass(slots=True, eq=False)
class _Open:
    """A batch the provider holds: its record, key and requests, and its last status."""

    record: BatchRecord
    key: KeyState
    requests: dict[str, Batch]
    status: BatchStatus | None = None
    resumed: bool = False
    cut: str = ""  # why it was cancelled before it ended ("" while it runs its course)
    to_online: bool = False  # cut because its window is at risk: the rest goes online

    @property
    def chunks(self) -> int:
        return sum(len(batch.chunks) for batch in self.requests.values())


class BatchRouter:
    """Collects batches from `queue` into Batch API files, submits, follows and settles them.

    `keys` are the job's batch-mode keys (used in turn); `on_no_key(reasons)`
    is told once when none can serve any more; `to_do()` is the number of
    chunks the job must still pay for (None while unknown), for the projection.
    `online` is the online dispatcher's queue, when the job sends online too:
    with `retries_online` (a provider's `batch_retries = "online"`) a request
    its batch let down is handed to it instead of going into the next file,
    and a batch open past its provider's `batch_online_after_s` is cut off and
    what it did not answer handed to it.
    """

    def __init__(
        self,
        queue: WorkQueue,
        held: HeldWork,
        *,
        keys: Sequence[KeyState],
        clients: BatchClients,
        prompt: PromptSettings,
        job_name: str,
        stats: RunStats,
        events: EventBus,
        running: asyncio.Event,
        disable_key: Callable[[KeyState, str], None],
        on_no_key: Callable[[str], None],
        to_do: Callable[[], int | None],
        online: WorkQueue | None = None,
        retries_online: bool = True,
        online_sources: Sequence[str] = (),
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._held = held
        self._keys = list(keys)
        self._key_by_id = {key.key_id: key for key in keys}
        self._clients = clients
        self._prompt = prompt
        self._job_name = job_name
        self._stats = stats
        self._events = events
        self._running = running
        self._disable_key = disable_key
        self._on_no_key = on_no_key
        self._to_do = to_do
        self._online = online  # the online dispatcher's queue, when the job sends online too
        self._retries_online = online is not None and retries_online
        self._online_sources = tuple(online_sources) if online is not None else ()
        self._sent_online: set[int] = set()  # chunks cut off from their batch: online for good
        self.chunks_sent_online = 0
        self._wall = wall
        self._turn = 0
        self._store: BatchStore | None = None
        self._run_id = 0
        self._open: dict[str, _Open] = {}  # by input file id
        self._resumed: list[_Open] = []
        self._collecting: BatchInput | None = None
        self._group_key: KeyState | None = None  # the key the file being collected is for
        self._task: asyncio.Task[None] | None = None
        self.no_key = ""
        self.submitted = 0
        self.settled = 0
        self.abandoned = 0
        self.cost_usd = 0.0
        self.online_cost_usd = 0.0  # the same answers at online prices
        self._chunks_answered = 0
        self._estimated_usd = 0.0  # of the requests submitted, before their answers
        self._estimated_online_usd = 0.0
        self._chunks_submitted = 0

    # ------------------------------------------------------------------ resume
    async def resume(self, store: BatchStore, run_id: int) -> int:
        """Take up the batches earlier runs left open: their chunks are held (the input
        will not send them again) until they settle.  Returns how many were taken up."""
        self._store, self._run_id = store, run_id
        for record in await store.open_batches():
            key = self._key_by_id.get(record.key_id)
            if key is None or record.prompt_version != self._prompt.version:
                # Its answers would not be this job's: leave them, send the chunks again.
                await store.update_batch(record.input_file_id, state=ABANDONED)
                continue
            model = key.provider.model
            ids = [c.id for _, chunks in record.requests.values() for c in chunks]
            done = await store.done_ids(ids, self._prompt.version, model)
            requests = {
                custom_id: Batch(chunks, attempt=attempt, model=model)
                for custom_id, (attempt, chunks) in record.requests.items()
                if any(c.id not in done for c in chunks)
            }
            if not requests:  # stored already, by a run that died before saying so
                await store.update_batch(record.input_file_id, state=SETTLED)
                continue
            for batch in requests.values():
                self._held.batch_made()
                for chunk in batch.chunks:
                    self._held.resume(chunk.id)
                messages = build_messages(self._prompt, batch.chunks)
                self._expect(key.provider, estimate_prompt_tokens(messages), len(batch.chunks))
            taken = _Open(record, key, requests, resumed=True)
            self._resumed.append(taken)
            self._open[record.input_file_id] = taken
        if self._resumed:
            self._events.emit(
                EventKind.BATCH_RESUMED,
                f"resuming {len(self._resumed)} batch(es) an earlier run submitted "
                f"({sum(o.chunks for o in self._resumed)} chunks)",
            )
        return len(self._resumed)

    # ------------------------------------------------------------------ running
    async def run(self, outcomes: BatchOutcomes) -> None:
        """Collect, submit and follow until the queue closes (every batch resolved)."""
        assert self._store is not None, "resume() first: it also says where batches are kept"
        self._task = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as follows:
                for taken in self._resumed:
                    follows.create_task(self._follow(taken, outcomes))
                await self._collect(follows, outcomes)
        finally:
            if self._online is not None:
                self._online.close()  # every batch is resolved, or the run stops

    def stop(self) -> None:
        """Submit nothing more and stop following: open batches stay recorded for the
        next run (drain, stop)."""
        if self._task is not None:
            self._task.cancel()

    @property
    def in_flight_chunks(self) -> int:
        """Chunks in open batches and in the file being collected."""
        collecting = self._collecting.chunks if self._collecting is not None else 0
        return collecting + sum(taken.chunks for taken in self._open.values())

    def view(self) -> BatchRouteView:
        """The route's state for the snapshot."""
        now = self._wall()
        batches = tuple(
            SubmittedBatch(
                batch_id=taken.record.batch_id or "",
                key_alias=taken.key.alias,
                state=taken.status.state if taken.status else taken.record.provider_state,
                requests=len(taken.requests),
                completed=taken.status.completed if taken.status else 0,
                failed=taken.status.failed if taken.status else 0,
                chunks=taken.chunks,
                age_s=max(0.0, now - taken.record.submitted_at),
                window_s=WINDOW_S.get(taken.key.provider.batch_window, WINDOW_S["24h"]),
                resumed=taken.resumed,
            )
            for taken in self._open.values()
        )
        return BatchRouteView(
            batches=batches,
            submitted=self.submitted,
            resumed=len(self._resumed),
            settled=self.settled,
            abandoned=self.abandoned,
            collecting=len(self._collecting.requests) if self._collecting is not None else 0,
            chunks_sent_online=self.chunks_sent_online,
            cost_usd=self.cost_usd,
            cost_projected_usd=self._projected(self.cost_usd, self._estimated_usd),
            online_cost_projected_usd=self._projected(
                self.online_cost_usd, self._estimated_online_usd
            ),
        )

    def _expect(self, provider: ProviderSettings, prompt_tokens: int, chunks: int) -> None:
        """Count what requests sent cost, estimated, until their answers say."""
        self._chunks_submitted += chunks
        output = _OUTPUT_PER_CHUNK * chunks
        prices = provider.batch_prices_per_m
        self._estimated_usd += (prompt_tokens * prices[0] + output * prices[1]) / 1e6
        self._estimated_online_usd += (
            prompt_tokens * provider.price_input_per_m + output * provider.price_output_per_m
        ) / 1e6

    def _projected(self, spent: float, estimated: float) -> float | None:
        """The job's cost: what the chunks answered online cost (a mixed job's remainder,
        retries sent online), and the rest per chunk as this route's answers cost so far
        (else as estimated)."""
        to_do = self._to_do()
        if to_do is None:
            return None
        # The online answers go through the same outcomes: the job's counters hold both.
        online_chunks = max(0, self._stats.chunks_answered - self._chunks_answered)
        online_paid = max(0.0, self._stats.cost_usd - self.cost_usd)
        rest = max(0, to_do - online_chunks)
        if self._chunks_answered:
            return online_paid + spent / self._chunks_answered * rest
        if self._chunks_submitted:
            return online_paid + estimated / self._chunks_submitted * rest
        return None

    # --------------------------------------------------------------- collecting
    async def _collect(self, follows: asyncio.TaskGroup, outcomes: BatchOutcomes) -> None:
        loop = asyncio.get_running_loop()
        started = 0.0
        while True:
            group = self._collecting
            wait = None
            if group is not None and group.requests:
                wait = max(0.0, min(LINGER_S, started + MAX_COLLECT_S - loop.time()))
            try:
                async with asyncio.timeout(wait):
                    batch = await self._queue.get()
            except TimeoutError:
                await self._submit(follows, outcomes)
                continue
            if batch is None:
                return  # every batch resolved
            if self._online is not None and self._goes_online(batch):
                self._online.put_retry(batch)  # let down by its batch, or cut off: online now
                continue
            if self._must_come_back_now(batch):
                self._send_online(batch)  # its source is one the job wants back now
                continue
            await self._running.wait()  # paused: nothing is submitted
            if self.no_key:
                await outcomes.give_up(batch, self.no_key, announce=False)
                continue
            group = self._collecting
            if group is None:
                key = self._next_key()
                if key is None:
                    await outcomes.give_up(batch, self.no_key, announce=False)
                    continue
                provider = key.provider
                group = self._collecting = BatchInput(
                    provider.model, provider.batch_max_requests, provider.batch_max_bytes
                )
                self._group_key = key
                started = loop.time()
            line, tokens = group.line_for(self._prompt, batch)
            if not group.fits(line):
                await self._submit(follows, outcomes)
                self._queue.put_retry(batch)  # into the next file, first
                continue
            batch.model = group.model
            group.add(batch, line, tokens)
            if group.full:
                await self._submit(follows, outcomes)

    def _goes_online(self, batch: Batch) -> bool:
        """A retry when retries go online; a chunk that went online once, whatever came of it."""
        if self._retries_online and batch.attempt > 0:
            return True
        return any(int(chunk.id, 16) in self._sent_online for chunk in batch.chunks)

    def _next_key(self) -> KeyState | None:
        """The next usable batch-mode key, in turn; None (and the job told) when none is."""
        for _ in range(len(self._keys)):
            key = self._keys[self._turn % len(self._keys)]
            self._turn += 1
            if key.usable:
                return key
        reasons = "; ".join(f"{k.key_id}: {k.disabled_reason}" for k in self._keys)
        self.no_key = f"no usable key: {reasons}"
        self._on_no_key(reasons)
        return None

    # --------------------------------------------------------------- submitting
    async def _submit(self, follows: asyncio.TaskGroup, outcomes: BatchOutcomes) -> None:
        """Upload the file collected so far, record it, submit it, and follow it."""
        group, self._collecting = self._collecting, None
        if group is None or not group.requests:
            return
        key, store = self._group_key, self._store
        assert key is not None and store is not None
        client = self._clients.batch_client(key.key_id)
        name = f"crawldeck-{self._job_name}-{self._run_id}-{self.submitted + 1}.jsonl"
        try:
            file_id = await client.upload(group.content(), name)
        except BatchCallError as exc:
            await self._not_submitted(group, key, exc, outcomes)
            return
        now = self._wall()
        provider = key.provider
        window = WINDOW_S.get(provider.batch_window, WINDOW_S["24h"])
        record = BatchRecord(
            input_file_id=file_id,
            batch_id=None,
            key_id=key.key_id,
            prompt_version=self._prompt.version,
            requests={cid: (b.attempt, b.chunks) for cid, b in group.requests.items()},
            submitted_at=now,
            deadline_at=now + (provider.batch_deadline_s or window),
            run_id=self._run_id,
        )
        await store.record_batch(record)  # before the provider holds it: never submitted twice
        taken = _Open(record, key, dict(group.requests))
        self._open[file_id] = taken
        made: BatchStatus | None
        try:
            made = await client.submit(
                file_id, provider.batch_window, {"crawldeck_job": self._job_name[:500]}
            )
        except BatchCallError as exc:
            made = await self._created_anyway(client, file_id, exc)
            if made is None:
                del self._open[file_id]
                await store.update_batch(file_id, state=ABANDONED)
                await self._not_submitted(group, key, exc, outcomes)
                return
        status = made
        await store.update_batch(file_id, batch_id=status.batch_id, provider_state=status.state)
        taken.record = replace(record, batch_id=status.batch_id, provider_state=status.state)
        taken.status = status
        self.submitted += 1
        self._expect(provider, group.prompt_tokens, group.chunks)
        self._events.emit(
            EventKind.BATCH_SUBMITTED,
            f"batch {status.batch_id} submitted on {key.alias}: "
            f"{len(group.requests)} requests, {group.chunks} chunks",
            batch_id=status.batch_id,
            requests=len(group.requests),
            chunks=group.chunks,
        )
        follows.create_task(self._follow(taken, outcomes))

    @staticmethod
    async def _created_anyway(
        client: BatchClient, file_id: str, exc: BatchCallError
    ) -> BatchStatus | None:
        """After a create that got no answer, the batch the provider made of it anyway."""
        if exc.status is not None:
            return None  # refused: nothing was made
        with contextlib.suppress(BatchCallError):
            return await client.find(file_id)
        return None

    async def _not_submitted(
        self, group: BatchInput, key: KeyState, exc: BatchCallError, outcomes: BatchOutcomes
    ) -> None:
        """An upload or create failed: a key that cannot serve is set aside and its requests
        wait for the next file; other failures count as a failed attempt of each."""
        failure = self._failure(exc)
        if failure.kind in (FailureKind.AUTH, FailureKind.QUOTA):
            self._disable_key(key, failure.message)
            for batch in group.requests.values():
                self._queue.put_retry(batch)
            return
        reason = f"batch not submitted: {failure.message}"
        for batch in group.requests.values():
            await outcomes.line_failed(batch, key.key_id, failure.kind, reason)

    def _failure(self, exc: BatchCallError) -> CallFailure:
        if exc.status is None:
            kind = FailureKind.TIMEOUT if exc.timed_out else FailureKind.CONNECTION
            return CallFailure(kind, str(exc), {}, 0.0)
        return classify_status(exc.status, exc.headers, exc.body, 0.0, self._clients.redactor)

    # ---------------------------------------------------------------- following
    async def _follow(self, taken: _Open, outcomes: BatchOutcomes) -> None:
        """Look at the batch at a growing interval until it ends or its time is up."""
        provider = taken.key.provider
        client = self._clients.batch_client(taken.key.key_id)
        store = self._store
        assert store is not None
        record = taken.record
        if record.batch_id is None:  # uploaded by a run that died before the create answered
            try:
                found = await client.find(record.input_file_id)
            except BatchCallError:
                found = None
            if found is None:
                await self._give_back(taken, FailureKind.SERVER, "batch never created", outcomes)
                return
            await store.update_batch(
                record.input_file_id, batch_id=found.batch_id, provider_state=found.state
            )
            taken.record = record = replace(record, batch_id=found.batch_id)
            taken.status = found
        assert record.batch_id is not None
        interval, failures = provider.batch_poll_s, 0
        online_after = provider.batch_online_after_s
        online_at = (
            record.submitted_at + online_after
            if online_after is not None and self._online is not None
            else None
        )
        cut_until = 0.0  # a cut-off batch is followed until then for its partial output
        while True:
            # Never look later than the moment the batch is to be cut off.
            due = min(record.deadline_at, online_at if online_at is not None else math.inf)
            wait = interval if taken.cut else min(interval, max(0.0, due - self._wall()))
            await asyncio.sleep(wait)
            interval = min(interval * 1.5, provider.batch_poll_max_s)
            try:
                status = await client.status(record.batch_id)
            except BatchCallError as exc:
                failures += 1
                failure = self._failure(exc)
                if failures >= MAX_POLL_FAILURES or failure.kind in (
                    FailureKind.AUTH,
                    FailureKind.BAD_REQUEST,
                ):
                    reason = f"batch {record.batch_id} could not be followed: {failure.message}"
                    with contextlib.suppress(BatchCallError):  # if it still runs, not paid twice
                        await client.cancel(record.batch_id)
                    await self._give_back(taken, failure.kind, reason, outcomes)
                    return
                continue
            failures = 0
            if status.state != (taken.status.state if taken.status else ""):
                await store.update_batch(record.input_file_id, provider_state=status.state)
            taken.status = status
            if status.ended:
                await self._settle(taken, status, client, outcomes)
                return
            now = self._wall()
            if taken.cut:
                if now >= cut_until:  # cancelled, but the provider never said so
                    await self._give_back(taken, FailureKind.TIMEOUT, taken.cut, outcomes)
                    return
                continue
            if now >= record.deadline_at:
                taken.cut = (
                    f"batch {record.batch_id} still {status.state} at its deadline "
                    f"({record.deadline_at - record.submitted_at:.0f}s)"
                )
            elif online_at is not None and now >= online_at:
                taken.cut = (
                    f"batch {record.batch_id} still {status.state} after "
                    f"batch_online_after_s ({online_after:g}s)"
                )
                taken.to_online = True
            else:
                continue
            # Cut off: cancelled, then followed to its end for what it finished meanwhile.
            with contextlib.suppress(BatchCallError):
                await client.cancel(record.batch_id)
            cut_until = now + CANCEL_GRACE_S
            interval = provider.batch_poll_s

    async def _give_back(
        self, taken: _Open, kind: FailureKind, reason: str, outcomes: BatchOutcomes
    ) -> None:
        """Give the batch up: each request counts a failed attempt and goes back to the queue
        (cut off with its window at risk: each goes online, uncounted)."""
        store = self._store
        assert store is not None
        self._events.emit(EventKind.BATCH_ENDED, f"{reason}: {taken.chunks} chunks sent again")
        del self._open[taken.record.input_file_id]
        self.abandoned += 1
        await store.update_batch(taken.record.input_file_id, state=ABANDONED)
        for batch in taken.requests.values():
            if taken.to_online:
                self._send_online(batch)
            else:
                await outcomes.line_failed(batch, taken.key.key_id, kind, reason)
        self._announce_online(taken)

    def _must_come_back_now(self, batch: Batch) -> bool:
        """A chunk of the batch is from a source `[job] online_sources` names."""
        patterns = self._online_sources
        return bool(patterns) and any(
            fnmatchcase(chunk.source, pattern) for chunk in batch.chunks for pattern in patterns
        )

    def _send_online(self, batch: Batch) -> None:
        """A request cut off from its batch (or one that must come back now) goes online
        now, not counted as a failed attempt."""
        assert self._online is not None
        for chunk in batch.chunks:
            self._sent_online.add(int(chunk.id, 16))
        self.chunks_sent_online += len(batch.chunks)
        self._online.put_retry(batch)

    def _announce_online(self, taken: _Open, sent: int | None = None) -> None:
        if not taken.to_online:
            return
        chunks = taken.chunks if sent is None else sent
        self._events.emit(
            EventKind.BATCH_TO_ONLINE,
            f"{taken.cut}: cancelled, {chunks} chunks sent online",
            batch_id=taken.record.batch_id or "",
            chunks=chunks,
        )

    async def _settle(
        self, taken: _Open, status: BatchStatus, client: BatchClient, outcomes: BatchOutcomes
    ) -> None:
        """Store the batch's answers; what it did not answer goes back to the queue."""
        store = self._store
        assert store is not None
        answers: dict[str, LineAnswer] = {}
        for file_id in (status.output_file_id, status.error_file_id):
            if file_id is None:
                continue
            content = await self._read(client, file_id)
            if content is None:
                continue  # unreadable: its requests are missing, and retried as such
            for answer in read_lines(content):
                answers.setdefault(answer.custom_id, answer)
        if taken.cut:  # cancelled by us: what it never reached is cut off, not failed
            missing = (FailureKind.TIMEOUT, taken.cut)
        elif status.state == "completed":
            missing = (FailureKind.MALFORMED, "the batch's files have no line for this request")
        elif status.state == "expired":
            missing = (FailureKind.TIMEOUT, f"batch {status.batch_id} expired")
        else:
            detail = f": {status.errors}" if status.errors else ""
            missing = (FailureKind.SERVER, f"batch {status.batch_id} {status.state}{detail}")
        self._events.emit(
            EventKind.BATCH_ENDED,
            f"batch {status.batch_id} {status.state}: {status.completed} of {status.total} "
            f"requests answered",
            batch_id=status.batch_id,
            state=status.state,
        )
        latency = max(0.0, self._wall() - taken.record.submitted_at)
        key = taken.key
        prices = key.provider.batch_prices_per_m
        online = (key.provider.price_input_per_m, key.provider.price_output_per_m)
        sent_online = 0
        for custom_id, batch in taken.requests.items():
            line = answers.get(custom_id)
            if line is None and taken.to_online:
                self._send_online(batch)
                sent_online += len(batch.chunks)
                continue
            if line is None:
                await outcomes.line_failed(batch, key.key_id, *missing)
                continue
            self._stats.requests += 1
            outcome = self._line_outcome(line, latency)
            if isinstance(outcome, CallResult):
                self.cost_usd += priced_usage(outcome, prices)
                self.online_cost_usd += priced_usage(outcome, online)
                self._chunks_answered += len(batch.chunks)
                await outcomes.answered_in_batch(batch, key, outcome, prices)
            else:
                await outcomes.line_failed(batch, key.key_id, outcome.kind, outcome.message)
        await store.flush()  # its rows are committed before the batch is called settled
        # A batch cut off counts as given up, whatever share of it was stored.
        await store.update_batch(
            taken.record.input_file_id,
            state=ABANDONED if taken.cut else SETTLED,
            provider_state=status.state,
        )
        del self._open[taken.record.input_file_id]
        if taken.cut:
            self.abandoned += 1
        else:
            self.settled += 1
        self._announce_online(taken, sent_online)

    def _line_outcome(self, line: LineAnswer, latency_s: float) -> CallResult | CallFailure:
        """An output line as the online route reads an answer or a failed call."""
        if line.status == 200:
            return self._clients.completion(line.body, {}, latency_s)
        if line.status is not None:
            return classify_status(line.status, {}, line.body, latency_s, self._clients.redactor)
        reason = self._clients.redactor.redact_message(line.error or "no response")[:200]
        kind = FailureKind.TIMEOUT if "expired" in reason else FailureKind.SERVER
        return CallFailure(kind, reason, {}, latency_s)

    async def _read(self, client: BatchClient, file_id: str) -> bytes | None:
        """A file's bytes, tried a few times at a growing interval; None if it cannot be read."""
        delay = 0.5
        for attempt in range(MAX_POLL_FAILURES):
            try:
                return await client.content(file_id)
            except BatchCallError as exc:
                if attempt + 1 == MAX_POLL_FAILURES or exc.status in (401, 403, 404):
                    self._events.emit(EventKind.WARNING, f"batch file {file_id} unreadable: {exc}")
                    return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        return None
