"""The engine's drift monitor: baselines learned, kept and reused; gates armed and quiet.

The real engine against the real simulator on loopback and a real store.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from engine.config.settings import DEFAULT_GATES, DriftSettings, GateAction
from engine.engine import Engine
from engine.observe.events import EventKind
from engine.observe.snapshot import DriftState, JobState
from engine.simulation.simulator import ProviderSimulator
from tests.engine.conftest import job_config, sim_keys, write_records
from tui.cli import baseline_command

KEYS = (("k1", 600_000, 1_000_000_000),)
# Small sizes keep the test quick; the statistics are the same at any size.
# Latency is left ungated: on a shared 2-core machine it really does move by
# half when other work lands, which is load, not the provider drifting.
DRIFT = DriftSettings(
    baseline_size=60,
    window_size=80,
    evaluate_every=10,
    min_window=40,
    gates=tuple(
        replace(gate, action=GateAction.PAUSE) if gate.metric == "parse_failures" else gate
        for gate in DEFAULT_GATES
        if gate.metric != "latency"
    ),
)


async def drift_engine(
    tmp_path: Path, simulator: Callable[..., object], records: int, name: str = "in.txt"
) -> tuple[Engine, dict[str, str]]:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.005, 0.02))  # type: ignore[misc]
    assert isinstance(sim, ProviderSimulator)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / name, records), sim.base_url, KEYS
    )
    config = replace(config, drift=DRIFT, preset=replace(config.preset, batch_size=2))
    return Engine(config, secrets), secrets


def kinds(engine: Engine, kind: EventKind) -> list[str]:
    return [e.message for e in engine.snapshot().events if e.kind is kind]


def stored_baselines(store: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(store) as conn:
        return list(conn.execute("SELECT run_id, saved FROM drift_baselines"))


async def test_a_run_learns_a_baseline_keeps_it_and_stays_quiet_without_drift(
    tmp_path: Path, simulator: Callable[..., object]
) -> None:
    engine, _ = await drift_engine(tmp_path, simulator, records=600)

    assert await engine.run() is JobState.DONE

    assert kinds(engine, EventKind.DRIFT_BASELINE) == [
        "drift baseline learned from the first results; gates are armed"
    ]
    assert kinds(engine, EventKind.DRIFT_TRIPPED) == []
    metrics = engine.snapshot().drift
    assert {m.name for m in metrics} >= {"output_tokens", "parse_failures", "refusals"}
    assert all(m.state is not DriftState.LEARNING for m in metrics)
    assert all(m.state is not DriftState.TRIPPED for m in metrics)
    assert any(m.values for m in metrics), "evaluations give each chart its series"
    assert stored_baselines(Path(engine.config.job.store)) == [(1, 0)]


async def test_a_saved_baseline_arms_the_next_run_from_its_first_result(
    tmp_path: Path, simulator: Callable[..., object], capsys: object
) -> None:
    first, secrets = await drift_engine(tmp_path, simulator, records=300)
    assert await first.run() is JobState.DONE
    store = Path(first.config.job.store)

    assert await baseline_command("save", store, None) == 0
    assert await baseline_command("show", store, None) == 0
    shown = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "saved baseline 1" in shown
    assert "[saved: runs judge against this one]" in shown
    assert "results from 60 answers" in shown

    # Another source and other words: new chunks that need requests (the same text
    # under another source would be stored as a copy of its answer).
    more = write_records(tmp_path / "more.txt", 120, words=31)
    config = replace(first.config, job=replace(first.config.job, input=str(more)))
    again = Engine(config, secrets)
    assert await again.run() is JobState.DONE
    assert kinds(again, EventKind.DRIFT_BASELINE) == [
        "drift gates armed with the job's saved baseline"
    ]
    assert all(m.state is not DriftState.LEARNING for m in again.snapshot().drift)
    assert stored_baselines(store) == [(1, 1)]  # nothing new learned: the saved one ruled

    assert await baseline_command("clear", store, None) == 0
    assert stored_baselines(store) == [(1, 0)]


async def test_baseline_commands_say_when_there_is_nothing_to_save(tmp_path: Path) -> None:
    assert await baseline_command("save", tmp_path / "none.db", None) == 2


# ---------------------------------------------------------------- drift on cue
async def cued_engine(
    tmp_path: Path,
    simulator: Callable[..., object],
    drift: tuple[str, ...],
    after: int,
    embeddings: bool = False,
) -> Engine:
    sim = await simulator(  # type: ignore[misc]
        keys=sim_keys(KEYS), latency_s=(0.005, 0.02), drift_after=after, drift=drift
    )
    assert isinstance(sim, ProviderSimulator)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 1500), sim.base_url, KEYS
    )
    preset = replace(config.preset, batch_size=2, concurrency=4, adaptive_concurrency=False)
    settings = replace(DRIFT, embeddings=embeddings)
    return Engine(replace(config, drift=settings, preset=preset), secrets)


async def run_until_trip(engine: Engine) -> tuple[list[str], int]:
    """Run until the first trip's action settles; (trip messages, results stored by then)."""
    seen: list[tuple[str, int]] = []

    def on_event(event: object) -> None:
        if getattr(event, "kind", None) is EventKind.DRIFT_TRIPPED:
            seen.append((getattr(event, "message", ""), engine.stats.done))

    engine.events.subscribe(on_event)
    run = asyncio.create_task(engine.run())
    while not seen and not run.done():
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # let the action take effect
    state = engine.snapshot().state
    engine.stop()
    await run
    assert seen, f"no trip; the job ended {state}"
    return [m for m, _ in seen], seen[0][1]


async def test_shorter_answers_trip_within_200_results_of_the_shift(
    tmp_path: Path, simulator: Callable[..., object]
) -> None:
    after = 150  # answers, two results each: the shift starts near result 300
    engine = await cued_engine(tmp_path, simulator, ("shorter",), after)
    messages, done_at_trip = await run_until_trip(engine)
    assert any("answer length" in m or "output tokens" in m for m in messages), messages
    assert done_at_trip - 2 * after <= 200


async def test_malformed_answers_trip_the_pause_gate_and_the_job_pauses(
    tmp_path: Path, simulator: Callable[..., object]
) -> None:
    engine = await cued_engine(tmp_path, simulator, ("malformed",), 150)
    paused: list[JobState] = []
    engine.events.subscribe(
        lambda e: paused.append(engine.snapshot().state) if e.kind is EventKind.PAUSED else None
    )
    messages, done_at_trip = await run_until_trip(engine)
    assert any("parse failures" in m and m.endswith("→ pause") for m in messages), messages
    assert paused, "the gate's action paused the job"
    assert done_at_trip - 300 <= 200


async def test_embeddings_come_through_the_keys_and_a_shift_trips_their_gate(
    tmp_path: Path, simulator: Callable[..., object]
) -> None:
    engine = await cued_engine(tmp_path, simulator, ("embeddings",), 150, embeddings=True)
    messages, done_at_trip = await run_until_trip(engine)
    assert any(m.startswith("drift: embeddings") for m in messages), messages
    assert done_at_trip - 300 <= 200
    # The embeddings were requests on the job's own key, within its budget.
    key = engine.snapshot().keys[0]
    assert key.requests > engine.snapshot().requests


async def test_embeddings_without_a_shift_stay_quiet(
    tmp_path: Path, simulator: Callable[..., object]
) -> None:
    engine, secrets = await drift_engine(tmp_path, simulator, records=600)
    engine = Engine(replace(engine.config, drift=replace(DRIFT, embeddings=True)), secrets)
    assert await engine.run() is JobState.DONE
    assert kinds(engine, EventKind.DRIFT_TRIPPED) == []
    (embeddings,) = [m for m in engine.snapshot().drift if m.name == "embeddings"]
    assert embeddings.state is not DriftState.LEARNING and embeddings.values
