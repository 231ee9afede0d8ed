"""The one control surface of a job: what every front end may ask of it.

`JobControls` is declared here once.  The engine implements it; so do the
dashboard's view of a job in another process (`tui.remote_source`) and the
tests' fixed source; the control server steers whatever implements it.  A
control only changes the engine's state: its effect shows in the next
snapshot, and nothing here hands a front end a copy of an engine setting.

The step controls are relative (`adjust_concurrency(+1)`), so a front end
never computes a new value from a snapshot it read a moment ago, which may
already be stale.  The engine steps from the value in force and clamps
nothing silently: a step that would cross a bound stops at it, and the
returned `Adjustment` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from engine.config.setting_bounds import Bound
from engine.config.settings import Preset
from engine.observe.snapshot import JobState, Snapshot


@dataclass(frozen=True, slots=True)
class Adjustment:
    """What a relative step did: from `old` to `new`, where `old + delta` was asked."""

    setting: str  # for messages: "concurrency", "fetch concurrency"
    old: int
    new: int
    asked: int

    @classmethod
    def within(cls, bound: Bound, setting: str, old: int, delta: int) -> Adjustment:
        """The step from `old` by `delta`, stopped at `bound`'s edge if it would cross it."""
        asked = old + delta
        return cls(setting, old, min(bound.high, max(bound.low, asked)), asked)

    @property
    def changed(self) -> bool:
        return self.new != self.old

    @property
    def at_bound(self) -> bool:
        """Whether the bound stopped the step short of what was asked."""
        return self.new != self.asked

    @property
    def bound_message(self) -> str:
        """Why it stopped short, for the user: "4096 is the most" ("" when it did not)."""
        if not self.at_bound:
            return ""
        return f"{self.new} is the {'most' if self.asked > self.new else 'least'}"


@runtime_checkable
class JobControls(Protocol):
    """A job as the front ends see it: a snapshot and the controls.

    Controls return at once.  A bad value raises `ValueError` (a concurrency
    outside `setting_bounds`, fetch concurrency for a job that does not
    crawl), an unknown preset `KeyError` and a bad preset value `ConfigError`;
    each changes nothing.  A job in another process learns of a control only
    later: there the step controls return None and a refusal shows in the
    event log.
    """

    def snapshot(self) -> Snapshot:
        """The job's state right now, as an immutable value."""
        ...

    def set_concurrency(self, value: int) -> None:
        """Set the most requests in flight to `value`."""
        ...

    def adjust_concurrency(self, delta: int) -> Adjustment | None:
        """Move the most requests in flight by `delta` from the value in force."""
        ...

    def set_fetch_concurrency(self, value: int) -> None:
        """Set a crawl job's fetches in flight across all hosts to `value`."""
        ...

    def adjust_fetch_concurrency(self, delta: int) -> Adjustment | None:
        """Move a crawl job's fetches in flight by `delta` from the value in force."""
        ...

    def apply_preset(self, preset: str | Preset) -> None:
        """Switch to a preset: one the job names, or a whole (checked) preset value."""
        ...

    def pause(self) -> None:
        """Admit no new requests; those in flight finish and are stored."""
        ...

    def resume(self) -> None:
        """Admit requests again after `pause`."""
        ...

    def drain(self) -> None:
        """Finish what is in flight, store it, then stop; the rest stays pending."""
        ...

    def stop(self) -> None:
        """Stop now: in-flight requests are abandoned and their chunks stay pending."""
        ...


@runtime_checkable
class RunnableJob(JobControls, Protocol):
    """A job this process runs (the engine): its controls, and the run itself."""

    async def run(self) -> JobState:
        """Run the job to its end; the state it ended in."""
        ...

    @property
    def failure_reason(self) -> str:
        """Why the engine itself could not go on ("" when it could)."""
        ...
