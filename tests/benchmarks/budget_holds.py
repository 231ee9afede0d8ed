"""A budget that holds, on the demo job: capped runs, then a rerun that finishes.

    python -m tests.benchmarks.budget_holds [--caps 0.25,0.5,0.9]

The requirement (issue 14): a job capped at a cost below its full cost
stops within one batch's cost of the cap, never above it, and a rerun with
a higher cap finishes exactly.

The job is the bundled demo's (`engine/sample/demo.toml`: the sample
transcripts, gpt-4o-mini's prices, `max_output_tokens` 1024, the
aggressive preset) against the simulator in this process, its keys' limits
raised and its latency cut so a run takes seconds.  First the job runs
uncapped in a store of its own: its cost and its mean cost per request (a
batch of 10 chunks) are the yardsticks.  Then, for each cap (a share of
that cost), a fresh store: a capped run, and a rerun with the full cost
plus 10 % as its cap.  Printed per cap: what the capped run spent, how far
short of the cap it stopped (in dollars and in batches), the chunks done
and not started, then what the rerun spent, whether it finished, and
whether every chunk was answered exactly once over both runs (the
simulator's count of chunk ids answered against the chunks).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from engine.config.job_file import load_config
from engine.config.settings import JobConfig, KeySettings
from engine.engine import Engine
from engine.observe.snapshot import JobState
from engine.simulation.simulator import ProviderSimulator, SimKey, SimulatorConfig

DEMO = Path(__file__).resolve().parents[2] / "engine" / "sample" / "demo.toml"
RPM, TPM = 60_000, 100_000_000


@dataclass(frozen=True, slots=True)
class Outcome:
    state: JobState
    spent_usd: float
    done: int
    requests: int
    line: str


def demo_config(store: Path, budget_usd: float | None) -> tuple[JobConfig, dict[str, str]]:
    config = load_config(DEMO)
    providers = tuple(
        replace(
            provider,
            keys=tuple(replace(key, rpm=RPM, tpm=TPM) for key in provider.keys),
        )
        for provider in config.providers
    )
    config = replace(
        config,
        providers=providers,
        job=replace(config.job, store=str(store), budget_usd=budget_usd),
        drift=replace(config.drift, enabled=False),
    )
    secrets = {
        f"{provider.name}/{key.alias}": f"secret-{key.alias}"
        for provider in providers
        for key in provider.keys
    }
    return config, secrets


def sim_keys(config: JobConfig) -> tuple[SimKey, ...]:
    keys: list[KeySettings] = [key for provider in config.providers for key in provider.keys]
    return tuple(SimKey(f"secret-{key.alias}", key.rpm, key.tpm) for key in keys)


async def run(config: JobConfig, secrets: dict[str, str], base_url: str) -> Outcome:
    engine = Engine(config, secrets, base_urls={p.name: base_url for p in config.providers})
    state = await engine.run()
    snap = engine.snapshot()
    spent = snap.budget.spent_usd - snap.budget.spent_earlier_usd if snap.budget else snap.cost_usd
    return Outcome(state, spent, snap.counts.done, snap.requests, engine.budget_line)


def stored(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(DISTINCT chunk_id) FROM results").fetchone()[0])


async def main(caps: Sequence[float]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        uncapped_config, secrets = demo_config(base / "uncapped.db", None)
        sim = ProviderSimulator(
            SimulatorConfig(keys=sim_keys(uncapped_config), latency_s=(0.01, 0.03))
        )
        await sim.start()
        try:
            full = await run(uncapped_config, secrets, sim.base_url)
            chunks = full.done
            per_batch = full.spent_usd / full.requests
            print(
                f"uncapped: {chunks} chunks, {full.requests} requests, ${full.spent_usd:.4f} "
                f"(${per_batch:.6f} a request)"
            )
            print(
                f"{'cap':>9} {'spent':>9} {'short by':>9} {'batches':>7} {'done':>5} "
                f"{'not started':>11} | {'rerun spent':>11} {'rerun':>6} {'total':>9} "
                f"{'chunks answered':>15}"
            )
            worst_gap = 0.0
            exact = True
            for share in caps:
                cap = round(full.spent_usd * share, 6)
                before = sim.stats.chunk_ids_answered
                config, _ = demo_config(base / f"capped-{share}.db", cap)
                capped = await run(config, secrets, sim.base_url)
                rerun_config = replace(
                    config, job=replace(config.job, budget_usd=full.spent_usd * 1.1)
                )
                rerun = await run(rerun_config, secrets, sim.base_url)
                answered = sim.stats.chunk_ids_answered - before
                gap = cap - capped.spent_usd
                worst_gap = max(worst_gap, gap / per_batch)
                whole = stored(Path(config.job.store))
                exact &= (
                    capped.spent_usd <= cap
                    and rerun.state is JobState.DONE
                    and whole == chunks
                    and answered == chunks
                )
                print(
                    f"${cap:>8.4f} ${capped.spent_usd:>8.4f} ${gap:>8.4f} {gap / per_batch:>7.2f} "
                    f"{capped.done:>5} {chunks - capped.done:>11} | ${rerun.spent_usd:>10.4f} "
                    f"{rerun.state!s:>6} ${capped.spent_usd + rerun.spent_usd:>8.4f} "
                    f"{answered:>7}/{chunks}"
                )
                print(f"  {capped.line}")
        finally:
            await sim.stop()
    verdict = "holds" if exact and worst_gap < 1.0 else "DOES NOT HOLD"
    print(
        f"{verdict}: never above a cap; at most {worst_gap:.2f} of a request's mean cost short "
        "of it; every rerun finished with each chunk answered once"
    )
    return 0 if verdict == "holds" else 1


def _caps(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caps", type=_caps, default=[0.25, 0.5, 0.9], metavar="SHARES")
    sys.exit(asyncio.run(main(parser.parse_args().caps)))
