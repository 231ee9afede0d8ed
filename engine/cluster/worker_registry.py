"""Who works on the job: each worker's heartbeat in Redis, and who has gone quiet.

A worker registers and then beats every `heartbeat_s` with what it is doing
(its state, its counts, its keys' use in the last minute).  Each beat is
one Lua script: it stamps the beat with Redis's own clock (`TIME`), so
workers on machines whose clocks disagree are judged by one clock.  A
worker whose last beat is older than `MISSED_HEARTBEATS` of its own
intervals, and whose job has not ended, is lost.

Under the job's prefix:

    PREFIX:workers     hash  worker id -> its last report (JSON)
    PREFIX:heartbeats  hash  worker id -> Redis time of its last beat ("sec.usec")
    PREFIX:started     hash  worker id -> Redis time of its first beat

Every beat writes the whole report, so a Redis that restarted without its
data has every live worker back within one interval.  Ended workers stay
(their counts are part of the job's totals).

    registry = WorkerRegistry(redis, settings, lambda: report_from_snapshot(engine.snapshot()))
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(registry.run())
        ...                      # the job runs
        registry.finish()        # one last beat with the final state, then run() returns
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.cluster.cluster_view import (
    ClusterView,
    KeyUsage,
    WorkerReport,
    WorkerView,
    aggregate,
)
from engine.cluster.redis_connection import redis_unavailable
from engine.config.cluster_table import MISSED_HEARTBEATS, ClusterSettings
from engine.observe.snapshot import JobState, Snapshot

__all__ = [
    "ENDED_STATES",
    "WorkerRegistry",
    "new_worker_id",
    "read_cluster_view",
    "read_workers",
    "registry_keys",
    "report_from_snapshot",
]

ENDED_STATES = frozenset(
    {JobState.DONE, JobState.FINISHED_WITH_FAILURES, JobState.STOPPED, JobState.FAILED}
)
"""States a worker's job ends in: such a worker is never lost, it has left."""

# KEYS: workers, heartbeats, started.  ARGV: worker id, report JSON.
_BEAT = """
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], now)
redis.call('HSETNX', KEYS[3], ARGV[1], now)
return now
"""


def registry_keys(prefix: str) -> tuple[str, str, str]:
    """The registry's three hashes under `prefix`: reports, last beats, first beats."""
    return f"{prefix}:workers", f"{prefix}:heartbeats", f"{prefix}:started"


def new_worker_id() -> str:
    """This process's id in the cluster: host, pid and a short random part (pids get reused)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def report_from_snapshot(snap: Snapshot) -> WorkerReport:
    """What a worker running the engine says of itself: from its snapshot."""
    return WorkerReport(
        state=snap.state.value,
        done=snap.counts.done,
        failed=snap.counts.failed,
        in_flight=snap.counts.in_flight,
        items_per_min=snap.items_per_min,
        requests_per_min=snap.requests_per_min,
        tokens_per_s=snap.tokens_per_s,
        keys=tuple(KeyUsage(key.key_id, key.rpm_used, key.tpm_used) for key in snap.keys),
    )


class WorkerRegistry:
    """This worker's place in the registry: `run()` beats until `finish()`.

    `report` is called at every beat for what to say.  A Redis that stays
    away past `outage_limit_s` ends `run()` with `RedisUnavailable` (in a
    TaskGroup: the job with it); cancelling `run()` stops the beats at once.
    """

    def __init__(
        self,
        redis: Redis,
        settings: ClusterSettings,
        report: Callable[[], WorkerReport],
        *,
        worker_id: str | None = None,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self._report = report
        self._keys = registry_keys(settings.prefix)
        self._beat = redis.register_script(_BEAT)
        self._finished = asyncio.Event()
        self.beats = 0

    async def beat(self) -> float:
        """Say what this worker is doing now; the Redis time the beat was stamped with."""
        report = self._report()
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat_s": self.settings.heartbeat_s,
            "state": report.state,
            "done": report.done,
            "failed": report.failed,
            "in_flight": report.in_flight,
            "items_per_min": report.items_per_min,
            "requests_per_min": report.requests_per_min,
            "tokens_per_s": report.tokens_per_s,
            "keys": [[usage.key_id, usage.requests, usage.tokens] for usage in report.keys],
        }
        stamped = await self._beat(
            keys=list(self._keys), args=[self.worker_id, json.dumps(record, separators=(",", ":"))]
        )
        self.beats += 1
        return float(stamped)

    def finish(self) -> None:
        """Beat once more (with the report's final state) and end `run()`."""
        self._finished.set()

    async def run(self) -> None:
        """Beat every `heartbeat_s` until `finish()`; the last beat says the final state."""
        try:
            while not self._finished.is_set():
                await self.beat()
                try:
                    # A timer that `finish()` cuts short: the next beat is due.
                    async with asyncio.timeout(self.settings.heartbeat_s):
                        await self._finished.wait()
                except TimeoutError:
                    continue
            await self.beat()
        except RedisError as error:
            raise redis_unavailable(self.redis, self.settings, error) from None


async def read_workers(redis: Redis, prefix: str) -> tuple[float, tuple[WorkerView, ...]]:
    """Every registered worker, judged lost or not, and the Redis time they were read at.

    One transaction: the reports, beats and the clock they are judged by
    are read together.
    """
    workers_key, beats_key, started_key = registry_keys(prefix)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.time()
        pipe.hgetall(workers_key)
        pipe.hgetall(beats_key)
        pipe.hgetall(started_key)
        (seconds, micros), records, beats, starts = await pipe.execute()
    now = seconds + micros / 1_000_000
    views = []
    for raw_id, raw_record in records.items():
        worker_id = _text(raw_id)
        beat = beats.get(raw_id)
        if beat is None:
            continue  # written by a beat still in flight in another transaction: next read
        view = _worker_view(worker_id, raw_record, float(beat), starts.get(raw_id), now)
        if view is not None:
            views.append(view)
    return now, tuple(views)


async def read_cluster_view(redis: Redis, prefix: str) -> ClusterView:
    """The registry read and summed up: the cluster's totals and each worker."""
    now, workers = await read_workers(redis, prefix)
    return aggregate(workers, now)


def _worker_view(
    worker_id: str, raw_record: bytes, beat: float, start: bytes | None, now: float
) -> WorkerView | None:
    try:
        record: Mapping[str, Any] = json.loads(raw_record)
        heartbeat_s = float(record["heartbeat_s"])
        state = str(record["state"])
        keys = tuple(
            KeyUsage(str(key_id), int(requests), int(tokens))
            for key_id, requests, tokens in record.get("keys", ())
        )
        ended = state in ENDED_STATES
        age = max(0.0, now - beat)
        return WorkerView(
            worker_id=worker_id,
            host=str(record.get("host", "")),
            pid=int(record.get("pid", 0)),
            state=state,
            done=int(record.get("done", 0)),
            failed=int(record.get("failed", 0)),
            in_flight=int(record.get("in_flight", 0)),
            items_per_min=float(record.get("items_per_min", 0.0)),
            requests_per_min=float(record.get("requests_per_min", 0.0)),
            tokens_per_s=float(record.get("tokens_per_s", 0.0)),
            keys=keys,
            heartbeat_s=heartbeat_s,
            started_at=beat if start is None else float(start),
            last_heartbeat=beat,
            age_s=age,
            lost=not ended and age > heartbeat_s * MISSED_HEARTBEATS,
            ended=ended,
        )
    except (ValueError, TypeError, KeyError):
        # Not a report this version understands (another version's, or damaged):
        # left out rather than shown wrong.
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
