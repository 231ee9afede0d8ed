"""A worker's `JobControls` that steer the whole cluster: what its control socket and dashboard use.

Snapshots are the worker's own.  Each control is checked here as the engine
would check it (a bad value raises at once and nothing is sent), then sent
to every worker through `ClusterControls`; this worker applies it too, when
its `ControlListener` reads it back, so all of them apply the same commands
in the same order.  As the protocol allows for a job in another process,
the steps return None: the change shows in a later snapshot.

    steering = ClusterJobControls(engine, ClusterControls(redis, settings, sender=worker_id))
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(steering.run())          # sends what the controls queued
        ControlServer(steering, ...)               # the socket steers the cluster
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from engine.cluster.cluster_controls import ClusterControls
from engine.config.presets import preset_from_values
from engine.config.setting_bounds import CONCURRENCY, FETCH_CONCURRENCY
from engine.config.settings import Preset
from engine.control.controls import Adjustment, JobControls
from engine.observe.snapshot import CrawlSnapshot, Snapshot

__all__ = ["ClusterJobControls"]

OUTBOX_SIZE = 64
"""Controls waiting to be sent; more means Redis is not taking them, and a new one is refused."""


class ClusterJobControls:
    """`JobControls` whose controls go to every worker of the cluster (this one included).

    `run()` sends what the controls queue, in order, until cancelled; a
    Redis gone past the outage limit ends it with `RedisUnavailable`.
    """

    def __init__(self, local: JobControls, cluster: ClusterControls) -> None:
        self.local = local
        self.cluster = cluster
        self._outbox: asyncio.Queue[Callable[[], Awaitable[object]]] = asyncio.Queue(OUTBOX_SIZE)

    def snapshot(self) -> Snapshot:
        """This worker's own snapshot."""
        return self.local.snapshot()

    def set_concurrency(self, value: int) -> None:
        """Every worker's most requests in flight."""
        value = CONCURRENCY.check("concurrency", value)
        self._post(lambda: self.cluster.set_concurrency(value))

    def adjust_concurrency(self, delta: int) -> Adjustment | None:
        """Step every worker's concurrency from the cluster's value (else this worker's)."""
        delta = _step(delta)
        base = self.local.snapshot().concurrency
        self._post(lambda: self.cluster.adjust_concurrency(delta, base=base))
        return None

    def set_fetch_concurrency(self, value: int) -> None:
        """Every crawling worker's fetches in flight."""
        self._crawl()
        value = FETCH_CONCURRENCY.check("fetch concurrency", value)
        self._post(lambda: self.cluster.set_fetch_concurrency(value))

    def adjust_fetch_concurrency(self, delta: int) -> Adjustment | None:
        """Step every crawling worker's fetches in flight from the cluster's value in force."""
        delta = _step(delta)
        base = self._crawl().fetch_concurrency
        self._post(lambda: self.cluster.adjust_fetch_concurrency(delta, base=base))
        return None

    def apply_preset(self, preset: str | Preset) -> None:
        """Every worker switches to a preset this job names, or to a whole (checked) value."""
        if isinstance(preset, Preset):
            checked = preset_from_values(preset, {}, source=f"preset {preset.name!r}")
            self._post(lambda: self.cluster.apply_preset(checked))
            return
        known = self.local.snapshot().preset_names
        if preset not in known:
            raise KeyError(f"unknown preset {preset!r} (known: {', '.join(sorted(known))})")
        self._post(lambda: self.cluster.apply_preset(preset))

    def pause(self) -> None:
        """Every worker admits no new requests."""
        self._post(self.cluster.pause)

    def resume(self) -> None:
        """Every worker admits requests again."""
        self._post(self.cluster.resume)

    def drain(self) -> None:
        """Every worker finishes what is in flight, stores it, then stops."""
        self._post(self.cluster.drain)

    def stop(self) -> None:
        """Every worker stops now; what was in flight stays pending."""
        self._post(self.cluster.stop)

    async def run(self) -> None:
        """Send the queued controls in order, until cancelled.

        Every value was checked when it was queued, so only Redis can fail here.
        """
        while True:
            send = await self._outbox.get()
            await send()

    def _post(self, send: Callable[[], Awaitable[object]]) -> None:
        try:
            self._outbox.put_nowait(send)
        except asyncio.QueueFull:
            raise ValueError(
                f"the cluster is not taking controls: {OUTBOX_SIZE} are waiting for Redis"
            ) from None

    def _crawl(self) -> CrawlSnapshot:
        crawl = self.local.snapshot().crawl
        if crawl is None:
            raise ValueError("this job does not crawl: it has no fetch stage")
        return crawl


def _step(delta: object) -> int:
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise ValueError(f"a step is a whole number (got {delta!r})")
    return delta
