"""A key's budget in Redis: one atomic script per operation, on Redis's clock,
with the in-process `KeyBudget`'s arithmetic.

Each test runs against a real `redis-server` of its own.  The in-process
budget is the specification: fed the same operations at the same instants
(Redis's, read back from each script's answer), it must end in the same state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.asyncio import Redis

from engine.cluster.shared_budget import (
    CLUSTER_SEND_SPREAD_S,
    Admitted,
    Candidate,
    HeaderSync,
    KeyLimits,
    RateLimited,
    Reconcile,
    Release,
    SharedBudget,
    SharedBudgetUnavailable,
    SharedKeyState,
    Waiting,
)
from engine.limits.rate_limiter import KeyBudget, RateHeaders
from tests.engine.limits.test_key_pool import FakeClock
from tests.redis_server import RedisServer

KEY = "sim/k"


def candidate(rpm: int | None, tpm: int | None, est: int = 100, charge: int | None = None,
              key_id: str = KEY, cooling_s: float = 0.0) -> Candidate:  # fmt: skip
    return Candidate(key_id, rpm, tpm, est, est if charge is None else charge, cooling_s)


def assert_same(state: SharedKeyState, local: KeyBudget, clock: FakeClock) -> None:
    """The shared state is what the in-process budget holds at the same instant."""
    clock.now = state.now
    assert state.limit_rpm == local.limit_rpm
    assert state.limit_tpm == local.limit_tpm
    for shared, bucket in (
        (state.requests_level, local.requests),
        (state.tokens_level, local.tokens),
    ):
        if bucket.unlimited:
            assert shared is None
        else:
            assert shared == pytest.approx(bucket.level(), abs=1e-6)
    assert state.requests_burst_s == pytest.approx(local.requests.burst_s)
    assert state.tokens_burst_s == pytest.approx(local.tokens.burst_s)
    assert state.trust == local.trust.level
    assert state.headroom_from_headers == local.headroom_from_headers
    assert state.header_limits_seen == local.header_limits_seen
    assert (state.reserved_requests, state.reserved_tokens) == (
        local.reserved_requests,
        local.reserved_tokens,
    )


async def admitted(budget: SharedBudget, *candidates: Candidate) -> Admitted:
    answer = await budget.reserve(candidates)
    assert isinstance(answer, Admitted), answer
    return answer


async def test_reserve_reconcile_header_sync_and_a_429_do_what_key_budget_does(
    redis_client: Redis,
) -> None:
    budget = SharedBudget(redis_client, "job")
    clock = FakeClock()
    [state] = (await budget.open([KeyLimits(KEY, 600, 60_000)])).values()
    clock.now = state.now
    local = KeyBudget(600, 60_000, clock, CLUSTER_SEND_SPREAD_S)
    local.open_cautiously()
    assert_same(state, local, clock)

    reservations = []
    reserved_at_send = []  # the local budget's counts up to and including each
    for pause in (0.0, 0.0, CLUSTER_SEND_SPREAD_S * 1.5, 0.0):  # one gap wider than the send spread
        await asyncio.sleep(pause)
        got = await admitted(budget, candidate(600, 60_000, est=100, charge=80))
        clock.now = got.sent_at
        assert got.taken == local.reserve(100, 80) == 100  # the whole estimate, before headers
        local.wired(local.reserved_requests - 1, clock.now)  # on the wire at once
        assert got.marks == local.marks()
        assert got.charge == 80
        assert_same(got.state, local, clock)
        reservations.append(got)
        reserved_at_send.append((local.reserved_requests, local.reserved_tokens))
    # Headers of a request sent now count the two made before the gap; not the rest.
    assert reservations[-1].marks == (2, 160)

    answered = reservations[2]
    headers = RateHeaders(600, 60_000, 4, 59_000, 0.6, 1.5)
    ops = [
        Reconcile(KEY, 100, 40),
        # Its own charge is in its headers: only the one reserved after it is not.
        HeaderSync(KEY, headers, answered.sent_at, answered.marks, answered.charge),
        Release(KEY, 100),
    ]
    settled = await budget.settle(ops)
    clock.now = settled.states[KEY].now
    local.reconcile(100, 40)
    synced = local.sync(
        headers,
        sent_at=answered.sent_at,
        marks=answered.marks,
        reserved_at_send=reserved_at_send[2],
    )
    assert synced is None
    local.release(100)
    assert_same(settled.states[KEY], local, clock)
    assert settled.states[KEY].headroom_from_headers
    assert settled.states[KEY].requests_burst_s == pytest.approx(1.0)  # 4 left + 0.6 s of 10/s

    after = await admitted(budget, candidate(600, 60_000, est=100, charge=80))
    clock.now = after.sent_at
    assert after.taken == local.reserve(100, 80) == 80  # headers count what admission charges
    assert_same(after.state, local, clock)

    refused = await budget.settle([RateLimited(KEY, "requests", 2.0)])
    state = refused.states[KEY]
    clock.now = state.now
    assert refused.learned[0].distrust == local.distrust() == (1.0, 0.5)
    assert refused.learned[0].limit is local.on_rate_limited("requests", 0.0) is None
    assert_same(state, local, clock)
    assert state.requests_level is not None and state.requests_level <= 0  # drained
    assert state.cooling_for() == pytest.approx(2.0)


async def test_a_key_whose_headers_are_believed_less_counts_further_back_as_unseen(
    redis_client: Redis,
) -> None:
    """The send spread widens as a key's trust falls, in Redis as in the process: a
    reservation made longer ago than the spread at full trust, but within the widened
    one, may still reach the provider after a request sent now."""
    budget = SharedBudget(redis_client, "job")
    clock = FakeClock()
    [state] = (await budget.open([KeyLimits(KEY, 60_000, None)])).values()
    clock.now = state.now
    local = KeyBudget(60_000, None, clock, CLUSTER_SEND_SPREAD_S)
    local.open_cautiously()
    # Three 429s the headers did not foresee, storms apart: the widest spread.
    await redis_client.hset(budget.hash_key(KEY), "trust", "0.125")
    local.trust.level = 0.125
    assert local.trust.spread_s() == pytest.approx(8 * CLUSTER_SEND_SPREAD_S)

    marks = []
    for pause in (0.0, CLUSTER_SEND_SPREAD_S * 1.5):
        await asyncio.sleep(pause)
        got = await admitted(budget, candidate(60_000, None))
        clock.now = got.sent_at
        local.reserve(100)
        assert got.marks == local.marks()
        marks.append(got.marks)
    assert marks[-1] == (0, 0)  # the first, reserved 150 ms before, counts as unseen


async def test_a_limit_header_lower_than_the_configured_one_is_learned_once(
    redis_client: Redis,
) -> None:
    budget = SharedBudget(redis_client, "job")
    await budget.open([KeyLimits(KEY, 6000, None)])
    lower = RateHeaders(limit_requests=3000)

    first, second = (await budget.settle([HeaderSync(KEY, lower), HeaderSync(KEY, lower)])).learned

    assert first.limit == ("rpm", 6000.0, 3000.0)
    assert second.limit is None  # already in force: a second worker's sync teaches nothing
    assert (await budget.read([KEY]))[KEY].limit_rpm == 3000.0


async def test_without_limit_headers_a_429_lowers_the_limit_below_the_clusters_answered_rate(
    redis_client: Redis,
) -> None:
    """The rate the key was sending at is counted in Redis, from every worker's answers."""
    budget = SharedBudget(redis_client, "job")
    clock = FakeClock()
    [state] = (await budget.open([KeyLimits(KEY, 600, None)])).values()
    clock.now = state.now
    local = KeyBudget(600, None, clock, CLUSTER_SEND_SPREAD_S)
    local.open_cautiously()
    other_connection = Redis.from_url(_url(redis_client))
    other_worker = SharedBudget(other_connection, "job")
    try:
        await budget.settle([Reconcile(KEY, 10, 10)] * 3)
        await other_worker.settle([Reconcile(KEY, 10, 10)] * 2)

        refused = await budget.settle([RateLimited(KEY, "requests", 1.0)])
    finally:
        await other_connection.aclose()

    answered_rpm = 5 * 60 / 10  # five answers in the last ten seconds
    clock.now = refused.states[KEY].now
    assert refused.learned[0].limit == local.on_rate_limited("requests", answered_rpm)
    assert refused.learned[0].limit == ("rpm", 600.0, pytest.approx(answered_rpm * 0.85))
    assert refused.learned[0].distrust is None  # no headers, nothing to distrust
    assert_same(refused.states[KEY], local, clock)


async def test_a_429_learned_limit_creeps_back_as_keys_are_reserved(redis_client: Redis) -> None:
    budget = SharedBudget(redis_client, "job")
    await budget.open([KeyLimits(KEY, 600, None)])
    lowered = await budget.settle([RateLimited(KEY, "requests", 0.0)])
    assert lowered.learned[0].limit == ("rpm", 600.0, 510.0)  # 0.85 × the limit: nothing answered
    # A minute passes (on Redis's clock the script reads): the limit grows 2 %.
    hash_key = budget.hash_key(KEY)
    last = float(await redis_client.hget(hash_key, "last_recovery"))
    await redis_client.hset(hash_key, "last_recovery", repr(last - 60.0))

    answer = await budget.reserve([candidate(600, None)])

    state = answer.state if isinstance(answer, Admitted) else answer.states[KEY]
    assert state.limit_rpm == pytest.approx(510.0 * 1.02, rel=1e-3)


async def test_the_key_that_can_admit_soonest_takes_the_request_then_the_emptiest(
    redis_client: Redis,
) -> None:
    budget = SharedBudget(redis_client, "job")
    await budget.open([KeyLimits("sim/a", 600, None), KeyLimits("sim/b", 600, None)])
    a, b = candidate(600, None, key_id="sim/a"), candidate(600, None, key_id="sim/b")

    for _ in range(4):
        assert (await admitted(budget, a)).key_id == "sim/a"
    # b has more of its budget free: it takes the next ones until they are level.
    chosen = [(await admitted(budget, a, b)).key_id for _ in range(4)]

    assert chosen[:3] == ["sim/b"] * 3


async def test_an_empty_key_takes_nothing_and_says_when_it_refills(redis_client: Redis) -> None:
    budget = SharedBudget(redis_client, "job")
    await budget.open([KeyLimits(KEY, 60, None)])  # one a second; one at first
    first = await admitted(budget, candidate(60, None))

    answer = await budget.reserve([candidate(60, None)])

    assert isinstance(answer, Waiting)
    left, elapsed = first.state.requests_level, answer.states[KEY].now - first.sent_at
    assert left is not None and left < 1.0
    assert answer.wait_s == pytest.approx((1.0 - left) / 1.0 - elapsed, abs=1e-6)
    assert answer.states[KEY].reserved_requests == 1  # nothing taken


async def test_a_key_cooling_after_a_429_is_skipped_by_every_worker(redis_client: Redis) -> None:
    budget = SharedBudget(redis_client, "job")
    await budget.open([KeyLimits("sim/a", 6000, None), KeyLimits("sim/b", 600, None)])
    await budget.settle([RateLimited("sim/a", "requests", 30.0)])
    other_connection = Redis.from_url(_url(redis_client))
    other_worker = SharedBudget(other_connection, "job")
    a, b = candidate(6000, None, key_id="sim/a"), candidate(600, None, key_id="sim/b")
    try:
        assert {(await admitted(other_worker, a, b)).key_id for _ in range(5)} == {"sim/b"}
        alone = await other_worker.reserve([a])
    finally:
        await other_connection.aclose()

    assert isinstance(alone, Waiting)
    assert 29.0 < alone.wait_s <= 30.0


async def test_a_worker_that_still_holds_a_key_cooling_passes_it_over(redis_client: Redis) -> None:
    budget = SharedBudget(redis_client, "job")
    await budget.open([KeyLimits("sim/a", 6000, None), KeyLimits("sim/b", 600, None)])

    got = await admitted(
        budget,
        candidate(6000, None, key_id="sim/a", cooling_s=5.0),
        candidate(600, None, key_id="sim/b"),
    )

    assert got.key_id == "sim/b"


async def test_a_refund_is_there_for_the_next_reservation(redis_client: Redis) -> None:
    budget = SharedBudget(redis_client, "job")
    await budget.open([KeyLimits(KEY, None, 600)])  # 10 tokens a second: 10 at first
    await admitted(budget, candidate(None, 600, est=10))
    assert isinstance(await budget.reserve([candidate(None, 600, est=8)]), Waiting)

    settled = await budget.settle([Reconcile(KEY, 10, 2)])  # 8 of the 10 were not used

    assert settled.states[KEY].tokens_level == pytest.approx(8.0, abs=0.1)
    assert isinstance(await budget.reserve([candidate(None, 600, est=8)]), Admitted)


async def test_opening_again_keeps_a_budget_and_changed_limits_remake_it(
    redis_client: Redis,
) -> None:
    budget = SharedBudget(redis_client, "job")
    await budget.open([KeyLimits(KEY, 600, None)])
    await admitted(budget, candidate(600, None))

    again = (await budget.open([KeyLimits(KEY, 600, None)]))[KEY]
    changed = (await budget.open([KeyLimits(KEY, 1200, None)]))[KEY]

    assert again.reserved_requests == 1 and again.requests_level == pytest.approx(9.0, abs=0.1)
    assert changed.limit_rpm == 1200.0
    assert changed.requests_level == 20.0  # a fresh first second of the new limit
    assert changed.reserved_requests == 1  # the cluster's count goes on


async def test_a_budget_redis_lost_is_made_again_cautiously(redis_client: Redis) -> None:
    budget = SharedBudget(redis_client, "job")
    await budget.open([KeyLimits(KEY, 600, None)])
    await redis_client.flushall()

    settled = await budget.settle([Reconcile(KEY, 10, 5)])  # nothing to settle against
    got = await admitted(budget, candidate(600, None))

    assert settled.states == {}
    assert got.state.reserved_requests == 1
    assert got.state.requests_level == pytest.approx(9.0, abs=0.1)


async def test_the_budget_survives_a_redis_restart_and_calls_wait_it_out(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        client = Redis.from_url(server.url)
        trouble: list[str] = []
        budget = SharedBudget(client, "job", on_trouble=trouble.append)
        try:
            await budget.open([KeyLimits(KEY, 600, None)])
            for _ in range(3):
                await admitted(budget, candidate(600, None))
            server.kill()

            during = asyncio.create_task(budget.reserve([candidate(600, None)]))
            await asyncio.sleep(0.3)  # the call is failing and retrying meanwhile
            assert not during.done()
            server.start()
            answer = await asyncio.wait_for(during, 15)
        finally:
            await client.aclose()

    assert isinstance(answer, Admitted)
    assert answer.state.reserved_requests == 4  # the three before the crash were kept
    assert budget.retries >= 1
    assert trouble[0].startswith("shared key budgets: Redis did not answer")
    assert trouble[-1].startswith("shared key budgets: Redis answers again")


async def test_a_redis_that_stays_away_ends_the_call_with_a_clear_error(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        client = Redis.from_url(server.url)
        budget = SharedBudget(client, "job", retry_for_s=0.5)
        await budget.open([KeyLimits(KEY, 600, None)])
        server.stop()
        try:
            with pytest.raises(SharedBudgetUnavailable, match=r"Redis did not answer for 0\.5s"):
                await budget.reserve([candidate(600, None)])
        finally:
            await client.aclose()


def _url(client: Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"
