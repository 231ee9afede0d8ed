"""The engine's state as one immutable value, read by every front end.

The dashboard and the headless reporter never compute a rate or an ETA
themselves: everything they show is in here, computed once by the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from engine.cluster.cluster_view import ClusterView
from engine.config.settings import Preset
from engine.observe.batch_view import BatchRoute
from engine.observe.events import Event
from engine.observe.latency_histogram import LatencyHistogram


class JobState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    DRAINING = "draining"  # finishing in-flight work, then stopping
    STOPPING = "stopping"
    DONE = "done"  # every chunk ended done
    FINISHED_WITH_FAILURES = "finished_with_failures"
    STOPPED = "stopped"  # stopped or drained before the end
    FAILED = "failed"  # the engine itself could not go on


@dataclass(frozen=True, slots=True)
class Counts:
    """Chunks by state.  `total` is None until the whole input has been counted."""

    total: int | None = None
    total_estimated: bool = False  # a crawl's total: projected from the pages so far
    seen: int = 0  # chunks read so far
    pending: int = 0
    in_flight: int = 0
    done: int = 0  # results stored by this run
    failed: int = 0
    skipped: int = 0  # already had a result in the store (resumed/incremental)
    # Given a result without a request of their own: the same chunk again in this
    # input, or the same text (prompt version, model) already answered under another
    # source — by an earlier run or earlier in this one — and copied to this chunk.
    cached: int = 0
    # Input records, not chunks: records (or crawl target lines) left out because
    # they could not be read, were binary, or had no text; each is in the event log.
    records_skipped: int = 0

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped + self.cached


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    key_id: str
    provider: str
    alias: str
    masked_secret: str
    rpm_used: int
    rpm_limit: float | None
    tpm_used: int
    tpm_limit: float | None
    in_flight: int
    requests: int
    errors: int
    rate_limited: int
    state: str  # "ok", "cooling", "disabled"
    cooldown_s: float = 0.0
    disabled_reason: str = ""
    # Tokens the provider counts against `tpm_limit` now (its headers, else
    # prompt and expected output charged at admission in the last minute);
    # `tpm_used` is what answers used.  Near the limit: the key is full.
    tpm_counted: int = 0


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    rss_bytes: int = 0
    soft_bytes: int = 0
    hard_bytes: int = 0
    limit_bytes: int | None = None
    state: str = "ok"
    floor_bytes: int = 0  # the process's own, after start-up: limits below it are refused
    waiting_for: str = ""  # what the breaker holds back, and until when ("" while ok)


@dataclass(frozen=True, slots=True)
class QueueDepths:
    documents: int = 0
    chunks: int = 0
    batches: int = 0
    retries: int = 0
    store: int = 0


@dataclass(frozen=True, slots=True)
class CrawlSnapshot:
    """The fetch stage of a crawl job, beside the LLM stage's figures.

    Targets are the sites (or URLs) in the input; pages include followed
    links.  `outcomes` counts pages by outcome (fetched, redirected,
    robots_blocked, timed_out, …), `fetch_*` are the fetch limits in force.
    """

    targets_total: int | None = None
    targets_started: int = 0
    targets_finished: int = 0
    fetches_in_flight: int = 0
    fetch_concurrency: int = 0
    per_host: int = 0
    pages: int = 0
    pages_per_min: float = 0.0
    bytes: int = 0
    outcomes: tuple[tuple[str, int], ...] = ()
    extracting: int = 0  # pages waiting for or in text extraction
    resumed: int = 0  # targets whose pages came from the store, not the web


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """The job's spending cap (`[job] budget_usd`) and what counts against it.

    `spent_usd` is every run's in this store (`spent_earlier_usd` of it
    before this run); `reserved_usd` the worst cases of the requests in
    flight.  `reached`: admission stopped, the rest is not started.
    """

    cap_usd: float = 0.0
    spent_usd: float = 0.0
    spent_earlier_usd: float = 0.0
    reserved_usd: float = 0.0
    reached: bool = False


class DriftState(StrEnum):
    LEARNING = "learning"  # still collecting the baseline
    OK = "ok"
    WARNING = "warning"  # past half the threshold: worth a look
    TRIPPED = "tripped"  # past the threshold; its gate's action was taken


@dataclass(frozen=True, slots=True)
class DriftMetric:
    """One monitored quality metric: its recent series against its gate's threshold.

    `values` are the metric's drift statistic (PSI, a z-score, a distance, …),
    one per evaluation, oldest first; `current` is the last of them.  `action`
    is what a trip does: "warn", "smaller_batches", "conservative", "pause" or
    "stop".
    """

    name: str
    label: str
    statistic: str  # what `values` measure, e.g. "psi", "z", "cosine distance"
    values: tuple[float, ...] = ()
    threshold: float = 0.0
    current: float | None = None
    state: DriftState = DriftState.LEARNING
    action: str = "warn"
    baseline_size: int = 0
    window_size: int = 0
    trips: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a front end shows, at one instant."""

    job_name: str = ""
    state: JobState = JobState.STARTING
    taken_at: float = 0.0  # wall clock
    elapsed_s: float = 0.0
    counts: Counts = field(default_factory=Counts)
    items_per_min: float = 0.0
    requests_per_min: float = 0.0
    tokens_per_s: float = 0.0
    # From the keys' limits, then more and more the measured rate (`engine.observe.eta`).
    eta_s: float | None = None
    eta_low_s: float | None = None
    eta_high_s: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None
    # Every answer's latency in fixed buckets (the percentiles are a recent window's).
    latency_histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    requests: int = 0
    rate_limited: int = 0
    errors_by_kind: tuple[tuple[str, int], ...] = ()
    errors_by_key: tuple[tuple[str, int], ...] = ()
    keys: tuple[KeySnapshot, ...] = ()
    concurrency: int = 0  # the ceiling: the operator's (`+`/`-` move it) or the preset's
    # The limit in force under it: what the keys' budgets can use (or adaptive
    # concurrency's value), halved by the memory breaker above its soft limit.
    effective_concurrency: int = 0
    in_flight_requests: int = 0
    preset: Preset = field(default_factory=Preset)
    preset_names: tuple[str, ...] = ()  # the presets the job knows by name
    memory: MemorySnapshot = field(default_factory=MemorySnapshot)
    cost_usd: float = 0.0
    cost_projected_usd: float | None = None
    prompt_tokens: int = 0  # as the answers' usage reported them, over the run
    completion_tokens: int = 0
    queues: QueueDepths = field(default_factory=QueueDepths)
    throughput_history: tuple[float, ...] = ()  # items/min, one value per second
    latency_history: tuple[float, ...] = ()  # p50 seconds, one value per second
    error_rate_history: tuple[float, ...] = ()  # failed attempts / attempts, per second
    drift: tuple[DriftMetric, ...] = ()  # empty until a drift monitor runs
    crawl: CrawlSnapshot | None = None  # set for crawl jobs
    events: tuple[Event, ...] = ()
    # Set for a worker of a job shared through Redis: the cluster's totals and workers.
    # The rest of the snapshot is this worker's own.
    cluster: ClusterView | None = None
    # Set for a batch-mode job: its Batch API batches and its cost at batch prices.
    batch: BatchRoute | None = None
    budget: BudgetSnapshot | None = None  # set when the job has `[job] budget_usd`
