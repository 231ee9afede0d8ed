"""What a batch's call came to: result rows, retries, or failure rows.

An answer is reconciled with its key (usage, limits), costed (the
provider's reported cost preferred, `engine.limits.request_cost`), parsed and
stored one row per chunk, each with its share of the usage and the cost; a
chunk the answer left out is retried alone.  A failure is classified: a 429
cools its key and requeues the batch (until the batch has waited too long);
a spent quota or a rejected key disables the key and requeues; a bad
request splits the batch so one bad chunk does not sink the others; what
may pass (timeouts, 5xx, malformed answers) is retried with backoff up to
the preset's `max_retries` — waiting at least what a `retry-after` on the
failure asks, within the preset's `backoff_max_s`; the rest fails at once.

One model rule for both kinds of row: a row names the model of the key
that last tried its chunk, so a later result for the chunk supersedes its
failure in the store.  A batch no key ever tried (no usable key from the
start) is recorded against the job's first model.

With `same_text` (one process), an answer is also copied to the chunks
that waited for the same text, and a chunk that fails for good sends the
chunks that waited for it (`engine.pipeline.same_text`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from engine.config.settings import Preset, RateLimitWaits
from engine.limits.key_pool import KeyLease, KeyPool, KeyState
from engine.limits.rate_limit_patience import batch_gives_up
from engine.limits.rate_limiter import parse_retry_after
from engine.limits.request_cost import answer_cost
from engine.observe.events import EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.pipeline.held_work import HeldWork
from engine.pipeline.prompt import AnswerShapeError, parse_answer
from engine.pipeline.records import Chunk
from engine.pipeline.same_text import SameText
from engine.pipeline.work_queue import Batch, WorkQueue
from engine.provider.client import RETRYABLE, CallFailure, CallResult, FailureKind
from engine.store.sqlite_store import FailureRow, ResultRow

Clock = Callable[[], float]

# One encoder for every stored result: `json.dumps` with options builds a new
# one per call, and this runs for every chunk.
_RESULT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def priced_usage(result: CallResult, prices: tuple[float, float]) -> float:
    """USD of an answer's usage at (input, output) USD per million tokens."""
    return (result.prompt_tokens * prices[0] + result.completion_tokens * prices[1]) / 1e6


class RowSink(Protocol):
    """Where rows go (`engine.store.sqlite_store.Store`)."""

    async def put_result(self, row: ResultRow) -> None: ...

    async def put_failure(self, row: FailureRow) -> None: ...


class AnswerWatch(Protocol):
    """Who watches answers and results for drift (`engine.drift.watch.DriftWatch`)."""

    def observe_answer(
        self, chunks: int, result: CallResult, cost: float, *, parse_failed: bool, missing: int
    ) -> None: ...

    def observe_failure(self, failure: CallFailure) -> None: ...

    async def observe_results(self, results: list[tuple[dict[str, Any], str]]) -> None: ...


class Attempts(Protocol):
    """Who counts attempts for adaptive concurrency (`AdaptiveConcurrency`)."""

    def record(self, now: float, rate_limited: bool) -> None: ...


class Outcomes:
    """Decides each sent batch's fate; rows go to `rows` under run `run_id`.

    `preset()` is the preset in force; `backoff(attempt)` the wait before a
    retry; `drift` (or None) watches answers and results.
    """

    def __init__(
        self,
        rows: RowSink,
        *,
        run_id: int,
        prompt_version: str,
        first_model: str,
        queue: WorkQueue,
        held: HeldWork,
        keys: KeyPool,
        stats: RunStats,
        events: EventBus,
        attempts: Attempts,
        preset: Callable[[], Preset],
        backoff: Callable[[int], float],
        waits: RateLimitWaits,
        clock: Clock,
        drift: AnswerWatch | None = None,
        same_text: SameText | None = None,
    ) -> None:
        self._rows = rows
        self._run_id = run_id
        self._version = prompt_version
        self._first_model = first_model
        self._queue = queue
        self._held = held
        self._keys = keys
        self._stats = stats
        self._events = events
        self._attempts = attempts
        self._preset = preset
        self._backoff = backoff
        self._waits = waits
        self._clock = clock
        self._drift = drift
        self._same_text = same_text

    # ----------------------------------------------------------------- answers
    async def answered(self, batch: Batch, lease: KeyLease, result: CallResult) -> None:
        """An answer: results stored, left-out chunks retried alone, a bad shape retried."""
        key = lease.key
        used = result.prompt_tokens + result.completion_tokens
        if used == 0:
            used = lease.estimate  # no usage reported: keep what was reserved
        self._keys.answered(lease, used, result.headers, result.latency_s, result.prompt_tokens)
        s = self._stats
        s.tokens += used
        s.prompt_tokens += result.prompt_tokens
        s.completion_tokens += result.completion_tokens
        s.record_latency(result.latency_s)
        self._attempts.record(self._clock(), False)
        provider = key.provider
        # The provider's own figure, when it gives one.
        await self._store_answer(batch, key, result, answer_cost(provider, result))

    async def answered_in_batch(
        self, batch: Batch, key: KeyState, result: CallResult, prices: tuple[float, float]
    ) -> None:
        """A Batch API line's answer, stored as an online answer is, costed at `prices`
        (batch prices, USD per million input and output tokens).  No key budget is
        reconciled: batch requests are counted against a quota of their own."""
        self._stats.tokens += result.prompt_tokens + result.completion_tokens
        await self._store_answer(batch, key, result, priced_usage(result, prices))

    async def line_failed(self, batch: Batch, key_id: str, kind: FailureKind, reason: str) -> None:
        """A Batch API request that came to nothing (an error line, a failed or
        expired batch): retried, up to the preset's `max_retries`, then failed."""
        await self._retry_or_fail(batch, key_id, kind, reason)

    async def _store_answer(
        self, batch: Batch, key: KeyState, result: CallResult, cost: float
    ) -> None:
        """One row per chunk the answer gave; left-out chunks retried alone; a bad
        shape retried whole."""
        s = self._stats
        s.cost_usd += cost
        provider = key.provider
        n = len(batch.chunks)
        drift = self._drift
        try:
            parsed = parse_answer(result.content, batch.ids)
        except AnswerShapeError as exc:
            if drift is not None:
                drift.observe_answer(n, result, cost, parse_failed=True, missing=0)
            await self._retry_or_fail(batch, key.key_id, FailureKind.MALFORMED, str(exc))
            return
        if drift is not None:
            drift.observe_answer(n, result, cost, parse_failed=False, missing=len(parsed.missing))
        s.tokens_out += result.completion_tokens
        s.chunks_answered += len(parsed.results)
        share = cost / max(1, n)
        observed: list[tuple[dict[str, Any], str]] = []  # for the drift watch
        version, model = self._version, provider.model
        same_text = self._same_text
        for chunk in batch.chunks:
            entry = parsed.results.get(chunk.id)
            if entry is None:
                continue
            encoded = _RESULT_JSON.encode(entry)
            await self._rows.put_result(
                ResultRow(
                    chunk_id=chunk.id,
                    prompt_version=version,
                    model=model,
                    source=chunk.source,
                    seq=chunk.seq,
                    text=chunk.text,
                    result_json=encoded,
                    provider=provider.name,
                    key_alias=key.alias,
                    input_tokens=result.prompt_tokens // max(1, n),
                    output_tokens=result.completion_tokens // max(1, n),
                    latency_ms=result.latency_s * 1000.0,
                    cost=share,
                    run_id=self._run_id,
                    text_key="" if same_text is None else same_text.key_of(chunk),
                )
            )
            self._held.let_go(chunk.id)  # done is counted on commit
            if same_text is not None:
                await same_text.answered(chunk, encoded, model, provider.name)
            if drift is not None:
                observed.append((entry, encoded))
        if parsed.missing:
            # Each left-out chunk is retried on its own; that counts as a failed attempt.
            by_id = {c.id: c for c in batch.chunks}
            for missing_id in parsed.missing:
                single = Batch((by_id[missing_id],), attempt=batch.attempt, model=batch.model)
                self._held.batch_made()
                await self._retry_or_fail(
                    single,
                    key.key_id,
                    FailureKind.MALFORMED,
                    "answer left this chunk out",
                    count=False,
                )
        self._held.batch_resolved()
        if observed and drift is not None:
            await drift.observe_results(observed)

    # ---------------------------------------------------------------- failures
    async def failed(
        self, batch: Batch, lease: KeyLease, failure: CallFailure, sent_at: float
    ) -> None:
        """A failed call: classified, then requeued, retried, split or failed for good."""
        key = lease.key
        if self._drift is not None:
            self._drift.observe_failure(failure)  # server errors are drift too
        s = self._stats
        s.errors_by_kind[str(failure.kind)] += 1
        s.errors_by_key[key.key_id] += 1
        key.errors += 1
        self._keys.sync_headers(key, failure.headers, lease)
        if failure.kind is FailureKind.RATE_LIMITED:
            cooling = self._keys.refused(lease, failure, sent_at)
            batch.refusals += 1
            batch.refused_wait_s += cooling.wait_s
            gave_up = batch_gives_up(self._waits, batch.refusals, batch.refused_wait_s)
            then = "batch failed" if gave_up else "batch requeued"
            self._keys.report_429(key, failure, cooling, then)
            if gave_up:
                await self.give_up(batch, f"{failure.kind}: {gave_up}; last: {failure.message}")
            else:
                self._queue.put_retry(batch)
            return
        self._attempts.record(self._clock(), False)
        s.attempts_failed += 1
        if failure.kind in (FailureKind.QUOTA, FailureKind.AUTH):
            lease.release()
            self._keys.disable(
                key, "insufficient quota" if failure.kind is FailureKind.QUOTA else failure.message
            )
            self._queue.put_retry(batch)
            return
        if failure.kind is FailureKind.BAD_REQUEST and len(batch.chunks) > 1:
            # One bad chunk must not sink its batch-mates: try each alone.
            for chunk in batch.chunks:
                self._held.batch_made()
                self._queue.put_retry(Batch((chunk,), attempt=batch.attempt + 1, model=batch.model))
            self._held.batch_resolved()
            return
        if failure.kind in RETRYABLE:
            asked = parse_retry_after(failure.headers)  # an overloaded provider's 503
            await self._retry_or_fail(
                batch, key.key_id, failure.kind, failure.message, count=False, asked_s=asked
            )
            return
        await self.give_up(batch, f"{failure.kind}: {failure.message}")

    def split(self, batch: Batch) -> None:
        """Put the batch back as one batch per chunk (a budget's last room fits one, not all)."""
        for chunk in batch.chunks:
            self._held.batch_made()
            self._queue.put_retry(Batch((chunk,), attempt=batch.attempt, model=batch.model))
        self._held.batch_resolved()

    async def _retry_or_fail(
        self,
        batch: Batch,
        key_id: str,
        kind: FailureKind,
        reason: str,
        count: bool = True,
        asked_s: float | None = None,
    ) -> None:
        if count:
            self._stats.errors_by_kind[str(kind)] += 1
            self._stats.errors_by_key[key_id] += 1
            self._stats.attempts_failed += 1
        batch.attempt += 1
        batch.reasons.append(f"{kind}: {reason}")
        max_retries = self._preset().max_retries
        if batch.attempt > max_retries:
            await self.give_up(batch, f"{kind}: {reason} (after {batch.attempt} attempts)")
            return
        delay = self._backoff(batch.attempt)
        if asked_s is not None:  # what the provider asked, within the operator's bound
            delay = max(delay, min(asked_s, self._preset().backoff_max_s))
        if len(batch.chunks) == 1 or batch.attempt == 1:
            self._events.emit(
                EventKind.RETRY,
                f"retry {batch.attempt}/{max_retries} of {len(batch.chunks)} "
                f"chunk(s) in {delay:.2f}s: {kind}: {reason}",
                kind=str(kind),
                attempt=batch.attempt,
                delay_s=delay,
            )
        self._queue.put_retry(batch, delay)

    async def give_up(self, batch: Batch, reason: str, *, announce: bool = True) -> None:
        """Store a failure row for each of the batch's chunks, with `reason`."""
        model = batch.model or self._first_model
        unheld: list[Chunk] = []  # chunks that waited for these chunks' texts
        for chunk in batch.chunks:
            await self._rows.put_failure(
                failure_row(chunk, self._version, model, reason, batch.attempt, self._run_id)
            )
            self._held.let_go(chunk.id)  # failed is counted on commit
            if self._same_text is not None:
                unheld += self._same_text.failed(chunk)
        if announce:  # else one event already said why, for all of them
            self._events.emit(
                EventKind.CHUNK_FAILED,
                f"{len(batch.chunks)} chunk(s) failed: {reason}",
                chunks=len(batch.chunks),
                reason=reason,
            )
        if unheld:
            self._send_themselves(unheld)
        self._held.batch_resolved()

    def _send_themselves(self, chunks: list[Chunk]) -> None:
        """Chunks that waited for a text whose chunk failed: each is sent now, in batches."""
        size = max(1, self._preset().batch_size)
        for start in range(0, len(chunks), size):
            self._held.batch_made()  # before the failed batch resolves: the queue stays open
            self._queue.put_retry(Batch(tuple(chunks[start : start + size])))
        self._events.emit(
            EventKind.RETRY,
            f"{len(chunks)} chunk(s) that waited for the same text are sent themselves",
            kind="same_text",
            attempt=0,
            delay_s=0.0,
        )


def failure_row(
    chunk: Chunk, prompt_version: str, model: str, reason: str, attempts: int, run_id: int
) -> FailureRow:
    """`chunk` failed for good, under `model` (the last that tried it), with `reason`."""
    return FailureRow(
        chunk_id=chunk.id,
        prompt_version=prompt_version,
        model=model,
        source=chunk.source,
        seq=chunk.seq,
        text=chunk.text,
        reason=reason,
        attempts=attempts,
        run_id=run_id,
    )
