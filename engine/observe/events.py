"""Typed runtime events: what happened, when, with the numbers behind it.

Events are frozen values.  Listeners are isolated: one that raises is
reported on stderr once per listener and never breaks the engine.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class EventKind(StrEnum):
    JOB_STARTED = "job_started"
    JOB_FINISHED = "job_finished"
    RATE_LIMITED = "rate_limited"  # a 429: the key cools down, the batch is requeued
    KEY_DISABLED = "key_disabled"  # insufficient_quota or a rejected key
    LIMIT_LEARNED = "limit_learned"  # a key's real limit, from headers or 429s
    HEADERS_DISTRUSTED = "headers_distrusted"  # a 429 the key's headers did not foresee
    RETRY = "retry"
    CHUNK_FAILED = "chunk_failed"
    MEMORY_SOFT = "memory_soft"
    MEMORY_HARD = "memory_hard"
    MEMORY_OK = "memory_ok"
    PRESET_CHANGED = "preset_changed"
    CONCURRENCY_CHANGED = "concurrency_changed"
    PAUSED = "paused"
    RESUMED = "resumed"
    DRAINING = "draining"
    STOPPING = "stopping"
    WARNING = "warning"
    DRIFT_TRIPPED = "drift_tripped"  # a quality gate tripped; its action follows
    DRIFT_BASELINE = "drift_baseline"  # a drift baseline was learned or loaded
    DRIFT_ACTION = "drift_action"  # a tripped gate slowed the job: smaller batches, a preset
    DRIFT_LIFTED = "drift_lifted"  # its metric came back: the action is lifted
    BATCH_RECLAIMED = "batch_reclaimed"  # a cluster worker took over a batch left idle
    DEAD_LETTER = "dead_letter"  # a batch delivered too often: its chunks fail with why
    # The batch route (`engine.pipeline.batch_route`): a Batch API batch submitted,
    # taken up from an earlier run, or ended (its answers stored or its chunks sent again).
    BATCH_SUBMITTED = "batch_submitted"
    BATCH_RESUMED = "batch_resumed"
    BATCH_ENDED = "batch_ended"
    BATCH_TO_ONLINE = "batch_to_online"  # a batch cut off, its window at risk: the rest online
    BUDGET_REACHED = "budget_reached"  # the next request would pass budget_usd: admission stops


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened.  `ts` is wall-clock seconds since the epoch."""

    kind: EventKind
    message: str
    data: Mapping[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # A read-only view keeps the value immutable without copying callers' dicts twice.
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))


Listener = Callable[[Event], None]


class EventBus:
    """Fans events out to listeners and keeps the most recent ones."""

    def __init__(self, keep: int = 200) -> None:
        self._listeners: list[Listener] = []
        self._recent: deque[Event] = deque(maxlen=keep)
        self._broken: set[int] = set()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns a function that removes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, kind: EventKind, message: str, /, **data: Any) -> Event:
        event = Event(kind, message, data)
        self.publish(event)
        return event

    def publish(self, event: Event) -> None:
        self._recent.append(event)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception as exc:  # a listener's bug must not stop the job
                if id(listener) not in self._broken:
                    self._broken.add(id(listener))
                    print(
                        f"crawldeck: event listener {listener!r} failed: {exc!r}", file=sys.stderr
                    )

    def recent(self) -> tuple[Event, ...]:
        return tuple(self._recent)
