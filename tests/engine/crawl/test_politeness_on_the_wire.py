"""The politeness delay, as a site sees it: the gap between requests arriving at one host.

The sites record when each request reaches them.  The fetcher is given a
global limit of two requests in flight, a resolver that takes a while and
sites that answer slowly, so requests queue for a global slot, wait for DNS
and connect before their bytes go out — everything that once made the gaps
a site saw shorter than the delay.  robots.txt, redirects and the https →
http fallback are requests to the host too.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from engine.config.settings import CrawlSettings
from engine.crawl.fetcher import Fetcher
from engine.crawl.outcomes import FetchOutcome
from engine.simulation.site_server import SiteServer, site_kind

DELAY_S = 0.4
# The sites stamp a request when their handler runs, a loop turn or two after
# its bytes arrived; this covers that much, no more.
CLOCK_TOLERANCE_S = 0.01
DNS_S = 0.15
SLOW_S = 0.3

SETTINGS = CrawlSettings(
    concurrency=2,  # tight: most requests wait for a global slot
    per_host=2,
    politeness_delay_s=DELAY_S,
    connect_timeout_s=2.0,
    read_timeout_s=2.0,
    total_timeout_s=4.0,
    allow_addresses=("127.0.0.0/8",),
)


class SlowResolver:
    """Every lookup takes `DNS_S`, as a cold resolver cache does; all names are loopback."""

    def __init__(self) -> None:
        self.lookups = 0

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        await asyncio.sleep(DNS_S)
        return ["127.0.0.1"]


def first_site(kind: str) -> str:
    return next(f"site-{n:04d}.test" for n in range(1, 1000) if site_kind(n) == kind)


@pytest.fixture
async def sites() -> AsyncIterator[SiteServer]:
    async with SiteServer(slow_s=SLOW_S) as server:
        yield server


def gaps_by_host(sites: SiteServer) -> dict[str, list[float]]:
    return {
        host: [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        for host, arrivals in sites.stats.arrivals_by_host.items()
    }


async def test_every_host_sees_its_requests_at_least_the_delay_apart(sites: SiteServer) -> None:
    normal, slow, redirecting = first_site("normal"), first_site("slow"), first_site("redirect_ok")
    resolver = SlowResolver()
    async with Fetcher(SETTINGS, resolver=resolver) as fetcher, asyncio.TaskGroup() as group:
        # Bare targets: https first (refused by TLS: these sites speak plain http), then http.
        targets = [
            group.create_task(fetcher.fetch_target(f"{name}:{sites.port}"))
            for name in (normal, slow, redirecting)
        ]
        # More pages of the same hosts at once, so two requests to a host are often in flight.
        pages = [
            group.create_task(fetcher.fetch(f"http://{name}:{sites.port}/page/{k}"))
            for name in (normal, slow)
            for k in range(1, 4)
        ]

    assert [t.result().outcome for t in targets] == [
        FetchOutcome.FETCHED,
        FetchOutcome.FETCHED,
        FetchOutcome.REDIRECTED,
    ]
    assert all(p.result().outcome is FetchOutcome.FETCHED for p in pages)
    assert resolver.lookups > 3  # DNS was in the way, more than once
    assert sites.stats.max_in_flight == 2  # and the global limit was full
    seen = gaps_by_host(sites)
    # robots.txt, the home page and three pages; the redirect's host one more.
    assert {host: len(gaps) + 1 for host, gaps in seen.items()} == {
        normal: 5,
        slow: 5,
        redirecting: 3,
    }
    too_close = {
        host: [round(gap, 3) for gap in gaps if gap < DELAY_S - CLOCK_TOLERANCE_S]
        for host, gaps in seen.items()
    }
    assert too_close == {normal: [], slow: [], redirecting: []}, seen


async def test_a_request_that_waited_for_dns_holds_the_next_one_back(sites: SiteServer) -> None:
    """The delay counts from the moment the first request went out, not when it was planned."""
    name = first_site("normal")
    settings = replace(SETTINGS, respect_robots=False)
    async with Fetcher(settings, resolver=SlowResolver()) as fetcher:
        first = await fetcher.fetch(f"http://{name}:{sites.port}/page/1")
        second = await fetcher.fetch(f"http://{name}:{sites.port}/page/2")

    assert (first.outcome, second.outcome) == (FetchOutcome.FETCHED, FetchOutcome.FETCHED)
    (gap,) = gaps_by_host(sites)[name]
    assert gap >= DELAY_S - CLOCK_TOLERANCE_S
