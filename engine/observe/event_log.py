"""The job's events, kept in its store as they happen.

Listeners on the event bus are synchronous and the store's writer is
async: events are handed over through a deque, and a task of the run
writes them, in order.  What is still unwritten when the run ends is
written by `flush`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from engine.observe.events import Event, EventBus


class EventSink(Protocol):
    """Where events are kept (`engine.store.sqlite_store.Store`)."""

    async def put_event(self, run_id: int, event: Event) -> None: ...


class EventLog:
    """Writes every event of `events`, from `attach()` on, to a store."""

    def __init__(self, events: EventBus) -> None:
        self._events = events
        self._unsaved: deque[Event] = deque()
        self._waiting = asyncio.Event()

    def attach(self) -> None:
        """Start taking the bus's events (once the store is open)."""
        self._events.subscribe(self._take)

    def _take(self, event: Event) -> None:
        self._unsaved.append(event)
        self._waiting.set()

    async def run(self, store: EventSink, run_id: int) -> None:
        """Write events as they come, until cancelled."""
        while True:
            await self._waiting.wait()
            self._waiting.clear()
            await self.flush(store, run_id)

    async def flush(self, store: EventSink, run_id: int) -> None:
        """Write every event taken and not yet written."""
        while self._unsaved:
            await store.put_event(run_id, self._unsaved.popleft())
