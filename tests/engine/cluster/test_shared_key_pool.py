"""Workers' key pools over one set of budgets in Redis: the engine's `KeyPool`
calls, with the budget and the cool-downs shared and the rest kept per worker.

Each "worker" here is a `SharedKeyPool` on its own Redis connection, against
a real `redis-server`; separate processes are in test_shared_budget_processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from engine.cluster.shared_budget import Candidate
from engine.cluster.shared_key_pool import SharedKeyPool
from engine.config.settings import ProviderSettings
from engine.limits.key_pool import KeyLease, KeyState
from engine.limits.rate_limiter import KeyBudget
from engine.observe.events import EventBus, EventKind
from engine.provider.client import CallFailure, FailureKind
from tests.redis_server import RedisServer

PROVIDER = ProviderSettings(name="sim", base_url="http://127.0.0.1:1/v1", model="m")
GUARD = 5.0  # fail instead of hanging when an answer never comes

Limits = Sequence[tuple[str, int | None, int | None]]


def keys(limits: Limits) -> list[KeyState]:
    return [
        KeyState(f"sim/{alias}", alias, PROVIDER, KeyBudget(rpm, tpm), time.monotonic)
        for alias, rpm, tpm in limits
    ]


@asynccontextmanager
async def worker(url: str, limits: Limits, events: EventBus | None = None) -> AsyncIterator[
    SharedKeyPool
]:  # fmt: skip
    """A worker's pool on its own connection, its writer running; everything
    it queued is written when the block ends."""
    client = Redis.from_url(url)
    pool = SharedKeyPool(keys(limits), client, "job", events=events)
    try:
        await pool.open()
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(pool.run_writer())
            try:
                yield pool
            finally:
                pool.close_writer()
                await asyncio.wait_for(writer, GUARD)
    finally:
        await client.aclose()


def rate_limited(retry_after_s: float) -> CallFailure:
    return CallFailure(FailureKind.RATE_LIMITED, "429", {"retry-after": str(retry_after_s)}, 0.01)


def key_of(pool: SharedKeyPool, alias: str) -> KeyState:
    return next(k for k in pool.keys if k.alias == alias)


async def leases(pool: SharedKeyPool, count: int, est: int = 10) -> list[KeyLease]:
    return [await asyncio.wait_for(pool.lease(est), GUARD) for _ in range(count)]


async def test_an_answer_reconciles_the_shared_budget(redis_server: RedisServer) -> None:
    async with worker(redis_server.url, [("k", None, 6000)]) as pool:  # 100 tokens a second
        [lease] = await leases(pool, 1, est=80)
        lease.returned()
        pool.answered(lease, 30, {})  # 50 of the 80 were not used
    state = (await pool.budget.read(["sim/k"]))["sim/k"]

    assert state.reserved_requests == 1
    assert state.tokens_level == pytest.approx(100 - 30, abs=2)  # refilled a little since
    assert key_of(pool, "k").budget.tokens_left() == pytest.approx(70, abs=2)  # the worker's mirror


async def test_a_429_on_one_worker_cools_the_key_for_every_worker(
    redis_server: RedisServer,
) -> None:
    limits = [("a", 6000, None), ("b", 600, None)]
    async with worker(redis_server.url, limits) as first:
        [lease] = await leases(first, 1)
        assert lease.key.alias == "a"  # the most room
        lease.returned()
        first.refused(lease, rate_limited(20.0), sent_at=time.monotonic())
    async with worker(redis_server.url, limits) as other:
        chosen = {lease.key.alias for lease in await leases(other, 5)}

    assert chosen == {"b"}
    assert 19.0 < key_of(first, "a").cooling_for() <= 20.0


async def test_a_key_a_worker_disabled_is_skipped_by_that_worker_only(
    redis_server: RedisServer,
) -> None:
    limits = [("a", 6000, None), ("b", 600, None)]
    async with worker(redis_server.url, limits) as first, worker(redis_server.url, limits) as other:
        first.disable(key_of(first, "a"), "insufficient quota")

        by_first = {lease.key.alias for lease in await leases(first, 5)}
        by_other = {lease.key.alias for lease in await leases(other, 5)}

    assert by_first == {"b"}
    assert "a" in by_other


async def test_headers_one_worker_got_set_the_headroom_every_worker_spends(
    redis_server: RedisServer,
) -> None:
    limits = [("k", 60, None)]  # one a second
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "60s",  # the provider's bucket: a full minute
    }
    async with worker(redis_server.url, limits) as first:
        [lease] = await leases(first, 1)
        lease.returned()
        first.answered(lease, 10, headers)
    async with worker(redis_server.url, limits) as other:
        waiting = asyncio.create_task(other.lease(10))
        done, _ = await asyncio.wait([waiting], timeout=0.5)
        waiting.cancel()

    assert not done  # nothing left: the other worker waits for the refill
    budget = key_of(other, "k").budget
    assert budget.headroom_from_headers  # its mirror took the shared state
    assert budget.requests.burst_s == pytest.approx(60.0)  # the provider's full minute
    # Only what refilled since the answer (its own request is in its headers): not one yet.
    left = key_of(other, "k").budget.requests_left()
    assert left is not None and left < 1.0


async def test_a_limit_learned_from_headers_is_said_by_the_worker_that_learned_it(
    redis_server: RedisServer,
) -> None:
    limits = [("k", 6000, None)]
    lower = {"x-ratelimit-limit-requests": "3000"}
    first_events, other_events = EventBus(), EventBus()
    for events in (first_events, other_events):  # one after the other
        async with worker(redis_server.url, limits, events) as pool:
            [lease] = await leases(pool, 1)
            lease.returned()
            pool.answered(lease, 10, lower)

    def learned(events: EventBus) -> list[str]:
        return [e.message for e in events.recent() if e.kind is EventKind.LIMIT_LEARNED]

    assert learned(first_events) == ["sim/k: rpm limit 6000 → 3000 (from the provider's headers)"]
    assert learned(other_events) == []
    assert key_of(pool, "k").snapshot().rpm_limit == 3000.0


async def test_a_reservation_whose_asker_was_cancelled_is_given_back(
    redis_server: RedisServer,
) -> None:
    """Cancelled while its script call is out: Redis took the reservation, and the
    worker gives it back when the answer comes."""
    async with worker(redis_server.url, [("k", None, 6000)]) as pool:
        reserve_many = pool.budget.reserve_many
        made, answer_held = asyncio.Event(), asyncio.Event()

        async def reserved_then_held(asks: Sequence[Sequence[Candidate]]) -> Any:
            answers = await reserve_many(asks)
            made.set()
            await answer_held.wait()
            return answers

        pool.budget.reserve_many = reserved_then_held  # type: ignore[method-assign]
        asking = asyncio.create_task(pool.lease(80))
        await asyncio.wait_for(made.wait(), GUARD)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        answer_held.set()
    state = (await pool.budget.read(["sim/k"]))["sim/k"]

    assert state.reserved_requests == 1  # Redis did take it...
    assert state.tokens_level == pytest.approx(100, abs=2)  # ...and has its tokens back


async def test_a_reservation_cancelled_before_it_is_sent_takes_nothing(
    redis_server: RedisServer,
) -> None:
    async with worker(redis_server.url, [("k", None, 6000)]) as pool:
        asking = asyncio.create_task(pool.lease(80))
        await asyncio.sleep(0)  # asked; the call that sends it has not started
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
    state = (await pool.budget.read(["sim/k"]))["sim/k"]

    assert state.reserved_requests == 0
    assert state.tokens_level == pytest.approx(100, abs=2)


async def test_reservations_asked_while_a_call_is_out_go_together_in_the_next(
    redis_server: RedisServer,
) -> None:
    """A busy worker pays one round trip for many admissions: nineteen leases asked
    while the first one's call is out go in one call after it — each its own
    reservation, on the key its ask chose."""
    async with worker(redis_server.url, [("k", 600, None), ("j", 600, None)]) as pool:
        reserve_many = pool.budget.reserve_many
        calls: list[int] = []
        first_out, first_held = asyncio.Event(), asyncio.Event()

        async def counted(asks: Sequence[Sequence[Candidate]]) -> Any:
            calls.append(len(asks))
            answers = await reserve_many(asks)
            if len(calls) == 1:
                first_out.set()
                await first_held.wait()
            return answers

        pool.budget.reserve_many = counted  # type: ignore[method-assign]
        async with asyncio.timeout(GUARD):
            first = asyncio.create_task(pool.lease(10))
            await first_out.wait()
            rest = asyncio.gather(*(pool.lease(10) for _ in range(19)))
            await asyncio.sleep(0.05)  # all nineteen asked meanwhile
            first_held.set()
            taken = [await first, *await rest]
        for lease in taken:
            lease.returned()
            pool.answered(lease, 10, {})
    states = await pool.budget.read(["sim/k", "sim/j"])

    assert calls == [1, 19]
    assert sum(s.reserved_requests for s in states.values()) == 20
    assert {lease.key.alias for lease in taken} == {"k", "j"}  # each ask its own choice


async def test_a_redis_restart_loses_no_reservation_and_ends_no_job(tmp_path: Path) -> None:
    """Two workers through a restart: one's answer settles, the other's
    reservation waits, and both go through once Redis is back."""
    events = EventBus()
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        async with (
            worker(server.url, [("k", None, 600)], events) as answering,
            worker(server.url, [("j", 600, None)], events) as asking,
        ):
            [held] = await leases(answering, 1, est=10)
            server.kill()
            held.returned()
            answering.answered(held, 510, {})  # 500 more than reserved: queued meanwhile
            reserving = asyncio.create_task(asking.lease(10))
            await asyncio.sleep(0.3)  # failing and retrying meanwhile
            assert not reserving.done()
            server.start()
            assert (await asyncio.wait_for(reserving, 15)).key.alias == "j"
        after = await answering.budget.read(["sim/k", "sim/j"])

    assert after["sim/j"].reserved_requests == 1
    assert after["sim/k"].reserved_requests == 1  # kept over the restart
    level = after["sim/k"].tokens_level
    assert level is not None and level < -400  # the answer's 500 extra tokens were charged
    warnings = [e.message for e in events.recent() if e.kind is EventKind.WARNING]
    assert warnings[0].startswith("shared key budgets: Redis did not answer")
    assert warnings[-1].startswith("shared key budgets: Redis answers again")


async def test_a_spare_lease_leaves_the_last_room_to_every_worker_that_is_not_hedging(
    redis_server: RedisServer,
) -> None:
    """A hedge (`spare=1`) takes a shared key's budget only with room for one more left
    over: another worker's real request, asking after it, still goes first."""
    limits = [("k", 240, None)]  # paced at two a second until answers come, four at first
    async with (
        worker(redis_server.url, limits) as hedging,
        worker(redis_server.url, limits) as other,
    ):
        await leases(other, 3)  # room for one left
        hedge = asyncio.create_task(hedging.lease(10, spare=1))
        await asyncio.sleep(0.1)
        await leases(other, 1)  # at once, though the hedge asked first
        assert not hedge.done(), "the last room went to the request that is not a hedge"
        async with asyncio.timeout(GUARD):  # two fit again within a second
            assert (await hedge).key.alias == "k"
    state = (await hedging.budget.read(["sim/k"]))["sim/k"]
    assert state.reserved_requests == 5
