"""Which worker reads a run's shared input: one at a time, under a lease in Redis.

Every worker of a document job is started on the same job file, but the
input needs reading once: the first worker to find it unread takes the
run's intake lease (`SET NX` with an expiry, renewed while it reads) and
reads and enqueues the whole file; the others read none of it and work on
the batches it enqueues.  Four workers starting together used to read,
chunk and push the whole file four times on the machines' cores and
through Redis's, just as the opening burst needs them.

The lease ends one of three ways, and a worker waiting for its turn hears
each without polling: the input is all enqueued (the notice the queue's
marker publishes; the progress hash stays the truth), the reader stops
(it gives the lease back and says so), or it dies (the lease expires: the
wait is timed to its expiry).  A worker that has the file then takes the
lease and reads from the start; the enqueue script keeps each chunk once,
so what the dead reader enqueued is not added twice.

A reader whose reading fails (`InputUnread`: a file it cannot read) gives
the lease back without the input being marked enqueued, so another worker
may yet read it; it ends with the reason.

A worker whose machine has no copy of the input never reads: it waits for
one that does, and if none holds the lease for `wait_for_reader_s` while the
input is unfinished, the job cannot go on here — `NoReader` says so in one
line naming the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from engine.cluster.cancel_guard import raise_if_cancelled
from engine.cluster.job_streams import JobStreams
from engine.cluster.redis_connection import LONGEST_BLOCK_S
from engine.observe.events import EventBus, EventKind

__all__ = ["InputUnread", "IntakeLease", "NoReader"]

# KEYS: the lease.  ARGV: this worker, the lease's lifetime in ms.  1 if still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: the lease.  ARGV: this worker, the notice channel.  Gives it back if ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
"""


class NoReader(RuntimeError):
    """The input is not on this machine, and no worker that has it is reading it."""


class InputUnread(RuntimeError):
    """This worker's reading of the input failed: the message says why."""


class IntakeLease:
    """The intake lease of the run whose streams are `streams` (module docstring).

    `complete()` says whether the run's input is all enqueued; `hold_s` is how
    long a silent reader keeps the lease.
    """

    def __init__(
        self,
        redis: Redis,
        streams: JobStreams,
        worker_id: str,
        *,
        complete: Callable[[], Awaitable[bool]],
        hold_s: float,
        wait_for_reader_s: float,
        events: EventBus | None = None,
    ) -> None:
        self._redis = redis
        self._key = streams.intake
        self._channel = streams.input_notice
        self._worker = worker_id
        self._complete = complete
        self._hold_ms = max(1, math.ceil(hold_s * 1000))
        self._wait_for_reader_s = wait_for_reader_s
        self._events = events
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def turn(self, input_name: str, *, here: bool) -> bool:
        """Wait for this worker's turn: True once it holds the lease (it reads the input
        now), False once the input is all enqueued (by anyone).

        `here` says whether `input_name` is on this machine; where it is not, the
        worker never reads, and raises `NoReader` once nobody has been reading an
        unfinished input for `wait_for_reader_s`.
        """
        notices = self._redis.pubsub(ignore_subscribe_messages=True)
        loop = asyncio.get_running_loop()
        unread_since: float | None = None
        try:
            # Subscribed first, then looked: a notice sent in between is not missed.
            await notices.subscribe(self._channel)
            while True:
                raise_if_cancelled()  # a call may have dropped it (see cancel_guard)
                if await self._complete():
                    return False
                if here and await self._redis.set(
                    self._key, self._worker, nx=True, px=self._hold_ms
                ):
                    return True
                left_ms = await self._redis.pttl(self._key)
                if left_ms == -1:  # no expiry (set by hand?): look again after a lease's time
                    left_ms = self._hold_ms
                if left_ms >= 0:  # someone reads: until it ends, or its lease runs out
                    unread_since = None
                    wait = left_ms / 1000 + 0.01
                elif here:
                    continue  # given back between our looks: try again
                else:
                    now = loop.time()
                    if unread_since is None:
                        unread_since = now
                        self._emit(
                            EventKind.WARNING,
                            f"input {input_name} is not on this machine: waiting for a "
                            "worker that has it to enqueue it",
                        )
                    wait = unread_since + self._wait_for_reader_s - now
                    if wait <= 0:
                        raise NoReader(
                            f"input {input_name} is not on this machine, and no worker "
                            f"that has it enqueued it within {self._wait_for_reader_s:g}s"
                        )
                # Within one blocking read's bound: a connection's reads time out past it.
                await notices.get_message(timeout=min(wait, LONGEST_BLOCK_S))
        finally:
            with contextlib.suppress(RedisError):
                await notices.aclose()

    async def hold_while(self, reading: Awaitable[None]) -> None:
        """Renew the lease until `reading` ends, then give it back (also when cancelled
        or failed: a waiting worker takes its turn at once)."""
        renewal = asyncio.create_task(self._keep(), name="intake-lease")
        try:
            await reading
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await renewal
            with contextlib.suppress(RedisError):
                await self._release(keys=[self._key], args=[self._worker, self._channel])

    async def _keep(self) -> None:
        every = self._hold_ms / 3000
        while True:
            # A timer, not polling: a lease is renewed by nature.
            await asyncio.sleep(every)
            raise_if_cancelled()
            if not await self._renew(keys=[self._key], args=[self._worker, self._hold_ms]):
                # Held past its expiry (a stalled process): another may read too; the
                # enqueue keeps each chunk once, so both go on.
                self._emit(
                    EventKind.WARNING,
                    "another worker took over reading the input (this one was silent "
                    "past its lease); each chunk is still enqueued once",
                )
                return

    def _emit(self, kind: EventKind, message: str) -> None:
        if self._events is not None:
            self._events.emit(kind, message)
