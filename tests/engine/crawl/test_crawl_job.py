"""A crawl job end to end: synthetic sites → fetch → extract → LLM (simulator) → store.

Real site server and provider simulator on loopback, the real engine, a
real SQLite store; names are pinned to 127.0.0.1 through the job's own
`resolve` setting and admitted by its `allow_addresses`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from engine.config.settings import CrawlSettings
from engine.crawl import extraction
from engine.crawl.extraction import ExtractedPage, PageFunction, extract_page
from engine.crawl.outcomes import FetchOutcome
from engine.engine import Engine
from engine.observe.headless_reporter import status_line
from engine.observe.snapshot import JobState
from engine.simulation.simulator import ProviderSimulator
from engine.simulation.site_server import (
    SITE_KINDS,
    SiteServer,
    expected_outcome,
    site_kind,
    synthetic_domains,
)
from tests.engine.conftest import job_config, sim_keys

KEYS = (("k1", 60_000, 100_000_000),)
SITES = 60  # two of every kind of site
SLOW_S = 0.4  # a slow site answers within the timeouts; a drip-fed one does not

EXPECTED_ROOT_OUTCOME = {
    "normal": FetchOutcome.FETCHED,
    "slow": FetchOutcome.FETCHED,
    "drip": FetchOutcome.TIMED_OUT,
    "broken_500": FetchOutcome.HTTP_ERROR,
    "broken_reset": FetchOutcome.REFUSED,
    "huge": FetchOutcome.TOO_LARGE,
    "redirect_loop": FetchOutcome.TOO_MANY_REDIRECTS,
    "robots_disallow": FetchOutcome.ROBOTS_BLOCKED,
    "robots_unavailable": FetchOutcome.ROBOTS_BLOCKED,
    "not_html": FetchOutcome.NOT_HTML,
    "empty": FetchOutcome.EMPTY_TEXT,
    "redirect_ok": FetchOutcome.REDIRECTED,
}
WITH_TEXT = {"normal", "slow", "redirect_ok"}


@pytest.fixture
async def sites() -> AsyncIterator[SiteServer]:
    async with SiteServer(slow_s=SLOW_S) as server:
        yield server


def crawl_settings(tmp_path: Path, port: int, **changes: object) -> CrawlSettings:
    targets = tmp_path / "domains.txt"
    lines = ["# one bare domain a line: https is tried first, then http", "not a domain!"]
    lines += [f"{name}:{port}" for name in synthetic_domains(SITES)]
    lines.append(f"{synthetic_domains(1)[0]}:{port}")  # a duplicate, dropped
    targets.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = CrawlSettings(
        targets=str(targets),
        concurrency=16,
        per_host=2,
        politeness_delay_s=0.0,
        connect_timeout_s=1.0,
        read_timeout_s=1.0,
        total_timeout_s=1.5,
        max_body_bytes=200_000,
        allow_addresses=("127.0.0.0/8",),
        resolve={"*.test": "127.0.0.1"},
        contact="ops@example.com",
        extract_workers=1,
    )
    return replace(settings, **changes)  # type: ignore[arg-type]


async def crawl_engine(
    tmp_path: Path,
    simulator: Callable[..., object],
    sites: SiteServer,
    page_function: PageFunction | None = None,
    **changes: object,
) -> tuple[Engine, dict[str, str]]:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.05))  # type: ignore[misc]
    assert isinstance(sim, ProviderSimulator)
    config, secrets = job_config(tmp_path, tmp_path / "unused.txt", sim.base_url, KEYS)
    config = replace(
        config,
        job=replace(config.job, input="", chunk_tokens=300),
        crawl=crawl_settings(tmp_path, sites.port, **changes),
    )
    return Engine(config, secrets, page_function=page_function), secrets


def stored_pages(store: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(store) as conn:
        rows = conn.execute("SELECT url, outcome, text FROM pages WHERE depth = 0").fetchall()
    return {url: (outcome, text) for url, outcome, text in rows}


def stored_results(store: Path) -> list[str]:
    with sqlite3.connect(store) as conn:
        return [row[0] for row in conn.execute("SELECT source FROM results")]


async def test_every_site_gets_its_outcome_and_every_page_with_text_its_results(
    tmp_path: Path, simulator: Callable[..., object], sites: SiteServer
) -> None:
    engine, _ = await crawl_engine(tmp_path, simulator, sites)

    assert await engine.run() is JobState.DONE

    store = Path(engine.config.job.store)
    pages = stored_pages(store)
    assert len(pages) == SITES  # the duplicate and the bad line are not sites
    for n, name in enumerate(synthetic_domains(SITES), start=1):
        outcome, text = pages[f"https://{name}:{sites.port}/"]
        kind = site_kind(n)
        assert outcome == EXPECTED_ROOT_OUTCOME[kind], (name, kind)
        assert bool(text) is (kind in WITH_TEXT), (name, kind)

    # Every page with text went through the LLM; nothing else did.
    sources = set(stored_results(store))
    with_text = {url for url, (_, text) in pages.items() if text}
    assert sources == with_text
    snap = engine.snapshot()
    assert snap.counts.done == len(stored_results(store)) > 0
    assert not snap.counts.total_estimated and snap.counts.total == snap.counts.seen

    crawl = snap.crawl
    assert crawl is not None
    assert (crawl.targets_total, crawl.targets_finished) == (SITES, SITES)
    outcomes = dict(crawl.outcomes)
    assert outcomes.pop(str(FetchOutcome.INVALID_URL)) == 1  # "not a domain!"
    expected = Counter(str(EXPECTED_ROOT_OUTCOME[site_kind(n)]) for n in range(1, SITES + 1))
    assert outcomes == dict(expected)
    assert any(
        e.message.endswith("domains.txt:2: skipped target: contains whitespace")
        for e in snap.events
    )


async def test_a_rerun_fetches_only_the_sites_that_may_answer_now(
    tmp_path: Path, simulator: Callable[..., object], sites: SiteServer
) -> None:
    first, secrets = await crawl_engine(tmp_path, simulator, sites)
    assert await first.run() is JobState.DONE
    store = Path(first.config.job.store)
    results_before = sorted(stored_results(store))
    requests_before = sites.stats.requests

    again = Engine(first.config, secrets)
    assert await again.run() is JobState.DONE

    # Timeouts, refusals and HTTP errors are tried again; every other site is replayed
    # from the store, and nothing is sent to the LLM twice.
    retried = sum(
        1
        for n in range(1, SITES + 1)
        if EXPECTED_ROOT_OUTCOME[site_kind(n)]
        in (FetchOutcome.TIMED_OUT, FetchOutcome.REFUSED, FetchOutcome.HTTP_ERROR)
    )
    crawl = again.snapshot().crawl
    assert crawl is not None
    assert crawl.resumed == SITES - retried
    assert sorted(stored_results(store)) == results_before
    assert again.snapshot().counts.done == 0
    assert sites.stats.requests - requests_before < 10 * retried  # retried sites only


async def test_fetch_concurrency_is_a_control_of_its_own(
    tmp_path: Path, simulator: Callable[..., object], sites: SiteServer
) -> None:
    engine, _ = await crawl_engine(tmp_path, simulator, sites, concurrency=3)
    llm_before = engine.snapshot().concurrency

    task = asyncio.create_task(engine.run())
    while engine.snapshot().crawl is None:
        await asyncio.sleep(0.01)
    engine.set_fetch_concurrency(9)
    snap = engine.snapshot()
    assert snap.crawl is not None and snap.crawl.fetch_concurrency == 9
    assert snap.concurrency == llm_before  # the LLM stage keeps its own limit
    assert any(e.message == "fetch concurrency 3 → 9" for e in snap.events)
    assert await task is JobState.DONE
    assert sites.stats.max_in_flight <= 9


def test_site_kinds_are_all_covered_by_this_job() -> None:
    assert {site_kind(n) for n in range(1, SITES + 1)} == set(SITE_KINDS)


def test_the_site_server_expects_the_outcomes_this_crawl_stores(tmp_path: Path) -> None:
    """What the benchmark checks its crawl against is what this real crawl is held to."""
    crawl = crawl_settings(tmp_path, 0)
    timeouts = {"read_timeout_s": crawl.read_timeout_s, "total_timeout_s": crawl.total_timeout_s}
    expected = {kind: expected_outcome(kind, slow_s=SLOW_S, **timeouts) for kind in SITE_KINDS}
    assert expected == EXPECTED_ROOT_OUTCOME


async def test_same_site_links_are_followed_to_the_depth_and_page_cap(
    tmp_path: Path, simulator: Callable[..., object], sites: SiteServer
) -> None:
    engine, _ = await crawl_engine(tmp_path, simulator, sites, max_depth=1, max_pages_per_domain=3)

    assert await engine.run() is JobState.DONE

    with sqlite3.connect(engine.config.job.store) as conn:
        rows = conn.execute("SELECT target, url, depth, outcome FROM pages").fetchall()
    by_target: dict[str, list[tuple[str, int, str]]] = {}
    for target, url, depth, outcome in rows:
        by_target.setdefault(target, []).append((url, depth, outcome))
    normal = [
        f"https://{name}:{sites.port}/"
        for n, name in enumerate(synthetic_domains(SITES), start=1)
        if site_kind(n) == "normal"
    ]
    for target in normal:
        pages = by_target[target]
        assert len(pages) == 3, pages  # the page cap, though each page links to more
        assert {depth for _, depth, _ in pages} == {0, 1}  # never deeper than max_depth
        host = target.split("//")[1].split("/")[0].split(":")[0]
        assert all(host in url for url, _, _ in pages)  # same site only
    # Followed pages go through the LLM like the first ones.
    assert len(set(stored_results(Path(engine.config.job.store)))) > len(normal)


# The first normal site: its page is one whose extraction never ends.
HANGING_SITE = next(n for n in range(1, SITES + 1) if site_kind(n) == "normal")
HANGING_HOST = synthetic_domains(SITES)[HANGING_SITE - 1]


def extract_except_on_the_hanging_site(html: bytes, url: str, content_type: str) -> ExtractedPage:
    """`extract_page`, except on HANGING_HOST's pages, where it never returns, as
    trafilatura doesn't on some pathological pages."""
    if urlsplit(url).hostname == HANGING_HOST:
        threading.Event().wait()
    return extract_page(html, url, content_type)


async def test_a_page_whose_extraction_never_ends_is_given_up_and_the_job_ends(
    tmp_path: Path, simulator: Callable[..., object], sites: SiteServer
) -> None:
    engine, secrets = await crawl_engine(
        tmp_path,
        simulator,
        sites,
        page_function=extract_except_on_the_hanging_site,
        extract_timeout_s=1.0,
    )

    async with asyncio.timeout(120):  # before the time limit, this waited for ever
        assert await engine.run() is JobState.DONE

    store = Path(engine.config.job.store)
    pages = stored_pages(store)
    hanging_url = f"https://{HANGING_HOST}:{sites.port}/"
    assert pages.pop(hanging_url) == (str(FetchOutcome.EXTRACTION_TIMED_OUT), None)
    with sqlite3.connect(store) as conn:
        (error,) = conn.execute("SELECT error FROM pages WHERE url = ?", (hanging_url,)).fetchone()
    assert error == "extraction ran past 1 s; its worker was replaced"
    # Every other site was fetched and extracted as if nothing had happened.
    for n, name in enumerate(synthetic_domains(SITES), start=1):
        if n != HANGING_SITE:
            outcome, text = pages[f"https://{name}:{sites.port}/"]
            assert outcome == EXPECTED_ROOT_OUTCOME[site_kind(n)], name
            assert bool(text) is (site_kind(n) in WITH_TEXT), name
    assert hanging_url not in stored_results(store)

    snap = engine.snapshot()
    crawl = snap.crawl
    assert crawl is not None
    assert crawl.targets_finished == SITES
    assert dict(crawl.outcomes)[str(FetchOutcome.EXTRACTION_TIMED_OUT)] == 1
    assert "extraction_timed_out 1" in status_line(snap)
    assert any(
        e.message == f"{hanging_url}: extraction ran past 1 s; its worker was replaced"
        for e in snap.events
    )

    # A rerun takes the stored outcome as the page's answer: the same bytes would
    # hang the parser again.  The site is replayed from the store, not fetched.
    requests_before = sites.stats.requests_by_host[HANGING_HOST]
    again = Engine(engine.config, secrets, page_function=extract_except_on_the_hanging_site)
    async with asyncio.timeout(120):
        assert await again.run() is JobState.DONE
    assert sites.stats.requests_by_host[HANGING_HOST] == requests_before
    rerun = again.snapshot().crawl
    assert rerun is not None
    assert dict(rerun.outcomes)[str(FetchOutcome.EXTRACTION_TIMED_OUT)] == 1
    assert stored_pages(store)[hanging_url] == (str(FetchOutcome.EXTRACTION_TIMED_OUT), None)


def extract_except_on_the_hanging_site_raise(
    html: bytes, url: str, content_type: str
) -> ExtractedPage:
    """`extract_page`, except on HANGING_HOST's pages, where the parser raises."""
    if urlsplit(url).hostname == HANGING_HOST:
        raise RecursionError("maximum recursion depth exceeded")
    return extract_page(html, url, content_type)


async def test_a_page_the_parser_raises_on_is_stored_as_failed_and_the_crawl_goes_on(
    tmp_path: Path, simulator: Callable[..., object], sites: SiteServer
) -> None:
    engine, _secrets = await crawl_engine(
        tmp_path, simulator, sites, page_function=extract_except_on_the_hanging_site_raise
    )

    async with asyncio.timeout(120):
        assert await engine.run() is JobState.DONE

    store = Path(engine.config.job.store)
    pages = stored_pages(store)
    failing_url = f"https://{HANGING_HOST}:{sites.port}/"
    assert pages.pop(failing_url) == (str(FetchOutcome.EXTRACTION_FAILED), None)
    with sqlite3.connect(store) as conn:
        (error,) = conn.execute("SELECT error FROM pages WHERE url = ?", (failing_url,)).fetchone()
    assert error == "extraction failed (RecursionError: maximum recursion depth exceeded)"
    for n, name in enumerate(synthetic_domains(SITES), start=1):
        if n != HANGING_SITE:
            outcome, _text = pages[f"https://{name}:{sites.port}/"]
            assert outcome == EXPECTED_ROOT_OUTCOME[site_kind(n)], name
    crawl = engine.snapshot().crawl
    assert crawl is not None
    assert crawl.targets_finished == SITES
    assert dict(crawl.outcomes)[str(FetchOutcome.EXTRACTION_FAILED)] == 1


async def test_extraction_workers_that_cannot_start_end_the_crawl_with_one_line(
    tmp_path: Path,
    simulator: Callable[..., object],
    sites: SiteServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No process pool (no room for its sockets, a limit on processes): the job fails
    at once, saying why in one line, with nothing half-done."""

    def no_pool(*_args: object, **_kwargs: object) -> object:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(extraction, "ProcessPool", no_pool)
    engine, _secrets = await crawl_engine(tmp_path, simulator, sites)

    async with asyncio.timeout(60):
        assert await engine.run() is JobState.FAILED

    reason = engine.failure_reason
    assert reason.startswith("page extraction workers could not start (OSError:"), reason
    assert "\n" not in reason
    assert stored_results(Path(engine.config.job.store)) == []
