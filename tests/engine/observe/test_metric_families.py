"""The cluster, budget and batch parts of a snapshot, as Prometheus reads them.

Families are made from a snapshot as the endpoint serves it, written in the
text format and read back with prometheus-client's own parser.
"""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from engine.cluster.cluster_view import ClusterView
from engine.observe.batch_view import BatchRoute, SubmittedBatch
from engine.observe.metric_families import SnapshotCollector
from engine.observe.snapshot import BudgetSnapshot, CrawlSnapshot, Snapshot


def scraped(snap: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of `snap`'s families by name and labels, as a scraper reads them."""
    collector = SnapshotCollector()
    collector.publish(snap)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_workers_snapshot_says_the_cluster_in_the_runs_own_counters() -> None:
    view = ClusterView(
        live=3, lost=1, ended=0, chunks_enqueued=12_000, chunks_done=4_920,
        chunks_failed=14, chunks_copied=120, in_flight=96, dead_letters=1,
        requests_per_min=298.5,
    )  # fmt: skip
    samples = scraped(Snapshot(cluster=view))

    assert samples[("crawldeck_cluster_workers", (("state", "live"),))] == 3
    assert samples[("crawldeck_cluster_workers", (("state", "lost"),))] == 1
    assert samples[("crawldeck_cluster_chunks", (("state", "done"),))] == 4_920
    assert samples[("crawldeck_cluster_chunks", (("state", "copied"),))] == 120
    assert samples[("crawldeck_cluster_chunks", (("state", "failed"),))] == 14
    assert samples[("crawldeck_cluster_chunks", (("state", "enqueued"),))] == 12_000
    assert samples[("crawldeck_cluster_dead_letters", ())] == 1
    assert samples[("crawldeck_cluster_requests_per_minute", ())] == 298.5


def test_a_crawl_shared_by_a_cluster_counts_its_sites_by_state() -> None:
    view = ClusterView(live=2, sites_enqueued=400, sites_crawled=120, sites_dead=3)
    samples = scraped(Snapshot(cluster=view, crawl=CrawlSnapshot()))

    assert samples[("crawldeck_cluster_sites", (("state", "enqueued"),))] == 400
    assert samples[("crawldeck_cluster_sites", (("state", "crawled"),))] == 120
    assert samples[("crawldeck_cluster_sites", (("state", "dead"),))] == 3
    # A documents job has no sites to count.
    assert not any(name == "crawldeck_cluster_sites" for name, _ in scraped(Snapshot(cluster=view)))


def test_a_budget_shows_its_cap_what_is_spent_and_what_is_held() -> None:
    budget = BudgetSnapshot(cap_usd=5.0, spent_usd=4.25, reserved_usd=0.5, reached=True)
    samples = scraped(Snapshot(budget=budget))

    assert samples[("crawldeck_budget_usd", ())] == 5.0
    assert samples[("crawldeck_budget_spent_usd", ())] == 4.25
    assert samples[("crawldeck_budget_reserved_usd", ())] == 0.5
    assert samples[("crawldeck_budget_reached", ())] == 1.0


def test_open_batches_are_counted_by_state_and_the_ended_by_outcome() -> None:
    def batch(state: str) -> SubmittedBatch:
        return SubmittedBatch("batch_1", "k1", state, 50, 10, 0, 250, 30.0, 86_400.0)

    route = BatchRoute(
        batches=(batch("in_progress"), batch("in_progress"), batch("validating")),
        settled=4,
        abandoned=1,
        chunks_sent_online=35,
        cost_projected_usd=0.1004,
    )
    samples = scraped(Snapshot(batch=route))

    assert samples[("crawldeck_batches_open", (("state", "in_progress"),))] == 2
    assert samples[("crawldeck_batches_open", (("state", "validating"),))] == 1
    assert samples[("crawldeck_batches_ended_total", (("outcome", "settled"),))] == 4
    assert samples[("crawldeck_batches_ended_total", (("outcome", "abandoned"),))] == 1
    assert samples[("crawldeck_batch_cost_projected_usd", ())] == 0.1004
    assert samples[("crawldeck_batch_chunks_sent_online_total", ())] == 35


def test_a_job_without_them_has_none_of_their_families() -> None:
    names = {name for name, _labels in scraped(Snapshot())}

    assert not {n for n in names if n.startswith(("crawldeck_cluster", "crawldeck_budget"))}
    assert not {n for n in names if n.startswith("crawldeck_batch")}
