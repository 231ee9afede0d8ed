"""What the drift monitor costs inside the whole engine, at 200 results/s.

    python -m tests.benchmarks.drift_engine_cpu [--rounds R] [--results N] [--profile]

The requirement (issue 5): the monitor costs < 5% of the engine's CPU at
200 results/s.  One simulator process (latency uniform in 50–150 ms, one key
limited to 2400 rpm) serves two kinds of run, interleaved round by round
and alternating which goes first:

- **disabled**: the whole engine (read, chunk, batch, dispatch, parse,
  store) with `DriftSettings(enabled=False)`;
- **enabled**: the same with the default `DriftSettings` except
  `baseline_size` = 200, so the gates are armed after the first ~1000
  results (200 answers) and judge the rest of the run, and every gate's
  action set to warn, so that a trip cannot change the workload (a trip
  costs the monitor the same whatever its action).

Both runs: a text file of `--results` records (one chunk each), batch size
5, the key at 40 requests/s = 200 results/s, and `snapshot()` taken 4 times
a second as a dashboard would (that is where the monitor's `metrics()` is
called).  Each run is a fresh child process measuring its own user+sys CPU
(`getrusage`, all threads) from just before `Engine.run()` to just after.

Two figures, both printed per round and as medians:

1. **difference**: (enabled − disabled) / disabled CPU per result, side by
   side in the same round, split into the event loop's thread
   (`time.thread_time`) and the garbage collector (timed by a
   `gc.callbacks` entry in both children);
2. **direct share**: in the enabled child, `DriftMonitor.observe_answer`,
   `observe_result` and `metrics` are wrapped with a main-thread CPU
   accumulator (`time.thread_time_ns`), divided by the child's CPU.  The
   engine's drift-only glue (`features_of_result`, `DriftWatch._act`)
   is accumulated apart and shown as "drift path" together with the monitor.
   Less noisy than a difference of two runs.  The wrappers' own cost
   (calibrated in the child) inflates the enabled run and is printed too;
   a child started with the hidden `--no-meters` runs without them.

With `--profile`, or when a figure fails, one more enabled child runs under
cProfile and the monitor's time is broken down.  Ratios only: no absolute
time is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import io
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from engine.config.settings import DEFAULT_GATES, DriftSettings, GateAction
from tests.benchmarks.engine_cpu import (
    HUGE_TPM,
    KEY_ID,
    SECRET,
    WORDS_PER_RECORD,
    cpu_seconds,
    engine_config,
    simulator_process,
    write_input,
)

RESULTS_PER_S = 200
BATCH_SIZE = 5
RPM = RESULTS_PER_S // BATCH_SIZE * 60  # 2400 rpm = 40 requests/s
CONCURRENCY = 64
# Provider-like latency with a stable spread: on a zero-latency simulator the
# latency gate (action: switch to the conservative preset) can trip on loopback
# jitter, which would change the workload of the enabled run halfway through.
LATENCY = "0.05,0.15"
SNAPSHOTS_PER_S = 4.0
BASELINE_SIZE = 200
REQUIREMENT = 0.05
MIN_ROUNDS = 5

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------- the children
class CpuMeter:
    """Main-thread CPU spent inside the callables it wraps, and how many calls.

    Nested calls to wrapped callables would be counted twice; the ones
    wrapped here never call each other.
    """

    def __init__(self) -> None:
        self.ns = 0
        self.calls = 0

    def wrap(self, function: F) -> F:
        """`function`, timing every call into this meter."""

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time_ns()
            try:
                return function(*args, **kwargs)
            finally:
                self.ns += time.thread_time_ns() - start
                self.calls += 1

        return timed  # type: ignore[return-value]


class GcMeter:
    """CPU spent in the cyclic garbage collector (a `gc.callbacks` entry), and collections.

    The monitor's allocations can make collections more frequent, and their
    cost lands wherever a collection happens to start: no wrapper sees it.
    """

    def __init__(self) -> None:
        self.ns = 0
        self.collections = 0
        self._start = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        # A collection starts and stops in one thread, holding the GIL throughout.
        if phase == "start":
            self._start = time.thread_time_ns()
        else:
            self.ns += time.thread_time_ns() - self._start
            self.collections += 1


def install_meters() -> tuple[CpuMeter, CpuMeter]:
    """Wrap the monitor's entry points and the engine's drift-only glue; (monitor, glue)."""
    import engine.drift.watch as watch_module
    from engine.drift.monitor import DriftMonitor

    monitor, glue = CpuMeter(), CpuMeter()
    methods: tuple[tuple[type, str, CpuMeter], ...] = (
        (DriftMonitor, "observe_answer", monitor),
        (DriftMonitor, "observe_result", monitor),
        (DriftMonitor, "metrics", monitor),
        (watch_module.DriftWatch, "_act", glue),
    )
    # setattr: patching methods in place is the point, and mypy refuses assignments to them.
    for owner, name, meter in methods:
        setattr(owner, name, meter.wrap(getattr(owner, name)))
    # The watch calls it by the name it imported.
    watch_module.features_of_result = glue.wrap(watch_module.features_of_result)
    return monitor, glue


def wrapper_cost_ns(calls: int = 200_000) -> float:
    """What one wrapped call costs over a bare one, measured here and now."""

    def nothing() -> None:
        return None

    wrapped = CpuMeter().wrap(nothing)
    start = time.thread_time_ns()
    for _ in range(calls):
        nothing()
    bare = time.thread_time_ns() - start
    start = time.thread_time_ns()
    for _ in range(calls):
        wrapped()
    timed = time.thread_time_ns() - start
    return max(0.0, (timed - bare) / calls)


def benchmark_drift_settings() -> DriftSettings:
    """The defaults, armed after `BASELINE_SIZE`, with every gate's action set to warn.

    A trip costs the monitor the same whatever its action, but the default
    actions (conservative preset, pause) would change the enabled run's
    workload halfway through, or stop it: measured, the latency gate trips
    on this healthy simulator in most runs (see the report printed).
    """
    gates = tuple(replace(gate, action=GateAction.WARN) for gate in DEFAULT_GATES)
    return DriftSettings(baseline_size=BASELINE_SIZE, gates=gates)


async def poll_snapshots(engine: Any) -> None:
    """Take snapshots at a dashboard's pace until cancelled."""
    period = 1.0 / SNAPSHOTS_PER_S
    while True:
        await asyncio.sleep(period)
        engine.snapshot()


async def run_engine(
    url: str,
    input_path: Path,
    store_path: Path,
    drift: bool,
    profile_path: Path | None,
    metered: bool = True,
) -> dict[str, Any]:
    """One whole engine run; its CPU, outcome and (with drift, unprofiled) the meters."""
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
    settings = benchmark_drift_settings() if drift else DriftSettings(enabled=False)
    config = replace(config, drift=settings)
    meters = install_meters() if drift and metered and profile_path is None else None
    engine = Engine(config, {KEY_ID: SECRET})
    kinds: Counter[str] = Counter()
    tripped: list[str] = []
    armed_at: list[float] = []

    def on_event(event: Event) -> None:
        kinds[str(event.kind)] += 1
        if event.kind is EventKind.DRIFT_TRIPPED:
            tripped.append(event.message)
        elif event.kind is EventKind.DRIFT_BASELINE:
            armed_at.append(time.monotonic())

    engine.events.subscribe(on_event)
    collector = GcMeter()
    gc.callbacks.append(collector)
    # Main-thread CPU, not wall time: the loop's idle waits would swamp everything.
    profiler = cProfile.Profile(time.thread_time) if profile_path else None
    main0 = time.thread_time()
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    if profiler:
        profiler.enable()
    async with asyncio.TaskGroup() as tg:
        poller = tg.create_task(poll_snapshots(engine), name="snapshot-poller")
        state = await engine.run()
        poller.cancel()
    if profiler:
        profiler.disable()
    cpu1, wall1 = cpu_seconds(), time.monotonic()
    main1 = time.thread_time()
    gc.callbacks.remove(collector)
    if profiler and profile_path:
        profiler.dump_stats(profile_path)
    snap = engine.snapshot()
    out: dict[str, Any] = {
        "cpu_s": cpu1 - cpu0,
        "main_cpu_s": main1 - main0,
        "gc_cpu_s": collector.ns / 1e9,
        "gc_collections": collector.collections,
        "wall_s": wall1 - wall0,
        "done": snap.counts.done,
        "requests": snap.requests,
        "rate_limited": snap.rate_limited,
        "errors": sum(count for _kind, count in snap.errors_by_kind),
        "state": str(state),
        "preset": snap.preset.name,
        "trips": tripped,
        "armed_after_s": armed_at[0] - wall0 if armed_at else None,
        "monitor_cpu_s": 0.0,
        "monitor_calls": 0,
        "glue_cpu_s": 0.0,
        "glue_calls": 0,
        "wrapper_ns": 0.0,
    }
    if meters is not None:
        monitor, glue = meters
        out |= {
            "monitor_cpu_s": monitor.ns / 1e9,
            "monitor_calls": monitor.calls,
            "glue_cpu_s": glue.ns / 1e9,
            "glue_calls": glue.calls,
            "wrapper_ns": wrapper_cost_ns(),
        }
    return out


def child_main(args: argparse.Namespace) -> None:
    """Inside a fresh process: do one run, print one JSON line."""
    profile = Path(args.profile_out) if args.profile_out else None
    result = asyncio.run(
        run_engine(
            args.url,
            Path(args.input),
            Path(args.store),
            args.child == "enabled",
            profile,
            metered=not args.no_meters,
        )
    )
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent
@dataclass(frozen=True, slots=True)
class RunFigures:
    """What one child measured about its run."""

    kind: str
    cpu_s: float
    main_cpu_s: float
    gc_cpu_s: float
    gc_collections: int
    wall_s: float
    done: int
    rate_limited: int
    errors: int
    preset: str
    trips: tuple[str, ...]
    armed_after_s: float | None
    monitor_cpu_s: float
    monitor_calls: int
    glue_cpu_s: float
    glue_calls: int
    wrapper_ns: float

    @property
    def ms_per_result(self) -> float:
        """Child CPU per stored result, in milliseconds."""
        return self.cpu_s / max(1, self.done) * 1000.0

    @property
    def monitor_share(self) -> float:
        """The monitor's own CPU as a share of the child's."""
        return self.monitor_cpu_s / self.cpu_s

    @property
    def drift_path_share(self) -> float:
        """The monitor's and the engine's drift-only glue's CPU as a share of the child's."""
        return (self.monitor_cpu_s + self.glue_cpu_s) / self.cpu_s

    @property
    def wrapper_share(self) -> float:
        """What the meters themselves added to the child's CPU, as a share of it."""
        return (self.monitor_calls + self.glue_calls) * self.wrapper_ns / 1e9 / self.cpu_s


def run_child(
    kind: str,
    url: str,
    input_path: Path,
    store_path: Path,
    profile_path: Path | None = None,
    metered: bool = True,
) -> RunFigures:
    """Run one engine child of `kind` ("enabled" or "disabled") and read its figures."""
    extra = ["--profile-out", str(profile_path)] if profile_path else []
    if not metered:
        extra.append("--no-meters")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.benchmarks.drift_engine_cpu",
            "--child",
            kind,
            "--url",
            url,
            "--input",
            str(input_path),
            "--store",
            str(store_path),
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
        kind=kind,
        cpu_s=data["cpu_s"],
        main_cpu_s=data["main_cpu_s"],
        gc_cpu_s=data["gc_cpu_s"],
        gc_collections=data["gc_collections"],
        wall_s=data["wall_s"],
        done=data["done"],
        rate_limited=data["rate_limited"],
        errors=data["errors"],
        preset=data["preset"],
        trips=tuple(data["trips"]),
        armed_after_s=data["armed_after_s"],
        monitor_cpu_s=data["monitor_cpu_s"],
        monitor_calls=data["monitor_calls"],
        glue_cpu_s=data["glue_cpu_s"],
        glue_calls=data["glue_calls"],
        wrapper_ns=data["wrapper_ns"],
    )


# The monitor's entry points and the engine's drift glue, as cProfile names them.
_ENTRY_POINTS = (
    ("engine/drift/monitor.py", "observe_answer"),
    ("engine/drift/monitor.py", "observe_result"),
    ("engine/drift/monitor.py", "metrics"),
    ("engine/drift/features.py", "features_of_result"),
    ("engine/drift/watch.py", "_act"),
)


def print_profile(profile_path: Path, top: int = 20) -> None:
    """Where the drift path's time goes in a profiled enabled run."""
    stats = pstats.Stats(str(profile_path), stream=io.StringIO())
    # typeshed leaves out `Stats.stats`: {(file, line, function): (cc, nc, tottime, cumtime, ...)}.
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    print("\n--- enabled child under cProfile (main thread): drift entry points, cumulative ---")
    for fragment, function in _ENTRY_POINTS:
        for (filename, _line, name), (_cc, calls, _tt, cumtime, _callers) in raw.items():
            if name == function and filename.endswith(fragment):
                print(
                    f"{fragment}:{function:22} {calls:8d} calls {cumtime:7.3f}s "
                    f"{cumtime / total:6.2%} of main-thread CPU "
                    f"{cumtime / max(1, calls) * 1e6:8.1f} µs/call"
                )
    buffer = io.StringIO()
    listing = pstats.Stats(str(profile_path), stream=buffer)
    listing.sort_stats("tottime").print_stats(r"engine/drift/|/river/|/numpy/", top)
    text = buffer.getvalue()
    start = text.find("   ncalls")
    print(f"\n--- drift, river and numpy functions, top {top} by own time ---")
    print(text[start:] if start >= 0 else text)


def _per_result_difference(on: RunFigures, off: RunFigures, attribute: str) -> float:
    """(on − off) of one CPU figure per result, as a share of `off`'s whole CPU per result."""
    per_on = getattr(on, attribute) / max(1, on.done)
    per_off = getattr(off, attribute) / max(1, off.done)
    return (per_on - per_off) / (off.cpu_s / max(1, off.done))


def _percent(value: float) -> str:
    return f"{value * 100:+7.2f}%" if value < 0 else f"{value * 100:7.2f}%"


def main(results: int, rounds: int, force_profile: bool) -> int:
    """Run the rounds, print the figures, profile if asked or failing; 0 when both pass."""
    with tempfile.TemporaryDirectory(prefix="crawldeck-drift-cpu-") as tmp:
        work = Path(tmp)
        input_path = work / "input.txt"
        write_input(input_path, results, WORDS_PER_RECORD)
        differences: list[float] = []
        main_differences: list[float] = []
        gc_differences: list[float] = []
        monitor_shares: list[float] = []
        path_shares: list[float] = []
        wrapper_shares: list[float] = []
        problems: list[str] = []
        trips: list[str] = []
        with simulator_process(RPM, HUGE_TPM, LATENCY) as url:
            print(
                f"{results} results per run at {RESULTS_PER_S} results/s (batch {BATCH_SIZE}, "
                f"{RPM} rpm), latency {LATENCY} s, snapshots {SNAPSHOTS_PER_S:g}/s, "
                f"drift baseline_size {BASELINE_SIZE}"
            )
            print(
                f"{'round':>5} {'run':8} {'results':>7} {'cpu s':>6} {'main s':>6} {'gc ms':>5} "
                f"{'GCs':>5} {'ms/res':>6} {'wall s':>6} {'429s':>4} {'err':>3} {'armed@s':>7} "
                f"{'trips':>5} {'monitor':>8} {'path':>8}"
            )
            for r in range(1, rounds + 1):
                order = ("disabled", "enabled") if r % 2 else ("enabled", "disabled")
                figures: dict[str, RunFigures] = {}
                for kind in order:
                    fig = run_child(kind, url, input_path, work / f"{kind}-{r}.db")
                    figures[kind] = fig
                    enabled = kind == "enabled"
                    armed = f"{fig.armed_after_s:7.1f}" if fig.armed_after_s is not None else "-"
                    print(
                        f"{r:5d} {kind:8} {fig.done:7d} {fig.cpu_s:6.2f} {fig.main_cpu_s:6.2f} "
                        f"{fig.gc_cpu_s * 1000:5.0f} {fig.gc_collections:5d} "
                        f"{fig.ms_per_result:6.3f} {fig.wall_s:6.1f} {fig.rate_limited:4d} "
                        f"{fig.errors:3d} {armed:>7} {len(fig.trips):5d} "
                        f"{_percent(fig.monitor_share) if enabled else '-':>8} "
                        f"{_percent(fig.drift_path_share) if enabled else '-':>8}",
                        flush=True,
                    )
                    if fig.done != results or fig.preset != "aggressive":
                        problems.append(
                            f"round {r} {kind}: {fig.done}/{results} results, preset {fig.preset}"
                        )
                    trips.extend(f"round {r} {kind}: {trip}" for trip in fig.trips)
                on, off = figures["enabled"], figures["disabled"]
                difference = (on.ms_per_result - off.ms_per_result) / off.ms_per_result
                differences.append(difference)
                # The same difference, split: the event loop's thread, and the collector.
                main_differences.append(_per_result_difference(on, off, "main_cpu_s"))
                gc_differences.append(_per_result_difference(on, off, "gc_cpu_s"))
                monitor_shares.append(on.monitor_share)
                path_shares.append(on.drift_path_share)
                wrapper_shares.append(on.wrapper_share)
                print(
                    f"{r:5d} (enabled − disabled) / disabled CPU per result: "
                    f"{_percent(difference)} (main thread {_percent(main_differences[-1])}, "
                    f"GC {_percent(gc_differences[-1])}); "
                    f"monitor ÷ child CPU {_percent(on.monitor_share)}; "
                    f"drift path {_percent(on.drift_path_share)}; "
                    f"meters' own cost {_percent(on.wrapper_share)}",
                    flush=True,
                )
            median_difference = statistics.median(differences)
            median_monitor = statistics.median(monitor_shares)
            median_path = statistics.median(path_shares)
            median_wrapper = statistics.median(wrapper_shares)
            difference_ok = median_difference < REQUIREMENT
            share_ok = median_monitor < REQUIREMENT
            print(f"\nmedians over {rounds} rounds (requirement < {REQUIREMENT:.0%}):")
            print(
                f"  difference (enabled − disabled) / disabled CPU per result: "
                f"{_percent(median_difference)}  {'PASS' if difference_ok else 'FAIL'}"
                f"  (includes the meters' own ~{_percent(median_wrapper).strip()})"
            )
            print(
                f"    of which the main thread {_percent(statistics.median(main_differences))}, "
                f"the garbage collector {_percent(statistics.median(gc_differences))}"
            )
            print(
                f"  monitor ÷ child CPU, measured directly:                    "
                f"{_percent(median_monitor)}  {'PASS' if share_ok else 'FAIL'}"
            )
            print(
                f"  drift path (monitor + features_of_result + DriftWatch._act): "
                f"{_percent(median_path)}"
            )
            if trips:
                print(
                    "\ngates that tripped (every action is warn here, so the work stayed the same):"
                )
                for trip in trips:
                    print(f"  {trip}")
            if problems:
                print("\nruns that did not do the same work (figures are suspect):")
                for problem in problems:
                    print(f"  {problem}")
            if force_profile or not (difference_ok and share_ok):
                profile_path = work / "enabled.prof"
                fig = run_child(
                    "enabled", url, input_path, work / "enabled-profiled.db", profile_path
                )
                print(
                    f"\nprofiled enabled run: {fig.done} results, "
                    f"{fig.ms_per_result:.3f} ms/result under cProfile"
                )
                print_profile(profile_path)
    return 0 if difference_ok and share_ok and not problems else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rounds", type=int, default=8, help=f"enabled+disabled pairs (≥ {MIN_ROUNDS})"
    )
    parser.add_argument(
        "--results", type=int, default=5000, help="results per run (5000 ≈ 25 s at 200/s)"
    )
    parser.add_argument("--profile", action="store_true", help="always profile an enabled run")
    # The child side: not for people.
    parser.add_argument("--child", choices=("enabled", "disabled"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--no-meters", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.child:
        child_main(parsed)
    else:
        sys.exit(main(parsed.results, max(MIN_ROUNDS, parsed.rounds), parsed.profile))
