"""How much CPU a headless `crawldeck run` spends before its first request.

    python -m tests.benchmarks.first_request_cpu [--rounds R]

A documents job (200 records, one key, the drift monitor on as by default)
points its provider at a listener in this process.  The listener takes the
first request that reaches it as the moment the job started sending, and
reads the job process's CPU (user + system, every thread: `psutil`) right
then; the job is then killed, its answers are not what is measured.  Next
to it, side by side and interleaved round by round, `python -c pass` — the
interpreter alone, the floor every command pays.

Both run in two environments, as in `cli_start_up`: "as is" (this shell's;
with PYTHONDONTWRITEBYTECODE set, as on the project's helper machines,
every module is compiled from source on each start) and "cached" (bytecode
kept in a temporary folder, as a user's install keeps it after its first
run).  The goal (issue 12): the first request within 1 s of start-up CPU.
It is printed next to the figures, never asserted: which heavy modules a
run avoids is asserted by `tests/engine/test_engine_imports.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import psutil

from tests.benchmarks.cli_start_up import crawldeck, environments

GOAL_S = 1.0
KEY_ENV = "CRAWLDECK_FIRST_REQUEST_BENCHMARK_KEY"
START_TIMEOUT_S = 120.0  # a hang guard: a run that never sends

JOB = """\
[job]
name = "first-request-benchmark"
input = "records.txt"
input_format = "text"
store = "results.db"
chunk_overlap_tokens = 0

[[providers]]
name = "listener"
base_url = "http://127.0.0.1:{port}/v1"
model = "gpt-4o-mini"

[[providers.keys]]
env = "{key_env}"
"""


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def floor_cpu_s(env: Mapping[str, str]) -> float:
    """CPU of `python -c pass`, start to end."""
    before = children_cpu_s()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    return children_cpu_s() - before


async def cpu_to_first_request(folder: Path, env: Mapping[str, str]) -> float:
    """Start a headless run; its CPU seconds when its first request arrives."""
    first: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    job_pid: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the request's first byte: the job has sent
        if not first.done() and job_pid:
            times = psutil.Process(job_pid[0]).cpu_times()
            first.set_result(times.user + times.system)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for leftover in ("results.db", "results.db-wal", "results.db-shm"):
        (folder / leftover).unlink(missing_ok=True)
    job = folder / "job.toml"
    job.write_text(JOB.format(port=port, key_env=KEY_ENV), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        *crawldeck(),
        "run",
        str(job),
        "--headless",
        cwd=folder,
        env={**env, KEY_ENV: "first-request-benchmark-key"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    job_pid.append(proc.pid)
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            return await first
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its answers are not what is measured
        await proc.wait()
        server.close()
        await server.wait_closed()


def main(rounds: int) -> int:
    with tempfile.TemporaryDirectory(prefix="crawldeck-first-request-") as tmp:
        folder = Path(tmp)
        (folder / "records.txt").write_text(
            "".join(f"record {i}: some words to send\n" for i in range(200)), encoding="utf-8"
        )
        envs = environments(folder)
        for env in envs.values():  # once each, unmeasured: fills the cache, warms the disk
            floor_cpu_s(env)
            asyncio.run(cpu_to_first_request(folder, env))
        floors: dict[str, list[float]] = {name: [] for name in envs}
        runs: dict[str, list[float]] = {name: [] for name in envs}
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{rounds} rounds, interleaved; load average {load} on {os.cpu_count()} cores")
        for _ in range(rounds):
            for name, env in envs.items():
                floors[name].append(floor_cpu_s(env))
                runs[name].append(asyncio.run(cpu_to_first_request(folder, env)))
        print(f"{'CPU seconds, median (min)':28} {'python -c pass':>16} {'run → 1st request':>18}")
        for name in envs:
            print(
                f"{name:28} {statistics.median(floors[name]):9.3f} ({min(floors[name]):.3f})"
                f" {statistics.median(runs[name]):10.3f} ({min(runs[name]):.3f})"
            )
        for name in envs:
            median = statistics.median(runs[name])
            verdict = "under" if median <= GOAL_S else "OVER"
            print(
                f"{name}: first request after {median:.3f} s of CPU ({verdict} the {GOAL_S} s goal)"
            )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7, help="measured runs of each")
    sys.exit(main(max(1, parser.parse_args().rounds)))
