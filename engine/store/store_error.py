"""Store trouble, said in one line: which file, what is wrong with it, what to do.

Everything that reads or writes a crawldeck store (the store, export, the
engine) turns SQLite's and the file system's errors into `StoreError` here,
so the command line only prints it.  The wording names the cause a user can
act on: another process holding the write lock, a full disk, a file that
cannot be written, a file that is not (or not our) SQLite database.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

# Said after a problem that another file would cure.
ANOTHER_STORE = "use another store (--set job.store=OTHER.db)"
# Committed rows survive every one of these: say so where a user might fear the worst.
_KEPT = "what was committed so far is kept"


class StoreError(Exception):
    """A store that cannot be opened, read or written; `str()` is the one line to show."""

    def __init__(self, path: str | Path, problem: str, remedy: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.remedy = remedy
        super().__init__(f"{self.path}: {problem}: {remedy}")

    def advising(self, instead_of_another_store: str) -> StoreError:
        """The same trouble, for a command where "use another store" reads differently."""
        return StoreError(
            self.path, self.problem, self.remedy.replace(ANOTHER_STORE, instead_of_another_store)
        )


def store_error(path: str | Path, exc: BaseException) -> StoreError:
    """What `exc`, raised by SQLite or the file system while using the store at `path`, means."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return _from_sqlite(path, exc)
    if isinstance(exc, OSError):
        return _from_os(path, exc)
    return StoreError(path, str(exc) or type(exc).__name__, "check the file, then run again")


def _from_sqlite(path: str | Path, exc: sqlite3.Error) -> StoreError:
    # The primary result code is the low byte of the extended one.
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreError(
            path,
            "database is locked by another process (another crawldeck run on this job?)",
            f"wait for it to finish, or {ANOTHER_STORE}",
        )
    if code == sqlite3.SQLITE_FULL:
        return full_disk(path)
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        return read_only(path)
    if code == sqlite3.SQLITE_NOTADB:
        return StoreError(path, "not a SQLite database", f"it was left untouched; {ANOTHER_STORE}")
    if code == sqlite3.SQLITE_CORRUPT:
        return StoreError(
            path,
            "the database file is damaged",
            f"restore it from a copy (sqlite3 .recover can save what is left), or {ANOTHER_STORE}",
        )
    if code == sqlite3.SQLITE_CANTOPEN:
        return StoreError(
            path,
            "cannot open the database file",
            f"check that its folder exists and can be written, or {ANOTHER_STORE}",
        )
    if code == sqlite3.SQLITE_IOERR:
        return StoreError(
            path,
            f"the disk refused a read or write ({exc}; is it full, or failing?)",
            f"free some space or check the disk, then run again; {_KEPT}",
        )
    if code == sqlite3.SQLITE_NOMEM:
        return StoreError(path, "SQLite ran out of memory", "free some memory, then run again")
    if isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("no such"):
        return foreign(path, str(exc))  # a table or column of ours is missing
    return StoreError(path, f"SQLite error: {exc}", f"check the file, or {ANOTHER_STORE}")


def _from_os(path: str | Path, exc: OSError) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return full_disk(path)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return read_only(path)
    return StoreError(
        path, exc.strerror or str(exc), f"check the path and its folder, or {ANOTHER_STORE}"
    )


def full_disk(path: str | Path) -> StoreError:
    """The disk (or the file's size limit) has no room for the next write."""
    return StoreError(
        path,
        "disk full (or the file reached its size limit)",
        f"free some space, then run again; {_KEPT}",
    )


def read_only(path: str | Path) -> StoreError:
    """The file or its folder cannot be written by this process."""
    return StoreError(
        path,
        "read-only: the file or its folder cannot be written",
        f"make them writable, or {ANOTHER_STORE}",
    )


def foreign(path: str | Path, what: str) -> StoreError:
    """A SQLite database, but not one this crawldeck can use as its store."""
    return StoreError(
        path,
        f"a SQLite database, but not a crawldeck store ({what})",
        f"it was left untouched; {ANOTHER_STORE}",
    )


def first_store_error(group: BaseExceptionGroup[StoreError]) -> StoreError:
    """The first store error of a group (task groups nest them)."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, StoreError)
    return first
