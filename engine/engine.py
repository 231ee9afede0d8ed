"""One job's run: the stages of the pipeline, composed, and the controls that steer them.

read → chunk → skip done → batch → dispatch → parse → store.  The stages
live in `engine.pipeline` (intake, batcher, dispatcher, outcomes), the
keys' budgets and health in `engine.limits.key_pool`, the drift watch in
`engine.drift.watch`; this module builds them, joins them with bounded
queues, owns the `asyncio.TaskGroup` that runs them and the job's state,
and answers the controls.  A slow stage pushes back on the one before it
instead of filling memory.

The public surface is small: `run()`, `snapshot()`, and the controls of
`engine.control.controls.JobControls` (set or step the concurrency and the
fetch concurrency, `apply_preset`, `pause`, `resume`, `drain`, `stop`).
Controls only flip state and wake the stages; their effect shows in the
next snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.config.config_problem import ConfigError, ConfigProblem
from engine.config.presets import checked_preset, preset_from_values, save_preset
from engine.config.route_mode import switch_refusal
from engine.config.setting_bounds import CONCURRENCY, FETCH_CONCURRENCY
from engine.config.settings import JobConfig, Preset, effective_settings
from engine.control.controls import Adjustment
from engine.drift.watch import DriftWatch
from engine.limits.adaptive_concurrency import AdaptiveConcurrency
from engine.limits.backoff import Backoff
from engine.limits.concurrency_limit import ConcurrencyLimit
from engine.limits.key_pool import KeyPool, provider_keys
from engine.limits.memory_floor import process_floor_bytes
from engine.limits.memory_guard import MemoryGuard
from engine.limits.spend_budget import RunSpend, SpendBudget, budget_reached_line, earlier_spend
from engine.observe.event_log import EventLog
from engine.observe.events import EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.observe.snapshot import Counts, JobState, QueueDepths, Snapshot
from engine.pipeline.batch_route import BatchRouter
from engine.pipeline.batcher import Batcher
from engine.pipeline.dispatcher import Dispatcher
from engine.pipeline.held_work import HeldWork
from engine.pipeline.inputs import input_present
from engine.pipeline.intake import READ_BLOCK, Intake
from engine.pipeline.outcomes import Outcomes
from engine.pipeline.records import Chunk
from engine.pipeline.same_text import SameText
from engine.pipeline.work_queue import InProcessWorkQueue, WorkQueue
from engine.provider.client import ProviderClients
from engine.store.sqlite_store import Committed, Store
from engine.store.store_error import StoreError, first_store_error

Clock = Callable[[], float]
if TYPE_CHECKING:
    from engine.cluster.cluster_job import ClusterJob
    from engine.crawl.crawl_stage import CrawlStage
    from engine.crawl.extraction import PageFunction


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
        cluster: ClusterJob | None = None,
    ) -> None:
        """`secrets` maps key ids (`provider/alias`) to secrets; `base_urls`
        optionally overrides providers' base URLs (the bundled simulator);
        `page_function` replaces a crawl's `extract_page` (tests); `cluster`
        makes this process one worker of a job shared through Redis: its
        queue, key budgets, rows and controls are the cluster's."""
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
        self._cluster = cluster
        # What ends a worker of a cluster with one line: Redis gone past its outage limit.
        self._cluster_trouble = cluster.trouble if cluster is not None else ()
        self._blocks: asyncio.Queue[list[Chunk] | None] = asyncio.Queue(maxsize=8)
        self._queue: WorkQueue
        delivered: asyncio.Event | None = None  # a cluster's: every batch read by a worker
        if cluster is None:
            self._queue = InProcessWorkQueue(max(4, config.engine.queue_size // 8), clock)
            self._held = HeldWork(self._queue)  # chunk ids and batches between reader and store
        else:
            shared = cluster.work_queue(self.events, clock, counted=self._count_committed)
            self._queue, self._held = shared, cluster.held_work(shared)
            delivered = shared.delivered
        self._backoff = Backoff(self._preset_in_force)
        self._clients = ProviderClients()
        keys = provider_keys(config.providers, secrets, clock)
        for key in keys:
            url = (base_urls or {}).get(key.provider.name, key.provider.base_url)
            self._clients.add_key(key.key_id, secrets[key.key_id], url)
        make_pool: Callable[..., KeyPool] = KeyPool if cluster is None else cluster.key_pool
        self._keys = make_pool(
            keys,
            clock,
            events=self.events,
            waits=config.rate_limit_waits,
            backoff=self._backoff.delay_s,
            on_rate_limited=self._count_429,
        )
        # The process's own memory floor: limits below it (plus a margin) are
        # refused at start and whenever a preset is applied.
        self._memory_floor = int(read_rss()) if read_rss else process_floor_bytes()
        self._memory = MemoryGuard(
            config.preset.memory_soft_mb,
            config.preset.memory_hard_mb,
            on_change=lambda _old, new, rss: self._dispatcher.memory_changed(new, rss),
            interval_s=config.engine.memory_sample_s,
            **({"read_rss": read_rss} if read_rss else {}),
        )
        self._running = asyncio.Event()  # cleared while paused
        self._running.set()
        self._store: Store | None = None
        self._run_id = 0
        self._stop_requested = False
        self._fatal: str = ""
        self._event_log = EventLog(self.events)
        self._crawl: CrawlStage | None = None  # a crawl job's fetch stage, made by run()
        self._page_function = page_function
        self._intake = Intake(
            config.job,
            self._blocks,
            stats=self.stats,
            events=self.events,
            may_read=self._memory.input_hold(self._holds_nothing),
            on_fatal=self._set_fatal,
            clock=clock,
        )
        self._batcher = Batcher(
            self._blocks,
            self._queue,
            self._held,
            stats=self.stats,
            prompt_version=config.prompt.version,
            models=(p.model for p in config.providers),
            batch_size=lambda: self._preset.batch_size,
            on_input_end=self._input_ended,
        )
        # A batch-mode job that also sends online (online providers beside its batch ones,
        # retries online) sends that from a queue of its own.
        batch_mode = cluster is None and any(p.mode == "batch" for p in config.providers)
        retries_online = any(
            p.mode == "batch" and p.batch_retries == "online" for p in config.providers
        )
        mixed = any(p.mode == "online" for p in config.providers)
        self._online_queue = (
            InProcessWorkQueue(max(4, config.engine.queue_size // 8), clock)
            if batch_mode and (retries_online or mixed)
            else None
        )
        cap = config.job.budget_usd
        self._budget: SpendBudget | None = None
        if cap is not None:  # a cluster's workers hold one budget together
            self._budget = SpendBudget(cap) if cluster is None else cluster.spend_budget(cap)
        self._budget_line = ""  # the line the job ends with when its budget stopped it
        self._dispatcher = Dispatcher(
            self._queue if self._online_queue is None else self._online_queue,
            keys=self._keys,
            clients=self._clients,
            prompt=config.prompt,
            preset=self._preset_in_force,
            concurrency=self._concurrency,
            adaptive=self._adaptive,
            running=self._running,
            memory=self._memory,
            unstored_rows=self._unstored_rows,
            stats=self.stats,
            events=self.events,
            clock=clock,
            on_no_key=self._no_key_left,
            # A cluster's tail: its stream delivered (an empty queue here says nothing
            # of other workers').  None for a batch-mode job's retries, sent online to
            # save time, not to pay twice.
            input_done=lambda: (
                (self._held.input_done if delivered is None else delivered.is_set())
                and not batch_mode
            ),
            tail_signal=delivered,
            budget=self._budget,
            on_budget_reached=self._budget_reached,
            split_at_budget=cluster is None,
        )
        self._drift = (
            DriftWatch(
                config.drift,
                events=self.events,
                keys=self._keys,
                clients=self._clients,
                controls=self,
                preset=self._preset_in_force,
                presets=config.presets,
                clock=clock,
            )
            if config.drift.enabled
            else None
        )
        # A batch-mode job's batches go through the providers' Batch API instead.
        self._batch_route = (
            BatchRouter(
                self._queue,
                self._held,
                keys=[k for k in self._keys.keys if k.provider.mode == "batch"],
                clients=self._clients,
                prompt=config.prompt,
                job_name=config.job.name,
                stats=self.stats,
                events=self.events,
                running=self._running,
                disable_key=self._keys.disable,
                on_no_key=self._no_key_left,
                to_do=self._chunks_to_pay_for,
                online=self._online_queue,
                retries_online=retries_online,
                online_sources=config.job.online_sources,
            )
            if batch_mode
            else None
        )
        if cluster is not None:
            cluster.attach(self)

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
        try:
            self._store = store = await Store.open(
                cfg.job.store,
                batch_rows=cfg.engine.store_batch_rows,
                batch_ms=cfg.engine.store_batch_ms,
                # A worker of a cluster counts what it settled as done; what its store
                # took is what it collected for the cluster.
                on_commit=(
                    self._count_committed if self._cluster is None else self._cluster.count_stored
                ),
            )
        except StoreError as exc:
            self._store_failed(exc)
            await self._clients.aclose()
            return self._state
        self._event_log.attach()
        ended = False  # by the run's own path: finished, stopped, or store trouble
        try:
            self._run_id = await store.begin_run(cfg.job.name, effective_settings(cfg))
            if self._budget is not None and self._cluster is None:
                # What earlier runs spent counts against the cap (a cluster's tally is in Redis).
                spends = await store.run_spends(excluding=self._run_id)
                self._budget.spent_earlier_usd = earlier_spend(RunSpend(*run) for run in spends)
            if self._drift is not None:
                await self._drift.load_saved(store)
            self._state = JobState.RUNNING
            self.events.emit(
                EventKind.JOB_STARTED,
                f"job {cfg.job.name} started with preset {self._preset.name}",
                preset=self._preset.name,
                concurrency=self._concurrency.limit,
            )
            if cfg.crawl is not None:
                self._crawl = self._intake.start_crawl(
                    cfg.crawl,
                    store=store,
                    run_id=self._run_id,
                    running=self._running,
                    page_function=self._page_function,
                    shared=(  # a cluster's worker: the sites, chunks and pages are shared
                        None
                        if self._cluster is None
                        else self._cluster.crawl_share(
                            cfg.job,
                            stats=self.stats,
                            batch_size=lambda: self._preset.batch_size,
                            stored=store,
                        )
                    ),
                )
            same_text = self._same_text(store)
            outcomes = self._outcomes(store, same_text)
            if self._batch_route is not None:
                await self._batch_route.resume(store, self._run_id)
            if self._cluster is not None:
                await self._cluster.open()
            # A cluster's document input is read by one worker at a time; the others
            # read none of it, nor count it: their total is what the job enqueued.
            shared_input = self._cluster is not None and cfg.crawl is None
            reads_input = asyncio.Event()
            if not shared_input:
                reads_input.set()
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(store.run_writer(), name="store-writer")
                helpers = [
                    tg.create_task(self._tick(), name="ticker"),
                    tg.create_task(self._memory.run(), name="memory-guard"),
                    tg.create_task(self._event_log.run(store, self._run_id), name="event-log"),
                ]
                census = self._census_once_read(reads_input)
                helpers.append(tg.create_task(census, name="census"))
                if self._drift is not None:
                    baselines = self._drift.keep_baselines(store, self._run_id)
                    helpers.append(tg.create_task(baselines, name="drift-baselines"))
                if self._cluster is not None:
                    helpers += self._cluster.start(tg, outcomes, store, self._run_id)
                stages = [
                    tg.create_task(
                        self._read_shared_input(reads_input)
                        if shared_input
                        else self._intake.read(),
                        name="reader",
                    ),
                    tg.create_task(
                        self._batcher.run(
                            store,
                            same_text if self._cluster is None else self._cluster.same_text(),
                            settles_total=reads_input.is_set,
                        ),
                        name="batcher",
                    ),
                    dispatching := tg.create_task(
                        self._dispatcher.run(outcomes)
                        if self._batch_route is None
                        else self._batch_route.run(outcomes),
                        name="dispatcher",
                    ),
                ]
                ends = [dispatching]
                if self._online_queue is not None:  # the batch route's retries, online
                    ends.append(tg.create_task(self._dispatcher.run(outcomes), name="online"))
                await asyncio.wait(ends)  # the queue closed, or admission was stopped
                for task in stages + ends[1:] + helpers:
                    task.cancel()
                await asyncio.gather(*stages, *ends[1:], *helpers, return_exceptions=True)
                if self._cluster is not None:
                    await self._cluster.settle_up()
                await store.flush()  # done is what is committed: count it all first
                self._ended = self._clock()
                self.stats.tick(self._ended)
                self._state = self._final_state()
                if self._budget is not None and self._budget.reached:
                    self._budget_line = self._budget_reached_line()
                if self._cluster is not None:
                    await self._cluster.leave()
                self.events.emit(
                    EventKind.JOB_FINISHED,
                    self.summary_line(),
                    done=self.stats.done,
                    failed=self.stats.failed,
                    skipped=self.stats.skipped,
                    records_skipped=self._intake.records_skipped(),
                    state=str(self._state),
                )
                await self._event_log.flush(store, self._run_id)
                if self._drift is not None:
                    await self._drift.save_learned(store, self._run_id)
                await store.close_writer()
                await writer
            await store.end_run(self._run_id, str(self._state), self._summary())
            ended = True
        except* StoreError as trouble:
            ended = True
            self._store_failed(first_store_error(trouble))
            await self._record_failed_end(store)
        except* self._cluster_trouble as trouble:
            ended = True
            self._cluster_failed(trouble)
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
        if self._cluster is not None:
            remaining = self._cluster.remaining_here(s.total, s.skipped + s.cached)
        # A paused, draining or ended job has no ETA: its rate no longer says when it ends.
        running = self._state in (JobState.STARTING, JobState.RUNNING)
        keys = tuple(k.snapshot() for k in self._keys.keys)
        eta, low, high = s.eta(
            remaining,
            running=running,
            keys=keys,
            outlooks=[k.outlook() for k in self._keys.keys],
            batch_size=self._preset.batch_size,
            in_flight_limit=self._concurrency.limit,
        )
        if self._batch_route is not None:
            # The keys' limits say nothing of when a Batch API batch comes back.
            eta = low = high = None
        projected = None
        if s.total is not None and s.done + s.failed > 0:
            projected = s.cost_usd / (s.done + s.failed) * (s.total - s.skipped - s.cached)
        in_flight = self._dispatcher.in_flight_chunks
        if self._batch_route is not None:
            in_flight += self._batch_route.in_flight_chunks
        pending = max(0, s.seen - s.finished - in_flight)
        return Snapshot(
            job_name=self.config.job.name,
            state=self._state,
            taken_at=time.time(),
            elapsed_s=self.elapsed_s,
            counts=Counts(
                total=s.total,
                total_estimated=self._crawl is not None and not self._held.input_done,
                seen=s.seen,
                pending=pending,
                in_flight=in_flight,
                done=s.done,
                failed=s.failed,
                skipped=s.skipped,
                cached=s.cached,
                records_skipped=self._intake.records_skipped(),
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
            latency_histogram=s.latency_buckets.snapshot(),
            requests=s.requests,
            rate_limited=s.rate_limited,
            errors_by_kind=tuple(sorted(s.errors_by_kind.items())),
            errors_by_key=tuple(sorted(s.errors_by_key.items())),
            keys=keys,
            concurrency=self._adaptive.ceiling,
            effective_concurrency=self._concurrency.limit,
            in_flight_requests=self._concurrency.in_use,
            preset=self._preset,
            preset_names=self._preset_names,
            drift=self._drift.metrics() if self._drift is not None else (),
            crawl=self._crawl.snapshot() if self._crawl is not None else None,
            memory=self._memory.snapshot(self._memory_floor),
            cost_usd=s.cost_usd,
            cost_projected_usd=projected,
            prompt_tokens=s.prompt_tokens,
            completion_tokens=s.completion_tokens,
            queues=QueueDepths(
                chunks=self._blocks.qsize() * READ_BLOCK,
                batches=self._queue.fresh_count,
                retries=self._queue.retry_count,
                store=self._store.backlog if self._store is not None else 0,
            ),
            throughput_history=tuple(s.throughput_history),
            latency_history=tuple(s.latency_history),
            error_rate_history=tuple(s.error_rate_history),
            events=self.events.recent(),
            cluster=self._cluster.view() if self._cluster is not None else None,
            batch=self._batch_route.view() if self._batch_route is not None else None,
            budget=self._budget.snapshot() if self._budget is not None else None,
        )

    # controls -----------------------------------------------------------
    def set_concurrency(self, value: int) -> None:
        """Set the concurrency ceiling (the most requests in flight), effective at once.

        A value outside `setting_bounds.CONCURRENCY` raises `ValueError` and changes nothing.
        """
        value = CONCURRENCY.check("concurrency", value)
        old = self._adaptive.ceiling
        self._preset = replace(self._preset, concurrency=value)
        self._adaptive.set_ceiling(value, self._clock())
        self._concurrency.set_limit(value)
        self.events.emit(
            EventKind.CONCURRENCY_CHANGED, f"concurrency {old} → {value}", old=old, new=value
        )

    def adjust_concurrency(self, delta: int) -> Adjustment:
        """Move the concurrency ceiling (the most requests in flight) by `delta`.

        A step past `CONCURRENCY` stops at its edge; the answer says so.
        """
        step = Adjustment.within(CONCURRENCY, "concurrency", self._adaptive.ceiling, delta)
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
        changes nothing; so do memory limits below this process's own floor,
        and a preset whose `mode` would move a provider to the other route
        (`engine.config.route_mode`: the route is chosen at start).
        """
        preset = checked_preset(preset, self.config.presets, self._memory_floor)
        cfg = self.config
        refusal = switch_refusal(
            cfg.preset_modes, cfg.mode_from_preset, self._preset.name, preset.name
        )
        if refusal is not None:
            self.events.emit(EventKind.WARNING, f"preset not switched: {refusal}")
            raise ConfigError([ConfigProblem(f"preset {preset.name!r}", None, "mode", refusal)])
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
            self._dispatcher.stop_admitting()
            if self._batch_route is not None:
                self._batch_route.stop()  # open batches stay recorded for the next run

    def stop(self) -> None:
        """Stop now: in-flight requests are abandoned and their chunks stay pending."""
        if self._state in (JobState.DONE, JobState.STOPPED, JobState.FAILED):
            return
        self._stop_requested = True
        self._state = JobState.STOPPING
        self._running.set()
        self.events.emit(
            EventKind.STOPPING,
            f"stopping now: {self._dispatcher.in_flight_chunks} chunks back to pending",
        )
        self._dispatcher.stop_admitting()
        self._dispatcher.abandon_sends()
        if self._batch_route is not None:
            self._batch_route.stop()

    @property
    def failure_reason(self) -> str:
        """Why the engine itself could not go on ("" when it could)."""
        return self._fatal

    @property
    def budget_line(self) -> str:
        """The one line saying the budget stopped the job, once it has ("" otherwise)."""
        return self._budget_line

    @property
    def elapsed_s(self) -> float:
        """The job's own wall time: it stops growing when the job ends, however
        long a finished dashboard stays open after it."""
        return (self._clock() if self._ended is None else self._ended) - self._started

    def summary_line(self) -> str:
        """The run in one line, as the job's end prints it (and what the cluster did)."""
        line = self.stats.summary_line(
            self.config.job.name, self.elapsed_s, self._intake.records_skipped()
        )
        return line if self._cluster is None else f"{line} | {self._cluster.summary()}"

    # ------------------------------------------------------- what stages report
    def _preset_in_force(self) -> Preset:
        return self._preset

    def _set_fatal(self, reason: str) -> None:
        """The input cannot be read (the intake's `on_fatal`)."""
        self._fatal = reason
        if self._cluster is not None and self.config.crawl is None:
            # Not all enqueued: another worker that has it may read it yet.
            self._cluster.input_failed(reason)

    async def _census_once_read(self, reads_input: asyncio.Event) -> None:
        """Count the input once this worker reads it (a cluster worker may never)."""
        await reads_input.wait()
        await self._intake.census(after=self._dispatcher.first_reply)

    async def _read_shared_input(self, reads_input: asyncio.Event) -> None:
        """A cluster's input: read here when this worker's turn comes, else none of it
        once the job has it all (`ClusterJob.read_input`)."""
        assert self._cluster is not None

        def enqueued(chunks: int) -> None:
            self.stats.total = chunks

        await self._cluster.read_input(
            self._intake.read,
            self._intake.read_none,
            input_name=self.config.job.input,
            here=input_present(self.config.job.input),
            reading=reads_input.set,
            enqueued=enqueued,
        )

    def _same_text(self, store: Store) -> SameText | None:
        """One request per text in this process; None in a cluster, whose texts are
        decided in Redis and copied by its collector (`shared_same_text`)."""
        if self._cluster is not None:
            return None
        return SameText(
            store,
            self._held,
            run_id=self._run_id,
            prompt_version=self.config.prompt.version,
            models=(p.model for p in self.config.providers),
            remember=store.most_uncommitted + 1,
        )

    def _outcomes(self, store: Store, same_text: SameText | None = None) -> Outcomes:
        """The outcomes stage of this run: its rows go to `store` under this run's id."""
        cfg = self.config
        return Outcomes(
            store if self._cluster is None else self._cluster.rows,
            run_id=self._run_id,
            prompt_version=cfg.prompt.version,
            first_model=cfg.providers[0].model,
            queue=self._queue,
            held=self._held,
            keys=self._keys,
            stats=self.stats,
            events=self.events,
            attempts=self._adaptive,
            preset=self._preset_in_force,
            backoff=self._backoff.delay_s,
            waits=cfg.rate_limit_waits,
            clock=self._clock,
            drift=self._drift,
            same_text=same_text,
        )

    def _input_ended(self) -> None:
        # Nothing read but records skipped: fail rather than end "done" with nothing done.
        reason = self._intake.nothing_read()
        if reason and not self._fatal:
            self._fatal = reason
            self.events.emit(EventKind.WARNING, self._fatal)

    def _chunks_to_pay_for(self) -> int | None:
        s = self.stats
        return None if s.total is None else max(0, s.total - s.skipped - s.cached)

    def _budget_reached(self, needed_usd: float) -> None:
        """The next request (up to `needed_usd`) would pass the budget: admission has
        stopped, the job drains; what is not started stays pending for a rerun."""
        assert self._budget is not None
        if self._state in (JobState.RUNNING, JobState.PAUSED, JobState.STARTING):
            self._state = JobState.DRAINING
        self._running.set()
        if self._crawl is not None:
            self._crawl.stop_starting()
        self.events.emit(
            EventKind.BUDGET_REACHED,
            self._budget_reached_line(),
            budget_usd=self._budget.cap_usd,
            spent_usd=self._budget.spent_total_usd,
            reserved_usd=self._budget.reserved_usd,
            needed_usd=needed_usd,
        )

    def _budget_reached_line(self) -> str:
        assert self._budget is not None
        s = self.stats
        counted = s.total is not None
        # Answered but not yet committed, or in flight: started.
        started = self._dispatcher.in_flight_chunks + max(0, s.chunks_answered - s.done)
        not_started = max(0, (s.total if s.total is not None else s.seen) - s.finished - started)
        source = str(self.config.source) if self.config.source is not None else None
        return budget_reached_line(
            self._budget,
            not_started,
            counted=counted,
            job_file=source,
            from_flag="job.budget_usd" in self.config.set_by_flags,
        )

    def _count_429(self, now: float) -> None:
        self.stats.rate_limited += 1
        self._adaptive.record(now, True)

    def _no_key_left(self, reasons: str) -> None:
        """No key can serve any more: fail everything not done, with the keys' reasons.

        A worker of a cluster fails nothing: it stops taking batches, and the
        ones it held are taken over by workers whose keys still serve.
        """
        self._fatal = f"no API key can serve any more ({reasons})"
        then = "every chunk not done is stored as failed; a rerun retries them"
        if self._cluster is not None:
            then = "this worker stops; the other workers take over what it held"
            self._dispatcher.stop_admitting()
        self.events.emit(EventKind.WARNING, f"{self._fatal}: {then}")
        if self._state in (JobState.RUNNING, JobState.PAUSED):
            self._state = JobState.DRAINING
        self._running.set()  # nothing waits for a resume that cannot help
        if self._crawl is not None:
            self._crawl.stop_starting()  # unfetched sites stay for a rerun

    # ------------------------------------------------------------------ helpers
    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self._clock()
            if self._crawl is not None:
                self._crawl.tick(now)
                self._intake.project_crawl_total(input_done=self._held.input_done)
            self.stats.tick(now)
            adaptive = self._preset.adaptive_concurrency and self._state == JobState.RUNNING
            self._dispatcher.adapt(now, allowed=adaptive)
            self._keys.notify()  # cooldowns may have ended; recovery may apply

    def _count_committed(self, committed: Committed) -> None:
        # Counted when the writer commits, not when a row is handed to it: what
        # the job reports as done (summary, snapshot, runs row) is in the store.
        self.stats.done += committed.results
        self.stats.failed += committed.failures
        self.stats.cached += committed.cached

    def _cluster_failed(self, trouble: BaseExceptionGroup[BaseException]) -> None:
        """Redis failed this worker: the job ends here as FAILED, with the one line why;
        what it held is reclaimed by the other workers."""
        assert self._cluster is not None
        self._fatal = self._cluster.explain(trouble)
        self._state = JobState.FAILED
        self.events.emit(EventKind.WARNING, f"the cluster failed this worker: {self._fatal}")

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
            and self._held.outstanding == 0
            and (crawl is None or crawl.targets_started == crawl.targets_finished)
            and self._unstored_rows() == 0
        )

    def _unstored_rows(self) -> int:
        return self._store.backlog if self._store is not None else 0

    def _final_state(self) -> JobState:
        s = self.stats
        if self._fatal:
            return JobState.FAILED
        if self._stop_requested or self._state == JobState.DRAINING:
            return JobState.STOPPED
        if s.failed or (self._cluster is not None and self._cluster.failed_chunks):
            return JobState.FINISHED_WITH_FAILURES
        return JobState.DONE

    def _summary(self) -> dict[str, object]:
        summary = self.stats.summary(self.elapsed_s, self._intake.records_skipped(), self._fatal)
        if self._budget is not None:  # billed, failed and unanswered requests included
            summary |= {"spent_usd": self._budget.spent_usd, "budget_usd": self._budget.cap_usd}
        return summary
