"""The fetcher against real synthetic sites on loopback: outcomes, safety, manners, limits."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace

import pytest

from engine.config.settings import CrawlSettings
from engine.crawl.address_policy import StaticResolver
from engine.crawl.fetcher import Fetcher
from engine.crawl.outcomes import FetchOutcome
from engine.simulation.site_server import SITE_KINDS, SiteServer, site_kind, site_variant

# Timeouts small enough to keep the slow sites quick to test, large enough for a noisy machine.
SETTINGS = CrawlSettings(
    politeness_delay_s=0.0,
    per_host=4,
    connect_timeout_s=2.0,
    read_timeout_s=1.0,
    total_timeout_s=1.5,
    max_body_bytes=200_000,
    allow_addresses=("127.0.0.0/8",),
)
SLOW_S = 3.0  # longer than every timeout above

EXPECTED = {
    "normal": FetchOutcome.FETCHED,
    "slow": FetchOutcome.TIMED_OUT,
    "drip": FetchOutcome.TIMED_OUT,
    "broken_500": FetchOutcome.HTTP_ERROR,
    "broken_reset": FetchOutcome.REFUSED,
    "huge": FetchOutcome.TOO_LARGE,
    "redirect_loop": FetchOutcome.TOO_MANY_REDIRECTS,
    "robots_disallow": FetchOutcome.ROBOTS_BLOCKED,
    "robots_unavailable": FetchOutcome.ROBOTS_BLOCKED,
    "not_html": FetchOutcome.NOT_HTML,
    "empty": FetchOutcome.FETCHED,  # no text, but that is for extraction to find
    "redirect_ok": FetchOutcome.REDIRECTED,
}


def first_site(kind: str, variant: int | None = None, skip: int = 0) -> int:
    numbers = (
        n
        for n in range(1, 1000)
        if site_kind(n) == kind and (variant is None or site_variant(n) == variant)
    )
    for _ in range(skip):
        next(numbers)
    return next(numbers)


def host(n: int) -> str:
    return f"site-{n:04d}.test"


class CountingResolver:
    """Answers from a script, one answer per lookup (the last one repeats); counts lookups."""

    def __init__(self, answers: Sequence[Sequence[str]]) -> None:
        self.answers = [list(answer) for answer in answers]
        self.lookups: list[str] = []

    async def resolve(self, name: str, port: int) -> list[str]:
        answer = self.answers[min(len(self.lookups), len(self.answers) - 1)]
        self.lookups.append(name)
        return answer


@pytest.fixture
async def sites() -> AsyncIterator[SiteServer]:
    async with SiteServer(slow_s=SLOW_S) as server:
        yield server


@pytest.fixture
async def fetcher() -> AsyncIterator[Fetcher]:
    async with Fetcher(SETTINGS, resolver=StaticResolver(default="127.0.0.1")) as fetcher:
        yield fetcher


def test_every_kind_has_an_expected_outcome() -> None:
    assert set(EXPECTED) == set(SITE_KINDS)


@pytest.mark.parametrize("kind", SITE_KINDS)
async def test_every_site_kind_ends_in_its_outcome(
    kind: str, sites: SiteServer, fetcher: Fetcher
) -> None:
    result = await fetcher.fetch(f"http://{host(first_site(kind))}:{sites.port}/")

    assert result.outcome is EXPECTED[kind], result.error
    assert bool(result.body) is (kind in ("normal", "empty", "redirect_ok"))


async def test_a_page_comes_with_its_status_type_and_body(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    url = f"http://{host(first_site('normal'))}:{sites.port}/page/4"

    result = await fetcher.fetch(url)

    assert result.outcome is FetchOutcome.FETCHED
    assert (result.url, result.final_url, result.status, result.redirects) == (url, url, 200, 0)
    assert result.content_type.startswith("text/html")
    assert b"<title>" in result.body and b'href="/page/' in result.body
    assert result.error == ""


async def test_a_redirected_page_reports_where_it_ended(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    result = await fetcher.fetch(f"http://{host(first_site('redirect_ok'))}:{sites.port}/")

    assert result.outcome is FetchOutcome.REDIRECTED
    assert result.final_url.endswith("/home")
    assert result.redirects == 1
    assert b"<title>" in result.body


async def test_a_redirect_loop_stops_at_the_limit(sites: SiteServer) -> None:
    settings = replace(SETTINGS, max_redirects=3)
    n = first_site("redirect_loop")
    async with Fetcher(settings, resolver=StaticResolver(default="127.0.0.1")) as fetcher:
        result = await fetcher.fetch(f"http://{host(n)}:{sites.port}/")

    assert result.outcome is FetchOutcome.TOO_MANY_REDIRECTS
    assert result.redirects == 3
    assert sites.stats.requests_by_host[host(n)] == 1 + 4  # robots.txt, then 4 answers


async def test_a_slow_drip_body_is_cut_by_the_total_timeout(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    n = first_site("drip")

    result = await fetcher.fetch(f"http://{host(n)}:{sites.port}/")

    # Each drop arrives well within the read timeout: only the total deadline can end it.
    assert SETTINGS.read_timeout_s > SLOW_S / 10
    assert result.outcome is FetchOutcome.TIMED_OUT
    assert "within 1.5s" in result.error
    assert sites.stats.bytes_sent_by_host[host(n)] > 0


async def test_an_undeclared_oversize_body_stops_being_read_at_the_cap(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    n = first_site("huge", variant=1)  # chunked: no Content-Length to go by

    result = await fetcher.fetch(f"http://{host(n)}:{sites.port}/")

    assert result.outcome is FetchOutcome.TOO_LARGE
    assert "cap" in result.error
    read = fetcher.stats().bytes
    assert SETTINGS.max_body_bytes < read < SETTINGS.max_body_bytes + 1_000_000
    # What the server managed to push is bounded by socket buffers, not by the 1 GiB body.
    sent = sites.stats.bytes_sent_by_host[host(n)]
    assert sent < 64 * 1024 * 1024


async def test_a_declared_oversize_body_is_refused_before_reading(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    n = first_site("huge", variant=0)

    result = await fetcher.fetch(f"http://{host(n)}:{sites.port}/")

    assert result.outcome is FetchOutcome.TOO_LARGE
    assert "declares" in result.error
    assert fetcher.stats().bytes < 1000  # robots.txt only: not one byte of the page body
    assert sites.stats.bytes_sent_by_host[host(n)] < 64 * 1024 * 1024


# --- the address policy, applied at connect time ---------------------------------------------


async def test_without_the_allow_list_loopback_is_refused_and_nothing_connects(
    sites: SiteServer,
) -> None:
    settings = replace(SETTINGS, allow_addresses=())
    async with Fetcher(settings, resolver=StaticResolver(default="127.0.0.1")) as fetcher:
        by_name = await fetcher.fetch(f"http://{host(first_site('normal'))}:{sites.port}/")
        by_address = await fetcher.fetch(f"http://127.0.0.1:{sites.port}/")
        target = await fetcher.fetch_target(f"{host(first_site('normal'))}:{sites.port}")

    for result in (by_name, by_address, target):
        assert result.outcome is FetchOutcome.BLOCKED_ADDRESS
        assert "loopback" in result.error
    assert fetcher.connect_attempts == 0
    assert sites.stats.connections == 0
    assert sites.stats.requests == 0


async def test_a_name_that_rebinds_to_another_address_is_checked_on_each_connection(
    sites: SiteServer,
) -> None:
    # 127.0.0.2 stands in for a public address: admitted, and nothing listens there.
    # The name then rebinds to 127.0.0.1, where the sites are, which is not admitted.
    rebinding = CountingResolver([["127.0.0.2"], ["127.0.0.1"]])
    settings = replace(SETTINGS, allow_addresses=("127.0.0.2/32",), respect_robots=False)
    url = f"http://{host(first_site('normal'))}:{sites.port}/"
    async with Fetcher(settings, resolver=rebinding) as fetcher:
        first = await fetcher.fetch(url)
        second = await fetcher.fetch(url)

    # The first connection went to the address that was checked, not to a second lookup.
    assert first.outcome is FetchOutcome.REFUSED
    assert second.outcome is FetchOutcome.BLOCKED_ADDRESS
    assert len(rebinding.lookups) == 2
    assert fetcher.connect_attempts == 1
    assert sites.stats.connections == 0


async def test_a_name_with_any_refused_address_is_refused_whole(sites: SiteServer) -> None:
    mixed = CountingResolver([["127.0.0.1", "10.0.0.1"]])
    async with Fetcher(replace(SETTINGS, respect_robots=False), resolver=mixed) as fetcher:
        result = await fetcher.fetch(f"http://{host(first_site('normal'))}:{sites.port}/")

    assert result.outcome is FetchOutcome.BLOCKED_ADDRESS
    assert "10.0.0.1" in result.error
    assert sites.stats.connections == 0


@pytest.mark.parametrize(
    ("target", "outcome"),
    [
        ("http://169.254.169.254/latest/meta-data/", FetchOutcome.BLOCKED_ADDRESS),
        ("http://internal.test/admin", FetchOutcome.BLOCKED_ADDRESS),
        ("http://[::ffff:10.0.0.1]/", FetchOutcome.BLOCKED_ADDRESS),
        ("file:///etc/passwd", FetchOutcome.INVALID_URL),
    ],
)
async def test_a_redirect_to_a_forbidden_place_is_refused(
    target: str, outcome: FetchOutcome, sites: SiteServer
) -> None:
    resolver = StaticResolver({"internal.test": "10.0.0.1"}, default="127.0.0.1")
    base = f"http://{host(first_site('normal'))}:{sites.port}"
    async with Fetcher(SETTINGS, resolver=resolver) as fetcher:
        result = await fetcher.fetch(f"{base}/_redirect?to={target}")

    assert result.outcome is outcome
    assert result.redirects == 1
    assert result.body == b""
    assert fetcher.connect_attempts == 1  # the site itself, and nothing where it pointed


async def test_a_redirect_to_another_admitted_site_is_followed(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    other = f"http://{host(first_site('normal', skip=1))}:{sites.port}/page/9"
    base = f"http://{host(first_site('normal'))}:{sites.port}"

    result = await fetcher.fetch(f"{base}/_redirect?to={other}")

    assert result.outcome is FetchOutcome.REDIRECTED
    assert result.final_url == other


# --- other failures --------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://site-0002.test/", "http://", "not a url", "http:///x"])
async def test_urls_that_cannot_be_fetched_are_invalid(url: str, fetcher: Fetcher) -> None:
    assert (await fetcher.fetch(url)).outcome is FetchOutcome.INVALID_URL


async def test_a_name_that_does_not_resolve_is_a_dns_failure(sites: SiteServer) -> None:
    async with Fetcher(SETTINGS, resolver=StaticResolver({})) as fetcher:
        result = await fetcher.fetch(f"http://{host(first_site('normal'))}:{sites.port}/")

    assert result.outcome is FetchOutcome.DNS_FAILURE
    assert sites.stats.requests == 0


async def test_a_port_where_nothing_listens_is_refused(fetcher: Fetcher) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = await fetcher.fetch(f"http://{host(first_site('normal'))}:{port}/")

    assert result.outcome is FetchOutcome.REFUSED


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listen backlog is full, so a new connect is never answered."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # takes the one backlog place
        yield listener.getsockname()[1]


async def test_a_connect_nobody_answers_times_out(unanswered_port: int) -> None:
    settings = replace(SETTINGS, connect_timeout_s=0.2, respect_robots=False)
    async with Fetcher(settings, resolver=StaticResolver(default="127.0.0.1")) as fetcher:
        result = await fetcher.fetch(f"http://{host(first_site('normal'))}:{unanswered_port}/")

    assert result.outcome is FetchOutcome.TIMED_OUT
    assert result.error == "connect timed out"


async def test_the_total_timeout_also_bounds_a_connect(unanswered_port: int) -> None:
    settings = replace(SETTINGS, connect_timeout_s=5.0, total_timeout_s=0.3, respect_robots=False)
    async with Fetcher(settings, resolver=StaticResolver(default="127.0.0.1")) as fetcher:
        result = await fetcher.fetch(f"http://{host(first_site('normal'))}:{unanswered_port}/")

    assert result.outcome is FetchOutcome.TIMED_OUT
    assert "within 0.3s" in result.error


async def test_robots_txt_and_the_page_share_one_connection(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    name = host(first_site("normal"))

    for k in range(3):
        assert (await fetcher.fetch(f"http://{name}:{sites.port}/page/{k}")).outcome.has_page

    assert sites.stats.requests_by_host[name] == 4  # robots.txt and three pages
    assert sites.stats.connections == 1
    assert fetcher.connect_attempts == 1


# --- https first -----------------------------------------------------------------------------


async def test_a_target_falls_back_to_http_when_https_cannot_connect(
    sites: SiteServer, fetcher: Fetcher
) -> None:
    # The sites speak plain HTTP only, so the TLS handshake fails.
    result = await fetcher.fetch_target(f"{host(first_site('normal'))}:{sites.port}")

    assert result.outcome is FetchOutcome.FETCHED
    assert result.final_url == f"http://{host(first_site('normal'))}:{sites.port}/"
    assert dict(fetcher.stats().by_outcome)["fetched"] == 1
    assert dict(fetcher.stats().by_outcome)["tls_error"] == 0  # one target, one outcome


async def test_a_target_that_does_not_resolve_is_not_retried_over_http() -> None:
    resolver = CountingResolver([[]])
    async with Fetcher(SETTINGS, resolver=resolver) as fetcher:
        result = await fetcher.fetch_target("nowhere.test")

    assert result.outcome is FetchOutcome.DNS_FAILURE
    assert result.final_url.startswith("https://")
    assert len(resolver.lookups) == 1


@pytest.mark.parametrize("target", ["", "a/b", "user@host.test", "has space.test"])
async def test_a_target_that_is_not_a_host_name_is_invalid(target: str, fetcher: Fetcher) -> None:
    assert (await fetcher.fetch_target(target)).outcome is FetchOutcome.INVALID_URL


# --- manners and limits, measured at the server ----------------------------------------------


async def test_no_host_gets_more_than_per_host_requests_at_once() -> None:
    settings = replace(SETTINGS, per_host=2, read_timeout_s=5.0, total_timeout_s=5.0)
    async with (
        SiteServer(slow_s=0.4) as sites,
        Fetcher(settings, resolver=StaticResolver(default="127.0.0.1")) as fetcher,
    ):
        slow_hosts = [host(first_site("slow")), host(first_site("slow", skip=1))]
        async with asyncio.TaskGroup() as group:
            fetches = [
                group.create_task(fetcher.fetch(f"http://{name}:{sites.port}/page/{k}"))
                for name in slow_hosts
                for k in range(6)
            ]

    assert all(f.result().outcome is FetchOutcome.FETCHED for f in fetches)
    for name in slow_hosts:
        assert sites.stats.max_in_flight_by_host[name] == 2
    assert sites.stats.max_in_flight >= 3  # the two hosts did not wait for each other


async def test_requests_to_one_host_are_spaced_by_the_politeness_delay(
    sites: SiteServer,
) -> None:
    delay = 0.3
    settings = replace(SETTINGS, politeness_delay_s=delay, per_host=2)
    name = host(first_site("normal"))
    async with (
        Fetcher(settings, resolver=StaticResolver(default="127.0.0.1")) as fetcher,
        asyncio.TaskGroup() as group,
    ):
        for k in range(4):
            group.create_task(fetcher.fetch(f"http://{name}:{sites.port}/page/{k}"))

    arrivals = list(sites.stats.arrivals_by_host[name])
    assert len(arrivals) == 5  # robots.txt and four pages
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) >= delay - 0.01  # the server stamps a request a loop turn after it arrives


async def test_a_larger_crawl_delay_from_robots_txt_wins() -> None:
    settings = replace(SETTINGS, politeness_delay_s=0.05)
    async with (
        SiteServer(slow_s=SLOW_S, crawl_delay_s=1) as sites,
        Fetcher(settings, resolver=StaticResolver(default="127.0.0.1")) as fetcher,
    ):
        name = host(first_site("normal"))
        async with asyncio.TaskGroup() as group:
            for k in range(2):
                group.create_task(fetcher.fetch(f"http://{name}:{sites.port}/page/{k}"))

    arrivals = list(sites.stats.arrivals_by_host[name])
    assert len(arrivals) == 3
    assert arrivals[2] - arrivals[1] > 0.8
    assert arrivals[1] - arrivals[0] > 0.8  # the delay applies from the first known rules on


async def test_the_global_limit_holds_and_changes_at_once() -> None:
    settings = replace(
        SETTINGS, concurrency=1, respect_robots=False, read_timeout_s=5.0, total_timeout_s=5.0
    )
    async with (
        SiteServer(slow_s=0.5) as sites,
        Fetcher(settings, resolver=StaticResolver(default="127.0.0.1")) as fetcher,
    ):
        urls = [f"http://{host(first_site('slow', skip=i))}:{sites.port}/" for i in range(4)]
        async with asyncio.TaskGroup() as group:
            fetches = [group.create_task(fetcher.fetch(url)) for url in urls]
            await sites.wait_for_requests(1)
            assert fetcher.stats().in_flight == 1
            assert sites.stats.in_flight == 1
            fetcher.set_concurrency(4)
            assert fetcher.stats().concurrency == 4

    assert all(f.result().outcome is FetchOutcome.FETCHED for f in fetches)
    assert sites.stats.max_in_flight >= 3  # the waiting three started while the first ran


async def test_stats_count_outcomes_pages_and_bytes(sites: SiteServer, fetcher: Fetcher) -> None:
    for kind in ("normal", "not_html", "broken_500", "redirect_ok"):
        await fetcher.fetch(f"http://{host(first_site(kind))}:{sites.port}/")

    stats = fetcher.stats()
    counts = dict(stats.by_outcome)
    assert set(counts) == {outcome.value for outcome in FetchOutcome}
    assert counts["fetched"] == counts["not_html"] == counts["http_error"] == 1
    assert counts["redirected"] == 1
    assert sum(counts.values()) == 4
    assert stats.pages == 2
    assert stats.bytes > 2000
    assert stats.in_flight == 0
    assert stats.concurrency == SETTINGS.concurrency


def test_the_user_agent_names_the_crawler_and_its_contact() -> None:
    assert CrawlSettings(contact="ops@example.org").user_agent_header.endswith(
        " (+ops@example.org)"
    )
    plain = CrawlSettings().user_agent_header
    assert plain.startswith("crawldeck/")
    assert "(" not in plain and "{" not in plain


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        CrawlSettings(concurrency=0)
    with pytest.raises(ValueError):
        CrawlSettings(total_timeout_s=0)
