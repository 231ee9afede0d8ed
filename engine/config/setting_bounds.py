"""How far the knobs an operator turns at run time may go: the one place that says so.

Concurrency, batch size and a crawl's fetch concurrency are set in job files,
preset files, `--set` flags, over the control socket and in the dashboard's
dialogs; every one of those checks against these bounds and refuses a value
outside them (one line naming where it came from), never clamping it.

Why these numbers:

- Concurrency (requests in flight): 4096.  At a slow 10 s a request that is
  ~25,000 requests a minute, the top tier of the largest providers, and each
  request in flight holds a socket, where many systems give a process only
  1024 to 65536 file descriptors.  Past it a value is a typo (100000), not a
  plan.
- Batch size (chunks per request): 1000.  The answer carries one entry per
  chunk: at even 20 tokens an entry, 1000 entries are 20k output tokens, past
  what most models will write in one answer, so bigger batches only come back
  with ids missing.
- Fetch concurrency (a crawl's fetches in flight across hosts): 4096, for the
  same sockets and descriptors as requests, plus a DNS lookup each.
- Per host (a crawl's requests in flight to one host): 64.  Polite crawlers
  keep one or two; past a few dozen a crawl is a load test of someone else's
  server, and each is a connection in that host's pool.
- Extraction workers (processes parsing HTML): 256.  Each is a process of
  some 30-60 MB; more than the cores only queue for them, and a typo (1000)
  would fork the machine out of memory before the first page.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bound:
    """An inclusive range of whole numbers a setting may take."""

    low: int
    high: int

    def holds(self, value: object) -> bool:
        """Whether `value` is a whole number (not a bool) within the range."""
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    @property
    def requirement(self) -> str:
        """What a value must be, for messages: `must be from 1 to 4096`."""
        return f"must be from {self.low} to {self.high}"

    def problem(self, value: object) -> str | None:
        """None when `value` is allowed; else what is wrong, in one line."""
        if self.holds(value):
            return None
        return f"{self.requirement} (got {value!r})"

    def check(self, name: str, value: object) -> int:
        """`value` when allowed; else `ValueError` naming the setting."""
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(f"{name}: {problem}")
        assert isinstance(value, int)
        return value


CONCURRENCY = Bound(1, 4096)
"""Requests in flight at most (a preset's `concurrency`)."""

BATCH_SIZE = Bound(1, 1000)
"""Chunks in one request (a preset's `batch_size`)."""

FETCH_CONCURRENCY = Bound(1, 4096)
"""A crawl's fetches in flight across all hosts (`[crawl] concurrency`)."""

PER_HOST = Bound(1, 64)
"""A crawl's requests in flight to one host (`[crawl] per_host`)."""

EXTRACT_WORKERS = Bound(0, 256)
"""A crawl's HTML extraction processes (`[crawl] extract_workers`; 0: one per core but one)."""
