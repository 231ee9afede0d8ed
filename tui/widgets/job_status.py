"""One line: which job, in what state, with which preset and concurrency."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from engine.api import JobState, Snapshot

_STATE_CLASSES = {state: f"-{state.value.replace('_', '-')}" for state in JobState}


class JobStatus(Static):
    """The job's name, state, preset and concurrency: in flight / the limit in
    force ≤ the ceiling the operator's `+`/`-` move."""

    DEFAULT_CSS = """
    JobStatus { height: 1; }
    """

    # (job, state, preset, concurrency ceiling, limit in force, requests in flight)
    status: reactive[tuple[str, JobState, str, int, int, int] | None] = reactive(None, init=False)

    def show(self, snap: Snapshot) -> None:
        self.status = (
            snap.job_name,
            snap.state,
            snap.preset.name,
            snap.concurrency,
            snap.effective_concurrency,
            snap.in_flight_requests,
        )

    def watch_status(self, status: tuple[str, JobState, str, int, int, int] | None) -> None:
        if status is None:
            return
        job, state, preset, ceiling, effective, in_flight = status
        for known, css_class in _STATE_CLASSES.items():
            self.set_class(known is state, css_class)
        self.update(
            Text.assemble(
                ("job ", "dim"),
                (job, "bold"),
                ("   state ", "dim"),
                (str(state).upper().replace("_", " "), "bold"),
                ("   preset ", "dim"),
                (preset, "bold"),
                ("   concurrency ", "dim"),
                (f"{in_flight}/{effective}", "bold"),
                # the ceiling, short enough for 80 columns
                (" ≤", "dim"),
                (str(ceiling), "bold"),
            )
        )
