"""How close the engine runs to the rate limits, measured against the simulator.

    python -m tests.benchmarks.rate_limit_efficiency [--quick]

Prints, for each scenario, efficiency = (time the rate limits allow for the
work actually done) / (actual wall time), and the share of requests that
got a 429.  The simulator runs in its own process on loopback with latency
0.5–2 s, as a provider would.  Ratios only: no absolute time is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
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

Limits = tuple[int | None, int | None]


@asynccontextmanager
async def simulator_process(
    keys: Sequence[tuple[str, int | None, int | None]],
    latency: tuple[float, float] = (0.5, 2.0),
    per_token: float = 0.0,
    faults: Sequence[str] = (),
) -> AsyncIterator[str]:
    args = [
        sys.executable,
        "-m",
        "engine.simulation.simulator",
        "--latency",
        f"{latency[0]},{latency[1]}",
        "--per-token",
        str(per_token),
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


def write_input(path: Path, records: int, words: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(records):
            out.write(
                f"record {i}: " + " ".join(f"w{(i * 31 + j) % 997}" for j in range(words)) + "\n"
            )


@dataclass
class Outcome:
    name: str
    efficiency: float
    share_429: float
    requests: int
    wall_s: float
    bound_s: float
    integrity: str


async def scenario(
    name: str,
    real: Sequence[Limits],
    configured: Sequence[Limits],
    records: int,
    words: int,
    batch_size: int,
    bound: str,
    workdir: Path,
    faults: Sequence[str] = (),
) -> Outcome:
    secrets = [(f"bench-{i}", rpm, tpm) for i, (rpm, tpm) in enumerate(real)]
    input_path = workdir / f"{name}.txt"
    write_input(input_path, records, words)
    async with simulator_process(secrets, faults=faults) as url:
        provider = ProviderSettings(
            name="sim",
            base_url=url,
            model="gpt-4o-mini",
            keys=tuple(
                KeySettings(env=f"K{i}", alias=f"k{i}", rpm=rpm, tpm=tpm)
                for i, (rpm, tpm) in enumerate(configured)
            ),
        )
        # A 5 s timeout bounds what a hung request costs (the faults scenario).
        preset = replace(
            BUILTIN_PRESETS["aggressive"],
            concurrency=256,
            batch_size=batch_size,
            request_timeout_s=5.0,
            max_retries=6,
        )
        config = JobConfig(
            job=JobSettings(
                name=name,
                input=str(input_path),
                input_format="text",
                store=str(workdir / f"{name}.db"),
                chunk_tokens=2000,
                chunk_overlap_tokens=0,
            ),
            providers=(provider,),
            preset=preset,
        )
        engine = Engine(config, {f"sim/k{i}": s for i, (s, _, _) in enumerate(secrets)})
        started = time.monotonic()
        await engine.run()
        wall = time.monotonic() - started
    snap = engine.snapshot()
    with sqlite3.connect(workdir / f"{name}.db") as db:
        results, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT chunk_id) FROM results"
        ).fetchone()
        (failed,) = db.execute("SELECT COUNT(*) FROM failures WHERE reason != ''").fetchone()
    lost = records - results - failed
    integrity = f"{results} done, {failed} failed, {lost} lost, {results - distinct} twice"
    ok_requests = snap.requests - snap.rate_limited
    if bound == "rpm":
        rate = sum(rpm or 0 for rpm, _ in real) / 60.0
        bound_s = ok_requests / rate
    else:
        # The engine's token count is exact; the store splits usage per chunk.
        rate = sum(tpm or 0 for _, tpm in real) / 60.0
        bound_s = engine.stats.tokens / rate
    return Outcome(
        name,
        bound_s / wall,
        snap.rate_limited / max(1, snap.requests),
        snap.requests,
        wall,
        bound_s,
        integrity,
    )


async def main(quick: bool) -> None:
    scale = 0.5 if quick else 1.0
    n = int(1200 * scale)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plans = [
            ("rpm-bound, 1 key", [(600, 10_000_000)], [(600, 10_000_000)], n * 5, 20, 5, "rpm"),
            (
                "tpm-bound, 1 key",
                [(100_000, 200_000)],
                [(100_000, 200_000)],
                int(n * 1.5),
                200,
                5,
                "tpm",
            ),
            (
                "4 keys, unequal limits",
                [(300, 10**7), (200, 10**7), (120, 10**7), (60, 10**7)],
                [(300, 10**7), (200, 10**7), (120, 10**7), (60, 10**7)],
                n * 7,
                20,
                5,
                "rpm",
            ),
            (
                "limits configured 2x too high",
                [(300, 10**7)],
                [(600, 2 * 10**7)],
                n * 3,
                20,
                5,
                "rpm",
            ),
        ]
        faults = ["--fault-5xx", "0.02", "--fault-reset", "0.01", "--fault-hang", "0.005"]
        faults += ["--fault-malformed", "0.01", "--hang-s", "3600"]
        with_faults = ("rpm-bound with faults", [(600, 10**7)], [(600, 10**7)], n * 5, 20, 5, "rpm")
        print(
            f"{'scenario':32} {'efficiency':>10} {'429s':>7} {'requests':>9} "
            f"{'wall':>7} {'bound':>7}  chunks"
        )
        runs: list[tuple[tuple[Any, ...], list[str]]] = [(plan, []) for plan in plans]
        runs.append((with_faults, faults))
        for (name, real, configured, records, words, batch, bound), fault_args in runs:
            slug = name.split(",")[0].replace(" ", "-")
            out = await scenario(
                slug, real, configured, records, words, batch, bound, work, fault_args
            )
            print(
                f"{name:32} {out.efficiency:10.3f} {out.share_429:7.2%} {out.requests:9d} "
                f"{out.wall_s:6.1f}s {out.bound_s:6.1f}s  {out.integrity}",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="half-size jobs")
    asyncio.run(main(parser.parse_args().quick))
