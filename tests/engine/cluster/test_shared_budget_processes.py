"""Worker processes sharing one key through Redis stay within its limit together.

Each worker is a separate OS process (`pool_worker`) with its own
`SharedKeyPool` and Redis connection; they start on one signal and take
leases as fast as the shared budget lets them.  The bound is the bucket's:
no more than it holds at the first reservation plus what it refills until
the last (timed on Redis's clock), with one request of rounding.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

from engine.limits.rate_limiter import BURST_SECONDS
from engine.simulation.simulator import SimKey
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_S = 60


async def run_workers(
    url: str, count: int, arguments: Sequence[str], env: dict[str, str] | None = None
) -> list[dict[str, object]]:
    """Start `count` workers, let them go together, and return what each printed."""
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.engine.cluster.pool_worker",
            url,
            "job",
            *arguments,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(count)
    ]
    client = Redis.from_url(url)
    try:
        for _ in range(count):
            assert await client.blpop(["ready"], timeout=START_TIMEOUT_S), "a worker never started"
        await client.rpush("go", *["go"] * count)
        finished = [await asyncio.wait_for(w.communicate(), START_TIMEOUT_S) for w in workers]
    finally:
        await client.aclose()
        for w in workers:
            if w.returncode is None:
                w.kill()
                await w.wait()
    reports = []
    for worker, (out, err) in zip(workers, finished, strict=True):
        assert worker.returncode == 0, err.decode()
        reports.append(json.loads(out.decode().splitlines()[-1]))
    return reports


def reservations(reports: Sequence[dict[str, object]]) -> list[float]:
    times: list[float] = []
    for report in reports:
        reserved_at = report["reserved_at"]
        assert isinstance(reserved_at, list) and reserved_at, "a worker reserved nothing"
        times += reserved_at
    return sorted(times)


async def test_four_processes_reserve_no_more_than_the_key_refills(
    redis_server: RedisServer,
) -> None:
    rpm = 1200  # 20 a second; the bucket holds two seconds of it
    reports = await run_workers(
        redis_server.url, 4, ["--key", f"k:{rpm}:-", "--seconds", "2", "--concurrency", "4"]
    )

    times = reservations(reports)
    rate, span = rpm / 60, times[-1] - times[0]
    assert len(times) <= rate * BURST_SECONDS + rate * span + 1  # a full bucket, then its refill
    assert len(times) >= 0.9 * rate * span  # and the workers kept the key busy


async def test_processes_sharing_a_key_send_within_its_limit_without_429s(
    redis_server: RedisServer, simulator
) -> None:
    """Against the real simulator, whose bucket holds one second of the limit
    (the minute enforced per second): a worker alone would be within it,
    three would each spend it, unless they share it."""
    rpm = 1200
    sim = await simulator(
        keys=(SimKey("secret-k", rpm, None),), latency_s=(0.05, 0.15), burst_s=1.0
    )
    reports = await run_workers(
        redis_server.url,
        3,
        ["--key", f"k:{rpm}:-", "--seconds", "2.5", "--concurrency", "6", "--send", sim.base_url],
        env={"POOL_WORKER_SECRET": "secret-k"},
    )

    times = reservations(reports)
    rate, span = rpm / 60, times[-1] - times[0]
    sent = sim.stats.admitted + sim.stats.rate_limited
    print(f"sent {sent} in {span:.2f}s: {sim.stats.admitted} admitted, "
          f"{sim.stats.rate_limited} refused (limit {rate:g}/s)")  # fmt: skip
    assert sent == len(times)
    assert sent <= rate * 1.0 + rate * span + 1  # the provider's one second, then its refill
    assert sim.stats.rate_limited <= max(1, sent // 100)
    assert sim.stats.admitted >= 0.7 * rate * span
