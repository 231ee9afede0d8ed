"""Per-host manners: a cap on requests at once, and starts spaced by a delay."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from engine.crawl.host_politeness import HostPoliteness


class ManualClock:
    """A monotonic clock that moves only when a waiter sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def manual(per_host: int, delay_s: float) -> tuple[HostPoliteness, ManualClock]:
    clock = ManualClock()
    return HostPoliteness(per_host, delay_s, clock=clock, sleep=clock.sleep), clock


async def test_requests_to_one_host_start_a_delay_apart() -> None:
    politeness, clock = manual(per_host=2, delay_s=2.0)
    starts = []
    for _ in range(3):
        async with politeness.slot("site-0001.test"):
            starts.append(clock())

    assert starts == [0.0, 2.0, 4.0]


async def test_the_next_request_is_planned_from_when_the_last_really_went_out() -> None:
    politeness, clock = manual(per_host=1, delay_s=1.0)
    async with politeness.slot("h.test") as turn:
        clock.now += 0.7  # a global slot, DNS and a connection took this long
        await turn.on_the_wire()
    async with politeness.slot("h.test") as turn:
        planned = clock()
        await turn.on_the_wire()
        sent = clock()

    assert (planned, sent) == (1.7, 1.7)


async def test_a_request_waits_at_the_wire_for_one_that_went_out_late() -> None:
    politeness, clock = manual(per_host=2, delay_s=1.0)
    async with (
        politeness.slot("h.test") as first,
        politeness.slot("h.test") as second,  # planned for 1.0
    ):
        assert clock() == 1.0
        await first.on_the_wire()  # went out late, at 1.0 too
        await second.on_the_wire()
        assert clock() == 2.0


async def test_a_pause_between_the_gate_and_the_write_counts_against_the_next_request() -> None:
    politeness, clock = manual(per_host=1, delay_s=1.0)
    async with politeness.slot("h.test") as turn:
        await turn.on_the_wire()
        clock.now += 0.2  # the process was paused before the bytes were written
        turn.sent()
    async with politeness.slot("h.test") as turn:
        await turn.on_the_wire()
        assert clock() == 1.2


async def test_whichever_request_reaches_the_wire_first_the_next_keeps_the_delay() -> None:
    delay = 0.05
    politeness = HostPoliteness(per_host=3, delay_s=delay)
    sent: list[float] = []

    async def request(connect_s: float) -> None:
        async with politeness.slot("h.test") as turn:
            await asyncio.sleep(connect_s)  # connections take different times
            await turn.on_the_wire()
            sent.append(time.monotonic())

    async with asyncio.TaskGroup() as group:
        for connect_s in (0.12, 0.0, 0.03):
            group.create_task(request(connect_s))

    gaps = [later - earlier for earlier, later in itertools.pairwise(sorted(sent))]
    assert len(gaps) == 2
    assert min(gaps) >= delay - 1e-6


async def test_other_hosts_do_not_wait_for_each_other() -> None:
    politeness, clock = manual(per_host=1, delay_s=2.0)
    starts = []
    for host in ("a.test", "b.test", "c.test"):
        async with politeness.slot(host):
            starts.append(clock())

    assert starts == [0.0, 0.0, 0.0]
    assert clock.sleeps == []


async def test_host_names_are_compared_without_case() -> None:
    politeness, clock = manual(per_host=1, delay_s=1.0)
    async with politeness.slot("Site.TEST"):
        pass
    async with politeness.slot("site.test"):
        assert clock() == 1.0


async def test_a_larger_crawl_delay_wins_and_a_smaller_one_does_not() -> None:
    politeness, clock = manual(per_host=1, delay_s=2.0)
    starts = []
    for crawl_delay in (None, 5.0, 0.5):
        async with politeness.slot("h.test", min_delay_s=crawl_delay):
            starts.append(clock())

    assert starts == [0.0, 5.0, 7.0]


async def test_at_most_per_host_requests_run_at_once_in_arrival_order() -> None:
    politeness = HostPoliteness(per_host=2, delay_s=0.0)
    active = 0
    most = 0
    order: list[int] = []

    async def request(i: int) -> None:
        nonlocal active, most
        async with politeness.slot("h.test"):
            order.append(i)
            active += 1
            most = max(most, active)
            await asyncio.sleep(0.01)
            active -= 1

    async with asyncio.TaskGroup() as group:
        for i in range(8):
            group.create_task(request(i))

    assert most == 2
    assert order == list(range(8))


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    politeness = HostPoliteness(per_host=1, delay_s=0.0)
    release = asyncio.Event()
    holding = asyncio.Event()

    async def holder() -> None:
        async with politeness.slot("h.test"):
            holding.set()
            await release.wait()

    async def waiter() -> None:
        async with politeness.slot("h.test"):
            pass

    async with asyncio.TaskGroup() as group:
        group.create_task(holder())
        await holding.wait()
        cancelled = group.create_task(waiter())
        await asyncio.sleep(0)  # let it queue behind the holder
        cancelled.cancel()
        release.set()
    assert cancelled.cancelled()

    async with asyncio.timeout(5):  # a leaked slot would hang here
        async with politeness.slot("h.test"):
            pass


async def test_idle_hosts_are_forgotten_once_their_delay_has_passed() -> None:
    politeness, clock = manual(per_host=2, delay_s=1.0)
    for n in range(1000):
        async with politeness.slot(f"site-{n:04d}.test"):
            pass
    assert politeness.hosts_tracked == 1000  # each still inside its delay

    clock.now += 1.5
    async with politeness.slot("later.test"):
        pass
    assert politeness.hosts_tracked == 1


async def test_a_host_inside_its_delay_is_remembered() -> None:
    politeness, clock = manual(per_host=1, delay_s=3.0)
    async with politeness.slot("h.test"):
        pass
    clock.now += 1.0
    async with politeness.slot("other.test"):
        pass
    async with politeness.slot("h.test"):
        assert clock() == 3.0


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        HostPoliteness(per_host=0, delay_s=1.0)
    with pytest.raises(ValueError):
        HostPoliteness(per_host=1, delay_s=-1.0)


class OtherProcesses:
    """A shared host clock (`SharedHostClock`) on which other workers took `taken` turns."""

    def __init__(self, clock: ManualClock, taken: dict[str, float]) -> None:
        self._clock = clock
        self.last = dict(taken)  # the latest start taken, by host
        self.turns: list[tuple[str, float]] = []

    async def turn(self, host: str, delay_s: float) -> float:
        now = self._clock()
        start = max(now, self.last.get(host, float("-inf")) + delay_s)
        self.last[host] = start
        self.turns.append((host, delay_s))
        return start - now


async def test_with_a_shared_clock_the_gate_also_waits_for_the_hosts_turn_among_others() -> None:
    """Another worker's request to the host went out at 0.5: this one, free of its own
    spacing, still waits until a delay after that one; a host nobody else visits
    waits for nothing more."""
    clock = ManualClock()
    others = OtherProcesses(clock, {"h.test": 0.5})
    politeness = HostPoliteness(1, 1.0, clock=clock, sleep=clock.sleep, shared=others)
    async with politeness.slot("H.test") as turn:
        await turn.on_the_wire()
        first = clock()
    async with politeness.slot("h.test") as turn:
        await turn.on_the_wire()
        second = clock()
    async with politeness.slot("quiet.test") as turn:
        await turn.on_the_wire()
        alone = clock()

    assert (first, second, alone) == (1.5, 2.5, 2.5)
    assert others.turns == [("h.test", 1.0), ("h.test", 1.0), ("quiet.test", 1.0)]
