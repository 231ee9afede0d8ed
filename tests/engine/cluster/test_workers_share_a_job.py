"""`crawldeck run JOB.toml --headless` with `[cluster]`: several processes share one job.

Real processes all the way, as a user would run them: a `redis-server`, the
bundled simulator in a process of its own holding the key's limit (its
bucket holds one second of it, so a worker that spent the key's limit
alone, beside another, would be refused), and `crawldeck run` workers on
one job file.  Judged by what a user sees: exit codes, the lines printed,
the one SQLite store, and the simulator's own count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx2
from redis.asyncio import Redis

from engine.control.client import ControlClient
from engine.observe.snapshot import JobState, Snapshot
from engine.simulation.service_process import service_process
from tests.engine.conftest import write_records
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[3]
KEY_ENV = "CRAWLDECK_CLUSTER_TEST_KEY"
SECRET = "sk-cluster-test-0123456789"
PREFIX = "crawldeck:cluster-test"
RUN_TIMEOUT_S = 90.0  # a hang guard only: these jobs take seconds
SUMMARY = re.compile(r"(\d+) done, (\d+) failed")


@contextlib.asynccontextmanager
async def simulator(rpm: int, latency_s: tuple[float, float]) -> AsyncIterator[str]:
    """The bundled simulator in its own process, one key of `rpm` enforced per second;
    yields its base URL."""
    keys = json.dumps([{"secret": SECRET, "rpm": rpm, "tpm": None}])
    arguments = [
        "engine.simulation.simulator",
        "--keys-from-env",
        "SIM_KEYS",
        "--latency",
        f"{latency_s[0]},{latency_s[1]}",
        "--burst-s",
        "1",
        "--exit-with-parent",
    ]
    async with service_process("simulator", arguments, {**os.environ, "SIM_KEYS": keys}) as line:
        yield line.removeprefix("listening on ")


async def simulator_stats(base_url: str) -> dict[str, int]:
    async with httpx2.AsyncClient() as http:
        response = await http.get(base_url.removesuffix("/v1") + "/_sim/stats")
        stats: dict[str, int] = response.json()
        return stats


def write_job(
    folder: Path,
    *,
    base_url: str,
    redis_url: str,
    records: int,
    rpm: int,
    concurrency: int = 4,
    cluster: str = "",
) -> Path:
    """A job over `records` text records (one chunk each), batches of two, shared through
    `redis_url`."""
    folder.mkdir(parents=True, exist_ok=True)
    write_records(folder / "records.txt", records)
    job = folder / "job.toml"
    job.write_text(
        f"""\
[job]
name = "cluster-test"
input = "records.txt"
input_format = "text"
store = "results.db"
chunk_tokens = 400
chunk_overlap_tokens = 0
preset = "steady"

[[providers]]
name = "sim"
base_url = "{base_url}"
model = "gpt-4o-mini"

[[providers.keys]]
env = "{KEY_ENV}"
alias = "main"
rpm = {rpm}

[presets.steady]
concurrency = {concurrency}
batch_size = 2
max_retries = 3
backoff_base_s = 0.05
backoff_max_s = 0.2
request_timeout_s = 15.0
adaptive_concurrency = false

[cluster]
redis = "{redis_url}"
prefix = "{PREFIX}"
{cluster}""",
        encoding="utf-8",
    )
    return job


@dataclass
class Worker:
    """One `crawldeck run --headless` process; its output goes to files."""

    proc: asyncio.subprocess.Process
    out: Path
    err: Path

    @property
    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8")

    @property
    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8")

    def summary(self) -> tuple[int, int]:
        """(done, failed) of this worker's own, from its closing line."""
        found = SUMMARY.search(self.stderr)
        assert found, self.stderr
        return int(found[1]), int(found[2])


async def start_worker(job: Path, name: str, *flags: str) -> Worker:
    out, err = job.parent / f"{name}.out", job.parent / f"{name}.err"
    env = {**os.environ, KEY_ENV: SECRET}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tui.cli",
            "run",
            str(job),
            "--headless",
            "--interval",
            "0.5",
            *flags,
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    return Worker(proc, out, err)


async def ended(workers: Sequence[Worker]) -> list[int]:
    """Every worker's exit code, once all have ended."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        return [await w.proc.wait() for w in workers]


def results(db: Path) -> tuple[int, int, int]:
    """(results, distinct chunks among them, failures) in a store; zeros while it is not there."""
    if not db.exists():
        return 0, 0, 0
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        try:
            rows, chunks = conn.execute(
                "SELECT count(*), count(DISTINCT chunk_id) FROM results"
            ).fetchone()
            (failures,) = conn.execute("SELECT count(*) FROM failures").fetchone()
        except sqlite3.DatabaseError:  # being created
            return 0, 0, 0
    return int(rows), int(chunks), int(failures)


async def claimed_store(redis_url: str, first: Worker) -> None:
    """Wait for the first worker to claim the job's store in Redis (it does as it joins)."""
    redis = Redis.from_url(redis_url)
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            while not await redis.exists(f"{PREFIX}:store"):
                assert first.proc.returncode is None, first.stderr
                await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def control_socket(store: Path, worker: Worker) -> Path:
    """The worker's control socket, once it serves it (beside the store it was given)."""
    path = store.with_name(store.name + ".crawldeck") / "control.sock"
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while not path.exists():
            assert worker.proc.returncode is None, worker.stderr
            await asyncio.sleep(0.05)
    return path


async def until_remote(client: ControlClient, condition: Callable[[Snapshot], bool]) -> Snapshot:
    """Until the worker's own snapshot, asked through its socket, meets the condition."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while not condition(snap := await client.snapshot()):
            await asyncio.sleep(0.05)
    return snap


def kill_all(workers: Sequence[Worker]) -> None:
    for worker in workers:
        if worker.proc.returncode is None:
            worker.proc.kill()


async def test_two_workers_share_a_job_one_store_and_the_keys_limit(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two workers on one job file: the second as if on another machine (its store path is
    not the job's, so it never writes one).  A pause sent to one worker's control socket
    holds both, a resume sent to the other's lets both go.  Both do part of the work; the
    job's store gets exactly one result per chunk; together they stay within the key's
    limit."""
    records, rpm = 240, 1200
    async with simulator(rpm, (0.05, 0.2)) as base_url:
        job = write_job(
            tmp_path / "job",
            base_url=base_url,
            redis_url=redis_server.url,
            records=records,
            rpm=rpm,
        )
        elsewhere = tmp_path / "b" / "results.db"  # short: a Unix socket path is, too
        workers = [await start_worker(job, "first")]
        try:
            # The job's store is the first worker's: the one that claims it before any other.
            await claimed_store(redis_server.url, workers[0])
            workers.append(await start_worker(job, "second", "--set", f"job.store={elsewhere}"))
            first_socket = await control_socket(job.parent / "results.db", workers[0])
            second_socket = await control_socket(elsewhere, workers[1])
            async with (
                await ControlClient.connect(first_socket) as to_first,
                await ControlClient.connect(second_socket) as to_second,
            ):
                await to_first.control("pause")  # `crawldeck attach` to the first worker, p
                # The cluster's view comes on the heartbeat's rhythm: a pause may come first.
                paused = await until_remote(
                    to_second,
                    lambda s: s.state is JobState.PAUSED and s.cluster is not None,
                )
                assert paused.cluster is not None and paused.cluster.live == 2
                await to_second.control("resume")
                await until_remote(to_first, lambda s: s.state is JobState.RUNNING)
            codes = await ended(workers)
        finally:
            kill_all(workers)
        stats = await simulator_stats(base_url)

    assert codes == [0, 0], [w.stderr for w in workers]
    assert results(job.parent / "results.db") == (records, records, 0)
    assert results(elsewhere) == (0, 0, 0), "a worker away from the job's store writes none"
    first, second = (w.summary() for w in workers)
    assert first[0] > 0 and second[0] > 0, "both did part of the work"
    assert first[0] + second[0] == records and first[1] == second[1] == 0
    for worker in workers:
        assert (
            f"cluster run 1: {records}/{records} chunks (done {records}, failed 0, "
            "dead letters 0) by 2 workers (0 lost)" in worker.stderr
        )
        last_status = worker.stdout.strip().splitlines()[-1]
        assert f"| cluster {records}/{records} (done {records}, failed 0)" in last_status
    assert f"this worker stored {records} rows in it" in workers[0].stderr
    assert "· paused: paused" in workers[1].stdout and "· resumed: resumed" in workers[0].stdout
    assert "this worker stored" not in workers[1].stderr
    # The simulator's count: every request it admitted, none refused for the key's limit.
    assert stats["admitted"] >= records // 2
    assert stats["rate_limited"] <= max(1, stats["admitted"] // 100), stats


async def test_a_worker_joining_once_the_input_is_enqueued_reads_none_of_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A machine added to a running job: the whole input is in the stream already, so the
    new worker reads none of it — the job's input is what was enqueued, even where the
    file it finds has grown since — and takes its share of the batches."""
    records, rpm = 160, 600  # 80 requests at 10 a second: the second joins well before the end
    async with simulator(rpm, (0.05, 0.2)) as base_url:
        job = write_job(
            tmp_path / "job",
            base_url=base_url,
            redis_url=redis_server.url,
            records=records,
            rpm=rpm,
        )
        workers = [await start_worker(job, "first")]
        redis = Redis.from_url(redis_server.url)
        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                while await redis.hget(f"{PREFIX}:run:1:work:progress", "input_complete") is None:
                    assert workers[0].proc.returncode is None, workers[0].stderr
                    await asyncio.sleep(0.05)
            write_records(job.parent / "records.txt", records + 40)  # 40 more, read by none
            elsewhere = tmp_path / "b" / "results.db"
            workers.append(await start_worker(job, "second", "--set", f"job.store={elsewhere}"))
            codes = await ended(workers)
        finally:
            kill_all(workers)
            await redis.aclose()

    assert codes == [0, 0], [w.stderr for w in workers]
    assert results(job.parent / "results.db") == (records, records, 0)
    first, second = (w.summary() for w in workers)
    assert second[0] > 0, "the worker that joined late did part of the work"
    assert first[0] + second[0] == records and first[1] == second[1] == 0
    # Its own count goes against the job's total, as every worker's does.
    last_status = workers[1].stdout.strip().splitlines()[-1]
    assert f"] {second[0]}/{records} (done {second[0]}, failed 0" in last_status


async def test_a_worker_killed_mid_job_leaves_nothing_undone(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGKILL the worker that collects, about a third of the way through: the other
    takes over its batches once they are idle past the visibility timeout (a loud event),
    takes over collecting, and the job ends with exactly one result per chunk."""
    records, rpm = 160, 1200
    async with simulator(rpm, (0.2, 0.4)) as base_url:
        job = write_job(
            tmp_path / "job",
            base_url=base_url,
            redis_url=redis_server.url,
            records=records,
            rpm=rpm,
            cluster="heartbeat_s = 0.3\nvisibility_timeout_s = 2\n",
        )
        workers = [await start_worker(job, "a"), await start_worker(job, "b")]
        redis = Redis.from_url(redis_server.url)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            # A third settled, as the run's progress in Redis counts it (the store's
            # rows lag behind it, and a store being written can refuse a reader).
            progress = f"{PREFIX}:run:1:work:progress"
            while int(await redis.hget(progress, "settled_chunks") or 0) < records // 3:
                ended_early = [w for w in workers if w.proc.returncode is not None]
                assert not ended_early, [(w.proc.returncode, w.stderr) for w in ended_early]
                assert time.monotonic() < deadline, "the job made no progress"
                await asyncio.sleep(0.05)
            holder = str(await redis.get(f"{PREFIX}:collector"))  # the worker id: host-pid-…
            killed = next(w for w in workers if f"-{w.proc.pid}-" in holder)
            os.kill(killed.proc.pid, signal.SIGKILL)
            survivor = next(w for w in workers if w is not killed)
            codes = await ended([survivor])
            stats = await simulator_stats(base_url)
        finally:
            kill_all(workers)
            await redis.aclose()

    assert codes == [0], survivor.stderr
    assert results(job.parent / "results.db") == (records, records, 0)
    assert "· batch_reclaimed: took over batch" in survivor.stdout
    assert (
        f"cluster run 1: {records}/{records} chunks (done {records}, failed 0, "
        "dead letters 0) by 2 workers (1 lost)" in survivor.stderr
    )
    assert "workers 0 live 1 lost" in survivor.stdout.strip().splitlines()[-1]
    # What the dead worker had in flight is sent again, within the key's limit still.
    assert records // 2 <= stats["admitted"] and stats["rate_limited"] <= 1, stats
