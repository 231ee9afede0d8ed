"""The memory circuit breaker: watch the process's RSS against soft and hard limits.

At SOFT the engine stops taking new work in (`wait_to_read`); at HARD it
sends nothing new either (`wait_to_send`) until memory falls.  Each state
is left only well below the line that entered it, so a process hovering at
a limit doesn't flap between states.  Limits are clamped below the
container's real limit, because psutil reports the host's memory inside a
container.

Holding work back lowers memory only while the engine holds work it can
finish.  Once it holds nothing and a whole sample interval passes without
memory falling, waiting longer cannot help and would wait forever: the hold
gives way for one block (or one request) at a time, so a job whose process
settles above a limit still ends.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import psutil

from engine.observe.snapshot import MemorySnapshot

MIB = 1024 * 1024
SOFT_CEILING = 0.90  # of the effective limit
HARD_CEILING = 0.95
SOFT_EXIT = 0.90  # leave SOFT below this share of the soft limit
HARD_EXIT = 0.95  # leave HARD below this share of the hard limit
# cgroup v1 writes "no limit" as a huge page-aligned number (about 2**63).
_UNLIMITED_FLOOR = 1 << 60

CGROUP_ROOT = Path("/sys/fs/cgroup")


class MemoryState(StrEnum):
    OK = "ok"
    SOFT = "soft"
    HARD = "hard"


def _read_cgroup_limit(cgroup_root: Path) -> int | None:
    for limit_file in (cgroup_root / "memory.max", cgroup_root / "memory/memory.limit_in_bytes"):
        try:
            raw = limit_file.read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        try:
            limit = int(raw)
        except ValueError:
            continue
        return limit if 0 < limit < _UNLIMITED_FLOOR else None
    return None


def effective_memory_limit_bytes(
    cgroup_root: Path = CGROUP_ROOT, host_total: int | None = None
) -> int | None:
    """The memory this process can really use: the cgroup limit, clamped to the host's RAM.

    `host_total` defaults to psutil's total, which inside a container is the
    host's.  None only when neither is known.
    """
    if host_total is None:
        try:
            host_total = int(psutil.virtual_memory().total)
        except (OSError, RuntimeError):
            host_total = None
    cgroup_limit = _read_cgroup_limit(cgroup_root)
    known = [limit for limit in (cgroup_limit, host_total) if limit]
    return min(known) if known else None


def process_rss_bytes() -> Callable[[], int]:
    """A reader of this process's resident set size."""
    process = psutil.Process()
    return lambda: int(process.memory_info().rss)


OnChange = Callable[[MemoryState, MemoryState, int], None]


class MemoryGuard:
    """Samples RSS and moves between OK, SOFT and HARD with hysteresis.

    `on_change(old, new, rss)` is called on every transition; if it raises,
    the error is reported on stderr and the guard carries on.
    """

    def __init__(
        self,
        soft_mb: int,
        hard_mb: int,
        on_change: OnChange,
        read_rss: Callable[[], int] | None = None,
        interval_s: float = 1.0,
        memory_limit: Callable[[], int | None] = effective_memory_limit_bytes,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._on_change = on_change
        self._read_rss = read_rss or process_rss_bytes()
        self._interval_s = interval_s
        self._limit_bytes = memory_limit()
        self._state = MemoryState.OK
        self._rss_bytes = 0
        self._sampled = False
        self._below_hard = asyncio.Event()
        self._below_hard.set()
        self._soft_bytes = 0
        self._hard_bytes = 0
        self._apply_limits(soft_mb, hard_mb)
        # Set (and replaced) on every sample and state change: what holds wait on.
        self._news = asyncio.Event()
        self._samples = 0
        self._gave_way = False  # a hold gave way since the state last changed

    @property
    def state(self) -> MemoryState:
        return self._state

    @property
    def rss_bytes(self) -> int:
        """The RSS at the last sample (0 before the first)."""
        return self._rss_bytes

    @property
    def soft_bytes(self) -> int:
        """The soft limit in force, after clamping."""
        return self._soft_bytes

    @property
    def hard_bytes(self) -> int:
        """The hard limit in force, after clamping."""
        return self._hard_bytes

    @property
    def limit_bytes(self) -> int | None:
        """The effective memory limit the soft and hard limits were clamped to."""
        return self._limit_bytes

    def set_limits(self, soft_mb: int, hard_mb: int) -> None:
        """Change the limits (a preset switch); the state follows at once from the last RSS."""
        self._apply_limits(soft_mb, hard_mb)
        if self._sampled:
            self._move_to(self._next_state(self._rss_bytes))

    def sample(self) -> MemoryState:
        """Read RSS once and update the state."""
        self._rss_bytes = int(self._read_rss())
        self._sampled = True
        self._samples += 1
        self._move_to(self._next_state(self._rss_bytes))
        self._announce()
        return self._state

    def snapshot(self, floor_bytes: int) -> MemorySnapshot:
        """The breaker's figures now; `floor_bytes` is the process's own floor."""
        return MemorySnapshot(
            rss_bytes=self._rss_bytes,
            soft_bytes=self._soft_bytes,
            hard_bytes=self._hard_bytes,
            limit_bytes=self._limit_bytes,
            state=str(self._state),
            floor_bytes=floor_bytes,
            waiting_for=self.waiting_for(),
        )

    def input_hold(self, holds_nothing: Callable[[], bool]) -> InputHold:
        """What input waits on (`wait_to_read`), as a gate with a `wait()`."""
        return InputHold(self, holds_nothing)

    def waiting_for(self) -> str:
        """What the breaker holds back and until when, in words; "" while it holds nothing."""
        if self._state is MemoryState.OK:
            return ""
        now = f"now {self._rss_bytes / MIB:.0f} MB"
        soft_exit = f"{self._soft_bytes * SOFT_EXIT / MIB:.0f} MB"
        if self._state is MemoryState.HARD:
            text = (
                f"no new requests until memory < {self._hard_bytes * HARD_EXIT / MIB:.0f} MB "
                f"and no input until < {soft_exit} ({now})"
            )
        else:
            text = f"input paused until memory < {soft_exit} ({now})"
        if self._gave_way:
            text += "; nothing else is held, so one at a time"
        return text

    async def wait_to_read(self, holds_nothing: Callable[[], bool]) -> None:
        """Return when new input may be taken in: below the soft limit, or (see the module)
        after a whole sample interval above it in which `holds_nothing()` stayed true."""
        await self._hold(lambda: self._state is not MemoryState.OK, holds_nothing)

    async def wait_to_send(self, sends_nothing: Callable[[], bool]) -> None:
        """Return when a request may be sent: below the hard limit, or (see the module)
        after a whole sample interval above it in which `sends_nothing()` stayed true."""
        await self._hold(lambda: self._state is MemoryState.HARD, sends_nothing)

    async def _hold(self, held: Callable[[], bool], idle: Callable[[], bool]) -> None:
        idle_since: int | None = None  # the sample count when idleness was first seen
        while held():
            news = self._news
            await news.wait()
            if not held():
                return
            if not idle():
                idle_since = None
            elif idle_since is None:
                idle_since = self._samples
            elif self._samples > idle_since:
                self._gave_way = True
                return

    def _announce(self) -> None:
        news, self._news = self._news, asyncio.Event()
        news.set()

    async def run(self) -> None:
        """Sample every `interval_s` until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self._interval_s)

    async def wait_below_hard(self) -> None:
        """Return once the state is not HARD (at once if it isn't)."""
        await self._below_hard.wait()

    def _apply_limits(self, soft_mb: int, hard_mb: int) -> None:
        if soft_mb <= 0 or hard_mb <= 0:
            raise ValueError("memory limits must be positive")
        soft, hard = soft_mb * MIB, hard_mb * MIB
        if self._limit_bytes is not None:
            soft = min(soft, int(self._limit_bytes * SOFT_CEILING))
            hard = min(hard, int(self._limit_bytes * HARD_CEILING))
        self._soft_bytes = min(soft, hard)  # a soft limit above the hard one means nothing
        self._hard_bytes = hard

    def _next_state(self, rss: int) -> MemoryState:
        if rss >= self._hard_bytes:
            return MemoryState.HARD
        if self._state is MemoryState.HARD and rss >= self._hard_bytes * HARD_EXIT:
            return MemoryState.HARD
        if rss >= self._soft_bytes:
            return MemoryState.SOFT
        # Coming down from SOFT or HARD, stay SOFT until well below the soft limit.
        if self._state is not MemoryState.OK and rss >= self._soft_bytes * SOFT_EXIT:
            return MemoryState.SOFT
        return MemoryState.OK

    def _move_to(self, new: MemoryState) -> None:
        old = self._state
        if new is old:
            return
        self._state = new
        self._gave_way = False
        if new is MemoryState.HARD:
            self._below_hard.clear()
        else:
            self._below_hard.set()
        self._announce()
        try:
            self._on_change(old, new, self._rss_bytes)
        except Exception as exc:  # a listener's bug must not disable the breaker
            print(f"crawldeck: memory on_change failed: {exc!r}", file=sys.stderr)


class InputHold:
    """The breaker's hold on input, for a reader or a crawl to wait on before taking more."""

    def __init__(self, memory: MemoryGuard, holds_nothing: Callable[[], bool]) -> None:
        self._memory = memory
        self._holds_nothing = holds_nothing

    async def wait(self) -> None:
        await self._memory.wait_to_read(self._holds_nothing)
