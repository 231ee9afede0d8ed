"""Issue 4: a crawl of 3,204 synthetic domains end to end, with the LLM stage at its rate limit.

    python -m tests.benchmarks.crawl_at_rate_limit [--quick] [--domains N] [--profile]

The synthetic sites (`engine.simulation.site_server`) and the provider simulator
each run in a process of their own, as the web and a provider would; the
engine runs in this one.  The targets are bare `site-NNNN.test:PORT` names,
so every site is tried over https first and then over plain http, and each
host is crawled politely (a second between its requests) under the job's
own pins (`*.test` → 127.0.0.1) and address allow-list.  Two passes over the
same targets:

1. **crawl only** — the crawl stage alone, its pages discarded instead of
   delivered, with the CPU of this process (every thread) plus that of the
   extraction worker processes (psutil) divided by the pages fetched (one a
   domain, whatever its outcome).  Requirement: ≤ 5 ms per page.  It runs
   first, with nothing else of ours busy, and the extraction pool is
   started and warmed before the clock starts.
2. **crawl + LLM** — the whole job (crawl → chunk → batch → LLM → store),
   with the simulated key's requests-per-minute limit set so that the LLM
   stage, not the crawl, is the bottleneck.  The rate-limit bound is the
   time the key's limits allow for the requests actually answered (or the
   tokens actually used, whichever is longer), as `rate_limit_efficiency.py`
   computes it.  Requirements: wall ≤ 1.10 × bound, and every domain's
   outcome stored.

After each pass, two checks from the sites' side of the wire:

- **the right outcomes** — each domain's stored outcome against the one
  its kind calls for (`site_server.expected_outcome`: a normal site is
  `fetched`, a robots-disallowed one `robots_blocked`, a drip-fed one
  `timed_out`, …); every mismatch is listed.  Requirement: none.
- **politeness as the sites saw it** — the site server stamps each
  request's arrival per host (`/_arrivals`); the gaps between one host's
  consecutive requests (robots.txt, redirects and the http fallback
  included) against the configured delay.  Requirement: no gap shorter than
  the delay less `CLOCK_TOLERANCE_S`, the site server's own lag in stamping
  a request: it runs in a process of its own, on a loop serving 64
  connections, on two cores shared with the crawler and its extraction
  worker.  Measured once by noting when the crawler wrote each request:
  the server stamped requests up to 47 ms after they were written (p99
  22 ms), while the crawler's own shortest gap was 1.0002 s.  Gaps below the
  delay itself are counted and printed too.

`--profile` adds a crawl-only pass over 600 domains under cProfile, timed by
the main thread's CPU clock (extraction runs in the workers and is not in
it), and prints where that CPU goes.  Ratios and per-page figures only: no
absolute wall time is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import itertools
import json
import math
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import psutil

from engine.config.settings import (
    BUILTIN_PRESETS,
    CrawlSettings,
    JobConfig,
    JobSettings,
    KeySettings,
    ProviderSettings,
)
from engine.crawl.crawl_stage import CrawlStage
from engine.crawl.extraction import PageExtractor
from engine.crawl.outcomes import FetchOutcome
from engine.crawl.targets import dedupe_targets, read_targets
from engine.engine import Engine
from engine.observe.events import EventBus
from engine.pipeline.records import Document
from engine.simulation.site_server import expected_outcome, page_html, site_kind, site_number
from engine.store.sqlite_store import Store

FULL_DOMAINS = 3204
QUICK_DOMAINS = 600
PROFILED_DOMAINS = 600
SLOW_S = 2.0  # a slow site answers within the read timeout; a drip-fed one (10 × this) does not
WALL_OVER_BOUND_MAX = 1.10
CPU_BUDGET_MS = 5.0
SECRET = "bench-crawl-secret"
KEY_ID = "sim/k0"
MODEL = "gpt-4o-mini"
BATCH_SIZE = 5
HUGE_TPM = 10_000_000  # tokens never bind: requests per minute are the bottleneck
# How long the key's limit alone should make the LLM stage take.  The crawl
# (64 sites at a time, a second between one site's requests) produces pages
# faster than that, so the LLM stage is the slower one throughout.
FULL_BOUND_S = 190.0
QUICK_BOUND_S = 40.0
_WITH_TEXT = frozenset({"normal", "slow", "redirect_ok"})  # site kinds whose page has text
_EXTRACTED = frozenset(
    str(outcome)
    for outcome in (
        FetchOutcome.FETCHED,
        FetchOutcome.REDIRECTED,
        FetchOutcome.EMPTY_TEXT,
        FetchOutcome.EXTRACTION_TIMED_OUT,
        FetchOutcome.EXTRACTION_FAILED,
    )
)
_WATCH_S = 0.5  # how often pass 2 looks at the engine's snapshot, as the dashboard would
POLITENESS_DELAY_S = 1.0
# How much shorter than the truth the site server may see a gap: it stamps a
# request when its process next runs after the bytes arrived (see above).
CLOCK_TOLERANCE_S = 0.05
_SHOWN_MISMATCHES = 10


# ---------------------------------------------------------------- the other processes
@contextlib.asynccontextmanager
async def service_process(args: Sequence[str], *, stdin_pipe: bool = False) -> AsyncIterator[str]:
    """Run `python -m <args>` in its own process; yields the first line it prints.

    `stdin_pipe` gives the child a stdin that closes when we die, for a child
    that exits with its parent (`--exit-with-parent`).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode().strip()
        if not line:
            raise RuntimeError(f"{args[0]} did not start (exit code {await proc.wait()})")
        yield line
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def site_server_process(domains: int, domains_file: Path) -> AsyncIterator[tuple[int, int]]:
    """The synthetic sites on a free port; writes `domains_file`; yields (port, pid)."""
    args = ["engine.simulation.site_server", "--count", str(domains)]
    args += ["--domains-file", str(domains_file), "--slow-s", str(SLOW_S)]
    async with service_process(args) as line:
        yield int(json.loads(line)["port"]), _child_pid("engine.simulation.site_server")


@contextlib.asynccontextmanager
async def simulator_process(rpm: int, tpm: int) -> AsyncIterator[tuple[str, int]]:
    """The provider simulator: one key, a provider's latency; yields (base URL, pid)."""
    args = ["engine.simulation.simulator", "--key", f"{SECRET}:{rpm}:{tpm}"]
    args += ["--latency", "0.5,2.0", "--exit-with-parent"]
    async with service_process(args, stdin_pipe=True) as line:
        if not line.startswith("listening on "):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        yield line.removeprefix("listening on "), _child_pid("engine.simulation.simulator")


def _child_pid(module: str) -> int:
    """The pid of our child process that runs `python -m <module>`."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if module in child.cmdline():
                return child.pid
    raise RuntimeError(f"no child process runs {module}")


async def site_server_counters(port: int) -> dict[str, int]:
    """The site server's request and connection totals (its `/_stats`, asked by address)."""
    async with httpx2.AsyncClient(trust_env=False) as client:
        response = await client.get(f"http://127.0.0.1:{port}/_stats")
        data = response.json()
        return {"requests": int(data["requests"]), "connections": int(data["connections"])}


async def site_server_arrivals(port: int) -> dict[str, list[float]]:
    """When each synthetic site received each of its requests, as the server stamped them."""
    async with httpx2.AsyncClient(trust_env=False, timeout=30.0) as client:
        response = await client.get(f"http://127.0.0.1:{port}/_arrivals")
        data: dict[str, list[float]] = response.json()
    return {host: times for host, times in data.items() if site_number(host) is not None}


# ---------------------------------------------------------------- what the sites saw
@dataclass
class Politeness:
    """The gaps between one host's consecutive requests, as the sites saw them in one pass."""

    hosts: int  # hosts that got two requests or more
    gaps: int
    hosts_below: int  # hosts with a gap shorter than the delay (less the clock tolerance)
    gaps_below: int
    hosts_strictly_below: int  # the same without the tolerance
    min_gap_s: float | None
    median_host_min_gap_s: float | None

    @property
    def kept(self) -> bool:
        return self.hosts_below == 0


def politeness_seen(
    before: dict[str, list[float]], after: dict[str, list[float]], delay_s: float
) -> Politeness:
    """The pass's requests are those that arrived after `before` was taken."""
    host_minima: list[float] = []
    gaps = gaps_below = hosts_below = hosts_strictly_below = 0
    for host, times in after.items():
        mine = times[len(before.get(host, ())) :]
        spaced = [later - earlier for earlier, later in itertools.pairwise(mine)]
        if not spaced:
            continue
        gaps += len(spaced)
        short = sum(1 for gap in spaced if gap < delay_s - CLOCK_TOLERANCE_S)
        gaps_below += short
        hosts_below += short > 0
        hosts_strictly_below += min(spaced) < delay_s
        host_minima.append(min(spaced))
    return Politeness(
        hosts=len(host_minima),
        gaps=gaps,
        hosts_below=hosts_below,
        gaps_below=gaps_below,
        hosts_strictly_below=hosts_strictly_below,
        min_gap_s=min(host_minima, default=None),
        median_host_min_gap_s=statistics.median(host_minima) if host_minima else None,
    )


@dataclass
class OutcomeCheck:
    """Each domain's stored outcome against what its kind calls for."""

    domains: int
    matched: int
    mismatches: list[tuple[str, str, str, str, str]]  # target, kind, expected, stored, error

    @property
    def right(self) -> bool:
        return self.domains > 0 and self.matched == self.domains and not self.mismatches


def check_outcomes(store: Path, domains: int) -> OutcomeCheck:
    """Read the depth-0 pages of `store` and compare each with `expected_outcome`."""
    timeouts = crawl_settings(Path("unused"))
    with sqlite3.connect(store) as db:
        rows = db.execute(
            "SELECT target, outcome, error FROM pages WHERE depth = 0 ORDER BY target"
        ).fetchall()
    matched = 0
    mismatches: list[tuple[str, str, str, str, str]] = []
    for target, outcome, error in rows:
        number = site_number(urlsplit(target).netloc)
        kind = "not a synthetic site" if number is None else site_kind(number)
        want = (
            ""
            if number is None
            else str(
                expected_outcome(
                    kind,
                    slow_s=SLOW_S,
                    read_timeout_s=timeouts.read_timeout_s,
                    total_timeout_s=timeouts.total_timeout_s,
                )
            )
        )
        if outcome == want:
            matched += 1
        else:
            mismatches.append((target, kind, want, outcome, error))
    return OutcomeCheck(domains=domains, matched=matched, mismatches=mismatches)


def print_checks(title: str, outcomes: OutcomeCheck, seen: Politeness) -> None:
    print(f"\n--- {title}: the sites' side ---", flush=True)
    print(
        f"outcomes: {outcomes.matched} of {outcomes.domains} domains stored the outcome their "
        f"kind calls for; {len(outcomes.mismatches)} mismatches, "
        f"{outcomes.domains - outcomes.matched - len(outcomes.mismatches)} not stored"
    )
    for target, kind, want, got, error in outcomes.mismatches[:_SHOWN_MISMATCHES]:
        print(f"  {target}: a {kind} site, expected {want or '-'}, stored {got} ({error})")
    if len(outcomes.mismatches) > _SHOWN_MISMATCHES:
        print(f"  … and {len(outcomes.mismatches) - _SHOWN_MISMATCHES} more")
    lowest = "-" if seen.min_gap_s is None else f"{seen.min_gap_s:.4f}s"
    median = "-" if seen.median_host_min_gap_s is None else f"{seen.median_host_min_gap_s:.3f}s"
    print(
        f"politeness: {seen.gaps} gaps on {seen.hosts} hosts with two requests or more; "
        f"shortest {lowest}, median of each host's shortest {median}; "
        f"{seen.hosts_below} hosts ({seen.gaps_below} gaps) below "
        f"{POLITENESS_DELAY_S:g}s − {CLOCK_TOLERANCE_S * 1000:g} ms, "
        f"{seen.hosts_strictly_below} hosts below {POLITENESS_DELAY_S:g}s itself"
    )


# ---------------------------------------------------------------- CPU accounting
def process_tree_cpu(exclude: set[int]) -> dict[int, float]:
    """CPU seconds (user + system) by pid: this process, every thread, and each
    descendant not under an `exclude` pid — the extraction workers and the
    forkserver that starts them.

    A descendant's figure includes the children it has reaped, so workers
    that have exited (the forkserver reaps them) still count.
    """
    me = psutil.Process()
    times = me.cpu_times()
    found = {me.pid: times.user + times.system}
    for child in me.children():
        if child.pid in exclude:
            continue
        with contextlib.suppress(psutil.Error):
            for proc in (child, *child.children(recursive=True)):
                t = proc.cpu_times()
                found[proc.pid] = t.user + t.system + t.children_user + t.children_system
    return found


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU spent between two samples; a process born in between counts from zero."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


# ---------------------------------------------------------------- the job's settings
def crawl_settings(targets: Path) -> CrawlSettings:
    """A crawl as a real one would run: polite, bounded, https first; pinned to loopback."""
    return CrawlSettings(
        targets=str(targets),
        concurrency=64,
        per_host=2,
        politeness_delay_s=POLITENESS_DELAY_S,
        connect_timeout_s=3.0,
        read_timeout_s=4.0,  # > SLOW_S: slow sites answer
        total_timeout_s=6.0,  # < 10 × SLOW_S: drip-fed sites time out
        allow_addresses=("127.0.0.0/8",),
        resolve={"*.test": "127.0.0.1"},
        contact="bench@example.com",
    )


def job_config(targets: Path, store: Path, url: str, rpm: int) -> JobConfig:
    """The crawl job against the simulator: one key, limited to `rpm`."""
    provider = ProviderSettings(
        name="sim",
        base_url=url,
        model=MODEL,
        keys=(KeySettings(env="CRAWLDECK_BENCH_KEY", alias="k0", rpm=rpm, tpm=HUGE_TPM),),
    )
    preset = replace(
        BUILTIN_PRESETS["aggressive"],
        concurrency=64,
        batch_size=BATCH_SIZE,
        request_timeout_s=30.0,
        max_retries=6,
    )
    return JobConfig(
        job=JobSettings(name="crawl-bench", input="", store=str(store)),
        providers=(provider,),
        preset=preset,
        crawl=crawl_settings(targets),
    )


def rpm_for(domains: int, bound_s: float) -> int:
    """A requests-per-minute limit that makes the LLM stage take about `bound_s`.

    Which sites have text follows from their numbers, and a page is about
    one chunk; the bound reported is computed from what was really sent.
    """
    with_text = sum(1 for n in range(1, domains + 1) if site_kind(n) in _WITH_TEXT)
    return max(1, round(math.ceil(with_text / BATCH_SIZE) * 60.0 / bound_s))


# ---------------------------------------------------------------- pass 1: crawl only
@dataclass
class CrawlFigures:
    """What the crawl stage alone cost."""

    pages: int  # pages fetched: one a domain here, whatever its outcome
    extracted: int  # of them, pages whose body went to the extractor
    wall_s: float
    cpu_s: float
    cpu_main_s: float  # this process, every thread
    cpu_workers_s: float  # the extraction workers
    workers: int
    site_requests: int
    site_connections: int

    @property
    def ms_per_page(self) -> float:
        return self.cpu_s / max(1, self.pages) * 1000.0

    @property
    def ms_per_extracted_page(self) -> float:
        return self.cpu_s / max(1, self.extracted) * 1000.0


async def crawl_only(
    targets: Path,
    store_path: Path,
    site_port: int,
    exclude_pids: set[int],
    profiler: cProfile.Profile | None = None,
) -> CrawlFigures:
    """The crawl stage alone over `targets`: every page stored, its text discarded."""
    settings = crawl_settings(targets)

    async def discard(document: Document) -> None:
        return None

    running, may_read = asyncio.Event(), asyncio.Event()
    running.set()
    may_read.set()
    site_before = await site_server_counters(site_port)
    me = psutil.Process().pid
    store = await Store.open(store_path)
    try:
        run_id = await store.begin_run("crawl-only", {})
        # Our own pool, started and warmed before the clock starts: its start-up
        # (the forkserver imports the parsers) is paid once a run, not per page.
        extractor = PageExtractor(
            settings.extract_workers or None, time_limit_s=settings.extract_timeout_s
        )
        try:
            async with asyncio.TaskGroup() as warm_up:  # all at once, so every worker starts
                for _ in range(2 * extractor.workers):
                    warm_up.create_task(
                        extractor.extract(page_html(1, 0), "http://site-0001.test/", "text/html")
                    )
            stage = CrawlStage(
                settings,
                store=store,
                run_id=run_id,
                events=EventBus(),
                deliver=discard,
                running=running,
                may_read=may_read,
                extractor=extractor,
            )
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(store.run_writer(), name="store-writer")
                before = process_tree_cpu(exclude_pids)
                started = time.monotonic()
                if profiler is not None:
                    profiler.enable()
                try:
                    await stage.run()
                    # The pages' rows are part of the crawl's work: wait for their commit.
                    await store.flush()
                finally:
                    if profiler is not None:
                        profiler.disable()
                wall = time.monotonic() - started
                after = process_tree_cpu(exclude_pids)  # before the pool's workers exit
                await store.close_writer()
                await writer
        finally:
            await extractor.aclose()
    finally:
        await store.close()
    site_after = await site_server_counters(site_port)
    snap = stage.snapshot()
    main = after[me] - before[me]
    total = cpu_delta(before, after)
    return CrawlFigures(
        pages=snap.pages,
        extracted=sum(count for name, count in snap.outcomes if name in _EXTRACTED),
        wall_s=wall,
        cpu_s=total,
        cpu_main_s=main,
        cpu_workers_s=total - main,
        workers=extractor.workers,
        site_requests=site_after["requests"] - site_before["requests"],
        site_connections=site_after["connections"] - site_before["connections"],
    )


# ---------------------------------------------------------------- pass 2: crawl + LLM
@dataclass
class JobFigures:
    """What the whole job did, from its snapshot and its store."""

    wall_s: float
    bound_s: float
    bound_by: str
    requests: int
    rate_limited: int
    tokens: int
    state: str
    pages_stored: int
    distinct_stored: int
    outcomes: dict[str, int]
    chunks_done: int
    chunks_failed: int
    pages_with_text: int
    pages_without_results: int
    crawl_done_at_s: float | None
    first_request_at_s: float | None
    starved_samples: int
    samples: int
    cpu_s: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.wall_s / self.bound_s if self.bound_s else math.inf


@dataclass
class _Watch:
    """What pass 2 saw of its LLM stage while the crawl ran."""

    crawl_done_at_s: float | None = None
    first_request_at_s: float | None = None
    starved: int = 0  # samples with no batch waiting for the LLM although the crawl still ran
    samples: int = 0


async def watch_job(engine: Engine, started: float, seen: _Watch) -> None:
    """Read the engine's snapshot a few times a second, as the dashboard does."""
    while True:
        await asyncio.sleep(_WATCH_S)
        snap = engine.snapshot()
        if seen.first_request_at_s is None and snap.requests + snap.in_flight_requests > 0:
            seen.first_request_at_s = time.monotonic() - started
        crawl = snap.crawl
        if crawl is None:
            continue
        crawling = crawl.targets_total is None or crawl.targets_finished < crawl.targets_total
        if not crawling and seen.crawl_done_at_s is None:
            seen.crawl_done_at_s = time.monotonic() - started
        if crawling and snap.counts.done > 0:  # after the first answer: start-up is not starving
            seen.samples += 1
            if snap.queues.batches == 0 and snap.queues.retries == 0:
                seen.starved += 1


async def crawl_and_llm(targets: Path, store: Path, rpm: int, exclude_pids: set[int]) -> JobFigures:
    """The whole crawl job against the simulator, measured."""
    async with simulator_process(rpm, HUGE_TPM) as (url, sim_pid):
        engine = Engine(job_config(targets, store, url, rpm), {KEY_ID: SECRET})
        seen = _Watch()
        skip = exclude_pids | {sim_pid}
        cpu_before = process_tree_cpu(skip)
        started = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(watch_job(engine, started, seen), name="watcher")
            state = await engine.run()
            wall = time.monotonic() - started
            cpu = cpu_delta(cpu_before, process_tree_cpu(skip))
            watcher.cancel()
    snap = engine.snapshot()
    answered = snap.requests - snap.rate_limited
    by_requests = answered * 60.0 / rpm
    by_tokens = engine.stats.tokens * 60.0 / HUGE_TPM
    with sqlite3.connect(store) as db:
        stored, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT target) FROM pages WHERE depth = 0"
        ).fetchone()
        outcomes = dict(
            db.execute(
                "SELECT outcome, COUNT(*) FROM pages WHERE depth = 0 GROUP BY outcome"
            ).fetchall()
        )
        (with_text,) = db.execute("SELECT COUNT(*) FROM pages WHERE text IS NOT NULL").fetchone()
        (without_results,) = db.execute(
            "SELECT COUNT(*) FROM pages p WHERE p.text IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM results r WHERE r.source = p.url)"
        ).fetchone()
        (done,) = db.execute("SELECT COUNT(*) FROM results").fetchone()
        (failed,) = db.execute("SELECT COUNT(*) FROM failures").fetchone()
    return JobFigures(
        wall_s=wall,
        bound_s=max(by_requests, by_tokens),
        bound_by="requests" if by_requests >= by_tokens else "tokens",
        requests=snap.requests,
        rate_limited=snap.rate_limited,
        tokens=engine.stats.tokens,
        state=str(state),
        pages_stored=stored,
        distinct_stored=distinct,
        outcomes=outcomes,
        chunks_done=done,
        chunks_failed=failed,
        pages_with_text=with_text,
        pages_without_results=without_results,
        crawl_done_at_s=seen.crawl_done_at_s,
        first_request_at_s=seen.first_request_at_s,
        starved_samples=seen.starved,
        samples=seen.samples,
        cpu_s=cpu,
        errors=dict(snap.errors_by_kind),
    )


# ---------------------------------------------------------------- reporting
def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_crawl(fig: CrawlFigures, title: str) -> None:
    print(f"\n--- {title} ---", flush=True)
    print(
        f"wall {fig.wall_s:.1f}s; the sites saw {fig.site_requests} requests on "
        f"{fig.site_connections} connections"
    )
    print(
        f"CPU {fig.cpu_s:.2f}s = this process {fig.cpu_main_s:.2f}s "
        f"+ {fig.workers} extraction worker(s) {fig.cpu_workers_s:.2f}s"
    )
    print(
        f"{fig.pages} pages fetched: {fig.ms_per_page:.2f} ms CPU a page "
        f"(this process {fig.cpu_main_s / max(1, fig.pages) * 1000:.2f} ms); "
        f"{fig.extracted} extracted: {fig.ms_per_extracted_page:.2f} ms a page "
        f"(workers {fig.cpu_workers_s / max(1, fig.extracted) * 1000:.2f} ms)"
    )


def print_job(fig: JobFigures, rpm: int, targets: int) -> None:
    print(f"\n--- pass 2: crawl + LLM, {targets} domains, key limit {rpm} rpm ---", flush=True)
    print(
        f"state {fig.state}; {fig.requests} requests ({fig.rate_limited} got 429), "
        f"{fig.tokens} tokens; errors {fig.errors or 'none'}"
    )
    first = "never" if fig.first_request_at_s is None else f"{fig.first_request_at_s:.1f}s"
    done_at = "never" if fig.crawl_done_at_s is None else f"{fig.crawl_done_at_s:.1f}s"
    print(
        f"first LLM request by {first}, crawl finished by {done_at}, job done at "
        f"{fig.wall_s:.1f}s (seen every {_WATCH_S:g}s); no batch waiting for the LLM in "
        f"{fig.starved_samples} of {fig.samples} samples taken while crawling"
    )
    print(
        f"chunks: {fig.chunks_done} results, {fig.chunks_failed} failures; "
        f"{fig.pages_with_text} pages with text, {fig.pages_without_results} of them "
        "without results"
    )
    print(
        f"whole-job CPU (this process + extraction workers): {fig.cpu_s:.1f}s, "
        f"{fig.cpu_s / max(1, fig.pages_stored) * 1000.0:.2f} ms a domain"
    )
    print("outcomes of the domains (depth 0, from the store):")
    for name, count in sorted(fig.outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name:20} {count:6d}")


def print_table(
    job: JobFigures,
    crawl: CrawlFigures,
    targets: int,
    outcomes: tuple[OutcomeCheck, OutcomeCheck],
    seen: tuple[Politeness, Politeness],
) -> bool:
    """The summary table; True if every requirement holds.  `outcomes` and
    `seen` are pass 1's and pass 2's."""
    timely = job.ratio <= WALL_OVER_BOUND_MAX
    complete = job.pages_stored == targets == job.distinct_stored
    cheap = crawl.ms_per_page <= CPU_BUDGET_MS
    right = all(check.right for check in outcomes)
    polite = all(pass_seen.kept for pass_seen in seen)
    share_429 = job.rate_limited / max(1, job.requests)
    gaps = [pass_seen.min_gap_s for pass_seen in seen if pass_seen.min_gap_s is not None]
    rows = [
        ("wall time", f"{job.wall_s:.1f} s", "", ""),
        (f"rate-limit bound (by {job.bound_by})", f"{job.bound_s:.1f} s", "", ""),
        ("wall / bound", f"{job.ratio:.3f}", f"≤ {WALL_OVER_BOUND_MAX:.2f}", verdict(timely)),
        (
            "domains with a stored outcome",
            f"{job.pages_stored} ({job.distinct_stored} distinct)",
            f"= {targets}",
            verdict(complete),
        ),
        ("LLM 429s", f"{job.rate_limited} of {job.requests} ({share_429:.1%})", "", ""),
        (
            "fetch + extraction CPU a page",
            f"{crawl.ms_per_page:.2f} ms ({crawl.ms_per_page / CPU_BUDGET_MS:.2f}×)",
            f"≤ {CPU_BUDGET_MS:g} ms",
            verdict(cheap),
        ),
        ("  … a page with a body extracted", f"{crawl.ms_per_extracted_page:.2f} ms", "", ""),
        (
            "outcomes as the kind calls for",
            " / ".join(f"{c.matched}/{c.domains}" for c in outcomes),
            "all",
            verdict(right),
        ),
        (
            f"hosts with a gap < {POLITENESS_DELAY_S:g} s",
            " / ".join(f"{p.hosts_below} of {p.hosts}" for p in seen),
            "0",
            verdict(polite),
        ),
        ("  shortest gap a site saw", f"{min(gaps):.4f} s" if gaps else "-", "", ""),
    ]
    print(f"\n{'figure':34} {'measured':>26} {'requirement':>12}  verdict")
    for name, value, requirement, result in rows:
        print(f"{name:34} {value:>26} {requirement:>12}  {result}".rstrip())
    print("(two figures a / b: pass 1 crawl only / pass 2 crawl + LLM)")
    return timely and complete and cheap and right and polite


# Where profiled CPU goes, by the first matching path fragment.  Our own transport
# and network backend count as HTTP client: they replace httpcore2's pool and anyio.
_HTTP_CLIENT = "HTTP client (httpx2, httpcore2, h11, anyio, our transport)"
_AREAS: tuple[tuple[str, str], ...] = (
    ("/engine/crawl/guarded_transport.py", _HTTP_CLIENT),
    ("/engine/crawl/asyncio_network.py", _HTTP_CLIENT),
    ("/engine/", "crawldeck engine"),
    ("/httpcore2/", _HTTP_CLIENT),
    ("/httpx2/", _HTTP_CLIENT),
    ("/h11/", _HTTP_CLIENT),
    ("/anyio/", _HTTP_CLIENT),
    ("/sniffio/", _HTTP_CLIENT),
    ("/aiosqlite/", "aiosqlite"),
    ("/asyncio/", "asyncio"),
    ("/concurrent/", "process pool hand-off"),
    ("/multiprocessing/", "process pool hand-off"),
)


def print_profile(profiler: cProfile.Profile, top: int = 25) -> None:
    """Own CPU time by area, then the top functions."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    # typeshed leaves out `Stats.stats`: {(file, line, function): (cc, nc, tottime, ...)}.
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        area = next((name for fragment, name in _AREAS if fragment in filename), None)
        if area is None:
            area = f"built-in {function}" if filename == "~" else "other Python"
        areas[area] = areas.get(area, 0.0) + tottime
    total = sum(areas.values()) or 1.0
    print("\n--- profiled crawl-only pass: the main thread's own CPU by area, under cProfile ---")
    for name, seconds in sorted(areas.items(), key=lambda kv: -kv[1])[:15]:
        print(f"{name[:60]:60} {seconds:7.2f}s {seconds / total:6.1%}")
    for order in ("tottime", "cumulative"):
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats(order).print_stats(top)
        text = buffer.getvalue()
        start = text.find("   ncalls")  # the table, without pstats' preamble
        print(f"\n--- profiled crawl-only pass, top {top} by {order} ---")
        print(text[start:] if start >= 0 else text)


# ---------------------------------------------------------------- main
async def main(domains: int, bound_s: float, profile: bool) -> int:
    rpm = rpm_for(domains, bound_s)
    with tempfile.TemporaryDirectory(prefix="crawldeck-crawl-bench-") as tmp:
        work = Path(tmp)
        targets_file = work / "domains.txt"
        async with site_server_process(domains, targets_file) as (port, site_pid):
            targets = sum(1 for _ in dedupe_targets(read_targets(targets_file, None)))
            print(
                f"{targets} domains on port {port} (slow sites {SLOW_S:g}s); fetch concurrency "
                f"64, 1 s between a site's requests; LLM key {rpm} rpm, batch {BATCH_SIZE}",
                flush=True,
            )
            arrivals_0 = await site_server_arrivals(port)
            crawl = await crawl_only(targets_file, work / "crawl-only.db", port, {site_pid})
            print_crawl(crawl, f"pass 1: crawl only, {targets} domains")
            arrivals_1 = await site_server_arrivals(port)
            checked_1 = check_outcomes(work / "crawl-only.db", targets)
            seen_1 = politeness_seen(arrivals_0, arrivals_1, POLITENESS_DELAY_S)
            print_checks("pass 1", checked_1, seen_1)
            job = await crawl_and_llm(targets_file, work / "job.db", rpm, {site_pid})
            print_job(job, rpm, targets)
            checked_2 = check_outcomes(work / "job.db", targets)
            seen_2 = politeness_seen(
                arrivals_1, await site_server_arrivals(port), POLITENESS_DELAY_S
            )
            print_checks("pass 2", checked_2, seen_2)
            ok = print_table(job, crawl, targets, (checked_1, checked_2), (seen_1, seen_2))
            if profile:
                profiled_file = work / "profiled.txt"
                lines = targets_file.read_text(encoding="utf-8").splitlines()
                profiled_file.write_text("\n".join(lines[:PROFILED_DOMAINS]) + "\n")
                profiler = cProfile.Profile(time.thread_time)  # CPU, not wall, of the loop's thread
                profiled = await crawl_only(
                    profiled_file, work / "profiled.db", port, {site_pid}, profiler=profiler
                )
                print_crawl(profiled, f"profiled crawl-only pass, {profiled.pages} domains")
                print_profile(profiler)
            elif crawl.ms_per_page > CPU_BUDGET_MS:
                print("\nrun again with --profile to see where the crawl's CPU goes")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DOMAINS} domains, ~1 min")
    parser.add_argument("--domains", type=int, help="how many domains (overrides --quick's)")
    parser.add_argument("--profile", action="store_true", help="also profile a crawl-only pass")
    parsed = parser.parse_args()
    count = parsed.domains or (QUICK_DOMAINS if parsed.quick else FULL_DOMAINS)
    # The same key limit at any size, but never a bound so short that start-up dominates.
    bound = max(QUICK_BOUND_S, FULL_BOUND_S * count / FULL_DOMAINS)
    sys.exit(asyncio.run(main(count, bound, parsed.profile)))
