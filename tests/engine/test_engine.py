"""The pipeline end to end: real simulator on loopback, real openai client, real SQLite."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from engine.engine import Engine
from engine.observe.events import EventKind
from engine.observe.snapshot import JobState
from tests.engine.conftest import job_config, sim_keys, stored, write_records


async def test_every_chunk_gets_exactly_one_result(tmp_path: Path, simulator) -> None:
    keys = [("k1", 6000, 10_000_000)]
    sim = await simulator(keys=sim_keys(keys))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 47), sim.base_url, keys
    )

    engine = Engine(config, secrets)
    state = await engine.run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.DONE
    assert len(results) == len(set(results)) == 47
    assert failures == []
    snap = engine.snapshot()
    assert snap.counts.total == 47
    assert snap.counts.done == 47
    assert snap.requests == 10  # 47 chunks in batches of 5
    assert snap.cost_usd > 0


async def test_a_second_run_skips_what_is_done(tmp_path: Path, simulator) -> None:
    keys = [("k1", 6000, 10_000_000)]
    sim = await simulator(keys=sim_keys(keys))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 20), sim.base_url, keys
    )
    await Engine(config, secrets).run()
    requests_before = sim.stats.requests

    again = Engine(config, secrets)
    state = await again.run()

    assert state is JobState.DONE
    assert again.snapshot().counts.skipped == 20
    assert sim.stats.requests == requests_before  # nothing sent again
    assert len(stored(Path(config.job.store))[0]) == 20


async def test_a_new_prompt_version_processes_everything_again(tmp_path: Path, simulator) -> None:
    keys = [("k1", 6000, 10_000_000)]
    sim = await simulator(keys=sim_keys(keys))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 10), sim.base_url, keys
    )
    await Engine(config, secrets).run()

    bumped = replace(config, prompt=replace(config.prompt, version="2"))
    engine = Engine(bumped, secrets)
    await engine.run()

    assert engine.snapshot().counts.done == 10
    assert len(stored(Path(config.job.store))[0]) == 20


async def test_faults_end_in_done_or_failed_with_a_reason_and_nothing_is_lost(
    tmp_path: Path, simulator
) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(
        keys=sim_keys(keys),
        fault_5xx=0.15,
        fault_reset=0.05,
        fault_hang=0.03,
        fault_malformed=0.08,
        fault_missing_id=0.08,
        hang_s=30.0,
    )
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 150), sim.base_url, keys
    )
    config = replace(config, preset=replace(config.preset, request_timeout_s=0.5, max_retries=3))

    engine = Engine(config, secrets)
    state = await engine.run()

    results, failures = stored(Path(config.job.store))
    assert len(results) == len(set(results))
    assert {f[0] for f in failures}.isdisjoint(results)
    assert len(results) + len(failures) == 150
    assert all(reason for _, reason in failures)
    assert state in (JobState.DONE, JobState.FINISHED_WITH_FAILURES)
    kinds = dict(engine.snapshot().errors_by_kind)
    assert kinds.get("server_error", 0) > 0
    assert kinds.get("malformed", 0) > 0


async def test_retries_exhausted_store_the_reason(tmp_path: Path, simulator) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), fault_5xx=1.0)
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 6), sim.base_url, keys
    )
    config = replace(config, preset=replace(config.preset, max_retries=2))

    state = await Engine(config, secrets).run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.FINISHED_WITH_FAILURES
    assert results == []
    assert len(failures) == 6
    assert all("server_error" in reason and "3 attempts" in reason for _, reason in failures)


async def test_a_key_without_quota_is_disabled_and_the_others_finish(
    tmp_path: Path, simulator
) -> None:
    keys = [("good", 6000, 10_000_000), ("broke", 6000, 10_000_000)]
    sim_key_list = list(sim_keys(keys))
    sim_key_list[1] = replace(sim_key_list[1], quota_exhausted=True)
    sim = await simulator(keys=tuple(sim_key_list))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 40), sim.base_url, keys
    )

    engine = Engine(config, secrets)
    state = await engine.run()

    assert state is JobState.DONE
    snap = engine.snapshot()
    broke = next(k for k in snap.keys if k.alias == "broke")
    assert broke.state == "disabled"
    assert "quota" in broke.disabled_reason
    assert any(e.kind is EventKind.KEY_DISABLED for e in snap.events)
    assert len(stored(Path(config.job.store))[0]) == 40


async def test_configured_limits_above_the_real_ones_are_learned_from_headers(
    tmp_path: Path, simulator
) -> None:
    real = [("k1", 1200, 10_000_000)]
    configured = [("k1", 2400, 10_000_000)]
    sim = await simulator(keys=sim_keys(real))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 30), sim.base_url, configured
    )

    engine = Engine(config, secrets)
    await engine.run()

    snap = engine.snapshot()
    assert snap.keys[0].rpm_limit == 1200
    assert any(e.kind is EventKind.LIMIT_LEARNED for e in snap.events)


async def test_secrets_never_reach_the_store_or_the_snapshot(tmp_path: Path, simulator) -> None:
    keys = [("k1", 6000, 10_000_000)]
    sim = await simulator(keys=sim_keys(keys))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 5), sim.base_url, keys
    )
    engine = Engine(config, secrets)
    await engine.run()

    assert b"secret-k1" not in Path(config.job.store).read_bytes()
    assert "secret-k1" not in repr(engine.snapshot())


async def test_pause_holds_new_requests_and_resume_lets_them_go(tmp_path: Path, simulator) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.05, 0.05))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 200), sim.base_url, keys
    )
    config = replace(config, preset=replace(config.preset, concurrency=2))
    engine = Engine(config, secrets)
    run = asyncio.create_task(engine.run())
    while engine.snapshot().counts.done < 10:
        await asyncio.sleep(0.02)

    engine.pause()
    await asyncio.sleep(0.2)  # in-flight requests finish
    paused_at = sim.stats.requests
    await asyncio.sleep(0.3)
    assert sim.stats.requests == paused_at
    assert engine.snapshot().state is JobState.PAUSED

    engine.resume()
    assert await run is JobState.DONE
    assert sim.stats.requests > paused_at


async def test_concurrency_and_presets_change_mid_run(tmp_path: Path, simulator) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.05, 0.05))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 300), sim.base_url, keys
    )
    engine = Engine(config, secrets)
    run = asyncio.create_task(engine.run())
    await asyncio.sleep(0.1)

    engine.set_concurrency(3)
    assert engine.snapshot().concurrency == 3
    engine.apply_preset("conservative")
    snap = engine.snapshot()
    assert snap.preset.name == "conservative"
    assert snap.concurrency == config.presets["conservative"].concurrency
    kinds = [e.kind for e in snap.events]
    assert EventKind.CONCURRENCY_CHANGED in kinds
    assert EventKind.PRESET_CHANGED in kinds
    engine.apply_preset("aggressive")
    assert await run is JobState.DONE


async def test_drain_finishes_in_flight_and_a_rerun_completes_exactly_once(
    tmp_path: Path, simulator
) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.05, 0.1))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 300), sim.base_url, keys
    )
    config = replace(config, preset=replace(config.preset, concurrency=4))
    engine = Engine(config, secrets)
    run = asyncio.create_task(engine.run())
    while engine.snapshot().counts.done < 20:
        await asyncio.sleep(0.02)

    engine.drain()
    assert await run is JobState.STOPPED
    first, _ = stored(Path(config.job.store))
    assert 20 <= len(first) < 300
    assert engine.snapshot().counts.in_flight == 0

    again = Engine(config, secrets)
    assert await again.run() is JobState.DONE
    results, _ = stored(Path(config.job.store))
    assert len(results) == len(set(results)) == 300


async def test_drain_ends_even_while_unread_input_fills_every_queue(
    tmp_path: Path, simulator
) -> None:
    # Far more input than the queues between reader and dispatcher hold: the
    # reader is blocked on a full queue when the drain cancels it.
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.2, 0.3))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 8000), sim.base_url, keys
    )
    config = replace(config, preset=replace(config.preset, concurrency=2, batch_size=2))
    engine = Engine(config, secrets)
    run = asyncio.create_task(engine.run())
    while engine.snapshot().counts.done < 4:
        await asyncio.sleep(0.02)
    assert engine.snapshot().queues.chunks > 0, "the reader must be ahead of the dispatcher"

    engine.drain()
    # A hang guard, not a timing claim: a drain that never ends fails here.
    assert await asyncio.wait_for(run, timeout=60) is JobState.STOPPED


async def test_stop_now_leaves_in_flight_chunks_pending(tmp_path: Path, simulator) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.5, 0.5))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 100), sim.base_url, keys
    )
    engine = Engine(config, secrets)
    run = asyncio.create_task(engine.run())
    while engine.snapshot().counts.in_flight == 0:
        await asyncio.sleep(0.01)

    engine.stop()
    assert await run is JobState.STOPPED
    results, failures = stored(Path(config.job.store))
    assert results == [] and failures == []

    assert await Engine(config, secrets).run() is JobState.DONE
    assert len(stored(Path(config.job.store))[0]) == 100


async def test_a_preset_file_applies_mid_run_and_the_live_settings_save_as_one(
    tmp_path: Path, simulator
) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.05, 0.05))
    records = write_records(tmp_path / "in.txt", 200)
    config, secrets = job_config(tmp_path, records, sim.base_url, keys)
    preset_file = tmp_path / "steady.toml"
    preset_file.write_text('name = "steady"\nconcurrency = 3\nbatch_size = 4\n')
    engine = Engine(config, secrets)
    run = asyncio.create_task(engine.run())
    await asyncio.sleep(0.1)

    engine.apply_preset(preset_file)
    engine.set_concurrency(5)
    saved = engine.save_preset(tmp_path / "tuned.toml", name="tuned")

    assert engine.snapshot().preset.name == "steady"
    assert (saved.name, saved.concurrency, saved.batch_size) == ("tuned", 5, 4)
    engine.apply_preset(str(tmp_path / "tuned.toml"))
    assert engine.snapshot().preset.name == "tuned"
    assert engine.snapshot().concurrency == 5
    assert await run is JobState.DONE


async def test_after_stop_now_nothing_is_counted_in_flight(tmp_path: Path, simulator) -> None:
    keys = [("k1", 60_000, 100_000_000)]
    sim = await simulator(keys=sim_keys(keys), latency_s=(0.5, 0.5))
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 400), sim.base_url, keys
    )
    config = replace(config, preset=replace(config.preset, concurrency=32, batch_size=2))
    engine = Engine(config, secrets)
    run = asyncio.create_task(engine.run())
    # Stop in the same turn of the loop that admitted the first requests: some
    # of their tasks have not started yet when they are cancelled.
    while engine.snapshot().counts.in_flight == 0:
        await asyncio.sleep(0)

    engine.stop()
    assert await run is JobState.STOPPED
    snap = engine.snapshot()
    assert snap.counts.in_flight == 0
    assert snap.in_flight_requests == 0
    assert [key.in_flight for key in snap.keys] == [0]
