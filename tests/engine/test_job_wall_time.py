"""A finished job's elapsed time is its own wall time, frozen when it ends.

The dashboard stays open after a job ends until someone quits it, and the
closing summary is printed only then: the time it reports must not grow
while nobody looks.  A clock the test can move forward stands in for the
minutes a finished dashboard might stay open.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from engine.engine import Engine
from engine.observe.snapshot import JobState
from tests.engine.conftest import job_config, sim_keys, write_records


class MovableClock:
    """The monotonic clock, plus however far the test has moved it on."""

    def __init__(self) -> None:
        self.moved_s = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.moved_s


def stored_summary(db: Path) -> dict[str, object]:
    with closing(sqlite3.connect(db)) as conn:
        (text,) = conn.execute("SELECT summary_json FROM runs").fetchone()
    summary: dict[str, object] = json.loads(text)
    return summary


async def test_a_finished_jobs_elapsed_time_stops_growing_when_it_ends(
    tmp_path: Path, simulator
) -> None:
    keys = [("k1", 6000, 10_000_000)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.01, 0.03))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 30), sim.base_url, keys
    )
    clock = MovableClock()
    engine = Engine(config, secrets, clock=clock)

    state = await engine.run()
    elapsed_at_end = engine.snapshot().elapsed_s
    summary_at_end = engine.summary_line()
    clock.moved_s = 600.0  # ten minutes with the finished dashboard open

    assert state is JobState.DONE
    assert 0 < elapsed_at_end < 600
    assert engine.snapshot().elapsed_s == elapsed_at_end
    assert engine.elapsed_s == elapsed_at_end
    assert engine.summary_line() == summary_at_end
    assert f"in {elapsed_at_end:.1f}s" in summary_at_end
    assert stored_summary(Path(config.job.store))["elapsed_s"] == elapsed_at_end


async def test_a_running_jobs_elapsed_time_follows_the_clock(tmp_path: Path, simulator) -> None:
    keys = [("k1", 6000, 10_000_000)]
    sim = await simulator(keys=sim_keys(keys))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 5), sim.base_url, keys
    )
    clock = MovableClock()
    engine = Engine(config, secrets, clock=clock)

    before = engine.snapshot().elapsed_s
    clock.moved_s = 30.0

    assert engine.snapshot().elapsed_s >= before + 30.0
