"""Admission and send: one loop hands queued batches to keys as the gates allow.

A batch is admitted when the job is running (not paused), memory is below
its hard limit, a concurrency slot is free and some key's budget can take
its estimate (prompt tokens plus the output learned so far).  Each admitted
batch is sent in a task of its own and holds claims until its call ends —
the slot, its chunks in the in-flight count, its `KeyLease` — given back
exactly once, whether the call came back or was cancelled (stop now).
A key pool that reserves through a round trip (a cluster's, in Redis) has
several leases asked for at once (`KeyPool.leases_at_once`), each batch
holding its slot while it waits, so a full bucket is spent at the
concurrency's pace, not one round trip per request.

The concurrency limit in force (the effective one) is worked out once a
second (`adapt`) under the operator's ceiling (the engine's controls): what
the keys' budgets can use in flight (Little's law: their headroom and rate
times the observed latency) once the providers have said what they allow,
else adaptive concurrency's AIMD value — so a burst the provider grants is
never held back by a controller still feeling its way.  The memory breaker
halves it above the soft limit (`memory_changed`) until memory is back.

A request far beyond its key's usual latency (`KeyLatency.patience`: a
high quantile times a margin, once there are enough answers to say) is
taken for hung (`HangDeadline`, which also catches hangs sent before the
key's patience was known, as in a full bucket's opening burst):
abandoned — its connection closed, so no answer can come
and store its chunks twice — and failed as a timeout, which requeues its
batch.  The preset's request timeout stays the ceiling.  The provider
counted the request when it took it, so its reservation stays spent.

With `[job] budget_usd` (`SpendBudget`) a batch also reserves its
worst-case cost before its key is chosen, is sent with the `max_tokens`
that reservation pays for, and settles it when its call ends; a batch the
budget's last room cannot take is tried chunk by chunk (one process only),
and one that does not fit ends admission (`on_budget_reached`).  Such a
job does not hedge: a second request is a second bill.

What the call brought back goes to the outcomes (`BatchOutcomes`).  When no
key can serve any more, every batch still to come fails with the keys'
reasons instead of waiting forever, and `on_no_key` is told once; if it
stops admission instead (a worker of a cluster), nothing is failed.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from engine.config.settings import Preset, PromptSettings, ProviderSettings
from engine.limits.adaptive_concurrency import AdaptiveConcurrency
from engine.limits.concurrency_limit import ConcurrencyLimit
from engine.limits.hang_deadline import HangDeadline
from engine.limits.job_tail import JobTail
from engine.limits.key_pool import KeyLease, KeyPool, NoUsableKeyError
from engine.limits.memory_guard import MemoryState
from engine.limits.request_cost import (
    affordable_output,
    billed_cost,
    dearest,
    token_cost,
    worst_case_cost,
)
from engine.limits.spend_budget import BudgetReservation, SpendBudget
from engine.observe.events import EventBus, EventKind
from engine.observe.run_stats import RunStats
from engine.pipeline.prompt import build_messages, estimate_prompt_tokens
from engine.pipeline.work_queue import Batch, WorkQueue
from engine.provider.client import CallFailure, CallResult, FailureKind

Clock = Callable[[], float]


class BatchOutcomes(Protocol):
    """Where a sent batch's fate is decided (`engine.pipeline.outcomes.Outcomes`)."""

    async def answered(self, batch: Batch, lease: KeyLease, result: CallResult) -> None: ...

    async def failed(
        self, batch: Batch, lease: KeyLease, failure: CallFailure, sent_at: float
    ) -> None: ...

    async def give_up(self, batch: Batch, reason: str, *, announce: bool = True) -> None: ...

    def split(self, batch: Batch) -> None: ...


class ChatClients(Protocol):
    """The provider clients' chat call (`engine.provider.client.ProviderClients`)."""

    async def chat(
        self,
        key_id: str,
        model: str,
        messages: list[dict[str, str]],
        timeout_s: float,
        temperature: float | None = None,
        on_wire: Callable[[], None] | None = None,
        max_tokens: int | None = None,
    ) -> CallResult | CallFailure: ...


HEDGE_QUANTILE = 0.5
"""At the tail, a batch already sent twice goes out again once its newest request is out
longer than this quantile of its key's latency (its first hedge goes out at once)."""

HEDGE_SPARE = 1
"""A hedge takes a key's budget only with room for this many more requests left over:
while any request that is not a hedge waits (a retry here, another worker's batch in
a cluster), the buckets never refill that far, so hedges never delay real work."""

HEDGE_SHARE = 0.05
"""Hedges are at most this share of the job's requests (and at least one): each is
paid for like any request, and a job small enough to be all tail would otherwise
send most of its batches twice."""

HEDGE_SENDS = 3
"""A batch is sent at most this many times at the tail, itself included: a hedge draws
its latency afresh and can be slow too, and the job's end then waits for the slower of
two answers again; a third, sent once the hedge is out longer than the median, makes
that wait the slowest of three (a lognormal's 1-in-100 draw waited out before)."""


class SendGate(Protocol):
    """The memory breaker's hold on sending (`engine.limits.memory_guard.MemoryGuard`)."""

    async def wait_to_send(self, sends_nothing: Callable[[], bool]) -> None: ...


@dataclass(slots=True, eq=False)
class _Flight:
    """One admitted request: its batch and its lease, whose end gives the claims back.

    A hedge (`twin`) is a second request for a batch already in flight, sent at
    the job's tail: it holds no concurrency slot and no chunks of its own, and
    the first of the two to answer settles the batch (`_Race`).
    """

    batch: Batch
    lease: KeyLease
    messages: list[dict[str, str]] = field(default_factory=list)
    sent_at: float = 0.0
    race: _Race | None = None
    twin: bool = False
    task: asyncio.Task[None] | None = None  # its send
    reservation: BudgetReservation | None = None  # its worst case, held against the budget
    max_tokens: int | None = None  # sent with it: a budgeted request's answer has a ceiling


@dataclass(slots=True, eq=False)
class _Leasing:
    """An admitted batch waiting for a key's lease: its request and what it will be charged.

    `placed` once the lease came (sent) or no key could serve (given up);
    until then the batch and its concurrency slot go back if it is cancelled.
    """

    batch: Batch
    messages: list[dict[str, str]]
    prompt_tokens: int
    estimate: int = 0
    placed: bool = False
    # With a budget: its worst case held, and what it was reckoned with.
    reservation: BudgetReservation | None = None
    counted: int = 0
    ratio: float = 1.0

    def cancel_reservation(self) -> None:
        """Never sent: what it held of the budget is free again."""
        if self.reservation is not None:
            self.reservation.cancel()


@dataclass(slots=True, eq=False)
class _Race:
    """A batch sent more than once: which requests are still out, how many were sent
    and when the last of them was, and whether one settled it."""

    newest_at: float
    sends: set[asyncio.Task[None]] = field(default_factory=set)
    live: int = 1
    sent: int = 1
    settled: bool = False


class Dispatcher:
    """Takes batches from `queue` until it closes, and sends each through a leased key.

    `preset()` is the preset in force; `unstored_rows()` the rows handed to
    the store and not yet written (memory the job still holds).
    """

    def __init__(
        self,
        queue: WorkQueue,
        *,
        keys: KeyPool,
        clients: ChatClients,
        prompt: PromptSettings,
        preset: Callable[[], Preset],
        concurrency: ConcurrencyLimit,
        adaptive: AdaptiveConcurrency,
        running: asyncio.Event,
        memory: SendGate,
        unstored_rows: Callable[[], int],
        stats: RunStats,
        events: EventBus,
        clock: Clock,
        on_no_key: Callable[[str], None],
        input_done: Callable[[], bool] = lambda: False,
        tail_signal: asyncio.Event | None = None,
        budget: SpendBudget | None = None,
        on_budget_reached: Callable[[float], None] = lambda needed_usd: None,
        split_at_budget: bool = True,
    ) -> None:
        self._queue = queue
        # With a budget every request reserves its worst case before it is sent,
        # and is sent with `max_tokens` so that worst case is a ceiling.
        self._budget = budget
        self._on_budget_reached = on_budget_reached
        # Not in a cluster: a split batch's entry settles with its last chunk, so chunks
        # answered before the job stopped would be asked again with the rest.
        self._split_at_budget = split_at_budget
        self._input_done = input_done
        # Set when the input is all out while admission may be waiting for a batch
        # that will not come (a cluster's stream, delivered): the tail begins then.
        self._tail_signal = tail_signal
        # Once the input is read and nothing waits to be sent, hangs are cut shorter.
        self.tail = JobTail()
        self._keys = keys
        self._clients = clients
        self._prompt = prompt
        self._preset = preset
        self._concurrency = concurrency
        self._adaptive = adaptive
        self._running = running
        self._memory = memory
        self._unstored_rows = unstored_rows
        self._stats = stats
        self._events = events
        self._clock = clock
        self._on_no_key = on_no_key
        self.in_flight_chunks = 0
        self.no_key = ""  # why no key can serve any more; then nothing is sent
        self._saturated = False
        self._memory_cap: int | None = None  # the breaker's, above the soft limit
        self._admission: asyncio.Task[None] | None = None
        self._hedging: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        # Leases asked for and not yet come (a pool that reserves through a round trip).
        self._leasing: set[asyncio.Task[None]] = set()
        self._lease_room = asyncio.Semaphore(keys.leases_at_once)
        self._flying: set[_Flight] = set()  # requests out now, for hedging at the tail
        self._flying_changed = asyncio.Event()
        # A batch taken from the queue and not yet on its way: the tail's first hedges
        # wait for it, or they would go to the batches before it.
        self._holding = False
        self._launched = 0  # requests sent, hedges aside
        # Set when the first request comes back (answered or not): the opening requests
        # are on the wire by then, and work that can wait (the input's census) waits
        # for it, so that they are not slowed by it.
        self.first_reply = asyncio.Event()

    # ---------------------------------------------------------------- controls
    def adapt(self, now: float, *, allowed: bool) -> None:
        """Once a second, when `allowed` (the preset asks for it and the job is
        running): the limit follows the keys' budgets, or adaptive concurrency
        where they have not spoken, under the ceiling and the memory breaker."""
        saturated, self._saturated = self._saturated, False  # since the last tick
        if not allowed:
            return
        limit = self._concurrency
        old = limit.limit
        moved = self._adaptive.update(now, saturated)
        new = self._working_limit()
        if new == old:
            return
        limit.set_limit(new)
        if moved is not None and new == moved:  # the budget's moves are every second: not news
            self._events.emit(
                EventKind.CONCURRENCY_CHANGED,
                f"adaptive concurrency {old} → {new}",
                old=old,
                new=new,
                adaptive=True,
            )

    def _working_limit(self) -> int:
        ceiling = self._adaptive.ceiling
        allowed = self._keys.in_flight_allowed()
        working = self._adaptive.current if allowed is None else min(ceiling, allowed)
        if self._memory_cap is not None:
            working = min(working, self._memory_cap)
        return max(1, working)

    def memory_changed(self, new: MemoryState, rss: int) -> None:
        """The memory breaker moved to `new` at `rss` bytes: say so, and halve or
        restore the concurrency limit."""
        mb = rss / 2**20
        if new is MemoryState.OK:
            self._memory_cap = None
            self._concurrency.set_limit(self._working_limit())
            self._events.emit(EventKind.MEMORY_OK, f"memory back to normal ({mb:.0f} MB)", rss=rss)
        elif new is MemoryState.SOFT:
            lowered = max(1, self._concurrency.limit // 2)
            self._memory_cap = lowered
            self._concurrency.set_limit(lowered)
            self._events.emit(
                EventKind.MEMORY_SOFT,
                f"memory {mb:.0f} MB above the soft limit: input paused, concurrency {lowered}",
                rss=rss,
            )
        else:
            self._events.emit(
                EventKind.MEMORY_HARD,
                f"memory {mb:.0f} MB above the hard limit: no new requests until it falls",
                rss=rss,
            )

    def stop_admitting(self) -> None:
        """Admit nothing more; what is in flight finishes (drain, stop)."""
        if self._admission is not None:
            self._admission.cancel()
        if self._hedging is not None:
            self._hedging.cancel()
        for task in tuple(self._leasing):
            task.cancel()

    def abandon_sends(self) -> None:
        """Cancel every request in flight: their chunks stay pending (stop now)."""
        for task in tuple(self._sends):
            task.cancel()

    def sends_nothing(self) -> bool:
        """No request in flight and nothing unstored: holding requests cannot lower memory."""
        return self._concurrency.in_use == 0 and self._unstored_rows() == 0

    # ------------------------------------------------------------------ running
    async def run(self, outcomes: BatchOutcomes) -> None:
        """Admit and send until the queue closes (or admission is stopped) and sends end."""
        async with asyncio.TaskGroup() as sends:
            admission = sends.create_task(self._admit(sends, outcomes), name="admission")
            self._admission = admission
            if self._tail_signal is not None:
                signal = self._tail_signal
                watch = sends.create_task(self._tail_on(signal, sends, outcomes), name="tail")
                admission.add_done_callback(lambda _: watch.cancel())

    async def _tail_on(
        self, signal: asyncio.Event, sends: asyncio.TaskGroup, outcomes: BatchOutcomes
    ) -> None:
        await signal.wait()
        if not self.tail.begun and not (self._queue.fresh_count or self._queue.retry_count):
            self._begin_tail(sends, outcomes)
        # Else batches wait here: admission begins the tail after the last of them.

    def _begin_tail(self, sends: asyncio.TaskGroup, outcomes: BatchOutcomes) -> None:
        self.tail.begin()
        if self._budget is None:  # a hedge is a second bill: not on a budget
            self._hedging = sends.create_task(self._hedge_tail(sends, outcomes), name="hedging")

    async def _admit(self, sends: asyncio.TaskGroup, outcomes: BatchOutcomes) -> None:
        queue, concurrency = self._queue, self._concurrency
        while True:
            if self._holding:
                self._holding = False
                self._flying_changed.set()
            batch = await queue.get()
            self._holding = batch is not None
            if batch is None:
                if self._leasing:  # admission ends when the last of them is sent
                    await asyncio.wait(tuple(self._leasing))
                return
            waiting = queue.fresh_count or queue.retry_count
            if not self.tail.begun and not waiting and self._input_done():
                self._begin_tail(sends, outcomes)
            if self.no_key:
                await outcomes.give_up(batch, self.no_key, announce=False)
                continue
            try:
                await self._running.wait()
                await self._memory.wait_to_send(self.sends_nothing)
                if concurrency.in_use >= concurrency.limit:
                    self._saturated = True
                await concurrency.acquire()
            except asyncio.CancelledError:
                queue.put_retry(batch)
                raise
            messages = build_messages(self._prompt, batch.chunks)
            # The provider charges the prompt at admission (no `max_tokens` is
            # sent); the budget also holds the expected output until the answer.
            prompt_tokens = estimate_prompt_tokens(messages)
            leasing = _Leasing(batch, messages, prompt_tokens)
            leasing.estimate = prompt_tokens + self._output_estimate(len(batch.chunks))
            if self._budget is not None:
                n = len(batch.chunks)
                try:
                    reservation = await self._budget.reserve(
                        functools.partial(self._costs, prompt_tokens, n)
                    )
                except asyncio.CancelledError:
                    concurrency.release()
                    queue.put_retry(batch)
                    raise
                if reservation is None:
                    # Spent + this request would pass the cap, with nothing in flight
                    # to free room: its chunks one by one may fit; a single chunk
                    # that does not stays pending, and admission ends.
                    concurrency.release()
                    if n > 1 and self._split_at_budget:
                        outcomes.split(batch)
                        continue
                    queue.put_retry(batch)
                    self._budget.close()
                    self._on_budget_reached(self._costs(prompt_tokens, n)[1])
                    if self._leasing:
                        await asyncio.wait(tuple(self._leasing))
                    return
                # No wait since its last costs(): what they were reckoned with is this.
                leasing.reservation = reservation
                leasing.counted = self._counted(prompt_tokens)
                leasing.ratio = self._budget.price_ratio
            if self._keys.leases_at_once > 1:
                try:
                    await self._lease_room.acquire()
                except asyncio.CancelledError:
                    concurrency.release()
                    queue.put_retry(batch)
                    leasing.cancel_reservation()
                    raise
                task = sends.create_task(self._lease_and_launch(leasing, sends, outcomes))
                self._leasing.add(task)
                # Also when cancelled before it starts: the batch goes back then.
                task.add_done_callback(functools.partial(self._lease_ended, leasing))
            else:
                try:
                    lease = await self._lease_for(leasing)
                except asyncio.CancelledError:
                    concurrency.release()
                    queue.put_retry(batch)
                    leasing.cancel_reservation()
                    raise
                if lease is None:
                    concurrency.release()
                    await outcomes.give_up(batch, self.no_key, announce=False)
                    continue
                self._launch(leasing, lease, sends, outcomes)
            delay = self._preset().batch_delay_s
            if delay > 0:
                await asyncio.sleep(delay)

    async def _lease_for(self, leasing: _Leasing) -> KeyLease | None:
        """A key's lease for `leasing`'s request; None when no key can serve any more
        (the caller gives the batch up).  Cancelled: the caller puts the batch back."""
        try:
            return await self._keys.lease(leasing.estimate, leasing.prompt_tokens)
        except NoUsableKeyError:
            leasing.cancel_reservation()
            self._no_key_left()
            if (task := asyncio.current_task()) is not None and task.cancelling():
                # `on_no_key` stopped admission (a worker of a cluster): the batch is
                # not failed here, it stays for a worker whose keys still serve.
                raise asyncio.CancelledError from None
            return None

    async def _lease_and_launch(
        self, leasing: _Leasing, sends: asyncio.TaskGroup, outcomes: BatchOutcomes
    ) -> None:
        """One of the leases out at once (`KeyPool.leases_at_once`): send when it comes."""
        lease = await self._lease_for(leasing)
        leasing.placed = True
        if lease is None:
            self._concurrency.release()
            await outcomes.give_up(leasing.batch, self.no_key, announce=False)
            return
        self._launch(leasing, lease, sends, outcomes)

    def _lease_ended(self, leasing: _Leasing, task: asyncio.Task[None]) -> None:
        self._leasing.discard(task)
        self._lease_room.release()
        self._flying_changed.set()  # one batch fewer that the tail's first hedges wait for
        if not leasing.placed:  # cancelled (stopping): the batch waits to be sent again
            self._concurrency.release()
            self._queue.put_retry(leasing.batch)
            leasing.cancel_reservation()

    def _launch(
        self,
        leasing: _Leasing,
        lease: KeyLease,
        sends: asyncio.TaskGroup,
        outcomes: BatchOutcomes,
    ) -> None:
        batch, messages = leasing.batch, leasing.messages
        flight = _Flight(batch, lease, messages, self._clock())
        if (reservation := leasing.reservation) is not None:
            provider = lease.key.provider
            # What the reservation pays for at the dearest prices, it pays for on this key.
            dear = dearest([provider, *self._priced()]) or provider
            max_tokens = min(
                provider.max_output_tokens,
                affordable_output(dear, leasing.counted, reservation.worst_usd / leasing.ratio),
            )
            reservation.lower_to(
                worst_case_cost(provider, leasing.counted, max_tokens) * leasing.ratio
            )
            flight.reservation, flight.max_tokens = reservation, max_tokens
        batch.model = lease.key.provider.model  # the model of the key that last tried it
        self.in_flight_chunks += len(batch.chunks)
        self._launched += 1
        self._fly(flight, sends, outcomes)

    def _fly(
        self, flight: _Flight, sends: asyncio.TaskGroup, outcomes: BatchOutcomes
    ) -> asyncio.Task[None]:
        """Send `flight`'s request in a task of its own, owned by `sends`; the task."""
        task = flight.task = sends.create_task(self._send(flight, outcomes))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)
        # Out from now on for the tail's hedging, before its task starts: once admission
        # has let go of the batch, the hedging must find it here.
        self._flying.add(flight)
        self._flying_changed.set()
        task.add_done_callback(lambda _: self._flying.discard(flight))
        # A task cancelled before it starts (stop now, in the turn that
        # admitted it) never runs its `except`: give its claims back here.
        task.add_done_callback(functools.partial(self._settle_unstarted, flight))
        return task

    def _priced(self) -> list[ProviderSettings]:
        """The providers of the usable keys."""
        return list({k.provider.name: k.provider for k in self._keys.keys if k.usable}.values())

    def _costs(self, prompt_tokens: int, n_chunks: int) -> tuple[float, float]:
        """A request's worst-case cost before its key is chosen, on the dearest usable
        provider, and the least it must be allowed: its answer's expected length."""
        dear = dearest(self._priced())
        if dear is None or self._budget is None:
            return 0.0, 0.0
        counted, ratio = self._counted(prompt_tokens), self._budget.price_ratio
        expected = min(dear.max_output_tokens, self._output_estimate(n_chunks))
        return (
            worst_case_cost(dear, counted, dear.max_output_tokens) * ratio,
            worst_case_cost(dear, counted, expected) * ratio,
        )

    def _counted(self, prompt_tokens: int) -> int:
        """The prompt as the providers have been counting our estimates (never less)."""
        ratio = max((k.budget.charge_ratio for k in self._keys.keys if k.usable), default=1.0)
        return math.ceil(prompt_tokens * max(1.0, ratio))

    def _settle_budget(self, flight: _Flight, outcome: CallResult | CallFailure | None) -> None:
        """Settle a request's reservation with what it is billed (None: no answer came)."""
        reservation = flight.reservation
        if reservation is None:
            return
        if outcome is None and flight.lease.wired_at is None:
            reservation.cancel()  # never sent
            return
        provider = flight.lease.key.provider
        reservation.settle(billed_cost(provider, outcome, reservation.worst_usd))
        billed = outcome.cost_usd if isinstance(outcome, CallResult) else None
        if self._budget is not None and billed is not None:  # the bill against our prices
            assert isinstance(outcome, CallResult)
            estimated = token_cost(provider, outcome.prompt_tokens, outcome.completion_tokens)
            self._budget.learn_price(billed, estimated)

    def _output_estimate(self, n_chunks: int) -> int:
        # Learned from the answers so far: the mean output per chunk with a margin.
        s = self._stats
        per_chunk = s.tokens_out / s.chunks_answered if s.chunks_answered else 150.0
        return int(per_chunk * 1.2 * n_chunks) + 16

    def _give_back(self, flight: _Flight, *, answered: bool) -> None:
        """Return an admitted request's claims, once; unanswered, its budget too."""
        ended = flight.lease.returned() if answered else flight.lease.abandoned()
        if ended and not flight.twin:
            self.in_flight_chunks -= len(flight.batch.chunks)
            self._concurrency.release()

    async def _hedge_tail(self, sends: asyncio.TaskGroup, outcomes: BatchOutcomes) -> None:
        """At the tail, send another request for batches still out, as spare budget
        comes: the job's end is then the fastest of each batch's answers, not the
        slowest of the last requests.  Newest first (`_next_hedge`), up to
        `HEDGE_SENDS` requests a batch and `HEDGE_SHARE` of the job's requests.
        Ends with admission, once nothing is out."""
        admission = self._admission
        if admission is not None:
            admission.add_done_callback(lambda _: self._flying_changed.set())
        while self._flying or (admission is not None and not admission.done()):
            # Cleared before looking, not after: a change while a hedge waits for
            # budget (the last send ends, admission ends) must wake the wait below,
            # or the job's end waits on an event already spent.
            self._flying_changed.clear()
            now = self._clock()
            flight, due = self._next_hedge(now)
            if flight is not None:
                if self._stats.hedged < self._hedges_allowed():
                    if not await self._hedge(flight, sends, outcomes):
                        return  # no key can serve: the rest end as they come
                    continue
                due = math.inf  # spent: the rest end as they come
            try:
                async with asyncio.timeout(None if math.isinf(due) else max(0.0, due - now)):
                    await self._flying_changed.wait()
            except TimeoutError:
                pass

    def _next_hedge(self, now: float) -> tuple[_Flight | None, float]:
        """The batch to send again now, and when the next one is due if none is.

        The newest first: the job ends on the requests sent last, whose latency is
        all ahead of them, while older ones have mostly answered by the time spare
        budget reaches them.  A batch out once is sent again at once (spare budget
        at the tail is otherwise lost); a batch out more than once, when its newest
        request is out longer than its key's `HEDGE_QUANTILE` latency.  No batch is
        sent again for the first time while one is still to be sent (it will be the
        newest).
        """
        first_hedges = not (self._holding or self._leasing)
        best: _Flight | None = None
        best_at, due = -math.inf, math.inf
        looked: set[_Race] = set()  # a batch out twice is looked at once
        # Oldest first, so a batch out twice is represented by its first request.
        for flight in sorted(self._flying, key=lambda flight: flight.sent_at):
            race, newest, sent = flight.race, flight.sent_at, 1
            if race is not None:
                if race in looked or race.settled or race.sent >= HEDGE_SENDS:
                    continue
                looked.add(race)
                newest, sent = race.newest_at, race.sent
            median = flight.lease.key.latency.quantile(HEDGE_QUANTILE)
            if median is None:
                continue  # nothing answered yet: no tail to shorten
            if sent == 1 and not first_hedges:
                continue  # looked at again once it is sent (`_flying_changed`)
            ready = newest if sent == 1 else newest + median
            if ready > now:
                due = min(due, ready)
            elif newest > best_at:
                best, best_at = flight, newest
        return best, due

    def _hedges_allowed(self) -> int:
        return max(1, math.ceil(HEDGE_SHARE * self._launched))

    async def _hedge(
        self, flight: _Flight, sends: asyncio.TaskGroup, outcomes: BatchOutcomes
    ) -> bool:
        """Send `flight`'s batch once more when spare budget comes; False if no key can."""
        race = flight.race
        if race is None:
            # Set before the wait for budget: an answer meanwhile settles the race.
            race = flight.race = _Race(flight.sent_at)
            if flight.task is not None:
                race.sends.add(flight.task)
        # Budget for it before the request it would race ends, or no hedge: the wait
        # for spare budget (or for a key that cools) must not hold the job's end.  Not
        # sent, the batch is looked at again with the others (`_next_hedge`).
        leasing = sends.create_task(self._spare_lease(flight.lease))
        ended = {flight.task} if flight.task is not None else set()
        try:
            await asyncio.wait({leasing, *ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leased = leasing.done()
            if not leased:  # also when the hedging is stopped (drain): no lease left waiting
                leasing.cancel()  # owned by `sends`, which sees it end
        if not leased:
            return True
        lease = leasing.result()
        if lease is None:
            return False
        if race.settled or flight not in self._flying:
            lease.abandoned()  # answered meanwhile: never sent
            return True
        race.live += 1
        race.sent += 1
        race.newest_at = self._clock()
        self._stats.hedged += 1
        twin = _Flight(flight.batch, lease, flight.messages, race.newest_at, race, twin=True)
        race.sends.add(self._fly(twin, sends, outcomes))
        return True

    async def _spare_lease(self, of: KeyLease) -> KeyLease | None:
        """A lease like `of` from budget nobody waits for (`HEDGE_SPARE`); None if no key
        can serve."""
        try:
            return await self._keys.lease(of.estimate, of.charged, spare=HEDGE_SPARE)
        except NoUsableKeyError:
            return None

    def _settle_unstarted(self, flight: _Flight, _task: asyncio.Task[None]) -> None:
        self._give_back(flight, answered=False)  # no-op once the send itself gave them back
        self._settle_budget(flight, None)  # likewise

    async def _send(self, flight: _Flight, outcomes: BatchOutcomes) -> None:
        batch, lease, messages = flight.batch, flight.lease, flight.messages
        provider = lease.key.provider
        timeout = provider.request_timeout_s or self._preset().request_timeout_s
        hang = HangDeadline(lease.key.latency, timeout, self.tail)
        sent_at = self._clock()
        try:
            # Below the timeout the client enforces itself, the key's patience cuts a hang short.
            async with hang:
                outcome = await self._clients.chat(
                    lease.key.key_id,
                    provider.model,
                    messages,
                    timeout,
                    self._prompt.temperature,
                    on_wire=lease.on_wire,
                    max_tokens=flight.max_tokens,
                )
        except asyncio.CancelledError:
            self._give_back(flight, answered=False)
            self._settle_budget(flight, None)
            raise
        except TimeoutError:
            outcome = self._hung(lease, hang.patience)
        finally:
            self._flying.discard(flight)
            self._flying_changed.set()
        self.first_reply.set()
        self._give_back(flight, answered=True)
        self._settle_budget(flight, outcome)
        self._stats.requests += 1
        if flight.race is not None and not self._wins(flight.race, outcome):
            self._keys.notify()
            return
        if isinstance(outcome, CallResult):
            await outcomes.answered(batch, lease, outcome)
        else:
            await outcomes.failed(batch, lease, outcome, sent_at)
        self._keys.notify()

    @staticmethod
    def _wins(race: _Race, outcome: CallResult | CallFailure) -> bool:
        """Whether this answer of a hedged batch settles it: the first success does,
        and a failure only when its twin is out of the race too."""
        race.live -= 1
        if race.settled:
            return False  # its twin answered first
        if isinstance(outcome, CallFailure) and race.live > 0:
            return False  # its twin may still answer
        race.settled = True
        current = asyncio.current_task()
        for send in race.sends:
            if send is not current:
                send.cancel()
        return True

    def _hung(self, lease: KeyLease, patience: float) -> CallFailure:
        latency = lease.key.latency
        if self.tail.begun:
            usual = latency.quantile(latency.TAIL_QUANTILE) or 0.0
            why = f"at the job's tail, beyond {lease.key.key_id}'s usual ({usual:.2f}s at p95)"
        else:
            usual = latency.quantile(latency.HANG_QUANTILE) or 0.0
            why = f"far beyond {lease.key.key_id}'s usual ({usual:.2f}s at p99)"
        message = f"hung: no answer in {patience:.1f}s, {why}; abandoned"
        return CallFailure(FailureKind.TIMEOUT, message, {}, patience)

    def _no_key_left(self) -> None:
        """No key can serve any more: every batch from now on fails with the keys' reasons."""
        if self.no_key:
            return
        reasons = self._keys.disabled_reasons()
        self.no_key = f"no usable key: {reasons}"
        self._on_no_key(reasons)
