"""What the engine costs in CPU per request, next to a bare loop of SDK calls.

    python -m tests.benchmarks.engine_cpu [--requests N] [--rounds R] [--profile]

One simulator process (zero latency, one key limited to 12000 rpm = 200
requests/s) serves two kinds of run, interleaved round by round:

- **bare**: one shared `httpx2.AsyncClient` under one `AsyncOpenAI`
  (`max_retries=0`), 64 workers calling `with_raw_response.create(...)` and
  `.parse()`, paced to 200 requests/s with the same 2 s burst as the
  engine's limiter, on the same messages the engine sends;
- **engine**: the whole pipeline (read, chunk, batch, dispatch, parse,
  store) on a text file of `requests × 5` records, batch size 5,
  concurrency 64, the key configured at 12000 rpm.

Each run is a fresh child process that measures its own user+sys CPU
(`getrusage(RUSAGE_SELF)`, all threads) from just before the work to just
after it, so imports and interpreter start-up are not counted and neither
kind of run inherits the other's heap or warm caches.

The requirement: engine CPU per request ≤ 1.5 × bare CPU per request, as the
median of the per-round ratios measured side by side.  When it is above (or
with `--profile`) one more engine child runs under cProfile and the top
functions are printed.  Ratios only: no absolute time is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import itertools
import json
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.config.settings import (
    BUILTIN_PRESETS,
    JobConfig,
    JobSettings,
    KeySettings,
    PromptSettings,
    ProviderSettings,
)

SECRET = "bench-cpu-secret"
KEY_ID = "sim/k0"
MODEL = "gpt-4o-mini"
RPM = 12_000  # 200 requests/s
HUGE_TPM = 10**10
BATCH_SIZE = 5
CONCURRENCY = 64
WORDS_PER_RECORD = 30
# The same burst the engine's limiter allows (rate_limiter.BURST_SECONDS), so
# both kinds of run are paced alike.
BURST_SECONDS = 2.0
REQUIREMENT = 1.5


# ---------------------------------------------------------------- shared set-up
@contextmanager
def simulator_process(rpm: int | None, tpm: int | None, latency: str = "0,0") -> Iterator[str]:
    """A simulator in its own process, so its CPU is not ours; yields its URL.

    Zero latency by default (the CPU benchmark); pass "LOW,HIGH" seconds for a
    provider-like pace.
    """
    limits = f"{rpm or '-'}:{tpm or '-'}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.simulation.simulator",
            "--key",
            f"{SECRET}:{limits}",
            "--latency",
            latency,
            "--exit-with-parent",
        ],
        stdin=subprocess.PIPE,  # closed when we die, so no simulator outlives us
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"simulator did not start: {line!r}")
        yield line.removeprefix("listening on ")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_input(path: Path, records: int, words: int) -> None:
    """One record per line; every record is distinct, so no chunk is a duplicate."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(records):
            text = " ".join(f"w{(i * 31 + j) % 997}" for j in range(words))
            out.write(f"record {i}: {text}\n")


def engine_config(
    input_path: Path,
    store_path: Path,
    url: str,
    *,
    batch_size: int,
    concurrency: int,
    rpm: int | None,
    tpm: int | None,
) -> JobConfig:
    """A one-key job on the simulator; chunks are big enough that a record is one chunk."""
    provider = ProviderSettings(
        name="sim",
        base_url=url,
        model=MODEL,
        keys=(KeySettings(env="CRAWLDECK_BENCH_KEY", alias="k0", rpm=rpm, tpm=tpm),),
    )
    preset = replace(BUILTIN_PRESETS["aggressive"], concurrency=concurrency, batch_size=batch_size)
    return JobConfig(
        job=JobSettings(
            name="bench",
            input=str(input_path),
            input_format="text",
            store=str(store_path),
            chunk_tokens=2000,
            chunk_overlap_tokens=0,
        ),
        providers=(provider,),
        preset=preset,
    )


def cpu_seconds() -> float:
    """User + system CPU of this process, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- the children
def _batched_messages(input_path: Path, requests: int) -> list[list[dict[str, str]]]:
    # The exact messages the engine would build for the same input.
    from engine.pipeline.chunking import iter_chunks
    from engine.pipeline.inputs import iter_documents
    from engine.pipeline.prompt import build_messages

    job = JobSettings(
        input=str(input_path), input_format="text", chunk_tokens=2000, chunk_overlap_tokens=0
    )
    chunks = iter_chunks(iter_documents(job), job.chunk_tokens, job.chunk_overlap_tokens)
    prompt = PromptSettings()
    out = []
    for _ in range(requests):
        batch = list(itertools.islice(chunks, BATCH_SIZE))
        if not batch:
            break
        out.append(build_messages(prompt, batch))
    return out


async def _bare_loop(url: str, all_messages: Sequence[list[dict[str, str]]]) -> dict[str, Any]:
    import httpx2
    import openai

    # Pooled like the engine's ProviderClients, so neither side pays for
    # reconnects the other doesn't.
    shared = httpx2.AsyncClient(
        limits=httpx2.Limits(max_connections=512, max_keepalive_connections=512),
        timeout=httpx2.Timeout(60.0, connect=10.0),
    )
    client = openai.AsyncOpenAI(api_key=SECRET, base_url=url, max_retries=0, http_client=shared)
    rate = RPM / 60.0
    burst = rate * BURST_SECONDS
    next_index = itertools.count()
    errors = 0
    cpu0, wall0 = cpu_seconds(), time.monotonic()

    async def worker() -> None:
        nonlocal errors
        for i in next_index:
            if i >= len(all_messages):
                return
            # Request i may start once the bucket has refilled for it: a token
            # bucket of `burst` at `rate`, as a schedule instead of a lock.
            delay = wall0 + (i - burst) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=all_messages[i],  # type: ignore[arg-type]
                    temperature=0.0,
                    timeout=60.0,
                )
                completion = raw.parse()
                _ = completion.choices[0].message.content
            except openai.APIError:
                errors += 1

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(CONCURRENCY):
                tg.create_task(worker())
        cpu1, wall1 = cpu_seconds(), time.monotonic()
    finally:
        await shared.aclose()  # closing `client` too would close the shared pool twice
    return {
        "cpu_s": cpu1 - cpu0,
        "requests": len(all_messages),
        "wall_s": wall1 - wall0,
        "errors": errors,
        "rate_limited": 0,
    }


async def _engine_run(
    url: str, input_path: Path, store_path: Path, profile_path: Path | None
) -> dict[str, Any]:
    from engine.engine import Engine

    config = engine_config(
        input_path,
        store_path,
        url,
        batch_size=BATCH_SIZE,
        concurrency=CONCURRENCY,
        rpm=RPM,
        tpm=HUGE_TPM,
    )
    profiler = cProfile.Profile() if profile_path else None
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    if profiler:
        profiler.enable()
    engine = Engine(config, {KEY_ID: SECRET})
    state = await engine.run()
    if profiler:
        profiler.disable()
    cpu1, wall1 = cpu_seconds(), time.monotonic()
    if profiler and profile_path:
        profiler.dump_stats(profile_path)
    snap = engine.snapshot()
    return {
        "cpu_s": cpu1 - cpu0,
        "requests": snap.requests,
        "wall_s": wall1 - wall0,
        "errors": sum(count for _kind, count in snap.errors_by_kind),
        "rate_limited": snap.rate_limited,
        "done": snap.counts.done,
        "state": str(state),
    }


def child_main(args: argparse.Namespace) -> None:
    """Inside a fresh process: do one run, print one JSON line."""
    input_path = Path(args.input)
    if args.child == "bare":
        messages = _batched_messages(input_path, args.requests)
        result = asyncio.run(_bare_loop(args.url, messages))
    else:
        profile = Path(args.profile_out) if args.profile_out else None
        result = asyncio.run(_engine_run(args.url, input_path, Path(args.store), profile))
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent
@dataclass(frozen=True, slots=True)
class RunFigures:
    kind: str
    cpu_s: float
    requests: int
    wall_s: float
    rate_limited: int
    errors: int

    @property
    def ms_per_request(self) -> float:
        return self.cpu_s / max(1, self.requests) * 1000.0


def run_child(
    kind: str, url: str, input_path: Path, requests: int, extra: Sequence[str] = ()
) -> RunFigures:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.engine_cpu",
            "--child",
            kind,
            "--url",
            url,
            "--input",
            str(input_path),
            "--requests",
            str(requests),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    data = json.loads(lines[-1])
    return RunFigures(
        kind, data["cpu_s"], data["requests"], data["wall_s"], data["rate_limited"], data["errors"]
    )


# Where profiled time goes, by the first matching path fragment.
_AREAS: tuple[tuple[str, str], ...] = (
    ("/openai/", "openai SDK"),
    ("/httpx2/", "httpx2/httpcore2/h11/anyio"),
    ("/httpcore2/", "httpx2/httpcore2/h11/anyio"),
    ("/h11/", "httpx2/httpcore2/h11/anyio"),
    ("/anyio/", "httpx2/httpcore2/h11/anyio"),
    ("/pydantic", "pydantic"),
    ("/aiosqlite/", "aiosqlite"),
    ("/asyncio/", "asyncio"),
    ("typing.py", "typing (SDK type introspection)"),
)


def profile_areas(stats: pstats.Stats) -> dict[str, float]:
    """Own time (tottime) summed by area; built-ins count as "builtins"."""
    import engine

    engine_dir = f"{Path(engine.__file__).parent}/"
    areas: dict[str, float] = {}
    # typeshed leaves out `Stats.stats`: {(file, line, function): (cc, nc, tottime, ...)}.
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        if filename.startswith(engine_dir):
            area: str | None = "crawldeck engine"
        else:
            area = next((name for frag, name in _AREAS if frag in filename), None)
        if area is None:
            area = "builtins" if filename == "~" else "other"
        areas[area] = areas.get(area, 0.0) + tottime
    return dict(sorted(areas.items(), key=lambda item: -item[1]))


def print_profile(profile_path: Path, top: int = 25) -> None:
    areas = profile_areas(pstats.Stats(str(profile_path), stream=io.StringIO()))
    total = sum(areas.values()) or 1.0
    print("\n--- engine child under cProfile: own time by area ---")
    for name, seconds in areas.items():
        print(f"{name:34} {seconds:7.2f}s {seconds / total:6.1%}")
    for order in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats = pstats.Stats(str(profile_path), stream=buffer)
        stats.sort_stats(order).print_stats(top)
        text = buffer.getvalue()
        # Keep the table, drop pstats' preamble of file names.
        start = text.find("   ncalls")
        print(f"\n--- engine child under cProfile, top {top} by {order} ---")
        print(text[start:] if start >= 0 else text)


def main(requests: int, rounds: int, force_profile: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="crawldeck-cpu-") as tmp:
        work = Path(tmp)
        input_path = work / "input.txt"
        write_input(input_path, requests * BATCH_SIZE, WORDS_PER_RECORD)
        ratios: list[float] = []
        with simulator_process(RPM, HUGE_TPM) as url:
            print(
                f"{requests} requests per run at {RPM // 60} req/s, batch {BATCH_SIZE}, "
                f"concurrency {CONCURRENCY}, zero-latency simulator"
            )
            print(
                f"{'round':>5} {'run':7} {'requests':>8} {'cpu s':>7} {'ms/req':>7} "
                f"{'wall s':>7} {'req/s':>7} {'429s':>5} {'errors':>6}"
            )
            for r in range(1, rounds + 1):
                figures: dict[str, RunFigures] = {}
                for kind in ("bare", "engine"):
                    extra = ["--store", str(work / f"engine-{r}.db")] if kind == "engine" else []
                    fig = run_child(kind, url, input_path, requests, extra)
                    figures[kind] = fig
                    print(
                        f"{r:5d} {kind:7} {fig.requests:8d} {fig.cpu_s:7.2f} "
                        f"{fig.ms_per_request:7.3f} {fig.wall_s:7.1f} "
                        f"{fig.requests / fig.wall_s:7.1f} {fig.rate_limited:5d} {fig.errors:6d}",
                        flush=True,
                    )
                ratio = figures["engine"].ms_per_request / figures["bare"].ms_per_request
                ratios.append(ratio)
                print(f"{r:5d} ratio engine/bare CPU per request: {ratio:.3f}", flush=True)
            median = statistics.median(ratios)
            verdict = "PASS" if median <= REQUIREMENT else "FAIL"
            print(
                f"median ratio engine/bare CPU per request over {rounds} rounds: {median:.3f} "
                f"(requirement ≤ {REQUIREMENT}: {verdict})",
                flush=True,
            )
            if median > REQUIREMENT or force_profile:
                profile_path = work / "engine.prof"
                extra = [
                    "--store",
                    str(work / "engine-profiled.db"),
                    "--profile-out",
                    str(profile_path),
                ]
                fig = run_child("engine", url, input_path, requests, extra)
                print(
                    f"\nprofiled engine run: {fig.requests} requests, {fig.ms_per_request:.3f} "
                    "ms/req under cProfile (main thread only; SQLite's thread is not profiled)"
                )
                print_profile(profile_path)
    return 0 if median <= REQUIREMENT else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="requests per run")
    parser.add_argument("--rounds", type=int, default=3, help="bare+engine pairs (≥ 2)")
    parser.add_argument("--profile", action="store_true", help="always profile an engine run")
    # The child side: not for people.
    parser.add_argument("--child", choices=("bare", "engine"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.child:
        child_main(parsed)
    else:
        sys.exit(main(parsed.requests, max(2, parsed.rounds), parsed.profile))
