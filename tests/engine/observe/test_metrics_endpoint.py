"""The metrics endpoint: a real job on the simulator, scraped over HTTP while it runs.

The engine runs in this process (as the other engine tests run it), the
endpoint publishes its snapshot on the loop, and the scrapes go through
prometheus-client's own HTTP server and come back through its own parser.
Every published snapshot is kept, so a scrape can be held to the very
snapshot it came from and to the moment it was taken.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from engine.config.settings import BUILTIN_PRESETS
from engine.engine import Engine
from engine.observe.metrics_address import MetricsAddress, MetricsBindError
from engine.observe.metrics_endpoint import MetricsEndpoint, serving_metrics
from engine.observe.snapshot import JobState, Snapshot
from tests.engine.conftest import job_config, sim_keys, write_records

INTERVAL_S = 0.2
LOAD_SLACK_S = 0.5  # the loop may be late on a shared machine; a hang guard, not a tolerance
KEYS = [("k1", 6000, 10_000_000), ("k2", 6000, 10_000_000)]

# Every family a document job with drift gates serves (as the parser names
# them: counters without `_total`).  A crawl job adds CRAWL_FAMILIES.
FAMILIES = {
    "crawldeck_job_info",
    "crawldeck_job_state",
    "crawldeck_job_elapsed_seconds",
    "crawldeck_snapshot_timestamp_seconds",
    "crawldeck_eta_seconds",
    "crawldeck_chunks",
    "crawldeck_chunks_read",
    "crawldeck_chunks_expected",
    "crawldeck_chunks_expected_estimated",
    "crawldeck_input_records_skipped",
    "crawldeck_queue_depth",
    "crawldeck_requests",
    "crawldeck_requests_rate_limited",
    "crawldeck_request_errors",
    "crawldeck_requests_in_flight",
    "crawldeck_key_requests",
    "crawldeck_key_errors",
    "crawldeck_key_rate_limited",
    "crawldeck_key_requests_in_flight",
    "crawldeck_key_requests_last_minute",
    "crawldeck_key_requests_per_minute_limit",
    "crawldeck_key_tokens_last_minute",
    "crawldeck_key_tokens_counted",
    "crawldeck_key_tokens_per_minute_limit",
    "crawldeck_key_cooldown_seconds",
    "crawldeck_key_state",
    "crawldeck_tokens",
    "crawldeck_cost_usd",
    "crawldeck_cost_projected_usd",
    "crawldeck_request_latency_seconds",
    "crawldeck_request_latency_recent_seconds",
    "crawldeck_concurrency_ceiling",
    "crawldeck_concurrency_effective",
    "crawldeck_memory_rss_bytes",
    "crawldeck_memory_limit_bytes",
    "crawldeck_memory_floor_bytes",
    "crawldeck_memory_state",
    "crawldeck_drift_statistic",
    "crawldeck_drift_threshold",
    "crawldeck_drift_gate_trips",
    "crawldeck_drift_baseline_samples",
    "crawldeck_drift_state",
}
CRAWL_FAMILIES = {
    "crawldeck_crawl_pages",
    "crawldeck_crawl_fetches_in_flight",
    "crawldeck_crawl_fetch_concurrency",
    "crawldeck_crawl_targets",
    "crawldeck_crawl_targets_started",
    "crawldeck_crawl_targets_finished",
    "crawldeck_crawl_fetched_bytes",
    "crawldeck_crawl_pages_extracting",
}


class Scrape:
    """One scrape's text, parsed with prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families: dict[str, Metric] = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, sample: str, **labels: str) -> float:
        """The value of the one sample of that name with exactly those labels."""
        found = [
            s.value
            for s in self.families[family_of(sample)].samples
            if s.name == sample and s.labels == labels
        ]
        assert len(found) == 1, f"{sample}{labels}: {found}"
        return found[0]

    def labelled(self, sample: str, label: str) -> dict[str, float]:
        """A family's samples by one label's value."""
        samples = self.families[family_of(sample)].samples
        return {s.labels[label]: s.value for s in samples if s.name == sample}


def family_of(sample: str) -> str:
    """The family a sample belongs to, as the parser names it."""
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


async def scrape(endpoint: MetricsEndpoint) -> Scrape:
    """GET /metrics over HTTP, off the loop (the engine keeps running meanwhile)."""

    def get() -> str:
        with urllib.request.urlopen(endpoint.url, timeout=10) as response:
            assert response.status == 200
            return str(response.read().decode("utf-8"))

    return Scrape(await asyncio.to_thread(get))


class Published:
    """Every snapshot the endpoint was given, and a signal when one passes a mark."""

    def __init__(self, engine: Engine, done_at_least: int) -> None:
        self.engine = engine
        self.snapshots: list[Snapshot] = []
        self.mid_run = asyncio.Event()
        self._mark = done_at_least

    def take(self) -> Snapshot:
        snap = self.engine.snapshot()
        self.snapshots.append(snap)
        if snap.state is JobState.RUNNING and snap.counts.done >= self._mark:
            self.mid_run.set()
        return snap

    def at(self, taken_at: float) -> Snapshot:
        (snap,) = [s for s in self.snapshots if s.taken_at == taken_at]
        return snap


def assert_scrape_is(scraped: Scrape, snap: Snapshot) -> None:
    """The scrape says what the snapshot says, figure by figure."""
    s = scraped
    assert s.value("crawldeck_snapshot_timestamp_seconds") == snap.taken_at
    assert s.value("crawldeck_job_state", crawldeck_job_state=str(snap.state)) == 1.0
    assert sum(s.labelled("crawldeck_job_state", "crawldeck_job_state").values()) == 1.0
    assert s.value("crawldeck_job_info", job_name=snap.job_name, preset=snap.preset.name) == 1.0
    c = snap.counts
    assert s.labelled("crawldeck_chunks", "state") == {
        "pending": c.pending,
        "in_flight": c.in_flight,
        "done": c.done,
        "failed": c.failed,
        "skipped": c.skipped,
        "cached": c.cached,
    }
    assert s.value("crawldeck_chunks_read_total") == c.seen
    assert s.value("crawldeck_chunks_expected") == c.total
    assert s.value("crawldeck_requests_total") == snap.requests
    assert s.value("crawldeck_requests_rate_limited_total") == snap.rate_limited
    assert s.labelled("crawldeck_request_errors_total", "kind") == dict(snap.errors_by_kind)
    assert s.value("crawldeck_requests_in_flight") == snap.in_flight_requests
    for key in snap.keys:
        labels = {"provider": key.provider, "key_alias": key.alias}
        assert s.value("crawldeck_key_requests_total", **labels) == key.requests
        assert s.value("crawldeck_key_errors_total", **labels) == key.errors
        assert s.value("crawldeck_key_rate_limited_total", **labels) == key.rate_limited
        assert s.value("crawldeck_key_requests_in_flight", **labels) == key.in_flight
        assert s.value("crawldeck_key_tokens_counted", **labels) == key.tpm_counted
        assert s.value("crawldeck_key_tokens_per_minute_limit", **labels) == key.tpm_limit
        state = {**labels, "crawldeck_key_state": key.state}
        assert s.value("crawldeck_key_state", **state) == 1.0
    assert s.labelled("crawldeck_tokens_total", "kind") == {
        "prompt": snap.prompt_tokens,
        "completion": snap.completion_tokens,
    }
    assert s.value("crawldeck_cost_usd_total") == pytest.approx(snap.cost_usd, rel=1e-12)
    h = snap.latency_histogram
    buckets = s.labelled("crawldeck_request_latency_seconds_bucket", "le")
    assert list(buckets.values()) == [*h.cumulative[:-1], h.count]
    assert list(buckets)[-1] == "+Inf"
    assert s.value("crawldeck_request_latency_seconds_count") == h.count
    assert s.value("crawldeck_request_latency_seconds_sum") == pytest.approx(h.sum_s)
    assert s.value("crawldeck_concurrency_ceiling") == snap.concurrency
    assert s.value("crawldeck_concurrency_effective") == snap.effective_concurrency
    assert s.value("crawldeck_memory_rss_bytes") == snap.memory.rss_bytes
    assert s.value("crawldeck_memory_limit_bytes", limit="hard") == snap.memory.hard_bytes
    assert s.value("crawldeck_memory_state", crawldeck_memory_state=snap.memory.state) == 1.0
    for metric in snap.drift:
        assert s.value("crawldeck_drift_threshold", gate=metric.name) == metric.threshold
        trips = {"gate": metric.name, "action": metric.action}
        assert s.value("crawldeck_drift_gate_trips_total", **trips) == metric.trips
        state = {"gate": metric.name, "crawldeck_drift_state": str(metric.state)}
        assert s.value("crawldeck_drift_state", **state) == 1.0


def assert_no_secret_in(text: str, snap: Snapshot, secrets: dict[str, str]) -> None:
    for secret in secrets.values():
        assert secret not in text
    for key in snap.keys:
        assert key.masked_secret not in text


async def run_with_endpoint(
    engine: Engine, endpoint: MetricsEndpoint, take: Callable[[], Snapshot]
) -> JobState:
    """The job to its end, its snapshots published meanwhile and once more at the end."""
    async with asyncio.TaskGroup() as tg:
        publishing = tg.create_task(endpoint.publish_every(take, INTERVAL_S))
        try:
            return await engine.run()
        finally:
            publishing.cancel()


async def test_a_scrape_mid_run_is_the_snapshot_of_that_moment_and_the_last_one_the_end(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.05, 0.15))
    slow = replace(BUILTIN_PRESETS["aggressive"], concurrency=2, batch_size=5)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 150), sim.base_url, KEYS, preset=slow
    )
    config = replace(config, preset=replace(slow, adaptive_concurrency=False))
    engine = Engine(config, secrets)
    published = Published(engine, done_at_least=40)

    async with serving_metrics(MetricsAddress("127.0.0.1", 0)) as endpoint:
        running = asyncio.create_task(run_with_endpoint(engine, endpoint, published.take))
        await asyncio.wait_for(published.mid_run.wait(), timeout=60)

        scrape_started = time.time()
        mid = await scrape(endpoint)
        scrape_ended = time.time()
        now = engine.snapshot()

        assert set(mid.families) >= FAMILIES, FAMILIES - set(mid.families)
        assert not CRAWL_FAMILIES & set(mid.families)  # not a crawl job
        source = published.at(mid.value("crawldeck_snapshot_timestamp_seconds"))
        assert_scrape_is(mid, source)
        # The snapshot served was the latest one: at most one interval old.
        assert source.taken_at >= scrape_started - INTERVAL_S - LOAD_SLACK_S
        assert source.taken_at <= scrape_ended
        assert source.state is JobState.RUNNING
        assert 0 < source.counts.done < 150
        assert source.requests <= now.requests and source.counts.done <= now.counts.done
        assert_no_secret_in(mid.text, now, secrets)

        state = await running
        end = await scrape(endpoint)  # served until the block ends: how the job ended

    final = engine.snapshot()
    assert state is JobState.DONE
    assert_scrape_is(end, published.snapshots[-1])
    assert end.value("crawldeck_job_state", crawldeck_job_state="done") == 1.0
    assert end.labelled("crawldeck_chunks", "state")["done"] == final.counts.done == 150
    assert end.value("crawldeck_requests_total") == final.requests == 30
    assert_no_secret_in(end.text, final, secrets)


async def test_the_latency_histogram_counts_every_answered_request(
    tmp_path: Path, simulator
) -> None:
    # A fifth of the requests fail with a 5xx and are retried: those are
    # requests, not answers, and have no latency to count.
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.01, 0.3), fault_5xx=0.2, seed=7)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 100), sim.base_url, KEYS
    )
    config = replace(config, preset=replace(config.preset, max_retries=20))
    engine = Engine(config, secrets)

    async with serving_metrics(MetricsAddress("127.0.0.1", 0)) as endpoint:
        state = await run_with_endpoint(engine, endpoint, engine.snapshot)
        end = await scrape(endpoint)

    assert state is JobState.DONE
    # Each answered request is in the store as the rows of its batch, which
    # carry its key and its latency: one (key, latency) pair per answer.
    with closing(sqlite3.connect(config.job.store)) as db:
        answers = db.execute(
            "SELECT count(*), sum(latency_ms) / 1000.0 "
            "FROM (SELECT DISTINCT key_alias, latency_ms FROM results)"
        ).fetchone()
    answered, latency_sum_s = answers
    assert answered >= 20  # 100 chunks in batches of 5
    assert end.value("crawldeck_request_latency_seconds_count") == answered
    assert end.value("crawldeck_request_latency_seconds_sum") == pytest.approx(latency_sum_s)
    snap = engine.snapshot()
    assert snap.latency_histogram.count == answered
    errors = sum(end.labelled("crawldeck_request_errors_total", "kind").values())
    assert errors > 0  # the 5xx were sent, counted as errors, and not answered
    assert answered + errors <= end.value("crawldeck_requests_total") == snap.requests
    assert sim.stats.answers >= answered  # the simulator's own count (it counts hedges too)
    buckets = end.labelled("crawldeck_request_latency_seconds_bucket", "le")
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert buckets["0.5"] == buckets["+Inf"] == answered  # every answer took at most 0.3 s


async def test_a_port_in_use_is_refused_naming_the_address(tmp_path: Path) -> None:
    async with serving_metrics(MetricsAddress("127.0.0.1", 0)) as taken:
        with pytest.raises(MetricsBindError) as refused:
            async with serving_metrics(taken.address):
                pass
    assert str(refused.value) == f"{taken.address}: address already in use"


async def test_nothing_is_served_before_the_first_snapshot_and_the_port_is_freed_after(
    tmp_path: Path,
) -> None:
    async with serving_metrics(MetricsAddress("127.0.0.1", 0)) as endpoint:
        empty = await scrape(endpoint)
        address = endpoint.address
    assert empty.families == {}
    async with serving_metrics(address) as again:  # the same port binds again at once
        assert again.address == address
