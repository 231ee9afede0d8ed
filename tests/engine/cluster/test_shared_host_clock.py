"""One host's turns shared by every worker, on Redis's clock (a real `redis-server`)."""

from __future__ import annotations

import asyncio
import itertools
import time

from redis.asyncio import Redis

from engine.cluster.shared_host_clock import SharedHostClock
from tests.redis_server import RedisServer


async def test_workers_taking_turns_at_one_host_at_once_are_spaced_by_its_delay(
    redis_server: RedisServer,
) -> None:
    """Three workers (three connections) each ask for four turns at one host at once: the
    twelve starts they are given are a delay apart, whoever asked; another host's turns
    wait for none of them."""
    delay = 0.05
    clients = [Redis.from_url(redis_server.url) for _ in range(3)]
    try:
        clocks = [SharedHostClock(client, "job") for client in clients]

        async def starts(clock: SharedHostClock, host: str, count: int) -> list[float]:
            taken = []
            for _ in range(count):
                asked = time.monotonic()
                wait = await clock.turn(host, delay)
                taken.append(asked + wait)
                await asyncio.sleep(wait)
            return taken

        began = time.monotonic()
        per_worker = await asyncio.gather(
            *(starts(clock, "a.test", 4) for clock in clocks), starts(clocks[0], "b.test", 1)
        )
        other = per_worker.pop()
        ttl = await clients[0].pttl("job:host:a.test")
    finally:
        for client in clients:
            await client.aclose()

    spaced = sorted(itertools.chain.from_iterable(per_worker))
    gaps = [later - earlier for earlier, later in itertools.pairwise(spaced)]
    assert len(spaced) == 12
    assert min(gaps) >= delay - 0.005, gaps  # asked and answered within ms on loopback
    assert spaced[-1] - spaced[0] >= 11 * delay - 0.005
    assert other[0] - began < delay, "another host's first turn is now"
    assert 0 < ttl <= 5_000 + 1_000, "the host is forgotten shortly after its spacing"


async def test_one_workers_turns_at_many_hosts_asked_at_once_take_one_call(
    redis_server: RedisServer,
) -> None:
    """Twenty hosts' turns asked together go in one script call: each host's first turn
    is now, and its second one the delay after it."""
    client = Redis.from_url(redis_server.url)
    try:
        clock = SharedHostClock(client, "job")
        script = clock._turn
        calls: list[int] = []

        async def counted(*, keys: list[str], args: list[int]) -> object:
            calls.append(len(keys))
            return await script(keys=keys, args=args)

        clock._turn = counted  # type: ignore[assignment]
        hosts = [f"site-{n}.test" for n in range(20)]
        first = await asyncio.gather(*(clock.turn(host, 0.5) for host in hosts))
        second = await asyncio.gather(*(clock.turn(host, 0.5) for host in hosts))
    finally:
        await client.aclose()

    assert calls == [20, 20]
    assert first == [0.0] * 20
    assert all(0.4 < wait <= 0.5 for wait in second), second
