"""Manners per host: at most N requests at once, and starts spaced by a delay.

The delay is kept between the moments requests go out on the wire to the
host, which is what the host sees.  A request is planned a delay after the
host's previous start, then waits for a global slot, DNS and a connection;
any of those can push its real start later than planned, and the next
request, planned from the plan, would then follow it too closely.  So each
request passes a gate (`HostTurn.on_the_wire`) right before its bytes are
sent, which holds it until a delay has passed since the previous request to
that host really went out.  The plan still matters: it keeps a request from
taking a global slot and a connection only to wait at the gate.

A crawl touches thousands of hosts, mostly once or twice, so a host's state
lives only while it has requests or while its spacing still matters; after
that it is forgotten and memory stays bounded by the busy hosts.

In a cluster, two workers may each crawl a site on the same host (two
targets, one host).  The gate then also takes the host's turn from a clock
every worker shares (`SharedHostTurns`, kept in Redis by
`engine.cluster.shared_host_clock`), so the delay holds between requests
from different machines too.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class SharedHostTurns(Protocol):
    """Turns at a host shared with other processes (a cluster's workers)."""

    async def turn(self, host: str, delay_s: float) -> float:
        """Take the host's next start, `delay_s` after the one taken before it by
        anyone; the seconds to wait until then (0: now)."""
        ...


@dataclass(slots=True)
class _HostState:
    active: int = 0  # slots granted, including those still waiting out the spacing
    last_start: float = float("-inf")  # the latest start planned or really made
    last_on_wire: float = float("-inf")  # when the latest request really went out
    spacing: float = 0.0  # the delay that last start was spaced by
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    # Requests pass the gate one at a time, in arrival order.
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)


class HostTurn:
    """One request's turn at a host, from `HostPoliteness.slot`."""

    __slots__ = ("_delay", "_host", "_politeness", "_state")

    def __init__(
        self, politeness: HostPoliteness, host: str, state: _HostState, delay: float
    ) -> None:
        self._politeness = politeness
        self._host = host
        self._state = state
        self._delay = delay

    @property
    def delay_s(self) -> float:
        """The spacing this request keeps from the previous one (a Crawl-delay included)."""
        return self._delay

    async def on_the_wire(self) -> None:
        """Wait until the request may go out, and count it as gone out now.

        Call it right before the request's first byte is written, after the
        connection is made: the delay is kept from there to there.
        """
        await self._politeness._pass_gate(self._host, self._state, self._delay)

    def sent(self) -> None:
        """Count the request as gone out no earlier than now: call it once its bytes are written.

        The process can be paused between passing the gate and writing (a
        busy machine does that for tens of milliseconds); the next request's
        delay then counts from here, so that pause cannot shorten the gap.
        """
        now = self._politeness._clock()
        state = self._state
        state.last_on_wire = max(state.last_on_wire, now)
        state.last_start = max(state.last_start, now)


class HostPoliteness:
    """Per-host concurrency and spacing, shared by every fetch.

    `slot(host)` is an async context manager: entering waits (first come,
    first served) until the host has fewer than `per_host` requests, then
    until `delay_s` has passed since the previous request to that host
    started, as far as is known yet.  It gives a `HostTurn`, whose
    `on_the_wire()` the request awaits right before sending: that wait keeps
    the delay from the previous request's real start.  A larger
    `min_delay_s` (a robots.txt Crawl-delay) wins for that request.
    With `shared`, the gate also waits for the host's turn among other
    processes.  `clock` and `sleep` are injectable for tests.
    """

    def __init__(
        self,
        per_host: int,
        delay_s: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        shared: SharedHostTurns | None = None,
    ) -> None:
        if per_host < 1:
            raise ValueError(f"per_host must be at least 1, got {per_host}")
        if delay_s < 0:
            raise ValueError(f"delay_s must not be negative, got {delay_s}")
        self._per_host = per_host
        self._delay_s = delay_s
        self._clock = clock
        self._sleep = sleep
        self._shared = shared
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
    async def slot(self, host: str, min_delay_s: float | None = None) -> AsyncIterator[HostTurn]:
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
            yield HostTurn(self, key, state, delay)
        finally:
            self._release(key, state)

    async def _pass_gate(self, host: str, state: _HostState, delay: float) -> None:
        async with state.gate:
            wait = state.last_on_wire + delay - self._clock()
            if wait > 0:
                await self._sleep(wait)
            if self._shared is not None:
                # Taken with this process's own spacing kept: one turn at a time.
                wait = await self._shared.turn(host, delay)
                if wait > 0:
                    await self._sleep(wait)
            now = self._clock()
            state.last_on_wire = now
            # The next plan starts from here if this start came later than planned.
            state.last_start = max(state.last_start, now)
            state.spacing = max(state.spacing, delay)

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
