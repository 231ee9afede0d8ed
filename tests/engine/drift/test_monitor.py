"""The drift monitor on synthetic answers: quiet without drift, quick to catch each kind.

`SyntheticStream` makes answers that look like a real job's: documents of a
few chunks each (chunks of one document resemble each other), batches of
five, lognormal answer lengths, Poisson item counts, latency that grows with
output tokens plus the odd straggler, a few malformed answers, truncated
answers that drop trailing ids, rare refusals, and topical embeddings.
`shift` switches one kind of drift on; the benchmark reuses it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from engine.config.settings import DriftSettings, Gate, GateAction
from engine.drift.baseline import Baseline, BaselineFormatError
from engine.drift.features import (
    AnswerFeatures,
    ResultFeatures,
    features_of_result,
    looks_like_refusal,
)
from engine.drift.monitor import DriftMonitor, DriftTrip
from engine.observe.snapshot import DriftMetric, DriftState

SHIFTS: dict[str, frozenset[str]] = {
    # kind of drift → the metrics that may be the first to catch it
    "shorter_answers": frozenset({"answer_chars", "output_tokens", "sudden_shift"}),
    "parse_failures": frozenset({"parse_failures"}),
    "missing_ids": frozenset({"missing_ids"}),
    "refusals": frozenset({"refusals"}),
    "fewer_items": frozenset({"items"}),
    "latency_jump": frozenset({"latency", "sudden_shift"}),
    "embeddings": frozenset({"embeddings"}),
}


@dataclass
class SyntheticStream:
    """A seeded stream of (answer, its results, their embeddings).

    `strength` scales the shift: 1.0 is the size the requirement is tested
    at (answers 40% shorter, malformed JSON 2% → 40% of answers, truncated
    answers 4% → 50%, refusals 1% → 15%, half the items, latency ×2.5,
    outputs pulled towards an unrelated topic); 0.5 is half of each.
    """

    seed: int
    batch: int = 5
    dimension: int = 32
    shift: str | None = None
    strength: float = 1.0
    latency_unit: float = 1.0  # 0.002: a provider answering in milliseconds
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        # One embedding space for every seed, as for every run of one job.
        space = np.random.default_rng(1234).normal(size=(14, self.dimension))
        unit = space / np.linalg.norm(space, axis=1, keepdims=True)
        self._common, self._off_topic, self._topics = unit[0], unit[1], unit[2:]
        self._doc_left = 0
        self._doc = (0.0, 0.0, self._topics[0])

    def _document(self) -> tuple[float, float, np.ndarray]:
        """Chunks of one document share a length, an item rate and a topic."""
        rng = self.rng
        if self._doc_left == 0:
            self._doc_left = 1 + int(rng.poisson(7))
            topic = self._topics[rng.integers(len(self._topics))]
            self._doc = (float(rng.normal(0, 0.15)), float(rng.normal(0, 0.2)), topic)
        self._doc_left -= 1
        return self._doc

    def answer(self) -> tuple[AnswerFeatures, list[ResultFeatures], list[np.ndarray]]:
        rng, kind, k = self.rng, self.shift, self.strength
        length_scale = 1 - 0.4 * k if kind == "shorter_answers" else 1.0
        item_scale = 1 - 0.5 * k if kind == "fewer_items" else 1.0
        p_malformed = 0.02 + 0.38 * k if kind == "parse_failures" else 0.02
        p_truncated = 0.04 + 0.46 * k if kind == "missing_ids" else 0.04
        p_refusal = 0.01 + 0.14 * k if kind == "refusals" else 0.01
        latency_scale = 1 + 1.5 * k if kind == "latency_jump" else 1.0
        if kind == "faster":
            latency_scale = 1 / (1 + 1.5 * k)  # the provider got quicker: not a problem
        off_topic = 0.8 * k if kind == "embeddings" else 0.0
        results: list[ResultFeatures] = []
        vectors: list[np.ndarray] = []
        for _ in range(self.batch):
            doc_length, doc_items, topic = self._document()
            if rng.random() < p_refusal:
                results.append(ResultFeatures(int(rng.integers(40, 120)), 0, True))
            else:
                body = math.exp(math.log(420) + doc_length + rng.normal(0, 0.35))
                items = int(rng.poisson(2.5 * item_scale * math.exp(doc_items)))
                results.append(ResultFeatures(int(30 + length_scale * body), items, False))
            noise = rng.normal(0, 1.05 / math.sqrt(self.dimension), self.dimension)
            vector = 0.8 * self._common + 0.5 * topic + off_topic * self._off_topic + noise
            vectors.append((vector / np.linalg.norm(vector)).astype(np.float32))
        tokens = int(sum(r.answer_chars for r in results) / 3.6 + 15 * rng.random())
        latency = (0.35 + 0.004 * tokens) * math.exp(rng.normal(0, 0.25)) * latency_scale
        latency *= self.latency_unit
        if rng.random() < 0.03:
            latency *= 3  # a straggler
        input_tokens = self.batch * 800 * (1 + 0.1 * rng.normal()) + 200
        cost = (0.15 * input_tokens + 0.6 * tokens) / 1e6
        malformed = bool(rng.random() < p_malformed)
        missing = 0
        if not malformed and rng.random() < p_truncated:
            missing = int(rng.integers(1, self.batch))  # a cut-off answer drops its last ids
        answer = AnswerFeatures(self.batch, malformed, missing, tokens, latency, cost)
        if malformed:
            return answer, [], []
        kept = self.batch - missing
        return answer, results[:kept], vectors[:kept]


def feed(
    monitor: DriftMonitor, stream: SyntheticStream, results: int, embeddings: bool = False
) -> list[tuple[int, DriftTrip]]:
    """Feed about `results` results; each trip with how many results had been fed by then."""
    seen = 0
    trips: list[tuple[int, DriftTrip]] = []
    while seen < results:
        answer, entries, vectors = stream.answer()
        monitor.observe_answer(answer)
        trips.extend((seen, trip) for trip in monitor.trips())
        for result, vector in zip(entries, vectors, strict=True):
            monitor.observe_result(result, vector if embeddings else None)
            seen += 1
            trips.extend((seen, trip) for trip in monitor.trips())
    return trips


def learn(monitor: DriftMonitor, stream: SyntheticStream, embeddings: bool = False) -> int:
    """Feed until the baseline is learnt; how many results that took."""
    seen = 0
    while monitor.learning:
        answer, entries, vectors = stream.answer()
        monitor.observe_answer(answer)
        for result, vector in zip(entries, vectors, strict=True):
            monitor.observe_result(result, vector if embeddings else None)
            seen += 1
    return seen


def first_trips(trips: list[tuple[int, DriftTrip]]) -> dict[str, int]:
    """Each tripped metric → results fed when it first tripped."""
    first: dict[str, int] = {}
    for seen, trip in trips:
        first.setdefault(trip.metric, seen)
    return first


def metric(monitor: DriftMonitor, name: str) -> DriftMetric:
    return next(m for m in monitor.metrics() if m.name == name)


# ---------------------------------------------------------------- learning


def test_metrics_are_learning_until_the_baseline_holds_enough_results_and_answers() -> None:
    monitor = DriftMonitor(DriftSettings(baseline_size=200), clock=lambda: 0.0)
    stream = SyntheticStream(seed=1)
    assert {m.state for m in monitor.metrics()} == {DriftState.LEARNING}

    took = learn(monitor, stream)

    baseline = monitor.baseline()
    assert baseline is not None
    assert baseline.answers >= 200 and baseline.results >= 200
    # Five chunks per answer: the answers are what take long to collect.
    assert took >= 4 * 200
    assert baseline.samples["latency"].size == baseline.answers
    assert baseline.samples["answer_chars"].size == baseline.results
    assert {m.state for m in monitor.metrics()} == {DriftState.LEARNING}

    # min_window = 100 samples of each metric's own unit: results come five
    # times faster than answers (and calls), so per-result metrics start first.
    feed(monitor, stream, 150)
    learning = {m.name for m in monitor.metrics() if m.state is DriftState.LEARNING}
    assert learning == {"output_tokens", "latency", "cost", "server_errors"}
    feed(monitor, stream, 450)
    assert DriftState.LEARNING not in {m.state for m in monitor.metrics()}


def test_embeddings_are_watched_only_when_enabled() -> None:
    names = {m.name for m in DriftMonitor(DriftSettings()).metrics()}
    assert "embeddings" not in names and "latency" in names
    names = {m.name for m in DriftMonitor(DriftSettings(embeddings=True)).metrics()}
    assert "embeddings" in names


def test_a_disabled_monitor_watches_nothing() -> None:
    monitor = DriftMonitor(DriftSettings(enabled=False))
    feed(monitor, SyntheticStream(seed=2), 2000)
    assert monitor.learning and monitor.baseline() is None
    assert all(not m.values for m in monitor.metrics())


# ---------------------------------------------------------------- no drift


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_ten_thousand_results_without_drift_trip_nothing(seed: int) -> None:
    monitor = DriftMonitor(DriftSettings(embeddings=True), clock=lambda: 0.0)
    stream = SyntheticStream(seed)
    learn(monitor, stream, embeddings=True)

    trips = feed(monitor, stream, 10_000, embeddings=True)

    assert [trip.message() for _, trip in trips] == []
    # ~390 evaluations per metric: the series is capped but full.
    assert all(len(m.values) == 120 for m in monitor.metrics())


# ---------------------------------------------------------------- each kind of drift


@pytest.mark.parametrize("seed", [21, 22, 23])
@pytest.mark.parametrize("kind", list(SHIFTS))
def test_each_kind_of_drift_trips_its_gate_within_200_results(kind: str, seed: int) -> None:
    monitor = DriftMonitor(DriftSettings(embeddings=True), clock=lambda: 0.0)
    stream = SyntheticStream(seed)
    learn(monitor, stream, embeddings=True)
    assert feed(monitor, stream, 300, embeddings=True) == []

    stream.shift = kind
    first = first_trips(feed(monitor, stream, 200, embeddings=True))

    assert first, f"{kind}: nothing tripped within 200 results"
    assert min(first, key=first.__getitem__) in SHIFTS[kind], first


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_answers_getting_faster_trip_nothing(seed: int) -> None:
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    stream = SyntheticStream(seed)
    learn(monitor, stream)

    stream.shift = "faster"
    assert feed(monitor, stream, 1000) == []
    assert metric(monitor, "latency").current == 0.0


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_latency_in_milliseconds_jumping_two_and_a_half_times_trips_nothing(seed: int) -> None:
    """~5 ms to ~14 ms is a busy machine's own delays, not the provider: judged against
    at least `LATENCY_SCALE_S`, it neither trips the latency gate nor a sudden shift —
    the same jump at ~0.5 s trips both (`test_each_kind_of_drift_trips_its_gate`)."""
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    stream = SyntheticStream(seed, latency_unit=0.002)
    learn(monitor, stream)

    stream.shift = "latency_jump"
    assert feed(monitor, stream, 1000) == []


def test_a_trip_needs_two_evaluations_and_is_reported_once() -> None:
    settings = DriftSettings(evaluate_every=25, gates=(Gate("refusals", 4.0, GateAction.PAUSE),))
    now = [100.0]
    monitor = DriftMonitor(settings, clock=lambda: now[0])
    fine = ResultFeatures(answer_chars=500, items=3, empty_or_refusal=False)
    refused = ResultFeatures(answer_chars=60, items=0, empty_or_refusal=True)
    for _ in range(200):
        monitor.observe_answer(AnswerFeatures(chunks=1, output_tokens=120, latency_s=1.0))
        monitor.observe_result(fine)
    for _ in range(100):
        monitor.observe_result(fine)
    assert metric(monitor, "refusals").state is DriftState.OK

    states: list[DriftState] = []
    reported: list[list[DriftTrip]] = []
    for _ in range(4):  # four evaluations, every one far past the threshold
        now[0] += 1
        for _ in range(25):
            monitor.observe_result(refused)
        states.append(metric(monitor, "refusals").state)
        reported.append(monitor.trips())

    assert states[0] is DriftState.WARNING  # one evaluation is not enough
    assert states[1:] == [DriftState.TRIPPED] * 3
    assert [len(trips) for trips in reported] == [0, 1, 0, 0]
    trip = reported[1][0]
    assert (trip.metric, trip.action, trip.threshold, trip.at) == (
        "refusals",
        GateAction.PAUSE,
        4.0,
        102.0,
    )
    assert trip.value >= 4.0 and trip.baseline_value == 0.0 and trip.window_value > 0.3
    assert "refusals" in trip.message() and "→ pause" in trip.message()
    assert metric(monitor, "refusals").trips == 1


def test_a_tripped_metric_clears_after_two_quiet_evaluations_and_can_trip_again() -> None:
    settings = DriftSettings(
        window_size=50, min_window=25, gates=(Gate("refusals", 4.0, GateAction.WARN),)
    )
    monitor = DriftMonitor(settings, clock=lambda: 0.0)
    fine = ResultFeatures(500, 3, False)
    refused = ResultFeatures(60, 0, True)
    for _ in range(200):
        monitor.observe_answer(AnswerFeatures(chunks=1))
        monitor.observe_result(fine)

    def evaluations(result: ResultFeatures, count: int) -> list[DriftState]:
        states = []
        for _ in range(count):
            for _ in range(25):
                monitor.observe_result(result)
            states.append(metric(monitor, "refusals").state)
        return states

    assert evaluations(refused, 3)[-1] is DriftState.TRIPPED
    # Window 50: the first quiet evaluation still half refusals, then two clean ones.
    assert evaluations(fine, 3) == [DriftState.TRIPPED, DriftState.TRIPPED, DriftState.OK]
    assert evaluations(refused, 2)[-1] is DriftState.TRIPPED
    assert len(monitor.trips()) == 2
    assert metric(monitor, "refusals").trips == 2


def test_nothing_but_malformed_answers_is_still_evaluated_and_caught() -> None:
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    stream = SyntheticStream(seed=3)
    learn(monitor, stream)
    broken = AnswerFeatures(chunks=5, parse_failed=True, output_tokens=40, latency_s=0.5)
    tripped: list[str] = []
    for _ in range(200):  # no result at all comes out of these
        monitor.observe_answer(broken)
        tripped += [trip.metric for trip in monitor.trips()]
    assert "parse_failures" in tripped


def test_metrics_are_cached_until_the_next_evaluation() -> None:
    monitor = DriftMonitor(DriftSettings(evaluate_every=25), clock=lambda: 0.0)
    stream = SyntheticStream(seed=4)
    learn(monitor, stream)
    feed(monitor, stream, 150)
    first = monitor.metrics()
    assert monitor.metrics() is first
    feed(monitor, stream, 30)
    later = monitor.metrics()
    assert later is not first
    assert len(metric(monitor, "answer_chars").values) > len(
        next(m for m in first if m.name == "answer_chars").values
    )


def test_relearn_accepts_the_new_normal() -> None:
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    stream = SyntheticStream(seed=5)
    learn(monitor, stream)
    stream.shift = "latency_jump"
    assert "latency" in first_trips(feed(monitor, stream, 1200))

    monitor.relearn()
    assert monitor.learning and monitor.baseline() is None
    learn(monitor, stream)
    assert feed(monitor, stream, 3000) == []
    assert metric(monitor, "latency").trips == 1  # kept across the relearn


# ---------------------------------------------------------------- baselines


def learnt_baseline(seed: int, embeddings: bool = True) -> Baseline:
    monitor = DriftMonitor(DriftSettings(embeddings=embeddings))
    learn(monitor, SyntheticStream(seed), embeddings=embeddings)
    baseline = monitor.baseline()
    assert baseline is not None
    return baseline


def test_a_baseline_round_trips_through_json_exactly() -> None:
    baseline = learnt_baseline(seed=6)
    data = baseline.to_json()
    assert isinstance(data, bytes)
    json.loads(data)  # plain JSON, for SQLite or a file

    again = Baseline.from_json(data)

    assert again == baseline
    for name, values in baseline.samples.items():
        np.testing.assert_array_equal(again.samples[name], values)
    assert again.rates == baseline.rates
    assert baseline.embedding_centroid is not None and again.embedding_centroid is not None
    np.testing.assert_array_equal(again.embedding_centroid, baseline.embedding_centroid)
    assert again.embedding_spread == baseline.embedding_spread
    assert again.to_json() == data


def test_a_baseline_is_read_only() -> None:
    baseline = learnt_baseline(seed=6, embeddings=False)
    with pytest.raises(ValueError):
        baseline.samples["latency"][0] = 1.0
    with pytest.raises(TypeError):
        baseline.samples["latency"] = np.zeros(3)  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"not json", "not JSON"),
        (b'{"format": "something else"}', "format"),
        (b'{"format": "crawldeck-drift-baseline", "version": 99}', "version"),
        (None, "samples.latency"),
        (None, "rates.refusals"),
    ],
)
def test_a_broken_baseline_is_refused_with_the_key_named(data: bytes | None, named: str) -> None:
    if data is None:  # a real baseline with one field spoilt
        document = json.loads(learnt_baseline(seed=7, embeddings=False).to_json())
        if named == "samples.latency":
            document["samples"]["latency"] = [1.0, "slow"]
        else:
            document["rates"]["refusals"] = [9, 3]
        data = json.dumps(document).encode()
    with pytest.raises(BaselineFormatError, match=named.replace(".", r"\.")):
        Baseline.from_json(data)


def test_describe_shows_every_feature_and_rate() -> None:
    lines = learnt_baseline(seed=8).describe()
    text = "\n".join(lines)
    assert lines[0].startswith("baseline of ")
    for label in ("output tokens", "latency", "cost", "answer length", "items"):
        assert f"  {label}" in text
    for label in ("parse failures", "missing ids", "refusals/empty", "server errors", "embeddings"):
        assert f"  {label}" in text
    assert "median" in text and "%" in text and "spread" in text


def test_a_saved_baseline_judges_a_later_run_from_its_first_results() -> None:
    data = learnt_baseline(seed=9).to_json()

    later = DriftMonitor(DriftSettings(embeddings=True), clock=lambda: 0.0)
    later.use_baseline(Baseline.from_json(data))
    assert not later.learning
    quiet = SyntheticStream(seed=10)
    assert feed(later, quiet, 3000, embeddings=True) == []

    quiet.shift = "shorter_answers"
    first = first_trips(feed(later, quiet, 200, embeddings=True))
    assert set(first) & SHIFTS["shorter_answers"]


def test_embeddings_of_another_dimension_are_ignored() -> None:
    monitor = DriftMonitor(DriftSettings(embeddings=True), clock=lambda: 0.0)
    monitor.use_baseline(learnt_baseline(seed=9))
    stream = SyntheticStream(seed=10)
    for _ in range(100):
        answer, results, _ = stream.answer()
        monitor.observe_answer(answer)
        for result in results:
            monitor.observe_result(result, np.ones(7, dtype=np.float32))
    assert metric(monitor, "embeddings").state is DriftState.LEARNING
    assert metric(monitor, "answer_chars").state is not DriftState.LEARNING


# ---------------------------------------------------------------- server errors


def calls(
    monitor: DriftMonitor, stream: SyntheticStream, count: int, share: float, seed: int
) -> list[tuple[int, DriftTrip]]:
    """`count` calls: each failed by the provider with probability `share`, else answered
    (and its results observed); each trip with how many calls had been made by then."""
    rng = np.random.default_rng(seed)
    trips: list[tuple[int, DriftTrip]] = []
    for made in range(1, count + 1):
        if rng.random() < share:
            monitor.observe_failed_call(server_error=True)
        else:
            answer, results, _ = stream.answer()
            monitor.observe_answer(answer)
            for result in results:
                monitor.observe_result(result)
        trips.extend((made, trip) for trip in monitor.trips())
    return trips


def learn_with_server_errors(monitor: DriftMonitor, stream: SyntheticStream, share: float) -> None:
    seed = 0
    while monitor.learning:
        seed += 1
        calls(monitor, stream, 1, share, seed)


@pytest.mark.parametrize("seed", [31, 32, 33, 34])
def test_a_steady_share_of_server_errors_from_the_start_trips_nothing(seed: int) -> None:
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    stream = SyntheticStream(seed)
    learn_with_server_errors(monitor, stream, 0.02)
    baseline = monitor.baseline()
    assert baseline is not None
    errors, made = baseline.rates["server_errors"]
    assert made >= baseline.answers and 0 <= errors < made  # counted as the baseline learned

    trips = calls(monitor, stream, 5000, 0.02, seed)

    assert [trip.message() for _, trip in trips] == []
    server_errors = metric(monitor, "server_errors")
    assert server_errors.state is DriftState.OK and len(server_errors.values) == 120


@pytest.mark.parametrize("seed", [41, 42, 43])
def test_server_errors_rising_from_1_to_15_percent_trip_within_300_calls(seed: int) -> None:
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    stream = SyntheticStream(seed)
    learn_with_server_errors(monitor, stream, 0.01)
    assert calls(monitor, stream, 500, 0.01, seed) == []

    first = first_trips(calls(monitor, stream, 300, 0.15, seed + 100))

    assert set(first) == {"server_errors"}, first  # within 300 calls, and nothing else


@pytest.mark.parametrize("seed", [51, 52, 53])
def test_fewer_server_errors_never_trip(seed: int) -> None:
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    stream = SyntheticStream(seed)
    learn_with_server_errors(monitor, stream, 0.08)

    assert calls(monitor, stream, 3000, 0.0, seed) == []
    # One-sided: a provider that got more reliable reads as a negative z.
    current = metric(monitor, "server_errors").current
    assert current is not None and current < 0


def test_a_server_error_trip_says_how_the_share_of_calls_moved() -> None:
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    stream = SyntheticStream(seed=6)
    learn_with_server_errors(monitor, stream, 0.01)

    trips = [trip for _, trip in calls(monitor, stream, 400, 0.3, seed=7)]

    trip = next(t for t in trips if t.metric == "server_errors")
    assert trip.action is GateAction.CONSERVATIVE  # the default gate
    assert trip.statistic == "z" and trip.value >= 4.0
    assert trip.baseline_value < 0.05 and trip.window_value > 0.15
    assert "server errors z" in trip.message() and "% of calls" in trip.message()


def test_nothing_but_server_errors_is_still_evaluated_and_caught() -> None:
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    learn(monitor, SyntheticStream(seed=3))
    tripped: list[str] = []
    for _ in range(300):  # no answer, no result: time moves on with the calls
        monitor.observe_failed_call(server_error=True)
        tripped += [trip.metric for trip in monitor.trips()]
    assert tripped == ["server_errors"]


def test_calls_failed_for_other_reasons_count_as_calls_not_as_server_errors() -> None:
    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    stream = SyntheticStream(seed=4)
    learn(monitor, stream)
    for _ in range(300):
        monitor.observe_failed_call(server_error=False)  # a bad request, say
    assert "server_errors" not in first_trips(feed(monitor, stream, 500))
    server_errors = metric(monitor, "server_errors")
    assert server_errors.state is DriftState.OK and server_errors.window_size == 200


def test_a_baseline_saved_before_server_errors_were_counted_still_judges_the_rest() -> None:
    document = json.loads(learnt_baseline(seed=9, embeddings=False).to_json())
    del document["rates"]["server_errors"]
    older = Baseline.from_json(json.dumps(document).encode())
    assert older.rates["server_errors"] == (0, 0)

    monitor = DriftMonitor(DriftSettings(), clock=lambda: 0.0)
    monitor.use_baseline(older)
    stream = SyntheticStream(seed=10)
    assert calls(monitor, stream, 1500, 0.3, seed=11) == []  # nothing to judge errors by
    assert metric(monitor, "server_errors").state is DriftState.LEARNING
    assert metric(monitor, "answer_chars").state is DriftState.OK


# ---------------------------------------------------------------- features


def test_features_of_a_result_entry() -> None:
    entry = {"id": "a1", "summary": "Budget approved.", "items": [{"who": "Ana"}, {"who": "Bo"}]}
    features = features_of_result(entry)
    assert features.items == 2
    assert features.answer_chars == len(json.dumps(entry, separators=(",", ":")))
    assert not features.empty_or_refusal


@pytest.mark.parametrize(
    "entry",
    [
        {"id": "a1"},
        {"id": "a1", "summary": "", "items": []},
        {"id": "a1", "summary": "   ", "topics": [None]},
        {"id": "a1", "summary": "I'm sorry, but I can't help with that."},
        {"id": "a1", "summary": "As an AI language model, I cannot summarise this."},
        {"id": "a1", "summary": "N/A"},
    ],
)
def test_empty_and_refusal_entries_are_flagged(entry: dict[str, object]) -> None:
    assert features_of_result(entry).empty_or_refusal


def test_content_that_mentions_a_refusal_is_content() -> None:
    entry = {
        "id": "a1",
        "summary": "Dana said she cannot attend; the vendor replied 'I'm sorry'.",
        "items": ["N/A", "none"],
    }
    assert not features_of_result(entry).empty_or_refusal
    assert features_of_result(entry).items == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("I’m sorry, I am unable to do that.", True),
        ("i cannot comply", True),
        ("My apologies, but this text is unreadable.", True),
        ("Unfortunately, sales fell 4% in March.", False),
        ("  **As an AI**, I have no opinion", True),
        ("None.", True),
        ("I can summarise: revenue rose 4%.", False),
        ("Sorryville council met on Monday.", False),
        ("The AI team shipped the release.", False),
        ("Nonetheless, the plan went ahead.", False),
    ],
)
def test_looks_like_refusal(text: str, expected: bool) -> None:
    assert looks_like_refusal(text) is expected


def test_answer_features_split_tokens_and_cost_per_chunk() -> None:
    answer = AnswerFeatures(chunks=4, output_tokens=600, cost_usd=0.002)
    assert answer.tokens_per_chunk == 150
    assert math.isclose(answer.cost_per_chunk, 0.0005)
