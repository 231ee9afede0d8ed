"""Cluster-wide controls: sent once through Redis, applied by every worker's own engine.

Two (or three) real engines run slow jobs against the simulator, each with a
`ControlListener` on a real `redis-server`; a separate client sends the
controls.  Waits follow the engines' state with a bounded hang guard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from engine.cluster import cluster_controls
from engine.cluster.cluster_controls import (
    ClusterCommand,
    ClusterControls,
    ClusterControlState,
    ControlListener,
    control_keys,
)
from engine.cluster.cluster_job_controls import ClusterJobControls
from engine.cluster.redis_connection import connect_redis
from engine.config.cluster_table import ClusterSettings
from engine.config.config_problem import ConfigError
from engine.config.settings import BUILTIN_PRESETS
from engine.control.controls import Adjustment, JobControls
from engine.engine import Engine
from engine.observe.snapshot import JobState
from engine.simulation.simulator import ProviderSimulator
from tests.engine.conftest import job_config, sim_keys, write_records
from tests.redis_server import RedisServer

KEYS = (("a", 60_000, 100_000_000),)
HANG_GUARD_S = 20.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until `condition` holds; fail after a hang guard."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@dataclass
class Worker:
    """One engine running its job, following the cluster's controls."""

    engine: Engine
    listener: ControlListener
    told: list[tuple[ClusterCommand, str | None]] = field(default_factory=list)

    @property
    def state(self) -> JobState:
        return self.engine.snapshot().state

    @property
    def concurrency(self) -> int:
        return self.engine.snapshot().concurrency

    @property
    def preset(self) -> str:
        return self.engine.snapshot().preset.name


@dataclass
class Cluster:
    settings: ClusterSettings
    redis: Redis
    start_worker: Callable[[], Awaitable[Worker]]
    workers: list[Worker]


@pytest.fixture
async def cluster(
    tmp_path: Path, redis_server: RedisServer, simulator: Callable[..., ProviderSimulator]
) -> AsyncIterator[Cluster]:
    """A slow job (minutes unless stopped) that workers join with `start_worker()`.

    Each worker's engine and listener are stopped at the end; a listener that
    failed (rather than being cancelled) fails the test there.
    """
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.3, 0.5))  # type: ignore[misc]
    records = write_records(tmp_path / "in.txt", 2000)
    settings = ClusterSettings(redis=redis_server.url, prefix="crawldeck:test", outage_limit_s=20)
    workers: list[Worker] = []
    running: list[tuple[Engine, asyncio.Task[JobState], asyncio.Task[None]]] = []

    async def start_worker() -> Worker:
        config, secrets = job_config(
            tmp_path, records, sim.base_url, KEYS, store=f"worker-{len(workers)}.db"
        )
        config = replace(
            config, preset=replace(config.preset, concurrency=2, adaptive_concurrency=False)
        )
        engine = Engine(config, secrets)
        told: list[tuple[ClusterCommand, str | None]] = []
        listener = ControlListener(
            redis, settings, engine, on_applied=lambda c, r: told.append((c, r)), block_s=1.0
        )
        worker = Worker(engine, listener, told)
        runs = asyncio.create_task(engine.run())
        await until(lambda: worker.state is JobState.RUNNING, "the job to run")
        listening = asyncio.create_task(listener.run())
        running.append((engine, runs, listening))
        await asyncio.wait_for(listener.caught_up.wait(), HANG_GUARD_S)
        workers.append(worker)
        return worker

    redis = await connect_redis(settings, {})
    try:
        yield Cluster(settings, redis, start_worker, workers)
    finally:
        for engine, runs, listening in running:
            listening.cancel()
            engine.stop()
            await asyncio.wait_for(runs, HANG_GUARD_S)
            ended = await asyncio.wait_for(
                asyncio.gather(listening, return_exceptions=True), HANG_GUARD_S
            )
            assert all(isinstance(e, asyncio.CancelledError) for e in ended), ended
        await redis.aclose()


async def test_controls_sent_once_are_applied_by_every_worker(cluster: Cluster) -> None:
    one = await cluster.start_worker()
    two = await cluster.start_worker()
    workers: list[Worker] = [one, two]
    controls = ClusterControls(cluster.redis, cluster.settings, sender="operator")

    await controls.set_concurrency(7)
    await until(lambda: all(w.concurrency == 7 for w in workers), "concurrency 7 everywhere")

    step = await controls.adjust_concurrency(+3, base=2)
    assert step == Adjustment("concurrency", old=7, new=10, asked=10)  # from the cluster's 7
    await until(lambda: all(w.concurrency == 10 for w in workers), "the step everywhere")

    await controls.apply_preset("conservative")
    await until(lambda: all(w.preset == "conservative" for w in workers), "the preset everywhere")
    assert all(w.concurrency == BUILTIN_PRESETS["conservative"].concurrency for w in workers)

    await controls.pause()
    await until(lambda: all(w.state is JobState.PAUSED for w in workers), "every worker paused")
    await controls.resume()
    await until(lambda: all(w.state is JobState.RUNNING for w in workers), "every worker running")

    await controls.drain()
    await until(
        lambda: all(w.state in (JobState.DRAINING, JobState.STOPPED) for w in workers),
        "every worker draining",
    )

    for worker in workers:
        assert [(c.op, c.value, c.sender, refused) for c, refused in worker.told] == [
            ("set_concurrency", 7, "operator", None),
            ("set_concurrency", 10, "operator", None),
            ("apply_preset", "conservative", "operator", None),
            ("pause", None, "operator", None),
            ("resume", None, "operator", None),
            ("drain", None, "operator", None),
        ]


async def test_stop_reaches_every_worker(cluster: Cluster) -> None:
    workers = [await cluster.start_worker() for _ in range(2)]

    await ClusterControls(cluster.redis, cluster.settings).stop()

    await until(
        lambda: all(w.state in (JobState.STOPPING, JobState.STOPPED) for w in workers),
        "every worker stopping",
    )


async def test_a_worker_that_joins_late_starts_from_the_settings_in_force(
    cluster: Cluster,
) -> None:
    first = await cluster.start_worker()
    controls = ClusterControls(cluster.redis, cluster.settings)
    night = replace(BUILTIN_PRESETS["aggressive"], name="night", batch_size=3)
    await controls.apply_preset(night)
    await controls.set_concurrency(5)
    await controls.pause()
    await until(lambda: first.state is JobState.PAUSED, "the first worker paused")

    late = await cluster.start_worker()

    await until(lambda: late.state is JobState.PAUSED, "the late worker paused")
    snap = late.engine.snapshot()
    assert (snap.preset.name, snap.preset.batch_size, snap.concurrency) == ("night", 3, 5)
    assert await controls.state() == ClusterControlState(
        concurrency=5, preset=dataclasses.asdict(night), paused=True, last=late.listener.position
    )
    # It read on after the settings: nothing they already held was applied twice.
    assert [c.op for c, _ in late.told] == ["apply_preset", "set_concurrency", "pause"]

    await controls.resume()
    await until(
        lambda: first.state is JobState.RUNNING and late.state is JobState.RUNNING,
        "both running again",
    )
    assert (await controls.state()).paused is False


async def test_a_preset_changes_the_clusters_concurrency_to_its_own(cluster: Cluster) -> None:
    controls = ClusterControls(cluster.redis, cluster.settings)
    await controls.set_concurrency(9)

    await controls.apply_preset("aggressive")

    state = await controls.state()
    assert (state.preset, state.concurrency) == ("aggressive", None)
    step = await controls.adjust_concurrency(+1, base=64)  # the sender's value: the preset's
    assert (step.old, step.new) == (64, 65)


async def test_steps_sent_at_once_by_two_operators_both_count(cluster: Cluster) -> None:
    alice = ClusterControls(cluster.redis, cluster.settings, sender="alice")
    bob = ClusterControls(cluster.redis, cluster.settings, sender="bob")
    await alice.set_concurrency(10)

    steps = await asyncio.gather(*(who.adjust_concurrency(+1, base=1) for who in [alice, bob] * 5))

    assert sorted(step.new for step in steps) == list(range(11, 21))
    assert (await alice.state()).concurrency == 20


async def test_a_step_at_the_bound_stops_there_and_sends_nothing(cluster: Cluster) -> None:
    controls = ClusterControls(cluster.redis, cluster.settings)
    stream, _ = control_keys(cluster.settings.prefix)
    await controls.set_concurrency(2)

    step = await controls.adjust_concurrency(-5, base=2)

    assert step == Adjustment("concurrency", old=2, new=1, asked=-3)
    assert step.bound_message == "1 is the least"
    down_again = await controls.adjust_concurrency(-1, base=2)
    assert (down_again.changed, down_again.at_bound) == (False, True)
    assert await cluster.redis.xlen(stream) == 2  # the set and the first step only


@pytest.mark.parametrize(
    ("send", "error"),
    [
        (lambda c: c.set_concurrency(0), "concurrency: must be from 1 to 4096"),
        (lambda c: c.set_fetch_concurrency(5000), "fetch concurrency: must be from 1 to 4096"),
        (lambda c: c.adjust_concurrency(1, base=0), "concurrency: must be from 1 to 4096"),
        (lambda c: c.apply_preset("../../etc/presets.toml"), "not a preset name"),
        (lambda c: c.apply_preset("night.toml"), "not a preset name"),
    ],
)
async def test_a_bad_value_is_refused_before_it_reaches_any_worker(
    cluster: Cluster, send: Callable[[ClusterControls], Awaitable[object]], error: str
) -> None:
    controls = ClusterControls(cluster.redis, cluster.settings)
    stream, settings = control_keys(cluster.settings.prefix)

    with pytest.raises(ValueError, match=error):
        await send(controls)

    assert await cluster.redis.xlen(stream) == 0
    assert await cluster.redis.hgetall(settings) == {}


async def test_a_worker_that_refuses_a_command_says_why_and_follows_the_next(
    cluster: Cluster,
) -> None:
    worker = await cluster.start_worker()
    controls = ClusterControls(cluster.redis, cluster.settings)

    await controls.apply_preset("nightly")  # not a preset this job knows
    await controls.set_fetch_concurrency(8)  # this job does not crawl
    await controls.set_concurrency(6)
    await until(lambda: worker.concurrency == 6, "the next command applied")

    assert [(c.op, refused) for c, refused in worker.told] == [
        ("apply_preset", "unknown preset 'nightly' (known: aggressive, conservative)"),
        ("set_fetch_concurrency", "this job does not crawl: it has no fetch stage"),
        ("set_concurrency", None),
    ]
    assert worker.listener.applied == 1


async def test_workers_read_on_across_a_redis_restart(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    workers = [await cluster.start_worker() for _ in range(2)]
    controls = ClusterControls(cluster.redis, cluster.settings)
    await controls.set_concurrency(3)
    await until(lambda: all(w.concurrency == 3 for w in workers), "concurrency 3 everywhere")

    redis_server.kill()  # the listeners' blocking reads lose their connections
    await asyncio.to_thread(redis_server.start)
    await controls.pause()

    await until(lambda: all(w.state is JobState.PAUSED for w in workers), "every worker paused")


async def test_a_send_that_arrives_twice_is_applied_once(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py sends a command again when its answer was lost; each send's id
    # is what tells the script it has seen this one.
    controls = ClusterControls(cluster.redis, cluster.settings)
    await controls.set_concurrency(10)
    stream, _ = control_keys(cluster.settings.prefix)
    monkeypatch.setattr(cluster_controls.secrets, "token_hex", lambda _: "same-send")

    first = await controls.adjust_concurrency(+2, base=1)
    again = await controls.adjust_concurrency(+2, base=1)

    assert first == again == Adjustment("concurrency", old=10, new=12, asked=12)
    assert (await controls.state()).concurrency == 12
    assert await cluster.redis.xlen(stream) == 2


# ---------------------------------------------------------------- one worker's controls
async def test_a_workers_own_controls_steer_every_worker(cluster: Cluster) -> None:
    one, two = await cluster.start_worker(), await cluster.start_worker()
    steering = ClusterJobControls(
        one.engine, ClusterControls(cluster.redis, cluster.settings, sender="one")
    )
    sending = asyncio.create_task(steering.run())
    try:
        assert isinstance(steering, JobControls)
        assert steering.snapshot().job_name == one.engine.snapshot().job_name

        steering.set_concurrency(6)
        assert steering.adjust_concurrency(+2) is None  # the change shows in a later snapshot
        await until(lambda: one.concurrency == two.concurrency == 8, "8 on both workers")

        steering.apply_preset("conservative")
        steering.pause()
        await until(
            lambda: one.state is two.state is JobState.PAUSED and two.preset == "conservative",
            "both paused with the preset",
        )
        steering.resume()
        await until(lambda: one.state is two.state is JobState.RUNNING, "both running")
        assert [c.sender for c, _ in two.told] == ["one"] * 5
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)


@pytest.mark.parametrize(
    ("control", "error", "message"),
    [
        (lambda s: s.set_concurrency(0), ValueError, "concurrency: must be from 1 to 4096"),
        (lambda s: s.adjust_concurrency(True), ValueError, "a step is a whole number"),
        (lambda s: s.apply_preset("nightly"), KeyError, "unknown preset 'nightly'"),
        (lambda s: s.set_fetch_concurrency(8), ValueError, "this job does not crawl"),
        (lambda s: s.adjust_fetch_concurrency(1), ValueError, "this job does not crawl"),
        (
            lambda s: s.apply_preset(replace(BUILTIN_PRESETS["aggressive"], batch_size=0)),
            ConfigError,
            "batch_size: must be from 1 to 1000",
        ),
    ],
)
async def test_a_workers_control_with_a_bad_value_raises_at_once_and_sends_nothing(
    cluster: Cluster,
    control: Callable[[ClusterJobControls], object],
    error: type[Exception],
    message: str,
) -> None:
    worker = await cluster.start_worker()
    steering = ClusterJobControls(worker.engine, ClusterControls(cluster.redis, cluster.settings))

    with pytest.raises(error, match=message):
        control(steering)

    steering.pause()  # a good one after it: the only one that goes out
    stream, _ = control_keys(cluster.settings.prefix)
    sending = asyncio.create_task(steering.run())
    try:
        await until(lambda: worker.state is JobState.PAUSED, "the pause applied")
        entries: Any = await cluster.redis.xrange(stream)
        assert [fields[b"op"] for _, fields in entries] == [b"pause"]
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
