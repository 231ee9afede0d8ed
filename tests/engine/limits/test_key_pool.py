"""Choosing the key that sends next: soonest admission, then most headroom; health and waiting."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from engine.config.settings import ProviderSettings
from engine.limits.key_pool import KeyPool, KeyState, NoUsableKeyError
from engine.limits.rate_limiter import Clock, KeyBudget

PROVIDER = ProviderSettings(name="sim", base_url="http://127.0.0.1:1/v1", model="m")
GUARD = 2.0  # fail instead of hanging when a wake-up never comes


class FakeClock:
    """A clock that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_key(alias: str, clock: Clock, rpm: int | None = None, tpm: int | None = None) -> KeyState:
    return KeyState(f"sim/{alias}", alias, PROVIDER, KeyBudget(rpm, tpm, clock), clock)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def acquire(pool: KeyPool, est_tokens: int = 1) -> KeyState:
    async with asyncio.timeout(GUARD):
        return await pool.acquire(est_tokens)


async def acquire_on_fake_time(pool: KeyPool, clock: FakeClock, est_tokens: int = 1) -> KeyState:
    """Acquire, moving the fake clock to the moment the first key can admit."""
    task = asyncio.create_task(pool.acquire(est_tokens))
    await settle()
    while not task.done():
        soonest = min(k.budget.wait_for(est_tokens) for k in pool.keys if k.usable)
        clock.advance(max(soonest, 1e-6))
        pool.notify()
        await settle()
    return task.result()


# choosing ------------------------------------------------------------------------------


async def test_the_key_that_can_admit_now_is_chosen_over_one_that_must_wait() -> None:
    clock = FakeClock()
    spent, fresh = make_key("spent", clock, rpm=60), make_key("fresh", clock, rpm=60)
    spent.budget.reserve(1)
    spent.budget.reserve(1)
    pool = KeyPool([spent, fresh], clock)

    assert (await acquire(pool)).alias == "fresh"


async def test_among_keys_that_can_admit_now_the_one_with_most_headroom_wins() -> None:
    clock = FakeClock()
    used, unused = make_key("used", clock, rpm=600), make_key("unused", clock, rpm=600)
    used.budget.reserve(1)
    pool = KeyPool([used, unused], clock)

    assert (await acquire(pool)).alias == "unused"


async def test_acquiring_reserves_the_request_and_tokens_on_the_chosen_key() -> None:
    clock = FakeClock()
    key = make_key("a", clock, rpm=600, tpm=6000)
    pool = KeyPool([key], clock)

    await acquire(pool, est_tokens=50)

    assert key.budget.requests.level() == pytest.approx(19.0)
    assert key.budget.tokens.level() == pytest.approx(150.0)


async def test_a_key_that_must_wait_longer_for_a_big_request_loses_to_one_that_fits() -> None:
    clock = FakeClock()
    small = make_key("small", clock, tpm=600)  # 10 tok/s, a burst of 20
    big = make_key("big", clock, tpm=60_000)
    small.budget.reserve(20)
    pool = KeyPool([small, big], clock)

    assert (await acquire(pool, est_tokens=500)).alias == "big"


async def test_disabled_keys_are_skipped() -> None:
    clock = FakeClock()
    broken, spare = make_key("broken", clock), make_key("spare", clock, rpm=60)
    broken.disabled_reason = "insufficient quota"
    spare.budget.reserve(1)  # emptier, but the only usable one
    pool = KeyPool([broken, spare], clock)

    assert (await acquire(pool)).alias == "spare"


async def test_a_cooling_key_is_skipped_while_another_can_send() -> None:
    clock = FakeClock()
    cooling, other = make_key("cooling", clock), make_key("other", clock, rpm=600)
    cooling.cooldown_until = clock.now + 30.0
    other.budget.reserve(1)
    pool = KeyPool([cooling, other], clock)

    assert (await acquire(pool)).alias == "other"


async def test_when_every_key_is_disabled_acquire_raises() -> None:
    clock = FakeClock()
    keys = [make_key(a, clock) for a in "ab"]
    for key in keys:
        key.disabled_reason = "invalid api key"

    with pytest.raises(NoUsableKeyError):
        await acquire(KeyPool(keys, clock))


async def test_unequal_keys_are_used_in_proportion_to_their_limits() -> None:
    clock = FakeClock()
    limits = {"a": 60, "b": 120, "c": 240, "d": 480}
    pool = KeyPool([make_key(alias, clock, rpm=rpm) for alias, rpm in limits.items()], clock)
    start = clock.now

    used = Counter([(await acquire_on_fake_time(pool, clock)).alias for _ in range(3000)])

    minutes = (clock.now - start) / 60.0
    assert minutes == pytest.approx(3000 / sum(limits.values()), rel=0.02)
    for alias, rpm in limits.items():
        burst = rpm / 30  # two seconds of the limit, spent at the start
        assert used[alias] == pytest.approx(rpm * minutes, abs=burst + 2), alias


# waiting -----------------------------------------------------------------------------


async def test_acquire_waits_until_a_budget_refills() -> None:
    key = make_key("a", time.monotonic, rpm=600)  # one request every 0.1 s once drained
    key.budget.requests.drain()
    pool = KeyPool([key], time.monotonic)

    waiting = asyncio.create_task(acquire(pool))
    await settle()
    assert not waiting.done()

    assert await waiting is key


async def test_acquire_waits_out_a_cooldown() -> None:
    key = make_key("a", time.monotonic)
    key.cooldown_until = time.monotonic() + 0.1
    pool = KeyPool([key], time.monotonic)

    waiting = asyncio.create_task(acquire(pool))
    await settle()
    assert not waiting.done()

    assert await waiting is key


async def test_notify_wakes_a_waiting_acquire_at_once() -> None:
    key = make_key("a", time.monotonic)
    key.cooldown_until = time.monotonic() + 3600.0
    pool = KeyPool([key], time.monotonic)
    waiting = asyncio.create_task(acquire(pool))
    await settle()

    key.cooldown_until = 0.0  # e.g. the operator reset it
    pool.notify()

    assert await waiting is key  # long before the hour is up (GUARD would fire)


async def test_a_waiting_acquire_raises_once_its_keys_are_disabled() -> None:
    key = make_key("a", time.monotonic)
    key.cooldown_until = time.monotonic() + 3600.0
    pool = KeyPool([key], time.monotonic)
    waiting = asyncio.create_task(acquire(pool))
    await settle()

    key.disabled_reason = "insufficient quota"
    pool.notify()

    with pytest.raises(NoUsableKeyError):
        await waiting


async def test_a_key_that_recovers_from_a_cooldown_is_used_again() -> None:
    clock = FakeClock()
    a, b = make_key("a", clock, rpm=60), make_key("b", clock, rpm=60)
    a.cooldown_until = clock.now + 5.0
    pool = KeyPool([a, b], clock)
    assert (await acquire(pool)).alias == "b"

    clock.advance(5.0)

    assert (await acquire(pool)).alias == "a"


# KeyState ------------------------------------------------------------------------------


def test_used_last_minute_counts_requests_and_tokens_of_the_last_sixty_seconds() -> None:
    clock = FakeClock()
    key = make_key("a", clock)
    key.record_usage(100)
    clock.advance(30.0)
    key.record_usage(50)

    assert key.used_last_minute() == (2, 150)
    clock.advance(30.0)
    assert key.used_last_minute() == (2, 150)  # exactly a minute old still counts
    clock.advance(0.5)
    assert key.used_last_minute() == (1, 50)
    clock.advance(60.0)
    assert key.used_last_minute() == (0, 0)


def test_sending_rpm_is_the_recent_rate_in_requests_per_minute() -> None:
    clock = FakeClock()
    key = make_key("a", clock)
    assert key.sending_rpm() == 0.0

    for _ in range(30):
        key.record_usage(10)
        clock.advance(0.5)  # 120 a minute for 15 s

    assert key.sending_rpm() == pytest.approx(120.0, rel=0.05)


def test_sending_rpm_of_a_single_request_is_not_inflated_beyond_one_second() -> None:
    clock = FakeClock()
    key = make_key("a", clock)

    key.record_usage(10)

    assert key.sending_rpm() == 60.0


def test_a_key_is_usable_until_disabled_and_cools_for_the_time_left() -> None:
    clock = FakeClock()
    key = make_key("a", clock)
    key.cooldown_until = clock.now + 2.5

    assert key.usable
    assert key.cooling_for() == 2.5
    clock.advance(5.0)
    assert key.cooling_for() == 0.0
    key.disabled_reason = "invalid api key"
    assert not key.usable


async def test_a_spare_lease_takes_only_room_that_nothing_waiting_would_take() -> None:
    """A hedge leases with `spare=1`: while the key has room for one request, that room is
    left to requests that are not hedges; once two would fit, the hedge goes."""
    clock = FakeClock()
    key = make_key("a", clock, rpm=60)  # one a second, a first burst of two
    key.budget.reserve(1)
    pool = KeyPool([key], clock)

    hedge = asyncio.create_task(pool.lease(1, spare=1))
    await settle()
    assert not hedge.done(), "room for one only: not a hedge's"
    async with asyncio.timeout(GUARD):
        real = await pool.lease(1)  # at once, though the hedge asked first
    assert real.key is key and not hedge.done()

    clock.advance(2.0)  # room for two again
    pool.notify()
    await settle()
    assert hedge.done() and hedge.result().key is key
