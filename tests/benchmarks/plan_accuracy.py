"""Issue 14: `crawldeck plan` on the demo job against what the run then takes and costs.

    python -m tests.benchmarks.plan_accuracy [--reruns N] [--only NAME ...]

The job is the README's first command's, `crawldeck demo`: the bundled
job file (`engine/sample/demo.toml`, the aggressive preset), its 150 sample
transcripts and the bundled simulator, which runs in its own process, with
a store in a temporary folder.  `demo` runs it as shipped (buckets holding a
full minute, as OpenAI's do: the job fits in the burst, so it is bound by
latency and the concurrency ceiling); `demo-per-second` is the same job on
buckets that enforce the minute per second (`simulator.burst_s = 1`: the
keys' limits bind).

Each scenario is planned (`make_plan`, as `crawldeck plan` does) and then
run (`Engine`); then the same job again with a new prompt version — every
chunk is sent again, as when a prompt changes or the week's input comes —
`--reruns` times (default 2), each planned with the store the runs before
left.  For each it prints the plan's time and cost beside the run's (wall
time of `Engine.run`, the cost of the results stored), their ratio
(actual ÷ plan), the requests planned beside those the simulator counted,
the limit the plan said binds, and where its output tokens came from.  At
a job's tail the engine sends a second request for a batch that is slow to
answer (hedging; the first answer wins, the other is cancelled): the
simulator counts those too ("sim saw"), as it does calls refused with a 429
and sent again, which a plan cannot foresee; so the requests checked
against the plan are those whose answers the run stored (the rows of one
request share its run, key and latency).

The first run of a job has no stored answers: against the bundled
simulator the plan counts the output tokens its answers to this input come
to (they are a function of the input); against a real provider they would
be the engine's first guess (150 a chunk), and cost a guess too.  The
verdict asks the runs whose output was known (stored answers, or counted)
to be within ±10 % on time and cost, and every run's requests and chunks to
be exactly the plan's.  Exit status 1 when one misses.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from engine.api import demo_job_file, load_config
from engine.config.key_secrets import resolve_secrets
from engine.config.settings import JobConfig
from engine.engine import Engine
from engine.planning.job_plan import JobPlan, make_plan
from engine.simulation.simulator_launch import launched_simulator
from tests.benchmarks.rate_limit_efficiency import simulator_stats

TOLERANCE = 0.10
SCENARIOS: dict[str, tuple[str, ...]] = {
    "demo": (),
    "demo-per-second": ("simulator.burst_s=1",),
}


@dataclass(frozen=True, slots=True)
class Measured:
    """One run of a planned job."""

    scenario: str
    version: str
    plan: JobPlan
    wall_s: float
    cost_usd: float
    requests: int  # requests whose answers the run stored (rows of one request share its
    # run, key and latency)
    seen_by_simulator: int  # every request the simulator counted
    rate_limited: int  # of them, refused with a 429 (and sent again)
    hedged: int  # second requests for a batch at the job's tail (`RunStats.hedged`)
    chunks_sent: int  # chunks the run stored a result or failure for

    @property
    def from_history(self) -> bool:
        """Its output tokens were known, not guessed: stored answers, or the
        simulator's answers counted from the input."""
        return not self.plan.output_source.startswith("default")

    @property
    def time_ratio(self) -> float:
        return self.wall_s / self.plan.time.time_s

    @property
    def cost_ratio(self) -> float:
        return self.cost_usd / self.plan.cost_online_usd

    def misses(self) -> list[str]:
        missed = []
        if self.requests != self.plan.work.requests:
            missed.append(f"requests {self.requests} ≠ planned {self.plan.work.requests}")
        if self.chunks_sent != self.plan.work.pending:
            missed.append(f"chunks {self.chunks_sent} ≠ planned {self.plan.work.pending}")
        if self.from_history:
            for name, ratio in (("time", self.time_ratio), ("cost", self.cost_ratio)):
                if abs(ratio - 1.0) > TOLERANCE:
                    missed.append(f"{name} ×{ratio:.3f}")
        return missed


def demo_config(overrides: Sequence[str], store: Path, version: str) -> JobConfig:
    """`crawldeck demo`'s job, its store in `store`, at prompt version `version`."""
    with resources.as_file(demo_job_file()) as path:
        return load_config(
            path,
            overrides=[*overrides, f"job.store={store}", f"prompt.version={version}"],
        )


def stored_run(store: Path, version: str) -> tuple[float, int, int]:
    """What the store holds for `version`: the results' cost, the requests they came
    from, and the chunks it stored a result or a failure for."""
    with closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)) as conn:
        cost, results = conn.execute(
            "SELECT COALESCE(SUM(cost), 0), COUNT(*) FROM results WHERE prompt_version = ?",
            (version,),
        ).fetchone()
        (requests,) = conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT run_id, key_alias, latency_ms FROM results"
            " WHERE prompt_version = ?)",
            (version,),
        ).fetchone()
        (failures,) = conn.execute(
            "SELECT COUNT(*) FROM failures WHERE prompt_version = ?", (version,)
        ).fetchone()
    return float(cost), int(requests), int(results) + int(failures)


async def plan_and_run(scenario: str, store: Path, version: str) -> Measured:
    config = demo_config(SCENARIOS[scenario], store, version)
    plan = await make_plan(config)
    secrets = resolve_secrets(config, {}, simulated=True)
    async with launched_simulator(config, secrets) as urls:
        engine = Engine(config, secrets, base_urls=urls)
        started = time.monotonic()
        await engine.run()
        wall_s = time.monotonic() - started
        stats = await simulator_stats(urls["sim"])
    cost, requests, chunks = stored_run(store, version)
    return Measured(
        scenario,
        version,
        plan,
        wall_s,
        cost,
        requests,
        sum(stats["requests_by_key"].values()),
        stats["rate_limited"],
        engine.stats.hedged,
        chunks,
    )


COLUMNS = (
    f"{'job':16} {'run':>5} {'requests':>9} {'chunks':>9} {'sim saw':>7} {'429s':>4} "
    f"{'hedged':>6} "
    f"{'plan time':>9} {'actual':>8} {'ratio':>6} {'plan cost':>10} {'actual':>9} {'ratio':>6}  "
    f"{'binds':11} output tokens from"
)


def row(m: Measured) -> str:
    run = "first" if m.version == "1" else f"v{m.version}"
    requests = f"{m.requests}/{m.plan.work.requests}"
    chunks = f"{m.chunks_sent}/{m.plan.work.pending}"
    misses = m.misses()
    verdict = ("  FAIL: " + "; ".join(misses)) if misses else ""
    return (
        f"{m.scenario:16} {run:>5} {requests:>9} {chunks:>9} {m.seen_by_simulator:7d} "
        f"{m.rate_limited:4d} {m.hedged:6d} "
        f"{m.plan.time.time_s:8.2f}s {m.wall_s:7.2f}s {m.time_ratio:6.3f} "
        f"${m.plan.cost_online_usd:9.5f} ${m.cost_usd:8.5f} {m.cost_ratio:6.3f}  "
        f"{m.plan.time.binds:11} {m.plan.output_source}"
        f"{verdict}"
    )


async def main(scenarios: Sequence[str], reruns: int) -> int:
    print(
        "plan vs run of `crawldeck demo`'s job on the bundled simulator; ratio = actual ÷ plan; "
        "requests (answered and stored) and chunks: run/plan; sim saw: every request the "
        "simulator counted, 429s and the tail's second requests (hedged) too"
    )
    print(COLUMNS, flush=True)
    measured: list[Measured] = []
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios:
            store = Path(tmp) / f"{scenario}.db"
            for run in range(1 + reruns):
                m = await plan_and_run(scenario, store, str(run + 1))
                measured.append(m)
                print(row(m), flush=True)
    checked = [m for m in measured if m.from_history]
    failed = [m for m in measured if m.misses()]
    print(
        f"{len(checked)} runs planned from known output (stored or counted), "
        f"{sum(1 for m in checked if not m.misses())} within ±{TOLERANCE:.0%} on time and cost; "
        f"requests and chunks as planned in {len(measured) - len(failed)} of {len(measured)}"
        if not [m for m in failed if not m.from_history]
        else f"{len(failed)} of {len(measured)} runs miss"
    )
    return 1 if failed else 0


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.plan_accuracy")
    parser.add_argument("--reruns", type=int, default=2, help="runs after the first (default 2)")
    parser.add_argument(
        "--only", action="append", default=[], choices=sorted(SCENARIOS), metavar="NAME"
    )
    args = parser.parse_args(argv)
    return asyncio.run(main(args.only or list(SCENARIOS), args.reruns))


if __name__ == "__main__":
    sys.exit(cli())
