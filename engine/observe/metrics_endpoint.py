"""`--metrics`: the job's snapshot served to Prometheus over HTTP.

prometheus-client's own HTTP server answers scrapes on its threads, from a
registry holding only the `SnapshotCollector`.  Those threads never call
into the engine: a task on the engine's loop publishes the latest snapshot
every interval (and once more when it stops, so the last scrape sees how
the job ended), and a scrape reads that one immutable value.

`serving_metrics` binds the server for the length of a `with` block and
shuts it down at its end; `MetricsEndpoint.publish_every` is the task that
feeds it, owned by the caller (a task group, or `tui/metrics_flag.py`'s
`metrics_published` block).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from engine.observe.metric_families import SnapshotCollector
from engine.observe.metrics_address import MetricsAddress, MetricsBindError
from engine.observe.snapshot import Snapshot


class MetricsEndpoint:
    """A listening metrics server and the collector it reads."""

    def __init__(self, server: WSGIServer, collector: SnapshotCollector) -> None:
        self._server = server
        self.collector = collector

    @property
    def address(self) -> MetricsAddress:
        """Where it listens (the port the system picked, for port 0)."""
        host, port = self._server.server_address[:2]
        return MetricsAddress(str(host), int(port))

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    async def publish_every(self, take_snapshot: Callable[[], Snapshot], interval_s: float) -> None:
        """Publish a snapshot now and every `interval_s` until cancelled, then a last one."""
        try:
            while True:
                self.collector.publish(take_snapshot())
                await asyncio.sleep(interval_s)
        finally:
            # Cancelled once the job has ended: its final state is what stays served.
            self.collector.publish(take_snapshot())


@contextlib.asynccontextmanager
async def serving_metrics(address: MetricsAddress) -> AsyncIterator[MetricsEndpoint]:
    """The metrics endpoint listening at `address` for the block; `MetricsBindError` if it can't.

    Nothing is served until a snapshot is published.
    """
    collector = SnapshotCollector()
    registry = CollectorRegistry(auto_describe=False)  # only the job's figures, no process_*
    registry.register(collector)
    try:
        server, thread = start_http_server(address.port, address.host, registry=registry)
    except OSError as exc:  # the port is taken, the host is not this machine's, …
        reason = exc.strerror or str(exc)
        raise MetricsBindError(f"{address}: {reason[0].lower()}{reason[1:]}") from None
    try:
        yield MetricsEndpoint(server, collector)
    finally:
        # shutdown() waits for the serving loop to notice (up to half a second):
        # off the event loop, so the engine's other tasks are not held up.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        await asyncio.to_thread(thread.join)
