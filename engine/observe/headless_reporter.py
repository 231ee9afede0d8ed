"""Status lines for SSH, nohup and systemd logs: one reader of the snapshot.

Every few seconds one line (or one JSON object with `--json`), then the
summary.  It only reads snapshots; it never computes a rate itself.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any, TextIO

from engine.observe.batch_view import batch_route_text
from engine.observe.events import EventKind
from engine.observe.snapshot import JobState, Snapshot

# Events worth a line of their own in a log (the rest are in the store).
_LOUD = {
    EventKind.KEY_DISABLED,
    EventKind.DRIFT_TRIPPED,
    EventKind.DRIFT_BASELINE,
    EventKind.DRIFT_ACTION,
    EventKind.DRIFT_LIFTED,
    EventKind.LIMIT_LEARNED,
    EventKind.HEADERS_DISTRUSTED,
    EventKind.MEMORY_SOFT,
    EventKind.MEMORY_HARD,
    EventKind.MEMORY_OK,
    EventKind.PRESET_CHANGED,
    EventKind.CONCURRENCY_CHANGED,
    EventKind.PAUSED,
    EventKind.RESUMED,
    EventKind.DRAINING,
    EventKind.STOPPING,
    EventKind.WARNING,
    EventKind.CHUNK_FAILED,
    EventKind.BATCH_RECLAIMED,
    EventKind.DEAD_LETTER,
    EventKind.BATCH_SUBMITTED,
    EventKind.BATCH_RESUMED,
    EventKind.BATCH_ENDED,
    EventKind.BATCH_TO_ONLINE,
}


_RANGE_DASH = "\u2013"  # an en dash: the ETA band reads as a range, not a minus sign


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


# What stands in the ETA's place when the engine gives none because the job
# is not counting down: a countdown there would mislead.
_STATE_FOR_ETA = {
    JobState.PAUSED: "paused",
    JobState.DRAINING: "draining",
    JobState.STOPPING: "stopping",
    JobState.DONE: "done",
    JobState.FINISHED_WITH_FAILURES: "finished",
    JobState.STOPPED: "stopped",
    JobState.FAILED: "failed",
}


def eta_text(snap: Snapshot) -> tuple[str, str]:
    """The ETA and its band as text, or the job's state and no band while there is no ETA.

    The engine leaves the ETA out while the job is paused, draining, stopping
    or over; a running job without one yet (no rate to go by) shows "?".
    """
    if snap.eta_s is None and snap.state in _STATE_FOR_ETA:
        return _STATE_FOR_ETA[snap.state], ""
    band = ""
    if snap.eta_low_s is not None and snap.eta_high_s is not None and snap.eta_s:
        band = f"{format_duration(snap.eta_low_s)}{_RANGE_DASH}{format_duration(snap.eta_high_s)}"
    return format_duration(snap.eta_s), band


def status_line(snap: Snapshot) -> str:
    c = snap.counts
    total = "?" if c.total is None else ("~" if c.total_estimated else "") + str(c.total)
    mem = snap.memory
    mem_text = f"{mem.rss_bytes / 2**20:.0f}MB"
    if mem.state != "ok":
        held = f": {mem.waiting_for}" if mem.waiting_for else ""
        mem_text += f" ({mem.state.upper()}{held})"
    eta, band = eta_text(snap)
    if band:
        eta += f" [{band}]"
    # Shown once there are any: input records left out are not chunks, and a
    # log reader must not mistake them for the chunks "skipped" as done before.
    records = f", input records skipped {c.records_skipped}" if c.records_skipped else ""
    cached = f", cached {c.cached}" if c.cached else ""  # answered once for another chunk
    return (
        (
            f"[{snap.state}] {c.finished}/{total} "
            f"(done {c.done}, failed {c.failed}, skipped {c.skipped}{cached}, "
            f"in flight {c.in_flight}"
            f"{records}) "
            f"{snap.items_per_min:.0f} items/min {snap.requests_per_min:.0f} req/min "
            f"ETA {eta} 429s {snap.rate_limited} conc {snap.in_flight_requests}/{snap.concurrency} "
            f"mem {mem_text} ${snap.cost_usd:.4f}"
        )
        + (_crawl_part(snap) if snap.crawl is not None else "")
        + _cluster_part(snap)
        + (f" | {batch_route_text(snap.batch)}" if snap.batch is not None else "")
        + _budget_part(snap)
    )


def _budget_part(snap: Snapshot) -> str:
    """Spent (earlier runs included) and held by requests in flight, of the job's budget."""
    budget = snap.budget
    if budget is None:
        return ""
    reached = " REACHED" if budget.reached else ""
    return (
        f" | budget ${budget.spent_usd:.4f}/${budget.cap_usd:.4f}"
        f" (${budget.reserved_usd:.4f} in flight){reached}"
    )


def _cluster_part(snap: Snapshot) -> str:
    """The cluster's progress and workers, for a worker of a shared job ("" otherwise).

    The figures before it are this worker's own.
    """
    cluster = snap.cluster
    if cluster is None:
        return ""
    total = "?" if cluster.chunks_total is None else str(cluster.chunks_total)
    dead = f", dead letters {cluster.dead_letters}" if cluster.dead_letters else ""
    copied = f" ({cluster.chunks_copied} copied)" if cluster.chunks_copied else ""
    sites = ""
    if cluster.sites_enqueued:  # a crawl job's: its sites, crawled by one worker each
        gone = f" ({cluster.sites_dead} dead letters)" if cluster.sites_dead else ""
        sites = f" sites {cluster.sites_crawled}/{cluster.sites_enqueued}{gone}"
    return (
        f" | cluster {cluster.chunks_finished}/{total} (done {cluster.chunks_done}{copied}, "
        f"failed {cluster.chunks_failed}{dead}) workers {cluster.live} live {cluster.lost} lost"
        f"{sites}"
    )


def _crawl_part(snap: Snapshot) -> str:
    crawl = snap.crawl
    assert crawl is not None
    total = "?" if crawl.targets_total is None else str(crawl.targets_total)
    outcomes = " ".join(f"{name} {count}" for name, count in crawl.outcomes)
    return (
        f" | crawl {crawl.targets_finished}/{total} sites {crawl.pages_per_min:.0f} pages/min "
        f"fetch {crawl.fetches_in_flight}/{crawl.fetch_concurrency}"
        + (f" ({outcomes})" if outcomes else "")
    )


def snapshot_record(snap: Snapshot) -> dict[str, Any]:
    """A JSON-able dict of a snapshot without the long histories."""
    # Emptied before asdict: it deep-copies, and an event's read-only data can't be copied.
    light = replace(
        snap, throughput_history=(), latency_history=(), error_rate_history=(), events=()
    )
    data = asdict(light)
    for heavy in ("throughput_history", "latency_history", "error_rate_history", "events"):
        data.pop(heavy, None)
    data["state"] = str(snap.state)
    return data


class HeadlessReporter:
    """Prints the job's progress on a timer, and notable events as they happen."""

    def __init__(
        self,
        take_snapshot: Callable[[], Snapshot],
        interval_s: float = 5.0,
        as_json: bool = False,
        out: TextIO | None = None,
    ) -> None:
        self._take = take_snapshot
        self._interval = interval_s
        self._json = as_json
        self._out = out or sys.stdout
        self._last_event_ts = 0.0

    def emit_once(self) -> None:
        snap = self._take()
        for event in snap.events:
            if event.ts > self._last_event_ts and event.kind in _LOUD:
                if self._json:
                    record = {
                        "type": "event",
                        "kind": str(event.kind),
                        "message": event.message,
                        "ts": event.ts,
                        "data": dict(event.data),
                    }
                    self._write(json.dumps(record, default=str))
                else:
                    self._write(f"  · {event.kind}: {event.message}")
        if self._json:
            self._write(json.dumps({"type": "status", **snapshot_record(snap)}, default=str))
        else:
            self._write(status_line(snap))
        if snap.events:
            self._last_event_ts = max(self._last_event_ts, snap.events[-1].ts)

    async def run(self) -> None:
        """Report until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            self.emit_once()

    def _write(self, line: str) -> None:
        self._out.write(line + "\n")
        self._out.flush()
