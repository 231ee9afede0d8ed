"""The cluster at one instant: every worker as its last heartbeat told it, and their totals.

Plain frozen values (no Redis here), so a snapshot can carry a `ClusterView`
and the control socket's codec can send it as it sends the rest:

    view = await read_cluster_view(redis, settings.prefix)   # engine.cluster.worker_registry
    view.done, view.requests_per_min, view.workers[0].lost

What counts where: results done and failed are summed over every worker
that ever beat, lost and ended ones included (their results are stored);
what is in flight, the rates and the keys' last-minute usage only over live
workers, since a lost worker's last figures are stale and an ended one's
are zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["ClusterView", "KeyUsage", "WorkerReport", "WorkerView", "aggregate", "summed_keys"]


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """One API key's use in the last minute: by one worker, or summed over the cluster."""

    key_id: str
    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """What a worker says of itself at every heartbeat.

    `state` is its job's state (a `JobState` value: "running", "paused",
    "draining", "done", ...).  Counts are this worker's own since it started.
    """

    state: str = "starting"
    done: int = 0
    failed: int = 0
    in_flight: int = 0
    items_per_min: float = 0.0
    requests_per_min: float = 0.0
    tokens_per_s: float = 0.0
    keys: tuple[KeyUsage, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the registry last heard of it; times are Redis's clock.

    `lost`: it has not ended, yet missed more heartbeats than allowed.
    `ended`: its job ended (done, stopped, failed); an ended worker is never lost.
    """

    worker_id: str
    host: str
    pid: int
    state: str
    done: int
    failed: int
    in_flight: int
    items_per_min: float
    requests_per_min: float
    tokens_per_s: float
    keys: tuple[KeyUsage, ...]
    heartbeat_s: float
    started_at: float
    last_heartbeat: float
    age_s: float  # since the last heartbeat
    lost: bool
    ended: bool

    @property
    def live(self) -> bool:
        """Beating and not ended: its in-flight work, rates and key usage are current."""
        return not (self.lost or self.ended)


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The cluster's totals and every worker, read at `taken_at` (Redis's clock).

    The `chunks_*` figures are the run's own counters in Redis (exact, and
    current even when a worker's last report lags): chunks enqueued, those
    settled with a result (`chunks_done`) or a failure (`chunks_failed`, dead
    letters' chunks included).  `worker_id` is the worker whose snapshot
    carries the view; `store` the job's one store and `collector` the worker
    writing it now ("" when none is).  A crawl job's `sites_*` are its
    targets stream's counters: sites enqueued, crawled, dead-lettered.
    """

    taken_at: float = 0.0
    workers: tuple[WorkerView, ...] = ()
    done: int = 0
    failed: int = 0
    in_flight: int = 0
    items_per_min: float = 0.0
    requests_per_min: float = 0.0
    tokens_per_s: float = 0.0
    keys: tuple[KeyUsage, ...] = ()  # each key's use summed over the live workers
    live: int = 0
    lost: int = 0
    ended: int = 0
    run: int = 0
    chunks_enqueued: int = 0
    chunks_done: int = 0
    chunks_failed: int = 0
    chunks_copied: int = 0  # of the done: copies of another chunk's answer to their text
    dead_letters: int = 0  # batches given up after too many deliveries
    input_complete: bool = False  # every worker's input is enqueued: the total is known
    sites_enqueued: int = 0
    sites_crawled: int = 0
    sites_dead: int = 0
    worker_id: str = ""
    store: str = ""
    collector: str = ""

    @property
    def chunks_total(self) -> int | None:
        """The run's chunks to work, once the whole input is enqueued (None before)."""
        return self.chunks_enqueued if self.input_complete else None

    @property
    def chunks_finished(self) -> int:
        """Chunks settled either way: a result or a failure stored."""
        return self.chunks_done + self.chunks_failed


def summed_keys(usages: Iterable[KeyUsage]) -> tuple[KeyUsage, ...]:
    """Usage of the same key added up, one entry per key, by key id."""
    totals: dict[str, tuple[int, int]] = {}
    for usage in usages:
        requests, tokens = totals.get(usage.key_id, (0, 0))
        totals[usage.key_id] = (requests + usage.requests, tokens + usage.tokens)
    return tuple(KeyUsage(key, *totals[key]) for key in sorted(totals))


def aggregate(workers: Sequence[WorkerView], taken_at: float) -> ClusterView:
    """The cluster's totals from its workers (see the module's note on what counts where)."""
    live = [worker for worker in workers if worker.live]
    return ClusterView(
        taken_at=taken_at,
        workers=tuple(sorted(workers, key=lambda worker: (worker.started_at, worker.worker_id))),
        done=sum(worker.done for worker in workers),
        failed=sum(worker.failed for worker in workers),
        in_flight=sum(worker.in_flight for worker in live),
        items_per_min=sum(worker.items_per_min for worker in live),
        requests_per_min=sum(worker.requests_per_min for worker in live),
        tokens_per_s=sum(worker.tokens_per_s for worker in live),
        keys=summed_keys(usage for worker in live for usage in worker.keys),
        live=len(live),
        lost=sum(1 for worker in workers if worker.lost),
        ended=sum(1 for worker in workers if worker.ended),
    )
