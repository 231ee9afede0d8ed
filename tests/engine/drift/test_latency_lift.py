"""A latency trip that slowed the job lets go once latency is back near its baseline.

The gate's own calm (its PSI below half the threshold) may never come: a
baseline learned from an opening burst holds its fastest answers.  What
slowed the job — a median at least doubled — is undone once the latest
answers' median is back within half that rise.
"""

from __future__ import annotations

from dataclasses import replace

from engine.config.settings import BUILTIN_PRESETS, GateAction, Preset
from engine.drift.gate_actions import HELP_ANSWERS, LIFT_AFTER, SLOW_DOWN_RISE, GateActions
from engine.observe.events import EventBus, EventKind
from engine.observe.snapshot import DriftMetric, DriftState

FAST = replace(BUILTIN_PRESETS["aggressive"], name="fast", concurrency=64)


class PresetHolder:
    """The part of a job's controls the gate actions use: the preset in force."""

    def __init__(self, preset: Preset) -> None:
        self.preset = preset

    def apply_preset(self, preset: Preset) -> None:
        self.preset = preset


def tripped_latency(psi: float) -> DriftMetric:
    """The latency gate still tripped against its (burst-learned) baseline."""
    state = DriftState.TRIPPED if psi >= 0.25 else DriftState.OK
    return DriftMetric("latency", "latency", "psi", (psi,), 0.25, psi, state, "conservative")


def slowed_by_latency(baseline: float) -> tuple[GateActions, PresetHolder, EventBus]:
    holder = PresetHolder(FAST)
    events = EventBus()
    actions = GateActions(
        controls=holder,  # type: ignore[arg-type]
        preset=lambda: holder.preset,
        presets=BUILTIN_PRESETS,
        events=events,
    )
    for _ in range(HELP_ANSWERS):
        actions.observe_latency(baseline * (2 + SLOW_DOWN_RISE))  # tripled
    actions.take("latency", GateAction.CONSERVATIVE, baseline=baseline, window=baseline * 3)
    assert holder.preset.name == "conservative"
    # Under the conservative preset latency comes back: going slower helped.
    for _ in range(FAST.concurrency + HELP_ANSWERS):
        actions.observe_latency(baseline * 1.25)
    return actions, holder, events


def test_latency_back_within_half_the_rise_lifts_the_conservative_preset() -> None:
    actions, holder, events = slowed_by_latency(baseline=0.8)

    # Its PSI against the baseline stays above the gate's own calm line...
    actions.review([tripped_latency(0.4)], evaluations=LIFT_AFTER)

    # ...but the median (1.0 s) is within half the doubling (1.2 s): the job goes on at speed.
    assert holder.preset == FAST
    lifted = [e for e in events.recent() if e.kind is EventKind.DRIFT_LIFTED]
    assert lifted and lifted[-1].data == {"metric": "latency", "action": "conservative"}


def test_latency_still_high_keeps_the_job_slowed() -> None:
    actions, holder, _ = slowed_by_latency(baseline=0.8)
    for _ in range(HELP_ANSWERS):
        actions.observe_latency(0.8 * 1.7)  # more than half the doubling above

    actions.review([tripped_latency(0.4)], evaluations=LIFT_AFTER)

    assert holder.preset.name == "conservative"
