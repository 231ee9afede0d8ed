"""A key's lease and health: the accounting every call on a key shares, written once.

A lease holds a request's reserved budget and its place in the key's in-flight
count and ends once; the pool takes what came back — an answer (reconcile,
learn limits from the headers, forgive earlier 429s) or a 429 (cool, lower,
disable).  Answers and 429s come from the real simulator on loopback through
the real openai client; budgets run on a clock the test moves.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from engine.config.settings import KeySettings, Preset, ProviderSettings, RateLimitWaits
from engine.limits.backoff import Backoff
from engine.limits.key_pool import KeyPool, KeyState, NoUsableKeyError, provider_keys
from engine.limits.rate_limiter import KeyBudget
from engine.observe.events import EventBus, EventKind
from engine.provider.client import (
    CallFailure,
    CallResult,
    FailureKind,
    ProviderClients,
    classify_status,
)
from engine.simulation.simulator import SimKey
from tests.engine.limits.test_key_pool import FakeClock

PROVIDER = ProviderSettings(name="sim", base_url="set by the test", model="gpt-4o-mini")
MESSAGES = [{"role": "user", "content": "[id=a] hello there"}]
GUARD = 2.0


def make_key(clock: FakeClock, rpm: int | None = None, tpm: int | None = None) -> KeyState:
    return KeyState("sim/k", "k", PROVIDER, KeyBudget(rpm, tpm, clock), clock)


@pytest.fixture
async def clients() -> AsyncIterator[ProviderClients]:
    made = ProviderClients()
    yield made
    await made.aclose()


async def call(simulator, clients: ProviderClients, **config: object) -> CallResult | CallFailure:
    """One real chat call to a simulator that knows the key."""
    sim = await simulator(keys=(config.pop("key", SimKey("secret", None, None)),), **config)
    clients.add_key("sim/k", "secret", sim.base_url)
    return await clients.chat("sim/k", "gpt-4o-mini", MESSAGES, 5.0)


# -- the lease -----------------------------------------------------------------------


async def test_a_lease_counts_its_request_in_flight_until_it_returns_once() -> None:
    clock = FakeClock()
    key = make_key(clock, rpm=600, tpm=6000)
    pool = KeyPool([key], clock)

    lease = await pool.lease(50)
    assert key.in_flight == 1 and key.requests == 0

    assert lease.returned() is True
    assert lease.returned() is False and lease.abandoned() is False  # ended already
    assert key.in_flight == 0 and key.requests == 1
    assert key.budget.tokens.level() == pytest.approx(150.0)  # spent until reconciled


async def test_an_abandoned_lease_gives_its_budget_back_and_counts_no_request() -> None:
    clock = FakeClock()
    key = make_key(clock, rpm=600, tpm=6000)
    pool = KeyPool([key], clock)

    lease = await pool.lease(50)
    assert lease.abandoned() is True
    assert lease.abandoned() is False

    assert key.in_flight == 0 and key.requests == 0
    assert key.budget.tokens.level() == pytest.approx(200.0)


async def test_a_lease_waits_when_every_key_is_spent_and_fails_when_none_is_left() -> None:
    clock = FakeClock()
    key = make_key(clock, rpm=1)  # the next request fits in a minute, far past the guard
    pool = KeyPool([key], clock, events=EventBus())
    await pool.lease(1)  # the burst of one is spent

    waiting = asyncio.create_task(pool.lease(1))
    for _ in range(5):
        await asyncio.sleep(0)  # let the lease reach its wait
    assert not waiting.done()
    pool.disable(key, "insufficient quota")  # wakes the wait: nothing left to wait for

    with pytest.raises(NoUsableKeyError):
        async with asyncio.timeout(GUARD):
            await waiting


# -- answers ---------------------------------------------------------------------------


async def test_an_answer_reconciles_the_budget_and_forgives_earlier_429s(
    simulator, clients: ProviderClients
) -> None:
    answer = await call(simulator, clients)
    assert isinstance(answer, CallResult)
    clock = FakeClock()
    key = make_key(clock, tpm=60_000)  # a burst of 2000 tokens
    key.refusals.rounds = 3
    pool = KeyPool([key], clock)
    lease = await pool.lease(1000)
    lease.returned()

    pool.answered(lease, 300, answer.headers)

    assert key.budget.tokens.level() == pytest.approx(2000.0 - 300.0)
    assert key.used_last_minute() == (1, 300)
    assert key.refusals.rounds == 0


async def test_the_providers_headers_teach_a_key_its_real_limit(
    simulator, clients: ProviderClients
) -> None:
    answer = await call(simulator, clients, key=SimKey("secret", 600, None))
    assert isinstance(answer, CallResult)
    clock = FakeClock()
    key = make_key(clock, rpm=6000)  # the job file says more than the provider allows
    events = EventBus()
    pool = KeyPool([key], clock, events=events)
    lease = await pool.lease(10)
    lease.returned()

    pool.answered(lease, 10, answer.headers)

    assert key.budget.limit_rpm == 600
    [learned] = [e for e in events.recent() if e.kind is EventKind.LIMIT_LEARNED]
    assert learned.message == "sim/k: rpm limit 6000 → 600 (from the provider's headers)"


# -- 429s ------------------------------------------------------------------------------


async def test_a_429_cools_its_key_for_the_wait_it_asks_and_releases_the_budget(
    simulator, clients: ProviderClients
) -> None:
    refused = await call(simulator, clients, fault_429=1.0)
    assert isinstance(refused, CallFailure) and refused.kind is FailureKind.RATE_LIMITED
    clock = FakeClock()
    key = make_key(clock, rpm=600, tpm=6000)
    told: list[float] = []
    pool = KeyPool([key], clock, events=EventBus(), on_rate_limited=told.append)
    lease = await pool.lease(50)
    lease.returned()

    cooling = pool.refused(lease, refused, sent_at=clock.now)

    assert cooling.wait_s == pytest.approx(0.02)  # retry-after-ms
    assert key.cooling_for() == pytest.approx(0.02)
    assert key.rate_limited == 1 and told == [clock.now]
    assert key.budget.tokens.level() == pytest.approx(200.0)


async def test_a_429_without_retry_after_cools_for_the_wait_its_message_states() -> None:
    # OpenAI's 429 states the wait in its text; its reset header says when the whole
    # minute's bucket is full again — a minute's idle key if taken for the wait.
    body = {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini-2024-07-18 in organization "
            "org-AbCdEfGhIjKlMnOpQrStUvWx on requests per min (RPM): Limit 1200, Used 1200, "
            "Requested 1. Please try again in 50ms. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "59.95s"}
    refused = classify_status(429, headers, body, 0.01)
    clock = FakeClock()
    key = make_key(clock, rpm=1200)
    pool = KeyPool([key], clock, events=EventBus())
    lease = await pool.lease(1)
    lease.returned()

    cooling = pool.refused(lease, refused, sent_at=clock.now)

    assert cooling.wait_s == pytest.approx(0.05)
    assert key.cooling_for() == pytest.approx(0.05)


async def test_a_429_that_asks_longer_than_the_key_may_wait_disables_the_key(
    simulator, clients: ProviderClients
) -> None:
    refused = await call(simulator, clients, fault_429=1.0)
    assert isinstance(refused, CallFailure)
    clock = FakeClock()
    key = make_key(clock)
    events = EventBus()
    waits = replace(RateLimitWaits(), key_wait_s=0.01)
    pool = KeyPool([key], clock, events=events, waits=waits)
    lease = await pool.lease(1)
    lease.returned()

    cooling = pool.refused(lease, refused, sent_at=clock.now)
    pool.report_429(key, refused, cooling, "batch requeued")

    assert not key.usable and "longer than rate_limit_waits.key_wait_s" in key.disabled_reason
    kinds = [e.kind for e in events.recent()]
    assert kinds == [EventKind.KEY_DISABLED, EventKind.RATE_LIMITED]
    assert events.recent()[-1].message.startswith("429 on sim/k (requests): key disabled")


async def test_a_burst_of_429s_on_requests_already_in_flight_counts_once(
    simulator, clients: ProviderClients
) -> None:
    refused = await call(simulator, clients, fault_429=1.0)
    assert isinstance(refused, CallFailure)
    clock = FakeClock()
    key = make_key(clock)
    pool = KeyPool([key], clock)
    leases = [await pool.lease(1) for _ in range(3)]
    sent_at = clock.now
    clock.advance(0.5)

    rounds = []
    for lease in leases:
        lease.returned()
        rounds.append(pool.refused(lease, refused, sent_at=sent_at).rounds)

    assert rounds == [1, 1, 1]
    assert key.rate_limited == 3


# -- reasons and building ---------------------------------------------------------------


def test_the_keys_disabled_reasons_name_three_and_count_the_rest() -> None:
    clock = FakeClock()
    keys = [
        KeyState(f"sim/{a}", a, PROVIDER, KeyBudget(None, None, clock), clock, disabled_reason=r)
        for a, r in zip("abcde", ("quota", "401", "quota", "quota", "401"), strict=True)
    ]

    reasons = KeyPool(keys, clock).disabled_reasons()

    assert reasons == "sim/a: quota; sim/b: 401; sim/c: quota; and 2 more"


def test_keys_are_built_from_the_providers_with_only_their_secrets_masked() -> None:
    clock = FakeClock()
    provider = replace(
        PROVIDER,
        keys=(KeySettings(env="A", alias="a", rpm=100), KeySettings(env="B", alias="b")),
    )

    keys = provider_keys([provider], {"sim/a": "sk-live-abcdef123456", "sim/b": "sk-b"}, clock)

    assert [k.key_id for k in keys] == ["sim/a", "sim/b"]
    assert keys[0].budget.limit_rpm == 100 and keys[1].budget.limit_rpm is None
    shown = keys[0].snapshot()
    assert (
        shown.masked_secret != "sk-live-abcdef123456" and "abcdef123456" not in shown.masked_secret
    )
    assert (shown.state, shown.in_flight, shown.rpm_limit) == ("ok", 0, 100)


def test_backoff_grows_with_the_attempt_within_the_preset_in_force() -> None:
    preset = Preset(backoff_base_s=1.0, backoff_max_s=4.0)
    backoff = Backoff(lambda: preset, random.Random(3))

    first = [backoff.delay_s(1) for _ in range(200)]
    late = [backoff.delay_s(6) for _ in range(200)]

    assert min(first) >= 0.0 and max(first) <= 1.0
    assert max(late) <= 4.0 and max(late) > 2.0
    preset = Preset(backoff_base_s=0.1, backoff_max_s=0.1)  # a preset switched mid-run
    assert max(backoff.delay_s(6) for _ in range(50)) <= 0.1
