"""A crawl job's plan is made from the pages its store holds; targets without any are named.

Real synthetic sites and the simulator on loopback, the real engine: a
first run crawls, then the job is planned for a new prompt version and run
again, replaying the stored pages (and fetching again the sites that timed
out, refused or erred, which have no text to plan with).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from engine.crawl.outcomes import FetchOutcome
from engine.engine import Engine
from engine.observe.snapshot import JobState
from engine.planning.job_plan import make_plan
from engine.simulation.site_server import SiteServer, site_kind
from tests.engine.crawl.test_crawl_job import (
    EXPECTED_ROOT_OUTCOME,
    SITES,
    crawl_engine,
    sites,  # noqa: F401  (the fixture)
)

FETCHED_AGAIN = (FetchOutcome.TIMED_OUT, FetchOutcome.REFUSED, FetchOutcome.HTTP_ERROR)


async def test_a_crawl_job_is_planned_from_its_stored_pages(
    tmp_path: Path,
    simulator: Callable[..., object],
    sites: SiteServer,  # noqa: F811
) -> None:
    first, secrets = await crawl_engine(tmp_path, simulator, sites)
    assert await first.run() is JobState.DONE
    config = replace(first.config, prompt=replace(first.config.prompt, version="2"))

    plan = await make_plan(config)

    crawl = plan.work.crawl
    assert crawl is not None
    again_fetched = sum(
        1 for n in range(1, SITES + 1) if EXPECTED_ROOT_OUTCOME[site_kind(n)] in FETCHED_AGAIN
    )
    assert (crawl.targets, crawl.without_pages, crawl.skipped_lines) == (SITES, again_fetched, 1)
    assert plan.work.chunks == first.stats.seen > 0
    assert plan.work.already_done == 0

    again = Engine(config, secrets)
    assert await again.run() is JobState.DONE
    assert again.stats.seen == plan.work.chunks
    assert again.stats.requests == plan.work.requests
