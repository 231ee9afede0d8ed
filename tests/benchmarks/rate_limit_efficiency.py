"""Issue 12: how close a job runs to what the provider allows, on both kinds of bucket.

    python -m tests.benchmarks.rate_limit_efficiency [--quick] [--only NAME ...] [--list]

Each run is a real job (`Engine`) against the bundled simulator in its own
process, latency 0.5–2 s lognormal (those as its 5th and 95th percentiles),
4 chunks a request, the aggressive preset with its concurrency ceiling
raised to 256 so that the operator's ceiling is not what binds.  The
provider's keys hold a full minute of their limits (`burst_s = 60`, as
OpenAI's do) or enforce the minute per second (`burst_s = 1`).

For each run it prints:

- **bound** — the least time the provider's buckets allow for the job's N
  requests, `60 × (N ÷ Σ_k min(rpm_k, tpm_k ÷ c) − burst_s ÷ 60)`, with c the
  mean tokens the simulator charged a request at admission (prompt +
  `max_tokens`, as it counts them), floored at one median answer
  (`provider_bound`);
- **wall**, and **efficiency** = bound ÷ wall;
- **429s**, as the simulator counted them, and their share of all requests;
- **done/failed/lost/twice**, read from the job's SQLite store: every chunk
  must be done or failed with a reason, none lost, none stored twice;
- **ETA error at 10 % and 25 %**: the snapshot's ETA when the chunks
  finished first reached 10 % (25 %) of the job, against the time the job
  then really took, signed (+: it promised too long, −: too short);

and a verdict against the issue's "Must show": efficiency ≥ 0.95 and 429s
≤ 1 % on both kinds with the right limits; with every limit configured 2×
too high ≥ 0.90 on the full-minute bucket and ≥ 0.95 with 429s ≤ 1 % on the
per-second one; with faults (2 % 5xx, 1 % resets, 0.5 % hangs of 120 s, 1 %
malformed) ≥ 0.85 on the full-minute bucket; every run with its store whole
and both ETAs within ±10 %.  No absolute time is asserted; the exit status
is 1 when a run misses a threshold.

`--quick` runs the same shapes with half the limits and 1.25 minutes of
work at them instead of 1.75 (15 s of bound instead of 45 s on the
full-minute bucket).  `--only NAME` (repeatable) runs one scenario on both
kinds (`rpm`) or one run (`rpm:1`); `--list` names them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx2

from engine.config.key_secrets import resolve_secrets
from engine.config.settings import (
    BUILTIN_PRESETS,
    JobConfig,
    JobSettings,
    KeySettings,
    ProviderSettings,
    SimulatorSettings,
)
from engine.engine import Engine
from engine.simulation.simulator_launch import launched_simulator, simulator_keys
from tests.benchmarks.provider_bound import (
    EtaWatch,
    Limits,
    StoreTally,
    provider_bound_s,
    tally_store,
)

BATCH_SIZE = 4
CONCURRENCY = 256
PRESET_NAME = "benchmark"  # the aggressive preset with the two above
LATENCY_S = (0.5, 2.0)  # lognormal: these are its 5th and 95th percentiles
MEDIAN_LATENCY_S = math.sqrt(LATENCY_S[0] * LATENCY_S[1])  # the bound's floor
SAMPLE_EVERY_S = 0.1  # how often the ETA is read, as a front end would
ETA_TOLERANCE = 0.10
MAX_SHARE_429 = 0.01
SIMULATED = "http://127.0.0.1:0/v1"  # served by the bundled simulator, in its own process
HANG_S = 120.0
WORDS_RPM_BOUND = 20  # short chunks: the requests limit binds
WORDS_TPM_BOUND = 390  # ~2,000 tokens charged a request of 4 chunks: the tokens limit binds
UNBOUNDED_TPM = 10_000_000
UNBOUNDED_RPM = 10_000


@dataclass(frozen=True, slots=True)
class Scenario:
    """One job against one provider."""

    name: str
    title: str
    keys: tuple[tuple[int, int], ...]  # the provider's real (rpm, tpm) per key
    requests: int  # N: the job's requests, 4 chunks each
    words: int  # words a chunk
    burst_s: float
    configured_scale: float = 1.0  # the job file's limits = the real ones × this
    faults: bool = False
    min_efficiency: float = 0.95
    max_share_429: float | None = MAX_SHARE_429

    @property
    def run_name(self) -> str:
        return f"{self.name}:{self.burst_s:g}"

    @property
    def chunks(self) -> int:
        return self.requests * BATCH_SIZE


def scenarios(quick: bool) -> list[Scenario]:
    """Every run, full-minute bucket first; `quick` halves the limits and shortens the work."""
    scale = 0.5 if quick else 1.0
    # The jobs: 1.75 minutes of requests at the limits (1.67 for the tokens-bound
    # one), so 45 s (40 s) of bound on a full-minute bucket; `quick`: 1.25 minutes.
    minutes, tpm_minutes = (1.25, 1.25) if quick else (1.75, 250 / 150)

    def rpm(value: int) -> int:
        return int(value * scale)

    one_key = ((rpm(1200), UNBOUNDED_TPM),)
    four_keys = tuple((rpm(r), UNBOUNDED_TPM) for r in (300, 600, 900, 1200))
    tpm_key = ((UNBOUNDED_RPM, rpm(300_000)),)
    runs: list[Scenario] = []
    for burst_s in (60.0, 1.0):
        kind = "full-minute bucket" if burst_s == 60 else "per-second bucket"
        high = 0.90 if burst_s == 60 else 0.95  # the issue asks less of a full bucket here
        runs += [
            Scenario(
                "rpm",
                f"1 key at {one_key[0][0]:,} RPM, {kind}",
                one_key,
                round(minutes * one_key[0][0]),
                WORDS_RPM_BOUND,
                burst_s,
            ),
            Scenario(
                "tpm",
                f"~2,000 tokens a request at {tpm_key[0][1]:,} TPM, {kind}",
                tpm_key,
                round(tpm_minutes * tpm_key[0][1] / 2000),
                WORDS_TPM_BOUND,
                burst_s,
            ),
            Scenario(
                "keys",
                f"4 keys at {'/'.join(str(r) for r, _ in four_keys)} RPM, {kind}",
                four_keys,
                round(minutes * sum(r for r, _ in four_keys)),
                WORDS_RPM_BOUND,
                burst_s,
            ),
            Scenario(
                "high",
                f"1 key at {one_key[0][0]:,} RPM configured 2x too high, {kind}",
                one_key,
                round(minutes * one_key[0][0]),
                WORDS_RPM_BOUND,
                burst_s,
                configured_scale=2.0,
                min_efficiency=high,
                max_share_429=None if burst_s == 60 else MAX_SHARE_429,
            ),
        ]
    runs.append(
        Scenario(
            "faults",
            f"1 key at {one_key[0][0]:,} RPM, 5xx/resets/hangs/malformed, full-minute bucket",
            one_key,
            round(minutes * one_key[0][0]),
            WORDS_RPM_BOUND,
            60.0,
            faults=True,
            min_efficiency=0.85,
            max_share_429=None,
        )
    )
    return runs


def chosen(runs: Sequence[Scenario], only: Sequence[str]) -> list[Scenario]:
    """The runs `--only` names (a scenario's name: both kinds; `name:burst`: one run)."""
    if not only:
        return list(runs)
    known = {run.name for run in runs} | {run.run_name for run in runs}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise SystemExit(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [run for run in runs if run.name in only or run.run_name in only]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run measured."""

    scenario: Scenario
    tokens_per_request: float  # c
    bound_s: float
    wall_s: float
    requests: int  # every API request the simulator saw
    rate_limited: int  # 429s
    tally: StoreTally
    eta_errors: dict[float, float | None]
    most_in_flight: int
    final_preset: str

    @property
    def efficiency(self) -> float:
        return self.bound_s / self.wall_s

    @property
    def share_429(self) -> float:
        return self.rate_limited / max(1, self.requests)

    def misses(self) -> list[str]:
        """The thresholds this run missed, each in a few words."""
        s = self.scenario
        missed = []
        if self.efficiency < s.min_efficiency:
            missed.append(f"efficiency {self.efficiency:.3f} < {s.min_efficiency:.2f}")
        if s.max_share_429 is not None and self.share_429 > s.max_share_429:
            missed.append(f"429s {self.share_429:.1%} > {s.max_share_429:.0%}")
        if not self.tally.whole:
            missed.append(f"store not whole ({self.tally.unexplained} failed without reason)")
        for mark, error in self.eta_errors.items():
            if error is None:
                missed.append(f"no ETA at {mark:.0%}")
            elif abs(error) > ETA_TOLERANCE:
                missed.append(f"ETA at {mark:.0%} off {error:+.0%}")
        return missed


def write_input(path: Path, records: int, words: int) -> None:
    """`records` distinct lines of `words` words: one chunk each."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(records):
            body = " ".join(f"w{(i * 31 + j) % 997}" for j in range(words))
            out.write(f"record {i}: {body}\n")


def job_for(scenario: Scenario, workdir: Path) -> JobConfig:
    """The scenario's job: its keys as configured, its provider as the simulator plays it."""
    slug = scenario.run_name.replace(":", "-")
    input_path = workdir / f"{slug}.txt"
    write_input(input_path, scenario.chunks, scenario.words)
    keys = tuple(
        KeySettings(
            env=f"BENCH_KEY_{i}",
            alias=f"k{i}",
            rpm=int(rpm * scenario.configured_scale),
            tpm=int(tpm * scenario.configured_scale),
        )
        for i, (rpm, tpm) in enumerate(scenario.keys)
    )
    preset = replace(
        BUILTIN_PRESETS["aggressive"],
        name=PRESET_NAME,
        concurrency=CONCURRENCY,
        batch_size=BATCH_SIZE,
    )
    simulator = SimulatorSettings(
        latency_s=LATENCY_S,
        latency_distribution="lognormal",
        burst_s=scenario.burst_s,
        seconds_per_output_token=0.0,
        limit_scale=1.0 / scenario.configured_scale,  # the provider's real limits
        hang_s=HANG_S,
    )
    if scenario.faults:
        simulator = replace(
            simulator, fault_5xx=0.02, fault_reset=0.01, fault_hang=0.005, fault_malformed=0.01
        )
    return JobConfig(
        job=JobSettings(
            name=slug,
            input=str(input_path),
            input_format="text",
            store=str(workdir / f"{slug}.db"),
            chunk_tokens=2000,
            chunk_overlap_tokens=0,
        ),
        providers=(
            ProviderSettings(name="sim", base_url=SIMULATED, model="gpt-4o-mini", keys=keys),
        ),
        preset=preset,
        presets={**BUILTIN_PRESETS, preset.name: preset},
        simulator=simulator,
    )


async def simulator_stats(base_url: str) -> dict[str, Any]:
    """The simulator's own counters (`GET /_sim/stats`)."""
    async with httpx2.AsyncClient() as http:
        response = await http.get(base_url.removesuffix("/v1") + "/_sim/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


async def run(scenario: Scenario, workdir: Path) -> Outcome:
    """Run the scenario's job to its end and measure it."""
    config = job_for(scenario, workdir)
    secrets = resolve_secrets(config, {}, simulated=True)
    # The limits the simulator really enforces, as it was given them.
    real: list[Limits] = [
        (key["rpm"], key["tpm"])  # type: ignore[misc]
        for key in simulator_keys(config, secrets)
    ]
    watch = EtaWatch(scenario.chunks)
    most_in_flight = 0
    async with launched_simulator(config, secrets) as urls:
        engine = Engine(config, secrets, base_urls=urls)

        async def sample(started: float) -> None:
            nonlocal most_in_flight
            while True:
                snap = engine.snapshot()
                counts = snap.counts
                watch.observe(time.monotonic() - started, counts.done + counts.failed, snap.eta_s)
                most_in_flight = max(most_in_flight, snap.in_flight_requests)
                await asyncio.sleep(SAMPLE_EVERY_S)

        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            sampler = tasks.create_task(sample(started))
            try:
                await engine.run()
            finally:
                sampler.cancel()
        wall_s = time.monotonic() - started
        stats = await simulator_stats(urls["sim"])
    tokens_per_request = stats["tokens_charged"] / max(1, stats["admitted"])
    return Outcome(
        scenario=scenario,
        tokens_per_request=tokens_per_request,
        bound_s=provider_bound_s(
            scenario.requests, real, tokens_per_request, scenario.burst_s, MEDIAN_LATENCY_S
        ),
        wall_s=wall_s,
        requests=sum(stats["requests_by_key"].values()),
        rate_limited=stats["rate_limited"] + stats["quota_rejected"],
        tally=tally_store(Path(config.job.store), scenario.chunks),
        eta_errors=watch.errors(wall_s),
        most_in_flight=most_in_flight,
        final_preset=engine.snapshot().preset.name,
    )


COLUMNS = (
    f"{'run':10} {'N':>5} {'c':>6} {'bound':>7} {'wall':>7} {'effic.':>6} "
    f"{'429s':>12} {'done/failed/lost/twice':>22} {'ETA@10%':>8} {'ETA@25%':>8} "
    f"{'in flight':>9}  verdict"
)


def row(out: Outcome) -> str:
    """One printed line for a run."""

    def eta(mark: float) -> str:
        error = out.eta_errors[mark]
        return "none" if error is None else f"{error:+.0%}"

    misses = out.misses()
    verdict = "pass" if not misses else "FAIL: " + "; ".join(misses)
    if out.final_preset != PRESET_NAME:
        verdict += f" (ended in preset {out.final_preset})"
    return (
        f"{out.scenario.run_name:10} {out.scenario.requests:5d} {out.tokens_per_request:6.0f} "
        f"{out.bound_s:6.1f}s {out.wall_s:6.1f}s {out.efficiency:6.3f} "
        f"{out.rate_limited:5d} {out.share_429:6.2%} {out.tally!s:>22} "
        f"{eta(0.10):>8} {eta(0.25):>8} {out.most_in_flight:9d}  {verdict}"
    )


async def main(runs: Sequence[Scenario]) -> int:
    print(
        f"latency {LATENCY_S[0]}–{LATENCY_S[1]} s lognormal, {BATCH_SIZE} chunks a request, "
        f"concurrency ceiling {CONCURRENCY}; c = tokens charged a request at admission"
    )
    print(COLUMNS, flush=True)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in runs:
            out = await run(scenario, Path(tmp))
            failed += bool(out.misses())
            print(row(out), flush=True)
    print(f"{len(runs) - failed} of {len(runs)} runs pass")
    return 1 if failed else 0


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.rate_limit_efficiency")
    parser.add_argument("--quick", action="store_true", help="half the limits, shorter jobs")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this scenario (both buckets) or run (NAME:BURST); repeatable",
    )
    parser.add_argument("--list", action="store_true", help="name the runs and stop")
    args = parser.parse_args(argv)
    runs = chosen(scenarios(args.quick), args.only)
    if args.list:
        for scenario in runs:
            print(f"{scenario.run_name:10} N={scenario.requests:<5d} {scenario.title}")
        return 0
    return asyncio.run(main(runs))


if __name__ == "__main__":
    sys.exit(cli())
