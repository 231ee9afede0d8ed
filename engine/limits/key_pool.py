"""All the keys of all providers, and the choice of which one sends next.

A request goes to the usable key that can admit it soonest, ties broken
by the most free budget — so many keys across several providers are used
at once, in proportion to their limits.  A key cooling down after a 429
or disabled (quota, bad key) is skipped.  Behind the `KeyBudgets`
interface so a Redis-backed pool can share budgets between machines.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from engine.config.settings import ProviderSettings
from engine.limits.rate_limit_patience import KeyRefusals
from engine.limits.rate_limiter import KeyBudget

Clock = Callable[[], float]
_WINDOW_S = 60.0


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
    # (time, requests, tokens) per finished request in the last minute
    _window: deque[tuple[float, int, int]] = field(default_factory=deque)
    _win_requests: int = 0
    _win_tokens: int = 0

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

    def sending_rpm(self) -> float:
        """The rate this key was sending at recently, in requests per minute."""
        self._trim(self.clock())
        if not self._window:
            return 0.0
        span = max(1.0, self.clock() - self._window[0][0])
        return self._win_requests * 60.0 / min(_WINDOW_S, span)


class KeyBudgets(Protocol):
    """Chooses a key and reserves its budget; an in-process or shared implementation."""

    async def acquire(self, est_tokens: int) -> KeyState: ...

    def notify(self) -> None: ...

    @property
    def keys(self) -> Sequence[KeyState]: ...


class NoUsableKeyError(RuntimeError):
    """Every key is disabled: the job cannot go on."""


class KeyPool:
    """In-process `KeyBudgets`."""

    def __init__(self, keys: Sequence[KeyState], clock: Clock = time.monotonic) -> None:
        self._keys = list(keys)
        self._clock = clock
        self._changed = asyncio.Event()

    @property
    def keys(self) -> Sequence[KeyState]:
        return self._keys

    def notify(self) -> None:
        """Budget or key health changed: re-evaluate waiting admissions."""
        self._changed.set()

    def _best(self, est_tokens: int) -> tuple[KeyState | None, float]:
        best: KeyState | None = None
        best_wait, best_room = math.inf, -1.0
        for key in self._keys:
            if not key.usable:
                continue
            key.budget.recover()
            wait = max(key.cooling_for(), key.budget.wait_for(est_tokens))
            room = key.budget.headroom()
            if wait < best_wait - 1e-9 or (abs(wait - best_wait) <= 1e-9 and room > best_room):
                best, best_wait, best_room = key, wait, room
        return best, best_wait

    async def acquire(self, est_tokens: int) -> KeyState:
        """Wait until some key can admit `est_tokens`, reserve it there, return the key."""
        while True:
            key, wait = self._best(est_tokens)
            if key is None:
                raise NoUsableKeyError("every API key is disabled")
            if wait <= 0:
                key.budget.reserve(est_tokens)
                return key
            self._changed.clear()
            try:
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            except TimeoutError:
                pass
