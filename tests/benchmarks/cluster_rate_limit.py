"""Several `crawldeck run` workers on one job: at the keys' limits, through a kill and a
Redis restart, and when only CPU binds.

    python -m tests.benchmarks.cluster_rate_limit
        [--scenario rate|kill|kill-collector|restart|cpu|crawl ...] [--workers N ...]
        [--cpu-requests N] [--crawl-sites N]

Real processes as an operator would run them on one machine: a
`redis-server`, the bundled simulator in a process of its own, and N
`crawldeck run --headless` workers on one job file with `[cluster]` — each
started with a store of its own (as on other machines); the first to join
claims the job's, and the others' rows reach it through Redis.  Each
scenario prints its own table; by default rate, kill, restart, cpu and
crawl run, in this order, in about 6 minutes here.

**rate** — four keys of 300/600/900/1,200 RPM, buckets holding a full
minute of each, latency 0.5–2 s lognormal; `rate_limit_efficiency`'s
"keys" job, 5,250 requests of 4 chunks; 1 worker (no cluster) beside 4:

- efficiency: the provider's bound (`provider_bound`) ÷ wall, wall from the
  first worker's run start (its `Engine.run()`, as the `started_at` it
  wrote in its store's `runs` table — where `rate_limit_efficiency` starts
  one process's clock) until every worker has exited: the issue asks
  ≥ 0.95 "of the same bound one process is held to".  Beside it, the
  wall from the first launch, as an operator's stopwatch sees it: it adds
  the workers' start-up, which on this 2-core machine is several Python
  processes importing at once beside the simulator and Redis (the
  provider's full bucket meanwhile refills nothing), and which one
  machine per worker would not share;
- 429s, over every request the simulator saw;
- each key's share of the requests ÷ its share of the keys' capacity (the
  shared budget spends every key in proportion to its limit: 1.00 each);
- the store's done/failed/lost/twice (of the store the first worker to
  join claimed; the workers start together).

**kill** — the rate job by 4 workers; once 30 % of its chunks are settled
(the run's progress hash in Redis, polled), one worker that is not beside
the job's store is SIGKILLed.  Only workers beside the store — that host,
that store path — may collect (`engine/cluster/collector_lease.py`), so
that one is spared here; **kill-collector** (only when asked for) kills it
instead: the others finish the work and exit, their rows waiting in Redis
(no other worker is on its path), and the worker is started again on its
store path, as an operator would, to collect them.  The visibility timeout
is 10 s (120 by default), so a dead worker's batches are taken over soon.
Printed: when, the wall, the requests the simulator saw, the
`batch_reclaimed` events the workers that lived printed (`--json`), dead
letters, and the store's tally: it must be 21,000/0/0/0, exactly one result
per chunk.

**restart** — the rate job by 4 workers, `redis-server` with its
append-only file on (`appendfsync always`), SIGKILLed at 30 % settled and
started again on its port 5 s later (`outage_limit_s` is 60 s): the
workers' retries ride it out.  Printed: the outage (the kill until the new
server is ready, its file reloaded), the wall, requests, 429s, warning
events, and the store's tally (21,000/0/0/0 asked).

**cpu** — four keys of 1,000,000 RPM (no limit binds), latency 0, 4,000
requests of 4 chunks: 1, 2 and 4 workers in a cluster, then one process
alone (no `[cluster]`) for comparison.  Requests/s and chunks/s over the
span from the simulator's first answered chunk to its last (polled), the
ratio to one worker in the cluster, the workers' CPU (start-up included)
and the simulator's and Redis's.  This machine has 2 cores, shared with the
simulator and Redis (and whatever else runs): past 2 workers no gain can
show here.

**crawl** — the crawl path when fetch and extraction bind: the synthetic
sites (`engine.simulation.site_server`) in a process of their own, 400
normal sites of 5 pages each (robots.txt, then the home page and links one
click deep), no politeness delay, one extraction process a worker; the
simulator at latency 0 and limits far above.  1, 2 and 4 workers in a
cluster share the sites through the run's targets stream
(`engine/cluster/target_stream.py`), then one process alone for
comparison.  Pages/s and chunks/s over the span from the sites' first
request to the last change of either the sites' request count or the
simulator's answered chunks (polled), the ratio to one worker, and the
store's tally: every page once, one result per chunk.

Issue 13 asks, with 4 workers: efficiency ≥ 0.95, 429s ≤ 1 %, each key
within 2 % of its share; after a kill or a restart, every chunk once.
Last run (one `python -m tests.benchmarks.cluster_rate_limit`, on this
2-core machine, quiet but for this run; other runs that day in brackets):

- rate (2026-12-07, 13:10–13:53 UTC, the tail's hedges newest first),
  efficiency from the first worker's run start (from launch): 4 workers
  0.960 (0.935), 0.949 (0.923), 0.949 (0.921), 0.933 (0.907), 0.938
  (0.909), 0.951 (0.925), 0.949 (0.922) in seven runs; 1 worker 0.951 to
  0.960 (0.940–0.947); 0 429s; key shares 0.994–1.001; 21,000/0/0/0.  The
  spread is the tail's: the last answer comes 1.4–2.4 s after the 5,250th
  admission (a Monte Carlo of this latency: ~1.66 s on average with the
  tail hedged newest first, 1.83 oldest first); that admission comes
  0.35–0.45 s after the bound (the first request 0.02–0.1 s into the
  run, ~10 requests held back by the headers' send spread);
- kill: w2 SIGKILLed 6.5 s in (6,696 chunks settled); wall 51.2 s (bound
  45.0 s); 5,365 requests; 96 batches (384 chunks) reclaimed, 0 dead
  letters; 21,000/0/0/0; the three others exited 0;
- restart: Redis killed 7.2 s in (6,388 settled), away 5.2 s; wall 49.4 s;
  5,271 requests, 0 429s; 21,000/0/0/0; every worker exited 0 (one warning:
  the collector's lease ran out while Redis was away).  Before a worker
  read its own pending entries again after a connection trouble, a kill
  that met a blocking read left the entries Redis had delivered to it
  pending until the 120 s visibility timeout: 182.8 s;
- cpu: 1 worker 318 req/s (1,272 chunks/s), 2 workers 466, × 1.47, 4
  workers 461, × 1.45; one process alone 515, × 1.62.  A worker in a
  cluster spends 4.5–4.9 ms of CPU a request (start-up included) against
  2.7 alone: redis-py and the scripts (reserve, settle, read, results).

The crawl scenario, run alone (`--scenario crawl`, ~60 s), last on a quiet
machine: pages/s (= chunks/s, one chunk a page) with 1 / 2 / 4 workers
172 / 159 / 140 beside 224 alone (× 0.92 / 0.81); runs before, with other
sessions on the 2 cores: 162 / 174 / 141 beside 174, 177 / 139 / 73 beside
170, 170 / 129 / 141 beside 217, 129 / 85 / 69 beside 132.  Every run 2,000
pages, 400 robots.txt requests (each site crawled by one worker), 2,000
results, 0 lost, 0 twice.  No gain from more
workers can show on this machine: a worker spends 5–6 ms of CPU a page (its
start-up and extraction process included; 3.7–5.0 alone: Redis, the results
stream and the collector cost ~1.5 ms a page), each worker more adds its
~2 s start-up, the site server, simulator and Redis take ~3.5 s more, and
the other sessions the rest of the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import psutil
from redis.asyncio import Redis

from engine.cluster.job_runs import run_counter, run_prefix
from engine.cluster.job_streams import JobStreams
from engine.observe.events import EventKind
from engine.provider.redaction import mask_secret
from engine.simulation.service_process import service_process
from engine.simulation.site_server import site_kind, synthetic_domains
from tests.benchmarks.provider_bound import StoreTally, provider_bound_s, tally_store
from tests.benchmarks.rate_limit_efficiency import simulator_stats
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "crawldeck:bench"
KEY_RPMS = (300, 600, 900, 1200)
REQUESTS = 5250
CHUNKS_PER_REQUEST = 4
WORDS = 20
LATENCY_S = (0.5, 2.0)
BURST_S = 60.0
CONCURRENCY = 256  # each worker's ceiling
RUN_TIMEOUT_S = 600.0  # a hang guard only
REQUIRED_EFFICIENCY = 0.95
MAX_SHARE_429 = 0.01
KEY_SHARE_TOLERANCE = 0.02
# kill and restart: 4 workers on the rate job, broken once this share of its chunks is settled.
DISRUPTED_WORKERS = 4
DISRUPT_AT = 0.30
PROGRESS_POLL_S = 0.2
VISIBILITY_S = 10.0  # kill: a dead worker's batches are taken over this long after it died
OUTAGE_S = 5.0  # restart: how long Redis stays down (well inside outage_limit_s, 60 s)
# cpu: limits no run comes near, no latency; a job of ~15-20 s for one worker here.
CPU_RPM = 1_000_000
CPU_REQUESTS = 4000
CPU_WORKERS = (1, 2, 4)
CPU_POLL_S = 0.1
# crawl: normal synthetic sites, this many pages each (the home page and links one deep).
CRAWL_SITES = 400
CRAWL_PAGES_A_SITE = 5
CRAWL_WORKERS = (1, 2, 4)


def secret(i: int) -> str:
    return f"sk-bench-cluster-0123456789abcdef-{i:04d}"  # hints (last four) differ


@asynccontextmanager
async def simulator(
    rpms: Sequence[int], latency: tuple[float, float] = LATENCY_S
) -> AsyncIterator[str]:
    """The simulator in its own process, one key per limit; yields its base URL."""
    keys = json.dumps(
        [{"secret": secret(i), "rpm": rpm, "tpm": None} for i, rpm in enumerate(rpms)]
    )
    arguments = [
        "engine.simulation.simulator",
        "--keys-from-env",
        "SIM_KEYS",
        "--latency",
        f"{latency[0]},{latency[1]}",
        "--latency-distribution",
        "lognormal",
        "--burst-s",
        str(BURST_S),
        "--exit-with-parent",
    ]
    async with service_process("simulator", arguments, {**os.environ, "SIM_KEYS": keys}) as line:
        yield line.removeprefix("listening on ")


def write_job(
    folder: Path,
    base_url: str,
    redis_url: str | None,
    records: int,
    cluster_settings: dict[str, float] | None = None,
    *,
    rpms: Sequence[int] = KEY_RPMS,
) -> Path:
    """The job file: `records` one-chunk records, batches of 4, every key (of `rpms`);
    shared through `redis_url` when given, with `cluster_settings` in its `[cluster]`."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "records.txt").open("w", encoding="utf-8") as out:
        for i in range(records):
            words = " ".join(f"w{(i * 31 + j) % 997}" for j in range(WORDS))
            out.write(f"record {i}: {words}\n")
    keys = "".join(
        f'\n[[providers.keys]]\nenv = "BENCH_CLUSTER_KEY_{i}"\nalias = "k{i}"\nrpm = {rpm}\n'
        for i, rpm in enumerate(rpms)
    )
    cluster = ""
    if redis_url:
        extra = "".join(f"{name} = {value}\n" for name, value in (cluster_settings or {}).items())
        cluster = f'\n[cluster]\nredis = "{redis_url}"\nprefix = "{PREFIX}"\n{extra}'
    job = folder / "job.toml"
    job.write_text(
        f"""\
[job]
name = "cluster-bench"
input = "records.txt"
input_format = "text"
store = "results.db"
chunk_tokens = 2000
chunk_overlap_tokens = 0
preset = "bench"

[[providers]]
name = "sim"
base_url = "{base_url}"
model = "gpt-4o-mini"
{keys}
[presets.bench]
concurrency = {CONCURRENCY}
batch_size = {CHUNKS_PER_REQUEST}
max_retries = 4
request_timeout_s = 60.0
{cluster}""",
        encoding="utf-8",
    )
    return job


@dataclass
class Worker:
    """One `crawldeck run --headless` process, its output files and its own store path."""

    name: str
    proc: asyncio.subprocess.Process
    out: Path
    err: Path
    store: Path


async def start_worker(job: Path, name: str, store: Path, *flags: str) -> Worker:
    out, err = job.parent / f"{name}.out", job.parent / f"{name}.err"
    env = {**os.environ, **{f"BENCH_CLUSTER_KEY_{i}": secret(i) for i in range(len(KEY_RPMS))}}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tui.cli",
            "run",
            str(job),
            "--headless",
            *flags,
            "--set",
            f"job.store={store}",
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    return Worker(name, proc, out, err, store)


@asynccontextmanager
async def workers_running(
    job: Path, work: Path, count: int, *flags: str
) -> AsyncIterator[list[Worker]]:
    """`count` workers started at once, as an operator starts them; killed if left running.

    Each has a store of its own, as on other machines: the first to join
    claims the job's, and the others' rows reach it through Redis.
    """
    async with killed_if_left() as running:
        for i in range(count):
            store = job.parent / "results.db" if i == 0 else work / f"w{i}" / "results.db"
            running.append(await start_worker(job, f"w{i}", store, *flags))
        yield running


@asynccontextmanager
async def killed_if_left() -> AsyncIterator[list[Worker]]:
    """A list to start workers into; any still running when the block ends is killed."""
    running: list[Worker] = []
    try:
        yield running
    finally:
        for worker in running:
            if worker.proc.returncode is None:
                worker.proc.kill()
                await worker.proc.wait()


async def exit_codes(running: Sequence[Worker]) -> tuple[int, ...]:
    """Every worker's exit code, once all have exited (a hang guard, not a measure)."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        return tuple([await w.proc.wait() for w in running])


async def claimed_store(redis_url: str) -> Path:
    """The path of the store the job's first worker claimed (all are on this machine)."""
    redis = Redis.from_url(redis_url)
    try:
        return Path(json.loads(await redis.get(f"{PREFIX}:store") or "{}")["path"])
    finally:
        await redis.aclose()


async def settled_chunks(redis: Redis) -> int:
    """Chunks the job's current run has settled (done or failed), from its progress hash."""
    run = await redis.get(run_counter(PREFIX))
    if run is None:  # no worker has joined yet
        return 0
    progress = JobStreams(run_prefix(PREFIX, int(run))).progress
    return int(await redis.hget(progress, "settled_chunks") or 0)


async def until_settled(redis_url: str, chunks: int) -> int:
    """Wait until the run has settled at least `chunks` chunks; how many it had then."""
    redis = Redis.from_url(redis_url)
    try:
        while (settled := await settled_chunks(redis)) < chunks:
            await asyncio.sleep(PROGRESS_POLL_S)  # a harness watching a counter in Redis
        return settled
    finally:
        await redis.aclose()


def worker_events(worker: Worker, kind: EventKind) -> list[dict[str, Any]]:
    """The events of `kind` a worker printed (`--json`: one JSON object a line)."""
    found = []
    for line in worker.out.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record.get("type") == "event" and record.get("kind") == str(kind):
            found.append(record)
    return found


def run_started_at(worker: Worker) -> float:
    """When the worker's run began (the events' clock): the `started_at` its `Engine.run()`
    wrote in its own store's `runs` table, just after opening it — where
    `rate_limit_efficiency` starts one process's clock; infinity if it wrote none."""
    if not worker.store.exists():
        return float("inf")
    with contextlib.closing(sqlite3.connect(worker.store)) as db:
        row = db.execute("SELECT started_at FROM runs ORDER BY run_id DESC LIMIT 1").fetchone()
    return float("inf") if row is None else float(row[0])


def cluster_line(worker: Worker) -> str:
    """What a worker's closing line says the cluster did ("" if it printed none)."""
    for line in reversed(worker.err.read_text(encoding="utf-8", errors="replace").splitlines()):
        if "cluster run" in line:
            return line[line.index("cluster run") :]
    return ""


def key_shares(stats: dict[str, Any]) -> tuple[float, ...]:
    """Each key's share of the requests the simulator saw ÷ its share of the keys' capacity."""
    by_hint = stats["requests_by_key"]
    counts = [int(by_hint.get(mask_secret(secret(i)), 0)) for i in range(len(KEY_RPMS))]
    total = max(1, sum(counts))
    capacity = sum(KEY_RPMS)
    return tuple((n / total) / (rpm / capacity) for n, rpm in zip(counts, KEY_RPMS, strict=True))


def rate_bound_s(requests: int) -> float:
    """The least wall the four keys' buckets allow for `requests` requests."""
    return provider_bound_s(requests, [(r, None) for r in KEY_RPMS], 0.0, BURST_S, 1.0)


@dataclass(frozen=True)
class Outcome:
    workers: int
    wall_s: float
    bound_s: float
    requests: int
    rate_limited: int
    key_shares: tuple[float, ...]  # each key's share of requests ÷ its share of capacity
    tally: StoreTally
    codes: tuple[int, ...]
    engine_wall_s: float  # from the first worker's `Engine.run()` (`run_started_at`)

    @property
    def efficiency(self) -> float:
        """Bound ÷ wall from the first worker's run start: what the issue's 0.95 is held to."""
        return self.bound_s / self.engine_wall_s

    @property
    def launch_efficiency(self) -> float:
        """Bound ÷ wall from the first launch, start-up included."""
        return self.bound_s / self.wall_s

    @property
    def share_429(self) -> float:
        return self.rate_limited / max(1, self.requests)

    def misses(self) -> list[str]:
        found = []
        if any(self.codes):
            found.append(f"exit codes {list(self.codes)}")
        if self.efficiency < REQUIRED_EFFICIENCY:
            found.append(f"efficiency {self.efficiency:.3f} < {REQUIRED_EFFICIENCY}")
        if self.share_429 > MAX_SHARE_429:
            found.append(f"429s {self.share_429:.2%} > {MAX_SHARE_429:.0%}")
        if any(abs(share - 1.0) > KEY_SHARE_TOLERANCE for share in self.key_shares):
            found.append("a key off its share by more than 2 %")
        if not self.tally.whole:
            found.append(f"store {self.tally}")
        return found


async def run(workers: int, requests: int, work: Path) -> Outcome:
    """The job with `workers` processes (1: no cluster) to its end, measured."""
    records = requests * CHUNKS_PER_REQUEST
    with RedisServer(work / "redis") as redis_server:
        async with simulator(KEY_RPMS) as base_url:
            shared = redis_server.url if workers > 1 else None
            job = write_job(work / "job", base_url, shared, records)
            started = time.monotonic()
            async with workers_running(job, work, workers, "--json") as running:
                codes = await exit_codes(running)
            wall_s = time.monotonic() - started
            ended_at = time.time()  # the events' clock
            first_run = min((run_started_at(w) for w in running), default=ended_at - wall_s)
            stats = await simulator_stats(base_url)
            store = job.parent / "results.db"
            if shared is not None:
                store = await claimed_store(shared)
    return Outcome(
        workers=workers,
        wall_s=wall_s,
        bound_s=rate_bound_s(requests),
        requests=int(stats["requests"]) - 1,  # less our own GET of the stats
        rate_limited=int(stats["rate_limited"]),
        key_shares=key_shares(stats),
        tally=tally_store(store, records),
        codes=codes,
        engine_wall_s=ended_at - first_run,
    )


async def rate_scenario(worker_counts: Sequence[int], requests: int) -> int:
    """Scenario `rate`: each worker count at the keys' limits; 1 if a cluster row missed."""
    print(
        f"\n== rate: {requests} requests of {CHUNKS_PER_REQUEST} chunks over keys of "
        f"{'/'.join(map(str, KEY_RPMS))} RPM, buckets of {BURST_S:g} s, latency "
        f"{LATENCY_S[0]}–{LATENCY_S[1]} s lognormal; each worker's concurrency ceiling "
        f"{CONCURRENCY}"
    )
    print(
        f"{'workers':>7} {'bound':>7} {'wall':>7} {'effic.':>6} {'launch':>15} {'429s':>12} "
        f"{'key shares':>24} {'done/failed/lost/twice':>22}  verdict"
    )
    failed = 0
    for workers in worker_counts:
        with tempfile.TemporaryDirectory(prefix="crawldeck-cluster-bench-") as tmp:
            out = await run(workers, requests, Path(tmp))
        misses = out.misses()
        # One worker is the comparison, not the claim: judged for its store only.
        verdict = "pass" if not misses else "FAIL: " + "; ".join(misses)
        if workers > 1 and misses:
            failed += 1
        shares = " ".join(f"{share:.3f}" for share in out.key_shares)
        print(
            f"{workers:7d} {out.bound_s:6.1f}s {out.engine_wall_s:6.1f}s {out.efficiency:6.3f} "
            f"{out.wall_s:6.1f}s {out.launch_efficiency:6.3f}  {out.rate_limited:5d} "
            f"{out.share_429:6.2%} {shares:>24} {out.tally!s:>22}  {verdict}",
            flush=True,
        )
    return 1 if failed else 0


@dataclass(frozen=True)
class Disruption:
    """A 4-worker run of the rate job with something broken at ~30 % done."""

    wall_s: float
    bound_s: float
    at_s: float  # when it was broken, from the first launch
    settled_then: int  # chunks the run had settled when it was
    tally: StoreTally
    codes: dict[str, int]  # each worker's exit code
    events: dict[EventKind, list[dict[str, Any]]]  # printed by the workers that lived
    rate_limited: int
    requests: int
    closing: str  # the closing line of the worker beside the store: what the cluster did
    victim: str = ""  # the worker killed, if one was
    outage_s: float = 0.0  # how long Redis was away, if it was
    # The collector killed: the store once the others had exited, the result
    # entries then waiting in Redis, and how long a worker started again on
    # its store path took to collect them and end.
    stored_before_return: StoreTally | None = None
    waiting_entries: int = 0
    return_s: float = 0.0

    @property
    def reclaimed(self) -> int:
        return len(self.events[EventKind.BATCH_RECLAIMED])

    @property
    def reclaimed_chunks(self) -> int:
        return sum(int(e["data"].get("chunks", 0)) for e in self.events[EventKind.BATCH_RECLAIMED])

    def misses(self, records: int) -> list[str]:
        found = []
        if any(code for name, code in self.codes.items() if name != self.victim):
            found.append(f"exit codes {self.codes}")
        if self.tally.done != records or not self.tally.whole:
            found.append(f"store {self.tally}, not {records}/0/0/0")
        if self.victim and not self.reclaimed:
            found.append("no batch_reclaimed event")
        if self.events[EventKind.DEAD_LETTER]:
            found.append(f"{len(self.events[EventKind.DEAD_LETTER])} dead letters")
        return found


WATCHED = (EventKind.BATCH_RECLAIMED, EventKind.DEAD_LETTER, EventKind.WARNING)


async def results_waiting(redis_url: str) -> int:
    """Result entries of the job's current run that no collector has stored yet."""
    redis = Redis.from_url(redis_url)
    try:
        run = int(await redis.get(run_counter(PREFIX)) or 1)
        return int(await redis.xlen(JobStreams(run_prefix(PREFIX, run)).results))
    finally:
        await redis.aclose()


async def disrupted_run(work: Path, broken: str) -> Disruption:
    """The rate job by 4 workers, broken at ~30 % settled: `broken` is "worker" (one not
    beside the store SIGKILLed), "collector" (the one beside it SIGKILLed, then started
    again once the others have ended) or "redis" (killed, started again after `OUTAGE_S`)."""
    requests = REQUESTS
    records = requests * CHUNKS_PER_REQUEST
    victim, outage_s = "", 0.0
    redis_down = broken == "redis"
    with RedisServer(work / "redis", appendonly=redis_down) as redis_server:
        async with simulator(KEY_RPMS) as base_url:
            cluster = {} if redis_down else {"visibility_timeout_s": VISIBILITY_S}
            job = write_job(work / "job", base_url, redis_server.url, records, cluster)
            started = time.monotonic()
            # JSON lines, every second: each event (with its data) is printed once.
            flags = ("--json", "--interval", "1")
            async with workers_running(job, work, DISRUPTED_WORKERS, *flags) as running:
                settled = await until_settled(redis_server.url, round(records * DISRUPT_AT))
                at_s = time.monotonic() - started
                if redis_down:
                    await asyncio.to_thread(redis_server.kill)
                    down = time.monotonic()
                    await asyncio.sleep(OUTAGE_S)  # the outage itself, chosen, not a guess
                    await asyncio.to_thread(redis_server.start)  # same port, AOF reloaded
                    outage_s = time.monotonic() - down
                else:
                    # Only the worker beside the store collects (see the module).
                    claimed = (await claimed_store(redis_server.url)).resolve()
                    beside_store = broken == "collector"
                    target = next(
                        w
                        for w in reversed(running)
                        if (w.store.resolve() == claimed) == beside_store
                    )
                    target.proc.kill()
                    victim = target.name
                codes = await exit_codes(running)
            store = await claimed_store(redis_server.url)
            lived = [w for w in running if w.name != victim]
            stored_before, waiting, return_s = None, 0, 0.0
            if broken == "collector":
                # As an operator would: start a worker on that store path again.
                stored_before = tally_store(store, records)
                waiting = await results_waiting(redis_server.url)
                back = time.monotonic()
                async with killed_if_left() as again:
                    again.append(await start_worker(job, f"{victim}-again", store, *flags))
                    codes = (*codes, *(await exit_codes(again)))
                running = [*running, *again]
                lived += again
                return_s = time.monotonic() - back
            wall_s = time.monotonic() - started
            stats = await simulator_stats(base_url)
    beside = next((w for w in reversed(lived) if w.store.resolve() == store.resolve()), lived[0])
    return Disruption(
        wall_s=wall_s,
        bound_s=rate_bound_s(requests),
        at_s=at_s,
        settled_then=settled,
        tally=tally_store(store, records),
        codes={w.name: c for w, c in zip(running, codes, strict=True)},
        events={kind: [e for w in lived for e in worker_events(w, kind)] for kind in WATCHED},
        rate_limited=int(stats["rate_limited"]),
        requests=int(stats["requests"]) - 1,
        closing=f"{beside.name}: {cluster_line(beside)}",
        victim=victim,
        outage_s=outage_s,
        stored_before_return=stored_before,
        waiting_entries=waiting,
        return_s=return_s,
    )


async def kill_scenario(collector: bool = False) -> int:
    """Scenario `kill` (`kill-collector`): one of 4 workers SIGKILLed at ~30 % settled, one
    not beside the store (the one beside it, started again once the others have ended);
    1 if the store does not end with every chunk once."""
    records = REQUESTS * CHUNKS_PER_REQUEST
    which = "the one beside the store" if collector else "one not beside the store"
    print(
        f"\n== {'kill-collector' if collector else 'kill'}: {DISRUPTED_WORKERS} workers on the "
        f"rate job ({records} chunks), {which} SIGKILLed once {DISRUPT_AT:.0%} of the chunks "
        f"are settled (the run's progress in Redis); visibility timeout {VISIBILITY_S:g} s"
    )
    with tempfile.TemporaryDirectory(prefix="crawldeck-cluster-bench-") as tmp:
        out = await disrupted_run(Path(tmp), "collector" if collector else "worker")
    misses = out.misses(records)
    print(
        f"{'killed':>6} {'at':>6} {'settled then':>12} {'wall':>7} {'bound':>7} "
        f"{'requests':>8} {'reclaimed':>17} {'dead':>4} {'done/failed/lost/twice':>22}  "
        "exit codes"
    )
    reclaimed = f"{out.reclaimed} ({out.reclaimed_chunks} ch.)"
    print(
        f"{out.victim:>6} {out.at_s:5.1f}s {out.settled_then:12d} {out.wall_s:6.1f}s "
        f"{out.bound_s:6.1f}s {out.requests:8d} {reclaimed:>17} "
        f"{len(out.events[EventKind.DEAD_LETTER]):4d} "
        f"{out.tally!s:>22}  {' '.join(f'{n}={c}' for n, c in out.codes.items())}"
    )
    print(
        f"  requests: what the simulator saw ({REQUESTS} in the job); reclaimed: the "
        "batch_reclaimed events the workers that lived printed (--json), chunks in them"
    )
    if out.stored_before_return is not None:
        print(
            f"  once the other 3 had exited: the store {out.stored_before_return} "
            f"(done/failed/lost/twice), {out.waiting_entries} result entries waiting in "
            f"Redis; {out.victim} started again on its store path collected them and "
            f"ended in {out.return_s:.1f} s"
        )
    print(f"  {out.closing or 'no closing cluster line'}")
    print("  verdict: " + ("pass" if not misses else "FAIL: " + "; ".join(misses)), flush=True)
    return 1 if misses else 0


async def restart_scenario() -> int:
    """Scenario `restart`: Redis killed at ~30 % done and started again; 1 if anything is lost."""
    records = REQUESTS * CHUNKS_PER_REQUEST
    print(
        f"\n== restart: {DISRUPTED_WORKERS} workers on the rate job ({records} chunks); "
        f"redis-server (appendonly yes, appendfsync always) SIGKILLed once {DISRUPT_AT:.0%} "
        f"of the chunks are settled, started again on its port {OUTAGE_S:g} s later"
    )
    with tempfile.TemporaryDirectory(prefix="crawldeck-cluster-bench-") as tmp:
        out = await disrupted_run(Path(tmp), "redis")
    misses = out.misses(records)
    print(
        f"{'at':>6} {'settled then':>12} {'outage':>7} {'wall':>7} {'bound':>7} "
        f"{'requests':>8} {'warnings':>8} {'429s':>5} {'done/failed/lost/twice':>22}  exit codes"
    )
    print(
        f"{out.at_s:5.1f}s {out.settled_then:12d} {out.outage_s:6.1f}s {out.wall_s:6.1f}s "
        f"{out.bound_s:6.1f}s {out.requests:8d} {len(out.events[EventKind.WARNING]):8d} "
        f"{out.rate_limited:5d} "
        f"{out.tally!s:>22}  {' '.join(f'{n}={c}' for n, c in out.codes.items())}"
    )
    print(
        "  outage: from the kill until the new server said it was ready (AOF reloaded); "
        f"requests: what the simulator saw ({REQUESTS} in the job); warnings: warning events "
        "the workers printed (--json)"
    )
    for event in out.events[EventKind.WARNING][:3]:
        print(f"  warning: {event['message']}")
    print(f"  {out.closing or 'no closing cluster line'}")
    print("  verdict: " + ("pass" if not misses else "FAIL: " + "; ".join(misses)), flush=True)
    return 1 if misses else 0


@dataclass(frozen=True)
class Throughput:
    workers: int
    shared: bool  # in a cluster (else one process alone, for comparison)
    wall_s: float  # first launch until every worker exited
    busy_s: float  # the simulator's first answered chunk until its last (polled)
    requests: int
    chunks: int
    worker_cpu_s: float  # every worker's user + system CPU, start-up included
    service_cpu_s: float  # the simulator's and redis-server's
    tally: StoreTally
    codes: tuple[int, ...]

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.busy_s

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.busy_s


def children_cpu_s() -> float:
    """User + system CPU of this process's children that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def running_children_cpu_s() -> float:
    """User + system CPU so far of this process's children still running (the services)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


async def busy_span(base_url: str, chunks: int) -> float:
    """Seconds from the simulator's first answered chunk to its `chunks`-th (polled).

    The same measure with or without a cluster; start-up and the end's
    bookkeeping are left out, so the rows compare the work itself.
    """
    while (await simulator_stats(base_url))["chunk_ids_answered"] == 0:
        await asyncio.sleep(CPU_POLL_S)
    first = time.monotonic()
    while (await simulator_stats(base_url))["chunk_ids_answered"] < chunks:
        await asyncio.sleep(CPU_POLL_S)
    return time.monotonic() - first


async def cpu_run(workers: int, shared: bool, requests: int, work: Path) -> Throughput:
    """The CPU-bound job by `workers` workers (limits far above, no latency)."""
    records = requests * CHUNKS_PER_REQUEST
    rpms = (CPU_RPM,) * len(KEY_RPMS)
    cpu_before = children_cpu_s()
    with RedisServer(work / "redis") as redis_server:
        async with simulator(rpms, latency=(0.0, 0.0)) as base_url:
            redis_url = redis_server.url if shared else None
            job = write_job(work / "job", base_url, redis_url, records, rpms=rpms)
            started = time.monotonic()
            async with workers_running(job, work, workers, "--interval", "5") as running:
                busy_s = await busy_span(base_url, records)
                codes = await exit_codes(running)
            wall_s = time.monotonic() - started
            stats = await simulator_stats(base_url)
            store = await claimed_store(redis_url) if redis_url else running[0].store
            service_cpu_s = running_children_cpu_s()
    return Throughput(
        workers=workers,
        shared=shared,
        wall_s=wall_s,
        busy_s=busy_s,
        requests=int(stats["admitted"]),
        chunks=records,
        worker_cpu_s=children_cpu_s() - cpu_before,
        service_cpu_s=service_cpu_s,
        tally=tally_store(store, records),
        codes=codes,
    )


async def cpu_scenario(requests: int) -> int:
    """Scenario `cpu`: 1, 2 and 4 workers with nothing but CPU to wait for; 1 on a bad store."""
    print(
        f"\n== cpu: {requests} requests of {CHUNKS_PER_REQUEST} chunks, 4 keys of "
        f"{CPU_RPM:,} RPM each (no limit binds), latency 0, concurrency ceiling "
        f"{CONCURRENCY} a worker; then one process without [cluster], for comparison"
    )
    print(
        f"  this machine has {os.cpu_count()} cores, shared with the simulator, redis-server "
        "(and other work): past 2 workers no gain can show here"
    )
    print(
        f"{'workers':>9} {'wall':>7} {'busy':>7} {'req/s':>7} {'chunks/s':>8} {'× 1':>5} "
        f"{'worker CPU':>10} {'ms/req':>6} {'sim+redis CPU':>13} {'done/failed/lost/twice':>22}"
    )
    failed = 0
    rows: list[Throughput] = []
    # The process alone last: its ratio is to the first row, one worker in the cluster.
    for workers, shared in (*((n, True) for n in CPU_WORKERS), (1, False)):
        with tempfile.TemporaryDirectory(prefix="crawldeck-cluster-bench-") as tmp:
            out = await cpu_run(workers, shared, requests, Path(tmp))
        rows.append(out)
        one = rows[0]
        if any(out.codes) or not out.tally.whole or out.tally.done != out.chunks:
            failed += 1
        label = f"{workers}" if shared else "1 alone"
        print(
            f"{label:>9} {out.wall_s:6.1f}s {out.busy_s:6.1f}s {out.requests_per_s:7.0f} "
            f"{out.chunks_per_s:8.0f} {out.requests_per_s / one.requests_per_s:5.2f} "
            f"{out.worker_cpu_s:9.1f}s {out.worker_cpu_s / out.requests * 1000:6.2f} "
            f"{out.service_cpu_s:12.1f}s {out.tally!s:>22}"
            + ("" if not any(out.codes) else f"  exit codes {list(out.codes)}"),
            flush=True,
        )
    print(
        "  busy: the simulator's first answered chunk until its last; req/s (requests it "
        "admitted) and chunks/s over it; × 1: ÷ one worker in the cluster; worker CPU and "
        "ms/req include each worker's start-up; '1 alone': no [cluster], no Redis"
    )
    return 1 if failed else 0


@dataclass
class CrawlThroughput:
    """One crawl run: its span of work, what the sites served and the store kept."""

    workers: int
    shared: bool
    wall_s: float
    busy_s: float
    pages: int  # page rows in the store (one a page fetched)
    twice: int  # page rows beyond one a URL: always 0, a URL is one row
    requests: int  # requests the sites saw, robots.txt included
    robots: int  # requests for robots.txt: one a site when each is crawled once
    chunks: int  # results in the store
    llm_requests: int  # chat requests the simulator admitted: chunks ÷ batch size when batched well
    lost: int  # chunks sent (the simulator's count) without a result stored
    worker_cpu_s: float
    service_cpu_s: float  # the site server's, the simulator's and redis-server's
    codes: tuple[int, ...]

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.busy_s

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.busy_s


def write_crawl_job(folder: Path, base_url: str, redis_url: str | None, targets: Path) -> Path:
    """The crawl job: `targets`, fetch and extraction unbounded but by CPU, batches of 4."""
    job = write_job(folder, base_url, redis_url, 0, rpms=(CPU_RPM,) * len(KEY_RPMS))
    text = job.read_text(encoding="utf-8").replace('input = "records.txt"\n', "")
    crawl = f"""
[crawl]
targets = "{targets}"
concurrency = 64
per_host = 1
politeness_delay_s = 0.0
max_depth = 1
max_pages_per_domain = {CRAWL_PAGES_A_SITE}
extract_workers = 1
contact = "bench@example.com"
allow_addresses = ["127.0.0.0/8"]
resolve = {{ "*.test" = "127.0.0.1" }}
"""
    # [crawl] before [cluster]: a table ends where the next begins.
    head, cluster, rest = text.partition("\n[cluster]\n")
    job.write_text(head + crawl + cluster + rest, encoding="utf-8")
    return job


async def site_counts(port: int) -> tuple[int, int]:
    """The sites' (requests, robots.txt requests) so far, from their `/_stats`."""
    async with httpx2.AsyncClient(trust_env=False) as http:
        stats = (await http.get(f"http://127.0.0.1:{port}/_stats")).json()
    return int(stats["requests"]), int(stats["robots"])


async def crawl_busy_span(base_url: str, port: int, running: Sequence[Worker]) -> float:
    """Seconds from the sites' first request to the last change of the sites' or the
    simulator's counters, once every worker has exited (polled)."""
    while (await site_counts(port))[0] == 0:
        await asyncio.sleep(CPU_POLL_S)
    first = last = time.monotonic()
    seen = (0, 0)
    while any(w.proc.returncode is None for w in running):
        now = (
            (await site_counts(port))[0],
            int((await simulator_stats(base_url))["chunk_ids_answered"]),
        )
        if now != seen:
            seen, last = now, time.monotonic()
        await asyncio.sleep(CPU_POLL_S)
    return last - first


def crawl_tally(db: Path) -> tuple[int, int, int]:
    """The store's (page rows, page rows beyond one a URL, results)."""
    with sqlite3.connect(db) as conn:
        pages, urls = conn.execute("SELECT count(*), count(DISTINCT url) FROM pages").fetchone()
        results = conn.execute("SELECT count(DISTINCT chunk_id) FROM results").fetchone()[0]
    return int(pages), int(pages - urls), int(results)


async def crawl_run(workers: int, shared: bool, sites: int, work: Path) -> CrawlThroughput:
    """The crawl job by `workers` workers: fresh sites, Redis and simulator each run."""
    cpu_before = children_cpu_s()
    domains = work / "all-domains.txt"
    serve = ["engine.simulation.site_server", "--count", str(sites * 2)]
    serve += ["--domains-file", str(domains), "--slow-s", "0.1"]
    with RedisServer(work / "redis") as redis_server:
        async with (
            service_process("site server", serve) as line,
            simulator((CPU_RPM,) * len(KEY_RPMS), latency=(0.0, 0.0)) as base_url,
        ):
            port = int(json.loads(line)["port"])
            normal = [
                f"{name}:{port}\n"
                for n, name in enumerate(synthetic_domains(sites * 2), start=1)
                if site_kind(n) == "normal"
            ][:sites]
            targets = work / "domains.txt"
            targets.write_text("".join(normal), encoding="utf-8")
            redis_url = redis_server.url if shared else None
            job = write_crawl_job(work / "job", base_url, redis_url, targets)
            started = time.monotonic()
            async with workers_running(job, work, workers, "--interval", "5") as running:
                busy_s = await crawl_busy_span(base_url, port, running)
                codes = await exit_codes(running)
            wall_s = time.monotonic() - started
            requests, robots = await site_counts(port)
            llm = await simulator_stats(base_url)
            sent, llm_requests = int(llm["chunk_ids_answered"]), int(llm["admitted"])
            store = await claimed_store(redis_url) if redis_url else running[0].store
            service_cpu_s = running_children_cpu_s()
    pages, twice, chunks = crawl_tally(store)
    return CrawlThroughput(
        workers=workers,
        shared=shared,
        wall_s=wall_s,
        busy_s=busy_s,
        pages=pages,
        twice=twice,
        requests=requests,
        robots=robots,
        chunks=chunks,
        llm_requests=llm_requests,
        lost=max(0, sent - chunks),
        worker_cpu_s=children_cpu_s() - cpu_before,
        service_cpu_s=service_cpu_s,
        codes=codes,
    )


async def crawl_scenario(sites: int) -> int:
    """Scenario `crawl`: 1, 2 and 4 workers when fetch + extraction bind; 1 alone."""
    print(
        f"\n== crawl: {sites} sites of {CRAWL_PAGES_A_SITE} pages (site server in its own "
        "process), no politeness delay, 1 extraction process a worker; simulator at latency 0, "
        f"4 keys of {CPU_RPM:,} RPM; then one process without [cluster], for comparison"
    )
    print(
        f"  this machine has {os.cpu_count()} cores, shared with the site server, the "
        "simulator, redis-server (and other work)"
    )
    print(
        f"{'workers':>9} {'wall':>7} {'busy':>7} {'pages/s':>8} {'chunks/s':>8} {'× 1':>5} "
        f"{'worker CPU':>10} {'ms/page':>7} {'sites+sim+redis CPU':>19} {'pages':>6} "
        f"{'robots':>6} {'chunks':>6} {'LLM req':>7} {'lost/twice':>10}"
    )
    failed = 0
    rows: list[CrawlThroughput] = []
    for workers, shared in (*((n, True) for n in CRAWL_WORKERS), (1, False)):
        with tempfile.TemporaryDirectory(prefix="crawldeck-cluster-crawl-") as tmp:
            out = await crawl_run(workers, shared, sites, Path(tmp))
        rows.append(out)
        one = rows[0]
        whole = out.pages == sites * CRAWL_PAGES_A_SITE and out.robots == sites
        if any(out.codes) or not whole or out.lost or out.twice:
            failed += 1
        label = f"{workers}" if shared else "1 alone"
        print(
            f"{label:>9} {out.wall_s:6.1f}s {out.busy_s:6.1f}s {out.pages_per_s:8.1f} "
            f"{out.chunks_per_s:8.1f} {out.pages_per_s / one.pages_per_s:5.2f} "
            f"{out.worker_cpu_s:9.1f}s {out.worker_cpu_s / max(1, out.pages) * 1000:7.1f} "
            f"{out.service_cpu_s:18.1f}s {out.pages:6d} {out.robots:6d} {out.chunks:6d} "
            f"{out.llm_requests:7d} {out.lost:>5d}/{out.twice:<4d}"
            + ("" if not any(out.codes) else f"  exit codes {list(out.codes)}"),
            flush=True,
        )
    print(
        "  busy: the sites' first request until the sites' and the simulator's counters last "
        "moved; pages/s (page rows stored) and chunks/s (results stored) over it; × 1: ÷ one "
        "worker in the cluster; worker CPU and ms/page include each worker's start-up and "
        "its extraction process; robots: robots.txt requests (one a site: each site crawled "
        "by one worker); LLM req: chat requests the simulator admitted (a worker batches "
        "the chunks of all its sites together, as one process does); lost: chunks "
        "answered without a stored result"
    )
    return 1 if failed else 0


SCENARIOS = ("rate", "kill", "restart", "cpu", "crawl")
EXTRA_SCENARIOS = ("kill-collector",)  # only when asked for: the default run stays ~4½ min


async def main(
    scenarios: Sequence[str], worker_counts: Sequence[int], cpu_requests: int, crawl_sites: int
) -> int:
    failed = 0
    started = time.monotonic()
    if "rate" in scenarios:
        failed += await rate_scenario(worker_counts, REQUESTS)
    if "kill" in scenarios:
        failed += await kill_scenario()
    if "kill-collector" in scenarios:
        failed += await kill_scenario(collector=True)
    if "restart" in scenarios:
        failed += await restart_scenario()
    if "cpu" in scenarios:
        failed += await cpu_scenario(cpu_requests)
    if "crawl" in scenarios:
        failed += await crawl_scenario(crawl_sites)
    print(f"\n{', '.join(scenarios)} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.cluster_rate_limit")
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS + EXTRA_SCENARIOS,
        action="append",
        help="scenarios to run, in this order: rate, kill, kill-collector, restart, cpu, crawl "
        "(default: all but kill-collector)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        help="worker counts of the rate scenario (default: 1 and 4)",
    )
    parser.add_argument(
        "--cpu-requests",
        type=int,
        default=CPU_REQUESTS,
        help=f"requests of the cpu scenario's job (default {CPU_REQUESTS})",
    )
    parser.add_argument(
        "--crawl-sites",
        type=int,
        default=CRAWL_SITES,
        help=f"sites of the crawl scenario's job (default {CRAWL_SITES})",
    )
    args = parser.parse_args(argv)
    order = ("rate", "kill", "kill-collector", "restart", "cpu", "crawl")
    chosen = [s for s in order if s in (args.scenario or SCENARIOS)]
    # No shorter rate job: a job the keys' buckets hold whole has no rate to reach.
    return asyncio.run(main(chosen, args.workers or [1, 4], args.cpu_requests, args.crawl_sites))


if __name__ == "__main__":
    raise SystemExit(cli())
