"""A crawl job shared by workers through a real Redis: every site once, by one worker.

Engines joined to one job in one event loop (what `crawldeck run` does in
several processes), the synthetic sites on loopback, the real simulator and
a real `redis-server`; and the targets stream on its own, read by two
consumers, for what a dead worker leaves behind.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from engine.cluster.stream_replies import entry_fields
from engine.cluster.target_stream import TargetStream
from engine.config.settings import CrawlSettings, JobConfig
from engine.crawl.targets import normalise_target
from engine.engine import Engine
from engine.observe.events import EventBus, EventKind
from engine.observe.snapshot import JobState
from engine.simulation.site_server import SiteServer, site_kind, synthetic_domains
from tests.engine.cluster.test_cluster_job import (
    elsewhere,
    results,
    run_together,
    shared,
    until,
    workers,
)
from tests.engine.conftest import job_config, sim_keys
from tests.redis_server import RedisServer

GUARD_S = 30.0
KEYS = [("k1", 60_000, 100_000_000)]
PAGES_A_SITE = 3
SLOW_S = 1.0


@pytest.fixture
async def sites() -> AsyncIterator[SiteServer]:
    async with SiteServer(slow_s=SLOW_S) as server:
        yield server


def hosts_of(kind: str, count: int) -> list[str]:
    return [h for n, h in enumerate(synthetic_domains(200), start=1) if site_kind(n) == kind][
        :count
    ]


async def crawl_job(
    tmp_path: Path, simulator: Callable[..., object], port: int, hosts: list[str], redis_url: str
) -> tuple[JobConfig, dict[str, str]]:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.01, 0.02))  # type: ignore[misc]
    targets = tmp_path / "domains.txt"
    targets.write_text("".join(f"{host}:{port}\n" for host in hosts), encoding="utf-8")
    config, secrets = job_config(tmp_path, tmp_path / "unused.txt", sim.base_url, KEYS)  # type: ignore[attr-defined]
    crawl = CrawlSettings(
        targets=str(targets),
        concurrency=2,
        per_host=1,
        politeness_delay_s=0.0,
        connect_timeout_s=1.0,
        read_timeout_s=3.0,
        total_timeout_s=3.0,
        max_depth=1,
        max_pages_per_domain=PAGES_A_SITE,
        allow_addresses=("127.0.0.0/8",),
        resolve={"*.test": "127.0.0.1"},
        contact="ops@example.com",
        extract_workers=1,
    )
    config = replace(config, job=replace(config.job, input="", chunk_tokens=120), crawl=crawl)
    return shared(config, redis_url, visibility_timeout_s=1.0), secrets


def pages(store: Path) -> dict[str, int]:
    """Each stored page's URL, and how many rows it has."""
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT url, count(*) FROM pages GROUP BY url").fetchall()
    return {url: n for url, n in rows}


def one_result_per_chunk(store: Path) -> tuple[int, int]:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT count(*), count(DISTINCT chunk_id) FROM results").fetchone()


async def test_two_workers_crawl_every_site_once_and_the_job_ends_with_one_result_per_chunk(
    redis_server: RedisServer, tmp_path: Path, simulator, sites: SiteServer
) -> None:
    hosts = hosts_of("normal", 10)
    config, secrets = await crawl_job(tmp_path, simulator, sites.port, hosts, redis_server.url)
    other = elsewhere(config, tmp_path / "other" / "results.db")
    a, b, states = await run_together(config, other, secrets, GUARD_S)

    assert states == [JobState.DONE, JobState.DONE], (a.failure_reason, b.failure_reason)
    crawled = [e.crawl for e in (a.snapshot(), b.snapshot())]
    assert all(c is not None and c.targets_finished > 0 for c in crawled), "both crawled"
    assert sum(c.targets_finished for c in crawled if c is not None) == len(hosts)
    # One worker a site: each fetched its robots.txt once, and each page once.
    stats = sites.stats
    assert {h: stats.robots_by_host[h] for h in hosts} == {h: 1 for h in hosts}
    assert all(stats.requests_by_host[h] == 1 + PAGES_A_SITE for h in hosts)
    assert max(stats.max_in_flight_by_host[h] for h in hosts) == 1
    # Every page's outcome reached the one store, through the collector beside it.
    store = Path(config.job.store)
    stored = pages(store)
    assert len(stored) == len(hosts) * PAGES_A_SITE and set(stored.values()) == {1}
    assert not pages(Path(other.job.store)), "the other worker's store holds nothing"
    # Exactly one result per chunk, and every chunk the crawl made has it.
    chunks = a.stats.seen + b.stats.seen
    assert one_result_per_chunk(store) == (chunks, chunks)
    assert results(store) == chunks > 0
    assert f"{len(hosts)}/{len(hosts)} sites crawled (0 dead letters)" in a.summary_line()
    view = b.snapshot().cluster  # the cluster's crawl, counted across workers
    assert view is not None
    assert (view.sites_enqueued, view.sites_crawled, view.sites_dead) == (len(hosts), len(hosts), 0)


async def test_a_rerun_fetches_nothing_again_and_the_worker_beside_the_store_replays_it(
    redis_server: RedisServer, tmp_path: Path, simulator, sites: SiteServer
) -> None:
    """A finished crawl run again: the sites it crawled come back from the store, not the
    web — replayed by the worker beside the store (the pages' text is only there), while
    the worker on another machine, which cannot read it, fetches nothing."""
    hosts = hosts_of("normal", 8)
    config, secrets = await crawl_job(tmp_path, simulator, sites.port, hosts, redis_server.url)
    other = elsewhere(config, tmp_path / "other" / "results.db")
    first = await run_together(config, other, secrets, GUARD_S)
    assert first[2] == [JobState.DONE, JobState.DONE]
    crawled_first = [e.snapshot().crawl for e in first[:2]]
    assert all(c is not None and c.targets_finished > 0 for c in crawled_first), "both crawled"
    fetched = sum(sites.stats.requests_by_host[h] for h in hosts)
    store = Path(config.job.store)
    stored, answered = pages(store), one_result_per_chunk(store)

    here, away, states = await run_together(config, other, secrets, GUARD_S)

    assert states == [JobState.DONE, JobState.DONE], (here.failure_reason, away.failure_reason)
    assert sum(sites.stats.requests_by_host[h] for h in hosts) == fetched, "nothing fetched"
    beside, elsewhere_crawl = here.snapshot().crawl, away.snapshot().crawl
    assert beside is not None and elsewhere_crawl is not None
    assert beside.resumed == len(hosts) and elsewhere_crawl.targets_finished == 0
    assert pages(store) == stored and one_result_per_chunk(store) == answered


async def test_a_rerun_with_no_worker_beside_the_store_fetches_the_sites_again_and_ends(
    redis_server: RedisServer, tmp_path: Path, simulator, sites: SiteServer
) -> None:
    """The sites crawled before wait for a worker beside the store to replay them; when
    none comes within the visibility timeout, the worker elsewhere takes them over and
    fetches them — the job ends either way."""
    hosts = hosts_of("normal", 4)
    config, secrets = await crawl_job(tmp_path, simulator, sites.port, hosts, redis_server.url)
    other = elsewhere(config, tmp_path / "other" / "results.db")
    first = await run_together(config, other, secrets, GUARD_S)
    assert first[2] == [JobState.DONE, JobState.DONE]
    fetched = sum(sites.stats.requests_by_host[h] for h in hosts)

    async with workers(other) as (alone,):
        away = Engine(other, secrets, cluster=alone)
        async with asyncio.timeout(GUARD_S):
            assert await away.run() is JobState.DONE, away.failure_reason

    assert sum(sites.stats.requests_by_host[h] for h in hosts) == 2 * fetched
    reclaimed = [e for e in away.events.recent() if e.kind is EventKind.BATCH_RECLAIMED]
    assert {e.data["target"] for e in reclaimed} == {f"https://{h}:{sites.port}/" for h in hosts}
    assert all("no worker beside the store replayed it" in e.message for e in reclaimed)


async def test_two_workers_crawling_sites_on_one_host_keep_its_delay_between_them(
    redis_server: RedisServer, tmp_path: Path, simulator, sites: SiteServer
) -> None:
    """Six targets on one host, read by two workers: each crawls some of them, and the
    host still sees its requests spaced by the politeness delay — the host's turns are
    taken from one clock in Redis, not from each worker's own."""
    (host,) = hosts_of("normal", 1)
    delay = 0.25
    config, secrets = await crawl_job(tmp_path, simulator, sites.port, [host], redis_server.url)
    assert config.crawl is not None
    paths = ["/", *(f"/page/{n}" for n in range(1, 6))]
    Path(config.crawl.targets).write_text(
        "".join(f"{host}:{sites.port}{path}\n" for path in paths), encoding="utf-8"
    )
    crawl = replace(config.crawl, politeness_delay_s=delay, max_pages_per_domain=1)
    config = replace(config, crawl=crawl)
    other = elsewhere(config, tmp_path / "other" / "results.db")
    a, b, states = await run_together(config, other, secrets, GUARD_S)

    assert states == [JobState.DONE, JobState.DONE], (a.failure_reason, b.failure_reason)
    crawled = [e.crawl for e in (a.snapshot(), b.snapshot())]
    assert all(c is not None and c.targets_finished > 0 for c in crawled), "both crawled"
    arrivals = sorted(sites.stats.arrivals()[host])
    assert len(arrivals) == len(paths) + 2  # each page once, and each worker's robots.txt
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) >= delay * 0.9, gaps


async def test_a_site_a_stopped_worker_was_crawling_is_taken_over_and_crawled_to_its_end(
    redis_server: RedisServer, tmp_path: Path, simulator, sites: SiteServer
) -> None:
    slow, normal = hosts_of("slow", 1), hosts_of("normal", 3)
    config, secrets = await crawl_job(
        tmp_path, simulator, sites.port, slow + normal, redis_server.url
    )
    async with workers(config) as (first,):
        a = Engine(config, secrets, cluster=first)
        running = asyncio.create_task(a.run())
        await until(lambda: sites.stats.requests_by_host[slow[0]] >= 2)  # robots, then the page
        a.stop()  # mid-fetch of the slow site: it is not acknowledged
        async with asyncio.timeout(GUARD_S):
            assert await running is JobState.STOPPED

    async with workers(config) as (second,):
        b = Engine(config, secrets, cluster=second)
        async with asyncio.timeout(GUARD_S):
            assert await b.run() is JobState.DONE, b.failure_reason

    # The sites a held unfinished (the slow one among them) were taken over by b.
    taken = {e.data["target"] for e in b.events.recent() if e.kind is EventKind.BATCH_RECLAIMED}
    assert f"https://{slow[0]}:{sites.port}/" in taken
    stored = pages(Path(config.job.store))
    assert len(stored) == (len(slow) + len(normal)) * PAGES_A_SITE
    count, distinct = one_result_per_chunk(Path(config.job.store))
    assert count == distinct > 0


async def test_a_target_left_by_a_dead_consumer_is_reclaimed_then_dead_lettered(
    redis_client: Redis,
) -> None:
    """The targets stream alone: consumer a reads a site and dies; b takes it over after
    the visibility timeout, and once it has been delivered too often it is given up."""
    events = EventBus()
    made = {
        name: TargetStream(
            redis_client,
            "job:run:1",
            name,
            visibility_s=0.3,
            max_deliveries=2,
            block_s=0.1,
            events=events,
        )
        for name in ("a", "b", "c")
    }
    a, b, c = made.values()
    site = normalise_target("site-0001.test", 1)
    await a.enqueue([site])
    await b.enqueue([site, site])  # another worker's copy of the file adds nothing
    await b.input_read()
    assert (await a.progress()).targets == 1

    assert await a.next_target() == site
    async with asyncio.timeout(5):
        assert await b.next_target() == site  # a never finished it: taken over
        assert b.reclaimed == 1
        assert await c.next_target() is None  # b died too: a third delivery is a dead letter
    assert c.dead_lettered == 1
    progress = await c.progress()
    assert (progress.settled, progress.dead, progress.over) == (0, 1, True)
    dead = await redis_client.xrange(c.streams.crawl_dead) or []
    assert [entry_fields(fields)["url"] for _id, fields in dead] == [site.url]
    kinds = [e.kind for e in events.recent()]
    assert kinds == [EventKind.BATCH_RECLAIMED, EventKind.DEAD_LETTER]


async def test_a_finished_target_carries_its_page_rows_and_ends_the_crawl_for_everyone(
    redis_client: Redis,
) -> None:
    a = TargetStream(redis_client, "job:run:1", "a", visibility_s=5.0, block_s=0.1)
    b = TargetStream(redis_client, "job:run:1", "b", visibility_s=5.0, block_s=0.1)
    site = normalise_target("site-0002.test", 1)
    await a.enqueue([site])
    await a.input_read()
    held = await a.next_target()
    assert held == site
    waiting = asyncio.create_task(b.next_target())
    await asyncio.sleep(0.3)
    assert not waiting.done(), "b waits while a crawls the last site"

    await a.finished(site, ['{"kind":"page"}'])

    async with asyncio.timeout(5):
        assert await waiting is None
    entries = await redis_client.xrange(a.streams.results) or []
    assert [entry_fields(fields)["rows"] for _id, fields in entries] == ['[{"kind":"page"}]']
    assert (await a.progress()).settled == 1


async def test_a_worker_whose_targets_file_is_missing_ends_failed_and_enqueues_nothing(
    redis_server: RedisServer, tmp_path: Path, simulator, sites: SiteServer
) -> None:
    """A machine without the targets file: its worker cannot tell the cluster the crawl's
    input is complete, so it leaves (failed, saying why) instead of waiting for sites."""
    config, secrets = await crawl_job(tmp_path, simulator, sites.port, [], redis_server.url)
    assert config.crawl is not None
    missing = replace(config, crawl=replace(config.crawl, targets=str(tmp_path / "absent.txt")))
    async with workers(missing) as (worker,):
        engine = Engine(missing, secrets, cluster=worker)
        async with asyncio.timeout(GUARD_S):
            assert await engine.run() is JobState.FAILED
        progress = await worker.redis.hgetall(f"{worker.scope.prefix}:work:progress")

    assert engine.failure_reason.startswith("crawl targets: ")
    assert b"input_complete" not in progress, "the other workers' crawl goes on"


async def test_a_dead_consumers_target_behind_many_live_ones_is_still_found(
    redis_client: Redis,
) -> None:
    """XAUTOCLAIM looks at ten pending entries a claim: the scan must go on past a live
    worker's sites (kept alive, oldest first) to the dead one's."""

    def stream(name: str) -> TargetStream:
        return TargetStream(redis_client, "job:run:1", name, visibility_s=0.3, block_s=0.1)

    live, dead, taker = stream("live"), stream("dead"), stream("taker")
    sites = [normalise_target(f"site-{n:04d}.test", n) for n in range(1, 15)]
    await live.enqueue(sites)
    await live.input_read()
    held = [await live.next_target() for _ in range(13)]
    left = await dead.next_target()
    assert left == sites[13] and held == sites[:13]
    async with asyncio.TaskGroup() as tg:
        keeping = tg.create_task(live.run_keep_alive())
        async with asyncio.timeout(5):
            assert await taker.next_target() == left
        keeping.cancel()
    assert taker.reclaimed == 1
