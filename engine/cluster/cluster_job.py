"""This process as one worker of a job shared through Redis: the parts the engine runs instead.

`crawldeck run JOB.toml` with a `[cluster]` table joins the job
(`joined_cluster`): it connects to the job's Redis, joins the job's current
run (`job_runs`), learns which store is the job's (`collector_lease`) and
takes a worker id.  The engine then builds its pipeline with this object's
parts in place of its in-process ones, through a few seams:

- the work queue is the run's Redis Stream, this worker its own consumer
  (`StreamWorkQueue`); repeats and the job's end are the queue's to judge
  (`SharedHeldWork`);
- each key's budget is shared in Redis (`SharedKeyPool`);
- the outcomes' rows go to the results stream (`ResultsStreamRows`): a
  worker's "done" is what it settled there, durably, not what it committed
  to SQLite;
- a crawl job's sites come from the run's targets stream, and their chunks
  and pages go back to the cluster (`SharedCrawl`);
- beside the stages (`start`): the queue's reader (reclaims, dead letters),
  the budgets' writer, the heartbeat, the listener applying the cluster's
  controls here, the sender of this worker's controls to every worker, the
  collector role (beside the job's store) and the cluster view;
- at the end (`settle_up`, `leave`): the budgets written, what is left
  collected, the last heartbeat, the lease let go.

The job ends for every worker when the run's work is all settled: the
queue's `get()` returns None.  Redis away past `outage_limit_s` ends a
worker with one line (`trouble`, `explain`), its batches left for the
others to reclaim.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.cluster.cluster_controls import ClusterCommand, ClusterControls, ControlListener
from engine.cluster.cluster_job_controls import ClusterJobControls
from engine.cluster.cluster_view import ClusterView
from engine.cluster.collector_lease import CollectorLease, CollectorRole, StoreClaim, claim_store
from engine.cluster.intake_lease import InputUnread, IntakeLease, NoReader
from engine.cluster.job_runs import join_run, run_prefix
from engine.cluster.redis_connection import RedisUnavailable, connect_redis, redis_unavailable
from engine.cluster.result_collector import ResultCollector
from engine.cluster.results_stream import ResultsStreamRows
from engine.cluster.shared_budget import SharedBudgetUnavailable
from engine.cluster.shared_crawl import SharedCrawl
from engine.cluster.shared_held_work import SharedHeldWork
from engine.cluster.shared_host_clock import SharedHostClock
from engine.cluster.shared_key_pool import SharedKeyPool
from engine.cluster.shared_same_text import SharedSameText, TextCopies
from engine.cluster.shared_spend import SharedSpendBudget
from engine.cluster.stream_queue import QueueProgress, StreamWorkQueue
from engine.cluster.target_stream import TargetProgress, TargetStream
from engine.cluster.worker_registry import (
    WorkerRegistry,
    new_worker_id,
    read_cluster_view,
    report_from_snapshot,
)
from engine.config.settings import JobConfig, JobSettings, Preset, RateLimitWaits
from engine.control.controls import Adjustment, JobControls, RunnableJob
from engine.limits.key_pool import Clock, KeyState
from engine.observe.events import EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.observe.snapshot import JobState, Snapshot
from engine.pipeline.held_work import HeldWork
from engine.pipeline.same_text import StoredAnswers
from engine.store.sqlite_store import Committed, Store

if TYPE_CHECKING:
    from engine.cluster.stream_queue import GivesUp

__all__ = ["ClusterJob", "ClusterWorker", "joined_cluster"]

QUEUE_BLOCK_S = 1.0
"""How long the queue's reader blocks on Redis for new batches (and looks at the run's end)."""
QUEUE_PREFETCH = 4
"""Batches a worker reads ahead: fewer reads a batch (one read took one or two at
1), and few enough that a worker does not sit on work another could send."""
MIN_LEASE_S = 1.0
"""The collector lease's shortest life: a faster heartbeat would only churn it."""


class _StreamTerms(TypedDict):
    """What the run's batch and targets streams are both read under."""

    visibility_s: float
    max_deliveries: int
    block_s: float
    max_backlog: int


class ClusterJob:
    """This worker's membership of the job: build it with `joined_cluster`, hand it to `Engine`."""

    def __init__(
        self,
        redis: Redis,
        config: JobConfig,
        *,
        run: int,
        worker_id: str,
        store: StoreClaim,
        here: StoreClaim,
    ) -> None:
        assert config.cluster is not None
        self.redis = redis
        self.config = config
        self.settings = config.cluster
        self.run = run
        # The run's keys (its queue, registry, controls) under their own prefix.
        self.scope = replace(config.cluster, prefix=run_prefix(config.cluster.prefix, run))
        self.worker_id = worker_id
        self.store = store
        self.beside_store = store == here
        # Stored chunks of this prompt version, for every run of the job.
        self.done_set = f"{config.cluster.prefix}:done:{config.prompt.version}"
        # Crawled sites whose pages the job's store holds, for every run: a rerun replays
        # them beside the store instead of fetching them.
        self.stored_sites = f"{config.cluster.prefix}:crawl:stored"
        self.trouble: tuple[type[BaseException], ...] = (
            RedisError,
            RedisUnavailable,
            SharedBudgetUnavailable,
            NoReader,
            InputUnread,
        )
        self._unread = ""  # why this worker's reading of the input failed
        # Results (copies too) and failures this worker's collector stored (repeats not).
        self.rows_stored = 0
        self._events = EventBus()
        self._queue: StreamWorkQueue | None = None
        self._keys: SharedKeyPool | None = None
        self._rows: ResultsStreamRows | None = None
        self._texts: SharedSameText | None = None
        self._registry: WorkerRegistry | None = None
        self._listener: ControlListener | None = None
        self._steering: ClusterJobControls | None = None
        self._role: CollectorRole | None = None
        self._lease = CollectorLease(
            redis,
            config.cluster.prefix,
            worker_id,
            max(MIN_LEASE_S, config.cluster.lost_after_s),
        )
        self._budgets: asyncio.Task[None] | None = None
        self._spend: SharedSpendBudget | None = None  # the job's budget_usd, when it has one
        self._spending: asyncio.Task[None] | None = None
        self._beats: asyncio.Task[None] | None = None
        self._progress = QueueProgress()
        self._view: ClusterView | None = None
        self._waiting = 0  # results entries left in Redis when this worker ended
        self._targets: TargetStream | None = None  # a crawl job's sites
        self._crawl_share: SharedCrawl | None = None  # and the rest of its shared side
        self._crawled: TargetProgress | None = None  # the crawl's counters, as last read
        self._engine: JobControls | None = None

    # ------------------------------------------------------------ the engine's parts
    def work_queue(
        self, events: EventBus, clock: Clock, counted: Callable[[Committed], None]
    ) -> StreamWorkQueue:
        """The run's queue, this worker a consumer; `counted` is told what each entry it
        settled held (the worker's done and failed)."""
        self._events = events
        self._queue = StreamWorkQueue(
            self.redis,
            self.scope.prefix,
            self.worker_id,
            **self._stream_terms(),
            prefetch=QUEUE_PREFETCH,
            events=events,
            clock=clock,
            done_set=self.done_set,
            on_settled=lambda results, failures: counted(
                Committed(results + failures, results, failures)
            ),
        )
        self._rows = ResultsStreamRows(self._queue)
        self._texts = SharedSameText(
            self.redis,
            self.scope.prefix,
            self.done_set,
            prompt_version=self.config.prompt.version,
            models=self._models(),
            job_prefix=self.settings.prefix,
            beside_store=self.beside_store,
        )
        return self._queue

    def same_text(self) -> SharedSameText:
        """Which chunks need a request: one per text in the whole run (`shared_same_text`)."""
        assert self._texts is not None, "work_queue() first"
        return self._texts

    def _models(self) -> list[str]:
        """The job's models: an answer from any of them serves a text."""
        return [provider.model for provider in self.config.providers]

    def held_work(self, queue: StreamWorkQueue) -> HeldWork:
        """What the batcher and the outcomes hold: nothing, in a cluster."""
        # A crawl's input is whole once every site of the run is crawled, by anyone.
        return SharedHeldWork(
            queue,
            whole=lambda: self._targets is None or self._targets.over,
            short=self._crawl_ended_short,
            unread=lambda: bool(self._unread),
        )

    def input_failed(self, reason: str) -> None:
        """This worker's reading of the run's input failed (`reason`): nothing marks the
        input all enqueued, and the worker ends with the reason once its read returns,
        giving its turn to a worker that may read it (`read_input`)."""
        self._unread = reason

    def key_pool(
        self,
        keys: Sequence[KeyState],
        clock: Clock,
        *,
        events: EventBus,
        waits: RateLimitWaits,
        backoff: Callable[[int], float],
        on_rate_limited: Callable[[float], None],
    ) -> SharedKeyPool:
        """The keys, each one's budget shared by every worker of the job."""
        self._keys = SharedKeyPool(
            keys,
            self.redis,
            self.settings.prefix,
            clock,
            events=events,
            waits=waits,
            backoff=backoff,
            on_rate_limited=on_rate_limited,
            retry_for_s=self.settings.outage_limit_s,
        )
        return self._keys

    def spend_budget(self, cap_usd: float) -> SharedSpendBudget:
        """The job's spending cap, held for every worker together."""
        self._spend = SharedSpendBudget(
            cap_usd,
            self.redis,
            self.settings.prefix,
            self.worker_id,
            # Renewed every quarter of it: a worker gone this long is not sending.
            hold_s=max(5.0, 2 * self.settings.lost_after_s),
            retry_for_s=self.settings.outage_limit_s,
        )
        return self._spend

    def _stream_terms(self) -> _StreamTerms:
        """What the run's batch and targets streams are read under, from `[cluster]`."""
        return {
            "visibility_s": self.settings.visibility_timeout_s,
            "max_deliveries": self.settings.max_deliveries,
            "block_s": QUEUE_BLOCK_S,
            "max_backlog": max(64, self.config.engine.queue_size),
        }

    def crawl_share(
        self,
        job: JobSettings,
        *,
        stats: RunStats,
        batch_size: Callable[[], int],
        stored: StoredAnswers | None = None,
    ) -> SharedCrawl:
        """A crawl job's side of the cluster: the run's sites, read one at a time, and
        their chunks (cut as `job` says, batched by `batch_size()`) on the batch stream;
        `stored` (this worker's store) answers texts an earlier run answered, beside it."""
        assert self._queue is not None, "work_queue() first"
        self._targets = TargetStream(
            self.redis,
            self.scope.prefix,
            self.worker_id,
            **self._stream_terms(),
            events=self._events,
            stored_sites=self.stored_sites,
            beside_store=self.beside_store,
        )
        self._crawl_share = SharedCrawl(
            self._targets,
            self._queue,
            job,
            stats=stats,
            batch_size=batch_size,
            host_clock=SharedHostClock(self.redis, self.scope.prefix),
            same_text=self.same_text(),
            stored=stored,
        )
        return self._crawl_share

    @property
    def rows(self) -> ResultsStreamRows:
        """Where the outcomes put their rows: the results stream, settling their batches."""
        assert self._rows is not None, "work_queue() first"
        return self._rows

    def attach(self, engine: JobControls) -> None:
        """The engine this worker runs: its reports, and the target of the cluster's controls."""
        self._engine = engine
        self._registry = WorkerRegistry(
            self.redis,
            self.scope,
            lambda: report_from_snapshot(engine.snapshot()),
            worker_id=self.worker_id,
        )
        self._listener = ControlListener(self.redis, self.scope, engine, on_applied=self._applied)
        self._steering = ClusterJobControls(
            engine, ClusterControls(self.redis, self.scope, sender=self.worker_id)
        )

    @property
    def steering(self) -> ClusterJobControls:
        """This worker's snapshots, and controls that go to every worker (the control
        socket's target)."""
        assert self._steering is not None, "attach() first"
        return self._steering

    def steered(self, engine: EngineLike) -> ClusterWorker:
        """The engine as the dashboard here sees it: run here, steering every worker."""
        return ClusterWorker(engine, self.steering)

    # ------------------------------------------------------------ the run
    async def input_enqueued(self) -> int | None:
        """The run's chunks, when its whole input is in its stream already.  None if not
        yet, or when Redis cannot say."""
        assert self._queue is not None, "work_queue() first"
        try:
            progress = await self._queue.progress()
        except RedisError:
            return None
        return progress.chunks if progress.input_complete else None

    async def read_input(
        self,
        read: Callable[[], Awaitable[None]],
        read_none: Callable[[], Awaitable[None]],
        *,
        input_name: str,
        here: bool,
        reading: Callable[[], None],
        enqueued: Callable[[int], None],
    ) -> None:
        """The run's input, read by one worker at a time (`IntakeLease`): `read()` here
        once this worker's turn comes (`reading()` is told first), or `read_none()` once
        the input is all enqueued (`enqueued(chunks)` told the run's total first) —
        at once for a worker that joins late.  `input_name` is the input, `here`
        whether this machine has it (`NoReader` if nobody that has it reads it)."""
        queue = self._queue
        assert queue is not None, "work_queue() first"

        async def complete() -> bool:
            chunks = await self.input_enqueued()
            if chunks is not None:
                enqueued(chunks)  # the turn ends here: this worker reads none of it
            return chunks is not None

        lease = IntakeLease(
            self.redis,
            queue.streams,
            self.worker_id,
            complete=complete,
            hold_s=self.settings.lost_after_s,
            wait_for_reader_s=self.settings.visibility_timeout_s,
            events=self._events,
        )
        if await lease.turn(input_name, here=here):
            reading()
            await lease.hold_while(self._read_to_the_marker(read, queue))
        else:
            await read_none()

    async def _read_to_the_marker(
        self, read: Callable[[], Awaitable[None]], queue: StreamWorkQueue
    ) -> None:
        # The lease is held until the input is marked all enqueued, not only read: a
        # reader that dies with its last batches unqueued leaves its turn to another.
        await read()
        if self._unread:
            raise InputUnread(self._unread)
        await queue.input_marked.wait()

    async def open(self) -> None:
        """Join the keys' shared budgets (before the job's tasks start)."""
        assert self._keys is not None
        await self._keys.open()
        if self._spend is not None:
            await self._spend.open()

    def start(
        self, tg: asyncio.TaskGroup, outcomes: GivesUp, store: Store, run_id: int
    ) -> list[asyncio.Task[None]]:
        """Start the cluster's tasks beside the stages; returns those to cancel at the end."""
        assert self._queue is not None and self._keys is not None
        assert self._registry is not None and self._listener is not None
        assert self._steering is not None
        collector = ResultCollector(
            self.redis,
            self.scope.prefix,
            self.worker_id,
            store,
            run_id=run_id,
            visibility_s=self.settings.visibility_timeout_s,
            events=self._events,
            done_set=self.done_set,
            stored_sites=self.stored_sites,
            copies=TextCopies(
                self.redis,
                self.scope.prefix,
                prompt_version=self.config.prompt.version,
                models=self._models(),
                job_prefix=self.settings.prefix,
            ),
        )
        self._role = CollectorRole(
            self.redis,
            self._lease,
            collector,
            beside=self.beside_store,
            store=self.store,
            events=self._events,
        )
        self._budgets = tg.create_task(self._keys.run_writer(), name="shared-budgets")
        if self._spend is not None:
            self._spending = tg.create_task(self._spend.run_writer(), name="shared-spend")
        self._beats = tg.create_task(self._registry.run(), name="heartbeat")
        crawling = []
        if self._targets is not None:
            keep_alive = self._targets.run_keep_alive()
            crawling.append(tg.create_task(keep_alive, name="crawl-keep-alive"))
        if self._crawl_share is not None:
            flusher = self._crawl_share.run_flusher()
            crawling.append(tg.create_task(flusher, name="crawl-batch-flusher"))
        return [
            *crawling,
            tg.create_task(self._queue.run(outcomes), name="cluster-queue"),
            tg.create_task(self._listener.run(), name="cluster-controls"),
            tg.create_task(self._steering.run(), name="cluster-steering"),
            tg.create_task(self._role.run(), name="collector-role"),
            tg.create_task(self._watch(), name="cluster-view"),
        ]

    async def settle_up(self) -> None:
        """After the stages ended: the budgets written, what is left collected (beside the
        store), the run's counters read for the end."""
        assert self._keys is not None and self._budgets is not None and self._queue is not None
        if self._crawl_share is not None:
            # Stopped mid-crawl: the sites finished here whose last chunks wait for a
            # fuller batch are handed on now, not crawled again by whoever reclaims them.
            await self._crawl_share.flush(leaving=True)
        self._keys.close_writer()  # no lease is open any more
        await self._budgets
        if self._spend is not None and self._spending is not None:
            self._spend.close_writer()  # every request has settled its reservation
            await self._spending
            await self._spend.aclose()
        if self._role is not None:
            await self._role.finish(job_over=self._queue.over)
        self._progress = await self._queue.progress()
        if self._targets is not None:
            self._crawled = await self._targets.progress()

    async def leave(self) -> None:
        """The last heartbeat (the worker's final state), and the cluster as it is then."""
        assert self._registry is not None and self._beats is not None
        self._registry.finish()
        await self._beats
        await self._look()
        assert self._queue is not None
        self._waiting = int(await self.redis.xlen(self._queue.streams.results))

    def count_stored(self, committed: Committed) -> None:
        """The store's word on what a commit held: the rows this worker collected that took."""
        self.rows_stored += committed.results + committed.cached + committed.failures

    @property
    def failed_chunks(self) -> int:
        """The run's chunks that ended failed, on any worker (as last read)."""
        return self._progress.chunks_failed

    def view(self) -> ClusterView | None:
        """The cluster as last read (every `heartbeat_s`); None before the first look."""
        return self._view

    def remaining_here(self, total: int | None, skipped: int) -> int | None:
        """This worker's share of the run's chunks still to work, for its ETA.

        The run's remaining chunks (the whole input's, from this worker's census,
        until every worker's input is enqueued) shared among the live workers.
        """
        view = self._view
        if view is None:
            return None if total is None else max(0, total - skipped)
        run_total = view.chunks_total
        if run_total is None:
            run_total = None if total is None else total - skipped
        if run_total is None:
            return None
        return max(0, run_total - view.chunks_finished) // max(1, view.live)

    def describe(self) -> str:
        """Who this worker is in the job, in one line, for its start."""
        who = "beside this worker" if self.beside_store else "by a worker there"
        return (
            f"joined run {self.run} of {self.settings.prefix} at {self.settings.redis} "
            f"as worker {self.worker_id}; results are stored in {self.store}, {who}"
        )

    def summary(self) -> str:
        """What the cluster did, for the end of this worker's summary."""
        view = self._view or ClusterView()
        p = self._progress
        done = p.chunks_done
        total = p.chunks if p.input_complete else f"{p.chunks}+"
        copied = f" ({p.copied} copied)" if p.copied else ""
        text = (
            f"cluster run {self.run}: {done + self.failed_chunks}/{total} chunks "
            f"(done {done}{copied}, failed {self.failed_chunks}, dead letters {p.dead}) "
            f"by {_workers(len(view.workers))} ({view.lost} lost); store {self.store}"
        )
        if self._crawled is not None:
            c = self._crawled
            text += f"; {c.settled}/{c.targets} sites crawled ({c.dead} dead letters)"
        if self.rows_stored:
            text += f"; this worker stored {self.rows_stored} rows in it"
        if self._waiting:
            text += (
                f"; {self._waiting} result entries wait in Redis for a worker on "
                f"{self.store.host} to collect them"
            )
        return text

    def explain(self, errors: BaseExceptionGroup[BaseException]) -> str:
        """The one line a worker ends with when Redis failed it."""
        error = _first(errors)
        if isinstance(error, RedisError):
            return str(redis_unavailable(self.redis, self.settings, error))
        return str(error)

    # ------------------------------------------------------------ internals
    async def _watch(self) -> None:
        while True:
            await self._look()
            # The registry is read on the heartbeat's rhythm: it changes no faster.
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _look(self) -> None:
        assert self._queue is not None
        view = await read_cluster_view(self.redis, self.scope.prefix)
        self._progress = p = await self._queue.progress()
        if self._targets is not None:
            self._crawled = await self._targets.progress()
        sites = self._crawled or TargetProgress()
        self._view = replace(
            view,
            run=self.run,
            chunks_enqueued=p.chunks,
            chunks_done=p.chunks_done,
            chunks_failed=p.chunks_failed,
            chunks_copied=p.copied,
            dead_letters=p.dead,
            input_complete=p.input_complete,
            sites_enqueued=sites.targets,
            sites_crawled=sites.settled,
            sites_dead=sites.dead,
            worker_id=self.worker_id,
            store=str(self.store),
            collector=await self._lease.holder(),
        )

    def _crawl_ended_short(self) -> None:
        """This worker's crawl ended before the cluster's (drained, no key left, or its
        targets file unreadable here): it leaves, and the others crawl the rest."""
        if self._engine is not None:
            self._engine.drain()  # nothing if it is ending already

    def _applied(self, command: ClusterCommand, refusal: str | None) -> None:
        if refusal is not None:
            self._events.emit(
                EventKind.WARNING,
                f"cluster control {command.op} (from {command.sender or 'a worker'}) "
                f"refused here: {refusal}",
            )


def _workers(count: int) -> str:
    return f"{count} worker" + ("" if count == 1 else "s")


def _first(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    for error in errors.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first(error)
        return error
    return errors


class EngineLike(RunnableJob, Protocol):
    """What `ClusterWorker` needs of the engine: its controls, its run, its config."""

    config: JobConfig


class ClusterWorker:
    """The engine as a worker of the cluster, for the dashboard that runs it: its controls
    steer every worker through Redis, except `stop` (quitting), which ends this worker
    only — the others go on with the job.  Snapshots are this worker's."""

    def __init__(self, engine: EngineLike, steering: ClusterJobControls) -> None:
        self.engine = engine
        self.steering = steering
        self.config = engine.config  # the dashboard finds the job's store through it

    async def run(self) -> JobState:
        return await self.engine.run()

    @property
    def failure_reason(self) -> str:
        return self.engine.failure_reason

    def snapshot(self) -> Snapshot:
        return self.engine.snapshot()

    def set_concurrency(self, value: int) -> None:
        self.steering.set_concurrency(value)

    def adjust_concurrency(self, delta: int) -> Adjustment | None:
        return self.steering.adjust_concurrency(delta)

    def set_fetch_concurrency(self, value: int) -> None:
        self.steering.set_fetch_concurrency(value)

    def adjust_fetch_concurrency(self, delta: int) -> Adjustment | None:
        return self.steering.adjust_fetch_concurrency(delta)

    def apply_preset(self, preset: str | Preset) -> None:
        self.steering.apply_preset(preset)

    def pause(self) -> None:
        self.steering.pause()

    def resume(self) -> None:
        self.steering.resume()

    def drain(self) -> None:
        self.steering.drain()

    def stop(self) -> None:
        self.engine.stop()


@contextlib.asynccontextmanager
async def joined_cluster(
    config: JobConfig, environ: Mapping[str, str]
) -> AsyncIterator[ClusterJob | None]:
    """This process's membership of the job `config` shares (None: the job has no
    `[cluster]`); its Redis connection is closed on the way out.

    Raises `ConfigError` (the password's variable is missing) or
    `RedisUnavailable` (Redis does not answer within the outage limit, or
    refuses us) before anything runs.
    """
    settings = config.cluster
    if settings is None:
        yield None
        return
    redis = await connect_redis(settings, environ, file=str(config.source))
    try:
        try:
            run = await join_run(redis, settings.prefix)
            here = StoreClaim(socket.gethostname(), str(Path(config.job.store).resolve()))
            store = await claim_store(redis, settings.prefix, here.host, here.path)
        except RedisError as error:
            raise redis_unavailable(redis, settings, error) from None
        yield ClusterJob(redis, config, run=run, worker_id=new_worker_id(), store=store, here=here)
    finally:
        await redis.aclose()
