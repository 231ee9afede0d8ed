"""All the keys of all providers, the choice of which one sends next, and their health.

A request goes to the usable key that can admit it soonest, ties broken
by the most free budget — so many keys across several providers are used
at once, in proportion to their limits.  A key cooling down after a 429
or disabled (quota, bad key) is skipped.  Behind the `KeyBudgets`
interface so a Redis-backed pool can share budgets between machines.

Every call on a key — a chat request or an embeddings request — holds a
`KeyLease` from admission to its end, and reports back through the pool:
`answered` (reconcile the budget, learn limits from the headers, forgive
earlier 429s) or `refused` (a 429: cool the key, maybe lower its limit,
disable it when refused too long — `engine.limits.rate_limit_patience`).
So a key's accounting is written once, whoever sent the request.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from engine.config.settings import Preset, ProviderSettings, RateLimitWaits
from engine.limits.backoff import Backoff
from engine.limits.key_latency import KeyLatency
from engine.limits.rate_limit_patience import KeyCooling, KeyRefusals, format_wait
from engine.limits.rate_limiter import (
    KeyBudget,
    RateHeaders,
    parse_retry_after,
    wait_in_message,
)
from engine.observe.eta import KeyOutlook
from engine.observe.events import EventBus, EventKind
from engine.observe.snapshot import KeySnapshot
from engine.provider.redaction import mask_secret

if TYPE_CHECKING:  # the provider client loads the SDK; the pool needs only the type
    from engine.provider.client import CallFailure

Clock = Callable[[], float]
_WINDOW_S = 60.0
# In flight varies about rate × mean latency; room for that keeps the rate whole.
_LATENCY_SPREAD = 1.5


@dataclass(slots=True)
class KeyState:
    """One key's budget, health and counters.  `key_id` is `provider/alias`."""

    key_id: str
    alias: str
    provider: ProviderSettings
    budget: KeyBudget
    clock: Clock
    cooldown_until: float = 0.0
    disabled_reason: str = ""
    in_flight: int = 0
    requests: int = 0
    errors: int = 0
    rate_limited: int = 0
    refusals: KeyRefusals = field(default_factory=KeyRefusals)  # 429s since its last answer
    masked_secret: str = ""  # for display: never the secret itself
    latency: KeyLatency = field(default_factory=KeyLatency)  # of its answers
    # (time, requests, tokens) per finished request in the last minute
    _window: deque[tuple[float, int, int]] = field(default_factory=deque)
    _win_requests: int = 0
    _win_tokens: int = 0
    # (time, tokens) charged at admission in the last minute: the provider's
    # count when it sends no headers
    _charged: deque[tuple[float, int]] = field(default_factory=deque)
    _charged_tokens: int = 0

    @property
    def usable(self) -> bool:
        return not self.disabled_reason

    def cooling_for(self) -> float:
        return max(0.0, self.cooldown_until - self.clock())

    def record_usage(self, tokens: int) -> None:
        now = self.clock()
        self._window.append((now, 1, tokens))
        self._win_requests += 1
        self._win_tokens += tokens
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._window and self._window[0][0] < now - _WINDOW_S:
            _, r, t = self._window.popleft()
            self._win_requests -= r
            self._win_tokens -= t

    def record_admission(self, tokens: int) -> None:
        """A request admitted with `tokens` charged, as we estimate what the provider counts."""
        now = self.clock()
        self._charged.append((now, tokens))
        self._charged_tokens += tokens
        self._trim_charged(now)

    def _trim_charged(self, now: float) -> None:
        while self._charged and self._charged[0][0] < now - _WINDOW_S:
            self._charged_tokens -= self._charged.popleft()[1]

    def tokens_counted(self) -> int:
        """Tokens the provider counts against the per-minute limit: by its
        headers when it sends them, else what admission charged in the last
        60 s (the prompt, plus `max_tokens` when sent)."""
        counted = self.budget.tokens_counted()
        if counted is not None:
            return round(counted)
        self._trim_charged(self.clock())
        # Our estimates, scaled by what the provider has been counting of them.
        return round(self._charged_tokens * self.budget.charge_ratio)

    def used_last_minute(self) -> tuple[int, int]:
        """(requests, tokens) in the last 60 s: the RPM and TPM actually used."""
        self._trim(self.clock())
        return self._win_requests, self._win_tokens

    def answered_rpm(self, window_s: float = 10.0) -> float:
        """Answered requests per minute over the last `window_s` seconds.

        After a 429 this is what the provider really lets through: a short
        window leaves the provider's opening burst behind quickly.
        """
        now = self.clock()
        count = 0
        for stamp, requests, _ in reversed(self._window):
            if stamp < now - window_s:
                break
            count += requests
        return count * 60.0 / window_s

    def snapshot(self) -> KeySnapshot:
        """The key's figures right now, as the snapshot shows them."""
        rpm_used, tpm_used = self.used_last_minute()
        cooling = self.cooling_for()
        state = "disabled" if not self.usable else ("cooling" if cooling > 0 else "ok")
        return KeySnapshot(
            key_id=self.key_id,
            provider=self.provider.name,
            alias=self.alias,
            masked_secret=self.masked_secret,
            rpm_used=rpm_used,
            rpm_limit=self.budget.limit_rpm,
            tpm_used=tpm_used,
            tpm_limit=self.budget.limit_tpm,
            tpm_counted=self.tokens_counted(),
            in_flight=self.in_flight,
            requests=self.requests,
            errors=self.errors,
            rate_limited=self.rate_limited,
            state=state,
            cooldown_s=cooling,
            disabled_reason=self.disabled_reason,
        )

    def outlook(self) -> KeyOutlook:
        """What the ETA needs beyond the key's snapshot: the burst its provider
        still holds, a request's admission charge, its mean latency."""
        requests_left, tokens_left = self.budget.unspent()
        self._trim_charged(self.clock())
        charged = self._charged
        return KeyOutlook(
            requests_left,
            tokens_left,
            self._charged_tokens * self.budget.charge_ratio / len(charged) if charged else None,
            self.latency.mean(),
        )

    def sending_rpm(self) -> float:
        """The rate this key was sending at recently, in requests per minute."""
        self._trim(self.clock())
        if not self._window:
            return 0.0
        span = max(1.0, self.clock() - self._window[0][0])
        return self._win_requests * 60.0 / min(_WINDOW_S, span)


def provider_keys(
    providers: Sequence[ProviderSettings], secrets: Mapping[str, str], clock: Clock
) -> list[KeyState]:
    """A `KeyState` for every key of every provider, with its configured limits.

    `secrets` maps key ids (`provider/alias`) to secrets; only their masked
    form is kept.
    """
    keys: list[KeyState] = []
    for provider in providers:
        for key in provider.keys:
            key_id = f"{provider.name}/{key.alias}"
            budget = KeyBudget(key.rpm, key.tpm, clock)
            budget.open_cautiously()
            budget.pace_until_heard()
            masked = mask_secret(secrets[key_id])
            keys.append(KeyState(key_id, key.alias, provider, budget, clock, masked_secret=masked))
    return keys


class KeyLease:
    """One request's hold on a key, from admission to the end of its call.

    It holds the budget reserved for the request (`taken` tokens of the
    `estimate`; `charged` is what the provider counts at admission) and a
    place in the key's in-flight count, and ends once: `returned()` when the
    call came back, answered or not (the key counts a request; the budget
    stays spent until the pool reconciles it), or `abandoned()` when it never
    will (cancelled: the budget goes back).  Each says whether it was the one
    that ended the lease, so claims tied to it are given back exactly once.
    """

    __slots__ = (
        "_open",
        "charged",
        "estimate",
        "key",
        "marks",
        "own_charge",
        "reserved_at_send",
        "sent_at",
        "taken",
        "wired_at",
    )

    def __init__(
        self,
        key: KeyState,
        estimate: int,
        charged: int | None = None,
        taken: int | None = None,
        *,
        sent_at: float | None = None,
        marks: tuple[int, int] | None = None,
        own_charge: int | None = None,
    ) -> None:
        self.key = key
        self.estimate = estimate
        self.taken = estimate if taken is None else taken
        self.charged = charged  # our estimate of the admission charge, when given
        self._open = True
        # Made in the same turn as the reservation, just before the send: what
        # the answer's headers will not yet count is what is reserved after this.
        # (A budget shared through Redis says both itself, on Redis's clock.)
        self.sent_at = key.clock() if sent_at is None else sent_at
        self.marks = key.budget.marks() if marks is None else marks
        self.reserved_at_send = (key.budget.reserved_requests, key.budget.reserved_tokens)
        # The tokens its reservation counted where the budget is kept elsewhere (Redis).
        self.own_charge = own_charge
        self.wired_at: float | None = None  # when its headers went out (`on_wire`)
        key.in_flight += 1
        key.record_admission(estimate if charged is None else charged)

    def on_wire(self) -> None:
        """Its request's headers are on their way to the provider now."""
        self.wired_at = self.key.clock()
        self.key.budget.wired(self._seq, self.wired_at)

    @property
    def _seq(self) -> int:
        return self.reserved_at_send[0] - 1  # its reservation's number in the budget

    def returned(self) -> bool:
        """The call came back; True if this ended the lease."""
        if not self._open:
            return False
        self.key.budget.sent_or_not(self._seq)
        self._open = False
        self.key.in_flight -= 1
        self.key.requests += 1
        return True

    def abandoned(self) -> bool:
        """The call never came back (cancelled); True if this ended the lease."""
        if not self._open:
            return False
        self._open = False
        self.key.in_flight -= 1
        self.key.budget.release(self.taken)
        self.key.budget.sent_or_not(self._seq)
        return True

    def release(self) -> None:
        """The provider did not count this request: give its reserved budget back."""
        self.key.budget.release(self.taken)


class KeyBudgets(Protocol):
    """Chooses a key and reserves its budget; an in-process or shared implementation."""

    async def acquire(self, est_tokens: int, charged: int | None = None) -> KeyState: ...

    async def lease(
        self, est_tokens: int, charged: int | None = None, *, spare: int = 0
    ) -> KeyLease:
        """A key's budget for one request, held until the request ends.

        `spare`: admit only while room for that many more requests would be
        left over — budget nobody waiting takes (a hedge yields to every
        request that is not one: while those wait, the buckets never refill
        that far)."""
        ...

    def notify(self) -> None: ...

    @property
    def keys(self) -> Sequence[KeyState]: ...


class NoUsableKeyError(RuntimeError):
    """Every key is disabled: the job cannot go on."""


class KeyPool:
    """In-process `KeyBudgets`, and the keys' health.

    `events` hears of learned limits, 429s and disabled keys; `waits` bounds
    how long 429s are waited out; `backoff(1)` is the cool-down of a 429 that
    names no wait; `on_rate_limited(now)` is told of every 429 (the job's
    counters and adaptive concurrency).
    """

    def __init__(
        self,
        keys: Sequence[KeyState],
        clock: Clock = time.monotonic,
        *,
        events: EventBus | None = None,
        waits: RateLimitWaits | None = None,
        backoff: Callable[[int], float] | None = None,
        on_rate_limited: Callable[[float], None] | None = None,
    ) -> None:
        self._keys = list(keys)
        # Requests go on the online providers' keys; a job with none (batch mode only)
        # sends its online retries on its batch-mode keys.
        self._sending = [k for k in self._keys if k.provider.mode != "batch"] or self._keys
        self._clock = clock
        self._changed = asyncio.Event()
        self._events = events if events is not None else EventBus()
        self._waits = waits if waits is not None else RateLimitWaits()
        self._backoff = backoff if backoff is not None else Backoff(Preset).delay_s
        self._on_rate_limited = on_rate_limited

    leases_at_once = 1
    """How many `lease` calls the dispatcher keeps out at once: here a lease with
    budget free returns without waiting, so one; a pool that reserves through a
    round trip says more."""

    @property
    def keys(self) -> Sequence[KeyState]:
        return self._keys

    def notify(self) -> None:
        """Budget or key health changed: re-evaluate waiting admissions."""
        self._changed.set()

    def _best(
        self, est_tokens: int, charged: int | None, spare: int = 0
    ) -> tuple[KeyState | None, float]:
        best: KeyState | None = None
        best_wait, best_room = math.inf, -1.0
        for key in self._sending:
            if not key.usable:
                continue
            key.budget.recover()
            wait = max(key.cooling_for(), key.budget.wait_for(est_tokens, charged, spare))
            room = key.budget.headroom()
            if wait < best_wait - 1e-9 or (abs(wait - best_wait) <= 1e-9 and room > best_room):
                best, best_wait, best_room = key, wait, room
        return best, best_wait

    async def acquire(self, est_tokens: int, charged: int | None = None) -> KeyState:
        """Wait until some key can admit `est_tokens`, reserve it there, return the key.

        `charged`: what the provider counts at admission, when it is less
        (`KeyBudget.reserve`).
        """
        key, _ = await self._reserve(est_tokens, charged)
        return key

    async def _reserve(
        self, est_tokens: int, charged: int | None, spare: int = 0
    ) -> tuple[KeyState, int]:
        while True:
            key, wait = self._best(est_tokens, charged, spare)
            if key is None:
                raise NoUsableKeyError("every API key is disabled")
            if wait <= 0:
                return key, key.budget.reserve(est_tokens, charged)
            self._changed.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def lease(
        self, est_tokens: int, charged: int | None = None, *, spare: int = 0
    ) -> KeyLease:
        """`acquire`, held as a lease: the key counts the request in flight until it ends
        (`spare`: see `KeyBudgets.lease`)."""
        key, taken = await self._reserve(est_tokens, charged, spare)
        return KeyLease(key, est_tokens, charged, taken)

    # health ------------------------------------------------------------------
    def answered(
        self,
        lease: KeyLease,
        used_tokens: int,
        headers: Mapping[str, str],
        latency_s: float | None = None,
        prompt_tokens: int = 0,
    ) -> None:
        """The provider answered `lease`'s request, counting `used_tokens`.

        `latency_s` (chat answers only) joins the key's latency distribution;
        `prompt_tokens` (its usage) teaches what the provider counts of a prompt.
        """
        key = lease.key
        key.budget.heard()
        if lease.charged is not None:
            key.budget.learn_charge(lease.charged, prompt_tokens)
        key.budget.reconcile(lease.taken, used_tokens)
        self.sync_headers(key, headers, lease)
        key.record_usage(used_tokens)
        if latency_s is not None:
            key.latency.record(latency_s)
        key.refusals.answered()

    def sync_headers(
        self, key: KeyState, headers: Mapping[str, str], lease: KeyLease | None = None
    ) -> None:
        """Take what the provider's `x-ratelimit-*` headers say of the key's limits.

        With the `lease` they came back on, what they say is left becomes
        what the key may spend now (less what was reserved since it was
        sent); without it, they only tighten.
        """
        if not headers:
            return
        parsed = RateHeaders.parse(headers)
        if lease is None:
            learned = key.budget.sync(parsed)
        else:
            learned = key.budget.sync(
                parsed,
                sent_at=lease.sent_at,
                marks=lease.marks,
                reserved_at_send=lease.reserved_at_send,
                wired_at=lease.wired_at,
                own_charge=lease.own_charge,
            )
        if learned:
            self._limit_learned(key, learned, "the provider's headers")

    def in_flight_allowed(self) -> int | None:
        """Requests in flight the keys' budgets can use now (Little's law).

        What the usable keys may send at once plus what they refill during
        one mean latency, with a margin for latency's spread.  None until
        every usable key's provider has reported its headroom and answered
        (nothing to go by).
        """
        total = 0.0
        for key in self._sending:
            if not key.usable:
                continue
            mean = key.latency.mean()
            budget = key.budget
            if not budget.headroom_from_headers or budget.requests.unlimited or mean is None:
                return None
            bucket = budget.requests
            total += max(0.0, bucket.level()) + bucket.rate * mean * _LATENCY_SPREAD + 1.0
        return math.ceil(total)

    def refused(self, lease: KeyLease, failure: CallFailure, sent_at: float) -> KeyCooling:
        """A 429 on `lease`'s request, sent at `sent_at`: that key alone waits it out.

        Its limit may be lowered; refused too long with no answer, it cools
        for longer, then is disabled (`engine.limits.rate_limit_patience`).
        """
        key = lease.key
        now = self._clock()
        key.rate_limited += 1
        if self._on_rate_limited is not None:
            self._on_rate_limited(now)
        lease.release()
        wait = parse_retry_after(failure.headers)
        if wait is None:
            wait = wait_in_message(failure.message)
        if wait is None:
            # Asked for no wait: the limit's own reset time is the next best answer.
            limits = RateHeaders.parse(failure.headers)
            reset = (
                limits.reset_tokens_s if failure.rate_kind == "tokens" else limits.reset_requests_s
            )
            wait = reset if reset is not None else self._backoff(1)
        cooling = key.refusals.refused(self._waits, now=now, sent_at=sent_at, retry_after_s=wait)
        if cooling.disabled_reason:
            self.disable(key, cooling.disabled_reason)
            return cooling
        self._cool(key, now, cooling.wait_s, failure.rate_kind)
        return cooling

    def _cool(self, key: KeyState, now: float, wait_s: float, rate_kind: str) -> None:
        """A 429 of `rate_kind` at `now`: the key waits `wait_s`, and its budget
        learns — the exhausted bucket drained, its headers believed less, maybe
        a lower limit."""
        key.cooldown_until = max(key.cooldown_until, now + wait_s)
        if key.budget.headroom_from_headers:
            self._distrust_headers(key, rate_kind)
        lowered = key.budget.on_rate_limited(rate_kind, key.answered_rpm())
        if lowered:
            self._limit_learned(key, lowered, "429s")

    def _distrust_headers(self, key: KeyState, rate_kind: str) -> None:
        """The key's headers said there was room, and the provider refused: say
        so, and believe them less."""
        fell = key.budget.distrust()
        if fell is not None:
            self._headers_distrusted(key, rate_kind, *fell)

    def _headers_distrusted(self, key: KeyState, rate_kind: str, old: float, new: float) -> None:
        spread = key.budget.trust.spread_at(new)
        self._events.emit(
            EventKind.HEADERS_DISTRUSTED,
            f"{key.key_id}: a 429 ({rate_kind}) its rate-limit headers did not foresee: "
            f"spending {new:.0%} of the headroom they report (was {old:.0%}); "
            f"requests sent up to {spread * 1000:.0f} ms apart may arrive out of order",
            key=key.key_id,
            kind=rate_kind,
            old=old,
            new=new,
            spread_s=spread,
        )

    def report_429(
        self, key: KeyState, failure: CallFailure, cooling: KeyCooling, then: str
    ) -> None:
        """Say what a 429 did to its key, and `then` what became of the request."""
        if cooling.disabled_reason:
            doing = "key disabled"
        elif cooling.longer:
            doing = (
                f"{cooling.rounds} in a row with no answer: cooling {format_wait(cooling.wait_s)} "
                f"(longer cool-down {cooling.longer}/{self._waits.key_escalations})"
            )
        else:
            doing = f"cooling {cooling.wait_s:.2f}s"
        self._events.emit(
            EventKind.RATE_LIMITED,
            f"429 on {key.key_id} ({failure.rate_kind}): {doing}, {then}",
            key=key.key_id,
            kind=failure.rate_kind,
            retry_after_s=cooling.wait_s,
            rounds=cooling.rounds,
            longer=cooling.longer,
        )

    def disable(self, key: KeyState, reason: str) -> None:
        """Send nothing more to `key`, for `reason` (said once)."""
        if not key.usable:
            return
        key.disabled_reason = reason
        self._events.emit(
            EventKind.KEY_DISABLED,
            f"{key.key_id} disabled: {reason}",
            key=key.key_id,
            reason=reason,
        )
        self.notify()  # a wait for a key may now have none left to wait for

    def disabled_reasons(self, shown: int = 3) -> str:
        """Why the keys are disabled, the first `shown` of them by name, in one line."""
        reasons = "; ".join(f"{k.key_id}: {k.disabled_reason}" for k in self._keys[:shown])
        if len(self._keys) > shown:
            reasons += f"; and {len(self._keys) - shown} more"
        return reasons

    def _limit_learned(self, key: KeyState, learned: tuple[str, float, float], source: str) -> None:
        which, old, new = learned
        self._events.emit(
            EventKind.LIMIT_LEARNED,
            f"{key.key_id}: {which} limit {old:g} → {new:g} (from {source})",
            key=key.key_id,
            which=which,
            old=old,
            new=new,
        )
