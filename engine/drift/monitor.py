"""The drift monitor: learns what normal output looks like, then watches for change.

The engine calls `observe_answer` once per answer from the provider,
`observe_failed_call` once per call that came back without one (a 429
aside), and `observe_result` once per chunk result.  The monitor

1. learns a baseline from the first `baseline_size` results *and* answers
   (or takes one saved from an earlier run, `use_baseline`);
2. keeps sliding windows of what came after in numpy ring buffers;
3. every `evaluate_every` ticks (a tick is a result, or an answer that gave
   none) evaluates each metric against the baseline:

   - PSI over quintiles of the baseline for the distributions: output
     tokens, latency and cost per answer (windows of `window_size` answers),
     answer length and items per result (windows of `window_size` results).
     The PSI that chance alone gives at the two sample sizes is subtracted
     (`psi_by_chance`, 0.02–0.06 here), so a gate at 0.25 means the same in
     a window of 100 as in one of 200, where the first windows would
     otherwise carry most of the false alarms;
   - a one-sided two-proportion z for the rates over the last
     `window_size` ticks: parse failures per answer, answers missing ids
     per parsed answer, empty or refusal-like results per result; and over
     the last `window_size` calls, server errors (5xx, resets, hangs) per
     call, whose z counts in full only for a rise of 8 points or more
     (`_MIN_RISE`);
   - `sudden_shift`: how many per-answer features a sequential detector
     (Page-Hinkley, see `detectors.py`) saw jump, on the stream
     itself rather than against the baseline, within the last
     `window_size` ticks;
   - the cosine distance between the embedding centroids, when enabled.

Why per-answer windows count answers: tokens, latency and cost are known
per answer only, so a window of 200 results holds ~40 independent values of
them; PSI at that size is mostly noise (measured: a third of
same-distribution comparisons passed 0.25).  The rates' z accounts for its sample size, so the
rates can look at the same short span as everything else.

A metric trips only when its gate's threshold is met on two consecutive
evaluations, and clears only after two consecutive evaluations below it:
one unlucky window neither stops a job nor makes a trip flap.  Between half
the threshold and a trip a metric is in warning.  Each trip is reported
once by `trips()`; the engine turns it into an event and takes its action.

Cost: observing appends to a list; the numpy work happens once per
evaluation, so it is shared by `evaluate_every` results.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.config.settings import METRICS, DriftSettings, Gate, GateAction
from engine.drift.baseline import (
    ANSWER_FEATURES,
    DISTRIBUTIONS,
    RATES,
    Baseline,
    Feature,
)
from engine.drift.detectors import MeanShiftDetector, ShiftDetector, page_hinkley
from engine.drift.features import LATENCY_SCALE_S, AnswerFeatures, ResultFeatures
from engine.drift.statistics import (
    bin_proportions,
    centroid_cosine_distance,
    psi_by_chance,
    psi_of_proportions,
    quantile_edges,
    two_proportion_z,
)
from engine.observe.snapshot import DriftMetric, DriftState

__all__ = ["CONFIRMATIONS", "PSI_BINS", "SERIES_LENGTH", "DriftMonitor", "DriftTrip"]

PSI_BINS = 5
"""Quintiles: PSI's sampling noise grows with bins − 1, and windows are a few hundred."""

CONFIRMATIONS = 2
"""Consecutive evaluations at or past the threshold before a trip (and below it to clear)."""

SERIES_LENGTH = 120
"""Evaluations kept per metric for the dashboard's charts."""

_LEARN_CAP = 20
"""Baseline samples kept per feature, in multiples of `baseline_size`, whatever the wait."""

MIN_MEDIAN_SHIFT = 0.2
"""How far (relative) a distribution's median must move for its drift to count in full.

PSI and the shift detector judge *where in the baseline* values fall, so a
narrow distribution trips on moves nobody cares about: in a live run,
latency went from 28 to 29 ms as concurrency ramped up and scored PSI 5.
A distribution's PSI is weighted by (median move / this)⁴: full weight at
a 20% move, a sixteenth at half of it, so PSI from a narrow distribution's
small move cannot trip; a sudden shift counts only when the recent median
moved this far.  (A latency baseline learned during the start-up burst sat
20% above the steady state and tripped in 9 of 22 healthy runs with the
square.)  A change of shape without a move of the median goes unseen.
"""
# Latency also moves with the job's own load (concurrency ramping up, a
# provider's busy hour) by tens of percent; only a larger move says the
# provider changed.
_MIN_MOVE = {"latency": 0.5}
# The least median a move is measured against (latency: milliseconds' jitter is load).
_LEAST_SCALE = {"latency": LATENCY_SCALE_S}
# Features where only a rise is a problem: a faster or cheaper answer is not
# drift to act on (a latency baseline learned under a slow start, or a
# provider getting quicker, once switched a healthy job to the conservative
# preset and cut its throughput for nothing).  Shorter answers are watched by
# their own features.
_ONLY_RISES = frozenset({"latency", "cost"})
# Server errors count in full once their share of calls rose 8 points; a
# smaller rise counts (rise / 8 points)².  A baseline of ~200 calls reads a
# steady 2 % as anything from none to 4 %, and against none, a window of 200
# calls at 6 % reaches z 4: measured on the test's synthetic stream, a steady
# 2 % or 5 % then tripped in 1 of 120 runs of 10,000 calls; with this, in none
# of 400, while a rise from 1 % to 15 % trips within 200 calls (median 125).
# A smaller rise is retried away for less than going slower would cost.
_MIN_RISE = {"server_errors": 0.08}
_RISE_POWER = 2
SHIFT_RECENT = 50  # answers whose median tells whether a detected jump is worth a trip

SHIFT_FEATURES: tuple[Feature, ...] = ANSWER_FEATURES
"""The features watched for sudden jumps in the mean: the per-answer ones.

Their PSI windows are `window_size` answers, five times slower to fill than
a per-result window, so a jump in latency would show late without this.
Per-result features are left out on purpose: their PSI already reacts
within ~150 results, and chunks of one document resemble each other, so a
run of unusual documents looks like a jump.  Measured while choosing, on
synthetic answers: one false alarm per ~100,000 results with them, one per
~300,000 without."""

_STATISTICS = {
    **{feature.name: "psi" for feature in DISTRIBUTIONS},
    **{feature.name: "z" for feature in RATES},
    "sudden_shift": "shifts",
    "embeddings": "cos dist",
}
_PER = {feature.name: feature.per for feature in DISTRIBUTIONS}
_LABELS = {
    **{feature.name: feature.label for feature in (*DISTRIBUTIONS, *RATES)},
    "sudden_shift": "sudden shift",
    "embeddings": "embeddings",
}

# Columns of the answer window.
_A_TOKENS, _A_LATENCY, _A_COST, _A_FAILED, _A_MISSING, _A_PARSED_CHUNKS, _A_TICK = range(7)
# Columns of the result window.
_R_CHARS, _R_ITEMS, _R_REFUSAL = range(3)
# Each distribution's column, in the answer or result window as its `per` says.
_COLUMNS = {
    "output_tokens": _A_TOKENS,
    "latency": _A_LATENCY,
    "cost": _A_COST,
    "answer_chars": _R_CHARS,
    "items": _R_ITEMS,
}


@dataclass(frozen=True, slots=True)
class DriftTrip:
    """A gate that just tripped, with the numbers an event message needs.

    `baseline_value` and `window_value` are what moved: medians for a
    distribution, proportions for a rate, detections for sudden shifts
    (`detail` names the features), spread and distance for embeddings.
    `at` is the monitor's clock when it tripped.
    """

    metric: str
    label: str
    statistic: str
    value: float
    threshold: float
    action: GateAction
    baseline_value: float
    window_value: float
    baseline_n: int
    window_n: int
    unit: str = ""
    detail: str = ""
    at: float = 0.0

    def message(self) -> str:
        """One line for the event log."""
        if self.statistic == "z":
            moved = (
                f"{100 * self.baseline_value:.1f}% → {100 * self.window_value:.1f}% of {self.unit}"
            )
        elif self.statistic == "psi":
            moved = (
                f"median {_short(self.baseline_value)} → {_short(self.window_value)} {self.unit}"
            )
        else:
            moved = self.detail
        return (
            f"drift: {self.label} {self.statistic} {self.value:.2f} ≥ {_short(self.threshold)}"
            f" ({moved}; last {self.window_n} vs baseline {self.baseline_n}) → {self.action}"
        )


def _median(values: NDArray[np.float64]) -> float:
    """The median by partition: a few times cheaper than `np.median` on these small arrays."""
    n = values.size
    if n == 0:
        return math.nan
    half = n // 2
    if n % 2:
        return float(np.partition(values, half)[half])
    low_high = np.partition(values, (half - 1, half))
    return float(low_high[half - 1] + low_high[half]) / 2.0


def _median_move(window_median: float, baseline_median: float, name: str) -> float:
    """The window median's distance from the baseline's, relative to the baseline's (for
    latency, to at least `LATENCY_SCALE_S`); for a feature where only a rise matters, a
    fall is no move at all."""
    if name in _ONLY_RISES and window_median <= baseline_median:
        return 0.0
    scale = max(abs(baseline_median), _LEAST_SCALE.get(name, 1e-12))
    return abs(window_median - baseline_median) / scale


def _short(value: float) -> str:
    return f"{value:.3g}"


@dataclass(slots=True)
class _Track:
    """One metric's verdicts over time and the two-in-a-row rule."""

    name: str
    gate: Gate
    series: deque[float] = field(default_factory=lambda: deque(maxlen=SERIES_LENGTH))
    state: DriftState = DriftState.LEARNING
    above: int = 0  # consecutive evaluations at or past the threshold
    below: int = 0  # consecutive evaluations under it, while tripped
    trips: int = 0
    baseline_n: int = 0
    window_n: int = 0

    def record(self, value: float, baseline_n: int, window_n: int) -> bool:
        """Take one evaluation; True if this one trips the gate."""
        self.series.append(value)
        self.baseline_n, self.window_n = baseline_n, window_n
        threshold = self.gate.threshold
        if value >= threshold:
            self.above += 1
            self.below = 0
        else:
            self.above = 0
            self.below += 1
        if self.state is DriftState.TRIPPED:
            if self.below >= CONFIRMATIONS:
                self.state = DriftState.WARNING if value >= threshold / 2 else DriftState.OK
            return False
        if self.above >= CONFIRMATIONS:
            self.state = DriftState.TRIPPED
            self.trips += 1
            return True
        self.state = DriftState.WARNING if value >= threshold / 2 else DriftState.OK
        return False

    def metric(self) -> DriftMetric:
        return DriftMetric(
            name=self.name,
            label=_LABELS[self.name],
            statistic=_STATISTICS[self.name],
            values=tuple(self.series),
            threshold=self.gate.threshold,
            current=self.series[-1] if self.series else None,
            state=self.state,
            action=str(self.gate.action),
            baseline_size=self.baseline_n,
            window_size=self.window_n,
            trips=self.trips,
        )


class _Ring:
    """The last `capacity` rows of a numeric table, in one preallocated array.

    `rows()` gives the rows in storage order, not arrival order: every
    statistic here is order-free, and skipping the reorder saves a copy.
    """

    def __init__(self, capacity: int, columns: int, dtype: type = np.float64) -> None:
        self._data: NDArray[Any] = np.zeros((capacity, columns), dtype=dtype)
        self._next = 0
        self.count = 0

    def extend(self, rows: NDArray[Any]) -> None:
        capacity = self._data.shape[0]
        n = rows.shape[0]
        if n >= capacity:
            self._data[:] = rows[n - capacity :]
            self._next, self.count = 0, capacity
            return
        end = self._next + n
        if end <= capacity:
            self._data[self._next : end] = rows
        else:
            first = capacity - self._next
            self._data[self._next :] = rows[:first]
            self._data[: n - first] = rows[first:]
        self._next = end % capacity
        self.count = min(capacity, self.count + n)

    def rows(self) -> NDArray[Any]:
        return self._data[: self.count]


class _RecentShare:
    """How many of the last `capacity` calls were hits, kept as they come:
    a call costs an append, an evaluation no array at all."""

    __slots__ = ("_recent", "hits")

    def __init__(self, capacity: int) -> None:
        self._recent: deque[bool] = deque(maxlen=capacity)
        self.hits = 0

    def add(self, hit: bool) -> None:
        recent = self._recent
        if len(recent) == recent.maxlen:
            self.hits -= recent[0]  # about to fall out
        recent.append(hit)
        self.hits += hit

    @property
    def count(self) -> int:
        return len(self._recent)


@dataclass(slots=True)
class _Verdict:
    """One metric's value at one evaluation, with what a trip message would quote."""

    name: str
    value: float
    baseline_n: int
    window_n: int
    unit: str = ""
    baseline_value: float = math.nan
    window_value: float = math.nan
    detail: str = ""


@dataclass(slots=True)
class _Reference:
    """What evaluation needs from the baseline, computed once when it is armed."""

    baseline: Baseline
    edges: dict[str, NDArray[np.float64]]
    proportions: dict[str, NDArray[np.float64]]
    medians: dict[str, float]
    detectors: dict[str, MeanShiftDetector]


class DriftMonitor:
    """Learns a baseline, keeps sliding windows, evaluates gates, reports trips.

    Not thread-safe and not async: the engine calls it from its event loop,
    and every call returns in microseconds (an evaluation, every
    `evaluate_every` ticks, in well under a millisecond).
    """

    def __init__(
        self,
        settings: DriftSettings,
        clock: Callable[[], float] = time.monotonic,
        shift_detector: Callable[[], ShiftDetector] = page_hinkley,
    ) -> None:
        """`shift_detector` makes the detector behind `sudden_shift`, one per feature
        (any with river's `update` / `drift_detected`)."""
        self._settings = settings
        self._clock = clock
        self._shift_detector = shift_detector
        monitored = [
            gate
            for metric in METRICS
            if (gate := settings.gate(metric)) is not None
            and (metric != "embeddings" or settings.embeddings)
        ]
        self._tracks = {gate.metric: _Track(gate.metric, gate) for gate in monitored}
        self._new_trips: list[DriftTrip] = []
        self.evaluations = 0  # how many evaluations so far: their readers act on each
        self._metrics_cache: tuple[DriftMetric, ...] | None = None
        self._reference: _Reference | None = None
        self._start_learning()

    # ------------------------------------------------------------ observing
    def observe_answer(self, answer: AnswerFeatures) -> None:
        """One answer from the provider (parsed or not), before or after its results."""
        if not self._settings.enabled:
            return
        chunks = max(1, answer.chunks)
        parsed_chunks = 0 if answer.parse_failed else chunks
        row = (
            answer.tokens_per_chunk,
            answer.latency_s,
            answer.cost_per_chunk,
            float(answer.parse_failed),
            float(0 if answer.parse_failed else min(answer.missing_ids, chunks)),
            float(parsed_chunks),
        )
        # An answer that yields no result still moves time on, so a stream of
        # nothing but failures gets evaluated (and caught).
        yields_nothing = answer.parse_failed or answer.missing_ids >= chunks
        if self._reference is None:
            self._learn_calls += 1
            self._learn_answer(row)
            return
        self._calls.add(False)
        if yields_nothing:
            self._tick += 1
            self._since_evaluation += 1
        self._pending_answers.append((*row, float(self._tick)))
        if self._since_evaluation >= self._settings.evaluate_every:
            self._evaluate()

    def observe_failed_call(self, server_error: bool) -> None:
        """A call that brought no answer: `server_error` if the provider failed it
        (5xx, a reset, a hang); else (a bad request, say) it only counts as a call.

        429s are not calls here: how many come depends on how hard the job
        presses its keys, not on the provider's health.
        """
        if not self._settings.enabled:
            return
        if self._reference is None:
            self._learn_calls += 1
            self._learn_server_errors += int(server_error)
            return
        self._calls.add(server_error)
        # It yields no result: time moves on, as for an answer that yields none.
        self._tick += 1
        self._since_evaluation += 1
        if self._since_evaluation >= self._settings.evaluate_every:
            self._evaluate()

    def observe_result(
        self, result: ResultFeatures, embedding: NDArray[np.floating] | None = None
    ) -> None:
        """One chunk result; `embedding` is its output's vector when embeddings are on."""
        if not self._settings.enabled:
            return
        row = (float(result.answer_chars), float(result.items), float(result.empty_or_refusal))
        use_embedding = embedding is not None and self._settings.embeddings
        if self._reference is None:
            self._learn_result(row, embedding if use_embedding else None)
            return
        self._tick += 1
        self._since_evaluation += 1
        self._pending_results.append(row)
        if use_embedding and embedding is not None:
            self._pending_embeddings.append(embedding)
        if self._since_evaluation >= self._settings.evaluate_every:
            self._evaluate()

    # ------------------------------------------------------------ reading
    def trips(self) -> list[DriftTrip]:
        """Trips since the last call, oldest first."""
        trips, self._new_trips = self._new_trips, []
        return trips

    def metrics(self) -> tuple[DriftMetric, ...]:
        """Every monitored metric for the snapshot; rebuilt only after an evaluation."""
        if self._metrics_cache is None:
            self._metrics_cache = tuple(track.metric() for track in self._tracks.values())
        return self._metrics_cache

    def baseline(self) -> Baseline | None:
        """The baseline in use, or None while still learning."""
        return None if self._reference is None else self._reference.baseline

    @property
    def learning(self) -> bool:
        """True until a baseline is learnt or given."""
        return self._reference is None

    # ------------------------------------------------------------ baselines
    def use_baseline(self, baseline: Baseline) -> None:
        """Judge against `baseline` (say, one saved from an earlier run) from now on."""
        self._arm(baseline)

    def relearn(self) -> None:
        """Forget the baseline and learn a new one from what comes next.

        For when the operator accepts the new normal (a new model, say).
        Trip counts are kept; series and states start over.
        """
        self._reference = None
        self._start_learning()
        for track in self._tracks.values():
            track.series.clear()
            track.state = DriftState.LEARNING
            track.above = track.below = 0
        self._metrics_cache = None

    # ------------------------------------------------------------ learning
    def _start_learning(self) -> None:
        self._learn_answers: list[tuple[float, ...]] = []
        self._learn_results: list[tuple[float, ...]] = []
        self._learn_answer_count = 0
        self._learn_result_count = 0
        # Rates are counted, not kept: they need no samples.
        self._learn_failed = 0
        self._learn_missing = 0  # parsed answers that left out an id
        self._learn_parsed = 0
        self._learn_refusals = 0
        self._learn_calls = 0
        self._learn_server_errors = 0
        self._learn_embedding_sum: NDArray[np.float64] | None = None
        self._learn_unit_sum: NDArray[np.float64] | None = None
        self._learn_embeddings = 0

    def _learn_answer(self, row: tuple[float, ...]) -> None:
        self._learn_answer_count += 1
        self._learn_failed += int(row[_A_FAILED])
        self._learn_missing += int(row[_A_MISSING] > 0)
        self._learn_parsed += int(row[_A_PARSED_CHUNKS] > 0)
        if len(self._learn_answers) < _LEARN_CAP * self._settings.baseline_size:
            self._learn_answers.append(row)
        self._maybe_finish_learning()

    def _learn_result(self, row: tuple[float, ...], embedding: NDArray[np.floating] | None) -> None:
        self._learn_result_count += 1
        self._learn_refusals += int(row[_R_REFUSAL])
        if len(self._learn_results) < _LEARN_CAP * self._settings.baseline_size:
            self._learn_results.append(row)
        if embedding is not None:
            self._learn_embedding(embedding)
        self._maybe_finish_learning()

    def _learn_embedding(self, embedding: NDArray[np.floating]) -> None:
        vector = np.asarray(embedding, dtype=np.float64).ravel()
        norm = float(np.linalg.norm(vector))
        if norm == 0.0 or not math.isfinite(norm):
            return
        if self._learn_embedding_sum is None or self._learn_unit_sum is None:
            self._learn_embedding_sum = np.zeros_like(vector)
            self._learn_unit_sum = np.zeros_like(vector)
        if vector.shape != self._learn_embedding_sum.shape:
            return  # another model's vectors: not comparable, so not counted
        self._learn_embedding_sum += vector
        self._learn_unit_sum += vector / norm
        self._learn_embeddings += 1

    def _maybe_finish_learning(self) -> None:
        size = self._settings.baseline_size
        if self._learn_answer_count >= size and self._learn_result_count >= size:
            self._arm(self._learned_baseline())

    def _learned_baseline(self) -> Baseline:
        answers = np.array(self._learn_answers, dtype=np.float64).reshape(-1, 6)
        results = np.array(self._learn_results, dtype=np.float64).reshape(-1, 3)
        samples = {
            "output_tokens": answers[:, _A_TOKENS],
            "latency": answers[:, _A_LATENCY],
            "cost": answers[:, _A_COST],
            "answer_chars": results[:, _R_CHARS],
            "items": results[:, _R_ITEMS],
        }
        rates = {
            "parse_failures": (self._learn_failed, self._learn_answer_count),
            "missing_ids": (self._learn_missing, self._learn_parsed),
            "refusals": (self._learn_refusals, self._learn_result_count),
            "server_errors": (self._learn_server_errors, self._learn_calls),
        }
        centroid, spread = None, 0.0
        if self._learn_embedding_sum is not None and self._learn_unit_sum is not None:
            total = self._learn_embedding_sum
            centroid = total / self._learn_embeddings
            # Mean of 1 − cos(x, c) is 1 − (Σ x/|x|)·c / (n |c|): no need to keep the vectors.
            norm = float(np.linalg.norm(centroid))
            if norm > 0:
                mean_cos = float(self._learn_unit_sum @ centroid) / (self._learn_embeddings * norm)
                spread = max(0.0, 1.0 - mean_cos)
        return Baseline(
            results=self._learn_result_count,
            answers=self._learn_answer_count,
            samples=samples,
            rates=rates,
            embedding_centroid=centroid,
            embedding_count=self._learn_embeddings,
            embedding_spread=spread,
        )

    # ------------------------------------------------------------ watching
    def _arm(self, baseline: Baseline) -> None:
        """Start judging against `baseline`: precompute bins, reset windows and detectors."""
        edges, proportions, medians = {}, {}, {}
        for feature in DISTRIBUTIONS:
            values = baseline.samples[feature.name]
            edges[feature.name] = quantile_edges(values, PSI_BINS)
            proportions[feature.name] = bin_proportions(values, edges[feature.name])
            medians[feature.name] = float(np.median(values)) if values.size else 0.0
        detectors = {
            feature.name: MeanShiftDetector(baseline.samples[feature.name], self._shift_detector)
            for feature in SHIFT_FEATURES
            if "sudden_shift" in self._tracks and baseline.samples[feature.name].size
        }
        self._reference = _Reference(baseline, edges, proportions, medians, detectors)
        self._start_learning()  # drop the learning buffers
        size = self._settings.window_size
        self._answers = _Ring(size, 7)
        self._results = _Ring(size, 3)
        self._calls = _RecentShare(size)
        self._embeddings: _Ring | None = None
        self._embedding_dimension = (
            0 if baseline.embedding_centroid is None else baseline.embedding_centroid.size
        )
        self._pending_answers: list[tuple[float, ...]] = []
        self._pending_results: list[tuple[float, ...]] = []
        self._pending_embeddings: list[NDArray[np.floating]] = []
        self._tick = 0
        self._since_evaluation = 0
        self._last_shift: dict[str, int] = {}
        for track in self._tracks.values():
            track.state = DriftState.LEARNING
            track.series.clear()
            track.above = track.below = 0
        self._metrics_cache = None

    def _flush(self, reference: _Reference) -> None:
        """Move pending observations into the windows and through the shift detectors."""
        new: dict[str, NDArray[np.float64]] = {}
        if self._pending_answers:
            new["answer"] = np.array(self._pending_answers, dtype=np.float64)
            self._pending_answers = []
            self._answers.extend(new["answer"])
        if self._pending_results:
            new["result"] = np.array(self._pending_results, dtype=np.float64)
            self._pending_results = []
            self._results.extend(new["result"])
        for name, detector in reference.detectors.items():
            rows = new.get(_PER[name])
            if rows is not None and detector.update(rows[:, _COLUMNS[name]]):
                self._last_shift[name] = self._tick
        if self._pending_embeddings:
            self._flush_embeddings()

    def _flush_embeddings(self) -> None:
        vectors = [
            np.asarray(vector, dtype=np.float32).ravel() for vector in self._pending_embeddings
        ]
        self._pending_embeddings = []
        dimension = self._embedding_dimension
        usable = [vector for vector in vectors if vector.size == dimension]
        if not usable:
            return  # no baseline centroid, or another model's vectors
        if self._embeddings is None:
            self._embeddings = _Ring(self._settings.window_size, dimension, np.float32)
        self._embeddings.extend(np.stack(usable))

    def _evaluate(self) -> None:
        reference = self._reference
        if reference is None:
            return
        self._since_evaluation = 0
        self.evaluations += 1
        self._flush(reference)
        settings = self._settings
        baseline = reference.baseline
        enough = settings.min_window
        answers = self._answers.rows()
        results = self._results.rows()
        in_span = answers[:, _A_TICK] > self._tick - settings.window_size
        spanned = min(self._tick, settings.window_size)
        verdicts: list[_Verdict] = []

        for feature in DISTRIBUTIONS:
            window = answers if feature.per == "answer" else results
            if feature.name not in self._tracks or window.shape[0] < enough:
                continue
            values = window[:, _COLUMNS[feature.name]]
            expected = reference.proportions[feature.name]
            base_n = baseline.samples[feature.name].size
            value = psi_of_proportions(
                expected, bin_proportions(values, reference.edges[feature.name])
            ) - psi_by_chance(expected.size, base_n, values.size)
            if value > 0.0:  # the median is only worth its cost when PSI says something
                moved = _median_move(_median(values), reference.medians[feature.name], feature.name)
                floor = _MIN_MOVE.get(feature.name, MIN_MEDIAN_SHIFT)
                value *= min(1.0, moved / floor) ** 4
            value = max(0.0, value)
            verdicts.append(_Verdict(feature.name, value, base_n, values.size, feature.unit))

        rate_counts: dict[str, tuple[Any, Any]] = {}
        if spanned >= enough:
            rate_counts = {
                "parse_failures": (answers[in_span, _A_FAILED].sum(), in_span.sum()),
                "missing_ids": (
                    (answers[in_span, _A_MISSING] > 0).sum(),
                    (answers[in_span, _A_PARSED_CHUNKS] > 0).sum(),
                ),
                "refusals": (results[:, _R_REFUSAL].sum(), results.shape[0]),
            }
        if self._calls.count >= enough:  # a window of calls, the rate's own unit
            rate_counts["server_errors"] = (self._calls.hits, self._calls.count)
        for feature in RATES:
            counts = rate_counts.get(feature.name)
            if feature.name not in self._tracks or counts is None:
                continue
            base_k, base_n = baseline.rates[feature.name]
            if base_n == 0:
                continue  # a baseline saved before this rate was counted: nothing to judge by
            k, n = (int(count) for count in counts)
            value = two_proportion_z(base_k, base_n, k, n)
            least_rise = _MIN_RISE.get(feature.name)
            if least_rise is not None and value > 0.0:
                rise = k / n - base_k / base_n
                value *= min(1.0, max(0.0, rise) / least_rise) ** _RISE_POWER
            verdicts.append(
                _Verdict(
                    feature.name,
                    value,
                    base_n,
                    n,
                    feature.unit,
                    baseline_value=base_k / max(1, base_n),
                    window_value=k / max(1, n),
                )
            )
        if spanned >= enough and "sudden_shift" in self._tracks:
            recent = sorted(
                name
                for name, tick in self._last_shift.items()
                if tick > self._tick - settings.window_size
                and _median_move(
                    _median(answers[-SHIFT_RECENT:, _COLUMNS[name]]),
                    reference.medians[name],
                    name,
                )
                >= _MIN_MOVE.get(name, MIN_MEDIAN_SHIFT)
            )
            verdicts.append(
                _Verdict(
                    "sudden_shift",
                    len(recent),
                    0,
                    spanned,
                    "features",
                    baseline_value=0.0,
                    window_value=len(recent),
                    detail="jumped: " + ", ".join(recent),
                )
            )

        embeddings = self._embeddings
        centroid = baseline.embedding_centroid
        if (
            "embeddings" in self._tracks
            and embeddings is not None
            and centroid is not None
            and embeddings.count >= enough
        ):
            value = centroid_cosine_distance(centroid, embeddings.rows())
            spread = baseline.embedding_spread
            verdicts.append(
                _Verdict(
                    "embeddings",
                    value,
                    baseline.embedding_count,
                    embeddings.count,
                    baseline_value=spread,
                    window_value=value,
                    detail=f"centroid moved {value:.3f}; baseline spread {spread:.3f}",
                )
            )

        for verdict in verdicts:
            track = self._tracks[verdict.name]
            if math.isfinite(verdict.value) and track.record(
                verdict.value, verdict.baseline_n, verdict.window_n
            ):
                self._new_trips.append(self._trip(track, verdict, reference))
        self._metrics_cache = None

    def _trip(self, track: _Track, verdict: _Verdict, reference: _Reference) -> DriftTrip:
        if track.name in reference.medians:
            # Medians are worth computing only for the message.
            verdict.baseline_value = reference.medians[track.name]
            verdict.window_value = self._window_median(track.name)
        return DriftTrip(
            metric=track.name,
            label=_LABELS[track.name],
            statistic=_STATISTICS[track.name],
            value=verdict.value,
            threshold=track.gate.threshold,
            action=track.gate.action,
            baseline_value=verdict.baseline_value,
            window_value=verdict.window_value,
            baseline_n=verdict.baseline_n,
            window_n=verdict.window_n,
            unit=verdict.unit,
            detail=verdict.detail,
            at=self._clock(),
        )

    def _window_median(self, name: str) -> float:
        ring = self._answers if _PER[name] == "answer" else self._results
        values = ring.rows()[:, _COLUMNS[name]]
        return float(np.median(values)) if values.size else math.nan
