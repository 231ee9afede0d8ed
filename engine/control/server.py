"""The local control endpoint of a running job: a Unix socket, never a network port.

`crawldeck run --headless` serves it so `crawldeck attach` and `crawldeck
status` can watch and steer the job from another terminal.  The socket lives
in the job's state folder next to its store (`results.db.crawldeck/
control.sock`), is created with mode 0600 in a 0700 folder, and is removed
when the run ends.

Protocol: one JSON object a line each way.  Requests are
`{"op": "snapshot"}`, `{"op": "pause" | "resume" | "drain" | "stop"}`,
`{"op": "set_concurrency" | "set_fetch_concurrency", "value": N}`, `{"op": "adjust_concurrency"
| "adjust_fetch_concurrency", "delta": N}` and `{"op": "apply_preset", "preset": NAME | {field:
value, ...}}`; answers are `{"ok": true, ...}` or `{"ok": false, "error": "one line"}`.  An
adjust steps from the value in force (a viewer never sends a value computed from a snapshot
that may be stale) and answers what it did: `{"ok": true, "adjustment": {"setting": ...,
"old": N, "new": N, "asked": N}}`, where `new` differs from `asked` when a bound stopped it.
Nothing else is ever executed.

Viewers must not slow the job: a snapshot is encoded at most once per
`min_interval_s` and the same bytes go to every client; each client has its
own task, and one that stops reading is dropped instead of being waited for.

Nor can they lock each other out.  A client that sends nothing for
`idle_timeout_s` is told so in one line and dropped (viewers poll a few times
a second, `status` asks once and leaves, so only a stuck or forgotten
connection is ever idle that long).  At `max_clients`, a new client takes the
place of the one idle longest, if that one has been quiet for `evict_idle_s`;
when every client is busy the new one is refused with a line saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config.config_problem import ConfigError
from engine.config.presets import preset_from_values
from engine.config.setting_bounds import CONCURRENCY, FETCH_CONCURRENCY, Bound
from engine.config.settings import EngineSettings, Preset
from engine.control.controls import Adjustment, JobControls
from engine.observe.snapshot_codec import encode_snapshot
from engine.store.state_folder import STATE_SUFFIX, state_folder_for_store

SOCKET_NAME = "control.sock"
MAX_LINE_BYTES = 64 * 1024
DEFAULT_IDLE_TIMEOUT_S = EngineSettings().control_idle_timeout_s
# A viewer we ship asks at least once a second (attach: 4 times): one quiet for
# longer than this is not watching, and may give its place to a new client.
_EVICT_IDLE_S = 5.0
_REFUSAL_WAIT_S = 1.0  # how long a refused client has to ask, so it reads why
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the final NUL
_PRESET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_CONTROLS = ("pause", "resume", "drain", "stop")


class ControlServerError(Exception):
    """The control socket could not be served (one line, for the user)."""


def socket_path_for_store(store: str | Path) -> Path:
    return state_folder_for_store(store) / SOCKET_NAME


def store_for_socket(path: Path) -> Path | None:
    """The store a socket in a state folder belongs to (None for a socket elsewhere)."""
    folder = path.parent
    if path.name == SOCKET_NAME and folder.name.endswith(STATE_SUFFIX):
        return folder.with_name(folder.name.removesuffix(STATE_SUFFIX))
    return None


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ControlServerError(
            f"control socket path is too long for a Unix socket ({len(os.fsencode(path))} "
            f"bytes, at most {_SUN_PATH_MAX}): {path}"
        )


class ControlServer:
    """Serves one job's snapshots and controls on a Unix socket.

    `await bind()` creates the socket (or raises `ControlServerError`), then
    `serve()` answers clients until cancelled and removes the socket.
    """

    def __init__(
        self,
        target: JobControls,
        path: Path,
        *,
        min_interval_s: float = 0.1,
        write_timeout_s: float = 2.0,
        max_clients: int = 32,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        evict_idle_s: float = _EVICT_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self.write_timeout_s = write_timeout_s
        self.max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self.evict_idle_s = evict_idle_s
        self._clock = clock
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._clients: dict[asyncio.Task[None], _Client] = {}
        # Clients that connected between `bind` and `serve`: answered once it starts.
        self._early: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.dropped_idle = 0  # clients dropped for saying nothing (tests and logs read it)
        self.evicted = 0  # idle clients that gave their place to a new one
        self._encoded: bytes = b""
        self._encoded_at = float("-inf")
        self.encodes = 0  # how many snapshots were encoded (tests check the sharing)

    @property
    def bound(self) -> bool:
        return self._server is not None

    @property
    def serving(self) -> bool:
        """Whether clients are being accepted (after `serve()` has started)."""
        return self._server is not None and self._server.is_serving()

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # ------------------------------------------------------------ lifecycle
    async def bind(self) -> None:
        check_socket_path(self.path)
        folder = self.path.parent
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        except OSError as exc:
            raise ControlServerError(f"cannot create the state folder {folder}: {exc}") from exc
        await self._replace_stale()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
        try:
            # Listening from the moment the file exists: a client that finds the
            # socket is never refused as if no job ran (it waits for `serve`).
            self._server = await asyncio.start_unix_server(
                self._on_connect, path=str(self.path), limit=MAX_LINE_BYTES
            )
        except OSError as exc:
            raise ControlServerError(
                f"cannot create the control socket {self.path}: {exc}"
            ) from exc
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino

    async def _replace_stale(self) -> None:
        """A socket left by a killed run is removed; a live one means another run."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlServerError(f"{self.path} exists and is not a socket")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path)), timeout=1.0
            )
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        except (OSError, TimeoutError) as exc:
            raise ControlServerError(f"cannot check the control socket {self.path}: {exc}") from exc
        writer.close()
        raise ControlServerError(f"another crawldeck run is serving {self.path}")

    async def serve(self) -> None:
        """Answer clients until cancelled; then close them all and remove the socket.

        Never raises anything but cancellation: a failure here is reported on
        stderr and must not take the job down with it.
        """
        try:
            if self._server is None:
                await self.bind()
            assert self._server is not None
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                early, self._early = self._early, []
                for reader, writer in early:
                    self._on_connect(reader, writer)
                await asyncio.Event().wait()  # until cancelled
        except ControlServerError as exc:
            print(f"crawldeck: {exc}", file=sys.stderr)
        except Exception as exc:  # the control socket must never end the job
            print(f"crawldeck: control socket failed: {exc!r}", file=sys.stderr)
        finally:
            self._tg = None
            self.close()

    def close(self) -> None:
        """Stop listening and remove our socket file (idempotent)."""
        for _, writer in self._early:
            writer.close()
        self._early.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._inode is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    self.path.unlink()
            self._inode = None
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only when empty

    def refresh(self) -> None:
        """Make the next snapshot request encode a fresh one (e.g. at the end of the run)."""
        self._encoded_at = float("-inf")

    # ------------------------------------------------------------ clients
    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tg is None:
            if self._server is not None:  # bound, not serving yet
                self._early.append((reader, writer))
            else:
                writer.close()
            return
        if len(self._clients) >= self.max_clients and not self._evict_idlest():
            self._tg.create_task(self._refuse(reader, writer))
            return
        client = _Client(writer, self._clock())
        task = self._tg.create_task(self._serve_client(reader, client))
        self._clients[task] = client
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._clients.pop(task, None)

    def _evict_idlest(self) -> bool:
        """Drop the client idle longest, if it has been idle long enough; whether one was."""
        if not self._clients:
            return False
        task, idlest = min(self._clients.items(), key=lambda item: item[1].last_request)
        if self._clock() - idlest.last_request < self.evict_idle_s:
            return False
        _say_goodbye(
            idlest.writer,
            f"closed: idle while a new client needed the place ({self.max_clients} at most)",
        )
        self._clients.pop(task)
        task.cancel()
        self.evicted += 1
        return True

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Tell a client there is no room, once it asks; never hold it long."""
        # Answering its first request, rather than closing at once, is what
        # lets the client read the reason instead of a bare "connection lost".
        message = (
            f"too many clients: {self.max_clients} are connected and all active "
            "(the most this job serves); close one and try again"
        )
        try:
            async with asyncio.timeout(_REFUSAL_WAIT_S):
                await reader.readline()
                writer.write(_line({"ok": False, "error": message}))
                await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    async def _serve_client(self, reader: asyncio.StreamReader, client: _Client) -> None:
        writer = client.writer
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        raw = await reader.readline()
                except ValueError:  # longer than MAX_LINE_BYTES
                    writer.write(_line({"ok": False, "error": "request line too long"}))
                    break
                except TimeoutError:
                    # Held open and silent: stuck, or forgotten.  It would keep a
                    # place a viewer may need, so it goes, told why.
                    self.dropped_idle += 1
                    _say_goodbye(writer, f"closed: no request for {self.idle_timeout_s:g}s")
                    break
                if not raw:
                    break
                client.last_request = self._clock()
                writer.write(self._answer(raw))
                # A client that stops reading fills its buffer: it is dropped, never awaited long.
                await asyncio.wait_for(writer.drain(), timeout=self.write_timeout_s)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # one client's trouble must not end the server
            print(f"crawldeck: control client dropped: {exc!r}", file=sys.stderr)
        finally:
            writer.close()

    def _answer(self, raw: bytes) -> bytes:
        try:
            request = json.loads(raw)
        except ValueError:
            return _line({"ok": False, "error": "not a JSON line"})
        if not isinstance(request, dict):
            return _line({"ok": False, "error": "a request is a JSON object"})
        op = request.get("op")
        if op == "snapshot":
            return self._snapshot_line()
        try:
            done = self._control(op, request)
        except _Refused as exc:
            return _line({"ok": False, "error": str(exc)})
        except KeyError as exc:  # an unknown preset: its message is the first argument
            return _line({"ok": False, "error": _one_line(str(exc.args[0]) if exc.args else "")})
        except Exception as exc:
            return _line({"ok": False, "error": _one_line(str(exc)) or type(exc).__name__})
        if done is None:
            return _line({"ok": True})
        return _line({"ok": True, "adjustment": dataclasses.asdict(done)})

    def _snapshot_line(self) -> bytes:
        now = self._clock()
        if now - self._encoded_at >= self.min_interval_s:
            payload = json.dumps(
                encode_snapshot(self.target.snapshot()), separators=(",", ":"), ensure_ascii=False
            )
            self._encoded = b'{"ok":true,"snapshot":' + payload.encode() + b"}\n"
            self._encoded_at = now
            self.encodes += 1
        return self._encoded

    def _control(self, op: object, request: dict[str, Any]) -> Adjustment | None:
        """Apply one control; an adjust's answer says what it did."""
        if op in _CONTROLS:
            getattr(self.target, str(op))()
        elif op == "adjust_concurrency":
            return self.target.adjust_concurrency(_bounded_delta(op, request, CONCURRENCY))
        elif op == "adjust_fetch_concurrency":
            delta = _bounded_delta(op, request, FETCH_CONCURRENCY)
            try:
                return self.target.adjust_fetch_concurrency(delta)
            except ValueError as exc:
                raise _Refused(str(exc)) from None
        elif op == "set_fetch_concurrency":
            fetches = _bounded_value(op, request, FETCH_CONCURRENCY)
            try:
                self.target.set_fetch_concurrency(fetches)
            except ValueError as exc:
                raise _Refused(str(exc)) from None
        elif op == "set_concurrency":
            self.target.set_concurrency(_bounded_value(op, request, CONCURRENCY))
        elif op == "apply_preset":
            name = request.get("preset")
            if isinstance(name, dict):
                # A whole preset, read and checked by the viewer (from a file or the
                # editor) and checked again here: the engine never opens a path a
                # client chose.
                try:
                    value = preset_from_values(Preset(), name, source="apply_preset")
                except ConfigError as exc:
                    raise _Refused(str(exc).replace("\n", "; ")) from None
                self.target.apply_preset(value)
                return None
            # Names only: a path would make the engine read a file the client chose.
            if (
                not isinstance(name, str)
                or not _PRESET_NAME.fullmatch(name)
                or name.endswith(".toml")
            ):
                raise _Refused(
                    "apply_preset needs the name of one of the job's presets, or a preset's values"
                )
            self.target.apply_preset(name)
        else:
            raise _Refused(f"unknown op {str(op)[:40]!r}")
        return None


class _Refused(Exception):
    pass


@dataclass(slots=True)
class _Client:
    """One connected client: where to write, and when it last asked for anything."""

    writer: asyncio.StreamWriter
    last_request: float


def _say_goodbye(writer: asyncio.StreamWriter, why: str) -> None:
    # Read by the client as the answer to its next request, so it learns why
    # the connection is gone; never waited for: the client may not be reading.
    with contextlib.suppress(OSError, RuntimeError):
        writer.write(_line({"ok": False, "error": why}))


def _bounded_value(op: str, request: dict[str, Any], bound: Bound) -> int:
    value = request.get("value")
    if not bound.holds(value):
        raise _Refused(
            f"{op} needs an integer value from {bound.low} to {bound.high} (got {value!r})"[:200]
        )
    assert isinstance(value, int)
    return value


def _bounded_delta(op: str, request: dict[str, Any], bound: Bound) -> int:
    # A step wider than the whole range is a typo, never a plan.
    widest = bound.high - bound.low
    delta = request.get("delta")
    if not Bound(-widest, widest).holds(delta):
        raise _Refused(
            f"{op} needs an integer delta from {-widest} to {widest} (got {delta!r})"[:200]
        )
    assert isinstance(delta, int)
    return delta


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"
