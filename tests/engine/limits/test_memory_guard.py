"""The memory circuit breaker: limits, transitions, hysteresis and waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.limits.memory_guard import MIB, MemoryGuard, MemoryState, effective_memory_limit_bytes

GIB = 1024 * MIB


class FakeRss:
    """An RSS reader the test sets by hand."""

    def __init__(self, mb: float = 0) -> None:
        self.bytes = int(mb * MIB)

    def set_mb(self, mb: float) -> None:
        self.bytes = int(mb * MIB)

    def __call__(self) -> int:
        return self.bytes


Transition = tuple[MemoryState, MemoryState, int]


def make_guard(
    rss: FakeRss,
    soft_mb: int = 1000,
    hard_mb: int = 2000,
    limit: int | None = 64 * GIB,
) -> tuple[MemoryGuard, list[Transition]]:
    transitions: list[Transition] = []
    guard = MemoryGuard(
        soft_mb,
        hard_mb,
        on_change=lambda old, new, rss_bytes: transitions.append((old, new, rss_bytes)),
        read_rss=rss,
        memory_limit=lambda: limit,
    )
    return guard, transitions


# -- the effective limit -------------------------------------------------------


def write_cgroup(root: Path, relative: str, content: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content + "\n")
    return root


def test_a_cgroup_v2_limit_below_the_host_is_the_limit(tmp_path: Path) -> None:
    root = write_cgroup(tmp_path, "memory.max", str(2 * GIB))
    assert effective_memory_limit_bytes(root, host_total=16 * GIB) == 2 * GIB


def test_a_cgroup_v1_limit_is_read_when_there_is_no_v2_file(tmp_path: Path) -> None:
    root = write_cgroup(tmp_path, "memory/memory.limit_in_bytes", str(3 * GIB))
    assert effective_memory_limit_bytes(root, host_total=16 * GIB) == 3 * GIB


def test_a_cgroup_limit_above_the_host_is_clamped_to_the_host(tmp_path: Path) -> None:
    root = write_cgroup(tmp_path, "memory.max", str(32 * GIB))
    assert effective_memory_limit_bytes(root, host_total=16 * GIB) == 16 * GIB


@pytest.mark.parametrize(
    ("relative", "content"),
    [
        ("memory.max", "max"),
        ("memory/memory.limit_in_bytes", "9223372036854771712"),  # v1's "unlimited"
        ("unrelated", "0"),  # no cgroup files at all
    ],
)
def test_no_cgroup_limit_leaves_the_host_memory(
    tmp_path: Path, relative: str, content: str
) -> None:
    root = write_cgroup(tmp_path, relative, content)
    assert effective_memory_limit_bytes(root, host_total=16 * GIB) == 16 * GIB


def test_the_real_limit_is_known_and_positive() -> None:
    limit = effective_memory_limit_bytes()
    assert limit is not None and limit > 0


# -- limits --------------------------------------------------------------------


def test_limits_are_clamped_below_the_effective_limit() -> None:
    guard, _ = make_guard(FakeRss(), soft_mb=4000, hard_mb=8000, limit=2000 * MIB)

    assert guard.limit_bytes == 2000 * MIB
    assert guard.soft_bytes == int(2000 * MIB * 0.90)
    assert guard.hard_bytes == int(2000 * MIB * 0.95)


def test_limits_under_the_effective_limit_are_kept() -> None:
    guard, _ = make_guard(FakeRss(), soft_mb=1000, hard_mb=1500, limit=64 * GIB)
    assert (guard.soft_bytes, guard.hard_bytes) == (1000 * MIB, 1500 * MIB)


def test_a_soft_limit_above_the_hard_limit_is_lowered_to_it() -> None:
    guard, _ = make_guard(FakeRss(), soft_mb=3000, hard_mb=2000)
    assert guard.soft_bytes == guard.hard_bytes == 2000 * MIB


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        make_guard(FakeRss(), soft_mb=0)


# -- transitions ---------------------------------------------------------------


def test_rising_memory_moves_ok_to_soft_to_hard_and_reports_each_step() -> None:
    rss = FakeRss(500)
    guard, transitions = make_guard(rss)

    assert guard.sample() is MemoryState.OK
    rss.set_mb(1000)
    assert guard.sample() is MemoryState.SOFT
    rss.set_mb(2000)
    assert guard.sample() is MemoryState.HARD

    assert transitions == [
        (MemoryState.OK, MemoryState.SOFT, 1000 * MIB),
        (MemoryState.SOFT, MemoryState.HARD, 2000 * MIB),
    ]
    assert guard.rss_bytes == 2000 * MIB


def test_a_jump_straight_past_hard_is_one_transition() -> None:
    rss = FakeRss(2500)
    guard, transitions = make_guard(rss)

    guard.sample()

    assert transitions == [(MemoryState.OK, MemoryState.HARD, 2500 * MIB)]


def test_soft_is_left_only_below_ninety_percent_of_the_soft_limit() -> None:
    rss = FakeRss(1000)
    guard, _ = make_guard(rss)
    guard.sample()

    rss.set_mb(950)  # under the limit but inside the band: no flapping
    assert guard.sample() is MemoryState.SOFT
    rss.set_mb(899)
    assert guard.sample() is MemoryState.OK


def test_hard_is_left_only_below_ninety_five_percent_of_the_hard_limit() -> None:
    rss = FakeRss(2000)
    guard, transitions = make_guard(rss)
    guard.sample()

    rss.set_mb(1950)
    assert guard.sample() is MemoryState.HARD
    rss.set_mb(1890)
    assert guard.sample() is MemoryState.SOFT
    assert transitions[-1] == (MemoryState.HARD, MemoryState.SOFT, 1890 * MIB)


def test_falling_from_hard_to_well_below_soft_goes_straight_to_ok() -> None:
    rss = FakeRss(2000)
    guard, transitions = make_guard(rss)
    guard.sample()
    rss.set_mb(100)

    assert guard.sample() is MemoryState.OK
    assert transitions[-1] == (MemoryState.HARD, MemoryState.OK, 100 * MIB)


def test_falling_from_hard_into_the_soft_band_stays_soft() -> None:
    rss = FakeRss(2000)
    guard, _ = make_guard(rss)
    guard.sample()
    rss.set_mb(950)  # below the soft limit, above 90% of it

    assert guard.sample() is MemoryState.SOFT


def test_a_failing_on_change_does_not_stop_the_state_from_changing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(old: MemoryState, new: MemoryState, rss_bytes: int) -> None:
        raise RuntimeError("listener bug")

    guard = MemoryGuard(
        1000, 2000, on_change=broken, read_rss=FakeRss(1500), memory_limit=lambda: None
    )

    assert guard.sample() is MemoryState.SOFT
    assert "listener bug" in capsys.readouterr().err


# -- changing limits mid-run ---------------------------------------------------


def test_set_limits_applies_at_once_from_the_last_sample() -> None:
    rss = FakeRss(1200)
    guard, transitions = make_guard(rss, soft_mb=1000, hard_mb=2000)
    guard.sample()

    guard.set_limits(800, 1100)  # a more conservative preset

    assert guard.state is MemoryState.HARD
    assert (guard.soft_bytes, guard.hard_bytes) == (800 * MIB, 1100 * MIB)
    assert transitions[-1] == (MemoryState.SOFT, MemoryState.HARD, 1200 * MIB)


def test_set_limits_is_clamped_like_the_constructor() -> None:
    guard, _ = make_guard(FakeRss(), limit=1000 * MIB)
    guard.set_limits(5000, 6000)
    assert (guard.soft_bytes, guard.hard_bytes) == (int(900 * MIB), int(950 * MIB))


def test_set_limits_before_any_sample_changes_no_state() -> None:
    guard, transitions = make_guard(FakeRss(5000))
    guard.set_limits(100, 200)
    assert guard.state is MemoryState.OK
    assert transitions == []


# -- waiting -------------------------------------------------------------------


async def test_wait_below_hard_returns_at_once_when_not_hard() -> None:
    guard, _ = make_guard(FakeRss(1500))
    guard.sample()
    await asyncio.wait_for(guard.wait_below_hard(), timeout=5)


async def test_wait_below_hard_unblocks_after_a_sample_below_hard() -> None:
    rss = FakeRss(2100)
    guard, _ = make_guard(rss)
    guard.sample()
    waiter = asyncio.create_task(guard.wait_below_hard())
    await asyncio.sleep(0)
    assert not waiter.done()

    rss.set_mb(1950)  # still inside the hard band
    guard.sample()
    await asyncio.sleep(0)
    assert not waiter.done()

    rss.set_mb(1000)
    guard.sample()
    await asyncio.wait_for(waiter, timeout=5)
    assert guard.state is MemoryState.SOFT


async def test_run_samples_until_cancelled() -> None:
    rss = FakeRss(2100)
    reached_hard = asyncio.Event()
    guard = MemoryGuard(
        1000,
        2000,
        on_change=lambda old, new, rss_bytes: reached_hard.set(),
        read_rss=rss,
        interval_s=0.001,
        memory_limit=lambda: None,
    )
    async with asyncio.TaskGroup() as tg:
        sampler = tg.create_task(guard.run())
        await asyncio.wait_for(reached_hard.wait(), timeout=5)
        rss.set_mb(10)
        await asyncio.wait_for(guard.wait_below_hard(), timeout=5)
        sampler.cancel()
    assert guard.state is MemoryState.OK


# -- holds that give way, and what they wait for ---------------------------------


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_input_waits_while_above_soft_and_the_engine_still_holds_work() -> None:
    rss = FakeRss(1500)
    guard, _ = make_guard(rss)
    guard.sample()
    holding = {"work": True}
    waiter = asyncio.create_task(guard.wait_to_read(lambda: not holding["work"]))

    for _ in range(5):
        guard.sample()
        await settle()
    assert not waiter.done()  # the work in hand can still bring memory down

    rss.set_mb(800)
    guard.sample()
    await asyncio.wait_for(waiter, timeout=5)


async def test_input_gives_way_once_the_engine_holds_nothing_for_a_whole_sample() -> None:
    guard, _ = make_guard(FakeRss(1500))
    guard.sample()
    waiter = asyncio.create_task(guard.wait_to_read(lambda: True))
    await settle()

    guard.sample()  # idle first seen
    await settle()
    assert not waiter.done()
    guard.sample()  # a whole interval idle, memory still above: waiting cannot help
    await asyncio.wait_for(waiter, timeout=5)

    assert guard.state is MemoryState.SOFT
    assert guard.waiting_for() == (
        "input paused until memory < 900 MB (now 1500 MB); nothing else is held, so one at a time"
    )


async def test_requests_give_way_above_hard_only_with_nothing_in_flight() -> None:
    guard, _ = make_guard(FakeRss(2500))
    guard.sample()
    in_flight = {"count": 2}
    waiter = asyncio.create_task(guard.wait_to_send(lambda: in_flight["count"] == 0))
    await settle()

    for _ in range(5):
        guard.sample()
        await settle()
    assert not waiter.done()

    in_flight["count"] = 0
    guard.sample()
    await settle()
    assert not waiter.done()
    guard.sample()
    await asyncio.wait_for(waiter, timeout=5)


async def test_requests_are_not_held_above_soft_only() -> None:
    guard, _ = make_guard(FakeRss(1500))
    guard.sample()
    await asyncio.wait_for(guard.wait_to_send(lambda: False), timeout=5)


async def test_a_preset_that_raises_the_limit_releases_the_hold_at_once() -> None:
    guard, _ = make_guard(FakeRss(1500))
    guard.sample()
    waiter = asyncio.create_task(guard.wait_to_read(lambda: False))
    await settle()

    guard.set_limits(3000, 4000)

    await asyncio.wait_for(waiter, timeout=5)
    assert guard.waiting_for() == ""


def test_the_hold_says_what_it_waits_for() -> None:
    rss = FakeRss(2100)
    guard, _ = make_guard(rss)
    assert guard.waiting_for() == ""
    guard.sample()
    assert guard.waiting_for() == (
        "no new requests until memory < 1900 MB and no input until < 900 MB (now 2100 MB)"
    )
    rss.set_mb(1200)
    guard.sample()
    assert guard.waiting_for() == "input paused until memory < 900 MB (now 1200 MB)"
