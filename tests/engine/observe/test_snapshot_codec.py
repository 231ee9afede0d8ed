"""Snapshots survive the trip through JSON exactly: what `attach` shows is what the engine saw."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from engine.cluster.cluster_view import ClusterView, KeyUsage, WorkerView
from engine.config.settings import BUILTIN_PRESETS
from engine.observe.batch_view import BatchRoute, SubmittedBatch
from engine.observe.events import Event, EventKind
from engine.observe.latency_histogram import LatencyHistogram
from engine.observe.snapshot import (
    Counts,
    JobState,
    KeySnapshot,
    MemorySnapshot,
    QueueDepths,
    Snapshot,
)
from engine.observe.snapshot_codec import SnapshotDecodeError, decode_snapshot, encode_snapshot


def rich_snapshot() -> Snapshot:
    key = KeySnapshot(
        key_id="sim/a",
        provider="sim",
        alias="a",
        masked_secret="sk-…abcd",
        rpm_used=12,
        rpm_limit=600.0,
        tpm_used=3400,
        tpm_limit=None,
        in_flight=2,
        requests=40,
        errors=1,
        rate_limited=3,
        state="cooling",
        cooldown_s=1.5,
        disabled_reason="",
    )
    return Snapshot(
        job_name="codec — ünïcode",
        state=JobState.PAUSED,
        taken_at=1_700_000_000.125,
        elapsed_s=12.5,
        counts=Counts(total=None, seen=10, pending=3, in_flight=2, done=4, failed=1),
        items_per_min=33.3,
        eta_s=None,
        eta_low_s=1.0,
        eta_high_s=float("inf"),
        latency_p50_s=0.25,
        errors_by_kind=(("rate_limited", 3), ("server_error", 1)),
        errors_by_key=(("sim/a", 4),),
        keys=(key, replace(key, key_id="sim/b", rpm_limit=None)),
        concurrency=7,
        preset=BUILTIN_PRESETS["aggressive"],
        memory=MemorySnapshot(rss_bytes=123, soft_bytes=456, hard_bytes=789, limit_bytes=None),
        cost_usd=0.0123,
        cost_projected_usd=1.5,
        prompt_tokens=900,
        completion_tokens=120,
        latency_histogram=LatencyHistogram((0.5, 1.0), (3, 5, 6), 4.75),
        queues=QueueDepths(documents=1, chunks=2, batches=3, retries=4, store=5),
        throughput_history=(0.0, 1.5, 3.0),
        latency_history=(0.1,),
        error_rate_history=(),
        events=(
            Event(EventKind.PAUSED, "paused", ts=1.0),
            Event(
                EventKind.RETRY,
                "retry",
                {"kind": "server_error", "attempt": 2, "delay_s": 0.5, "adaptive": True},
                ts=2.0,
            ),
            Event(EventKind.WARNING, "none inside", {"reason": None}, ts=3.0),
        ),
    )


def test_a_rich_snapshot_round_trips_through_json_exactly() -> None:
    snap = rich_snapshot()

    wire = json.dumps(encode_snapshot(snap))
    back = decode_snapshot(json.loads(wire))

    assert back == snap
    assert back.state is JobState.PAUSED
    assert back.events[1].kind is EventKind.RETRY
    assert dict(back.events[1].data) == {
        "kind": "server_error",
        "attempt": 2,
        "delay_s": 0.5,
        "adaptive": True,
    }
    assert isinstance(back.keys[0], KeySnapshot)
    assert back.errors_by_kind == (("rate_limited", 3), ("server_error", 1))


def test_a_workers_cluster_view_round_trips() -> None:
    worker = WorkerView(
        worker_id="host-12-abc",
        host="host",
        pid=12,
        state="running",
        done=40,
        failed=1,
        in_flight=4,
        items_per_min=120.0,
        requests_per_min=60.0,
        tokens_per_s=9.5,
        keys=(KeyUsage("sim/a", 30, 4000),),
        heartbeat_s=2.0,
        started_at=1_700_000_000.5,
        last_heartbeat=1_700_000_010.25,
        age_s=0.75,
        lost=False,
        ended=False,
    )
    view = ClusterView(
        taken_at=1_700_000_011.0,
        workers=(worker, replace(worker, worker_id="other-13-def", lost=True)),
        done=80,
        live=1,
        lost=1,
        run=3,
        chunks_enqueued=200,
        chunks_done=80,
        chunks_failed=2,
        input_complete=True,
        worker_id="host-12-abc",
        store="/data/results.db on host",
        collector="host-12-abc",
    )
    snap = replace(rich_snapshot(), cluster=view)

    back = decode_snapshot(json.loads(json.dumps(encode_snapshot(snap))))

    assert back == snap
    assert back.cluster is not None and back.cluster.chunks_total == 200


def test_a_batch_mode_jobs_batches_round_trip() -> None:
    batch = SubmittedBatch(
        batch_id="batch_abc",
        key_alias="main",
        state="in_progress",
        requests=50,
        completed=12,
        failed=1,
        chunks=250,
        age_s=61.5,
        window_s=86_400.0,
        resumed=True,
    )
    route = BatchRoute(
        batches=(batch, replace(batch, batch_id="", state="validating", resumed=False)),
        submitted=3,
        resumed=1,
        settled=2,
        abandoned=1,
        collecting=7,
        cost_usd=0.0125,
        cost_projected_usd=0.05,
        online_cost_projected_usd=None,
    )
    snap = replace(rich_snapshot(), batch=route)

    back = decode_snapshot(json.loads(json.dumps(encode_snapshot(snap))))

    assert back == snap and back.batch == route


def test_the_default_snapshot_round_trips() -> None:
    assert decode_snapshot(json.loads(json.dumps(encode_snapshot(Snapshot())))) == Snapshot()


def test_unknown_keys_are_ignored_and_missing_ones_take_defaults() -> None:
    data = encode_snapshot(rich_snapshot())
    data["from_a_newer_version"] = 1
    del data["cost_usd"]

    back = decode_snapshot(data)

    assert back.cost_usd == 0.0
    assert back.job_name == rich_snapshot().job_name


@pytest.mark.parametrize(
    "data",
    [None, [], {"state": "no-such-state"}, {"counts": {"done": "four"}}, {"keys": [1]}],
)
def test_what_is_not_a_snapshot_is_refused_with_one_error(data: object) -> None:
    with pytest.raises(SnapshotDecodeError):
        decode_snapshot(data)
