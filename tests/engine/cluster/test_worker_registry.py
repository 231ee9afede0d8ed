"""The worker registry: heartbeats on Redis's clock, lost workers, and the cluster's totals.

Real registries beat into a real `redis-server` with short heartbeats; a
worker "dies" by having its heartbeat task cancelled without a last beat,
as a SIGKILL would leave it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from engine.cluster.cluster_view import KeyUsage, WorkerReport, WorkerView, aggregate
from engine.cluster.redis_connection import RedisUnavailable, connect_redis
from engine.cluster.worker_registry import (
    WorkerRegistry,
    read_cluster_view,
    read_workers,
    report_from_snapshot,
)
from engine.config.cluster_table import ClusterSettings
from tests.redis_server import RedisServer
from tests.tui.conftest import fixed_snapshot

HEARTBEAT_S = 0.1
HANG_GUARD_S = 10.0


def cluster(server: RedisServer, **values: object) -> ClusterSettings:
    return ClusterSettings(
        redis=server.url,
        prefix="crawldeck:test",
        heartbeat_s=values.pop("heartbeat_s", HEARTBEAT_S),  # type: ignore[arg-type]
        **values,  # type: ignore[arg-type]
    )


class Reporter:
    """What a worker says of itself; the test changes it between beats."""

    def __init__(self, report: WorkerReport) -> None:
        self.report = report

    def __call__(self) -> WorkerReport:
        return self.report


async def until(condition: Callable[[], object], what: str) -> None:
    """Wait for `condition` (awaited if it is a coroutine); fail after a hang guard."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def worker(redis: Redis, view_id: str) -> WorkerView:
    _, workers = await read_workers(redis, "crawldeck:test")
    (found,) = [w for w in workers if w.worker_id == view_id]
    return found


RUNNING = WorkerReport(
    state="running",
    done=10,
    failed=1,
    in_flight=4,
    items_per_min=120.0,
    requests_per_min=30.0,
    tokens_per_s=400.0,
    keys=(KeyUsage("sim/a", 20, 9000), KeyUsage("sim/b", 10, 4000)),
)


async def test_a_beat_registers_the_worker_with_its_report_on_redis_time(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    registry = WorkerRegistry(redis_client, cluster(redis_server), Reporter(RUNNING))

    stamped = await registry.beat()

    seconds, micros = await redis_client.time()
    now = seconds + micros / 1e6
    assert now - 1.0 < stamped <= now
    view = await worker(redis_client, registry.worker_id)
    assert (view.host, view.pid) == (socket.gethostname(), os.getpid())
    assert registry.worker_id.startswith(f"{socket.gethostname()}-{os.getpid()}-")
    assert (view.state, view.done, view.failed, view.in_flight) == ("running", 10, 1, 4)
    assert (view.items_per_min, view.requests_per_min, view.tokens_per_s) == (120.0, 30.0, 400.0)
    assert view.keys == RUNNING.keys
    assert view.last_heartbeat == stamped == view.started_at
    assert view.heartbeat_s == HEARTBEAT_S
    assert (view.lost, view.ended, view.live) == (False, False, True)


async def test_it_beats_every_interval_with_what_it_is_doing_now(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    reporter = Reporter(RUNNING)
    registry = WorkerRegistry(redis_client, cluster(redis_server), reporter)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(registry.run())
        await until(lambda: registry.beats >= 1, "the first beat")
        first = await worker(redis_client, registry.worker_id)
        started = time.monotonic()

        reporter.report = replace(RUNNING, state="paused", done=25)
        await until(lambda: registry.beats >= 4, "three more beats")
        elapsed = time.monotonic() - started

        later = await worker(redis_client, registry.worker_id)
        assert (later.state, later.done) == ("paused", 25)
        assert later.started_at == first.started_at
        assert later.last_heartbeat > first.last_heartbeat
        # Three intervals, not a busy loop: about 3 × 0.1 s.
        assert 2 * HEARTBEAT_S <= elapsed < 3 * HEARTBEAT_S + 1.0
        registry.finish()


async def test_a_worker_that_stops_beating_is_lost_after_missed_beats_the_others_not(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    settings = cluster(redis_server)
    dying = WorkerRegistry(redis_client, settings, Reporter(RUNNING))
    healthy = WorkerRegistry(redis_client, settings, Reporter(RUNNING))
    async with asyncio.TaskGroup() as tasks:
        beating = tasks.create_task(dying.run())
        tasks.create_task(healthy.run())
        await until(lambda: dying.beats >= 2 and healthy.beats >= 2, "both beating")

        beating.cancel()  # killed: no last beat
        await asyncio.gather(beating, return_exceptions=True)
        assert beating.cancelled()
        assert not (await worker(redis_client, dying.worker_id)).lost  # not yet

        async def dying_is_lost() -> bool:
            return (await worker(redis_client, dying.worker_id)).lost

        await until(dying_is_lost, "the silent worker to be lost")
        gone = await worker(redis_client, dying.worker_id)
        assert gone.age_s > settings.lost_after_s
        assert gone.state == "running"  # what it last said; lost says it is no longer true
        assert not (await worker(redis_client, healthy.worker_id)).lost
        healthy.finish()


async def test_a_worker_that_finishes_says_so_and_is_never_lost(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    reporter = Reporter(RUNNING)
    registry = WorkerRegistry(redis_client, cluster(redis_server), reporter)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(registry.run())
        await until(lambda: registry.beats >= 1, "the first beat")
        reporter.report = replace(RUNNING, state="done", done=40, in_flight=0)
        registry.finish()  # run() ends after one more beat

    await asyncio.sleep(HEARTBEAT_S * 5)  # long past the lost limit
    view = await worker(redis_client, registry.worker_id)
    assert (view.state, view.done, view.ended, view.lost) == ("done", 40, True, False)


async def test_a_redis_that_stays_away_ends_the_heartbeat_with_a_clear_error(
    redis_server: RedisServer,
) -> None:
    settings = cluster(redis_server, outage_limit_s=1)
    redis = await connect_redis(settings, {})
    registry = WorkerRegistry(redis, settings, Reporter(RUNNING))
    try:
        with pytest.raises(ExceptionGroup) as caught:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(registry.run())
                await until(lambda: registry.beats >= 1, "the first beat")
                redis_server.kill()
        (error,) = caught.value.exceptions
        assert isinstance(error, RedisUnavailable)
        assert str(error).startswith(f"Redis at {redis_server.url} did not answer for 1 s")
    finally:
        await redis.aclose()


async def test_after_redis_lost_its_data_the_next_beat_registers_the_worker_again(
    redis_server: RedisServer,
) -> None:
    settings = cluster(redis_server, outage_limit_s=20)
    redis = await connect_redis(settings, {})
    registry = WorkerRegistry(redis, settings, Reporter(RUNNING))
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(registry.run())
            await until(lambda: registry.beats >= 1, "the first beat")
            redis_server.kill()
            await asyncio.to_thread(redis_server.start)  # no append-only file: empty
            beats = registry.beats

            async def registered() -> bool:
                _, workers = await read_workers(redis, settings.prefix)
                return any(w.worker_id == registry.worker_id for w in workers)

            await until(registered, "the worker to be back in the registry")
            assert registry.beats > beats
            registry.finish()
    finally:
        await redis.aclose()


async def test_the_cluster_view_sums_the_workers(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    settings = cluster(redis_server)
    reports = {
        "live-1": RUNNING,
        "live-2": replace(
            RUNNING,
            done=5,
            failed=0,
            in_flight=2,
            items_per_min=60.0,
            requests_per_min=12.0,
            tokens_per_s=100.0,
            keys=(KeyUsage("sim/a", 3, 1000), KeyUsage("sim/c", 1, 50)),
        ),
        "ended": replace(RUNNING, state="stopped", done=7, failed=2, in_flight=0),
        "lost": replace(RUNNING, done=3, failed=0),
    }
    registries = {
        name: WorkerRegistry(redis_client, settings, Reporter(report), worker_id=name)
        for name, report in reports.items()
    }
    await registries["lost"].beat()
    await asyncio.sleep(settings.lost_after_s + HEARTBEAT_S)
    for name in ("live-1", "live-2", "ended"):
        await registries[name].beat()

    view = await read_cluster_view(redis_client, settings.prefix)

    assert {w.worker_id: (w.lost, w.ended) for w in view.workers} == {
        "live-1": (False, False),
        "live-2": (False, False),
        "ended": (False, True),
        "lost": (True, False),
    }
    assert (view.live, view.lost, view.ended) == (2, 1, 1)
    assert (view.done, view.failed) == (10 + 5 + 7 + 3, 1 + 0 + 2 + 0)  # results are stored
    assert view.in_flight == 4 + 2  # a lost worker's in flight will be reclaimed, not counted
    assert (view.items_per_min, view.requests_per_min, view.tokens_per_s) == (180.0, 42.0, 500.0)
    assert view.keys == (
        KeyUsage("sim/a", 23, 10_000),
        KeyUsage("sim/b", 10, 4000),
        KeyUsage("sim/c", 1, 50),
    )
    seconds, micros = await redis_client.time()
    assert view.taken_at <= seconds + micros / 1e6
    assert view.workers[0].worker_id == "lost"  # the first to start comes first


def test_an_empty_registry_is_an_empty_cluster() -> None:
    view = aggregate((), taken_at=5.0)

    assert (view.taken_at, view.workers, view.done, view.live, view.keys) == (5.0, (), 0, 0, ())


def test_a_worker_running_the_engine_reports_from_its_snapshot() -> None:
    snap = fixed_snapshot()

    report = report_from_snapshot(snap)

    assert report.state == "running"
    assert (report.done, report.failed, report.in_flight) == (4180, 12, 40)
    assert (report.items_per_min, report.requests_per_min, report.tokens_per_s) == (
        342.0,
        71.0,
        5400.0,
    )
    assert report.keys == tuple(KeyUsage(k.key_id, k.rpm_used, k.tpm_used) for k in snap.keys)


async def test_an_unreadable_record_is_left_out(
    redis_server: RedisServer, redis_client: Redis
) -> None:
    settings = cluster(redis_server)
    registry = WorkerRegistry(redis_client, settings, Reporter(RUNNING), worker_id="good")
    await registry.beat()
    await redis_client.hset(f"{settings.prefix}:workers", "bad", "not json")
    await redis_client.hset(f"{settings.prefix}:heartbeats", "bad", "1.0")

    _, workers = await read_workers(redis_client, settings.prefix)

    assert [w.worker_id for w in workers] == ["good"]
