"""The pipeline: read → chunk → skip done → batch → dispatch → parse → store.

One `asyncio.TaskGroup` owns every stage; bounded queues join them, so a
slow stage pushes back on the one before it instead of filling memory.
The public surface is small: `run()`, `snapshot()`, and the controls
(`set_concurrency`, `apply_preset`, `pause`, `resume`, `drain`, `stop`).
Controls only flip state and wake the stages; their effect shows in the
next snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from engine.config.config_problem import ConfigError
from engine.config.presets import checked_preset, preset_from_values, save_preset
from engine.config.setting_bounds import CONCURRENCY, FETCH_CONCURRENCY
from engine.config.settings import GateAction, JobConfig, Preset, effective_settings
from engine.control.controls import Adjustment
from engine.drift.baseline import Baseline, BaselineFormatError
from engine.drift.features import AnswerFeatures, ResultFeatures, features_of_result
from engine.drift.monitor import DriftMonitor
from engine.limits.adaptive_concurrency import AdaptiveConcurrency
from engine.limits.concurrency_limit import ConcurrencyLimit
from engine.limits.key_pool import KeyPool, KeyState, NoUsableKeyError
from engine.limits.memory_floor import process_floor_bytes
from engine.limits.memory_guard import MemoryGuard, MemoryState
from engine.limits.rate_limit_patience import KeyCooling, batch_gives_up, format_wait
from engine.limits.rate_limiter import KeyBudget, RateHeaders, parse_retry_after
from engine.observe.events import Event, EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.observe.snapshot import (
    Counts,
    JobState,
    KeySnapshot,
    MemorySnapshot,
    QueueDepths,
    Snapshot,
)
from engine.pipeline.chunking import iter_chunks
from engine.pipeline.inputs import iter_documents
from engine.pipeline.prompt import (
    AnswerShapeError,
    build_messages,
    estimate_prompt_tokens,
    parse_answer,
)
from engine.pipeline.records import Chunk, Document
from engine.pipeline.token_estimate import estimate_tokens
from engine.pipeline.work_queue import Batch, InProcessWorkQueue, WorkQueue
from engine.provider.client import (
    RETRYABLE,
    CallFailure,
    CallResult,
    EmbeddingResult,
    FailureKind,
    ProviderClients,
)
from engine.provider.redaction import mask_secret
from engine.store.sqlite_store import Committed, FailureRow, ResultRow, Store
from engine.store.store_error import StoreError

Clock = Callable[[], float]
if TYPE_CHECKING:
    from engine.crawl.crawl_stage import CrawlStage
    from engine.crawl.extraction import PageFunction

_READ_BLOCK = 256  # chunks handed from the reading thread per hop


class Engine:
    """One job's run.  Create it, `await run()`, and read `snapshot()` meanwhile."""

    def __init__(
        self,
        config: JobConfig,
        secrets: Mapping[str, str],
        *,
        base_urls: Mapping[str, str] | None = None,
        clock: Clock = time.monotonic,
        read_rss: Callable[[], int] | None = None,
        page_function: PageFunction | None = None,
    ) -> None:
        """`secrets` maps key ids (`provider/alias`) to secrets; `base_urls`
        optionally overrides providers' base URLs (the bundled simulator);
        `page_function` replaces a crawl's `extract_page` (tests)."""
        self.config = config
        self._clock = clock
        self._started = clock()
        self._ended: float | None = None  # when the job's work ended: elapsed stops there
        self._started_wall = time.time()
        self.events = EventBus(keep=config.engine.snapshot_events)
        self.stats = RunStats()
        self._preset = config.preset
        self._preset_names = tuple(sorted(config.presets))
        self._state = JobState.STARTING
        self._concurrency = ConcurrencyLimit(config.preset.concurrency)
        self._adaptive = AdaptiveConcurrency(config.preset.concurrency, clock())
        self._queue: WorkQueue = InProcessWorkQueue(max(4, config.engine.queue_size // 8), clock)
        self._blocks: asyncio.Queue[list[Chunk] | None] = asyncio.Queue(maxsize=8)
        self._clients = ProviderClients()
        keys: list[KeyState] = []
        self._masked: dict[str, str] = {}
        for provider in config.providers:
            url = (base_urls or {}).get(provider.name, provider.base_url)
            for key in provider.keys:
                key_id = f"{provider.name}/{key.alias}"
                secret = secrets[key_id]
                self._masked[key_id] = mask_secret(secret)
                self._clients.add_key(key_id, secret, url)
                keys.append(
                    KeyState(key_id, key.alias, provider, KeyBudget(key.rpm, key.tpm, clock), clock)
                )
        self._keys = KeyPool(keys, clock)
        # The process's own memory floor: limits below it (plus a margin) are
        # refused at start and whenever a preset is applied.
        self._memory_floor = int(read_rss()) if read_rss else process_floor_bytes()
        self._memory = MemoryGuard(
            config.preset.memory_soft_mb,
            config.preset.memory_hard_mb,
            on_change=self._on_memory_change,
            interval_s=config.engine.memory_sample_s,
            **({"read_rss": read_rss} if read_rss else {}),
        )
        self._running = asyncio.Event()  # cleared while paused
        self._running.set()
        self._finished = asyncio.Event()
        self._input_done = False
        self._outstanding = 0  # batches made and not yet resolved
        self._in_flight_chunks = 0
        # Ids queued or in flight: a repeat of one of these is not sent twice.
        # Finished ids leave the set (the store answers for them), so memory
        # follows the queues, not the size of the input.
        self._live_ids: set[int] = set()
        self._store: Store | None = None
        self._run_id = 0
        self._admission: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._stop_requested = False
        self._saturated = False
        self._fatal: str = ""
        self._no_key: str = ""  # why no key can serve any more; then nothing is sent
        self._rng = random.Random()
        self._unsaved_events: deque[Event] = deque()
        self._events_waiting = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._crawl: CrawlStage | None = None  # a crawl job's fetch stage, made by run()
        self._page_function = page_function
        self._drift = DriftMonitor(config.drift, clock) if config.drift.enabled else None
        self._drift_learning = self._drift is not None
        self._embeddings_wanted = self._drift is not None and config.drift.embeddings
        self._baseline_loaded = False
        self._unsaved_baselines: deque[str] = deque()  # learned, to be kept in the store

    # ------------------------------------------------------------------ public
    async def run(self) -> JobState:
        """Run the job to its end (or until drained/stopped); returns the final state.

        Raises `ConfigError` before anything starts when the preset's memory
        limits are below this process's own floor.
        """
        cfg = self.config
        preset_from_values(
            self._preset,
            {},
            source=f"preset {self._preset.name!r}",
            memory_floor_bytes=self._memory_floor,
        )
        self._loop = asyncio.get_running_loop()
        try:
            self._store = store = await Store.open(
                cfg.job.store,
                batch_rows=cfg.engine.store_batch_rows,
                batch_ms=cfg.engine.store_batch_ms,
                on_commit=self._count_committed,
            )
        except StoreError as exc:
            self._store_failed(exc)
            await self._clients.aclose()
            return self._state
        self.events.subscribe(self._persist_event)
        ended = False  # by the run's own path: finished, stopped, or store trouble
        try:
            self._run_id = await store.begin_run(cfg.job.name, effective_settings(cfg))
            await self._load_saved_baseline()
            self._state = JobState.RUNNING
            self.events.emit(
                EventKind.JOB_STARTED,
                f"job {cfg.job.name} started with preset {self._preset.name}",
                preset=self._preset.name,
                concurrency=self._concurrency.limit,
            )
            if cfg.crawl is not None:
                # Imported here: the HTML parsers cost start-up time that
                # document jobs need not pay.
                from engine.crawl.crawl_stage import CrawlStage

                self._crawl = CrawlStage(
                    cfg.crawl,
                    store=store,
                    run_id=self._run_id,
                    events=self.events,
                    deliver=self._deliver_page,
                    running=self._running,
                    may_read=_InputGate(self._memory, self._holds_nothing),
                    clock=self._clock,
                    page_function=self._page_function,
                )
            crawl = self._crawl
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(store.run_writer(), name="store-writer")
                helpers = [
                    tg.create_task(self._tick(), name="ticker"),
                    tg.create_task(self._memory.run(), name="memory-guard"),
                    tg.create_task(
                        self._count_total() if crawl is None else crawl.count_targets(),
                        name="census",
                    ),
                    tg.create_task(self._save_events(), name="event-log"),
                ]
                stages = [
                    tg.create_task(
                        self._read() if crawl is None else self._crawl_read(crawl), name="reader"
                    ),
                    tg.create_task(self._batch(), name="batcher"),
                    tg.create_task(self._dispatch(), name="dispatcher"),
                ]
                await self._finished.wait()
                for task in stages + helpers:
                    task.cancel()
                await asyncio.gather(*stages, *helpers, return_exceptions=True)
                await store.flush()  # done is what is committed: count it all first
                self._ended = self._clock()
                self.stats.tick(self._ended)
                self._state = self._final_state()
                self.events.emit(
                    EventKind.JOB_FINISHED,
                    self.summary_line(),
                    done=self.stats.done,
                    failed=self.stats.failed,
                    skipped=self.stats.skipped,
                    records_skipped=self._records_skipped(),
                    state=str(self._state),
                )
                while self._unsaved_events:
                    await store.put_event(self._run_id, self._unsaved_events.popleft())
                await self._save_baselines()
                await store.close_writer()
                await writer
            await store.end_run(self._run_id, str(self._state), self._summary())
            ended = True
        except* StoreError as trouble:
            ended = True
            self._store_failed(_first_of(trouble))
            await self._record_failed_end(store)
        finally:
            if not ended and self._state not in (JobState.DONE, JobState.STOPPED):
                self._state = JobState.FAILED
            if self._ended is None:
                self._ended = self._clock()
            await self._clients.aclose()
            try:
                await store.close()
            except StoreError as exc:
                self._store_failed(exc)
        return self._state

    def snapshot(self) -> Snapshot:
        """The state of the run right now, as an immutable value."""
        s = self.stats
        remaining = None if s.total is None else max(0, s.total - s.finished)
        # A paused, draining or ended job has no ETA: its rate no longer says when it ends.
        running = self._state in (JobState.STARTING, JobState.RUNNING)
        eta, low, high = s.eta(remaining, running=running)
        keys = tuple(self._key_snapshot(k) for k in self._keys.keys)
        projected = None
        if s.total is not None and s.done + s.failed > 0:
            projected = s.cost_usd / (s.done + s.failed) * (s.total - s.skipped - s.cached)
        pending = max(0, s.seen - s.finished - self._in_flight_chunks)
        return Snapshot(
            job_name=self.config.job.name,
            state=self._state,
            taken_at=time.time(),
            elapsed_s=self.elapsed_s,
            counts=Counts(
                total=s.total,
                total_estimated=self._crawl is not None and not self._input_done,
                seen=s.seen,
                pending=pending,
                in_flight=self._in_flight_chunks,
                done=s.done,
                failed=s.failed,
                skipped=s.skipped,
                cached=s.cached,
                records_skipped=self._records_skipped(),
            ),
            items_per_min=s.items_per_min,
            requests_per_min=s.requests_per_min,
            tokens_per_s=s.tokens_per_s,
            eta_s=eta,
            eta_low_s=low,
            eta_high_s=high,
            latency_p50_s=s.p50,
            latency_p95_s=s.p95,
            latency_p99_s=s.p99,
            requests=s.requests,
            rate_limited=s.rate_limited,
            errors_by_kind=tuple(sorted(s.errors_by_kind.items())),
            errors_by_key=tuple(sorted(s.errors_by_key.items())),
            keys=keys,
            concurrency=self._concurrency.limit,
            in_flight_requests=self._concurrency.in_use,
            preset=self._preset,
            preset_names=self._preset_names,
            drift=self._drift.metrics() if self._drift is not None else (),
            crawl=self._crawl.snapshot() if self._crawl is not None else None,
            memory=MemorySnapshot(
                rss_bytes=self._memory.rss_bytes,
                soft_bytes=self._memory.soft_bytes,
                hard_bytes=self._memory.hard_bytes,
                limit_bytes=self._memory.limit_bytes,
                state=str(self._memory.state),
                floor_bytes=self._memory_floor,
                waiting_for=self._memory.waiting_for(),
            ),
            cost_usd=s.cost_usd,
            cost_projected_usd=projected,
            queues=QueueDepths(
                chunks=self._blocks.qsize() * _READ_BLOCK,
                batches=self._queue.fresh_count,
                retries=self._queue.retry_count,
                store=self._store.backlog if self._store is not None else 0,
            ),
            throughput_history=tuple(s.throughput_history),
            latency_history=tuple(s.latency_history),
            error_rate_history=tuple(s.error_rate_history),
            events=self.events.recent(),
        )

    # controls -----------------------------------------------------------
    def set_concurrency(self, value: int) -> None:
        """Set the maximum number of requests in flight, effective at once.

        A value outside `setting_bounds.CONCURRENCY` raises `ValueError` and changes nothing.
        """
        value = CONCURRENCY.check("concurrency", value)
        old = self._concurrency.limit
        self._preset = replace(self._preset, concurrency=value)
        self._adaptive.set_ceiling(value, self._clock())
        self._concurrency.set_limit(value)
        self.events.emit(
            EventKind.CONCURRENCY_CHANGED, f"concurrency {old} → {value}", old=old, new=value
        )

    def adjust_concurrency(self, delta: int) -> Adjustment:
        """Move the most requests in flight by `delta` from the value in force.

        A step past `CONCURRENCY` stops at its edge; the answer says so.
        """
        step = Adjustment.within(CONCURRENCY, "concurrency", self._concurrency.limit, delta)
        if step.changed:
            self.set_concurrency(step.new)
        return step

    def set_fetch_concurrency(self, value: int) -> None:
        """A crawl job's fetches in flight across all hosts, effective at once."""
        if self._crawl is None:
            raise ValueError("this job does not crawl: it has no fetch stage")
        value = FETCH_CONCURRENCY.check("fetch concurrency", value)
        old = self._crawl.set_concurrency(value)
        self.events.emit(
            EventKind.CONCURRENCY_CHANGED,
            f"fetch concurrency {old} → {value}",
            old=old,
            new=value,
            stage="fetch",
        )

    def adjust_fetch_concurrency(self, delta: int) -> Adjustment:
        """Move a crawl job's fetches in flight by `delta`, stopping at `FETCH_CONCURRENCY`."""
        if self._crawl is None:
            raise ValueError("this job does not crawl: it has no fetch stage")
        step = Adjustment.within(
            FETCH_CONCURRENCY, "fetch concurrency", self._crawl.concurrency, delta
        )
        if step.changed:
            self.set_fetch_concurrency(step.new)
        return step

    def apply_preset(self, preset: Preset | str | Path) -> None:
        """Switch to a preset mid-run: a name known to the job, a preset file, or a value.

        A bad file or value raises `ConfigError` (one line per problem) and
        changes nothing; so do memory limits below this process's own floor.
        """
        preset = checked_preset(preset, self.config.presets, self._memory_floor)
        old = self._preset.name
        self._preset = preset
        self._adaptive.set_ceiling(preset.concurrency, self._clock())
        self._concurrency.set_limit(preset.concurrency)
        self._memory.set_limits(preset.memory_soft_mb, preset.memory_hard_mb)
        self.events.emit(
            EventKind.PRESET_CHANGED,
            f"preset {old} → {preset.name} (concurrency {preset.concurrency}, "
            f"batch {preset.batch_size})",
            old=old,
            new=preset.name,
            concurrency=preset.concurrency,
            batch_size=preset.batch_size,
        )

    def save_preset(self, path: Path, name: str | None = None) -> Preset:
        """Write the settings in force now (concurrency changes included) as a preset file."""
        preset = replace(self._preset, name=name or self._preset.name)
        save_preset(preset, path)
        return preset

    def pause(self) -> None:
        """Stop admitting requests; in-flight ones finish and are stored."""
        if self._state == JobState.RUNNING:
            self._running.clear()
            self._state = JobState.PAUSED
            self.events.emit(EventKind.PAUSED, "paused: no new requests until resumed")

    def resume(self) -> None:
        if self._state == JobState.PAUSED:
            self._running.set()
            self._state = JobState.RUNNING
            self.events.emit(EventKind.RESUMED, "resumed")

    def drain(self) -> None:
        """Finish what is in flight, store it, then stop; the rest stays pending."""
        if self._state in (JobState.RUNNING, JobState.PAUSED, JobState.STARTING):
            self._state = JobState.DRAINING
            self._running.set()
            self.events.emit(
                EventKind.DRAINING, f"draining: finishing {self._concurrency.in_use} in flight"
            )
            if self._admission is not None:
                self._admission.cancel()

    def stop(self) -> None:
        """Stop now: in-flight requests are abandoned and their chunks stay pending."""
        if self._state in (JobState.DONE, JobState.STOPPED, JobState.FAILED):
            return
        self._stop_requested = True
        self._state = JobState.STOPPING
        self._running.set()
        self.events.emit(
            EventKind.STOPPING, f"stopping now: {self._in_flight_chunks} chunks back to pending"
        )
        if self._admission is not None:
            self._admission.cancel()
        for task in tuple(self._sends):
            task.cancel()

    @property
    def failure_reason(self) -> str:
        """Why the engine itself could not go on ("" when it could)."""
        return self._fatal

    @property
    def elapsed_s(self) -> float:
        """The job's own wall time: it stops growing when the job ends, however
        long a finished dashboard stays open after it."""
        return (self._clock() if self._ended is None else self._ended) - self._started

    def summary_line(self) -> str:
        s = self.stats
        elapsed = self.elapsed_s
        records = self._records_skipped()
        return (
            f"{self.config.job.name}: {s.done} done, {s.failed} failed, {s.skipped} skipped, "
            f"{s.cached} duplicates, "
            + (f"{records} input records skipped, " if records else "")
            + f"{s.requests} requests ({s.rate_limited} rate-limited) "
            f"in {elapsed:.1f}s, cost ${s.cost_usd:.4f}"
        )

    # ------------------------------------------------------------------ stages
    def _documents_chunks(self) -> Iterator[Chunk]:
        job = self.config.job
        docs = iter_documents(job, on_bad_record=self._bad_record)
        return iter_chunks(docs, job.chunk_tokens, job.chunk_overlap_tokens)

    def _bad_record(self, message: str) -> None:
        # Called from the reading thread: hop to the loop before touching the
        # counters or the bus.  The hop runs before the reader's block comes
        # back, so the count is complete when the input is.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._count_bad_record, message)

    def _count_bad_record(self, message: str) -> None:
        self.stats.records_skipped += 1
        self.events.emit(EventKind.WARNING, f"skipped input record: {message}")

    def _records_skipped(self) -> int:
        """Input records left out so far: the documents' and a crawl's target lines."""
        crawl_lines = self._crawl.skipped_lines if self._crawl is not None else 0
        return self.stats.records_skipped + crawl_lines

    def _fail_if_every_record_was_skipped(self) -> None:
        # Nothing read but records skipped: a run that would otherwise end
        # "done" with nothing done, e.g. a file of binary data or bad lines.
        skipped = self._records_skipped()
        if self._crawl is not None:
            nothing_read = self._crawl.snapshot().targets_started == 0
        else:
            nothing_read = self.stats.seen == 0
        if nothing_read and skipped and not self._fatal:
            self._fatal = (
                f"input: every record was skipped ({skipped}), nothing was sent; "
                "the event log names each with its file, line and why"
            )
            self.events.emit(EventKind.WARNING, self._fatal)

    async def _read(self) -> None:
        """Reading and chunking run in a thread, a block at a time."""
        try:
            chunks = self._documents_chunks()

            def next_block() -> list[Chunk]:
                return list(itertools.islice(chunks, _READ_BLOCK))

            while True:
                block = await asyncio.to_thread(next_block)
                if not block:
                    break
                # Read, then wait: the end of the input is seen whatever memory
                # says, so a job with nothing left to do always ends.
                await self._memory.wait_to_read(self._holds_nothing)
                await self._blocks.put(block)
        except (OSError, ValueError) as exc:
            self._fatal = f"input: {exc}"
            self.events.emit(EventKind.WARNING, f"cannot read input: {exc}")
        # Not in a `finally`: when the run ends (drain, stop, done) the reader is
        # cancelled and nobody reads the queue any more, so a put on a full queue
        # would wait forever.
        await self._blocks.put(None)

    async def _crawl_read(self, crawl: CrawlStage) -> None:
        """A crawl job's input: pages' text from the crawl stage, chunked as they come."""
        try:
            await crawl.run()
        except (OSError, ValueError) as exc:
            self._fatal = f"crawl targets: {exc}"
            self.events.emit(EventKind.WARNING, f"cannot read crawl targets: {exc}")
        await self._blocks.put(None)  # not in a finally: see `_read`

    async def _deliver_page(self, document: Document) -> None:
        job = self.config.job
        block = list(iter_chunks((document,), job.chunk_tokens, job.chunk_overlap_tokens))
        if block:
            await self._blocks.put(block)

    def _estimate_crawl_total(self, crawl: CrawlStage) -> None:
        # Until every site is crawled the number of chunks is unknown: project
        # it from the chunks per finished site, so progress and ETA have a total.
        s = self.stats
        total_targets, finished = crawl.targets_total, crawl.targets_finished
        if self._input_done or total_targets is None or finished == 0:
            return
        per_target = s.seen / finished
        s.total = max(s.seen, round(s.seen + per_target * max(0, total_targets - finished)))

    async def _count_total(self) -> None:
        """Count every chunk up front (in a thread) so progress and ETA have a total."""
        job = self.config.job
        # A thread can't be cancelled: without this it would count a large
        # input to its end after the run has ended, and the process would wait.
        abandoned = threading.Event()

        def count() -> int | None:
            docs = iter_documents(job, on_bad_record=lambda _message: None)
            total = 0
            for _ in iter_chunks(docs, job.chunk_tokens, job.chunk_overlap_tokens):
                if abandoned.is_set():
                    return None
                total += 1
            return total

        try:
            total = await asyncio.to_thread(count)
        except (OSError, ValueError):
            return
        except asyncio.CancelledError:
            abandoned.set()
            raise
        if total is not None and self.stats.total is None:
            self.stats.total = total

    async def _batch(self) -> None:
        """Skip what is done, group the rest into batches, queue them."""
        assert self._store is not None
        cfg = self.config
        # A result from any of the job's models counts as done.
        models = sorted({p.model for p in cfg.providers})
        pending: list[Chunk] = []
        while True:
            block = await self._blocks.get()
            if block is None:
                break
            self.stats.seen += len(block)
            fresh: list[Chunk] = []
            for chunk in block:
                as_int = int(chunk.id, 16)
                if as_int in self._live_ids:
                    self.stats.cached += 1  # the same text again: one result serves both
                else:
                    self._live_ids.add(as_int)
                    fresh.append(chunk)
            ids = [c.id for c in fresh]
            done: set[str] = set()
            for model in models:
                done |= await self._store.done_ids(ids, cfg.prompt.version, model)
            self.stats.skipped += len(done)
            for chunk in fresh:
                if chunk.id in done:
                    self._live_ids.discard(int(chunk.id, 16))
                else:
                    pending.append(chunk)
            while len(pending) >= self._preset.batch_size:
                size = self._preset.batch_size
                await self._enqueue(pending[:size])
                del pending[:size]
        if pending:
            await self._enqueue(pending)
        if self.stats.total is None or self.stats.total != self.stats.seen:
            self.stats.total = self.stats.seen  # the reader is the final word
        self._input_done = True
        self._fail_if_every_record_was_skipped()
        self._maybe_finish()

    async def _enqueue(self, chunks: Sequence[Chunk]) -> None:
        batch = Batch(tuple(chunks))
        self._outstanding += 1
        await self._queue.put(batch)

    def _maybe_finish(self) -> None:
        if self._input_done and self._outstanding == 0:
            self._queue.close()

    async def _dispatch(self) -> None:
        """Admission: one loop hands batches to keys as budgets allow."""
        try:
            async with asyncio.TaskGroup() as sends:
                self._admission = sends.create_task(self._admit(sends), name="admission")
        finally:
            self._finished.set()

    async def _admit(self, sends: asyncio.TaskGroup) -> None:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            if self._no_key:
                await self._fail(batch, self._no_key, announce=False)
                continue
            try:
                await self._running.wait()
                await self._memory.wait_to_send(self._sends_nothing)
                if self._concurrency.in_use >= self._concurrency.limit:
                    self._saturated = True
                await self._concurrency.acquire()
            except asyncio.CancelledError:
                self._queue.put_retry(batch)
                raise
            try:
                messages = build_messages(self.config.prompt, batch.chunks)
                estimate = estimate_prompt_tokens(messages) + self._output_estimate(
                    len(batch.chunks)
                )
                key = await self._keys.acquire(estimate)
            except asyncio.CancelledError:
                self._concurrency.release()
                self._queue.put_retry(batch)
                raise
            except NoUsableKeyError:
                self._concurrency.release()
                self._no_key_left()
                await self._fail(batch, self._no_key, announce=False)
                continue
            flight = _InFlight(batch, key, estimate)
            self._in_flight_chunks += len(batch.chunks)
            key.in_flight += 1
            task = sends.create_task(self._send(flight, messages))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)
            # A task cancelled before it starts (stop now, in the turn that
            # admitted it) never runs its `finally`: give its claims back here.
            task.add_done_callback(functools.partial(self._settle_unstarted, flight))
            if self._preset.batch_delay_s > 0:
                await asyncio.sleep(self._preset.batch_delay_s)

    def _output_estimate(self, n_chunks: int) -> int:
        # Learned from the answers so far: the mean output per chunk with a margin.
        s = self.stats
        per_chunk = s.tokens_out / s.chunks_answered if s.chunks_answered else 150.0
        return int(per_chunk * 1.2 * n_chunks) + 16

    def _give_back(self, flight: _InFlight, *, unused: bool) -> None:
        """Return an admitted request's claims, once; `unused`: its budget too (never answered)."""
        if flight.settled:
            return
        flight.settled = True
        flight.key.in_flight -= 1
        self._in_flight_chunks -= len(flight.batch.chunks)
        self._concurrency.release()
        if unused:
            flight.key.budget.release(flight.estimate)  # stop now: the chunks stay pending

    def _settle_unstarted(self, flight: _InFlight, _task: asyncio.Task[None]) -> None:
        self._give_back(flight, unused=True)  # no-op once the send itself gave them back

    async def _send(self, flight: _InFlight, messages: list[dict[str, str]]) -> None:
        batch, key, estimate = flight.batch, flight.key, flight.estimate
        provider = key.provider
        timeout = provider.request_timeout_s or self._preset.request_timeout_s
        sent_at = self._clock()
        try:
            outcome = await self._clients.chat(
                key.key_id, provider.model, messages, timeout, self.config.prompt.temperature
            )
        except asyncio.CancelledError:
            self._give_back(flight, unused=True)
            raise
        self._give_back(flight, unused=False)
        key.requests += 1
        self.stats.requests += 1
        if isinstance(outcome, CallResult):
            await self._on_answer(batch, key, outcome, estimate)
        else:
            await self._on_failure(batch, key, outcome, estimate, sent_at)
        self._keys.notify()

    async def _on_answer(
        self, batch: Batch, key: KeyState, result: CallResult, estimate: int
    ) -> None:
        used = result.prompt_tokens + result.completion_tokens
        if used == 0:
            used = estimate  # no usage reported: keep what was reserved
        key.budget.reconcile(estimate, used)
        self._sync_headers(key, result.headers)
        key.record_usage(used)
        key.refusals.answered()
        s = self.stats
        s.tokens += used
        s.record_latency(result.latency_s)
        self._adaptive.record(self._clock(), False)
        provider = key.provider
        cost = (
            result.prompt_tokens * provider.price_input_per_m
            + result.completion_tokens * provider.price_output_per_m
        ) / 1e6
        s.cost_usd += cost
        try:
            parsed = parse_answer(result.content, batch.ids)
        except AnswerShapeError as exc:
            self._observe_answer(batch, result, cost, parse_failed=True)
            await self._retry_or_fail(batch, key, FailureKind.MALFORMED, str(exc))
            return
        self._observe_answer(batch, result, cost, missing=len(parsed.missing))
        s.tokens_out += result.completion_tokens
        s.chunks_answered += len(parsed.results)
        share = cost / max(1, len(batch.chunks))
        observed: list[tuple[ResultFeatures, str]] = []  # for the drift monitor
        assert self._store is not None
        version, model = self.config.prompt.version, provider.model
        for chunk in batch.chunks:
            entry = parsed.results.get(chunk.id)
            if entry is None:
                continue
            encoded = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
            await self._store.put_result(
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
                    input_tokens=result.prompt_tokens // max(1, len(batch.chunks)),
                    output_tokens=result.completion_tokens // max(1, len(batch.chunks)),
                    latency_ms=result.latency_s * 1000.0,
                    cost=share,
                    run_id=self._run_id,
                )
            )
            self._live_ids.discard(int(chunk.id, 16))  # done is counted on commit
            if self._drift is not None:
                observed.append((features_of_result(entry, encoded=encoded), encoded))
        if parsed.missing:
            # Each left-out chunk is retried on its own; that counts as a failed attempt.
            by_id = {c.id: c for c in batch.chunks}
            for missing_id in parsed.missing:
                single = Batch((by_id[missing_id],), attempt=batch.attempt)
                self._outstanding += 1
                await self._retry_or_fail(
                    single, key, FailureKind.MALFORMED, "answer left this chunk out", count=False
                )
        self._resolve(batch)
        if observed:
            await self._observe_results(observed)

    def _observe_answer(
        self,
        batch: Batch,
        result: CallResult,
        cost: float,
        *,
        parse_failed: bool = False,
        missing: int = 0,
    ) -> None:
        if self._drift is None:
            return
        self._drift.observe_answer(
            AnswerFeatures(
                chunks=len(batch.chunks),
                parse_failed=parse_failed,
                missing_ids=missing,
                output_tokens=result.completion_tokens,
                latency_s=result.latency_s,
                cost_usd=cost,
            )
        )
        self._act_on_drift()

    async def _observe_results(self, observed: list[tuple[ResultFeatures, str]]) -> None:
        """Results to the drift monitor, with their outputs' embeddings when it wants them."""
        drift = self._drift
        assert drift is not None
        vectors: Sequence[NDArray[np.float32] | None] = [None] * len(observed)
        if self._embeddings_wanted:
            vectors = await self._embed([text for _, text in observed]) or vectors
        for (features, _), vector in zip(observed, vectors, strict=True):
            drift.observe_result(features, vector)
        self._act_on_drift()

    async def _embed(self, texts: list[str]) -> Sequence[NDArray[np.float32]] | None:
        """The texts' embeddings through the job's keys, within their budgets; None if not."""
        estimate = sum(estimate_tokens(text) for text in texts)
        try:
            key = await self._keys.acquire(estimate)
        except NoUsableKeyError:
            return None
        model = self.config.drift.embedding_model
        timeout = key.provider.request_timeout_s or self._preset.request_timeout_s
        key.in_flight += 1
        sent_at = self._clock()
        try:
            outcome = await self._clients.embed(key.key_id, model, texts, timeout)
        except asyncio.CancelledError:
            key.budget.release(estimate)
            raise
        finally:
            key.in_flight -= 1
        key.requests += 1
        self._keys.notify()
        if isinstance(outcome, EmbeddingResult):
            used = outcome.prompt_tokens or estimate
            key.budget.reconcile(estimate, used)
            key.record_usage(used)
            key.refusals.answered()
            self._sync_headers(key, outcome.headers)
            return outcome.vectors
        self._sync_headers(key, outcome.headers)
        if outcome.kind is FailureKind.RATE_LIMITED:
            cooling = self._cool_key(key, outcome, estimate, sent_at)
            self._report_429(key, outcome, cooling, "drift embeddings skipped")
            return None
        key.budget.release(estimate)
        if outcome.kind in (FailureKind.BAD_REQUEST, FailureKind.AUTH, FailureKind.QUOTA):
            # The provider has no such model for this key (or refuses it): stop
            # asking; the other drift metrics go on.
            self._embeddings_wanted = False
            self.events.emit(
                EventKind.WARNING,
                f"drift embeddings off: {model} on {key.key_id}: {outcome.message}",
            )
        return None

    def _act_on_drift(self) -> None:
        """Turn the monitor's news into events, and trips into their gates' actions."""
        drift = self._drift
        assert drift is not None
        if self._drift_learning and not drift.learning:
            self._drift_learning = False
            learned = drift.baseline()
            if learned is not None and not self._baseline_loaded:
                self._unsaved_baselines.append(learned.to_json().decode("utf-8"))
                self._events_waiting.set()
                self.events.emit(
                    EventKind.DRIFT_BASELINE,
                    "drift baseline learned from the first results; gates are armed",
                )
        for trip in drift.trips():
            self.events.emit(
                EventKind.DRIFT_TRIPPED,
                trip.message(),
                metric=trip.metric,
                statistic=trip.statistic,
                value=round(trip.value, 4),
                threshold=trip.threshold,
                action=str(trip.action),
                baseline_value=trip.baseline_value,
                window_value=trip.window_value,
                baseline_n=trip.baseline_n,
                window_n=trip.window_n,
            )
            self._take_drift_action(trip.action)

    def _take_drift_action(self, action: GateAction) -> None:
        if action is GateAction.CONSERVATIVE:
            if self._preset.name != "conservative" and "conservative" in self.config.presets:
                try:
                    self.apply_preset("conservative")
                except ConfigError as exc:  # e.g. memory limits below this process's floor
                    self.events.emit(EventKind.WARNING, f"drift gate: preset not applied: {exc}")
        elif action is GateAction.PAUSE:
            self.pause()
        elif action is GateAction.STOP:
            # Drain, not stop: what is in flight is already paid for; keep it.
            self.drain()

    def _sync_headers(self, key: KeyState, headers: Mapping[str, str]) -> None:
        if not headers:
            return
        learned = key.budget.sync(RateHeaders.parse(headers))
        if learned:
            self._limit_learned(key, learned, "the provider's headers")

    def _limit_learned(self, key: KeyState, learned: tuple[str, float, float], source: str) -> None:
        which, old, new = learned
        self.events.emit(
            EventKind.LIMIT_LEARNED,
            f"{key.key_id}: {which} limit {old:g} → {new:g} (from {source})",
            key=key.key_id,
            which=which,
            old=old,
            new=new,
        )

    def _cool_key(
        self, key: KeyState, failure: CallFailure, estimate: int, sent_at: float
    ) -> KeyCooling:
        """A 429: that key alone waits out retry-after, and its limit may be lowered.

        Refused too long with no answer, it cools for longer, then is disabled
        (`engine.limits.rate_limit_patience`).
        """
        now = self._clock()
        self.stats.rate_limited += 1
        key.rate_limited += 1
        self._adaptive.record(now, True)
        key.budget.release(estimate)
        wait = parse_retry_after(failure.headers)
        if wait is None:
            # No retry-after: the limit's own reset time is the next best answer.
            limits = RateHeaders.parse(failure.headers)
            reset = (
                limits.reset_tokens_s if failure.rate_kind == "tokens" else limits.reset_requests_s
            )
            wait = reset if reset is not None else self._backoff(1)
        cooling = key.refusals.refused(
            self.config.rate_limit_waits, now=now, sent_at=sent_at, retry_after_s=wait
        )
        if cooling.disabled_reason:
            self._disable_key(key, cooling.disabled_reason)
            return cooling
        key.cooldown_until = max(key.cooldown_until, now + cooling.wait_s)
        lowered = key.budget.on_rate_limited(failure.rate_kind, key.answered_rpm())
        if lowered:
            self._limit_learned(key, lowered, "429s")
        return cooling

    def _report_429(
        self, key: KeyState, failure: CallFailure, cooling: KeyCooling, then: str
    ) -> None:
        if cooling.disabled_reason:
            doing = "key disabled"
        elif cooling.longer:
            doing = (
                f"{cooling.rounds} in a row with no answer: cooling {format_wait(cooling.wait_s)} "
                f"(longer cool-down {cooling.longer}/"
                f"{self.config.rate_limit_waits.key_escalations})"
            )
        else:
            doing = f"cooling {cooling.wait_s:.2f}s"
        self.events.emit(
            EventKind.RATE_LIMITED,
            f"429 on {key.key_id} ({failure.rate_kind}): {doing}, {then}",
            key=key.key_id,
            kind=failure.rate_kind,
            retry_after_s=cooling.wait_s,
            rounds=cooling.rounds,
            longer=cooling.longer,
        )

    def _disable_key(self, key: KeyState, reason: str) -> None:
        if not key.usable:
            return
        key.disabled_reason = reason
        self.events.emit(
            EventKind.KEY_DISABLED,
            f"{key.key_id} disabled: {reason}",
            key=key.key_id,
            reason=reason,
        )
        self._keys.notify()  # a wait for a key may now have none left to wait for

    def _no_key_left(self) -> None:
        """No key can serve any more: fail everything not done, with the keys' reasons."""
        if self._no_key:
            return
        reasons = "; ".join(f"{k.key_id}: {k.disabled_reason}" for k in self._keys.keys[:3])
        if len(self._keys.keys) > 3:
            reasons += f"; and {len(self._keys.keys) - 3} more"
        self._no_key = f"no usable key: {reasons}"
        self._fatal = f"no API key can serve any more ({reasons})"
        self.events.emit(
            EventKind.WARNING,
            f"{self._fatal}: every chunk not done is stored as failed; a rerun retries them",
        )
        if self._state in (JobState.RUNNING, JobState.PAUSED):
            self._state = JobState.DRAINING
        self._running.set()  # nothing waits for a resume that cannot help
        if self._crawl is not None:
            self._crawl.stop_starting()  # unfetched sites stay for a rerun

    async def _on_failure(
        self, batch: Batch, key: KeyState, failure: CallFailure, estimate: int, sent_at: float
    ) -> None:
        s = self.stats
        s.errors_by_kind[str(failure.kind)] += 1
        s.errors_by_key[key.key_id] += 1
        key.errors += 1
        self._sync_headers(key, failure.headers)
        now = self._clock()
        if failure.kind is FailureKind.RATE_LIMITED:
            cooling = self._cool_key(key, failure, estimate, sent_at)
            batch.refusals += 1
            batch.refused_wait_s += cooling.wait_s
            waits = self.config.rate_limit_waits
            gave_up = batch_gives_up(waits, batch.refusals, batch.refused_wait_s)
            self._report_429(key, failure, cooling, "batch failed" if gave_up else "batch requeued")
            if gave_up:
                await self._fail(batch, f"{failure.kind}: {gave_up}; last: {failure.message}")
            else:
                self._queue.put_retry(batch)
            return
        self._adaptive.record(now, False)
        s.attempts_failed += 1
        if failure.kind in (FailureKind.QUOTA, FailureKind.AUTH):
            key.budget.release(estimate)
            self._disable_key(
                key, "insufficient quota" if failure.kind is FailureKind.QUOTA else failure.message
            )
            self._queue.put_retry(batch)
            return
        if failure.kind is FailureKind.BAD_REQUEST and len(batch.chunks) > 1:
            # One bad chunk must not sink its batch-mates: try each alone.
            for chunk in batch.chunks:
                self._outstanding += 1
                self._queue.put_retry(Batch((chunk,), attempt=batch.attempt + 1))
            self._resolve(batch)
            return
        if failure.kind in RETRYABLE:
            await self._retry_or_fail(batch, key, failure.kind, failure.message, count=False)
            return
        await self._fail(batch, f"{failure.kind}: {failure.message}")

    async def _retry_or_fail(
        self, batch: Batch, key: KeyState, kind: FailureKind, reason: str, count: bool = True
    ) -> None:
        if count:
            self.stats.errors_by_kind[str(kind)] += 1
            self.stats.errors_by_key[key.key_id] += 1
            self.stats.attempts_failed += 1
        batch.attempt += 1
        batch.reasons.append(f"{kind}: {reason}")
        if batch.attempt > self._preset.max_retries:
            await self._fail(batch, f"{kind}: {reason} (after {batch.attempt} attempts)")
            return
        delay = self._backoff(batch.attempt)
        if len(batch.chunks) == 1 or batch.attempt == 1:
            self.events.emit(
                EventKind.RETRY,
                f"retry {batch.attempt}/{self._preset.max_retries} of {len(batch.chunks)} "
                f"chunk(s) in {delay:.2f}s: {kind}: {reason}",
                kind=str(kind),
                attempt=batch.attempt,
                delay_s=delay,
            )
        self._queue.put_retry(batch, delay)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        p = self._preset
        return self._rng.uniform(0.0, min(p.backoff_max_s, p.backoff_base_s * 2 ** (attempt - 1)))

    async def _fail(self, batch: Batch, reason: str, *, announce: bool = True) -> None:
        assert self._store is not None
        model = self.config.providers[0].model
        for chunk in batch.chunks:
            await self._store.put_failure(
                FailureRow(
                    chunk_id=chunk.id,
                    prompt_version=self.config.prompt.version,
                    model=model,
                    source=chunk.source,
                    seq=chunk.seq,
                    text=chunk.text,
                    reason=reason,
                    attempts=batch.attempt,
                    run_id=self._run_id,
                )
            )
            self._live_ids.discard(int(chunk.id, 16))  # failed is counted on commit
        if announce:  # else one event already said why, for all of them
            self.events.emit(
                EventKind.CHUNK_FAILED,
                f"{len(batch.chunks)} chunk(s) failed: {reason}",
                chunks=len(batch.chunks),
                reason=reason,
            )
        self._resolve(batch)

    def _resolve(self, batch: Batch) -> None:
        self._outstanding -= 1
        self._maybe_finish()

    # ------------------------------------------------------------------ helpers
    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self._clock()
            if self._crawl is not None:
                self._crawl.tick(now)
                self._estimate_crawl_total(self._crawl)
            self.stats.tick(now)
            if self._preset.adaptive_concurrency and self._state == JobState.RUNNING:
                new = self._adaptive.update(now, self._saturated)
                if new is not None and new != self._concurrency.limit:
                    old = self._concurrency.limit
                    self._concurrency.set_limit(new)
                    self.events.emit(
                        EventKind.CONCURRENCY_CHANGED,
                        f"adaptive concurrency {old} → {new}",
                        old=old,
                        new=new,
                        adaptive=True,
                    )
            self._saturated = False
            self._keys.notify()  # cooldowns may have ended; recovery may apply

    def _on_memory_change(self, old: MemoryState, new: MemoryState, rss: int) -> None:
        mb = rss / 2**20
        if new is MemoryState.OK:
            self._concurrency.set_limit(self._adaptive.current)
            self.events.emit(EventKind.MEMORY_OK, f"memory back to normal ({mb:.0f} MB)", rss=rss)
        elif new is MemoryState.SOFT:
            lowered = max(1, self._concurrency.limit // 2)
            self._concurrency.set_limit(lowered)
            self.events.emit(
                EventKind.MEMORY_SOFT,
                f"memory {mb:.0f} MB above the soft limit: input paused, concurrency {lowered}",
                rss=rss,
            )
        else:
            self.events.emit(
                EventKind.MEMORY_HARD,
                f"memory {mb:.0f} MB above the hard limit: no new requests until it falls",
                rss=rss,
            )

    def _count_committed(self, committed: Committed) -> None:
        # Counted when the writer commits, not when a row is handed to it: what
        # the job reports as done (summary, snapshot, runs row) is in the store.
        self.stats.done += committed.results
        self.stats.failed += committed.failures

    def _store_failed(self, exc: StoreError) -> None:
        """Store trouble ends the job as FAILED, with the one line that says why."""
        if self._fatal == str(exc):
            return
        self._fatal = str(exc)
        self._state = JobState.FAILED
        self.events.emit(EventKind.WARNING, f"the store failed, the job ends: {exc}")

    async def _record_failed_end(self, store: Store) -> None:
        """Try once, briefly, to record the failed run; else the next start says interrupted."""
        if not self._run_id:
            return  # the run was never recorded
        self.stats.tick(self._clock())
        with contextlib.suppress(StoreError):
            await store.end_run(
                self._run_id, str(self._state), self._summary(), busy_timeout_ms=1000
            )

    def _holds_nothing(self) -> bool:
        """Nothing queued, in flight or unstored: holding input back cannot lower memory."""
        crawl = self._crawl.snapshot() if self._crawl is not None else None
        return (
            self._blocks.empty()
            and self._outstanding == 0
            and (crawl is None or crawl.targets_started == crawl.targets_finished)
            and (self._store is None or self._store.backlog == 0)
        )

    def _sends_nothing(self) -> bool:
        """No request in flight and nothing unstored: holding requests cannot lower memory."""
        return self._concurrency.in_use == 0 and (self._store is None or self._store.backlog == 0)

    def _persist_event(self, event: Event) -> None:
        # Listeners are synchronous; the writer is async: hand over through a deque.
        self._unsaved_events.append(event)
        self._events_waiting.set()

    async def _save_events(self) -> None:
        assert self._store is not None
        while True:
            await self._events_waiting.wait()
            self._events_waiting.clear()
            while self._unsaved_events:
                await self._store.put_event(self._run_id, self._unsaved_events.popleft())
            await self._save_baselines()

    async def _save_baselines(self) -> None:
        assert self._store is not None
        while self._unsaved_baselines:
            await self._store.add_baseline(self._run_id, self._unsaved_baselines.popleft())

    async def _load_saved_baseline(self) -> None:
        """Judge against the job's saved baseline (`crawldeck baseline save`), if it has one."""
        assert self._store is not None
        if self._drift is None:
            return
        saved = await self._store.saved_baseline()
        if saved is None:
            return
        try:
            baseline = Baseline.from_json(saved)
        except BaselineFormatError as exc:
            self.events.emit(
                EventKind.WARNING, f"saved drift baseline ignored ({exc}); learning a new one"
            )
            return
        self._drift.use_baseline(baseline)
        self._drift_learning = False
        self._baseline_loaded = True
        self.events.emit(
            EventKind.DRIFT_BASELINE, "drift gates armed with the job's saved baseline"
        )

    def _key_snapshot(self, key: KeyState) -> KeySnapshot:
        rpm_used, tpm_used = key.used_last_minute()
        cooling = key.cooling_for()
        state = "disabled" if not key.usable else ("cooling" if cooling > 0 else "ok")
        return KeySnapshot(
            key_id=key.key_id,
            provider=key.provider.name,
            alias=key.alias,
            masked_secret=self._masked[key.key_id],
            rpm_used=rpm_used,
            rpm_limit=key.budget.limit_rpm,
            tpm_used=tpm_used,
            tpm_limit=key.budget.limit_tpm,
            in_flight=key.in_flight,
            requests=key.requests,
            errors=key.errors,
            rate_limited=key.rate_limited,
            state=state,
            cooldown_s=cooling,
            disabled_reason=key.disabled_reason,
        )

    def _final_state(self) -> JobState:
        s = self.stats
        if self._fatal:
            return JobState.FAILED
        if self._stop_requested or self._state == JobState.DRAINING:
            return JobState.STOPPED
        if s.failed:
            return JobState.FINISHED_WITH_FAILURES
        return JobState.DONE

    def _summary(self) -> dict[str, object]:
        s = self.stats
        return {
            "done": s.done,
            "failed": s.failed,
            "skipped": s.skipped,
            "cached": s.cached,
            "records_skipped": self._records_skipped(),
            "requests": s.requests,
            "rate_limited": s.rate_limited,
            "tokens": s.tokens,
            "cost_usd": s.cost_usd,
            "elapsed_s": self.elapsed_s,
            "fatal": self._fatal,
        }


def _first_of(group: BaseExceptionGroup[StoreError]) -> StoreError:
    """The first store error of a group (task groups nest them)."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, StoreError)
    return first


@dataclass(slots=True)
class _InFlight:
    """One admitted request's claims — a concurrency slot, a place in its key's
    and the job's in-flight counts, its reserved budget — to be given back once."""

    batch: Batch
    key: KeyState
    estimate: int
    settled: bool = False


class _InputGate:
    """What a crawl waits on before starting a site: the memory breaker's input hold."""

    def __init__(self, memory: MemoryGuard, holds_nothing: Callable[[], bool]) -> None:
        self._memory = memory
        self._holds_nothing = holds_nothing

    async def wait(self) -> None:
        await self._memory.wait_to_read(self._holds_nothing)
