"""Whether a run recorded in a store is still alive: a lock the kernel drops when it dies.

A run killed with -9 never writes how it ended, so its `runs` row stays
without an outcome; a run alive in another process (two runs may share a
store) looks the same in the table.  Each run therefore holds an exclusive
`flock` on a small file of its own in the store's state folder for as long
as it runs.  The kernel releases the lock however the process ends, so a
run whose lock can be taken is dead.  `flock` locks belong to an open file,
not to a process, so this holds between runs in one process too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def lease_path(folder: Path, run_id: int) -> Path:
    """The file whose lock says run `run_id` is alive."""
    return folder / f"run-{run_id}.lock"


class RunLease:
    """Held by a live run; `release()` (or the process's death) lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, folder: Path, run_id: int) -> RunLease:
        """Lock run `run_id`'s file (made if missing); raises OSError if that cannot be done."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = lease_path(folder, run_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Remove the file, then let the lock go (idempotent)."""
        if self._fd is None:
            return
        # Removed while still locked: whoever opens it next finds no file, not a stale one.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only when nothing else (a control socket) is in it


def is_alive(folder: Path, run_id: int) -> bool:
    """True while some process holds run `run_id`'s lease; False once that run is gone.

    A dead run's file is removed on the way.  Callers decide under the
    store's write lock, which the live run also held while taking its lease,
    so no run is between "recorded" and "leased" while this looks.
    """
    path = lease_path(folder, run_id)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False  # released, or never taken (a run from before leases): not running
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return True
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)
    return False
