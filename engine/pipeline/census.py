"""Counting a job's input up front, in a thread that stops when the count is cancelled.

A thread can't be cancelled: without being told, it would count a large
input to its end after the run has ended, and the process would wait for it
at exit.  The documents' census and the crawl's target count share this.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable


async def count_in_thread(items: Callable[[], Iterable[object]]) -> int:
    """How many things `items()` yields, counted in a thread.

    Cancelled, the thread stops at the next item; what `items` raises
    (an unreadable input) comes through to the caller.
    """
    abandoned = threading.Event()

    def count() -> int:
        total = 0
        for _ in items():
            if abandoned.is_set():
                break
            total += 1
        return total

    try:
        return await asyncio.to_thread(count)
    except asyncio.CancelledError:
        abandoned.set()
        raise
