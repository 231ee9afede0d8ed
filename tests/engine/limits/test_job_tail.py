"""At the job's tail a hang is cut short: the job's end waits for it, the budget does not.

A request waiting when the tail begins is looked at again at once; one sent
after it gets the tail's shorter patience from the start.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.limits.hang_deadline import HangDeadline
from engine.limits.job_tail import JobTail
from engine.limits.key_latency import KeyLatency

CEILING_S = 60.0


def usual_latency() -> KeyLatency:
    """A key whose answers took 0.1-0.2 s: patience 3 s (the floor), 0.25 s at the tail."""
    latency = KeyLatency()
    for i in range(100):
        latency.record(0.1 + 0.001 * i)
    return latency


def test_the_tails_patience_is_a_lower_quantile_with_a_smaller_margin() -> None:
    latency = usual_latency()

    assert latency.patience(CEILING_S) == KeyLatency.HANG_FLOOR_S
    assert latency.patience(CEILING_S, tail=True) == pytest.approx(
        max(KeyLatency.TAIL_FLOOR_S, 0.195 * KeyLatency.TAIL_MARGIN)
    )


async def test_a_request_waiting_when_the_tail_begins_is_given_up_at_the_tails_patience() -> None:
    latency, tail = usual_latency(), JobTail()
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def hung_request() -> None:
        async with HangDeadline(latency, CEILING_S, tail):
            await asyncio.sleep(CEILING_S)

    request = asyncio.create_task(hung_request())
    await asyncio.sleep(0.2)
    tail.begin()  # the last batch was taken: nothing else waits to be sent

    with pytest.raises(TimeoutError):
        await request
    waited = loop.time() - started
    assert KeyLatency.TAIL_FLOOR_S <= waited < KeyLatency.HANG_FLOOR_S


async def test_before_the_tail_a_slow_request_keeps_the_usual_patience() -> None:
    latency, tail = usual_latency(), JobTail()

    async def slow_request() -> str:
        async with HangDeadline(latency, CEILING_S, tail):
            await asyncio.sleep(KeyLatency.TAIL_FLOOR_S + 0.5)
        return "answered"

    assert await slow_request() == "answered"
    assert not tail.begun
