"""The dispatcher on its own: admission gates, the key lease, the send, claims given back once.

The real simulator on loopback answers through the real openai client and a
real key pool; the outcomes are a recorder that resolves each batch, so the
dispatcher's own behaviour shows apart from what becomes of an answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from engine.config.settings import Preset, PromptSettings, ProviderSettings
from engine.limits.adaptive_concurrency import AdaptiveConcurrency
from engine.limits.concurrency_limit import ConcurrencyLimit
from engine.limits.key_pool import KeyLease, KeyPool, KeyState
from engine.limits.memory_guard import MemoryGuard, MemoryState
from engine.limits.rate_limiter import KeyBudget, RateHeaders
from engine.observe.events import EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.pipeline.dispatcher import HEDGE_SENDS, Dispatcher
from engine.pipeline.held_work import HeldWork
from engine.pipeline.records import Chunk, chunk_id
from engine.pipeline.work_queue import Batch, InProcessWorkQueue
from engine.provider.client import CallFailure, CallResult, ProviderClients
from engine.simulation.simulator import SimKey

GUARD = 10.0  # fail instead of hanging when a wake-up never comes
PRESET = Preset(name="test", concurrency=4, batch_size=2, request_timeout_s=5.0)


def batch(*numbers: int) -> Batch:
    chunks = []
    for n in numbers:
        text = f"chunk number {n}"
        chunks.append(Chunk(chunk_id("doc", text), "doc", n, text, est_tokens=4))
    return Batch(tuple(chunks))


@dataclass
class Recorder:
    """Outcomes that remember what came back and resolve each batch."""

    held: HeldWork
    answered_ids: list[tuple[str, ...]] = field(default_factory=list)
    failures: list[CallFailure] = field(default_factory=list)
    given_up: list[tuple[tuple[str, ...], str, bool]] = field(default_factory=list)
    leases: list[KeyLease] = field(default_factory=list)

    async def answered(self, batch: Batch, lease: KeyLease, result: CallResult) -> None:
        lease.key.latency.record(result.latency_s)  # as the real outcomes' key pool does
        self.answered_ids.append(batch.ids)
        self.leases.append(lease)
        self.held.batch_resolved()

    async def failed(
        self, batch: Batch, lease: KeyLease, failure: CallFailure, sent_at: float
    ) -> None:
        self.failures.append(failure)
        self.held.batch_resolved()

    async def give_up(self, batch: Batch, reason: str, *, announce: bool = True) -> None:
        self.given_up.append((batch.ids, reason, announce))
        self.held.batch_resolved()

    def split(self, batch: Batch) -> None:
        raise AssertionError("only a budget splits batches, and these tests set none")


class CountingClients:
    """The real clients, counting the calls in flight at once."""

    def __init__(self, clients: ProviderClients) -> None:
        self._clients = clients
        self.now = 0
        self.most = 0

    async def chat(
        self,
        key_id: str,
        model: str,
        messages: list[dict[str, str]],
        timeout_s: float,
        temperature: float | None = None,
        on_wire: Callable[[], None] | None = None,
        max_tokens: int | None = None,
    ) -> CallResult | CallFailure:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await self.provider_side(messages)
            return await self._clients.chat(
                key_id,
                model,
                messages,
                timeout_s,
                temperature,
                on_wire=on_wire,
                max_tokens=max_tokens,
            )
        finally:
            self.now -= 1

    async def provider_side(self, messages: list[dict[str, str]]) -> None:
        """Before the real call: a provider's own delays, in the tests that want them."""


class SlowFirstSends(CountingClients):
    """The real clients, but the first `slow` requests of a batch holding `marked` go
    unanswered, as from a provider whose latency drew its far tail; every other
    answer takes `latency_s`.  `marked_at`: when each request for that batch came."""

    def __init__(
        self, clients: ProviderClients, marked: str, slow: int, latency_s: float = 0.0
    ) -> None:
        super().__init__(clients)
        self._marked = marked
        self._slow = slow
        self._latency_s = latency_s
        self.marked_calls = 0
        self.marked_at: list[float] = []

    async def provider_side(self, messages: list[dict[str, str]]) -> None:
        if any(self._marked in message["content"] for message in messages):
            self.marked_calls += 1
            self.marked_at.append(time.monotonic())
            if self.marked_calls <= self._slow:
                await asyncio.sleep(GUARD)
        await asyncio.sleep(self._latency_s)


class Desk:
    """A dispatcher with its queue, keys, gates and recorder.

    `chat` stands between the dispatcher and the real clients (counting by default);
    `input_done` says the input is all read, so the batch last out begins the tail.
    """

    def __init__(
        self,
        clients: ProviderClients,
        keys: list[KeyState],
        concurrency: int,
        *,
        chat: CountingClients | None = None,
        input_done: Callable[[], bool] = lambda: False,
    ) -> None:
        self.queue = InProcessWorkQueue(maxsize=100)
        self.held = HeldWork(self.queue)
        self.events = EventBus()
        self.keys = KeyPool(keys, events=self.events)
        self.stats = RunStats()
        self.limit = ConcurrencyLimit(concurrency)
        self.adaptive = AdaptiveConcurrency(concurrency, time.monotonic())
        self.running = asyncio.Event()
        self.running.set()
        self.memory = MemoryGuard(2048, 4096, on_change=lambda *_: None, read_rss=lambda: 1)
        self.clients = chat or CountingClients(clients)
        self.recorder = Recorder(self.held)
        self.no_key: list[str] = []
        self.dispatcher = Dispatcher(
            self.queue,
            keys=self.keys,
            clients=self.clients,
            prompt=PromptSettings(),
            preset=lambda: PRESET,
            concurrency=self.limit,
            adaptive=self.adaptive,
            running=self.running,
            memory=self.memory,
            unstored_rows=lambda: 0,
            stats=self.stats,
            events=self.events,
            clock=time.monotonic,
            on_no_key=self.no_key.append,
            input_done=input_done,
        )

    async def send(self, *batches: Batch) -> asyncio.Task[None]:
        """Queue `batches` as the whole input and start dispatching."""
        for b in batches:
            self.held.batch_made()
            await self.queue.put(b)
        self.held.input_ended()
        return asyncio.create_task(self.dispatcher.run(self.recorder))


def key(name: str, model: str, base_url: str, rpm: int | None = None) -> KeyState:
    provider = ProviderSettings(name=name, base_url=base_url, model=model)
    return KeyState(
        f"{name}/k", "k", provider, KeyBudget(rpm, None, time.monotonic), time.monotonic
    )


@pytest.fixture
async def clients() -> AsyncIterator[ProviderClients]:
    made = ProviderClients()
    yield made
    await made.aclose()


async def finish(task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(GUARD):
        await task


def claims_all_back(desk: Desk) -> bool:
    return (
        desk.dispatcher.in_flight_chunks == 0
        and desk.limit.in_use == 0
        and all(k.in_flight == 0 for k in desk.keys.keys)
    )


async def test_every_batch_is_sent_through_a_leased_key_and_its_claims_come_back(
    simulator, clients: ProviderClients
) -> None:
    sim = await simulator(keys=(SimKey("secret", None, None),))
    clients.add_key("sim/k", "secret", sim.base_url)
    desk = Desk(clients, [key("sim", "gpt-4o", sim.base_url)], concurrency=4)

    await finish(await desk.send(batch(1, 2), batch(3, 4), batch(5)))

    assert sorted(desk.recorder.answered_ids) == sorted(
        [batch(1, 2).ids, batch(3, 4).ids, batch(5).ids]
    )
    assert claims_all_back(desk)
    the_key = desk.keys.keys[0]
    assert the_key.requests == desk.stats.requests == sim.stats.requests == 3
    assert all(lease.key is the_key and lease.estimate > 0 for lease in desk.recorder.leases)


async def test_no_more_requests_are_in_flight_than_the_concurrency_limit(
    simulator, clients: ProviderClients
) -> None:
    sim = await simulator(keys=(SimKey("secret", None, None),), latency_s=(0.05, 0.05))
    clients.add_key("sim/k", "secret", sim.base_url)
    desk = Desk(clients, [key("sim", "gpt-4o", sim.base_url)], concurrency=2)

    await finish(await desk.send(*(batch(n) for n in range(8))))

    assert len(desk.recorder.answered_ids) == 8
    assert desk.clients.most == 2


async def test_a_batch_that_waited_for_a_slot_lets_adaptive_concurrency_grow_once(
    simulator, clients: ProviderClients
) -> None:
    sim = await simulator(keys=(SimKey("secret", None, None),))
    clients.add_key("sim/k", "secret", sim.base_url)
    desk = Desk(clients, [key("sim", "gpt-4o", sim.base_url)], concurrency=1)
    desk.adaptive.ceiling = 3  # room to grow above the working limit of 1
    await finish(await desk.send(batch(1), batch(2)))  # the second waited for the slot
    later = time.monotonic() + 60.0

    desk.dispatcher.adapt(later, allowed=True)
    assert desk.limit.limit == 2
    desk.dispatcher.adapt(later + 60.0, allowed=True)  # nothing waited since the last tick

    assert desk.limit.limit == 2


async def test_a_paused_job_sends_nothing_until_it_runs_again(
    simulator, clients: ProviderClients
) -> None:
    sim = await simulator(keys=(SimKey("secret", None, None),))
    clients.add_key("sim/k", "secret", sim.base_url)
    desk = Desk(clients, [key("sim", "gpt-4o", sim.base_url)], concurrency=4)
    desk.running.clear()

    task = await desk.send(batch(1), batch(2))
    await asyncio.sleep(0.2)
    assert sim.stats.requests == 0

    desk.running.set()
    await finish(task)
    assert len(desk.recorder.answered_ids) == 2


async def test_a_failure_goes_to_the_outcomes_with_its_claims_given_back(
    simulator, clients: ProviderClients
) -> None:
    sim = await simulator(keys=(SimKey("secret", None, None),), fault_5xx=1.0)
    clients.add_key("sim/k", "secret", sim.base_url)
    desk = Desk(clients, [key("sim", "gpt-4o", sim.base_url)], concurrency=4)

    await finish(await desk.send(batch(1)))

    assert [f.kind.value for f in desk.recorder.failures] == ["server_error"]
    assert claims_all_back(desk)
    assert desk.keys.keys[0].requests == 1


async def test_the_first_reply_is_told_whether_it_answered_or_failed(
    simulator, clients: ProviderClients
) -> None:
    # What waits for the opening requests to be out (the input's census) waits on it.
    sim = await simulator(keys=(SimKey("secret", None, None),), fault_5xx=1.0)
    clients.add_key("sim/k", "secret", sim.base_url)
    desk = Desk(clients, [key("sim", "gpt-4o", sim.base_url)], concurrency=4)
    desk.running.clear()
    task = await desk.send(batch(1))
    await asyncio.sleep(0.1)
    assert not desk.dispatcher.first_reply.is_set()  # nothing sent yet

    desk.running.set()
    await finish(task)

    assert desk.dispatcher.first_reply.is_set()
    assert [f.kind.value for f in desk.recorder.failures] == ["server_error"]


async def test_a_batch_remembers_the_model_of_the_key_that_tried_it(
    simulator, clients: ProviderClients
) -> None:
    sim = await simulator(keys=(SimKey("secret", None, None),), fault_5xx=1.0)
    clients.add_key("b/k", "secret", sim.base_url)
    desk = Desk(clients, [key("b", "gpt-4o", sim.base_url)], concurrency=4)
    tried = batch(1)

    await finish(await desk.send(tried))

    assert tried.model == "gpt-4o"


async def test_stop_now_abandons_requests_in_flight_and_their_budget_comes_back(
    simulator, clients: ProviderClients
) -> None:
    sim = await simulator(keys=(SimKey("secret", None, None),), latency_s=(5.0, 5.0))
    clients.add_key("sim/k", "secret", sim.base_url)
    the_key = key("sim", "gpt-4o", sim.base_url, rpm=6000)
    the_key.budget.tokens.set_limit(600_000)
    before = the_key.budget.tokens.level()
    desk = Desk(clients, [the_key], concurrency=4)

    task = await desk.send(batch(1), batch(2))
    async with asyncio.timeout(GUARD):
        while desk.dispatcher.in_flight_chunks < 2:
            await asyncio.sleep(0.01)
    desk.dispatcher.stop_admitting()
    desk.dispatcher.abandon_sends()
    await finish(task)

    assert desk.recorder.answered_ids == [] and desk.recorder.failures == []
    assert claims_all_back(desk)
    assert the_key.requests == 0  # none came back
    assert the_key.budget.tokens.level() == pytest.approx(before, abs=1.0)


async def test_drain_stops_admission_and_puts_the_waiting_batch_back(
    simulator, clients: ProviderClients
) -> None:
    sim = await simulator(keys=(SimKey("secret", None, None),), latency_s=(0.3, 0.3))
    clients.add_key("sim/k", "secret", sim.base_url)
    desk = Desk(clients, [key("sim", "gpt-4o", sim.base_url)], concurrency=1)

    task = await desk.send(batch(1), batch(2))
    async with asyncio.timeout(GUARD):
        while desk.dispatcher.in_flight_chunks < 1:
            await asyncio.sleep(0.01)
    desk.dispatcher.stop_admitting()  # batch 2 waits for the slot: it goes back
    await finish(task)

    assert desk.recorder.answered_ids == [batch(1).ids]  # what was in flight finished
    assert desk.queue.retry_count == 1
    assert claims_all_back(desk)


async def test_with_no_usable_key_every_batch_fails_with_the_keys_reasons(
    clients: ProviderClients,
) -> None:
    dead = key("sim", "gpt-4o", "http://127.0.0.1:1/v1")
    dead.disabled_reason = "insufficient quota"
    desk = Desk(clients, [dead], concurrency=4)

    await finish(await desk.send(batch(1), batch(2), batch(3)))

    reason = "no usable key: sim/k: insufficient quota"
    assert desk.recorder.given_up == [
        (batch(1).ids, reason, False),
        (batch(2).ids, reason, False),
        (batch(3).ids, reason, False),
    ]
    assert desk.no_key == ["sim/k: insufficient quota"]  # told once
    assert claims_all_back(desk)


# -- the concurrency limit's other hands --------------------------------------------


def bare_desk(clients: ProviderClients) -> Desk:
    return Desk(clients, [key("sim", "m", "http://127.0.0.1:1/v1")], concurrency=8)


async def test_memory_above_the_soft_limit_halves_concurrency_and_back_restores_it(
    clients: ProviderClients,
) -> None:
    desk = bare_desk(clients)
    events: list[EventKind] = []
    desk.events.subscribe(lambda e: events.append(e.kind))

    desk.dispatcher.memory_changed(MemoryState.SOFT, 700 * 2**20)
    assert desk.limit.limit == 4
    desk.dispatcher.memory_changed(MemoryState.HARD, 900 * 2**20)
    assert desk.limit.limit == 4  # hard holds sending instead
    desk.dispatcher.memory_changed(MemoryState.OK, 100 * 2**20)
    assert desk.limit.limit == 8  # adaptive concurrency's value

    assert events == [EventKind.MEMORY_SOFT, EventKind.MEMORY_HARD, EventKind.MEMORY_OK]


async def test_adaptive_concurrency_moves_the_limit_only_when_allowed(
    clients: ProviderClients,
) -> None:
    desk = bare_desk(clients)
    now = time.monotonic()
    for i in range(40):  # a 429 storm
        desk.adaptive.record(now + i * 0.01, True)

    desk.dispatcher.adapt(now + 3.0, allowed=False)
    assert desk.limit.limit == 8
    desk.dispatcher.adapt(now + 3.0, allowed=True)

    assert desk.limit.limit < 8
    changed = [e for e in desk.events.recent() if e.kind is EventKind.CONCURRENCY_CHANGED]
    assert len(changed) == 1 and changed[0].data["adaptive"] is True


def key_with_provider_headroom(requests_left: int, latency_s: float) -> KeyState:
    """A key of 1,200 RPM whose provider reported a full minute's bucket with
    `requests_left` in it, and whose answers took `latency_s`."""
    the_key = key("sim", "m", "http://127.0.0.1:1/v1", rpm=1200)
    reset = (1200 - requests_left) / 20.0
    the_key.budget.sync(
        RateHeaders.parse(
            {
                "x-ratelimit-limit-requests": "1200",
                "x-ratelimit-remaining-requests": str(requests_left),
                "x-ratelimit-reset-requests": f"{reset}s",
            }
        ),
        sent_at=time.monotonic(),
        marks=the_key.budget.marks(),
    )
    for _ in range(30):
        the_key.latency.record(latency_s)
    return the_key


async def test_the_limit_follows_what_the_budget_can_use_under_the_ceiling(
    clients: ProviderClients,
) -> None:
    """Little's law: headroom now plus the rate times the latency (with room
    for its spread), never above the operator's ceiling."""
    desk = Desk(clients, [key_with_provider_headroom(0, latency_s=1.0)], concurrency=256)

    desk.dispatcher.adapt(time.monotonic(), allowed=True)
    paced = desk.limit.limit  # nothing left to burst: 20/s × 1 s, with room for the spread
    assert 20 <= paced <= 40

    desk = Desk(clients, [key_with_provider_headroom(1000, latency_s=1.0)], concurrency=256)
    desk.dispatcher.adapt(time.monotonic(), allowed=True)
    assert desk.limit.limit == 256  # a burst of 1,000 waits on nothing but the ceiling


async def test_adaptive_concurrency_does_not_hold_back_a_burst_the_provider_grants(
    clients: ProviderClients,
) -> None:
    desk = Desk(clients, [key_with_provider_headroom(1000, latency_s=1.0)], concurrency=64)
    now = time.monotonic()
    for i in range(40):  # a 429 storm: AIMD alone would cut the limit
        desk.adaptive.record(now + i * 0.01, True)

    desk.dispatcher.adapt(now + 3.0, allowed=True)

    assert desk.adaptive.current < 64
    assert desk.limit.limit == 64


async def test_memory_above_the_soft_limit_still_halves_a_budget_led_limit(
    clients: ProviderClients,
) -> None:
    desk = Desk(clients, [key_with_provider_headroom(1000, latency_s=1.0)], concurrency=64)

    desk.dispatcher.memory_changed(MemoryState.SOFT, 700 * 2**20)
    desk.dispatcher.adapt(time.monotonic(), allowed=True)
    assert desk.limit.limit == 32
    desk.dispatcher.memory_changed(MemoryState.OK, 100 * 2**20)

    assert desk.limit.limit == 64


async def slow_last_batch(
    simulator,
    clients: ProviderClients,
    *,
    slow: int,
    rpm: int | None = None,
    concurrency: int = 1,
    latency_s: float = 0.0,
) -> tuple[Desk, SlowFirstSends]:
    """A desk sending `concurrency` at a time, its input all read, whose batch 999
    goes unanswered on its first `slow` requests."""
    sim = await simulator(keys=(SimKey("secret", None, None),))
    clients.add_key("sim/k", "secret", sim.base_url)
    chat = SlowFirstSends(clients, "chunk number 999", slow=slow, latency_s=latency_s)
    desk = Desk(
        clients,
        [key("sim", "gpt-4o", sim.base_url, rpm=rpm)],
        concurrency=concurrency,
        chat=chat,
        input_done=lambda: True,
    )
    return desk, chat


async def test_at_the_tail_a_batch_whose_hedge_is_slow_too_goes_out_a_third_time(
    simulator, clients: ProviderClients
) -> None:
    """A hedge draws its latency afresh and can be slow too: once it is out longer
    than the key's median, the batch goes out once more, and the first answer settles
    it — instead of both being waited out until the tail's patience gives them up."""
    desk, slow = await slow_last_batch(simulator, clients, slow=2)
    # A hundred requests allow five hedges (`HEDGE_SHARE`): two for the slow last batch
    # even if the one before it, slow too on a busy machine, took two.
    batches = [batch(n) for n in range(1, 100)] + [batch(999)]

    await finish(await desk.send(*batches))

    assert desk.recorder.failures == []
    assert sorted(desk.recorder.answered_ids) == sorted(b.ids for b in batches)
    assert slow.marked_calls == HEDGE_SENDS == 3
    assert claims_all_back(desk)


async def test_at_the_tail_a_hedge_waits_for_spare_budget_instead_of_giving_the_batch_up(
    simulator, clients: ProviderClients
) -> None:
    """On a key refilling ten requests a second, spare budget for a hedge comes
    ~0.2 s after the last batch goes out, far past the median latency: the hedge
    waits for it and answers the batch, which was once left to the tail's patience."""
    desk, slow = await slow_last_batch(simulator, clients, slow=1, rpm=600)
    batches = [batch(n) for n in range(1, 30)] + [batch(999)]

    await finish(await desk.send(*batches))

    assert desk.recorder.failures == []
    assert sorted(desk.recorder.answered_ids) == sorted(b.ids for b in batches)
    assert slow.marked_calls == 2


async def test_at_the_tail_the_batch_sent_last_goes_out_again_first_and_at_once(
    simulator, clients: ProviderClients
) -> None:
    """The job ends on the requests sent last, whose latency is all ahead of them:
    spare budget at the tail goes to the newest batch first, as soon as it is out —
    not to the batches before it while it waits for a slot, and not after the key's
    median latency (here ~0.5 s) has passed."""
    desk, slow = await slow_last_batch(simulator, clients, slow=1, concurrency=4, latency_s=0.5)
    # Twenty requests allow one hedge (`HEDGE_SHARE`): it must be the last batch's.
    batches = [batch(n) for n in range(1, 20)] + [batch(999)]

    await finish(await desk.send(*batches))

    assert desk.recorder.failures == []
    assert sorted(desk.recorder.answered_ids) == sorted(b.ids for b in batches)
    first, hedge = slow.marked_at
    assert hedge - first < 0.25  # a busy machine's scheduling, far under the median
