"""What the drift monitor costs, how often it cries wolf, and how fast it sees drift.

    python -m tests.benchmarks.drift_overhead [--seeds N] [--rounds R]

All on the synthetic answers of `tests/engine/drift/test_monitor.py`
(documents of a few chunks, batches of five, lognormal lengths, …):

1. **CPU**: a fresh monitor observes 20,000 results in batches of five
   (learning included), with `metrics()` called 4 times per second of
   simulated time at 200 results/s.  The stream is generated beforehand, so
   only the monitor is timed (`time.process_time`, median of rounds).  The
   same with 1536-dimension embeddings, and `features_of_result` on
   realistic entries, are timed too.
2. **False alarms**: 10 runs of 10,000 results after each run's own
   baseline (100,000 results), with and without embeddings.
3. **Detection delay** per kind of drift, over `--seeds` runs: results from
   the shift to the first trip, at the tested size and at half of it.
4. **Shift detector**: Page-Hinkley against ADWIN behind `sudden_shift`.

Counts and ratios only: no figure here is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
from river.base import DriftDetector
from river.drift import ADWIN

from engine.config.settings import DriftSettings, Gate
from engine.drift.detectors import page_hinkley
from engine.drift.features import AnswerFeatures, ResultFeatures, features_of_result
from engine.drift.monitor import DriftMonitor
from tests.engine.drift.test_monitor import SHIFTS, SyntheticStream, feed, first_trips, learn

RESULTS = 20_000
RESULTS_PER_S = 200
METRICS_PER_S = 4
BATCH = 5
ENGINE_CPU_PER_REQUEST_S = 1e-3
FALSE_ALARM_RUNS = 10
FALSE_ALARM_RESULTS = 10_000
NEVER = 10**9  # "not detected" in a sorted list of delays

Answer = tuple[AnswerFeatures, list[ResultFeatures], list[np.ndarray]]


# ---------------------------------------------------------------- CPU
def pregenerated(seed: int, results: int, dimension: int) -> list[Answer]:
    stream = SyntheticStream(seed, batch=BATCH, dimension=dimension)
    answers: list[Answer] = []
    seen = 0
    while seen < results:
        answer = stream.answer()
        answers.append(answer)
        seen += len(answer[1])
    return answers


def monitor_cpu_s(answers: list[Answer], embeddings: bool) -> tuple[float, int]:
    """CPU seconds to observe every answer and result, with metrics() at 4 Hz of simulated time."""
    monitor = DriftMonitor(DriftSettings(embeddings=embeddings))
    results_per_metrics_call = RESULTS_PER_S // METRICS_PER_S
    seen = 0
    calls = 0
    start = time.process_time()
    for answer, results, vectors in answers:
        monitor.observe_answer(answer)
        for result, vector in zip(results, vectors, strict=True):
            monitor.observe_result(result, vector if embeddings else None)
            seen += 1
            if seen % results_per_metrics_call == 0:
                monitor.metrics()
                monitor.trips()
                calls += 1
    return time.process_time() - start, calls


def realistic_entries(count: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    words = ["budget", "launch", "vendor", "hiring", "outage", "pricing", "roadmap", "audit"]
    entries: list[dict[str, object]] = []
    for i in range(count):
        summary = " ".join(rng.choice(words, size=int(rng.integers(12, 40))))
        items = [
            {"name": str(rng.choice(words)), "owner": "Ana", "due": "2025-03-01"}
            for _ in range(int(rng.poisson(2.5)))
        ]
        entries.append({"id": f"{i:016x}", "summary": summary.capitalize() + ".", "items": items})
    return entries


def section_cpu(rounds: int) -> None:
    print(f"== CPU: {RESULTS:,} results in batches of {BATCH}, metrics() at {METRICS_PER_S} Hz")
    plain = pregenerated(1, RESULTS, 32)
    embedded = pregenerated(1, RESULTS, 1536)
    figures: dict[str, float] = {}
    for name, answers, embeddings in (
        ("no embeddings", plain, False),
        ("1536-d embeddings", embedded, True),
    ):
        samples = []
        calls = 0
        for _ in range(rounds):
            cpu, calls = monitor_cpu_s(answers, embeddings)
            samples.append(cpu)
        per_result_us = 1e6 * statistics.median(samples) / RESULTS
        figures[name] = per_result_us
        print(
            f"  {name:<18} {per_result_us:6.2f} µs/result  (median of {rounds};"
            f" {calls} metrics() calls)"
        )
    entries = realistic_entries(5000)
    start = time.process_time()
    for entry in entries:
        features_of_result(entry)
    extract_us = 1e6 * (time.process_time() - start) / len(entries)
    mean_chars = statistics.mean(len(json.dumps(e)) for e in entries)
    print(f"  features_of_result {extract_us:6.2f} µs/entry  (entries of ~{mean_chars:.0f} chars)")

    engine_per_request_us = 1e6 * ENGINE_CPU_PER_REQUEST_S
    print(f"  against an engine spending {engine_per_request_us:.0f} µs CPU per request:")
    for name, per_result_us in figures.items():
        total = per_result_us + extract_us
        per_request = BATCH * total
        print(
            f"    {name:<18} monitor+features {total:5.1f} µs/result;"
            f" one result per request: {100 * total / engine_per_request_us:4.1f}% of engine CPU;"
            f" {BATCH} per request: {100 * per_request / engine_per_request_us:4.1f}%"
        )


# ---------------------------------------------------------------- false alarms
def section_false_alarms() -> None:
    total = FALSE_ALARM_RUNS * FALSE_ALARM_RESULTS
    print(f"== False alarms: {FALSE_ALARM_RUNS} runs × {FALSE_ALARM_RESULTS:,} unshifted results")
    for embeddings in (False, True):
        trips: Counter[str] = Counter()
        peaks: dict[str, list[float]] = {}
        for run in range(FALSE_ALARM_RUNS):
            monitor = DriftMonitor(DriftSettings(embeddings=embeddings), clock=lambda: 0.0)
            stream = SyntheticStream(5000 + run)
            learn(monitor, stream, embeddings)
            for _ in range(FALSE_ALARM_RESULTS // 25):  # one evaluation at a time
                for _, trip in feed(monitor, stream, 25, embeddings):
                    trips[trip.metric] += 1
                    print(f"    run {run}: {trip.message()}")
                for metric in monitor.metrics():
                    if metric.current is not None:
                        peaks.setdefault(metric.name, []).append(metric.current)
        rate = sum(trips.values()) / (total / 10_000)
        label = "with embeddings" if embeddings else "without embeddings"
        print(
            f"  {label}: {sum(trips.values())} trips in {total:,} results = {rate:.2f} per 10,000"
        )
        thresholds = {gate.metric: gate.threshold for gate in DriftSettings().gates}
        peak_text = ", ".join(
            f"{name} {max(values):.2f}/{thresholds[name]:g}" for name, values in peaks.items()
        )
        print(f"    highest value seen / threshold: {peak_text}")


# ---------------------------------------------------------------- delays
def delays(
    kind: str,
    seeds: int,
    strength: float,
    settings: DriftSettings,
    shift_detector: Callable[[], DriftDetector] = page_hinkley,
    watch: frozenset[str] | None = None,
    horizon: int = 1000,
) -> tuple[list[int], Counter[str]]:
    """Results from the shift to the first trip of one of `watch`, per seed (NEVER if none)."""
    watch = watch or SHIFTS[kind]
    found: list[int] = []
    first_metric: Counter[str] = Counter()
    for seed in range(seeds):
        monitor = DriftMonitor(settings, clock=lambda: 0.0, shift_detector=shift_detector)
        stream = SyntheticStream(7000 + seed, strength=strength)
        learn(monitor, stream, settings.embeddings)
        feed(monitor, stream, 300, settings.embeddings)
        stream.shift = kind
        first = {
            name: seen
            for name, seen in first_trips(
                feed(monitor, stream, horizon, settings.embeddings)
            ).items()
            if name in watch
        }
        if first:
            name = min(first, key=first.__getitem__)
            found.append(first[name])
            first_metric[name] += 1
        else:
            found.append(NEVER)
    return sorted(found), first_metric


def describe_delays(values: list[int]) -> str:
    caught = [value for value in values if value != NEVER]
    within = sum(value <= 200 for value in values)
    if not caught:
        return f"none caught; within 200: 0/{len(values)}"
    return (
        f"median {statistics.median(caught):5.0f}, worst {max(caught):5d}"
        f"{f' ({len(values) - len(caught)} never)' if len(caught) < len(values) else ''},"
        f" within 200: {within}/{len(values)}"
    )


def section_delays(seeds: int) -> None:
    print(f"== Detection delay, results from the shift to the first trip ({seeds} runs each)")
    settings = DriftSettings(embeddings=True)
    for strength in (1.0, 0.5):
        print(f"  shift size ×{strength:g} (see SyntheticStream):")
        for kind in SHIFTS:
            values, first = delays(kind, seeds, strength, settings)
            names = ", ".join(f"{name} {count}" for name, count in first.most_common())
            print(f"    {kind:<16} {describe_delays(values)}  [first: {names}]")


def section_shift_detectors(seeds: int) -> None:
    print("== sudden_shift alone, by river detector (latency ×2.5; false alarms in 60,000)")
    settings = DriftSettings(gates=(Gate("sudden_shift", 1.0),))
    candidates: dict[str, Callable[[], DriftDetector]] = {
        "Page-Hinkley δ=0.15 λ=5": page_hinkley,
        "ADWIN δ=1e-5 clock=8": lambda: ADWIN(delta=1e-5, clock=8),
        "ADWIN δ=1e-3 clock=4": lambda: ADWIN(delta=1e-3, clock=4),
    }
    for name, detector in candidates.items():
        alarms = 0
        for run in range(6):
            monitor = DriftMonitor(settings, clock=lambda: 0.0, shift_detector=detector)
            stream = SyntheticStream(9000 + run)
            learn(monitor, stream)
            alarms += len(feed(monitor, stream, 10_000))
        values, _ = delays(
            "latency_jump", seeds, 1.0, settings, detector, frozenset({"sudden_shift"}), 600
        )
        print(f"  {name:<24} {describe_delays(values)}; false alarms {alarms}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="runs per kind of drift")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (median)")
    args = parser.parse_args()
    section_cpu(args.rounds)
    section_false_alarms()
    section_delays(args.seeds)
    section_shift_detectors(args.seeds)


if __name__ == "__main__":
    main()
