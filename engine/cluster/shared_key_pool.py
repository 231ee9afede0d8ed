"""The key pool of a worker that shares its job's key budgets with others, through Redis.

`SharedKeyPool` is the `KeyBudgets` the engine uses in place of `KeyPool`
when a job runs on many workers: the same `acquire` / `lease` / `notify` /
`keys`, and the same health calls (`answered`, `refused`, `sync_headers`,
`in_flight_allowed`, `disable`), so the dispatcher and the outcomes need no
change.  What it changes is where the budget is: a key's buckets, its
header headroom and trust, its learned limits and its cool-down after a 429
live in Redis (`engine.cluster.shared_budget`), so all the workers together
stay within each key's limits.  What stays in the worker is its own: the
requests it has in flight, its counters, latencies and usage windows for
the dashboard, the patience with a key that keeps refusing, and a key it
disabled (quota, a rejected key) — `KeyPool`'s code, not a copy of it.

Reserving is a script call, a round trip to Redis: many leases may be
asked for at once (`leases_at_once`), and those asked while a call is out
go together in the next (`CallCoalescer`), so a worker's admissions are not
bounded by one round trip each — on a busy machine that is tens of
milliseconds, slower than a full bucket lets requests go — nor does each
cost a call.  A reservation that finds no key free sleeps the wait the
script returned, or until `notify()`.  What an answer, a release or a 429 does to a
budget must not hold up the call that reported it, so it is queued, in the
order it happened, and written by `run_writer()` — many at a time, in one
atomic call.  Each key's `budget` here is a `SharedKeyBudget`: it queues the
changes and mirrors the last state Redis returned, which is what the
dashboard and the in-flight sizing read.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from redis.asyncio import Redis

from engine.cluster.call_coalescer import CallCoalescer
from engine.cluster.shared_budget import (
    CLUSTER_SEND_SPREAD_S,
    RETRY_FOR_S,
    Admitted,
    Candidate,
    HeaderSync,
    KeyLimits,
    RateLimited,
    Reconcile,
    Release,
    Settled,
    SettleOp,
    SharedBudget,
    SharedKeyState,
    Waiting,
)
from engine.config.settings import RateLimitWaits
from engine.limits.key_pool import Clock, KeyLease, KeyPool, KeyState, NoUsableKeyError
from engine.limits.rate_limiter import KeyBudget, RateHeaders, TokenBucket
from engine.observe.events import EventBus, EventKind

# Settlements written in one call at most: one round trip for a burst of answers.
_SETTLE_BATCH = 256


class SharedKeyBudget(KeyBudget):
    """One key's budget, kept in Redis: changes are queued to `write`, and
    the inherited state mirrors what Redis last said of it (refilling here
    between answers), for the dashboard and the pool's in-flight sizing.

    Reserving happens in Redis only (`SharedKeyPool`); a header sync's
    learned limit is reported when Redis has applied it, not here.
    """

    def __init__(
        self,
        key_id: str,
        rpm: int | None,
        tpm: int | None,
        write: Callable[[SettleOp], None],
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(rpm, tpm, clock, CLUSTER_SEND_SPREAD_S)
        self.open_cautiously()  # as the shared budget starts
        self.key_id = key_id
        self._write = write

    def reserve(self, est_tokens: int, charged: int | None = None) -> int:
        raise TypeError(f"{self.key_id}: a shared budget is reserved in Redis (SharedKeyPool)")

    def reconcile(self, reserved_tokens: int, used_tokens: int) -> None:
        super().reconcile(reserved_tokens, used_tokens)
        self._write(Reconcile(self.key_id, reserved_tokens, used_tokens))

    def release(self, reserved_tokens: int) -> None:
        super().release(reserved_tokens)
        self._write(Release(self.key_id, reserved_tokens))

    def sync(
        self,
        headers: RateHeaders,
        *,
        sent_at: float | None = None,
        marks: tuple[int, int] = (0, 0),
        reserved_at_send: tuple[int, int] | None = None,
        wired_at: float | None = None,
        own_charge: int | None = None,
    ) -> tuple[str, float, float] | None:
        # The script counts what was reserved since from the shared counters (`marks`),
        # less the answered request's own charge.
        del reserved_at_send, wired_at
        self._write(HeaderSync(self.key_id, headers, sent_at, marks, own_charge))
        return None  # what it teaches comes back from Redis (`SharedKeyPool`)

    def recover(self) -> None:
        """Redis creeps a 429-learned limit back up, as it reserves."""

    def adopt(self, state: SharedKeyState, shift: float) -> None:
        """Mirror `state`; `shift` turns Redis's clock into this worker's."""
        self.limit_rpm, self.limit_tpm = state.limit_rpm, state.limit_tpm
        _follow(self.requests, state.limit_rpm, state.requests_burst_s, state.requests_level)
        _follow(self.tokens, state.limit_tpm, state.tokens_burst_s, state.tokens_level)
        self.header_limits_seen = state.header_limits_seen
        self.headroom_from_headers = state.headroom_from_headers
        self.trust.level = state.trust
        self.reserved_requests = state.reserved_requests
        self.reserved_tokens = state.reserved_tokens
        if state.token_reading is not None:
            reading = state.token_reading
            self._token_reading = replace(reading, taken_at=reading.taken_at + shift)


def _follow(
    bucket: TokenBucket, per_minute: float | None, burst_s: float, level: float | None
) -> None:
    bucket.set_limit(per_minute)
    bucket.set_burst(burst_s)
    if level is not None:
        bucket.set_level(level)


class SharedKeyPool(KeyPool):
    """`KeyBudgets` over the job's budgets in Redis under `prefix`.

    The keys' in-process budgets are replaced by shared ones (their
    configured limits kept).  `open()` joins the shared budgets; `run_writer()`
    must run beside the job (a task of its `TaskGroup`) until `close_writer()`
    — after the last lease has ended — lets it write what is left and return.
    Redis trouble is retried for `retry_for_s`, said in `WARNING` events.
    """

    def __init__(
        self,
        keys: Sequence[KeyState],
        redis: Redis,
        prefix: str,
        clock: Clock = time.monotonic,
        *,
        events: EventBus | None = None,
        waits: RateLimitWaits | None = None,
        backoff: Callable[[int], float] | None = None,
        on_rate_limited: Callable[[float], None] | None = None,
        retry_for_s: float = RETRY_FOR_S,
    ) -> None:
        super().__init__(
            keys,
            clock,
            events=events,
            waits=waits,
            backoff=backoff,
            on_rate_limited=on_rate_limited,
        )
        self.budget = SharedBudget(
            redis, prefix, retry_for_s=retry_for_s, on_trouble=self._say_trouble
        )
        self._shared: dict[str, tuple[KeyState, SharedKeyBudget]] = {}
        for key in self._keys:
            old = key.budget
            shared = SharedKeyBudget(
                key.key_id, old.configured_rpm, old.configured_tpm, self._write, key.clock
            )
            key.budget = shared
            self._shared[key.key_id] = (key, shared)
        self._waiting = asyncio.Lock()  # the reservations that found no room, in turn
        self._pending: deque[SettleOp] = deque()
        self._pending_changed = asyncio.Event()
        # Reservations asked for while a call is out go together in the next: a busy
        # worker pays one round trip for many admissions.
        self._asks: CallCoalescer[tuple[Candidate, ...], Admitted | Waiting] = CallCoalescer(
            lambda asks: self.budget.reserve_many(asks),
            together=lambda candidates: tuple(c.key_id for c in candidates),
            unclaimed=self._give_back,
            idle=self._pending_changed.set,  # a closing writer waits for the asks
        )
        self._closing = False

    async def open(self) -> None:
        """Join the shared budgets: each key's is made unless a worker already
        has (remade if the job file's limits for it changed)."""
        limits = [
            KeyLimits(key.key_id, budget.configured_rpm, budget.configured_tpm)
            for key, budget in self._shared.values()
        ]
        self._adopt(await self.budget.open(limits))

    leases_at_once = 32
    """Reservations asked for at once: enough to spend a full bucket at a busy machine's
    round trips, and to send many in one call when nothing else binds."""

    # admission -------------------------------------------------------------------
    async def _reserve(
        self, est_tokens: int, charged: int | None, spare: int = 0
    ) -> tuple[KeyState, int]:
        key, admitted = await self._reserve_shared(est_tokens, charged, spare)
        return key, admitted.taken

    async def lease(
        self, est_tokens: int, charged: int | None = None, *, spare: int = 0
    ) -> KeyLease:
        """`acquire`, held as a lease, sent at the reservation's time on Redis's clock
        (`spare`: see `KeyBudgets.lease`; the room left over is the cluster's)."""
        key, admitted = await self._reserve_shared(est_tokens, charged, spare)
        return KeyLease(
            key,
            est_tokens,
            charged,
            admitted.taken,
            sent_at=admitted.sent_at,
            marks=admitted.marks,
            own_charge=admitted.charge,
        )

    async def _reserve_shared(
        self, est_tokens: int, charged: int | None, spare: int = 0
    ) -> tuple[KeyState, Admitted]:
        # A first ask at once: with budget free, the reservations out together are
        # admitted together.  With none, they queue and one asks for them all —
        # every waiter asking at each notify() would cost a script call apiece.
        admitted = await self._ask_once(est_tokens, charged, spare=spare)
        if admitted is not None:
            return admitted
        while spare:  # waits apart: at the head of the queue it would hold up the rest
            admitted = await self._ask_once(est_tokens, charged, spare=spare, wait=True)
            if admitted is not None:
                return admitted
        async with self._waiting:
            while True:
                admitted = await self._ask_once(est_tokens, charged, wait=True)
                if admitted is not None:
                    return admitted

    async def _ask_once(
        self, est_tokens: int, charged: int | None, *, spare: int = 0, wait: bool = False
    ) -> tuple[KeyState, Admitted] | None:
        """One reservation asked of Redis; None if no key has room (then, with `wait`,
        after the wait the script gave, or until `notify()`)."""
        usable = [key for key in self._keys if key.usable]
        if not usable:
            raise NoUsableKeyError("every API key is disabled")
        # Taken before asking: a notify() from here on wakes this call (`notify`
        # swaps the event, never clears it).
        changed = self._changed
        answer = await self._ask(usable, est_tokens, charged, spare)
        if isinstance(answer, Admitted):
            self._adopt({answer.key_id: answer.state})
            return self._shared[answer.key_id][0], answer
        self._adopt(answer.states)
        if wait:
            try:
                async with asyncio.timeout(answer.wait_s if math.isfinite(answer.wait_s) else None):
                    await changed.wait()
            except TimeoutError:
                pass
        return None

    def notify(self) -> None:
        """Budget or key health changed: every waiting reservation asks again."""
        self._changed.set()
        self._changed = asyncio.Event()  # for the calls that ask from now on

    async def _ask(
        self, usable: Sequence[KeyState], est_tokens: int, charged: int | None, spare: int = 0
    ) -> Admitted | Waiting:
        candidates = []
        for key in usable:
            budget = self._shared[key.key_id][1]
            candidates.append(
                Candidate(
                    key.key_id,
                    budget.configured_rpm,
                    budget.configured_tpm,
                    est_tokens,
                    budget.charge_of(est_tokens, charged),
                    key.cooling_for(),
                    spare,
                )
            )
        # Cancelled while its call is out, a reservation is given back (`_give_back`).
        return await self._asks.ask(tuple(candidates))

    def _give_back(self, _candidates: tuple[Candidate, ...], answer: Admitted | Waiting) -> None:
        """A reservation whose asker was cancelled while Redis made it."""
        if isinstance(answer, Admitted):
            self._write(Release(answer.key_id, answer.taken))

    # health ----------------------------------------------------------------------
    def _cool(self, key: KeyState, now: float, wait_s: float, rate_kind: str) -> None:
        """A 429: this worker holds the key back at once; Redis cools it for
        every worker and its budget learns (drained, trust, limit) in one script."""
        key.cooldown_until = max(key.cooldown_until, now + wait_s)
        budget = self._shared[key.key_id][1]
        (budget.tokens if rate_kind == "tokens" else budget.requests).drain()
        self._write(RateLimited(key.key_id, rate_kind, wait_s))

    # writing ---------------------------------------------------------------------
    def _write(self, op: SettleOp) -> None:
        # Bounded by the leases in flight: each queues a few settlements at most.
        self._pending.append(op)
        self._pending_changed.set()

    async def run_writer(self) -> None:
        """Write what answers, releases and 429s did to the shared budgets, in
        the order they happened, until `close_writer()` and all is written."""
        while True:
            if self._pending:
                ops = [
                    self._pending.popleft() for _ in range(min(len(self._pending), _SETTLE_BATCH))
                ]
                self._learn(ops, await self.budget.settle(ops))
                self.notify()  # refunds and cool-downs: waiting admissions look again
                continue
            if self._closing and not self._asks.busy:
                return
            self._pending_changed.clear()
            await self._pending_changed.wait()

    def close_writer(self) -> None:
        """Nothing more will be queued: `run_writer()` ends once all is written."""
        self._closing = True
        self._pending_changed.set()

    def _learn(self, ops: Sequence[SettleOp], settled: Settled) -> None:
        for op, learned in zip(ops, settled.learned, strict=True):
            key = self._shared[op.key_id][0]
            if learned.limit is not None:
                source = "429s" if isinstance(op, RateLimited) else "the provider's headers"
                self._limit_learned(key, learned.limit, source)
            if learned.distrust is not None and isinstance(op, RateLimited):
                self._headers_distrusted(key, op.kind, *learned.distrust)
        self._adopt(settled.states)

    def _adopt(self, states: Mapping[str, SharedKeyState]) -> None:
        now = self._clock()
        for key_id, state in states.items():
            key, budget = self._shared[key_id]
            shift = now - state.now
            budget.adopt(state, shift)
            key.cooldown_until = max(key.cooldown_until, state.cooldown_until + shift)

    def _say_trouble(self, message: str) -> None:
        self._events.emit(EventKind.WARNING, message)
