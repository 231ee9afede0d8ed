"""The `JobControls` of a job running in another process (`crawldeck attach`).

The dashboard calls `snapshot()` synchronously, so this keeps the latest
snapshot, refreshed by a background task polling the job's control socket.
Controls are sent without waiting: their effect shows in a later snapshot,
as with a local engine.  Steps go as steps (`adjust_concurrency`), so the
job moves from the value it has, not from one this viewer saw; a step a
bound stopped short, like a refused control, is noted in the event log.  A
lost connection keeps the last snapshot on show, with a warning event, and
is retried on every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.api import (
    Adjustment,
    ControlClient,
    ControlError,
    Event,
    EventKind,
    NoJobRunning,
    Preset,
    Snapshot,
    store_for_socket,
)


class RemoteSource:
    """A running job seen through its control socket.

    `await start()` fetches the first snapshot (raising `NoJobRunning` when
    nothing answers) and starts polling every `refresh_s` seconds.
    """

    def __init__(
        self, socket_path: Path, *, refresh_s: float = 0.25, store_path: Path | None = None
    ) -> None:
        self.socket_path = Path(socket_path)
        self.refresh_s = refresh_s
        self.store_path = (
            store_path if store_path is not None else store_for_socket(self.socket_path)
        )
        self.last_error = ""  # the latest failed control or lost connection, for the user
        self._client: ControlClient | None = None
        self._latest = Snapshot()
        self._lost: Event | None = None
        self._notes: deque[Event] = deque(maxlen=20)  # refused controls, shown in the event log
        self._poller: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._polled = asyncio.Event()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._client = await ControlClient.connect(self.socket_path)
        self._latest = await self._client.snapshot()
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        tasks = [t for t in (self._poller, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._lost is None

    async def wait_for_poll(self) -> None:
        """Until the next poll has happened (for tests; never needed by the app)."""
        self._polled.clear()
        await self._polled.wait()

    async def _poll(self) -> None:
        while True:
            await self._refresh()
            self._polled.set()
            await asyncio.sleep(self.refresh_s)

    async def _refresh(self) -> None:
        try:
            if self._client is None:
                self._client = await ControlClient.connect(self.socket_path, timeout_s=1.0)
            self._latest = await self._client.snapshot()
            self._lost = None
        except ControlError as exc:
            if self._client is not None:
                await self._client.close()
                self._client = None
            if self._lost is None:
                self.last_error = str(exc)
                self._lost = Event(EventKind.WARNING, f"connection to the job lost: {exc}")

    # ------------------------------------------------------------ JobControls
    def snapshot(self) -> Snapshot:
        local = (*self._notes, *(() if self._lost is None else (self._lost,)))
        if not local:
            return self._latest
        return replace(self._latest, events=(*self._latest.events, *local))

    def set_concurrency(self, value: int) -> None:
        self._send("set_concurrency", value=int(value))

    def adjust_concurrency(self, delta: int) -> Adjustment | None:
        """Sent as a step; None: what it did is known only when the job answers."""
        self._send_step("adjust_concurrency", int(delta))
        return None

    def set_fetch_concurrency(self, value: int) -> None:
        self._send("set_fetch_concurrency", value=int(value))

    def adjust_fetch_concurrency(self, delta: int) -> Adjustment | None:
        """Sent as a step; None: what it did is known only when the job answers."""
        self._send_step("adjust_fetch_concurrency", int(delta))
        return None

    def apply_preset(self, preset: str | Preset) -> None:
        if isinstance(preset, Preset):
            self._send("apply_preset", preset=dataclasses.asdict(preset))
        else:
            self._send("apply_preset", preset=str(preset))

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def drain(self) -> None:
        self._send("drain")

    def stop(self) -> None:
        self._send("stop")

    def _send(self, op: str, **arguments: Any) -> None:
        """Fire and forget: the key press never waits for the other process."""
        self._start(self._request(op, lambda client: client.control(op, **arguments)))

    def _send_step(self, op: str, delta: int) -> None:
        async def step(client: ControlClient) -> None:
            done = await client.adjust(op, delta)
            if done.at_bound:
                self._notes.append(
                    Event(EventKind.WARNING, f"{done.setting}: {done.bound_message}")
                )

        self._start(self._request(op, step))

    def _start(self, request: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(request)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _request(self, op: str, send: Callable[[ControlClient], Awaitable[None]]) -> None:
        client = self._client
        if client is None:
            self.last_error = f"{op}: not connected to the job"
            return
        try:
            await send(client)
        except NoJobRunning as exc:
            self.last_error = f"{op}: {exc}"
        except ControlError as exc:
            self.last_error = f"{op} refused: {exc}"
            self._notes.append(Event(EventKind.WARNING, self.last_error))

    async def settled(self) -> None:
        """Until every control sent so far has been answered (for tests and quitting)."""
        while self._sending:
            await asyncio.gather(*tuple(self._sending), return_exceptions=True)
