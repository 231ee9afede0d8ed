"""A semaphore whose size changes while work is in flight."""

from __future__ import annotations

import asyncio

import pytest

from engine.limits.concurrency_limit import ConcurrencyLimit

GUARD = 2.0


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


def waiters(limit: ConcurrencyLimit, n: int) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(limit.acquire()) for _ in range(n)]


async def test_acquire_is_immediate_up_to_the_limit() -> None:
    limit = ConcurrencyLimit(3)

    for _ in range(3):
        async with asyncio.timeout(GUARD):
            await limit.acquire()

    assert limit.in_use == 3


async def test_the_limit_is_at_least_one() -> None:
    assert ConcurrencyLimit(0).limit == 1
    limit = ConcurrencyLimit(4)
    limit.set_limit(-2)
    assert limit.limit == 1


async def test_beyond_the_limit_acquire_waits_until_a_release() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    [waiting] = waiters(limit, 1)
    await settle()
    assert not waiting.done()

    limit.release()
    await settle()

    assert waiting.done()
    assert limit.in_use == 1


async def test_waiters_are_served_in_the_order_they_came() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    order: list[int] = []

    async def worker(n: int) -> None:
        await limit.acquire()
        order.append(n)

    tasks = [asyncio.create_task(worker(n)) for n in range(4)]
    await settle()
    for _ in range(4):
        limit.release()
        await settle()

    assert order == [0, 1, 2, 3]
    assert all(t.done() for t in tasks)


async def test_a_newcomer_does_not_jump_the_queue() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    [first] = waiters(limit, 1)
    await settle()

    limit.release()  # the slot goes to the waiter, not to whoever asks next
    [newcomer] = waiters(limit, 1)
    await settle()

    assert first.done()
    assert not newcomer.done()
    newcomer.cancel()


async def test_growing_the_limit_wakes_as_many_waiters_as_new_slots() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    tasks = waiters(limit, 5)
    await settle()

    limit.set_limit(4)
    await settle()

    assert sum(t.done() for t in tasks) == 3
    assert limit.in_use == 4
    for t in tasks:
        t.cancel()


async def test_shrinking_lets_in_flight_work_finish_and_holds_new_work() -> None:
    limit = ConcurrencyLimit(4)
    for _ in range(4):
        await limit.acquire()

    limit.set_limit(2)
    assert limit.in_use == 4  # nothing in flight is cancelled
    [waiting] = waiters(limit, 1)
    await settle()

    limit.release()
    limit.release()
    await settle()
    assert not waiting.done()  # 2 in flight is the new limit: still full

    limit.release()
    await settle()
    assert waiting.done()
    assert limit.in_use == 2


async def test_a_cancelled_waiter_does_not_take_a_slot() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    [waiting] = waiters(limit, 1)
    await settle()

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    limit.release()

    assert limit.in_use == 0
    async with asyncio.timeout(GUARD):
        await limit.acquire()  # immediate: nobody is queued ahead any more
    assert limit.in_use == 1


async def test_a_waiter_cancelled_just_after_being_granted_gives_its_slot_back() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    [waiting] = waiters(limit, 1)
    await settle()

    limit.release()  # grants the slot to the waiter...
    waiting.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert limit.in_use == 0


async def test_a_cancelled_waiter_in_the_middle_of_the_queue_is_skipped() -> None:
    limit = ConcurrencyLimit(1)
    await limit.acquire()
    first, middle, last = waiters(limit, 3)
    await settle()

    middle.cancel()
    limit.release()
    await settle()
    limit.release()
    await settle()

    assert first.done() and last.done() and middle.cancelled()
    assert limit.in_use == 1
