"""The rerun notice: said only when a finished run stored nothing new."""

from __future__ import annotations

from engine.api import Counts, JobState, Snapshot
from tui.fresh_start import nothing_left_notice


def finished(counts: Counts) -> Snapshot:
    return Snapshot(job_name="job", state=JobState.DONE, counts=counts)


def test_a_rerun_with_every_chunk_done_before_says_so() -> None:
    notice = nothing_left_notice(finished(Counts(total=30, skipped=30)), "job.db")

    assert notice is not None and notice.startswith("nothing to do: all 30 chunks")


def test_a_rerun_that_copied_answers_to_new_sources_did_something() -> None:
    assert nothing_left_notice(finished(Counts(total=40, skipped=30, cached=10)), "job.db") is None
