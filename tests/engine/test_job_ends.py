"""Every job ends: a provider that never serves, keys that all fail, memory that never falls.

A real simulator on loopback, the real openai client, real SQLite files.
The waits on the engine are hang guards (`asyncio.timeout`), never the
thing a test measures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config.config_problem import ConfigError
from engine.config.settings import JobConfig, RateLimitWaits
from engine.engine import Engine
from engine.limits.memory_guard import MIB
from engine.observe.events import EventKind
from engine.observe.snapshot import JobState
from tests.engine.conftest import job_config, sim_keys, stored, write_records

HANG_GUARD_S = 60.0
KEYS = [("k1", 60_000, 100_000_000), ("k2", 60_000, 100_000_000)]
# Small bounds, so a provider that never serves is given up on in well under a second.
QUICK = RateLimitWaits(key_streak=3, key_wait_s=5.0, key_escalations=2, key_escalation_s=0.05)


def with_waits(config: JobConfig, waits: RateLimitWaits) -> JobConfig:
    return replace(config, rate_limit_waits=waits)


async def run_to_end(engine: Engine) -> JobState:
    async with asyncio.timeout(HANG_GUARD_S):  # a guard: a job that never ends fails here
        return await engine.run()


# -- 429s -----------------------------------------------------------------------------


async def test_a_provider_that_answers_429_forever_ends_the_job_with_every_chunk_failed(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), fault_429=1.0)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 40), sim.base_url, KEYS
    )
    engine = Engine(with_waits(config, QUICK), secrets)

    state = await run_to_end(engine)

    assert state is JobState.FAILED
    results, failures = stored(Path(config.job.store))
    assert results == []
    assert len({chunk for chunk, _ in failures}) == len(failures) == 40
    for _, reason in failures:
        assert reason.startswith("no usable key: sim/k1: rate limited: 429 on"), reason
    snap = engine.snapshot()
    assert [k.state for k in snap.keys] == ["disabled", "disabled"]
    assert all(
        "with no answer, after 2 longer cool-down(s)" in k.disabled_reason for k in snap.keys
    )
    assert "no API key can serve any more" in engine.failure_reason
    assert snap.counts.failed == 40
    assert snap.counts.pending == 0
    # Bounded: each key is refused in 5 rounds (3, then 2 longer cool-downs) and
    # each of the 8 batches sends at most once per round, so 2 x 5 x 8 at most.
    assert sim.stats.requests <= 80


async def test_a_key_that_sees_a_few_429s_and_then_answers_is_never_disabled(
    tmp_path: Path, simulator
) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), fault_429=0.3)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 200), sim.base_url, keys
    )
    engine = Engine(config, secrets)  # the default bounds

    state = await run_to_end(engine)

    assert state is JobState.DONE
    snap = engine.snapshot()
    assert snap.rate_limited > 5
    assert snap.keys[0].state != "disabled"
    assert len(stored(Path(config.job.store))[0]) == 200


async def test_a_batch_refused_past_its_bound_fails_with_the_reason_while_the_key_serves(
    tmp_path: Path, simulator
) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), fault_429=0.5)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 200), sim.base_url, keys
    )
    waits = RateLimitWaits(key_streak=1000, batch_429s=2)
    engine = Engine(with_waits(config, waits), secrets)

    state = await run_to_end(engine)

    assert state is JobState.FINISHED_WITH_FAILURES
    results, failures = stored(Path(config.job.store))
    assert failures, "at p=0.5 some of 40 batches take two 429s"
    assert len(results) + len(failures) == 200
    for _, reason in failures:
        assert reason.startswith("rate_limited: refused with 429 2 times"), reason
    assert engine.snapshot().keys[0].state != "disabled"


async def test_every_key_refused_with_401_ends_the_job_with_every_chunk_failed(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 30), sim.base_url, KEYS
    )
    wrong = {key_id: f"{secret}-revoked" for key_id, secret in secrets.items()}
    engine = Engine(config, wrong)

    state = await run_to_end(engine)

    assert state is JobState.FAILED
    results, failures = stored(Path(config.job.store))
    assert results == []
    assert len(failures) == 30
    assert all(reason.startswith("no usable key: sim/k1: HTTP 401") for _, reason in failures)
    assert engine.snapshot().counts.pending == 0
    assert sim.stats.unauthorized >= 2


async def test_every_key_out_of_quota_ends_the_job_and_a_rerun_retries_the_failures(
    tmp_path: Path, simulator
) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    broke = tuple(replace(key, quota_exhausted=True) for key in sim_keys(keys))
    sim = await simulator(keys=broke)
    records = write_records(tmp_path / "in.txt", 25)
    config, secrets = job_config(tmp_path, records, sim.base_url, keys)

    assert await run_to_end(Engine(config, secrets)) is JobState.FAILED
    _, failures = stored(Path(config.job.store))
    assert len(failures) == 25
    assert all("insufficient quota" in reason for _, reason in failures)

    healthy = await simulator(keys=sim_keys(keys))
    again = replace(config, providers=(replace(config.providers[0], base_url=healthy.base_url),))
    assert await run_to_end(Engine(again, secrets)) is JobState.DONE
    assert len(stored(Path(config.job.store))[0]) == 25


# -- the memory breaker ---------------------------------------------------------------


class SettlingRss:
    """An RSS reader: `floor_mb` for the engine's floor (its first reading), then `rss_mb`.

    `switch` may change the later readings from inside the run (it is called
    with the engine and returns the RSS in MB, or None to keep `rss_mb`);
    `observe` sees the engine at every sample.
    """

    def __init__(
        self,
        floor_mb: int,
        rss_mb: int,
        switch: Callable[[Engine], int | None] | None = None,
        observe: Callable[[Engine], None] | None = None,
    ) -> None:
        self.floor_mb, self.rss_mb = floor_mb, rss_mb
        self.engine: Engine | None = None
        self._switch, self._observe = switch, observe

    def __call__(self) -> int:
        engine = self.engine
        if engine is None:
            return self.floor_mb * MIB
        if self._observe is not None:
            self._observe(engine)
        switched = self._switch(engine) if self._switch is not None else None
        return (self.rss_mb if switched is None else switched) * MIB


def memory_job(tmp_path: Path, base_url: str, records: int) -> tuple[JobConfig, dict[str, str]]:
    keys = [("k1", 60_000, 100_000_000)]
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", records), base_url, keys
    )
    return (
        replace(
            config,
            preset=replace(config.preset, concurrency=2, memory_soft_mb=300, memory_hard_mb=400),
            engine=replace(config.engine, memory_sample_s=0.01),
        ),
        secrets,
    )


async def test_a_process_that_stays_above_the_soft_limit_still_ends_when_all_is_done(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys([("k1", 60_000, 100_000_000)]), latency_s=(0.01, 0.01))
    config, secrets = memory_job(tmp_path, sim.base_url, 600)  # three blocks of input
    rss = SettlingRss(floor_mb=150, rss_mb=350)  # above soft from the first sample on
    engine = Engine(config, secrets, read_rss=rss)
    rss.engine = engine

    state = await run_to_end(engine)

    assert state is JobState.DONE
    assert len(stored(Path(config.job.store))[0]) == 600
    snap = engine.snapshot()
    assert snap.memory.state == "soft"
    assert snap.memory.waiting_for.startswith("input paused until memory < 270 MB (now 350 MB)")
    assert snap.memory.floor_bytes == 150 * MIB
    assert EventKind.MEMORY_SOFT in [e.kind for e in snap.events]


async def test_memory_that_rises_above_both_limits_once_the_input_is_read_does_not_hold_the_end(
    tmp_path: Path, simulator
) -> None:
    # The input fits one block; memory rises above both limits the moment the
    # pipeline has taken it in, so the reader meets the end of the input above them.
    sim = await simulator(keys=sim_keys([("k1", 60_000, 100_000_000)]), latency_s=(0.01, 0.01))
    config, secrets = memory_job(tmp_path, sim.base_url, 40)
    rss = SettlingRss(floor_mb=150, rss_mb=100, switch=lambda e: 500 if e.stats.seen else None)
    engine = Engine(config, secrets, read_rss=rss)
    rss.engine = engine

    assert await run_to_end(engine) is JobState.DONE
    assert len(stored(Path(config.job.store))[0]) == 40


async def test_above_the_hard_limit_requests_go_one_at_a_time_and_the_job_ends(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys([("k1", 60_000, 100_000_000)]), latency_s=(0.02, 0.02))
    config, secrets = memory_job(tmp_path, sim.base_url, 300)
    in_flight_while_hard: list[int] = []

    def observe(engine: Engine) -> None:
        if engine.snapshot().memory.state == "hard":
            in_flight_while_hard.append(engine.snapshot().in_flight_requests)

    rss = SettlingRss(
        floor_mb=150,
        rss_mb=100,
        switch=lambda e: 450 if e.stats.done >= 20 else None,  # above hard after 20 results
        observe=observe,
    )
    engine = Engine(config, secrets, read_rss=rss)
    rss.engine = engine

    state = await run_to_end(engine)

    assert state is JobState.DONE
    assert len(stored(Path(config.job.store))[0]) == 300
    drained = in_flight_while_hard.index(0)  # what was in flight at the switch finished
    assert max(in_flight_while_hard[drained:]) <= 1
    snap = engine.snapshot()
    assert snap.memory.waiting_for.startswith("no new requests until memory < 380 MB")
    assert snap.memory.waiting_for.endswith("nothing else is held, so one at a time")
    assert EventKind.MEMORY_HARD in [e.kind for e in snap.events]


async def test_a_memory_limit_below_the_process_floor_is_refused_before_anything_starts(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys([("k1", 60_000, 100_000_000)]))
    config, secrets = memory_job(tmp_path, sim.base_url, 10)
    config = replace(config, preset=replace(config.preset, memory_soft_mb=200))
    engine = Engine(config, secrets, read_rss=SettlingRss(floor_mb=152, rss_mb=152))

    with pytest.raises(ConfigError) as refused:
        await engine.run()

    assert str(refused.value).startswith(
        "preset 'aggressive': memory_soft_mb: 200 MB is below this process's own floor of "
        "152 MB (its memory once started) plus a 64 MB margin"
    )
    assert str(refused.value).endswith("use at least 216")
    assert not Path(config.job.store).exists()
    assert sim.stats.requests == 0


async def test_a_preset_below_the_process_floor_applied_mid_run_changes_nothing(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys([("k1", 60_000, 100_000_000)]), latency_s=(0.01, 0.01))
    config, secrets = memory_job(tmp_path, sim.base_url, 100)
    engine = Engine(config, secrets, read_rss=SettlingRss(floor_mb=152, rss_mb=152))
    before = engine.snapshot()

    tight = replace(config.preset, name="tight", memory_soft_mb=180, memory_hard_mb=400)
    with pytest.raises(ConfigError, match="memory_soft_mb: 180 MB is below this process's own"):
        engine.apply_preset(tight)
    preset_file = tmp_path / "tight.toml"
    preset_file.write_text("memory_soft_mb = 100\nmemory_hard_mb = 150\n")
    with pytest.raises(ConfigError, match=rf"{preset_file}:1: memory_soft_mb: 100 MB is below"):
        engine.apply_preset(preset_file)

    after = engine.snapshot()
    assert after.preset == before.preset
    assert (after.memory.soft_bytes, after.memory.hard_bytes) == (300 * MIB, 400 * MIB)
    assert await run_to_end(engine) is JobState.DONE
