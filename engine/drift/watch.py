"""The drift monitor in a running job: fed from answers and results, acted on when it trips.

Each answer's shape, cost and latency, each failed call (a server error
or not), and each result's features go to the monitor
(`engine.drift.monitor`); when embeddings are on, the results'
outputs are embedded first, through the job's own keys and within their
budgets (a `KeyLease` like any chat request).  A gate that trips is
announced with its numbers and acted on through the job's controls
(`JobControls`, the same any front end uses): smaller batches or the
conservative preset, held until the metric is back, a pause, or a drain
(`engine.drift.gate_actions`).  The baseline learned from the first results
is kept in the store as soon as it is learned; a saved one (`crawldeck
baseline save`) arms the gates from the start.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from engine.config.settings import DriftSettings, Preset
from engine.control.controls import JobControls
from engine.drift.baseline import Baseline, BaselineFormatError
from engine.drift.features import AnswerFeatures, ResultFeatures, features_of_result
from engine.drift.gate_actions import GateActions
from engine.drift.monitor import DriftMonitor
from engine.drift.result_sampling import ResultSampling
from engine.limits.key_pool import KeyPool, NoUsableKeyError
from engine.observe.events import EventBus, EventKind
from engine.observe.snapshot import DriftMetric
from engine.pipeline.token_estimate import estimate_tokens
from engine.provider.client import (
    SERVER_SIDE,
    CallFailure,
    CallResult,
    EmbeddingResult,
    FailureKind,
)

Clock = Callable[[], float]


class EmbeddingClients(Protocol):
    """The provider clients' embeddings call (`engine.provider.client.ProviderClients`)."""

    async def embed(
        self, key_id: str, model: str, inputs: list[str], timeout_s: float
    ) -> EmbeddingResult | CallFailure: ...


class BaselineStore(Protocol):
    """Where baselines are kept (`engine.store.sqlite_store.Store`)."""

    async def saved_baseline(self) -> str | None: ...

    async def add_baseline(self, run_id: int, baseline_json: str) -> int: ...


def provider_latency_s(result: CallResult) -> float:
    """The provider's own time on an answer, as it reports it (`openai-processing-ms`);
    else the time the call took as seen from here.

    What the latency gate judges is the provider.  Seen from here, a call also
    waits on this process's event loop and the network: when the machine is
    busy (measured: a median of 0.26 s here for 0.12 s at the provider) the
    latency rises though the provider did not change, and a gate on it would
    slow a healthy job.
    """
    reported = result.headers.get("openai-processing-ms")
    if reported is not None:
        try:
            milliseconds = float(reported)
        except ValueError:
            return result.latency_s
        if 0.0 <= milliseconds <= 1000.0 * result.latency_s:
            return milliseconds / 1000.0
    return result.latency_s


class DriftWatch:
    """Feeds a `DriftMonitor` for one job and turns its news into events and actions.

    `preset()` is the preset in force; `presets` the presets the job knows
    by name (the conservative action needs one named "conservative").
    """

    def __init__(
        self,
        settings: DriftSettings,
        *,
        events: EventBus,
        keys: KeyPool,
        clients: EmbeddingClients,
        controls: JobControls,
        preset: Callable[[], Preset],
        presets: Mapping[str, Preset],
        clock: Clock,
    ) -> None:
        self._settings = settings
        self._events = events
        self._keys = keys
        self._clients = clients
        self._preset = preset
        self._clock = clock
        self.monitor = DriftMonitor(settings, clock)
        self.actions = GateActions(
            controls=controls, preset=preset, presets=presets, events=events, clock=clock
        )
        self._evaluations_seen = 0
        self._learning = True
        self._sampling = ResultSampling(clock)  # past the baseline, past a rate: a sample
        self._embeddings_wanted = settings.embeddings
        self._baseline_loaded = False
        self._unsaved: deque[str] = deque()  # learned, to be kept in the store
        self._learned = asyncio.Event()

    def metrics(self) -> tuple[DriftMetric, ...]:
        """The monitored metrics, for the snapshot."""
        return self.monitor.metrics()

    # ----------------------------------------------------------------- feeding
    def observe_answer(
        self,
        chunks: int,
        result: CallResult,
        cost: float,
        *,
        parse_failed: bool = False,
        missing: int = 0,
    ) -> None:
        """One answer of `chunks` chunks, costing `cost`, parsed or not."""
        latency = provider_latency_s(result)
        self.monitor.observe_answer(
            AnswerFeatures(
                chunks=chunks,
                parse_failed=parse_failed,
                missing_ids=missing,
                output_tokens=result.completion_tokens,
                latency_s=latency,
                cost_usd=cost,
            )
        )
        sent_at = self._clock() - latency
        self.actions.observe("latency", latency, sent_at)
        self.actions.observe("server_errors", 0.0, sent_at)
        self._act()

    def observe_failure(self, failure: CallFailure) -> None:
        """A call that brought no answer.  A server error if the provider failed it
        (`SERVER_SIDE`: 5xx, a reset, a hang); a 429 is not watched at all — it
        says how hard the job presses its keys, which the key pool answers."""
        if failure.kind is FailureKind.RATE_LIMITED:
            return
        server_error = failure.kind in SERVER_SIDE
        self.monitor.observe_failed_call(server_error)
        sent_at = self._clock() - failure.latency_s
        self.actions.observe("server_errors", float(server_error), sent_at)
        self._act()

    async def observe_results(self, results: list[tuple[dict[str, Any], str]]) -> None:
        """Stored results, as (entry, its JSON), with their outputs' embeddings if wanted;
        past the baseline and a rate, a sample of them (`result_sampling`)."""
        if not self._learning:
            results = list(self._sampling.sample(results))
            if not results:
                return
        observed: list[ResultFeatures] = [
            features_of_result(entry, encoded=encoded) for entry, encoded in results
        ]
        vectors: Sequence[NDArray[np.float32] | None] = [None] * len(results)
        if self._embeddings_wanted:
            vectors = await self._embed([text for _, text in results]) or vectors
        for features, vector in zip(observed, vectors, strict=True):
            self.monitor.observe_result(features, vector)
        self._act()

    async def _embed(self, texts: list[str]) -> Sequence[NDArray[np.float32]] | None:
        """The texts' embeddings through the job's keys, within their budgets; None if not."""
        estimate = sum(estimate_tokens(text) for text in texts)
        try:
            lease = await self._keys.lease(estimate)
        except NoUsableKeyError:
            return None
        key = lease.key
        model = self._settings.embedding_model
        timeout = key.provider.request_timeout_s or self._preset().request_timeout_s
        sent_at = self._clock()
        try:
            outcome = await self._clients.embed(key.key_id, model, texts, timeout)
        except BaseException:
            lease.abandoned()
            raise
        lease.returned()
        self._keys.notify()
        if isinstance(outcome, EmbeddingResult):
            self._keys.answered(lease, outcome.prompt_tokens or estimate, outcome.headers)
            return outcome.vectors
        self._keys.sync_headers(key, outcome.headers, lease)
        if outcome.kind is FailureKind.RATE_LIMITED:
            cooling = self._keys.refused(lease, outcome, sent_at)
            self._keys.report_429(key, outcome, cooling, "drift embeddings skipped")
            return None
        lease.release()
        if outcome.kind in (FailureKind.BAD_REQUEST, FailureKind.AUTH, FailureKind.QUOTA):
            # The provider has no such model for this key (or refuses it): stop
            # asking; the other drift metrics go on.
            self._embeddings_wanted = False
            self._events.emit(
                EventKind.WARNING,
                f"drift embeddings off: {model} on {key.key_id}: {outcome.message}",
            )
        return None

    # ------------------------------------------------------------------ acting
    def _act(self) -> None:
        """Turn the monitor's news into events, and trips into their gates' actions."""
        monitor = self.monitor
        if self._learning and not monitor.learning:
            self._learning = False
            learned = monitor.baseline()
            if learned is not None and not self._baseline_loaded:
                self._unsaved.append(learned.to_json().decode("utf-8"))
                self._learned.set()
                self._events.emit(
                    EventKind.DRIFT_BASELINE,
                    "drift baseline learned from the first results; gates are armed",
                )
        for trip in monitor.trips():
            self._events.emit(
                EventKind.DRIFT_TRIPPED,
                trip.message(),
                metric=trip.metric,
                statistic=trip.statistic,
                value=round(trip.value, 4),
                threshold=trip.threshold,
                action=str(trip.action),
                baseline_value=trip.baseline_value,
                window_value=trip.window_value,
                baseline_n=trip.baseline_n,
                window_n=trip.window_n,
            )
            self.actions.take(
                trip.metric,
                trip.action,
                baseline=trip.baseline_value,
                window=trip.window_value,
            )
        evaluations = monitor.evaluations - self._evaluations_seen
        if evaluations:
            self._evaluations_seen = monitor.evaluations
            self.actions.review(monitor.metrics(), evaluations)

    # --------------------------------------------------------------- baselines
    async def load_saved(self, store: BaselineStore) -> None:
        """Judge against the job's saved baseline (`crawldeck baseline save`), if it has one."""
        saved = await store.saved_baseline()
        if saved is None:
            return
        try:
            baseline = Baseline.from_json(saved)
        except BaselineFormatError as exc:
            self._events.emit(
                EventKind.WARNING, f"saved drift baseline ignored ({exc}); learning a new one"
            )
            return
        self.monitor.use_baseline(baseline)
        self._learning = False
        self._baseline_loaded = True
        self._events.emit(
            EventKind.DRIFT_BASELINE, "drift gates armed with the job's saved baseline"
        )

    async def keep_baselines(self, store: BaselineStore, run_id: int) -> None:
        """Keep each baseline in the store, under run `run_id`, once learned; until cancelled."""
        while True:
            await self._learned.wait()
            self._learned.clear()
            await self.save_learned(store, run_id)

    async def save_learned(self, store: BaselineStore, run_id: int) -> None:
        """Keep in the store, under run `run_id`, the baselines learned since the last call."""
        while self._unsaved:
            await store.add_baseline(run_id, self._unsaved.popleft())
