"""Whether the engine's memory stays flat as the input grows twentyfold.

    python -m tests.benchmarks.memory_scaling [--trace]

The requirement: peak RSS within 50 MB from 10k to 200k input chunks.  Each
size runs the whole engine in a fresh child process (records of ~30 words,
one chunk per record, batch size 50, concurrency 64) against one
zero-latency simulator with no limits, in its own process.  The parent
samples the child's RSS with psutil every 0.2 s; the child also reports its
own high-water mark (`ru_maxrss`), which no sampling interval can miss.

When the difference is above 50 MB (or with `--trace`) the 200k run is
repeated under tracemalloc: one snapshot once 5% of the chunks are done,
one at 95%, and the ten source lines whose allocations grew the most in
between are printed.  tracemalloc slows the run several times over, which
is why it is not on by default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.benchmarks.engine_cpu import (
    KEY_ID,
    SECRET,
    engine_config,
    simulator_process,
    write_input,
)

SIZES = (10_000, 200_000)
WORDS_PER_RECORD = 30
BATCH_SIZE = 50
CONCURRENCY = 64
SAMPLE_S = 0.2
REQUIREMENT_MB = 50.0
MB = 1024 * 1024


# ---------------------------------------------------------------- the child
async def _growth_snapshots(engine: Any, total: int) -> tuple[Any, Any]:
    # Two points inside the steady state: after start-up allocations have
    # settled and before shutdown frees anything.
    first = last = None
    while last is None:
        done = engine.stats.done
        if first is None and done >= total * 0.05:
            first = tracemalloc.take_snapshot()
        elif first is not None and done >= total * 0.95:
            last = tracemalloc.take_snapshot()
        await asyncio.sleep(0.05)
    return first, last


def _growth_report(first: Any, last: Any, top: int = 10) -> list[str]:
    stats = last.filter_traces(
        (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
        )
    ).compare_to(first, "lineno")
    return [str(stat) for stat in stats[:top]]


async def _run(
    url: str, input_path: Path, store_path: Path, total: int, trace: bool
) -> dict[str, Any]:
    from engine.engine import Engine

    config = engine_config(
        input_path,
        store_path,
        url,
        batch_size=BATCH_SIZE,
        concurrency=CONCURRENCY,
        rpm=None,
        tpm=None,
    )
    rss_before = psutil.Process().memory_info().rss
    if trace:
        tracemalloc.start(1)
    started = time.monotonic()
    engine = Engine(config, {KEY_ID: SECRET})
    watcher = asyncio.create_task(_growth_snapshots(engine, total)) if trace else None
    state = await engine.run()
    wall = time.monotonic() - started
    growth: list[str] = []
    if watcher is not None:
        if watcher.done():
            growth = _growth_report(*watcher.result())
        else:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            growth = ["(the run ended before the 95% snapshot)"]
        tracemalloc.stop()
    snap = engine.snapshot()
    # Linux reports ru_maxrss in KiB.
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "state": str(state),
        "done": snap.counts.done,
        "requests": snap.requests,
        "wall_s": wall,
        "rss_before_mb": rss_before / MB,
        "maxrss_mb": max_rss / MB,
        "growth": growth,
    }


def child_main(args: argparse.Namespace) -> None:
    """Inside a fresh process: one run, one JSON line."""
    result = asyncio.run(
        _run(args.url, Path(args.input), Path(args.store), args.chunks, args.trace_child)
    )
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent
@dataclass(frozen=True, slots=True)
class SizeFigures:
    chunks: int
    done: int
    requests: int
    wall_s: float
    rss_before_mb: float
    peak_sampled_mb: float
    maxrss_mb: float
    growth: list[str]

    @property
    def peak_mb(self) -> float:
        # ru_maxrss catches a spike between two samples; take the higher.
        return max(self.peak_sampled_mb, self.maxrss_mb)


def run_size(url: str, work: Path, chunks: int, trace: bool = False) -> SizeFigures:
    input_path = work / f"input-{chunks}.txt"
    if not input_path.exists():
        write_input(input_path, chunks, WORDS_PER_RECORD)
    store = work / f"store-{chunks}-{'trace' if trace else 'plain'}.db"
    args = [
        sys.executable,
        "-m",
        "tests.benchmarks.memory_scaling",
        "--child",
        "--url",
        url,
        "--input",
        str(input_path),
        "--store",
        str(store),
        "--chunks",
        str(chunks),
        *(["--trace-child"] if trace else []),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(SAMPLE_S)
    stdout, stderr = proc.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"child for {chunks} chunks failed ({proc.returncode}):\n{stderr[-3000:]}"
        )
    data = json.loads(lines[-1])
    return SizeFigures(
        chunks=chunks,
        done=data["done"],
        requests=data["requests"],
        wall_s=data["wall_s"],
        rss_before_mb=data["rss_before_mb"],
        peak_sampled_mb=peak / MB,
        maxrss_mb=data["maxrss_mb"],
        growth=data["growth"],
    )


def main(force_trace: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="crawldeck-mem-") as tmp:
        work = Path(tmp)
        with simulator_process(None, None) as url:
            print(
                f"batch {BATCH_SIZE}, concurrency {CONCURRENCY}, {WORDS_PER_RECORD}-word records, "
                "zero-latency simulator without limits"
            )
            print(
                f"{'chunks':>8} {'done':>8} {'requests':>8} {'wall s':>7} {'rss start':>9} "
                f"{'peak sampled':>12} {'ru_maxrss':>9} {'peak':>7}"
            )
            figures: dict[int, SizeFigures] = {}
            for chunks in SIZES:
                fig = run_size(url, work, chunks)
                figures[chunks] = fig
                print(
                    f"{chunks:8d} {fig.done:8d} {fig.requests:8d} {fig.wall_s:7.1f} "
                    f"{fig.rss_before_mb:7.1f}MB {fig.peak_sampled_mb:10.1f}MB "
                    f"{fig.maxrss_mb:7.1f}MB {fig.peak_mb:5.1f}MB",
                    flush=True,
                )
            small, large = figures[SIZES[0]], figures[SIZES[-1]]
            diff = large.peak_mb - small.peak_mb
            verdict = "PASS" if diff <= REQUIREMENT_MB else "FAIL"
            print(
                f"peak RSS {large.chunks // 1000}k − {small.chunks // 1000}k chunks: {diff:.1f} MB "
                f"(requirement ≤ {REQUIREMENT_MB:g} MB: {verdict})",
                flush=True,
            )
            if diff > REQUIREMENT_MB or force_trace:
                traced = run_size(url, work, SIZES[-1], trace=True)
                print(
                    f"\ntracemalloc, {SIZES[-1]} chunks ({traced.wall_s:.1f}s traced): "
                    "top 10 lines by growth between 5% and 95% done"
                )
                for line in traced.growth:
                    print(f"  {line}")
    return 0 if diff <= REQUIREMENT_MB else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--trace", action="store_true", help="always run the tracemalloc pass")
    # The child side: not for people.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--trace-child", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.child:
        child_main(parsed)
    else:
        sys.exit(main(parsed.trace))
