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

Latency and server errors are the metrics a slower job can mend, and only
when load raised them (this job's, on a provider it overloads).  So the
conservative preset is tried on them, not kept (one rule, `_TRIED`): once
enough calls have come under it (`HELP_ANSWERS` for latency's median,
`HELP_CALLS` for the share of server errors), a level that has not come
back at least halfway to the baseline says the provider is like that
whatever this job does, and the action is lifted at once.  Latency must
also have risen far before the job is slowed for it: its median at least
doubled (`SLOW_DOWN_RISE`; a provider's busy hour moves it by tens of
percent), by the latest answers and by a longer run of them (right after a
burst the answers that come are its stragglers); and it is back once its
median is within half that rise of the baseline (`GateActions._back`),
or by its gate's own calm, whichever comes first.  Any rise of server
errors that trips their gate is enough.

If the operator changes the preset meanwhile (a preset, a concurrency),
their choice wins: the held actions are dropped, and nothing is restored
over it.  Every action taken, held back and lifted is an event.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from engine.config.config_problem import ConfigError
from engine.config.settings import GateAction, Preset
from engine.control.controls import JobControls
from engine.drift.features import LATENCY_SCALE_S
from engine.observe.events import EventBus, EventKind
from engine.observe.snapshot import DriftMetric, DriftState

__all__ = [
    "EXTRA_RETRIES",
    "HELP_ANSWERS",
    "HELP_CALLS",
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

HELP_ANSWERS = 20
"""Answers under the conservative preset after which it must have brought latency down:
enough for a median, few because the preset sends only a few a second."""

RECENT_ANSWERS = 200
"""The longer run of answers whose latency median checks the latest few's."""

HELP_CALLS = 100
"""Calls under the conservative preset after which it must have brought server errors down.

More than for latency: a share needs more calls than a median to tell a
rate from half of it.  At 100, a provider still failing 15 % of calls after
a trip at 15 % (over a baseline of none) looks mended in ~1 % of trials,
and one mended to 1 % never looks otherwise."""

_HELD_ACTIONS = frozenset({GateAction.SMALLER_BATCHES, GateAction.CONSERVATIVE})
_CONSERVATIVE = "conservative"


def with_smaller_batches(preset: Preset) -> Preset:
    """`preset` with half the batch size (at least 1) and `EXTRA_RETRIES` more retries."""
    return replace(
        preset,
        batch_size=max(1, preset.batch_size // 2),
        max_retries=preset.max_retries + EXTRA_RETRIES,
    )


@dataclass(frozen=True, slots=True)
class _TrialRule:
    """How the conservative preset is tried on a metric that load can raise."""

    level: Callable[[Sequence[float]], float]  # of the calls' values: a median, a share
    calls: int  # calls under the preset before it is judged
    rise: float  # how far (relative) the level must have risen before the job is slowed
    unit: str  # for the messages: "s" (a median) or "%" (a share)
    per: str  # what a value is of: "answers" or "calls"
    # A longer run whose level checks the latest calls' (0: none): right after a
    # burst the answers that come are its stragglers, the slowest of hundreds sent
    # at once, so the latest few alone overstate a rise in latency.
    longer: int = 0
    # The least level a rise is measured from (latency: `LATENCY_SCALE_S`, so a provider
    # answering within milliseconds is slowed for only once its median passes twice it).
    floor: float = 0.0

    def risen_line(self, baseline: float, share: float = 1.0) -> float:
        """The level `share` of the rule's rise above `baseline` (or above the floor)."""
        return max(baseline, self.floor) * (1.0 + self.rise * share)

    def shown(self, level: float) -> str:
        return f"{level:.1%}" if self.unit == "%" else f"median {level:.3g} {self.unit}"


_TRIED: Mapping[str, _TrialRule] = {
    # Each answer's latency; each call's server error (1.0) or not (0.0).
    "latency": _TrialRule(
        statistics.median,
        HELP_ANSWERS,
        SLOW_DOWN_RISE,
        "s",
        "answers",
        RECENT_ANSWERS,
        floor=LATENCY_SCALE_S,
    ),
    "server_errors": _TrialRule(statistics.fmean, HELP_CALLS, 0.0, "%", "calls"),
}


@dataclass(slots=True)
class _Held:
    """An action in force for one metric, and how long its metric has been calm."""

    action: GateAction
    needed: int  # calm evaluations in a row before it is lifted
    calm: int = 0
    trial: _Trial | None = None  # is going slower bringing the metric down?
    baseline: float = math.nan  # a tried metric's baseline level when it tripped


@dataclass(slots=True)
class _Trial:
    """A metric under the conservative preset, against its baseline and its level at the trip."""

    rule: _TrialRule
    baseline: float
    tripped: float
    since: float  # when the action was taken: calls sent before it do not count
    seen: list[float] = field(default_factory=list)

    def helped(self) -> bool | None:
        """Whether the level came back halfway or more; None until enough calls came."""
        if len(self.seen) < self.rule.calls:
            return None
        return self.rule.level(self.seen) <= (self.baseline + self.tripped) / 2


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
        # The latest calls' values of each tried metric.
        self._latest = {name: deque[float](maxlen=rule.calls) for name, rule in _TRIED.items()}
        self._longer = {
            name: deque[float](maxlen=rule.longer) for name, rule in _TRIED.items() if rule.longer
        }
        self._waiting: dict[str, float] = {}  # metric → its baseline, while it rose too little

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
        """Act on `metric`'s gate tripping; `baseline` and `window` are its levels then
        (medians, or rates)."""
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
        rule = _TRIED.get(metric)
        if rule is not None and action is GateAction.CONSERVATIVE:
            # The window lags a rise still under way: the latest calls lead.
            now = self._level_now(metric, rule) if self._latest[metric] else window
            if not now >= rule.risen_line(baseline):  # (a NaN waits too)
                if metric not in self._waiting:
                    short = (
                        f"less than the {rule.rise:.0%} rise that slows the job"
                        if rule.rise
                        else "no rise"
                    )
                    self._events.emit(
                        EventKind.DRIFT_ACTION,
                        f"drift gate {metric}: {rule.shown(now)} lately against "
                        f"{rule.shown(baseline)} in the baseline, {short}: "
                        "not slowed while it stays so",
                        metric=metric,
                        action=str(GateAction.WARN),
                    )
                self._waiting[metric] = baseline  # looked at again each evaluation while tripped
                return
            self._waiting.pop(metric, None)
            trial = _Trial(rule, baseline, now, since=self._clock())
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

    def observe(self, metric: str, value: float, sent_at: float | None = None) -> None:
        """One call's value of a tried metric (an answer's latency; 1.0 for a server
        error, 0.0 for a call without), sent at `sent_at` (on this object's clock;
        None: not known): lifts the conservative preset if it is not bringing the
        metric down."""
        self._latest[metric].append(value)
        longer = self._longer.get(metric)
        if longer is not None:
            longer.append(value)
        held = self._held.get(metric)
        if held is None or held.trial is None:
            return
        trial = held.trial
        if sent_at is not None and sent_at < trial.since:
            return  # sent before the job slowed down
        trial.seen.append(value)
        helped = trial.helped()
        if helped is None:
            return
        held.trial = None
        if helped:
            return  # it is the job's own doing: hold until the metric is back
        self._yield_to_operator()
        if metric not in self._held:
            return  # the operator chose meanwhile: nothing to lift
        del self._held[metric]
        before = self._preset()
        after = self._settle()
        restored = _restored(before, after)
        shown = trial.rule.shown
        self._events.emit(
            EventKind.DRIFT_LIFTED,
            f"drift gate {metric}: going slower did not bring it down ({shown(trial.tripped)} "
            f"at the trip, {shown(trial.rule.level(trial.seen))} over {len(trial.seen)} "
            f"{trial.rule.per} since; baseline {shown(trial.baseline)}): the provider is like "
            f"this whatever this job does, so the job is not slowed for it{restored}",
            metric=metric,
            action=str(held.action),
        )

    def review(self, metrics: Iterable[DriftMetric], evaluations: int = 1) -> None:
        """After `evaluations` new evaluations: lift what stayed calm long enough (and act
        on a trip held back while its metric rose too little, once it rose enough)."""
        for name, baseline in list(self._waiting.items()):
            waiting = next((m for m in metrics if m.name == name), None)
            if waiting is None or waiting.state is not DriftState.TRIPPED:
                del self._waiting[name]
            else:
                self.take(name, GateAction.CONSERVATIVE, baseline=baseline)
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
            ) or self._back(metric.name, held)
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

    def _level_now(self, metric: str, rule: _TrialRule) -> float:
        """The latest calls' level, or the longer run's where that is lower."""
        level = rule.level(self._latest[metric])
        longer = self._longer.get(metric)
        return min(level, rule.level(longer)) if longer else level

    def _back(self, metric: str, held: _Held) -> bool:
        """A metric that slowed the job only once it rose far (latency: its median
        doubled) is back once its level is within half that rise of the baseline.

        Its gate's own calm may never come: a latency baseline learned from an
        opening burst holds the burst's fastest answers (the slow ones were
        still on their way).
        """
        rule = _TRIED.get(metric)
        if rule is None or not rule.rise or held.trial is not None:
            return False
        if math.isnan(held.baseline) or len(self._latest[metric]) < rule.calls:
            return False
        return self._level_now(metric, rule) < rule.risen_line(held.baseline, share=0.5)

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
