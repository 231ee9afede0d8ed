"""The queue of batches: fresh work with backpressure, retries first once due, close and drain."""

from __future__ import annotations

import asyncio
import time

from engine.pipeline.records import Chunk
from engine.pipeline.work_queue import Batch, InProcessWorkQueue

SHORT = 0.05  # a retry due time short enough to keep the tests fast
GUARD = 2.0  # fail instead of hanging when a wake-up never comes


def batch(name: str) -> Batch:
    return Batch((Chunk(id=name, source="doc.txt", seq=0, text=f"text {name}", est_tokens=2),))


def names(batches: list[Batch | None]) -> list[str | None]:
    return [None if b is None else b.ids[0] for b in batches]


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def get(queue: InProcessWorkQueue) -> Batch | None:
    async with asyncio.timeout(GUARD):
        return await queue.get()


class CountingClock:
    """time.monotonic that counts how often the queue looks at it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return time.monotonic()


async def test_fresh_batches_come_out_in_the_order_they_went_in() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    for name in "abc":
        await queue.put(batch(name))

    assert names([await get(queue) for _ in range(3)]) == ["a", "b", "c"]


async def test_a_full_queue_holds_put_until_a_get_makes_room() -> None:
    queue = InProcessWorkQueue(maxsize=2)
    await queue.put(batch("a"))
    await queue.put(batch("b"))

    third = asyncio.create_task(queue.put(batch("c")))
    await settle()
    assert not third.done()
    assert queue.fresh_count == 2

    assert names([await get(queue)]) == ["a"]
    async with asyncio.timeout(GUARD):
        await third
    assert names([await get(queue), await get(queue)]) == ["b", "c"]


async def test_several_blocked_putters_each_get_in_as_room_appears() -> None:
    queue = InProcessWorkQueue(maxsize=1)
    await queue.put(batch("a"))
    putters = [asyncio.create_task(queue.put(batch(n))) for n in "bc"]
    await settle()

    got = [await get(queue) for _ in range(3)]

    assert sorted(names(got)) == ["a", "b", "c"]  # type: ignore[type-var]
    assert all(p.done() for p in putters)
    assert queue.fresh_count <= 1


async def test_a_retry_never_blocks_even_when_the_queue_is_full() -> None:
    queue = InProcessWorkQueue(maxsize=1)
    await queue.put(batch("fresh"))

    queue.put_retry(batch("retry"))

    assert queue.retry_count == 1
    assert queue.fresh_count == 1


async def test_a_due_retry_goes_before_fresh_work() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    await queue.put(batch("fresh"))
    queue.put_retry(batch("retry"))

    assert names([await get(queue), await get(queue)]) == ["retry", "fresh"]


async def test_a_retry_not_yet_due_does_not_hold_back_fresh_work() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    queue.put_retry(batch("later"), delay_s=60.0)
    await queue.put(batch("fresh"))

    assert names([await get(queue)]) == ["fresh"]
    assert queue.retry_count == 1


async def test_retries_come_back_in_due_order_and_ties_in_the_order_they_were_put() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    queue.put_retry(batch("second"), delay_s=SHORT)
    queue.put_retry(batch("first-a"))
    queue.put_retry(batch("first-b"))

    got = [await get(queue) for _ in range(3)]

    assert names(got) == ["first-a", "first-b", "second"]


async def test_get_sleeps_until_a_retry_is_due_without_polling() -> None:
    clock = CountingClock()
    queue = InProcessWorkQueue(maxsize=10, clock=clock)
    queue.put_retry(batch("retry"), delay_s=SHORT)
    before = clock.calls

    assert names([await get(queue)]) == ["retry"]
    # One look to find it not due, one after the timed wait (plus spares for a
    # timer that fires within the loop's clock resolution): polling would look
    # hundreds of times in 50 ms.
    assert clock.calls - before <= 5


async def test_an_earlier_retry_wakes_a_get_waiting_for_a_later_one() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    queue.put_retry(batch("in-an-hour"), delay_s=3600.0)
    waiting = asyncio.create_task(get(queue))
    await settle()
    assert not waiting.done()

    queue.put_retry(batch("now"))

    assert names([await waiting]) == ["now"]


async def test_a_fresh_put_wakes_a_waiting_get() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    waiting = asyncio.create_task(get(queue))
    await settle()
    assert not waiting.done()

    await queue.put(batch("fresh"))

    assert names([await waiting]) == ["fresh"]


async def test_a_closed_empty_queue_returns_none() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    queue.close()

    assert await get(queue) is None
    assert await get(queue) is None


async def test_closing_wakes_a_waiting_get_with_none() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    waiting = asyncio.create_task(get(queue))
    await settle()

    queue.close()

    assert await waiting is None


async def test_a_closed_queue_still_hands_out_what_it_holds_then_none() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    await queue.put(batch("fresh"))
    queue.put_retry(batch("retry"), delay_s=SHORT)
    queue.close()

    got = [await get(queue) for _ in range(3)]

    assert names(got) == ["fresh", "retry", None]


async def test_drain_pending_takes_fresh_and_retries_and_leaves_the_queue_empty() -> None:
    queue = InProcessWorkQueue(maxsize=10)
    await queue.put(batch("fresh"))
    queue.put_retry(batch("retry"), delay_s=3600.0)

    pending = queue.drain_pending()

    assert sorted(b.ids[0] for b in pending) == ["fresh", "retry"]
    assert (queue.fresh_count, queue.retry_count) == (0, 0)
    queue.close()
    assert await get(queue) is None


async def test_drain_pending_lets_a_blocked_putter_in() -> None:
    queue = InProcessWorkQueue(maxsize=1)
    await queue.put(batch("a"))
    blocked = asyncio.create_task(queue.put(batch("b")))
    await settle()

    queue.drain_pending()
    async with asyncio.timeout(GUARD):
        await blocked

    assert names([await get(queue)]) == ["b"]
