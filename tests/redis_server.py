"""A real `redis-server` of the tests' own: a free loopback port, a temporary folder.

Tests of the cluster run against this, never a mock: consumer groups,
`XAUTOCLAIM` and Lua scripts behave as they will in the field.  `.ci/run`
installs `redis-server` from the system packages when it is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType

READY_LINE = b"Ready to accept connections"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One `redis-server` process; `url` to connect, `restart()` keeps the port and data.

    `appendonly=True` turns the append-only file on, so a restart keeps
    every acknowledged write (the issue's restart test); otherwise nothing
    is saved.  With `password` the server requires it (`--requirepass`);
    `url` never carries it.
    """

    def __init__(
        self, folder: Path, *, appendonly: bool = False, password: str | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self._binary = binary
        self.folder = folder
        self.appendonly = appendonly
        self.password = password
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else []
        password = ["--requirepass", self.password] if self.password else []
        process = subprocess.Popen(
            [
                self._binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--save",
                "",
                *persistence,
                *password,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._process = process
        self._await_ready(process)
        return self

    def _await_ready(self, process: subprocess.Popen[bytes]) -> None:
        # The server's own log says when it listens: read it, no probing.
        assert process.stdout is not None
        seen: list[bytes] = []
        timer = _Kill(process, START_TIMEOUT_S)
        try:
            for line in process.stdout:
                seen.append(line)
                if READY_LINE in line:
                    return
        finally:
            timer.cancel()
        process.wait()
        log = b"".join(seen[-5:]).decode(errors="replace")
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def kill(self) -> None:
        """Die at once, as a crashed server would (the append-only file keeps what it wrote)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Kill:
    """Kills a process that has not said it is ready in time (so reading its log ends)."""

    def __init__(self, process: subprocess.Popen[bytes], after_s: float) -> None:
        import threading

        self._timer = threading.Timer(after_s, process.kill)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()
