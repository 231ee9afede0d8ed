"""When a request in flight counts as hung: its key's patience, re-read as the key learns.

A fixed deadline set at send time fails the requests that matter most: on a
provider whose bucket holds a full minute, the opening burst sends hundreds
of requests before the key has answered any, so none of them has a patience
yet — and a hang among them was waited out for the whole request timeout,
at the end of the job, long after everything else was done.

So the deadline is re-read: a request sent before its key's patience was
known is told when it becomes known (`KeyLatency.when_known`), and when a
deadline comes it is checked against the patience then in force — which
may have grown since the first few (fastest) answers set it — before the
request is given up.  The preset's timeout, which the client enforces
itself, stays the ceiling.  At the job's tail (`engine.limits.job_tail`)
the patience is shorter, and requests already waiting are looked at again
when it begins.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from engine.limits.job_tail import JobTail
from engine.limits.key_latency import KeyLatency


class HangDeadline:
    """`async with` around one request: raises TimeoutError once it has gone
    unanswered longer than `latency`'s patience (below `ceiling_s`).

    `patience` is the patience that expired (0 until one has).
    """

    __slots__ = (
        "_ceiling",
        "_handle",
        "_latency",
        "_loop",
        "_started",
        "_tail",
        "_timeout",
        "patience",
    )

    def __init__(self, latency: KeyLatency, ceiling_s: float, tail: JobTail | None = None) -> None:
        self._latency = latency
        self._ceiling = ceiling_s
        self._tail = tail
        self._handle: asyncio.TimerHandle | None = None
        self.patience = 0.0

    async def __aenter__(self) -> HangDeadline:
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        if self._latency.knows_patience:
            self._check()
        else:
            self._latency.when_known(self._check)
        if self._tail is not None and not self._tail.begun:
            self._tail.when_begun(self._recheck)
        return self

    def _recheck(self) -> None:
        """The tail began: the deadline may have come closer."""
        if self._latency.knows_patience:
            if self._handle is not None:
                self._handle.cancel()
            self._check()

    def _check(self) -> None:
        """Give the request up if its patience has run out, else look again when it will."""
        self._handle = None
        tail = self._tail is not None and self._tail.begun
        patience = self._latency.patience(self._ceiling, tail=tail)
        if patience >= self._ceiling:
            return  # the client's own timeout ends it
        due = self._started + patience
        now = self._loop.time()
        if now >= due:
            self.patience = patience
            self._timeout.reschedule(now)
        else:
            self._handle = self._loop.call_at(due, self._check)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._latency.forget(self._check)
        if self._tail is not None:
            self._tail.forget(self._recheck)
        await self._timeout.__aexit__(exc_type, exc, tb)  # turns its cancellation into TimeoutError
