"""What a worker of a shared job holds between reading and storing: nothing to count here.

In one process `HeldWork` keeps the ids of chunks queued or in flight (a
repeat is not sent twice) and the batches unresolved, and closes the queue
when both are spent: that is how the job learns it is done.  In a cluster
neither tally means anything to one process: a batch made here is worked
and settled by whichever worker reads it, and one worked here was made
elsewhere.  Redis keeps both instead — the set of chunks ever enqueued (a
repeat adds nothing) and the counters of entries settled — and the queue's
`get()` ends the job when the cluster's work is all settled.  So this
holds nothing, and the end of the input only closes the queue, which tells
every worker the whole input is enqueued — unless `whole()` says otherwise:
a crawl that ended short (drained, no key left, its file unreadable here) has
not crawled every site, and the sites left are other workers' to crawl and
enqueue; then `short()` is told instead.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.pipeline.held_work import HeldWork
from engine.pipeline.work_queue import WorkQueue

__all__ = ["SharedHeldWork"]


class SharedHeldWork(HeldWork):
    """`HeldWork` for a worker of a shared job: repeats and the end are the queue's to judge."""

    __slots__ = ("_short", "_unread", "_whole")

    def __init__(
        self,
        queue: WorkQueue,
        whole: Callable[[], bool] = lambda: True,
        short: Callable[[], None] = lambda: None,
        unread: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(queue)
        self._whole = whole
        self._short = short
        self._unread = unread

    def take(self, chunk_id: str) -> bool:
        """Always taken: the queue's script drops a chunk enqueued (or stored) before."""
        return True

    def let_go(self, chunk_id: str) -> None:
        """Nothing was held."""

    def batch_made(self) -> None:
        """Batches are counted in Redis, settled by whichever worker reads them."""

    def batch_resolved(self) -> None:
        """As `batch_made`."""

    def input_ended(self) -> None:
        """This worker's intake enqueued the whole input: so has the job (the queue says so)
        — unless its reading failed (`unread()`): then the input is not all enqueued."""
        self.input_done = True
        if self._unread():
            return
        if self._whole():
            self._queue.close()
        else:
            self._short()
