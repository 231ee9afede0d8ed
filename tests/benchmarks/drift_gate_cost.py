"""What the default drift gates cost in wall time: gates on beside drift off, in one run.

    python -m tests.benchmarks.drift_gate_cost [--quick] [--rounds R]

The requirement (issue 12): the default gates cost < 2 % of wall time on a
job with no drift and with faster or slower latency phases.  Once, a fast
provider getting faster (median latency 0.118 → 0.085 s) tripped the
latency gate and the job ran the rest of the way in the conservative
preset: 240 requests/min instead of ~20,000.

Each run is a whole engine job (10,000 chunks, 5 a request; `--quick`
halves it) against the simulator in its own process: one key at 12,000
RPM, latency 0.05-0.19 s (median ~0.12 s), the aggressive preset.  Each
workload runs with the default `DriftSettings` (gates on) and with drift
off, `--rounds` pairs in alternating order after one warm-up run, a fresh
simulator for every run:

- **steady**: no drift;
- **faster**: from answer 400 on (after the baseline), latency × 0.7;
- **slower**: from answer 400 on, latency × 1.3, a provider's busy hour;
- **5xx 2 %**: 2 % of requests fail with a 5xx from the first on, a
  provider's everyday errors: the server-errors gate learns them as normal
  and must not slow the job (its retries are the same with drift off);
- **much slower** (shown apart, not part of the requirement): latency × 2.5
  from answer 400 to 1,400, a provider in trouble.  A latency that rose this
  far is the one thing the default gates slow a job for (the conservative
  preset), lifting it once latency is back: this row shows what that costs
  and that it lets go.

Printed per workload: wall time of each, the cost ((on − off) ÷ off), and
the drift events of the gated run (trips, actions taken and lifted).
Ratios only: no absolute time is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from engine.config.settings import (
    BUILTIN_PRESETS,
    DriftSettings,
    JobConfig,
    JobSettings,
    KeySettings,
    ProviderSettings,
)
from engine.engine import Engine
from engine.observe.events import EventKind

SECRET = "gate-cost"
RPM = 12_000  # 200 requests a second: what one process drives with CPU to spare
LATENCY = "0.05,0.19"
PHASE_START = 400  # answers: after the default baseline of 200 answers has been learned
SLOW_UNTIL = 1400

WORKLOADS: dict[str, tuple[str, ...]] = {
    "steady": (),
    "faster": ("--drift-after", str(PHASE_START), "--drift", "faster"),
    "slower": ("--drift-after", str(PHASE_START), "--drift", "slightly_slower"),
    "5xx 2 %": ("--fault-5xx", "0.02"),
    "much slower": (
        "--drift-after",
        str(PHASE_START),
        "--drift",
        "slower",
        "--drift-until",
        str(SLOW_UNTIL),
    ),
}
_TOLD = (
    EventKind.DRIFT_TRIPPED,
    EventKind.DRIFT_ACTION,
    EventKind.DRIFT_LIFTED,
    EventKind.PRESET_CHANGED,
)


@asynccontextmanager
async def simulator_process(cue: Sequence[str]) -> AsyncIterator[str]:
    """The simulator in a process of its own, drifting on `cue`; yields its base URL."""
    args = [sys.executable, "-m", "engine.simulation.simulator", "--latency", LATENCY]
    args += ["--key", f"{SECRET}:{RPM}:-", "--exit-with-parent", *cue]
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode().strip()
    try:
        yield line.removeprefix("listening on ")
    finally:
        proc.terminate()
        await proc.wait()


@dataclass
class Run:
    wall_s: float
    events: list[str]


async def run(workload: str, gates: bool, records: int, workdir: Path, label: str) -> Run:
    input_path = workdir / "in.txt"
    if not input_path.exists():
        with input_path.open("w", encoding="utf-8") as out:
            for i in range(records):
                words = " ".join(f"w{(i * 31 + j) % 997}" for j in range(20))
                out.write(f"record {i}: {words}\n")
    async with simulator_process(WORKLOADS[workload]) as url:
        provider = ProviderSettings(
            name="sim",
            base_url=url,
            model="gpt-4o-mini",
            keys=(KeySettings(env="K", alias="k", rpm=RPM, tpm=None),),
        )
        preset = replace(BUILTIN_PRESETS["aggressive"], batch_size=5, request_timeout_s=10.0)
        config = JobConfig(
            job=JobSettings(
                name="gate-cost",
                input=str(input_path),
                input_format="text",
                store=str(workdir / f"{label}.db"),
                chunk_tokens=2000,
                chunk_overlap_tokens=0,
            ),
            providers=(provider,),
            preset=preset,
            drift=DriftSettings() if gates else DriftSettings(enabled=False),
        )
        engine = Engine(config, {"sim/k": SECRET})
        await engine.run()
    told = [e.message for e in engine.events.recent() if e.kind in _TOLD]
    return Run(engine.elapsed_s, told)


async def main(quick: bool, rounds: int) -> None:
    records = 5_000 if quick else 10_000
    print(f"{records:,} chunks, 5 a request, 1 key at {RPM:,} RPM, latency {LATENCY} s")
    print(f"{'workload':12} {'gates on':>9} {'drift off':>9} {'cost':>7}")
    with tempfile.TemporaryDirectory(prefix="crawldeck-gate-cost-") as tmp:
        await run("steady", True, records, Path(tmp), "warm-up")  # imports, caches, files
        for workload in WORKLOADS:
            costs: list[float] = []
            told: list[str] = []
            for index in range(rounds):
                walls: dict[bool, float] = {}
                # Alternate which goes first, so a machine warming up favours neither.
                for gates in (True, False) if index % 2 == 0 else (False, True):
                    label = f"{workload}-{index}-{'on' if gates else 'off'}"
                    outcome = await run(workload, gates, records, Path(tmp), label)
                    walls[gates] = outcome.wall_s
                    if gates:
                        told = outcome.events
                cost = (walls[True] - walls[False]) / walls[False]
                costs.append(cost)
                print(
                    f"{workload:12} {walls[True]:8.2f}s {walls[False]:8.2f}s {cost:+7.1%}",
                    flush=True,
                )
            if rounds > 1:
                print(f"{workload:12} median cost {statistics.median(costs):+.1%}")
            for message in told:
                print(f"    · {message}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="5,000 chunks instead of 10,000")
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs per workload")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.quick, arguments.rounds))
