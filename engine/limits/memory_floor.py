"""The process's own memory floor, and the memory limits it rules out.

A run's process holds about 150 MB before it has read a line: Python, the
SDK, numpy, SQLite.  A soft limit below that pauses input before the first
block and the job never starts; so limits are checked against the floor
(plus a margin for the queues and answers a run holds) when the job file
is loaded and whenever a preset is applied.

The floor is measured once, with the engine loaded (by whoever loads it),
and kept: it is a property of the process, and the load-time check and
later preset changes must judge against the same figure.
"""

from __future__ import annotations

import math

MIB = 1024 * 1024
# Room above the floor for what a run holds: a demo run grows ~10 MB past
# start-up, 200k chunks ~20 MB more (tests/benchmarks/memory_scaling.py),
# a crawl's parsers and the dashboard ~15 MB each.
MARGIN_MB = 64

_measured: int | None = None


def process_floor_bytes() -> int:
    """This process's RSS, measured on the first call and kept.

    Call it once the engine is loaded (`Engine` does, when it is made; the
    command line loads the engine before it checks a job file's limits), so
    the floor is what every run carries.
    """
    global _measured
    if _measured is None:
        from engine.limits.memory_guard import process_rss_bytes

        _measured = process_rss_bytes()()
    return _measured


def least_limit_mb(floor_bytes: int) -> int:
    """The smallest memory limit (MB) a process with this floor can run under."""
    return math.ceil(floor_bytes / MIB) + MARGIN_MB


def limit_below_floor(value_mb: int, floor_bytes: int) -> str | None:
    """Why `value_mb` is too small a limit for this floor, in one line; None if it isn't."""
    least = least_limit_mb(floor_bytes)
    if value_mb >= least:
        return None
    return (
        f"{value_mb} MB is below this process's own floor of {math.ceil(floor_bytes / MIB)} MB "
        f"(its memory once started) plus a {MARGIN_MB} MB margin: the breaker would hold "
        f"input from the start; use at least {least}"
    )
