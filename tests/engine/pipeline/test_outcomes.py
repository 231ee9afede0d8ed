"""The outcomes on their own: answers become rows, failures are sorted into requeue,
retry, split or failure rows — and every row names the model of the key that tried it.

What comes back is real: the simulator on loopback answers (or fails) through
the real openai client, exactly as the dispatcher would have sent the batch.
Rows go to a real SQLite store.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config.settings import Preset, PromptSettings, ProviderSettings, RateLimitWaits
from engine.limits.adaptive_concurrency import AdaptiveConcurrency
from engine.limits.backoff import Backoff
from engine.limits.key_pool import KeyLease, KeyPool, KeyState
from engine.limits.rate_limiter import KeyBudget
from engine.observe.events import EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.pipeline.held_work import HeldWork
from engine.pipeline.outcomes import Outcomes
from engine.pipeline.prompt import build_messages, estimate_prompt_tokens
from engine.pipeline.records import Chunk, chunk_id
from engine.pipeline.work_queue import Batch, InProcessWorkQueue
from engine.provider.client import (
    CallFailure,
    CallResult,
    FailureKind,
    ProviderClients,
    classify_status,
)
from engine.simulation.simulator import SimKey
from engine.store.sqlite_store import Store

PRESET = Preset(name="test", max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02)
PROMPT = PromptSettings()


def batch(*numbers: int) -> Batch:
    chunks = []
    for n in numbers:
        text = f"chunk number {n} says something"
        chunks.append(Chunk(chunk_id("doc", text), "doc", n, text, est_tokens=8))
    return Batch(tuple(chunks))


def key(name: str, model: str, rpm: int | None = None, tpm: int | None = None) -> KeyState:
    provider = ProviderSettings(
        name=name,
        base_url="set by the test",
        model=model,
        price_input_per_m=1.0,
        price_output_per_m=2.0,
    )
    budget = KeyBudget(rpm, tpm, time.monotonic)
    return KeyState(f"{name}/k", "k", provider, budget, time.monotonic)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "results.db", batch_rows=50, batch_ms=5)
    writer = asyncio.create_task(store.run_writer())
    yield store
    await store.close()
    await writer


@pytest.fixture
async def clients() -> AsyncIterator[ProviderClients]:
    made = ProviderClients()
    yield made
    await made.aclose()


class Desk:
    """Outcomes with their store, queue, held work and keys, and a way to send a batch."""

    def __init__(
        self,
        store: Store,
        clients: ProviderClients,
        keys: list[KeyState],
        *,
        waits: RateLimitWaits | None = None,
        preset: Preset = PRESET,
    ) -> None:
        self.store = store
        self.clients = clients
        self.queue = InProcessWorkQueue(maxsize=100)
        self.held = HeldWork(self.queue)
        self.events = EventBus()
        self.stats = RunStats()
        self.keys = KeyPool(keys, events=self.events, waits=waits)
        self.adaptive = AdaptiveConcurrency(8, time.monotonic())
        backoff = Backoff(lambda: preset, random.Random(1))
        self.outcomes = Outcomes(
            store,
            run_id=7,
            prompt_version="1",
            first_model="model-of-the-first-provider",
            queue=self.queue,
            held=self.held,
            keys=self.keys,
            stats=self.stats,
            events=self.events,
            attempts=self.adaptive,
            preset=lambda: preset,
            backoff=backoff.delay_s,
            waits=waits or RateLimitWaits(),
            clock=time.monotonic,
        )

    def hold(self, b: Batch) -> Batch:
        """The batcher's part: the batch's chunks are held and the batch counted."""
        for c in b.chunks:
            assert self.held.take(c.id)
        self.held.batch_made()
        return b

    async def send(self, b: Batch) -> tuple[KeyLease, CallResult | CallFailure, float]:
        """The dispatcher's part: lease a key, send, end the lease."""
        messages = build_messages(PROMPT, b.chunks)
        lease = await self.keys.lease(estimate_prompt_tokens(messages) + 100)
        b.model = lease.key.provider.model
        sent_at = time.monotonic()
        outcome = await self.clients.chat(
            lease.key.key_id, lease.key.provider.model, messages, 5.0, 0.0
        )
        lease.returned()
        return lease, outcome, sent_at

    async def settle(self, b: Batch) -> CallResult | CallFailure:
        """Send `b` once and let the outcomes decide."""
        lease, outcome, sent_at = await self.send(b)
        if isinstance(outcome, CallResult):
            await self.outcomes.answered(b, lease, outcome)
        else:
            await self.outcomes.failed(b, lease, outcome, sent_at)
        await self.store.flush()
        return outcome

    def kinds(self) -> list[EventKind]:
        return [e.kind for e in self.events.recent()]


def table(store: Store, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(store.path) as conn:
        return list(conn.execute(sql))


async def sim_key(simulator, clients: ProviderClients, k: KeyState, **config: object) -> None:
    """A simulator that knows the key's secret, and the key's client pointed at it."""
    secret = f"secret-{k.key_id}"
    known = config.pop("known", SimKey(secret, None, None))
    sim = await simulator(keys=(known,), **config)
    clients.add_key(k.key_id, secret, sim.base_url)


# -- answers -----------------------------------------------------------------------


async def test_an_answer_becomes_one_row_per_chunk_with_its_share_of_usage_and_cost(
    simulator, clients: ProviderClients, store: Store
) -> None:
    k = key("a", "gpt-4o")
    await sim_key(simulator, clients, k)
    desk = Desk(store, clients, [k])
    b = desk.hold(batch(1, 2, 3))

    answer = await desk.settle(b)

    assert isinstance(answer, CallResult)
    columns = "chunk_id, model, provider, key_alias, input_tokens, cost, run_id"
    rows = table(store, f"SELECT {columns} FROM results ORDER BY seq")
    assert [r[0] for r in rows] == list(b.ids)
    assert {r[1:4] for r in rows} == {("gpt-4o", "a", "k")}
    assert {r[4] for r in rows} == {answer.prompt_tokens // 3}
    cost = (answer.prompt_tokens * 1.0 + answer.completion_tokens * 2.0) / 1e6
    [(stored_cost,)] = table(store, "SELECT SUM(cost) FROM results")
    assert stored_cost == pytest.approx(cost)
    assert {r[6] for r in rows} == {7}
    assert desk.stats.cost_usd == pytest.approx(cost)
    assert desk.stats.tokens == answer.prompt_tokens + answer.completion_tokens
    assert desk.stats.chunks_answered == 3
    assert desk.held.outstanding == 0
    assert all(desk.held.take(c) for c in b.ids)  # let go: the store answers for them now
    assert k.used_last_minute() == (1, answer.prompt_tokens + answer.completion_tokens)


async def test_a_chunk_the_answer_left_out_is_retried_alone(
    simulator, clients: ProviderClients, store: Store
) -> None:
    k = key("a", "gpt-4o")
    await sim_key(simulator, clients, k, fault_missing_id=1.0)
    desk = Desk(store, clients, [k])
    b = desk.hold(batch(1, 2, 3))

    await desk.settle(b)

    assert len(table(store, "SELECT chunk_id FROM results")) == 2
    assert desk.queue.retry_count == 1
    assert desk.held.outstanding == 1  # the batch resolved, the lone chunk made
    retry = await desk.queue.get()
    assert retry is not None and len(retry.chunks) == 1 and retry.model == "gpt-4o"
    assert EventKind.RETRY in desk.kinds()


async def test_a_malformed_answer_is_retried_then_fails_under_the_keys_model(
    simulator, clients: ProviderClients, store: Store
) -> None:
    k = key("b", "gpt-4o")
    await sim_key(simulator, clients, k, fault_malformed=1.0)
    desk = Desk(store, clients, [k])
    b = desk.hold(batch(1, 2))

    for attempt in range(1, PRESET.max_retries + 2):
        await desk.settle(b)
        assert b.attempt == attempt
        if attempt <= PRESET.max_retries:
            retry = await desk.queue.get()
            assert retry is b

    failures = table(store, "SELECT model, reason, attempts, run_id FROM failures")
    assert len(failures) == 2
    model, reason, attempts, run_id = failures[0]
    assert model == "gpt-4o"  # the key that last tried it, not the first provider's
    assert str(reason).startswith("malformed: ") and "(after 3 attempts)" in str(reason)
    assert (attempts, run_id) == (3, 7)
    assert desk.stats.attempts_failed == 3
    assert EventKind.CHUNK_FAILED in desk.kinds()
    assert desk.held.outstanding == 0


# -- failures ----------------------------------------------------------------------


async def test_a_server_error_is_retried_with_backoff(
    simulator, clients: ProviderClients, store: Store
) -> None:
    k = key("a", "gpt-4o")
    await sim_key(simulator, clients, k, fault_5xx=1.0)
    desk = Desk(store, clients, [k])
    b = desk.hold(batch(1))

    await desk.settle(b)

    assert desk.queue.retry_count == 1 and b.attempt == 1
    assert desk.stats.errors_by_kind == {"server_error": 1}
    assert desk.stats.errors_by_key == {"a/k": 1}
    assert k.errors == 1
    assert table(store, "SELECT * FROM failures") == []


@pytest.mark.parametrize(("retry_after", "waited"), [("0.5", 0.5), ("600", 5.0)])
async def test_a_server_error_that_says_when_to_retry_waits_that_long_within_the_bound(
    store: Store, clients: ProviderClients, retry_after: str, waited: float
) -> None:
    """An overloaded provider's 503 may say when to come back: the retry waits that
    long rather than the backoff's fraction of a second, within `backoff_max_s`."""
    k = key("a", "gpt-4o")
    desk = Desk(store, clients, [k], preset=replace(PRESET, backoff_max_s=5.0))
    b = desk.hold(batch(1))
    lease = await desk.keys.lease(100)
    lease.returned()
    body = {"error": {"message": "The server is overloaded.", "type": "server_error"}}
    overloaded = classify_status(503, {"retry-after": retry_after}, body, 0.01)

    await desk.outcomes.failed(b, lease, overloaded, time.monotonic())

    assert desk.queue.retry_count == 1 and b.attempt == 1
    [retry] = [e for e in desk.events.recent() if e.kind is EventKind.RETRY]
    assert retry.data["delay_s"] == pytest.approx(waited)


async def test_a_429_cools_its_key_and_requeues_the_batch_without_counting_an_attempt(
    simulator, clients: ProviderClients, store: Store
) -> None:
    k = key("a", "gpt-4o")
    await sim_key(simulator, clients, k, fault_429=1.0)
    desk = Desk(store, clients, [k])
    second = desk.hold(batch(2))

    refused = await desk.settle(second)

    assert isinstance(refused, CallFailure) and refused.kind is FailureKind.RATE_LIMITED
    assert desk.queue.retry_count == 1
    assert second.attempt == 0 and second.refusals == 1
    assert k.cooling_for() > 0 and k.rate_limited == 1
    assert EventKind.RATE_LIMITED in desk.kinds()


async def test_a_batch_refused_too_often_fails_with_why(
    simulator, clients: ProviderClients, store: Store
) -> None:
    k = key("a", "gpt-4o")
    await sim_key(simulator, clients, k, fault_429=1.0)
    desk = Desk(store, clients, [k], waits=replace(RateLimitWaits(), batch_429s=1))

    await desk.settle(desk.hold(batch(2)))

    [(model, reason)] = table(store, "SELECT model, reason FROM failures")
    assert model == "gpt-4o"
    assert "refused with 429 1 times" in str(reason)


async def test_a_key_out_of_quota_is_disabled_and_the_batch_waits_for_another(
    simulator, clients: ProviderClients, store: Store
) -> None:
    k = key("a", "gpt-4o")
    await sim_key(simulator, clients, k, known=SimKey("secret-a/k", None, None, True))
    desk = Desk(store, clients, [k])
    b = desk.hold(batch(1))

    await desk.settle(b)

    assert k.disabled_reason == "insufficient quota"
    assert desk.queue.retry_count == 1
    assert EventKind.KEY_DISABLED in desk.kinds()
    assert table(store, "SELECT * FROM failures") == []


async def test_a_bad_request_splits_its_batch_so_each_chunk_is_tried_alone(
    simulator, clients: ProviderClients, store: Store
) -> None:
    k = key("a", "gpt-4o")
    # A token limit smaller than the request: the provider refuses it as a bad request.
    await sim_key(simulator, clients, k, known=SimKey("secret-a/k", None, 5))
    desk = Desk(store, clients, [k])
    b = desk.hold(batch(1, 2, 3))

    outcome = await desk.settle(b)

    assert isinstance(outcome, CallFailure) and outcome.kind is FailureKind.BAD_REQUEST
    assert desk.queue.retry_count == 3
    assert desk.held.outstanding == 3
    singles = [await desk.queue.get() for _ in range(3)]
    assert [s.ids for s in singles if s is not None] == [(i,) for i in b.ids]
    assert {s.attempt for s in singles if s is not None} == {1}


async def test_a_batch_no_key_ever_tried_fails_under_the_jobs_first_model(
    store: Store, clients: ProviderClients
) -> None:
    desk = Desk(store, clients, [key("a", "gpt-4o")])
    never_tried = desk.hold(batch(1))
    tried = desk.hold(batch(2))
    tried.model = "gpt-4o-mini"

    await desk.outcomes.give_up(never_tried, "no usable key: a/k: gone", announce=False)
    await desk.outcomes.give_up(tried, "no usable key: a/k: gone", announce=False)
    await store.flush()

    rows = table(store, "SELECT seq, model FROM failures ORDER BY seq")
    assert rows == [(1, "model-of-the-first-provider"), (2, "gpt-4o-mini")]
    assert EventKind.CHUNK_FAILED not in desk.kinds()  # one event already said why
    assert desk.held.outstanding == 0
