"""What the pipeline holds between reading a chunk and storing its row.

Two tallies, shared by the batcher (which takes work in) and the outcomes
(which let it go): the ids of chunks queued or in flight, so a repeat of
one is not sent twice, and the batches made but not yet resolved.  Finished
ids leave the set (the store answers for them), so memory follows the
queues, not the size of the input.  The batch queue is closed once the
input has ended and every batch made is resolved: that is how the
dispatcher learns the job's work is done.
"""

from __future__ import annotations

from engine.pipeline.work_queue import WorkQueue


class HeldWork:
    """Chunks held and batches outstanding; closes `queue` when both are spent."""

    __slots__ = ("_live", "_queue", "_resumed", "input_done", "outstanding")

    def __init__(self, queue: WorkQueue) -> None:
        self._queue = queue
        self._live: set[int] = set()
        # Held since the start by a batch a previous run submitted (`engine.batch`):
        # when the input brings them again, they are neither sent nor repeats.
        self._resumed: set[int] = set()
        self.outstanding = 0  # batches made and not yet resolved
        self.input_done = False

    def take(self, chunk_id: str) -> bool:
        """Hold a chunk; False when the same chunk is held already (a repeat)."""
        as_int = int(chunk_id, 16)
        if as_int in self._live:
            return False
        self._live.add(as_int)
        return True

    def resume(self, chunk_id: str) -> None:
        """Hold a chunk of a batch submitted by an earlier run, before the input is read."""
        as_int = int(chunk_id, 16)
        self._live.add(as_int)
        self._resumed.add(as_int)

    def claim_resumed(self, chunk_id: str) -> bool:
        """Whether the input's chunk belongs to a resumed batch, which sends and counts
        it (asked once per chunk: a second one in the input is a repeat)."""
        as_int = int(chunk_id, 16)
        if as_int in self._resumed:
            self._resumed.discard(as_int)
            return True
        return False

    def let_go(self, chunk_id: str) -> None:
        """The chunk is done, failed or skipped: the store answers for it now."""
        self._live.discard(int(chunk_id, 16))

    def batch_made(self) -> None:
        self.outstanding += 1

    def batch_resolved(self) -> None:
        self.outstanding -= 1
        self._close_if_spent()

    def input_ended(self) -> None:
        """No more batches will be made from the input (retries and splits may still come)."""
        self.input_done = True
        self._close_if_spent()

    def _close_if_spent(self) -> None:
        if self.input_done and self.outstanding == 0:
            self._queue.close()
