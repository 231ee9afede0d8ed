"""Talks to a running job's control socket (see `engine.control.server`).

One connection, one request at a time: requests are serialised by a lock,
so a poller and a key press can share a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from engine.control.controls import Adjustment
from engine.control.server import MAX_LINE_BYTES, ControlServerError, check_socket_path
from engine.observe.snapshot import Snapshot
from engine.observe.snapshot_codec import SnapshotDecodeError, decode_snapshot

# A snapshot carries the recent events: far larger than a request.
_ANSWER_LIMIT = 64 * MAX_LINE_BYTES
_ADJUSTMENT_FIELDS = frozenset(field.name for field in dataclasses.fields(Adjustment))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ControlError(Exception):
    """The job refused a request, or the answer made no sense (one line)."""


class NoJobRunning(ControlError):
    """Nothing answers at that socket."""


class ControlClient:
    def __init__(self, path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.path = path
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, path: Path, timeout_s: float = 5.0) -> ControlClient:
        path = Path(path)
        try:
            check_socket_path(path)
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=_ANSWER_LIMIT), timeout=timeout_s
            )
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NoJobRunning(f"no crawldeck job is running at {path}") from exc
        except (OSError, TimeoutError, ControlServerError) as exc:
            raise NoJobRunning(f"cannot reach a crawldeck job at {path}: {exc}") from exc
        return cls(path, reader, writer)

    async def request(self, message: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        """Send one request; the answer, or `ControlError` if it says `ok: false`."""
        async with self._lock:
            try:
                self._writer.write(json.dumps(message).encode() + b"\n")
                await self._writer.drain()
                raw = await asyncio.wait_for(self._reader.readline(), timeout=timeout_s)
            except (OSError, TimeoutError, ValueError) as exc:
                raise NoJobRunning(f"lost the job at {self.path}: {exc or 'timed out'}") from exc
        if not raw:
            raise NoJobRunning(f"the job at {self.path} closed the connection")
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise ControlError(f"not a JSON answer from {self.path}") from exc
        if not isinstance(answer, dict):
            raise ControlError(f"unexpected answer from {self.path}")
        if answer.get("ok") is not True:
            raise ControlError(str(answer.get("error") or "the job refused the request"))
        return answer

    async def snapshot(self) -> Snapshot:
        answer = await self.request({"op": "snapshot"})
        try:
            return decode_snapshot(answer.get("snapshot"))
        except SnapshotDecodeError as exc:
            raise ControlError(str(exc)) from exc

    async def control(self, op: str, **arguments: Any) -> None:
        await self.request({"op": op, **arguments})

    async def adjust(self, op: str, delta: int) -> Adjustment:
        """A relative step (`adjust_concurrency`, `adjust_fetch_concurrency`): what it did."""
        answer = await self.request({"op": op, "delta": delta})
        done = answer.get("adjustment")
        if (
            not isinstance(done, dict)
            or set(done) != _ADJUSTMENT_FIELDS
            or not isinstance(done["setting"], str)
            or not all(_is_int(done[name]) for name in ("old", "new", "asked"))
        ):
            raise ControlError(f"{op}: the answer from {self.path} is not a step")
        return Adjustment(**done)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
