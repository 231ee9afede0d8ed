"""The job's tail: all its work is sent or in flight, nothing waits to be sent.

Until then a request that goes quiet for long is only one of many; at the
tail, the job's end waits for it.  There, a request far beyond its key's
usual latency is given up sooner (`KeyLatency.patience(tail=True)`) and
its batch sent again: the budget is idle by then, and one more request
costs less than the seconds a hang would add to the job's end.  Requests
already in flight when the tail begins are told (`when_begun`), so their
deadlines are looked at again.
"""

from __future__ import annotations

from collections.abc import Callable


class JobTail:
    """Whether the job has reached its tail, and who to tell when it does."""

    __slots__ = ("_waiting", "begun")

    def __init__(self) -> None:
        self.begun = False
        self._waiting: set[Callable[[], None]] = set()

    def begin(self) -> None:
        """Nothing is left to send but what is in flight (and its retries)."""
        if self.begun:
            return
        self.begun = True
        waiting, self._waiting = self._waiting, set()
        for begun in waiting:
            begun()

    def when_begun(self, begun: Callable[[], None]) -> None:
        """Call `begun` once the tail begins (at once if it has)."""
        if self.begun:
            begun()
        else:
            self._waiting.add(begun)

    def forget(self, begun: Callable[[], None]) -> None:
        """`begun` no longer needs telling (its request ended)."""
        self._waiting.discard(begun)
