"""A snapshot as Prometheus metric families: what `--metrics` serves.

One more reader of the engine's `Snapshot`, like the dashboard and the
headless reporter: every figure here is in the snapshot, nothing is counted
again.  `SnapshotCollector` turns the latest snapshot it was given into
families when a scrape asks, so a scrape never calls into the engine; the
engine's loop hands it each new snapshot (`metrics_endpoint`).

Names follow Prometheus's conventions: a `crawldeck_` prefix, `_total` on
counters, base units (`_seconds`, `_bytes`; money in `_usd`), snake_case
labels.  Keys are labelled by provider and alias only — never by secret,
not even masked.  Counters are this process's run: they start at zero with
each run, which Prometheus's `rate()` reads as a restart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from engine.observe.snapshot import DriftState, JobState, Snapshot

if TYPE_CHECKING:
    from engine.cluster.cluster_view import ClusterView
    from engine.observe.batch_view import BatchRoute
    from engine.observe.snapshot import BudgetSnapshot, CrawlSnapshot, DriftMetric, KeySnapshot

_P = "crawldeck_"
_KEY_LABELS = ["provider", "key_alias"]
_KEY_STATES = ("ok", "cooling", "disabled")
_MEMORY_STATES = ("ok", "soft", "hard")


class SnapshotCollector(Collector):
    """Serves the snapshot last `publish`ed; nothing before the first one.

    `publish` is called on the engine's event loop and `collect` on the HTTP
    server's threads: the snapshot is immutable and handed over by one
    reference assignment, so a scrape reads one whole snapshot, never a mix.
    """

    def __init__(self) -> None:
        self._latest: Snapshot | None = None

    def publish(self, snap: Snapshot) -> None:
        self._latest = snap

    def collect(self) -> Iterator[Metric]:
        snap = self._latest
        if snap is not None:
            yield from snapshot_families(snap)


def snapshot_families(snap: Snapshot) -> Iterator[Metric]:
    """Every metric family of one snapshot."""
    yield from _job(snap)
    yield from _chunks(snap)
    yield from _requests(snap)
    yield from _keys(snap)
    yield from _tokens_and_cost(snap)
    yield from _latency(snap)
    yield from _concurrency_and_memory(snap)
    if snap.drift:
        yield from _drift(snap.drift)
    if snap.crawl is not None:
        yield from _crawl(snap.crawl)
    if snap.cluster is not None:
        yield from _cluster(snap.cluster, crawl=snap.crawl is not None)
    if snap.budget is not None:
        yield from _budget(snap.budget)
    if snap.batch is not None:
        yield from _batch(snap.batch)


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    """A gauge with one sample, or none while the snapshot has no value."""
    family = GaugeMetricFamily(_P + name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(_P + name, doc, value=value)


def _labelled(
    name: str,
    doc: str,
    label: str,
    samples: Iterable[tuple[str, float]],
    *,
    counter: bool = False,
) -> Metric:
    """A family with one label: a sample per (label value, value)."""
    kind = CounterMetricFamily if counter else GaugeMetricFamily
    family = kind(_P + name, doc, labels=[label])
    for value_of_label, value in samples:
        family.add_metric([value_of_label], value)
    return family


def _job(snap: Snapshot) -> Iterator[Metric]:
    info = InfoMetricFamily(_P + "job", "The job this process runs and the preset in force.")
    info.add_metric([], {"job_name": snap.job_name, "preset": snap.preset.name})
    yield info
    state = StateSetMetricFamily(_P + "job_state", "The job's state (1 for the current one).")
    state.add_metric([], {str(s): s is snap.state for s in JobState})
    yield state
    yield _gauge("job_elapsed_seconds", "The job's own wall time so far.", snap.elapsed_s)
    yield _gauge(
        "snapshot_timestamp_seconds",
        "When the snapshot these figures come from was taken (Unix time).",
        snap.taken_at,
    )
    yield _gauge(
        "eta_seconds", "Estimated time to the job's end (absent while it has none).", snap.eta_s
    )


def _chunks(snap: Snapshot) -> Iterator[Metric]:
    c = snap.counts
    yield _labelled(
        "chunks",
        "Chunks read so far by state: pending, in_flight, done (stored by this run), failed, "
        "skipped (stored before), cached (repeated in this input).",
        "state",
        (
            ("pending", c.pending),
            ("in_flight", c.in_flight),
            ("done", c.done),
            ("failed", c.failed),
            ("skipped", c.skipped),
            ("cached", c.cached),
        ),
    )
    yield _counter("chunks_read_total", "Chunks read from the input so far.", c.seen)
    yield _gauge(
        "chunks_expected",
        "Chunks in the whole input (absent until counted; projected for a crawl).",
        c.total,
    )
    yield _gauge(
        "chunks_expected_estimated",
        "1 while crawldeck_chunks_expected is a projection, not a count.",
        float(c.total_estimated),
    )
    yield _counter(
        "input_records_skipped_total",
        "Input records left out: unreadable, binary or without text.",
        c.records_skipped,
    )
    q = snap.queues
    yield _labelled(
        "queue_depth",
        "Work waiting between the stages, by queue.",
        "queue",
        (("chunks", q.chunks), ("batches", q.batches), ("retries", q.retries), ("store", q.store)),
    )


def _requests(snap: Snapshot) -> Iterator[Metric]:
    yield _counter("requests_total", "Chat requests sent to the providers.", snap.requests)
    yield _counter(
        "requests_rate_limited_total",
        "Requests refused with a 429 (rate limited).",
        snap.rate_limited,
    )
    yield _labelled(
        "request_errors",
        "Failed attempts by kind of failure.",
        "kind",
        snap.errors_by_kind,
        counter=True,
    )
    yield _gauge("requests_in_flight", "Requests in flight now.", snap.in_flight_requests)


def _keys(snap: Snapshot) -> Iterator[Metric]:
    for counter, name, doc, value_of in _KEY_FIGURES:
        family: CounterMetricFamily | GaugeMetricFamily
        if counter:
            family = CounterMetricFamily(_P + name, doc, labels=_KEY_LABELS)
        else:
            family = GaugeMetricFamily(_P + name, doc, labels=_KEY_LABELS)
        for key in snap.keys:
            value = value_of(key)
            if value is not None:
                family.add_metric([key.provider, key.alias], value)
        yield family
    state = StateSetMetricFamily(
        _P + "key_state", "Each key's state (1 for the current one).", labels=_KEY_LABELS
    )
    for key in snap.keys:
        state.add_metric([key.provider, key.alias], {s: key.state == s for s in _KEY_STATES})
    yield state


# (counter?, name, help, the figure of a key: None leaves its sample out)
_KEY_FIGURES: tuple[tuple[bool, str, str, Callable[[KeySnapshot], float | None]], ...] = (
    (True, "key_requests_total", "Requests sent on each key.", lambda k: k.requests),
    (True, "key_errors_total", "Failed attempts on each key.", lambda k: k.errors),
    (True, "key_rate_limited_total", "429s answered to each key.", lambda k: k.rate_limited),
    (False, "key_requests_in_flight", "Requests in flight on each key.", lambda k: k.in_flight),
    (
        False,
        "key_requests_last_minute",
        "Requests each key sent in the last minute.",
        lambda k: k.rpm_used,
    ),
    (
        False,
        "key_requests_per_minute_limit",
        "Each key's requests-per-minute limit, configured or learned (absent while unknown).",
        lambda k: k.rpm_limit,
    ),
    (
        False,
        "key_tokens_last_minute",
        "Tokens each key's answers used in the last minute.",
        lambda k: k.tpm_used,
    ),
    (
        False,
        "key_tokens_counted",
        "Tokens the provider counts against each key's tokens-per-minute limit now.",
        lambda k: k.tpm_counted,
    ),
    (
        False,
        "key_tokens_per_minute_limit",
        "Each key's tokens-per-minute limit, configured or learned (absent while unknown).",
        lambda k: k.tpm_limit,
    ),
    (
        False,
        "key_cooldown_seconds",
        "How long each key still cools after 429s.",
        lambda k: k.cooldown_s,
    ),
)


def _tokens_and_cost(snap: Snapshot) -> Iterator[Metric]:
    yield _labelled(
        "tokens",
        "Tokens the answers' usage reported, by kind (prompt, completion).",
        "kind",
        (("prompt", snap.prompt_tokens), ("completion", snap.completion_tokens)),
        counter=True,
    )
    yield _counter("cost_usd_total", "What the answers cost, in US dollars.", snap.cost_usd)
    yield _gauge(
        "cost_projected_usd",
        "The whole job's projected cost in US dollars (absent until there is a basis).",
        snap.cost_projected_usd,
    )


def _latency(snap: Snapshot) -> Iterator[Metric]:
    h = snap.latency_histogram
    buckets = [
        (floatToGoString(bound), count)
        for bound, count in zip(h.bounds, h.cumulative, strict=False)
    ]
    buckets.append(("+Inf", h.count))
    yield HistogramMetricFamily(
        _P + "request_latency_seconds",
        "How long answered requests took, from send to answer.",
        buckets=buckets,
        sum_value=h.sum_s,
    )
    recent = GaugeMetricFamily(
        _P + "request_latency_recent_seconds",
        "Latency percentiles over the last 2,000 answers, as the dashboard shows them.",
        labels=["quantile"],
    )
    for quantile, value in (
        ("0.5", snap.latency_p50_s),
        ("0.95", snap.latency_p95_s),
        ("0.99", snap.latency_p99_s),
    ):
        if value is not None:
            recent.add_metric([quantile], value)
    yield recent


def _concurrency_and_memory(snap: Snapshot) -> Iterator[Metric]:
    yield _gauge(
        "concurrency_ceiling",
        "The most requests in flight the operator (or the preset) allows.",
        snap.concurrency,
    )
    yield _gauge(
        "concurrency_effective",
        "The limit in force under the ceiling: what the keys' budgets can use, halved "
        "by the memory breaker above its soft limit.",
        snap.effective_concurrency,
    )
    m = snap.memory
    yield _gauge("memory_rss_bytes", "The process's resident memory.", m.rss_bytes)
    limits = GaugeMetricFamily(
        _P + "memory_limit_bytes",
        "Memory limits: soft (eases off), hard (no new work), container (cgroup memory.max).",
        labels=["limit"],
    )
    limits.add_metric(["soft"], m.soft_bytes)
    limits.add_metric(["hard"], m.hard_bytes)
    if m.limit_bytes is not None:
        limits.add_metric(["container"], m.limit_bytes)
    yield limits
    yield _gauge("memory_floor_bytes", "The process's own memory after start-up.", m.floor_bytes)
    state = StateSetMetricFamily(
        _P + "memory_state", "The memory breaker's state (1 for the current one)."
    )
    state.add_metric([], {s: m.state == s for s in _MEMORY_STATES})
    yield state


def _drift(metrics: tuple[DriftMetric, ...]) -> Iterator[Metric]:
    labels = ["gate"]
    statistic = GaugeMetricFamily(
        _P + "drift_statistic",
        "Each drift gate's latest statistic (PSI, z, …; absent while learning).",
        labels=["gate", "statistic"],
    )
    threshold = GaugeMetricFamily(
        _P + "drift_threshold", "The statistic at which each gate trips.", labels=labels
    )
    trips = CounterMetricFamily(
        _P + "drift_gate_trips",
        "Times each gate tripped, by the action it takes.",
        labels=["gate", "action"],
    )
    baseline = GaugeMetricFamily(
        _P + "drift_baseline_samples", "Samples in each gate's baseline.", labels=labels
    )
    state = StateSetMetricFamily(
        _P + "drift_state", "Each gate's state (1 for the current one).", labels=labels
    )
    for metric in metrics:
        if metric.current is not None:
            statistic.add_metric([metric.name, metric.statistic], metric.current)
        threshold.add_metric([metric.name], metric.threshold)
        trips.add_metric([metric.name, metric.action], metric.trips)
        baseline.add_metric([metric.name], metric.baseline_size)
        state.add_metric([metric.name], {str(s): s is metric.state for s in DriftState})
    yield from (statistic, threshold, trips, baseline, state)


def _crawl(crawl: CrawlSnapshot) -> Iterator[Metric]:
    yield _labelled(
        "crawl_pages",
        "Pages fetched (or given up on) by outcome: fetched, redirected, robots_blocked, …",
        "outcome",
        crawl.outcomes,
        counter=True,
    )
    yield _gauge("crawl_fetches_in_flight", "Fetches in flight now.", crawl.fetches_in_flight)
    yield _gauge(
        "crawl_fetch_concurrency",
        "The most fetches in flight across all hosts.",
        crawl.fetch_concurrency,
    )
    yield _gauge(
        "crawl_targets",
        "Sites (or URLs) in the crawl's input (absent until counted).",
        crawl.targets_total,
    )
    yield _counter(
        "crawl_targets_started_total", "Targets whose crawl began.", crawl.targets_started
    )
    yield _counter(
        "crawl_targets_finished_total", "Targets whose crawl ended.", crawl.targets_finished
    )
    yield _counter("crawl_fetched_bytes_total", "Bytes of pages fetched.", crawl.bytes)
    yield _gauge(
        "crawl_pages_extracting", "Pages waiting for or in text extraction.", crawl.extracting
    )


def _cluster(view: ClusterView, *, crawl: bool) -> Iterator[Metric]:
    """The job's cluster as this worker last read it from Redis (the run's own counters);
    a crawl job's sites too."""
    yield _labelled(
        "cluster_workers",
        "Workers of the job's run by state.",
        "state",
        (("live", view.live), ("lost", view.lost), ("ended", view.ended)),
    )
    yield _labelled(
        "cluster_chunks",
        "The run's chunks settled in Redis by outcome (enqueued: every chunk queued so far).",
        "state",
        (
            ("enqueued", view.chunks_enqueued),
            ("done", view.chunks_done),
            ("copied", view.chunks_copied),  # of the done
            ("failed", view.chunks_failed),
            ("in_flight", view.in_flight),
        ),
    )
    yield _gauge(
        "cluster_dead_letters", "Batches given up after too many deliveries.", view.dead_letters
    )
    yield _gauge(
        "cluster_requests_per_minute",
        "Requests a minute summed over the live workers.",
        view.requests_per_min,
    )
    if crawl:
        yield _labelled(
            "cluster_sites",
            "A crawl's sites in the run's targets stream, by state (enqueued: every one so far).",
            "state",
            (
                ("enqueued", view.sites_enqueued),
                ("crawled", view.sites_crawled),
                ("dead", view.sites_dead),
            ),
        )


def _budget(budget: BudgetSnapshot) -> Iterator[Metric]:
    """The job's spending cap (`[job] budget_usd`) and what counts against it."""
    yield _gauge("budget_usd", "The job's spending cap.", budget.cap_usd)
    yield _gauge(
        "budget_spent_usd", "Spent against the cap, earlier runs included.", budget.spent_usd
    )
    yield _gauge(
        "budget_reserved_usd",
        "The worst cases of the requests in flight, held against the cap.",
        budget.reserved_usd,
    )
    yield _gauge("budget_reached", "1 once admission stopped at the cap.", float(budget.reached))


def _batch(route: BatchRoute) -> Iterator[Metric]:
    """The Batch API route: open batches by state, and the job's cost at batch prices."""
    states = Counter(batch.state for batch in route.batches)
    yield _labelled(
        "batches_open",
        "Submitted batches not yet settled, by state.",
        "state",
        sorted(states.items()),
    )
    yield _labelled(
        "batches_ended",
        "Batches this run settled or gave up.",
        "outcome",
        (("settled", route.settled), ("abandoned", route.abandoned)),
        counter=True,
    )
    yield _counter(
        "batch_chunks_sent_online",
        "Chunks cut off from batches whose window was at risk, sent online.",
        route.chunks_sent_online,
    )
    yield _gauge(
        "batch_cost_projected_usd",
        "The whole job at batch prices (absent until answers say).",
        route.cost_projected_usd,
    )
