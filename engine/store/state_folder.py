"""A job's state folder: beside its SQLite store, named after it.

It holds what belongs to one store but not in it: the run lease that tells
a live run from a dead one, and a headless run's control socket.  Moving a
store aside (`--fresh`) moves its state folder with it.
"""

from __future__ import annotations

from pathlib import Path

STATE_SUFFIX = ".crawldeck"


def state_folder_for_store(store: str | Path) -> Path:
    """The job's state folder: next to its SQLite store, named after it."""
    store = Path(store)
    return store.with_name(store.name + STATE_SUFFIX)
