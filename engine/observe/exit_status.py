"""What `crawldeck run` and `crawldeck demo` exit with, from how the job ended.

- 0: every chunk ended done and no input record was skipped.
- 1: chunks failed, the job was stopped or drained before the end, or it
  could not go on, which includes an input whose every record was skipped.
- 2: nothing ran: a bad job file, flag or input (one line says which).
- 3: every chunk ended done, but some input records were skipped (unreadable,
  binary, or without text); the event log names each, and the summary line
  counts them.  A script that only trusts 0 notices; one that accepts
  "done" can accept 3 too.
"""

from __future__ import annotations

from engine.observe.snapshot import Counts, JobState

DONE = 0
NOT_DONE = 1
RECORDS_SKIPPED = 3


def job_exit_status(state: JobState | None, counts: Counts) -> int:
    """The exit status of a job that ran and ended in `state` (None: unknown) with `counts`."""
    if state is not JobState.DONE:
        return NOT_DONE
    if counts.records_skipped:
        return RECORDS_SKIPPED
    return DONE
