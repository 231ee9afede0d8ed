"""Headless output: one status line (or JSON object) per interval, loud events once."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace

import pytest

from engine.cluster.cluster_view import ClusterView
from engine.observe.events import Event, EventKind
from engine.observe.headless_reporter import (
    HeadlessReporter,
    eta_text,
    format_duration,
    status_line,
)
from engine.observe.snapshot import Counts, JobState, KeySnapshot, MemorySnapshot, Snapshot

GUARD = 2.0


def running_snapshot(**changes: object) -> Snapshot:
    values: dict[str, object] = {
        "job_name": "demo",
        "state": JobState.RUNNING,
        "counts": Counts(
            total=1000, seen=600, pending=80, in_flight=20, done=400, failed=3, skipped=50, cached=7
        ),
        "items_per_min": 612.4,
        "requests_per_min": 123.6,
        "eta_s": 90.0,
        "eta_low_s": 75.0,
        "eta_high_s": 130.0,
        "rate_limited": 17,
        "concurrency": 16,
        "in_flight_requests": 12,
        "memory": MemorySnapshot(rss_bytes=300 * 2**20),
        "cost_usd": 0.12345,
        "throughput_history": (600.0, 610.0),
        "keys": (
            KeySnapshot("sim/a", "sim", "a", "sk-…abcd", 10, 60.0, 1000, None, 1, 10, 0, 0, "ok"),
        ),
    }
    values.update(changes)
    return Snapshot(**values)  # type: ignore[arg-type]


def event(kind: EventKind, message: str, ts: float) -> Event:
    return Event(kind, message, {"key": "sim/a"}, ts=ts)


class Feed:
    """Snapshots handed to the reporter one call at a time (the last one repeats)."""

    def __init__(self, *snapshots: Snapshot) -> None:
        self._snapshots = list(snapshots)

    def __call__(self) -> Snapshot:
        return self._snapshots.pop(0) if len(self._snapshots) > 1 else self._snapshots[0]


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "?"), (0, "0s"), (42.4, "42s"), (59.6, "1m00s"), (61, "1m01s"), (3725, "1h02m")],
)
def test_durations_read_as_hours_minutes_or_seconds(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_status_line_carries_progress_rates_eta_and_health() -> None:
    assert status_line(running_snapshot()) == (
        "[running] 460/1000 (done 400, failed 3, skipped 50, cached 7, in flight 20) "
        "612 items/min 124 req/min ETA 1m30s [1m15s\u20132m10s] 429s 17 conc 12/16 "
        "mem 300MB $0.1235"
    )


def test_an_unknown_total_and_eta_show_as_question_marks() -> None:
    line = status_line(
        running_snapshot(counts=Counts(done=5), eta_s=None, eta_low_s=None, eta_high_s=None)
    )

    assert "5/? " in line
    assert "ETA ? " in line


def test_the_eta_band_is_left_out_when_either_end_is_unknown() -> None:
    line = status_line(running_snapshot(eta_high_s=None))

    assert "ETA 1m30s 429s" in line


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        (JobState.PAUSED, "paused"),
        (JobState.DRAINING, "draining"),
        (JobState.STOPPING, "stopping"),
        (JobState.DONE, "done"),
        (JobState.FINISHED_WITH_FAILURES, "finished"),
        (JobState.STOPPED, "stopped"),
        (JobState.FAILED, "failed"),
    ],
)
def test_without_an_eta_a_job_that_is_not_running_shows_its_state_in_its_place(
    state: JobState, shown: str
) -> None:
    # The engine gives no ETA outside running; a countdown there would mislead.
    snap = running_snapshot(state=state, eta_s=None, eta_low_s=None, eta_high_s=None)

    assert eta_text(snap) == (shown, "")
    assert f" ETA {shown} 429s " in status_line(snap)


def test_a_running_job_shows_its_eta_and_band_or_a_question_mark() -> None:
    assert eta_text(running_snapshot()) == ("1m30s", "1m15s\u20132m10s")
    assert eta_text(running_snapshot(eta_s=None, eta_low_s=None, eta_high_s=None)) == ("?", "")


def test_memory_pressure_is_shouted() -> None:
    line = status_line(running_snapshot(memory=MemorySnapshot(rss_bytes=2**30, state="soft")))

    assert "mem 1024MB (SOFT)" in line


def test_the_status_line_says_what_the_memory_breaker_waits_for() -> None:
    held = MemorySnapshot(
        rss_bytes=530 * 2**20,
        state="soft",
        waiting_for="input paused until memory < 461 MB (now 530 MB)",
    )

    line = status_line(running_snapshot(memory=held))

    assert "mem 530MB (SOFT: input paused until memory < 461 MB (now 530 MB))" in line


def test_a_worker_of_a_cluster_shows_the_clusters_progress_and_workers_after_its_own() -> None:
    view = ClusterView(
        live=2,
        lost=1,
        chunks_enqueued=900,
        chunks_done=610,
        chunks_failed=4,
        input_complete=True,
    )

    line = status_line(running_snapshot(cluster=view))

    assert line.startswith("[running] 460/1000 (done 400, failed 3,")
    assert line.endswith(" | cluster 614/900 (done 610, failed 4) workers 2 live 1 lost")


def test_a_clusters_total_is_unknown_until_every_input_is_enqueued_and_dead_letters_show() -> None:
    view = ClusterView(live=3, chunks_enqueued=500, chunks_done=20, chunks_failed=6, dead_letters=2)

    line = status_line(running_snapshot(cluster=view))

    assert line.endswith(
        " | cluster 26/? (done 20, failed 6, dead letters 2) workers 3 live 0 lost"
    )


def test_a_clusters_copies_of_answers_to_repeated_texts_show_among_its_done() -> None:
    view = ClusterView(live=2, chunks_enqueued=50, chunks_done=50, chunks_copied=10)
    line = status_line(running_snapshot(cluster=view))
    assert " | cluster 50/? (done 50 (10 copied), failed 0) workers 2" in line


def test_a_crawl_shared_by_a_cluster_shows_its_sites_crawled_and_dead() -> None:
    view = ClusterView(live=2, chunks_enqueued=80, chunks_done=40, sites_enqueued=10)
    line = status_line(running_snapshot(cluster=view))
    assert line.endswith(" workers 2 live 0 lost sites 0/10")

    view = replace(view, sites_crawled=9, sites_dead=1)
    line = status_line(running_snapshot(cluster=view))
    assert line.endswith(" workers 2 live 0 lost sites 9/10 (1 dead letters)")


def test_reclaimed_batches_and_dead_letters_get_a_line_of_their_own() -> None:
    out = io.StringIO()
    events = (
        event(EventKind.BATCH_RECLAIMED, "took over batch 17-0 (2 chunks, idle over 3s)", 1.0),
        event(EventKind.DEAD_LETTER, "batch 18-0 (2 chunks) given up, dead letter: ...", 2.0),
    )

    HeadlessReporter(Feed(running_snapshot(events=events)), out=out).emit_once()

    assert lines(out)[:2] == [
        "  · batch_reclaimed: took over batch 17-0 (2 chunks, idle over 3s)",
        "  · dead_letter: batch 18-0 (2 chunks) given up, dead letter: ...",
    ]


def test_a_json_status_is_one_parseable_object_without_histories_or_events() -> None:
    out = io.StringIO()
    snap = running_snapshot(events=(event(EventKind.WARNING, "careful", ts=1.0),))
    HeadlessReporter(Feed(snap), as_json=True, out=out).emit_once()

    event_line, line = lines(out)
    record = json.loads(line)

    assert json.loads(event_line) == {
        "type": "event",
        "kind": "warning",
        "message": "careful",
        "ts": 1.0,
        "data": {"key": "sim/a"},
    }
    assert record["type"] == "status"
    assert record["state"] == "running"
    assert record["counts"]["done"] == 400
    assert record["keys"][0]["alias"] == "a"
    assert record["preset"]["concurrency"] == snap.preset.concurrency
    for heavy in ("throughput_history", "latency_history", "error_rate_history", "events"):
        assert heavy not in record


def test_loud_events_get_a_line_before_the_status_and_only_once() -> None:
    out = io.StringIO()
    events = (
        event(EventKind.KEY_DISABLED, "sim/a disabled: insufficient quota", ts=1.0),
        event(EventKind.LIMIT_LEARNED, "sim/a: rpm limit 600 → 500", ts=2.0),
    )
    reporter = HeadlessReporter(Feed(running_snapshot(events=events)), out=out)

    reporter.emit_once()
    reporter.emit_once()

    printed = lines(out)
    assert printed[:2] == [
        "  · key_disabled: sim/a disabled: insufficient quota",
        "  · limit_learned: sim/a: rpm limit 600 → 500",
    ]
    assert printed[2].startswith("[running]")
    assert printed[3].startswith("[running]")
    assert len(printed) == 4


def test_routine_events_stay_out_of_the_log() -> None:
    out = io.StringIO()
    events = (
        event(EventKind.RATE_LIMITED, "429 on sim/a", ts=1.0),
        event(EventKind.RETRY, "retry 1/5", ts=2.0),
    )

    HeadlessReporter(Feed(running_snapshot(events=events)), out=out).emit_once()

    assert [line[:9] for line in lines(out)] == ["[running]"]


def test_events_that_arrive_later_are_printed_at_the_next_status() -> None:
    out = io.StringIO()
    first = event(EventKind.PAUSED, "paused by the operator", ts=1.0)
    later = event(EventKind.RESUMED, "resumed", ts=5.0)
    reporter = HeadlessReporter(
        Feed(running_snapshot(events=(first,)), running_snapshot(events=(first, later))), out=out
    )

    reporter.emit_once()
    reporter.emit_once()

    assert [line for line in lines(out) if line.startswith("  · ")] == [
        "  · paused: paused by the operator",
        "  · resumed: resumed",
    ]


async def test_run_reports_on_its_interval_until_cancelled() -> None:
    out = io.StringIO()
    reporter = HeadlessReporter(Feed(running_snapshot()), interval_s=0.01, out=out)
    task = asyncio.create_task(reporter.run())

    async with asyncio.timeout(GUARD):
        while len(lines(out)) < 3:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert all(line.startswith("[running]") for line in lines(out))
