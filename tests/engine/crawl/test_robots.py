"""robots.txt per RFC 9309: fetched once per origin, 4xx allows, 5xx and silence forbid."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from engine.config.settings import CrawlSettings
from engine.crawl.address_policy import StaticResolver
from engine.crawl.fetcher import Fetcher
from engine.crawl.outcomes import FetchOutcome, FetchResult
from engine.crawl.robots import MAX_ROBOTS_BYTES, RobotsCache, robots_url
from engine.simulation.site_server import SiteServer, site_kind

AGENT = "crawldeck/0.1.0"


def answer(
    status: int | None,
    body: str = "",
    outcome: FetchOutcome = FetchOutcome.FETCHED,
    error: str = "",
) -> FetchResult:
    if status is not None and status >= 300 and outcome is FetchOutcome.FETCHED:
        outcome = FetchOutcome.HTTP_ERROR
    return FetchResult(
        url="http://h.test/robots.txt",
        final_url="http://h.test/robots.txt",
        outcome=outcome,
        status=status,
        content_type="text/plain",
        body=body.encode(),
        redirects=0,
        elapsed_s=0.0,
        error=error,
    )


class CannedRobots:
    """A robots.txt source that gives the same answer every time and counts the asks."""

    def __init__(self, result: FetchResult, gate: asyncio.Event | None = None) -> None:
        self.result = result
        self.gate = gate
        self.urls: list[str] = []

    async def __call__(self, url: str) -> FetchResult:
        self.urls.append(url)
        if self.gate is not None:
            await self.gate.wait()
        return self.result


async def test_rules_from_a_2xx_answer_apply() -> None:
    robots = RobotsCache(CannedRobots(answer(200, "User-agent: *\nDisallow: /private/\n")))

    assert await robots.allowed("http://h.test/page/1", AGENT)
    assert not await robots.allowed("http://h.test/private/1", AGENT)


def test_robots_url_is_on_the_same_origin() -> None:
    assert robots_url("https://H.test:8443/a/b?c") == "https://h.test:8443/robots.txt"


async def test_crawl_delay_is_read_per_host() -> None:
    robots = RobotsCache(CannedRobots(answer(200, "User-agent: *\nCrawl-delay: 3\n")))

    assert robots.crawl_delay("h.test") is None  # not fetched yet
    await robots.allowed("http://h.test/", AGENT)
    assert robots.crawl_delay("h.test") == 3.0
    assert (await robots.rules_for("http://h.test/")).crawl_delay(AGENT) == 3.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
async def test_a_4xx_answer_allows_everything(status: int) -> None:
    robots = RobotsCache(CannedRobots(answer(status, "User-agent: *\nDisallow: /\n")))

    assert await robots.allowed("http://h.test/anything", AGENT)


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_a_5xx_or_429_answer_disallows_everything(status: int) -> None:
    robots = RobotsCache(CannedRobots(answer(status)))

    rules = await robots.rules_for("http://h.test/")
    assert not rules.allows("http://h.test/", AGENT)
    assert rules.failure is None  # the server did answer


@pytest.mark.parametrize(
    "outcome",
    [
        FetchOutcome.REFUSED,
        FetchOutcome.TIMED_OUT,
        FetchOutcome.DNS_FAILURE,
        FetchOutcome.TLS_ERROR,
    ],
)
async def test_an_unreachable_robots_txt_disallows_and_keeps_the_cause(
    outcome: FetchOutcome,
) -> None:
    failed = answer(None, outcome=outcome, error="connect failed")
    robots = RobotsCache(CannedRobots(failed))

    rules = await robots.rules_for("http://h.test/page")
    assert not rules.allows("http://h.test/page", AGENT)
    assert rules.failure == failed


async def test_too_many_redirects_counts_as_unavailable() -> None:
    robots = RobotsCache(CannedRobots(answer(302, outcome=FetchOutcome.TOO_MANY_REDIRECTS)))

    assert await robots.allowed("http://h.test/", AGENT)


@pytest.mark.parametrize(
    ("padding", "late_rule_applies"), [(1000, True), (MAX_ROBOTS_BYTES, False)]
)
async def test_only_the_first_500_kib_are_read(padding: int, late_rule_applies: bool) -> None:
    body = "User-agent: *\nDisallow: /early\n#" + "x" * padding + "\nDisallow: /late\n"
    robots = RobotsCache(CannedRobots(answer(200, body)))

    assert not await robots.allowed("http://h.test/early", AGENT)
    assert await robots.allowed("http://h.test/late", AGENT) is not late_rule_applies


async def test_concurrent_callers_share_one_fetch() -> None:
    gate = asyncio.Event()
    source = CannedRobots(answer(200, "User-agent: *\nDisallow: /x\n"), gate)
    robots = RobotsCache(source)

    async with asyncio.TaskGroup() as group:
        asks = [group.create_task(robots.allowed(f"http://h.test/p{i}", AGENT)) for i in range(20)]
        await asyncio.sleep(0)
        gate.set()

    assert all(ask.result() for ask in asks)
    assert source.urls == ["http://h.test/robots.txt"]
    assert robots.fetches == 1


async def test_when_the_fetching_caller_is_cancelled_a_waiter_takes_over() -> None:
    gate = asyncio.Event()
    source = CannedRobots(answer(200, ""), gate)
    robots = RobotsCache(source)

    leader = asyncio.create_task(robots.allowed("http://h.test/a", AGENT))
    await asyncio.sleep(0)  # the leader starts the fetch
    follower = asyncio.create_task(robots.allowed("http://h.test/b", AGENT))
    await asyncio.sleep(0)  # the follower waits for it
    leader.cancel()
    await asyncio.sleep(0)
    gate.set()

    assert await follower
    assert leader.cancelled()
    assert len(source.urls) == 2


async def test_the_cache_keeps_the_most_recent_hosts_only() -> None:
    source = CannedRobots(answer(200, ""))
    robots = RobotsCache(source, max_hosts=3)
    for name in ("a", "b", "c", "a", "d"):  # touching "a" again keeps it over "b"
        await robots.allowed(f"http://{name}.test/", AGENT)

    assert len(robots) == 3
    await robots.allowed("http://a.test/", AGENT)
    assert len(source.urls) == 4
    await robots.allowed("http://b.test/", AGENT)
    assert len(source.urls) == 5


async def test_rules_expire_after_their_ttl() -> None:
    now = [0.0]
    source = CannedRobots(answer(200, ""))
    robots = RobotsCache(source, ttl_s=60.0, clock=lambda: now[0])

    await robots.allowed("http://h.test/", AGENT)
    now[0] = 59.0
    await robots.allowed("http://h.test/", AGENT)
    assert len(source.urls) == 1
    now[0] = 61.0
    await robots.allowed("http://h.test/", AGENT)
    assert len(source.urls) == 2


@pytest.mark.parametrize(
    "result", [answer(503), answer(None, outcome=FetchOutcome.TIMED_OUT, error="connect timed out")]
)
async def test_an_unreachable_robots_txt_is_asked_again_much_sooner(result: FetchResult) -> None:
    now = [0.0]
    source = CannedRobots(result)
    robots = RobotsCache(source, ttl_s=3600.0, unreachable_ttl_s=60.0, clock=lambda: now[0])

    await robots.allowed("http://h.test/", AGENT)
    now[0] = 59.0
    await robots.allowed("http://h.test/", AGENT)
    assert len(source.urls) == 1
    now[0] = 61.0
    await robots.allowed("http://h.test/", AGENT)
    assert len(source.urls) == 2


# --- against the synthetic sites -------------------------------------------------------------


def first_site(kind: str) -> int:
    return next(n for n in range(1, 1000) if site_kind(n) == kind)


@pytest.fixture
async def sites() -> AsyncIterator[SiteServer]:
    async with SiteServer(slow_s=3.0) as server:
        yield server


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    settings = CrawlSettings(
        politeness_delay_s=0.0,
        per_host=8,
        connect_timeout_s=2.0,
        read_timeout_s=2.0,
        total_timeout_s=4.0,
        allow_addresses=("127.0.0.0/8",),
    )
    async with Fetcher(settings, resolver=StaticResolver(default="127.0.0.1")) as fetcher:
        yield fetcher


async def test_a_site_that_disallows_everything_gets_only_its_robots_txt_fetched(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    host = f"site-{first_site('robots_disallow'):04d}.test"

    result = await fetcher.fetch(f"http://{host}:{sites.port}/")

    assert result.outcome is FetchOutcome.ROBOTS_BLOCKED
    assert sites.stats.requests_by_host[host] == 1
    assert sites.stats.robots_by_host[host] == 1


async def test_a_site_whose_robots_txt_answers_503_is_not_crawled(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    host = f"site-{first_site('robots_unavailable'):04d}.test"

    result = await fetcher.fetch(f"http://{host}:{sites.port}/page/2")

    assert result.outcome is FetchOutcome.ROBOTS_BLOCKED
    assert sites.stats.requests_by_host[host] == 1


async def test_a_missing_robots_txt_allows_the_pages(sites: SiteServer, fetcher: Fetcher) -> None:
    host = f"site-{first_site('broken_500'):04d}.test"  # its robots.txt is a 404

    result = await fetcher.fetch(f"http://{host}:{sites.port}/")

    assert result.outcome is FetchOutcome.HTTP_ERROR
    assert result.status == 500


async def test_paths_disallowed_by_robots_are_skipped_and_the_rest_fetched(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    base = f"http://site-{first_site('normal'):04d}.test:{sites.port}"

    assert (await fetcher.fetch(f"{base}/private/3")).outcome is FetchOutcome.ROBOTS_BLOCKED
    assert (await fetcher.fetch(f"{base}/page/3")).outcome is FetchOutcome.FETCHED


async def test_concurrent_pages_of_one_site_share_one_robots_fetch(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    host = f"site-{first_site('normal'):04d}.test"

    async with asyncio.TaskGroup() as group:
        fetches = [
            group.create_task(fetcher.fetch(f"http://{host}:{sites.port}/page/{k}"))
            for k in range(1, 9)
        ]

    assert all(f.result().outcome is FetchOutcome.FETCHED for f in fetches)
    assert sites.stats.robots_by_host[host] == 1
    assert sites.stats.requests_by_host[host] == 9
