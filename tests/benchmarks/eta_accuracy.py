"""How right the ETA is early in a run: at 10 % and at 25 % done, against the time it really took.

    python -m tests.benchmarks.eta_accuracy [--quick] [--record FILE]

Each scenario is a whole engine run against the simulator in its own
process (latency 0.5–2 s, as a provider's; buckets that hold a full minute
of the limit, one run enforcing it per second), a snapshot taken twice a
second as a dashboard would.  The rate-bound jobs are the size
`rate_limit_efficiency` runs (the bucket and 45 s more); the last one fits
in the bucket whole, and ends as fast as the requests in flight allow.
For the first snapshot at or past 10 % and 25 % of the chunks finished it
prints the ETA the snapshot showed, the time the job then really took, and
the error (ETA ÷ real − 1; the requirement is within ±10 %).  Beside it,
the ETA the measured rate alone gives (the engine's smoothed items/min),
which is what the ETA was before it knew the limits.

`--record FILE` keeps the first scenario's estimator inputs (every
`observe` and `estimate` call, with the job's real end), as the test
`tests/engine/observe/test_eta.py` replays them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from engine.config.settings import (
    BUILTIN_PRESETS,
    JobConfig,
    JobSettings,
    KeySettings,
    ProviderSettings,
)
from engine.engine import Engine
from engine.observe.eta import Eta, EtaEstimator, KeyCapacity

Limits = tuple[int | None, int | None]
MARKS = (0.10, 0.25)


@asynccontextmanager
async def simulator_process(
    keys: Sequence[tuple[str, int | None, int | None]],
    faults: Sequence[str] = (),
    burst_s: float = 60.0,
) -> AsyncIterator[str]:
    """The simulator in a process of its own, its buckets holding `burst_s` seconds of
    each limit; yields its base URL."""
    args = [
        sys.executable,
        "-m",
        "engine.simulation.simulator",
        "--latency",
        "0.5,2.0",
        "--burst-s",
        str(burst_s),
        *faults,
    ]
    for secret, rpm, tpm in keys:
        args += ["--key", f"{secret}:{rpm or '-'}:{tpm or '-'}"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode().strip()
    try:
        yield line.removeprefix("listening on ")
    finally:
        proc.terminate()
        await proc.wait()


@dataclass(frozen=True)
class Scenario:
    name: str
    real: tuple[Limits, ...]
    configured: tuple[Limits, ...]
    records: int
    words: int
    batch_size: int = 4
    concurrency: int = 256
    faults: tuple[str, ...] = ()
    burst_s: float = 60.0  # the provider's bucket: a full minute of the limit


@dataclass
class Sample:
    elapsed_s: float
    finished: int
    total: int | None
    eta_s: float | None
    measured_eta_s: float | None


class Recorder:
    """Logs every call the engine makes on its ETA estimator, for the replay test.

    Times are the job's elapsed seconds (`elapsed()`), so a replay needs no clock.
    """

    def __init__(self, estimator: EtaEstimator, elapsed: Callable[[], float]) -> None:
        self.calls: list[list[Any]] = []
        observe, estimate = estimator.observe, estimator.estimate

        def observing(now: float, finished: int) -> None:
            self.calls.append(["observe", round(elapsed(), 3), finished])
            observe(now, finished)

        def estimating(
            remaining: int | None,
            keys: Sequence[KeyCapacity],
            *,
            chunks_per_request: float,
            tokens_per_request: float | None,
            in_flight_limit: int | None = None,
        ) -> Eta:
            eta = estimate(
                remaining,
                keys,
                chunks_per_request=chunks_per_request,
                tokens_per_request=tokens_per_request,
                in_flight_limit=in_flight_limit,
            )
            self.calls.append(
                [
                    "estimate",
                    round(elapsed(), 3),
                    remaining,
                    [asdict(key) for key in keys],
                    chunks_per_request,
                    tokens_per_request,
                    in_flight_limit,
                    eta.eta_s,
                ]
            )
            return eta

        estimator.observe = observing  # type: ignore[method-assign]
        estimator.estimate = estimating  # type: ignore[method-assign]


async def run(scenario: Scenario, workdir: Path, record: bool) -> tuple[list[Sample], float, Any]:
    secrets = [(f"eta-{i}", rpm, tpm) for i, (rpm, tpm) in enumerate(scenario.real)]
    slug = scenario.name.split(",")[0].replace(" ", "-")
    input_path = workdir / f"{slug}.txt"
    with input_path.open("w", encoding="utf-8") as out:
        for i in range(scenario.records):
            words = " ".join(f"w{(i * 31 + j) % 997}" for j in range(scenario.words))
            out.write(f"record {i}: {words}\n")
    async with simulator_process(secrets, scenario.faults, scenario.burst_s) as url:
        provider = ProviderSettings(
            name="sim",
            base_url=url,
            model="gpt-4o-mini",
            keys=tuple(
                KeySettings(env=f"K{i}", alias=f"k{i}", rpm=rpm, tpm=tpm)
                for i, (rpm, tpm) in enumerate(scenario.configured)
            ),
        )
        preset = replace(
            BUILTIN_PRESETS["aggressive"],
            concurrency=scenario.concurrency,
            batch_size=scenario.batch_size,
            request_timeout_s=5.0,
            max_retries=6,
        )
        config = JobConfig(
            job=JobSettings(
                name=slug,
                input=str(input_path),
                input_format="text",
                store=str(workdir / f"{slug}.db"),
                chunk_tokens=2000,
                chunk_overlap_tokens=0,
            ),
            providers=(provider,),
            preset=preset,
        )
        engine = Engine(config, {f"sim/k{i}": s for i, (s, _, _) in enumerate(secrets)})
        recorder = Recorder(engine.stats._eta, lambda: engine.elapsed_s) if record else None
        samples: list[Sample] = []
        job = asyncio.create_task(engine.run())
        while not job.done():
            await asyncio.sleep(0.5)
            snap = engine.snapshot()
            counts = snap.counts
            remaining = None if counts.total is None else counts.total - counts.finished
            measured = (
                remaining / snap.items_per_min * 60.0
                if remaining is not None and snap.items_per_min > 0
                else None
            )
            samples.append(
                Sample(snap.elapsed_s, counts.finished, counts.total, snap.eta_s, measured)
            )
        await job
    wall = engine.elapsed_s
    calls = None if recorder is None else {"wall_s": wall, "calls": recorder.calls}
    return samples, wall, calls


def at_mark(samples: Sequence[Sample], mark: float) -> Sample | None:
    for sample in samples:
        if sample.total and sample.finished >= mark * sample.total and sample.eta_s is not None:
            return sample
    return None


def error(eta: float | None, real: float) -> str:
    if eta is None or real <= 0:
        return "    -"
    return f"{eta / real - 1:+6.1%}"


async def main(quick: bool, record: Path | None) -> None:
    scale = 0.5 if quick else 1.0
    # Requests of the rate-bound jobs: the whole bucket (a minute of the limit) and
    # 45 s more at 1,200 RPM, as `rate_limit_efficiency` runs them.
    n = int(2100 * scale)
    faults = (
        "--fault-5xx",
        "0.02",
        "--fault-reset",
        "0.01",
        "--fault-hang",
        "0.005",
        "--fault-malformed",
        "0.01",
        "--hang-s",
        "120",
    )
    scenarios = [
        Scenario("rpm-bound, 1 key 1200 RPM", ((1200, 10**8),), ((1200, 10**8),), n * 4, 20),
        Scenario(
            "tpm-bound, 300k TPM",
            ((10_000, 300_000),),
            ((10_000, 300_000),),
            int(250 * scale) * 4,
            390,
        ),
        Scenario(
            "4 keys, 300/600/900/1200 RPM",
            ((300, 10**8), (600, 10**8), (900, 10**8), (1200, 10**8)),
            ((300, 10**8), (600, 10**8), (900, 10**8), (1200, 10**8)),
            int(n * 2.5) * 4,
            20,
        ),
        Scenario("limits configured 2x too high", ((1200, 10**8),), ((2400, 10**8),), n * 4, 20),
        Scenario("per-second bucket, 1200 RPM", ((1200, 10**8),), ((1200, 10**8),), n * 2, 20,
                 burst_s=1.0),
        Scenario("latency-bound, 16 in flight", ((10**6, 10**9),), ((10**6, 10**9),), 3200, 20,
                 concurrency=16),
        Scenario("rpm-bound with faults", ((1200, 10**8),), ((1200, 10**8),), n * 4, 20,
                 faults=faults),
        # A job the bucket holds whole: it goes as fast as 256 requests in flight,
        # each a latency long, allow.
        Scenario("within the burst, 800 requests", ((1200, 10**8),), ((1200, 10**8),),
                 int(800 * scale) * 4, 20),
    ]  # fmt: skip
    header = (f"{f'at {mark:.0%}: eta/real':>20} {'err':>6} {'rate only':>9}" for mark in MARKS)
    print(f"{'scenario':32} {'wall':>7}   " + "   ".join(header))
    with tempfile.TemporaryDirectory() as tmp:
        for index, scenario in enumerate(scenarios):
            samples, wall, calls = await run(scenario, Path(tmp), record is not None and index == 0)
            if calls is not None and record is not None:
                record.write_text(json.dumps(calls, separators=(",", ":")) + "\n")
            cells = []
            for mark in MARKS:
                sample = at_mark(samples, mark)
                if sample is None:
                    cells.append(f"{'-':>20} {'-':>6} {'-':>9}")
                    continue
                real = wall - sample.elapsed_s
                eta = sample.eta_s or 0.0
                cells.append(
                    f"{eta:8.1f}s / {real:7.1f}s {error(sample.eta_s, real)} "
                    f"{error(sample.measured_eta_s, real):>9}"
                )
            print(f"{scenario.name:32} {wall:6.1f}s   " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="half-size jobs")
    parser.add_argument("--record", type=Path, help="keep the first run's estimator calls here")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.quick, arguments.record))
