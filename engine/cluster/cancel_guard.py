"""A cancel that a Redis call swallowed, raised again at the next turn of a loop.

redis-py writes a command inside `asyncio.wait_for`; on Python 3.11 that
returns the write's result, dropping a `CancelledError` that lands just as
the write completes.  The task still counts the cancel (`cancelling()`), so
a loop that checks each turn stops a moment later instead of running on —
without it a cancelled reader could keep reading forever and its job never
end.  Python 3.12's `wait_for` no longer drops it.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise `CancelledError` when this task was asked to stop, even if a call dropped it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
