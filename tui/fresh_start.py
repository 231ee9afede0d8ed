"""Starting a job over, and saying so when a rerun had nothing left to do.

Results are keyed by chunk, prompt version and model, so running the same
job again sends only what is not done yet.  A newcomer who runs a finished
job again sees a run that does nothing; these lines tell them why, and how
to start over (`--fresh`) without losing what the earlier run stored.
"""

from __future__ import annotations

from pathlib import Path

from engine.api import JobState, Snapshot, set_store_aside

FRESH_FLAG = "--fresh"


def nothing_left_notice(snap: Snapshot, store: str | Path) -> str | None:
    """One line when a finished run found every chunk already done (else None)."""
    counts = snap.counts
    stored_now = counts.done or counts.failed or counts.cached  # copies of answers are news
    if snap.state is not JobState.DONE or stored_now or not counts.skipped:
        return None
    return (
        f"nothing to do: all {counts.skipped} chunks were already done in {store} "
        f"(run again with {FRESH_FLAG} to start over; the old store is kept, renamed)"
    )


def start_over(store: str | Path) -> str:
    """Set the job's store aside for `--fresh`; one line saying where it went.

    Raises `StoreInUseError` (a job is running on it) or `OSError`.
    """
    aside = set_store_aside(store)
    if aside is None:
        return f"{FRESH_FLAG}: nothing stored yet at {store}"
    return f"{FRESH_FLAG}: the earlier results are kept in {aside}; starting over in {store}"
