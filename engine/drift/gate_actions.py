"""What a tripped drift gate does to a job, and its undoing once the metric is back.

A gate's action goes through the job's controls (`JobControls`), the same
an operator uses.  Pause and stop are the operator's to undo.  The two
actions that slow a job are held only while they are needed:

- `smaller_batches` halves the batch size and allows `EXTRA_RETRIES` more
  retries: a malformed or incomplete answer then costs fewer chunks, and
  they get more tries; concurrency is left alone, because sending fewer
  requests at once does not mend an answer;
- `conservative` switches to the conservative preset.

Both are composed on the preset in force when the first of them acted (the
*base*): conservative replaces it, smaller batches halve whatever is in
force.  An action is lifted once its metric has stayed below half its
threshold for `LIFT_AFTER` evaluations in a row (the monitor clears a trip
after two below the threshold; half of it is the line between its "ok" and
"warning"), and when none is held any more the base is restored.  Each time
a metric trips again after a lift, its next lift waits twice as long (up to
`LIFT_AFTER_MOST`), so a job whose own load moves the metric does not flap.

Latency is the one metric a slower job can mend, and only when the job's own
load raised it.  So the conservative preset is put in force for latency
only when its median at least doubled (`SLOW_DOWN_RISE`; a provider's busy
hour moves it by tens of percent), and it is tried, not kept: once
`HELP_ANSWERS` answers have come under it, a median that has not come back
at least halfway to the baseline says the provider is slower whatever this
job does, and the action is lifted at once.  One that helped is lifted like
the others, or once the latest answers' median is back within half the rise
that slowed the job, whichever comes first (`GateActions._latency_back`).

If the operator changes the preset meanwhile (a preset, a concurrency),
their choice wins: the held actions are dropped, and nothing is restored
over it.  Every action taken, held back and lifted is an event.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from engine.config.config_problem import ConfigError
from engine.config.settings import GateAction, Preset
from engine.control.controls import JobControls
from engine.observe.events import EventBus, EventKind
from engine.observe.snapshot import DriftMetric, DriftState

__all__ = [
    "EXTRA_RETRIES",
    "HELP_ANSWERS",
    "LIFT_AFTER",
    "LIFT_AFTER_MOST",
    "SLOW_DOWN_RISE",
    "GateActions",
    "with_smaller_batches",
]

LIFT_AFTER = 4
"""Evaluations in a row with the metric below half its threshold before its action is lifted."""

LIFT_AFTER_MOST = 64
"""The longest a re-tripping metric's lift waits, in evaluations."""

EXTRA_RETRIES = 2
"""Retries `smaller_batches` adds to the preset's `max_retries`."""

SLOW_DOWN_RISE = 1.0
"""How far (relative) latency's median must rise before a gate slows the job for it.

Doubled: measured at the provider, a busy hour's +30 % showed as +43-50 %
(`tests/benchmarks/drift_gate_cost.py`), and a trial of the conservative
preset costs seconds of a fast job."""

RECENT_ANSWERS = 200
"""The longer run of answers whose latency median checks the latest few's."""

HELP_ANSWERS = 20
"""Answers under the conservative preset after which it must have brought latency down:
enough for a median, few because the preset sends only a few a second."""

_HELD_ACTIONS = frozenset({GateAction.SMALLER_BATCHES, GateAction.CONSERVATIVE})
_CONSERVATIVE = "conservative"


def with_smaller_batches(preset: Preset) -> Preset:
    """`preset` with half the batch size (at least 1) and `EXTRA_RETRIES` more retries."""
    return replace(
        preset,
        batch_size=max(1, preset.batch_size // 2),
        max_retries=preset.max_retries + EXTRA_RETRIES,
    )


@dataclass(slots=True)
class _Held:
    """An action in force for one metric, and how long its metric has been calm."""

    action: GateAction
    needed: int  # calm evaluations in a row before it is lifted
    calm: int = 0
    trial: _Trial | None = None  # for latency: is going slower bringing it down?
    baseline: float = math.nan  # for latency: its baseline median when it tripped


@dataclass(slots=True)
class _Trial:
    """Latency under the conservative preset, against its baseline and its median at the trip."""

    baseline: float
    tripped: float
    since: float  # when the action was taken: answers to requests sent before it do not count
    seen: list[float] = field(default_factory=list)

    def helped(self) -> bool | None:
        """Whether the median came back halfway or more; None until `HELP_ANSWERS` came."""
        if len(self.seen) < HELP_ANSWERS:
            return None
        return statistics.median(self.seen) <= (self.baseline + self.tripped) / 2


class GateActions:
    """Takes gates' actions on a job and lifts the slowing ones when their metrics come back.

    `preset()` is the preset in force; `presets` the ones the job knows by
    name (the conservative action needs one named "conservative").
    """

    def __init__(
        self,
        *,
        controls: JobControls,
        preset: Callable[[], Preset],
        presets: Mapping[str, Preset],
        events: EventBus,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._controls = controls
        self._clock = clock
        self._preset = preset
        self._presets = presets
        self._events = events
        self._held: dict[str, _Held] = {}
        self._next_wait: dict[str, int] = {}  # metric → calm evaluations its next lift needs
        self._base: Preset | None = None  # in force before the first held action
        self._applied: Preset | None = None  # what the held actions made of it
        self._latest: deque[float] = deque(maxlen=HELP_ANSWERS)  # the latest answers' latency
        # A longer run of them: the answers just after a burst are its stragglers (the
        # slowest of hundreds sent at once), so the latest few alone overstate a rise.
        self._recent: deque[float] = deque(maxlen=RECENT_ANSWERS)
        self._waiting: float | None = None  # a latency trip's baseline, while it rose too little

    @property
    def held(self) -> dict[str, GateAction]:
        """The actions in force, by metric."""
        return {metric: held.action for metric, held in self._held.items()}

    def take(
        self,
        metric: str,
        action: GateAction,
        *,
        baseline: float = math.nan,
        window: float = math.nan,
    ) -> None:
        """Act on `metric`'s gate tripping; `baseline` and `window` are its medians then."""
        if action is GateAction.PAUSE:
            self._controls.pause()
            return
        if action is GateAction.STOP:
            # Drain, not stop: what is in flight is already paid for; keep it.
            self._controls.drain()
            return
        if action not in _HELD_ACTIONS:
            return
        if action is GateAction.CONSERVATIVE and _CONSERVATIVE not in self._presets:
            return
        trial = None
        if metric == "latency" and action is GateAction.CONSERVATIVE:
            # The window's median lags a rise still under way: the latest answers' leads.
            now = self._latency_now() if self._latest else window
            rise = now / baseline - 1.0 if baseline > 0 else math.nan
            if not rise >= SLOW_DOWN_RISE:
                if self._waiting is None:
                    self._events.emit(
                        EventKind.DRIFT_ACTION,
                        f"drift gate latency: its median rose {rise:.0%}, less than the "
                        f"{SLOW_DOWN_RISE:.0%} that slows the job: not slowed while it stays so",
                        metric=metric,
                        action=str(GateAction.WARN),
                    )
                self._waiting = baseline  # looked at again each evaluation while tripped
                return
            self._waiting = None
            trial = _Trial(baseline, now, since=self._clock())
        self._yield_to_operator()
        if self._base is None:
            self._base = self._preset()
        wait = self._next_wait.get(metric, LIFT_AFTER)
        self._next_wait[metric] = min(LIFT_AFTER_MOST, 2 * wait)
        self._held[metric] = _Held(
            action, wait, trial=trial, baseline=trial.baseline if trial else math.nan
        )
        before = self._preset()
        after = self._settle()
        if after is not None and after != before:
            self._events.emit(
                EventKind.DRIFT_ACTION,
                f"drift gate {metric}: {_action_words(action)} "
                f"(preset {_described(before)} → {_described(after)}) until it is back",
                metric=metric,
                action=str(action),
                batch_size=after.batch_size,
                concurrency=after.concurrency,
            )

    def observe_latency(self, seconds: float) -> None:
        """One answer's latency: lifts the conservative preset if it is not bringing it down."""
        self._latest.append(seconds)
        self._recent.append(seconds)
        held = self._held.get("latency")
        if held is None or held.trial is None:
            return
        trial = held.trial
        if self._clock() - seconds < trial.since:
            return  # sent before the job slowed down
        trial.seen.append(seconds)
        helped = trial.helped()
        if helped is None:
            return
        held.trial = None
        if helped:
            return  # it is the job's own doing: hold until latency is back
        self._yield_to_operator()
        if "latency" not in self._held:
            return  # the operator chose meanwhile: nothing to lift
        del self._held["latency"]
        before = self._preset()
        after = self._settle()
        restored = _restored(before, after)
        self._events.emit(
            EventKind.DRIFT_LIFTED,
            f"drift gate latency: going slower did not bring it down (median "
            f"{trial.tripped:.3g} s at the trip, {statistics.median(trial.seen):.3g} s over "
            f"{len(trial.seen)} answers since; baseline {trial.baseline:.3g} s): the provider "
            f"is slower whatever this job does, so the job is not slowed for it{restored}",
            metric="latency",
            action=str(held.action),
        )

    def review(self, metrics: Iterable[DriftMetric], evaluations: int = 1) -> None:
        """After `evaluations` new evaluations: lift what stayed calm long enough (and act
        on a latency trip held back while it rose too little, once it rose enough)."""
        if self._waiting is not None:
            latency = next((m for m in metrics if m.name == "latency"), None)
            if latency is None or latency.state is not DriftState.TRIPPED:
                self._waiting = None
            else:
                self.take("latency", GateAction.CONSERVATIVE, baseline=self._waiting)
        if not self._held:
            return
        self._yield_to_operator()
        lifted: list[tuple[str, _Held]] = []
        for metric in metrics:
            held = self._held.get(metric.name)
            if held is None:
                continue
            calm = (
                metric.state is DriftState.OK
                and metric.current is not None
                and metric.current < metric.threshold / 2
            ) or self._latency_back(metric.name, held)
            held.calm = held.calm + evaluations if calm else 0
            if held.calm >= held.needed:
                lifted.append((metric.name, held))
        if not lifted:
            return
        for name, _ in lifted:
            del self._held[name]
        before = self._preset()
        after = self._settle()
        restored = _restored(before, after)
        for name, held in lifted:
            self._events.emit(
                EventKind.DRIFT_LIFTED,
                f"drift gate {name} back below half its threshold for {held.calm} "
                f"evaluations: {_action_words(held.action)} lifted{restored}",
                metric=name,
                action=str(held.action),
            )

    def _latency_back(self, metric: str, held: _Held) -> bool:
        """Latency slowed the job only once its median doubled: it is back once the
        latest answers' median is within half that rise of the baseline.

        Its distribution may never come as close to the baseline as the gate's
        own calm asks: a baseline learned from the opening burst's answers is
        the fastest of them (the slow ones were still on their way).
        """
        if metric != "latency" or math.isnan(held.baseline) or held.trial is not None:
            return False
        if len(self._latest) < HELP_ANSWERS:
            return False
        return self._latency_now() < held.baseline * (1 + SLOW_DOWN_RISE / 2)

    def _latency_now(self) -> float:
        """The latest answers' median, or the longer run's where that is lower."""
        return min(statistics.median(self._latest), statistics.median(self._recent))

    def _yield_to_operator(self) -> None:
        """Drop the held actions if the preset in force is no longer what they made."""
        if self._applied is None or self._preset() == self._applied:
            return
        dropped = ", ".join(sorted(self._held))
        self._held.clear()
        self._base = self._applied = None
        self._events.emit(
            EventKind.DRIFT_LIFTED,
            f"the preset was changed by hand: drift gate actions ({dropped}) "
            "are left to the operator and nothing will be restored over it",
        )

    def _settle(self) -> Preset | None:
        """Put in force what the held actions make of the base; the base once none is held.

        Returns the preset in force afterwards, or None if it could not be applied.
        """
        base = self._base
        if base is None:
            return self._preset()
        wanted = base
        actions = {held.action for held in self._held.values()}
        if GateAction.CONSERVATIVE in actions:
            wanted = self._presets[_CONSERVATIVE]
        if GateAction.SMALLER_BATCHES in actions:
            wanted = with_smaller_batches(wanted)
        if wanted != self._preset():
            try:
                self._controls.apply_preset(wanted)
            except ConfigError as exc:  # e.g. memory limits below this process's floor
                self._events.emit(EventKind.WARNING, f"drift gate: preset not applied: {exc}")
                return None
        if self._held:
            self._applied = self._preset()
        else:
            self._base = self._applied = None
        return self._preset()


def _action_words(action: GateAction) -> str:
    if action is GateAction.SMALLER_BATCHES:
        return "smaller batches, more retries"
    return "conservative preset"


def _restored(before: Preset, after: Preset | None) -> str:
    """The end of a lifting event's message: the preset it restored, if it changed."""
    if after is None or after == before:
        return ""
    return f"; preset {_described(before)} → {_described(after)}"


def _described(preset: Preset) -> str:
    return f"{preset.name}: concurrency {preset.concurrency}, batch {preset.batch_size}"
