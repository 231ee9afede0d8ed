"""What the engine costs in CPU per request, next to a raw httpx2 loop and an SDK loop.

    python -m tests.benchmarks.engine_cpu [--requests N] [--rounds R] [--profile]
                                          [--scenarios paced,max]

One simulator process (zero latency) serves four kinds of run, interleaved
round by round, on the same requests (the messages the engine builds for
batches of 4 chunks):

- **raw**: one `httpx2.AsyncClient`, 64 workers posting the JSON body and
  reading the answer's content, usage and rate headers with `json` — the
  floor any client on this transport pays;
- **aio**: the same loop over one `aiohttp.ClientSession` — the engine's own
  transport (`engine.provider.client`), so engine ÷ aio is what the engine
  adds to the transport it uses;
- **sdk**: the same through `AsyncOpenAI(max_retries=0)`'s
  `with_raw_response.create(...)` and `.parse()` (what the engine used to do);
- **engine**: the whole pipeline (read, chunk, batch, dispatch, parse,
  store) with the drift monitor on (default gates, every action set to
  warn so a trip cannot change the workload), concurrency 64.

Two scenarios, each in its own simulator:

- **paced**: one key at 12000 rpm = 200 requests/s, the simulator's
  bucket holding 2 s of it; the loops pace themselves with the same 2 s
  burst, the engine with the headroom the simulator reports;
- **max**: limits far above what one process can send; the loops and the
  engine go as fast as they can.  Its req/s is what one process sustains.

Each run is a fresh child process that measures its own user+sys CPU
(`getrusage(RUSAGE_SELF)`, all threads; "loop" is the event loop's thread's
share of it, the rest is SQLite's thread) from just before the work to just
after it — after the loops' client and the engine are made, each loading
the transport — so imports and interpreter start-up are not counted and
neither kind of run inherits the other's heap or warm caches.

The requirements (issue 12): engine CPU per request ≤ 2 × raw, as the
median of the per-round ratios measured side by side, in both scenarios;
and in **max** the engine sustains ≥ 500 requests/s.  The engine/sdk
ratio is printed beside it.  With `--profile` (or when a ratio fails) one
more engine child runs under cProfile and the top functions are printed.
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
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.config.settings import (
    BUILTIN_PRESETS,
    DEFAULT_GATES,
    DriftSettings,
    GateAction,
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
# "max": a limit one process cannot reach, with the rate headers still sent.
UNBOUNDED_RPM = 10**7
UNBOUNDED_TPM = 10**12
BATCH_SIZE = 4
CONCURRENCY = 64
WORDS_PER_RECORD = 30
# The burst the simulator's bucket holds and the loops pace with (the engine
# spends what the provider reports, so both kinds of run are paced alike).
BURST_SECONDS = 2.0
REQUIREMENT = 2.0  # engine ÷ raw CPU per request
SUSTAINED_REQUIREMENT = 500.0  # requests/s in the "max" scenario
KINDS = ("raw", "aio", "sdk", "engine")
SCENARIOS = {"paced": RPM, "max": UNBOUNDED_RPM}


# ---------------------------------------------------------------- shared set-up
@contextmanager
def simulator_process(
    rpm: int | None, tpm: int | None, latency: str = "0,0", burst_s: float = BURST_SECONDS
) -> Iterator[str]:
    """A simulator in its own process, so its CPU is not ours; yields its URL.

    Zero latency by default (the CPU benchmark); pass "LOW,HIGH" seconds for a
    provider-like pace.  Its buckets hold `burst_s` seconds of the limits: the
    loops' burst, so the engine, which spends whatever headroom the provider
    reports, is paced as they are.
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
            "--burst-s",
            str(burst_s),
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


def _pacer(rpm: int) -> Callable[[int, float], float]:
    """How long request i must wait, `started` being the loop's start: a token
    bucket of BURST_SECONDS at `rpm`, as a schedule instead of a lock (no wait
    when `rpm` is the unbounded scenario's)."""
    if rpm >= UNBOUNDED_RPM:
        return lambda _i, _started: 0.0
    rate = rpm / 60.0
    burst = rate * BURST_SECONDS
    return lambda i, started: started + (i - burst) / rate - time.monotonic()


async def _workers(send: Callable[[int], Awaitable[bool]], count: int, rpm: int) -> dict[str, Any]:
    """CONCURRENCY workers calling `send(i)` for i in range(count), paced to `rpm`."""
    wait = _pacer(rpm)
    next_index = itertools.count()
    errors = 0
    cpu0, wall0, main0 = cpu_seconds(), time.monotonic(), time.thread_time()

    async def worker() -> None:
        nonlocal errors
        for i in next_index:
            if i >= count:
                return
            delay = wait(i, wall0)
            if delay > 0:
                await asyncio.sleep(delay)
            if not await send(i):
                errors += 1

    async with asyncio.TaskGroup() as tg:
        for _ in range(CONCURRENCY):
            tg.create_task(worker())
    cpu1, wall1, main1 = cpu_seconds(), time.monotonic(), time.thread_time()
    return {
        "cpu_s": cpu1 - cpu0,
        "main_cpu_s": main1 - main0,
        "requests": count,
        "wall_s": wall1 - wall0,
        "errors": errors,
        "rate_limited": 0,
    }


def _pooled_http_client() -> Any:
    import httpx2

    # Pooled like the engine's ProviderClients, so no run pays for
    # reconnects another doesn't.
    return httpx2.AsyncClient(
        limits=httpx2.Limits(max_connections=512, max_keepalive_connections=512),
        timeout=httpx2.Timeout(60.0, connect=10.0),
    )


def _body(messages: list[dict[str, str]]) -> bytes:
    return json.dumps({"model": MODEL, "messages": messages, "temperature": 0.0}).encode()


def _read(status: int, content: bytes, headers: Mapping[str, str]) -> bool:
    """What the raw loops read of an answer: its content, usage and a rate header."""
    if status != 200:
        return False
    answer = json.loads(content)
    _ = answer["choices"][0]["message"]["content"], answer["usage"]["total_tokens"]
    _ = headers.get("x-ratelimit-remaining-requests")
    return True


async def _raw_loop(
    url: str, all_messages: Sequence[list[dict[str, str]]], rpm: int
) -> dict[str, Any]:
    """The floor: post the JSON, read content, usage and a rate header; nothing else."""
    http = _pooled_http_client()
    endpoint = f"{url.rstrip('/')}/chat/completions"
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}

    async def send(i: int) -> bool:
        response = await http.post(endpoint, content=_body(all_messages[i]), headers=headers)
        return _read(response.status_code, response.content, response.headers)

    try:
        return await _workers(send, len(all_messages), rpm)
    finally:
        await http.aclose()


async def _aio_loop(
    url: str, all_messages: Sequence[list[dict[str, str]]], rpm: int
) -> dict[str, Any]:
    """The floor on the engine's transport: the raw loop over one aiohttp session."""
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512, keepalive_timeout=5.0)
    )
    endpoint = f"{url.rstrip('/')}/chat/completions"
    headers = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}

    async def send(i: int) -> bool:
        async with session.post(endpoint, data=_body(all_messages[i]), headers=headers) as response:
            return _read(response.status, await response.read(), response.headers)

    try:
        return await _workers(send, len(all_messages), rpm)
    finally:
        await session.close()


async def _sdk_loop(
    url: str, all_messages: Sequence[list[dict[str, str]]], rpm: int
) -> dict[str, Any]:
    """The SDK's raw-response path, as the engine used it before issue 12."""
    import openai

    shared = _pooled_http_client()
    client = openai.AsyncOpenAI(api_key=SECRET, base_url=url, max_retries=0, http_client=shared)

    async def send(i: int) -> bool:
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
            return False
        return True

    try:
        return await _workers(send, len(all_messages), rpm)
    finally:
        await shared.aclose()  # closing `client` too would close the shared pool twice


def warn_only_drift() -> DriftSettings:
    """The default drift monitor, every gate's action set to warn.

    The monitor costs the same whatever a trip does, but the default actions
    (conservative preset, pause) would change the workload halfway through.
    """
    return DriftSettings(gates=tuple(replace(g, action=GateAction.WARN) for g in DEFAULT_GATES))


async def _engine_run(
    url: str, input_path: Path, store_path: Path, rpm: int, profile_path: Path | None
) -> dict[str, Any]:
    from engine.engine import Engine

    config = engine_config(
        input_path,
        store_path,
        url,
        batch_size=BATCH_SIZE,
        concurrency=CONCURRENCY,
        rpm=rpm,
        tpm=HUGE_TPM if rpm == RPM else UNBOUNDED_TPM,
    )
    config = replace(config, drift=warn_only_drift())
    # Made before the window opens, as the loops make their client before
    # theirs: building the engine loads the transports — a job's set-up,
    # measured by `first_request_cpu`, not a request's cost.
    engine = Engine(config, {KEY_ID: SECRET})
    profiler = cProfile.Profile() if profile_path else None
    cpu0, wall0, main0 = cpu_seconds(), time.monotonic(), time.thread_time()
    if profiler:
        profiler.enable()
    state = await engine.run()
    if profiler:
        profiler.disable()
    cpu1, wall1, main1 = cpu_seconds(), time.monotonic(), time.thread_time()
    if profiler and profile_path:
        profiler.dump_stats(profile_path)
    snap = engine.snapshot()
    return {
        "cpu_s": cpu1 - cpu0,
        "main_cpu_s": main1 - main0,
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
    if args.child in ("raw", "aio", "sdk"):
        messages = _batched_messages(input_path, args.requests)
        loop = {"raw": _raw_loop, "aio": _aio_loop, "sdk": _sdk_loop}[args.child]
        result = asyncio.run(loop(args.url, messages, args.rpm))
    else:
        profile = Path(args.profile_out) if args.profile_out else None
        result = asyncio.run(_engine_run(args.url, input_path, Path(args.store), args.rpm, profile))
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent
@dataclass(frozen=True, slots=True)
class RunFigures:
    kind: str
    cpu_s: float
    main_cpu_s: float  # the event loop's thread alone
    requests: int
    wall_s: float
    rate_limited: int
    errors: int

    @property
    def ms_per_request(self) -> float:
        return self.cpu_s / max(1, self.requests) * 1000.0


def run_child(
    kind: str, url: str, input_path: Path, requests: int, rpm: int, extra: Sequence[str] = ()
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
            "--rpm",
            str(rpm),
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
        kind,
        data["cpu_s"],
        data["main_cpu_s"],
        data["requests"],
        data["wall_s"],
        data["rate_limited"],
        data["errors"],
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


def run_scenario(
    scenario: str, work: Path, input_path: Path, requests: int, rounds: int, force_profile: bool
) -> bool:
    """Rounds of raw, aio, sdk and engine side by side on one simulator; True if it passed."""
    rpm = SCENARIOS[scenario]
    tpm = HUGE_TPM if rpm == RPM else UNBOUNDED_TPM
    ratios: list[float] = []
    aio_ratios: list[float] = []
    sdk_ratios: list[float] = []
    engine_rates: list[float] = []
    with simulator_process(rpm, tpm) as url:
        pace = f"{rpm // 60} req/s" if rpm == RPM else "as fast as it goes"
        print(
            f"\n== {scenario}: {requests} requests per run, {pace}, batch {BATCH_SIZE}, "
            f"concurrency {CONCURRENCY}, zero-latency simulator, drift on in the engine"
        )
        print(
            f"{'round':>5} {'run':7} {'requests':>8} {'cpu s':>7} {'ms/req':>7} {'loop':>6} "
            f"{'wall s':>7} {'req/s':>7} {'429s':>5} {'errors':>6}"
        )
        for r in range(1, rounds + 1):
            figures: dict[str, RunFigures] = {}
            # Rotate which kind goes first, so none always meets a warmer simulator.
            order = KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]
            for kind in order:
                if rpm == RPM:
                    # The runs share the simulator's key: let its bucket fill up again
                    # after the last run, so each starts as the first did, not with
                    # 429s the run before it caused.
                    time.sleep(BURST_SECONDS + 0.5)
                extra = (
                    ["--store", str(work / f"engine-{scenario}-{r}.db")] if kind == "engine" else []
                )
                fig = run_child(kind, url, input_path, requests, rpm, extra)
                figures[kind] = fig
                print(
                    f"{r:5d} {kind:7} {fig.requests:8d} {fig.cpu_s:7.2f} "
                    f"{fig.ms_per_request:7.3f} {fig.main_cpu_s / fig.cpu_s:6.0%} "
                    f"{fig.wall_s:7.1f} "
                    f"{fig.requests / fig.wall_s:7.1f} {fig.rate_limited:5d} {fig.errors:6d}",
                    flush=True,
                )
            engine = figures["engine"]
            ratio = engine.ms_per_request / figures["raw"].ms_per_request
            aio_ratio = engine.ms_per_request / figures["aio"].ms_per_request
            sdk_ratio = engine.ms_per_request / figures["sdk"].ms_per_request
            ratios.append(ratio)
            aio_ratios.append(aio_ratio)
            sdk_ratios.append(sdk_ratio)
            engine_rates.append(engine.requests / engine.wall_s)
            print(
                f"{r:5d} engine CPU per request ÷ raw: {ratio:.2f}, ÷ aio: {aio_ratio:.2f}, "
                f"÷ sdk: {sdk_ratio:.2f}",
                flush=True,
            )
        median = statistics.median(ratios)
        passed = median <= REQUIREMENT
        print(
            f"{scenario}: median engine ÷ raw CPU per request over {rounds} rounds: "
            f"{median:.2f} (requirement ≤ {REQUIREMENT:g}: {'PASS' if passed else 'FAIL'}); "
            f"engine ÷ aio: {statistics.median(aio_ratios):.2f}; "
            f"engine ÷ sdk: {statistics.median(sdk_ratios):.2f}",
            flush=True,
        )
        if scenario == "max":
            rate = statistics.median(engine_rates)
            sustained = rate >= SUSTAINED_REQUIREMENT
            passed = passed and sustained
            print(
                f"max: the engine sustained a median {rate:.0f} requests/s "
                f"(requirement ≥ {SUSTAINED_REQUIREMENT:g}: {'PASS' if sustained else 'FAIL'})",
                flush=True,
            )
        if not passed or force_profile:
            profile_path = work / f"engine-{scenario}.prof"
            extra = [
                "--store",
                str(work / f"engine-{scenario}-profiled.db"),
                "--profile-out",
                str(profile_path),
            ]
            fig = run_child("engine", url, input_path, requests, rpm, extra)
            print(
                f"\nprofiled engine run ({scenario}): {fig.requests} requests, "
                f"{fig.ms_per_request:.3f} ms/req under cProfile "
                "(main thread only; SQLite's thread is not profiled)"
            )
            print_profile(profile_path)
    return passed


def main(requests: int, rounds: int, scenarios: Sequence[str], force_profile: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="crawldeck-cpu-") as tmp:
        work = Path(tmp)
        input_path = work / "input.txt"
        write_input(input_path, requests * BATCH_SIZE, WORDS_PER_RECORD)
        results = [
            run_scenario(scenario, work, input_path, requests, rounds, force_profile)
            for scenario in scenarios
        ]
    return 0 if all(results) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="requests per run")
    parser.add_argument("--rounds", type=int, default=3, help="raw+aio+sdk+engine rounds (≥ 2)")
    parser.add_argument(
        "--scenarios", default="paced,max", help="comma-separated: paced (200 req/s), max"
    )
    parser.add_argument("--profile", action="store_true", help="always profile an engine run")
    # The child side: not for people.
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--rpm", type=int, default=RPM, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.child:
        child_main(parsed)
    else:
        chosen = [name for name in parsed.scenarios.split(",") if name]
        unknown = sorted(set(chosen) - set(SCENARIOS))
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(unknown)}")
        sys.exit(main(parsed.requests, max(2, parsed.rounds), chosen, parsed.profile))
