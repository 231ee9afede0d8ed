"""What the dashboard costs a running job: throughput and CPU, next to headless.

    python -m tests.benchmarks.ui_overhead [--records N] [--rounds R]

One simulator process (0.5–2 s latency like a real provider, one key at
1200 rpm = 20 requests/s and a huge tpm) serves two kinds of run,
interleaved round by round, each in a fresh child process:

- **headless**: `Engine.run()` alone;
- **dashboard**: the same engine inside `CrawldeckApp(engine, refresh_hz=4)`
  under Textual's headless driver (`app.run_test(size=(160, 48))`: the real
  widgets, timers and rendering, no terminal), which starts the engine as its
  worker; the child waits for the job's end in short `pilot.pause` steps.

Input: a text file of `records` records (default 2000), batch size 5, so
400 requests, about 20 s at 20 req/s.

Each child reports the job's wall time (from the engine's `job_started` to
its `job_finished` event), the chunks done, and its user+sys CPU
(`getrusage`, all threads) and wall time from just before the run starts to
`job_finished` (so the dashboard's start-up counts against the UI).

The requirement: dashboard throughput (chunks/s) ≥ 0.95 × headless, and the
UI's CPU share = (cpu_dashboard − cpu_headless) / wall_dashboard ≤ 0.15 of one
core, as medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.benchmarks.engine_cpu import (
    SECRET,
    cpu_seconds,
    engine_config,
    simulator_process,
    write_input,
)

KEY_ID = "sim/k0"
RPM = 1200  # 20 requests/s
HUGE_TPM = 10**10
LATENCY = "0.5,2"
BATCH_SIZE = 5
CONCURRENCY = 64
WORDS_PER_RECORD = 30
REFRESH_HZ = 4.0
SIZE = (160, 48)
MAX_WAIT_S = 600.0
MIN_THROUGHPUT_RATIO = 0.95
MAX_UI_CORE_SHARE = 0.15


# ---------------------------------------------------------------- the child
async def _child_run(kind: str, url: str, input_path: Path, store_path: Path) -> dict[str, Any]:
    from engine.engine import Engine
    from engine.observe.events import Event, EventKind

    config = engine_config(
        input_path,
        store_path,
        url,
        batch_size=BATCH_SIZE,
        concurrency=CONCURRENCY,
        rpm=RPM,
        tpm=HUGE_TPM,
    )
    engine = Engine(config, {KEY_ID: SECRET})
    marks: dict[str, float] = {}

    def on_event(event: Event) -> None:
        if event.kind is EventKind.JOB_STARTED:
            marks["job_start"] = time.monotonic()
        elif event.kind is EventKind.JOB_FINISHED:
            marks["job_end"] = time.monotonic()
            marks["cpu_end"] = cpu_seconds()

    engine.events.subscribe(on_event)
    ended_by = ""
    if kind == "headless":
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        await engine.run()
    else:
        from tui.app import CrawldeckApp

        app = CrawldeckApp(engine, refresh_hz=REFRESH_HZ)
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        async with app.run_test(size=SIZE) as pilot:
            deadline = wall0 + MAX_WAIT_S
            while "job_end" not in marks and time.monotonic() < deadline:
                await pilot.pause(0.2)
            ended_by = "event" if "job_end" in marks else "timeout"
            # Let the worker finish (store flush) before the app is torn down.
            while app.engine_running and time.monotonic() < deadline:
                await pilot.pause(0.05)
    snap = engine.snapshot()
    if "job_end" not in marks:
        raise RuntimeError(f"{kind}: the job did not finish ({ended_by}); state {snap.state}")
    return {
        "done": snap.counts.done,
        "requests": snap.requests,
        "job_wall_s": marks["job_end"] - marks["job_start"],
        "run_wall_s": marks["job_end"] - wall0,
        "cpu_s": marks["cpu_end"] - cpu0,
        "state": str(snap.state),
        "errors": sum(count for _kind, count in snap.errors_by_kind),
    }


def child_main(args: argparse.Namespace) -> None:
    """Inside a fresh process: do one run, print one JSON line."""
    result = asyncio.run(_child_run(args.child, args.url, Path(args.input), Path(args.store)))
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent
@dataclass(frozen=True, slots=True)
class RunFigures:
    kind: str
    done: int
    requests: int
    job_wall_s: float
    run_wall_s: float
    cpu_s: float
    state: str
    errors: int

    @property
    def throughput(self) -> float:
        return self.done / self.job_wall_s if self.job_wall_s > 0 else 0.0


def run_child(kind: str, url: str, input_path: Path, store: Path, config_dir: Path) -> RunFigures:
    env = dict(os.environ)
    env["CRAWLDECK_CONFIG_DIR"] = str(config_dir)  # no user settings or themes
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.ui_overhead",
            "--child",
            kind,
            "--url",
            url,
            "--input",
            str(input_path),
            "--store",
            str(store),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    data = json.loads(lines[-1])
    return RunFigures(kind=kind, **data)


def main(records: int, rounds: int) -> int:
    with tempfile.TemporaryDirectory(prefix="crawldeck-ui-") as tmp:
        work = Path(tmp)
        input_path = work / "input.txt"
        write_input(input_path, records, WORDS_PER_RECORD)
        config_dir = work / "config"
        config_dir.mkdir()
        ratios: list[float] = []
        shares: list[float] = []
        with simulator_process(RPM, HUGE_TPM, LATENCY) as url:
            print(
                f"{records} records, batch {BATCH_SIZE} (~{records // BATCH_SIZE} requests) at "
                f"{RPM // 60} req/s, latency {LATENCY} s, dashboard {REFRESH_HZ:g} Hz "
                f"at {SIZE[0]}x{SIZE[1]}"
            )
            print(
                f"{'round':>5} {'run':9} {'done':>5} {'reqs':>5} {'job s':>6} {'items/s':>8} "
                f"{'run s':>6} {'cpu s':>6} {'cpu/s':>6} {'errors':>6} state"
            )
            for r in range(1, rounds + 1):
                figures: dict[str, RunFigures] = {}
                for kind in ("headless", "dashboard"):
                    fig = run_child(kind, url, input_path, work / f"{kind}-{r}.db", config_dir)
                    figures[kind] = fig
                    print(
                        f"{r:5d} {kind:9} {fig.done:5d} {fig.requests:5d} {fig.job_wall_s:6.2f} "
                        f"{fig.throughput:8.2f} {fig.run_wall_s:6.2f} {fig.cpu_s:6.2f} "
                        f"{fig.cpu_s / fig.run_wall_s:6.3f} {fig.errors:6d} {fig.state}",
                        flush=True,
                    )
                head, dash = figures["headless"], figures["dashboard"]
                ratio = dash.throughput / head.throughput if head.throughput else 0.0
                share = (dash.cpu_s - head.cpu_s) / dash.run_wall_s
                ratios.append(ratio)
                shares.append(share)
                print(
                    f"{r:5d} throughput dashboard/headless {ratio:.3f}; "
                    f"UI CPU {share:.3f} of one core",
                    flush=True,
                )
        ratio_median = statistics.median(ratios)
        share_median = statistics.median(shares)
        ok_ratio = ratio_median >= MIN_THROUGHPUT_RATIO
        ok_share = share_median <= MAX_UI_CORE_SHARE
        print(
            f"{'PASS' if ok_ratio else 'FAIL'} throughput dashboard/headless, median over "
            f"{rounds} rounds: {ratio_median:.3f} (requirement ≥ {MIN_THROUGHPUT_RATIO})"
        )
        print(
            f"{'PASS' if ok_share else 'FAIL'} UI CPU share, median over {rounds} rounds: "
            f"{share_median:.3f} of one core (requirement ≤ {MAX_UI_CORE_SHARE})",
            flush=True,
        )
    return 0 if ok_ratio and ok_share else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=2000, help="input records per run")
    parser.add_argument("--rounds", type=int, default=2, help="headless+dashboard pairs")
    # The child side: not for people.
    parser.add_argument("--child", choices=("headless", "dashboard"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.child:
        child_main(parsed)
    else:
        sys.exit(main(parsed.records, max(1, parsed.rounds)))
