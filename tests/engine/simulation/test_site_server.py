"""The synthetic site server: many sites on one port, each behaving as its number says."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from selectolax.lexbor import LexborHTMLParser

from engine.crawl.outcomes import FetchOutcome
from engine.simulation.site_server import (
    HUGE_BODY_BYTES,
    SITE_KINDS,
    SiteServer,
    expected_outcome,
    serve_sites,
    site_kind,
    site_number,
    site_variant,
    synthetic_domains,
)


def first_site(kind: str, variant: int | None = None) -> int:
    return next(
        n
        for n in range(1, 1000)
        if site_kind(n) == kind and (variant is None or site_variant(n) == variant)
    )


@pytest.fixture
async def sites() -> AsyncIterator[SiteServer]:
    async with SiteServer(slow_s=0.3) as server:
        yield server


@pytest.fixture
async def client(sites: SiteServer) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(
        base_url=f"http://127.0.0.1:{sites.port}", timeout=5.0, trust_env=False
    ) as client:
        yield client


async def get(client: httpx2.AsyncClient, n: int, path: str = "/") -> httpx2.Response:
    return await client.get(path, headers={"Host": f"site-{n:04d}.test"})


@pytest.mark.parametrize("start", [1, 17, 3175])
def test_every_run_of_thirty_numbers_holds_each_kind_and_mostly_normal_sites(start: int) -> None:
    kinds = Counter(site_kind(n) for n in range(start, start + 30))

    assert set(kinds) == set(SITE_KINDS)
    assert kinds["normal"] == 30 - (len(SITE_KINDS) - 1)
    assert kinds["normal"] > 15


def test_synthetic_domains_are_numbered_from_one_and_distinct() -> None:
    domains = synthetic_domains(3204)

    assert domains[0] == "site-0001.test"
    assert domains[-1] == "site-3204.test"
    assert len(set(domains)) == 3204
    assert [site_number(d) for d in domains[:3]] == [1, 2, 3]


def test_site_numbers_come_only_from_synthetic_host_names() -> None:
    assert site_number("site-0042.test:8080") == 42
    assert site_number("SITE-0042.TEST") == 42
    assert site_number("example.com") is None
    assert site_number("site-42.test.evil.example") is None


async def test_an_ordinary_site_serves_an_article_with_boilerplate_and_links(
    client: httpx2.AsyncClient,
) -> None:
    n = first_site("normal")
    response = await get(client, n, "/page/7")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    tree = LexborHTMLParser(response.text)
    title = tree.css_first("title")
    assert title is not None and title.text().strip()
    assert tree.css_first("nav") is not None and tree.css_first("footer") is not None
    paragraphs = tree.css("article p")
    assert len(paragraphs) >= 3
    assert sum(len(p.text().split()) for p in paragraphs) > 60
    links = [a.attributes.get("href") or "" for a in tree.css("article a")]
    assert 3 <= len(links) <= 5
    assert all(link.startswith("/page/") for link in links)


async def test_pages_are_the_same_every_time_and_differ_between_pages_and_sites(
    client: httpx2.AsyncClient,
) -> None:
    n = first_site("normal")
    other = next(m for m in range(n + 1, 1000) if site_kind(m) == "normal")

    first = (await get(client, n, "/page/1")).content
    assert (await get(client, n, "/page/1")).content == first
    assert (await get(client, n, "/page/2")).content != first
    assert (await get(client, other, "/page/1")).content != first


async def test_unknown_hosts_get_404_and_stats_are_served_to_them(
    sites: SiteServer, client: httpx2.AsyncClient
) -> None:
    assert (await client.get("/", headers={"Host": "example.com"})).status_code == 404

    stats = (await client.get("/_stats")).json()
    assert stats["requests"] == 2
    assert stats["connections"] >= 1


async def test_arrivals_are_served_to_other_hosts_oldest_first(
    sites: SiteServer, client: httpx2.AsyncClient
) -> None:
    n = first_site("normal")
    for k in range(3):
        await get(client, n, f"/page/{k}")

    arrivals = (await client.get("/_arrivals")).json()
    times = arrivals[f"site-{n:04d}.test"]
    assert len(times) == 3 and times == sorted(times)
    assert times == list(sites.stats.arrivals_by_host[f"site-{n:04d}.test"])


def test_every_kind_has_an_expected_outcome_and_timeouts_decide_the_slow_ones() -> None:
    quick = {"slow_s": 2.0, "read_timeout_s": 1.0, "total_timeout_s": 1.5}
    patient = {"slow_s": 2.0, "read_timeout_s": 4.0, "total_timeout_s": 6.0}
    for kind in SITE_KINDS:
        assert isinstance(expected_outcome(kind, **patient), FetchOutcome)
    assert expected_outcome("slow", **quick) is FetchOutcome.TIMED_OUT
    assert expected_outcome("slow", **patient) is FetchOutcome.FETCHED
    assert expected_outcome("drip", **patient) is FetchOutcome.TIMED_OUT
    with pytest.raises(ValueError, match="drip-fed"):
        expected_outcome("drip", slow_s=2.0, read_timeout_s=4.0, total_timeout_s=60.0)
    with pytest.raises(ValueError, match="unknown site kind"):
        expected_outcome("teapot", **patient)


async def test_robots_txt_depends_on_the_kind(client: httpx2.AsyncClient) -> None:
    normal = await get(client, first_site("normal"), "/robots.txt")
    assert normal.status_code == 200 and "Disallow: /private/" in normal.text

    closed = await get(client, first_site("robots_disallow"), "/robots.txt")
    assert closed.status_code == 200 and "Disallow: /\n" in closed.text

    assert (await get(client, first_site("robots_unavailable"), "/robots.txt")).status_code == 503
    assert (await get(client, first_site("broken_500"), "/robots.txt")).status_code == 404


async def test_misbehaving_kinds_misbehave(client: httpx2.AsyncClient) -> None:
    assert (await get(client, first_site("broken_500"))).status_code == 500

    loop = await get(client, first_site("redirect_loop"), "/loop/4")
    assert loop.status_code == 302 and loop.headers["location"] == "/loop/5"

    moved = await get(client, first_site("redirect_ok"))
    assert moved.status_code == 301 and moved.headers["location"] == "/home"
    assert (await get(client, first_site("redirect_ok"), "/home")).status_code == 200

    pdf = await get(client, first_site("not_html", variant=0))
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    png = await get(client, first_site("not_html", variant=1))
    assert png.headers["content-type"] == "image/png"

    empty = LexborHTMLParser((await get(client, first_site("empty"))).text)
    assert empty.body is not None and empty.body.text().strip() == ""


async def test_a_reset_site_drops_the_connection(client: httpx2.AsyncClient) -> None:
    with pytest.raises((httpx2.ReadError, httpx2.RemoteProtocolError)):
        await get(client, first_site("broken_reset"))


async def test_a_huge_site_streams_far_more_than_any_cap(client: httpx2.AsyncClient) -> None:
    n = first_site("huge", variant=0)
    async with client.stream("GET", "/", headers={"Host": f"site-{n:04d}.test"}) as response:
        assert int(response.headers["content-length"]) == HUGE_BODY_BYTES
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > 20_000_000:
                break
    assert received > 20_000_000


async def test_a_slow_site_answers_only_after_its_delay(
    sites: SiteServer, client: httpx2.AsyncClient
) -> None:
    n = first_site("slow")
    loop = asyncio.get_running_loop()
    started = loop.time()
    quick = await get(client, first_site("normal"))
    quick_s = loop.time() - started
    started = loop.time()
    slow = await get(client, n)
    slow_s = loop.time() - started

    assert quick.status_code == slow.status_code == 200
    assert slow_s > quick_s
    assert slow_s >= sites.slow_s * 0.9


async def test_the_server_counts_requests_and_requests_in_flight(
    sites: SiteServer, client: httpx2.AsyncClient
) -> None:
    n = first_site("slow")
    async with asyncio.TaskGroup() as group:
        for k in range(4):
            group.create_task(get(client, n, f"/page/{k}"))
        await sites.wait_for_requests(4)
        assert sites.stats.in_flight == 4

    host = f"site-{n:04d}.test"
    assert sites.stats.requests_by_host[host] == 4
    assert sites.stats.max_in_flight_by_host[host] == 4
    assert sites.stats.in_flight == 0
    assert len(sites.stats.arrivals_by_host[host]) == 4


async def test_serve_sites_yields_a_port_that_serves() -> None:
    async with serve_sites(slow_s=0.1) as port, httpx2.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{port}/", headers={"Host": "site-0002.test"})
    assert response.status_code == 200


async def test_the_command_line_writes_the_domain_list_and_serves(tmp_path: Path) -> None:
    domains_file = tmp_path / "domains.txt"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.simulation.site_server",
        "--port",
        "0",
        "--count",
        "25",
        "--domains-file",
        str(domains_file),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            announced = json.loads(await process.stdout.readline())
        port = announced["port"]
        lines = domains_file.read_text(encoding="utf-8").splitlines()
        assert lines[0] == f"site-0001.test:{port}"
        assert len(lines) == 25
        async with httpx2.AsyncClient(trust_env=False) as client:
            response = await client.get(
                f"http://127.0.0.1:{port}/page/1", headers={"Host": "site-0002.test"}
            )
        assert response.status_code == 200
    finally:
        process.terminate()
        async with asyncio.timeout(20):
            code = await process.wait()
    assert code == 0
