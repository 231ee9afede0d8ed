"""Manners per host: at most N requests at once, and starts spaced by a delay.

A crawl touches thousands of hosts, mostly once or twice, so a host's state
lives only while it has requests or while its spacing still matters; after
that it is forgotten and memory stays bounded by the busy hosts.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class _HostState:
    active: int = 0  # slots granted, including those still waiting out the spacing
    last_start: float = float("-inf")  # the latest start reserved for this host
    spacing: float = 0.0  # the delay that last start was spaced by
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class HostPoliteness:
    """Per-host concurrency and spacing, shared by every fetch.

    `slot(host)` is an async context manager: entering waits (first come,
    first served) until the host has fewer than `per_host` requests, then
    until `delay_s` has passed since the previous request to that host
    started.  A larger `min_delay_s` (a robots.txt Crawl-delay) wins for that
    request.  `clock` and `sleep` are injectable for tests.
    """

    def __init__(
        self,
        per_host: int,
        delay_s: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if per_host < 1:
            raise ValueError(f"per_host must be at least 1, got {per_host}")
        if delay_s < 0:
            raise ValueError(f"delay_s must not be negative, got {delay_s}")
        self._per_host = per_host
        self._delay_s = delay_s
        self._clock = clock
        self._sleep = sleep
        self._hosts: dict[str, _HostState] = {}
        # Hosts with nothing in flight, oldest release first: forgotten once their spacing ends.
        self._idle: OrderedDict[str, None] = OrderedDict()

    @property
    def per_host(self) -> int:
        return self._per_host

    @property
    def delay_s(self) -> float:
        return self._delay_s

    @property
    def hosts_tracked(self) -> int:
        """Hosts whose state is kept: busy ones and idle ones still inside their delay."""
        return len(self._hosts)

    @asynccontextmanager
    async def slot(self, host: str, min_delay_s: float | None = None) -> AsyncIterator[None]:
        """Hold one of `host`'s request slots for the duration of the block."""
        key = host.lower()
        delay = self._delay_s if min_delay_s is None else max(self._delay_s, min_delay_s)
        state = await self._acquire(key)
        try:
            now = self._clock()
            start = max(now, state.last_start + delay)
            state.last_start, state.spacing = start, delay
            if start > now:
                await self._sleep(start - now)
            yield
        finally:
            self._release(key, state)

    async def _acquire(self, key: str) -> _HostState:
        self._forget_idle()
        state = self._hosts.get(key)
        if state is None:
            state = self._hosts[key] = _HostState()
        self._idle.pop(key, None)
        if state.active < self._per_host and not state.waiters:
            state.active += 1
            return state
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release(key, state)  # granted just as we were cancelled: pass it on
            else:
                state.waiters.remove(future)
                if state.active == 0 and not state.waiters:
                    self._mark_idle(key)
            raise
        return state

    def _release(self, key: str, state: _HostState) -> None:
        state.active -= 1
        while state.waiters and state.active < self._per_host:
            future = state.waiters.popleft()
            if not future.done():
                state.active += 1
                future.set_result(None)
        if state.active == 0 and not state.waiters:
            self._mark_idle(key)

    def _mark_idle(self, key: str) -> None:
        self._idle[key] = None
        self._idle.move_to_end(key)
        self._forget_idle()

    def _forget_idle(self) -> None:
        """Drop idle hosts whose spacing has run out: their state no longer matters."""
        now = self._clock()
        while self._idle:
            key = next(iter(self._idle))
            state = self._hosts[key]
            # Release order roughly follows start order, so the oldest idle host
            # expires first; one with a long Crawl-delay holds the rest back only
            # until its own delay ends.
            if state.last_start + max(state.spacing, self._delay_s) > now:
                break
            del self._idle[key]
            del self._hosts[key]
