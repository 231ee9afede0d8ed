"""Setting a job's store aside, so the job can start over without losing anything.

`crawldeck run JOB.toml --fresh` must not destroy what an earlier run paid
for: the SQLite store is renamed, next to where it was, with a timestamp
(`results.db` → `results-20250102-134501.db`), and its state folder follows
it (`results-20250102-134501.db.crawldeck`).  The renamed store is a complete
database that `crawldeck export` reads like any other.

Before the rename the store is checked and made whole in one step: an
exclusive SQLite lock fails while any other process has the store open (a
job still running on it), and holding that lock, its write-ahead log is
folded into the database file.  So the renamed file needs no `-wal` beside
it, and no stale `-wal` is left behind for the new store to pick up.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from engine.store.state_folder import state_folder_for_store

# SQLite's companions of a database file: the write-ahead log, its index, and
# the rollback journal.  Folded in or stale after the checkpoint, but moved
# along if present, never left where a new store would open them.
_COMPANIONS = ("-wal", "-shm", "-journal")


class StoreInUseError(Exception):
    """The store is open in another process (one line, for the user)."""


def set_store_aside(store: str | Path, now: float | None = None) -> Path | None:
    """Rename `store` (and what belongs to it) to a free timestamped name.

    Returns the store's new path, or None when there was nothing to set aside.
    Raises `StoreInUseError` while another process has the store open, and
    `OSError` when a rename fails (nothing is deleted either way).
    """
    store = Path(store)
    folder = state_folder_for_store(store)
    companions = [store.with_name(store.name + suffix) for suffix in _COMPANIONS]
    if not store.exists() and not folder.exists() and not any(p.exists() for p in companions):
        return None
    if store.exists():
        _fold_in_write_ahead_log(store)
    aside = _free_name(store, time.localtime(now))
    # The database first: once it is renamed, nothing at the old name can be
    # mistaken for the job's results, even if a later rename fails.
    for source in (store, *companions):
        if source.exists():
            os.rename(source, aside.with_name(aside.name + source.name[len(store.name) :]))
    if folder.exists():
        os.rename(folder, state_folder_for_store(aside))
    return aside


def _fold_in_write_ahead_log(store: Path) -> None:
    """Checkpoint `store`'s WAL into it, under a lock no open connection allows."""
    try:
        # mode=rw: never create a database where there was none.
        connection = sqlite3.connect(
            f"{store.resolve().as_uri()}?mode=rw", uri=True, timeout=0, isolation_level=None
        )
    except sqlite3.OperationalError:
        return  # unreadable as SQLite: moved as it is
    with closing(connection):
        try:
            # In WAL mode every open connection holds a shared lock on the
            # database file for as long as it is open, so this fails while a
            # job (running, or just idle between writes) has it open.
            connection.execute("PRAGMA locking_mode=EXCLUSIVE")
            connection.execute("BEGIN EXCLUSIVE")
            connection.execute("COMMIT")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreInUseError(
                    f"{store} is open in another process (a job still running on it?): "
                    "stop that first, then start over"
                ) from None
            return  # not a database SQLite can lock: moved as it is
        except sqlite3.DatabaseError:
            return  # not a database at all (a foreign file): moved as it is, not judged


def _free_name(store: Path, when: time.struct_time) -> Path:
    """`<stem>-<YYYYmmdd-HHMMSS><suffix>`, with `-2`, `-3`, … if that is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S", when)
    attempt = 1
    while True:
        tail = "" if attempt == 1 else f"-{attempt}"
        aside = store.with_name(f"{store.stem}-{stamp}{tail}{store.suffix}")
        taken = [aside, state_folder_for_store(aside)] + [
            aside.with_name(aside.name + suffix) for suffix in _COMPANIONS
        ]
        if not any(os.path.lexists(p) for p in taken):
            return aside
        attempt += 1
