"""A latency trip that slowed the job lets go once latency is back near its baseline.

The gate's own calm (its PSI below half the threshold) may never come: a
baseline learned from an opening burst holds its fastest answers.  What
slowed the job — a median at least doubled — is undone once the latest
answers' median is back within half that rise.
"""

from __future__ import annotations

from dataclasses import replace

from engine.config.settings import BUILTIN_PRESETS, GateAction, Preset
from engine.drift.features import LATENCY_SCALE_S
from engine.drift.gate_actions import (
    HELP_ANSWERS,
    LIFT_AFTER,
    RECENT_ANSWERS,
    SLOW_DOWN_RISE,
    GateActions,
)
from engine.observe.events import EventBus, EventKind
from engine.observe.snapshot import DriftMetric, DriftState

FAST = replace(BUILTIN_PRESETS["aggressive"], name="fast", concurrency=64)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def observe_latency(actions: GateActions, clock: Clock, seconds: float) -> None:
    """An answer that took `seconds`, come now: sent `seconds` ago."""
    actions.observe("latency", seconds, clock.now - seconds)


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
    clock = Clock()
    actions = GateActions(
        controls=holder,  # type: ignore[arg-type]
        preset=lambda: holder.preset,
        presets=BUILTIN_PRESETS,
        events=events,
        clock=clock,
    )
    for _ in range(RECENT_ANSWERS):
        clock.now += 0.1
        observe_latency(actions, clock, baseline * (2 + SLOW_DOWN_RISE))  # tripled
    actions.take("latency", GateAction.CONSERVATIVE, baseline=baseline, window=baseline * 3)
    assert holder.preset.name == "conservative"
    # Answers to requests sent before it still come, as slow; then those sent under the
    # conservative preset, and latency is back: going slower helped.
    for _ in range(FAST.concurrency):
        clock.now += 0.01
        observe_latency(actions, clock, baseline * 3)
    for _ in range(HELP_ANSWERS):
        clock.now += 0.5  # a few a second under the conservative preset
        observe_latency(actions, clock, baseline * 1.25)
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
    clock = Clock()
    for _ in range(RECENT_ANSWERS):
        observe_latency(actions, clock, 0.8 * 1.7)  # more than half the doubling above

    actions.review([tripped_latency(0.4)], evaluations=LIFT_AFTER)

    assert holder.preset.name == "conservative"


def test_the_stragglers_of_a_burst_do_not_slow_the_job() -> None:
    """Right after a burst the answers that come are its slowest: the latest few's
    median doubled, the longer run's did not — the job is not slowed."""
    holder = PresetHolder(FAST)
    clock = Clock()
    actions = GateActions(
        controls=holder,  # type: ignore[arg-type]
        preset=lambda: holder.preset,
        presets=BUILTIN_PRESETS,
        events=EventBus(),
        clock=clock,
    )
    for _ in range(RECENT_ANSWERS - HELP_ANSWERS):
        observe_latency(actions, clock, 1.0)
    for _ in range(HELP_ANSWERS):
        observe_latency(actions, clock, 2.0)  # the stragglers

    actions.take("latency", GateAction.CONSERVATIVE, baseline=0.8, window=1.2)

    assert holder.preset == FAST


def test_a_provider_answering_in_milliseconds_is_not_slowed_for_a_rise_under_it() -> None:
    """2 ms to 6 ms (the event loop's own delays on a busy machine): no preset change; the
    same tripling from 0.05 s slows the job."""
    for baseline, slowed in ((0.002, False), (LATENCY_SCALE_S, True)):
        holder = PresetHolder(FAST)
        clock = Clock()
        actions = GateActions(
            controls=holder,  # type: ignore[arg-type]
            preset=lambda holder=holder: holder.preset,  # type: ignore[misc]
            presets=BUILTIN_PRESETS,
            events=EventBus(),
            clock=clock,
        )
        for _ in range(RECENT_ANSWERS):
            clock.now += 0.1
            observe_latency(actions, clock, baseline * 3)

        actions.take("latency", GateAction.CONSERVATIVE, baseline=baseline, window=baseline * 3)

        assert (holder.preset.name == "conservative") is slowed, baseline
