"""Shared set-up for dashboard tests: a real engine on the simulator, or a fixed snapshot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from engine.cluster.cluster_view import ClusterView, KeyUsage, WorkerReport, WorkerView, aggregate
from engine.config.setting_bounds import CONCURRENCY, FETCH_CONCURRENCY
from engine.config.settings import BUILTIN_PRESETS, DriftSettings, Preset
from engine.control.controls import Adjustment
from engine.drift.monitor import DriftMonitor
from engine.engine import Engine
from engine.observe.batch_view import BatchRoute, SubmittedBatch
from engine.observe.events import Event, EventKind
from engine.observe.snapshot import (
    Counts,
    CrawlSnapshot,
    DriftMetric,
    DriftState,
    JobState,
    KeySnapshot,
    MemorySnapshot,
    QueueDepths,
    Snapshot,
)
from engine.simulation.simulator import ProviderSimulator
from tests.engine.conftest import job_config, sim_keys, simulator, write_records

__all__ = ["simulator"]  # the real simulator on loopback, re-exported as a fixture

_MB = 2**20
STARTED_AT = 1_700_000_000.0  # a fixed wall clock: event offsets are the same on every host


def fixed_snapshot(**changes: object) -> Snapshot:
    """A busy job at one instant, every field set, for deterministic screenshots."""

    def at(offset: float, kind: EventKind, message: str) -> Event:
        return Event(kind, message, ts=STARTED_AT + offset)

    snap = Snapshot(
        job_name="transcripts-q3",
        state=JobState.RUNNING,
        taken_at=STARTED_AT + 754.0,
        elapsed_s=754.0,
        counts=Counts(
            total=12_000, seen=5_200, pending=900, in_flight=40, done=4_180, failed=12, skipped=60
        ),
        items_per_min=342.0,
        requests_per_min=71.0,
        tokens_per_s=5_400.0,
        eta_s=1_350.0,
        eta_low_s=1_180.0,
        eta_high_s=1_610.0,
        latency_p50_s=1.42,
        latency_p95_s=3.1,
        latency_p99_s=5.87,
        requests=892,
        rate_limited=7,
        keys=(
            KeySnapshot(
                "openai/main",
                "openai",
                "main",
                "sk-…a1b2",
                61,
                500.0,
                182_000,
                200_000.0,
                6,
                600,
                3,
                5,
                "ok",
                tpm_counted=196_500,
            ),
            KeySnapshot(
                "openai/backup",
                "openai",
                "backup",
                "sk-…9f3c",
                12,
                500.0,
                39_000,
                200_000.0,
                2,
                280,
                1,
                2,
                "cooling",
                cooldown_s=4.0,
                tpm_counted=61_000,
            ),
            KeySnapshot(
                "local/sim",
                "local",
                "sim",
                "……",
                0,
                None,
                0,
                None,
                0,
                12,
                12,
                0,
                "disabled",
                disabled_reason="insufficient_quota",
            ),
        ),
        concurrency=8,
        effective_concurrency=8,
        in_flight_requests=8,
        preset=BUILTIN_PRESETS["aggressive"],
        memory=MemorySnapshot(
            rss_bytes=1_190 * _MB, soft_bytes=1_536 * _MB, hard_bytes=2_048 * _MB, state="ok"
        ),
        cost_usd=0.4821,
        cost_projected_usd=1.3794,
        queues=QueueDepths(documents=3, chunks=512, batches=14, retries=2, store=9),
        throughput_history=tuple(300.0 + (i * 37) % 90 for i in range(120)),
        latency_history=tuple(1.0 + ((i * 13) % 17) / 10 for i in range(120)),
        error_rate_history=tuple(((i * 7) % 11) / 200 for i in range(120)),
        preset_names=("aggressive", "conservative", "overnight"),
        drift=(
            DriftMetric(
                "output_tokens",
                "answer length",
                "psi",
                values=tuple(0.02 + ((i * 5) % 9) / 100 for i in range(60)),
                threshold=0.25,
                current=0.1,
                state=DriftState.OK,
                action="warn",
                baseline_size=200,
                window_size=200,
            ),
            DriftMetric(
                "parse_failures",
                "parse failures",
                "z",
                values=tuple(min(6.0, i / 10) for i in range(60)),
                threshold=4.0,
                current=5.9,
                state=DriftState.TRIPPED,
                action="pause",
                baseline_size=200,
                window_size=200,
                trips=1,
            ),
            DriftMetric(
                "items",
                "items per chunk",
                "psi",
                values=tuple(0.1 + (i % 7) / 100 for i in range(60)),
                threshold=0.25,
                current=0.16,
                state=DriftState.WARNING,
                action="conservative",
                baseline_size=200,
                window_size=200,
            ),
        ),
        events=(
            at(0.0, EventKind.JOB_STARTED, "job transcripts-q3 started with preset aggressive"),
            at(61.0, EventKind.RATE_LIMITED, "openai/backup: 429, cooling 4.0s"),
            at(125.0, EventKind.CONCURRENCY_CHANGED, "concurrency 16 → 8"),
            at(300.0, EventKind.KEY_DISABLED, "local/sim disabled: insufficient_quota"),
            at(512.0, EventKind.CHUNK_FAILED, "chunk 4411 failed after 5 attempts"),
            at(753.0, EventKind.RETRY, "batch 893 retry 1 in 0.5s (server_error)"),
        ),
    )
    return replace(snap, **changes)  # type: ignore[arg-type]


def every_drift_metric() -> tuple[DriftMetric, ...]:
    """The metrics a job's drift monitor watches by default (the demo's ten), with fixed series.

    Names, labels, statistics and thresholds come from a real monitor; the
    series are made up: most metrics calm, one near its threshold, one past it.
    """
    metrics = DriftMonitor(DriftSettings()).metrics()
    states = {"items": DriftState.WARNING, "refusals": DriftState.TRIPPED}
    chosen = []
    for index, metric in enumerate(metrics):
        state = states.get(metric.name, DriftState.OK)
        level = {DriftState.OK: 0.3, DriftState.WARNING: 0.7, DriftState.TRIPPED: 1.3}[state]
        values = tuple(
            metric.threshold * level * (0.6 + ((i * (index + 3)) % 9) / 20) for i in range(60)
        )
        chosen.append(
            replace(
                metric,
                values=values,
                current=values[-1],
                state=state,
                baseline_size=200,
                window_size=200,
                trips=int(state is DriftState.TRIPPED),
            )
        )
    return tuple(chosen)


def fixed_crawl_snapshot(**changes: object) -> Snapshot:
    """The fixed snapshot of a crawl job: a fetch stage beside the LLM stage."""
    crawl = CrawlSnapshot(
        targets_total=3_204,
        targets_started=1_290,
        targets_finished=1_251,
        fetches_in_flight=39,
        fetch_concurrency=64,
        per_host=2,
        pages=1_262,
        pages_per_min=540.0,
        bytes=48_200_000,
        outcomes=(
            ("fetched", 1_005),
            ("redirected", 42),
            ("robots_blocked", 84),
            ("timed_out", 41),
            ("http_error", 40),
            ("not_html", 21),
            ("empty_text", 20),
            ("refused", 9),
        ),
        extracting=3,
    )
    snap = fixed_snapshot(
        job_name="sites-q3",
        crawl=crawl,
        counts=Counts(total=9_350, total_estimated=True, seen=3_650, done=3_280, pending=310),
    )
    return replace(snap, **changes)  # type: ignore[arg-type]


def fixed_batch_snapshot(**changes: object) -> Snapshot:
    """The fixed snapshot of a batch-mode job: three batches open at the provider."""
    batches = tuple(
        SubmittedBatch(
            batch_id=f"batch_69a1c0ffee{n:02d}",
            key_alias="main",
            state=state,
            requests=50,
            completed=completed,
            failed=failed,
            chunks=250,
            age_s=age,
            window_s=86_400.0,
            resumed=n == 0,
        )
        for n, (state, completed, failed, age) in enumerate(
            (
                ("in_progress", 31, 1, 5_040.0),
                ("in_progress", 12, 0, 2_410.0),
                ("validating", 0, 0, 35.0),
                ("validating", 0, 0, 4.0),
            )
        )
    )
    route = BatchRoute(
        batches=batches,
        submitted=11,
        resumed=1,
        settled=8,
        abandoned=1,
        collecting=17,
        cost_usd=0.0292,
        cost_projected_usd=0.1310,
        online_cost_projected_usd=0.2620,
    )
    snap = fixed_snapshot(
        job_name="transcripts-batch",
        batch=route,
        counts=Counts(total=8_834, seen=8_834, done=3_750, pending=4_084, in_flight=1_000),
    )
    return replace(snap, **changes)  # type: ignore[arg-type]


CLUSTER_AT = 1_700_000_500.0  # Redis's clock when the fixed cluster was read


def fixed_worker(
    worker_id: str, report: WorkerReport, *, age_s: float, lost: bool = False, ended: bool = False
) -> WorkerView:
    """A worker as the registry reads it: its id is host-pid-token, as `new_worker_id` makes."""
    host, pid, _ = worker_id.rsplit("-", 2)
    return WorkerView(
        worker_id=worker_id,
        host=host,
        pid=int(pid),
        state=report.state,
        done=report.done,
        failed=report.failed,
        in_flight=report.in_flight,
        items_per_min=report.items_per_min,
        requests_per_min=report.requests_per_min,
        tokens_per_s=report.tokens_per_s,
        keys=report.keys,
        heartbeat_s=1.0,
        started_at=CLUSTER_AT - 600.0,
        last_heartbeat=CLUSTER_AT - age_s,
        age_s=age_s,
        lost=lost,
        ended=ended,
    )


def fixed_cluster(*workers: WorkerView) -> ClusterView:
    """The cluster's totals as the registry sums them, plus its run counters in Redis."""
    view = aggregate(workers, taken_at=CLUSTER_AT)
    return replace(
        view,
        run=1,
        chunks_enqueued=12_000,
        chunks_done=4_920,
        chunks_failed=14,
        dead_letters=1,
        input_complete=True,
        worker_id=workers[0].worker_id,
        store="/data/transcripts-q3.db",
        collector=workers[0].worker_id,
    )


def fixed_cluster_snapshot(**changes: object) -> Snapshot:
    """The fixed snapshot of a worker of a shared job: three workers, the third lost."""
    keys = (KeyUsage("k1", requests=40, tokens=52_000),)
    cluster = fixed_cluster(
        fixed_worker(
            "gpu-box-a-4242-9f3c1e",
            WorkerReport("running", 2_310, 6, 32, 415.0, 104.0, 2_100.0, keys),
            age_s=0.4,
        ),
        fixed_worker(
            "gpu-box-b-1717-07ab55",
            WorkerReport("running", 2_104, 5, 29, 388.0, 97.0, 1_950.0, keys),
            age_s=1.6,
        ),
        fixed_worker(
            "spare-3-880-c0ffee",
            WorkerReport("running", 506, 3, 24, 402.0, 100.0, 2_000.0, keys),
            age_s=47.0,
            lost=True,
        ),
    )
    return replace(fixed_snapshot(cluster=cluster), **changes)  # type: ignore[arg-type]


class FixedSource:
    """Returns one snapshot forever and records the controls it was sent.

    A step (`adjust_concurrency`) is taken as the engine takes it, from the
    value in force (here, always the snapshot's) to the bound at most, and
    recorded as the value it sets.
    """

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.calls: list[tuple[str, object]] = []

    def snapshot(self) -> Snapshot:
        return self.snap

    def set_concurrency(self, value: int) -> None:
        self.calls.append(("set_concurrency", value))

    def adjust_concurrency(self, delta: int) -> Adjustment:
        step = Adjustment.within(CONCURRENCY, "concurrency", self.snap.concurrency, delta)
        if step.changed:
            self.set_concurrency(step.new)
        return step

    def set_fetch_concurrency(self, value: int) -> None:
        self.calls.append(("set_fetch_concurrency", value))

    def adjust_fetch_concurrency(self, delta: int) -> Adjustment:
        if self.snap.crawl is None:
            raise ValueError("this job does not crawl: it has no fetch stage")
        fetches = self.snap.crawl.fetch_concurrency
        step = Adjustment.within(FETCH_CONCURRENCY, "fetch concurrency", fetches, delta)
        if step.changed:
            self.set_fetch_concurrency(step.new)
        return step

    def apply_preset(self, preset: str | Preset) -> None:
        self.calls.append(("apply_preset", preset))

    def pause(self) -> None:
        self.calls.append(("pause", None))

    def resume(self) -> None:
        self.calls.append(("resume", None))

    def drain(self) -> None:
        self.calls.append(("drain", None))

    def stop(self) -> None:
        self.calls.append(("stop", None))


KEYS = (("k1", 60_000, 100_000_000),)


@pytest.fixture(autouse=True)
def isolated_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty settings dir: the user's own theme and keys never leak in."""
    config_dir = tmp_path / "config"
    monkeypatch.setenv("CRAWLDECK_CONFIG_DIR", str(config_dir))
    return config_dir


@pytest.fixture
async def slow_engine(tmp_path: Path, simulator: Callable[..., ProviderSimulator]) -> Engine:
    """A real engine against a slow simulator: it stays running for the whole test."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.3, 0.4))  # type: ignore[misc]
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 400), sim.base_url, KEYS
    )
    config = replace(config, preset=replace(config.preset, concurrency=4))
    return Engine(config, secrets)
