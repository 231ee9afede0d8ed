"""Idle and stuck clients of the control socket cannot lock viewers out.

A client that sends nothing past the idle timeout is told why and dropped;
at the client cap a new viewer takes the place of the one idle longest, or
is refused in a line it can read; a viewer that polls is never dropped.
Real sockets throughout: a real engine on the simulator in this process,
then `crawldeck run --headless` and `crawldeck status` as real processes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.config.config_problem import ConfigError
from engine.config.job_file import load_config
from engine.control.client import ControlClient, ControlError, NoJobRunning
from engine.control.server import DEFAULT_IDLE_TIMEOUT_S, ControlServer
from engine.observe.snapshot import JobState
from tests.engine.config.test_config_file import MINIMAL, line_of
from tests.engine.control.test_control_socket import HANG_GUARD_S, RunningJob, running_job, until
from tests.engine.test_cli import (
    RUN_TIMEOUT_S,
    Background,
    assert_no_traceback,
    cli_env,
    command,
    in_background,
    write_job,
)
from tui.remote_source import RemoteSource

__all__ = ["running_job"]  # the fixture, used by name below


class SteppedClock:
    """The server's clock for "how long idle": moved by the test, not by waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def serve(running_job: RunningJob) -> AsyncIterator[Callable[..., ControlServer]]:
    """Start more servers on the running job's engine; all are stopped at the end."""
    tasks: list[asyncio.Task[None]] = []
    made = 0

    async def start(**settings: object) -> ControlServer:
        nonlocal made
        made += 1
        path = running_job.path.with_name(f"extra-{made}.sock")
        server = ControlServer(running_job.engine, path, **settings)  # type: ignore[arg-type]
        await server.bind()
        tasks.append(asyncio.create_task(server.serve()))
        await until(lambda: server.serving, "the server to listen")
        return server

    yield start  # type: ignore[misc]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def read_goodbye(reader: asyncio.StreamReader) -> dict[str, object]:
    """The one line a dropped client is sent, and then the end of the stream."""
    line = await asyncio.wait_for(reader.readline(), HANG_GUARD_S)
    assert await asyncio.wait_for(reader.read(), HANG_GUARD_S) == b""
    answer = json.loads(line)
    assert isinstance(answer, dict)
    return answer


async def test_a_silent_client_is_told_why_and_dropped_after_the_idle_timeout(
    serve: Callable[..., ControlServer],
) -> None:
    server = await serve(idle_timeout_s=0.3)  # type: ignore[misc]
    reader, writer = await asyncio.open_unix_connection(str(server.path))

    started = time.monotonic()
    goodbye = await read_goodbye(reader)

    assert goodbye == {"ok": False, "error": "closed: no request for 0.3s"}
    assert time.monotonic() - started >= 0.25
    assert server.dropped_idle == 1
    await until(lambda: server.client_count == 0, "the silent client to be forgotten")
    writer.close()


async def test_a_client_that_sends_half_a_line_and_stalls_is_dropped_too(
    serve: Callable[..., ControlServer],
) -> None:
    server = await serve(idle_timeout_s=0.3)  # type: ignore[misc]
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(b'{"op": "snap')  # never finished

    assert (await read_goodbye(reader))["error"] == "closed: no request for 0.3s"
    writer.close()


async def test_a_polling_viewer_is_never_dropped_however_long_it_watches(
    serve: Callable[..., ControlServer],
) -> None:
    server = await serve(idle_timeout_s=0.5)  # type: ignore[misc]
    viewer = RemoteSource(server.path)  # polls every 0.25 s, as `crawldeck attach` does
    await viewer.start()
    try:
        for _ in range(12):  # 3 s: six idle timeouts
            await viewer.wait_for_poll()
            await asyncio.sleep(0.25)
        assert viewer.connected
        viewer.set_concurrency(3)
        await viewer.settled()
    finally:
        await viewer.close()

    assert viewer.last_error == ""
    assert (server.dropped_idle, server.evicted) == (0, 0)
    assert server.target.snapshot().concurrency == 3


async def test_at_the_cap_a_new_viewer_takes_the_place_of_the_client_idle_longest(
    serve: Callable[..., ControlServer],
) -> None:
    clock = SteppedClock()
    server = await serve(clock=clock)  # type: ignore[misc]
    assert (server.max_clients, server.idle_timeout_s) == (32, DEFAULT_IDLE_TIMEOUT_S)
    idle = [await asyncio.open_unix_connection(str(server.path)) for _ in range(32)]
    await until(lambda: server.client_count == 32, "32 idle clients")

    clock.now += 10.0  # all of them quiet for longer than any viewer waits between asks
    async with await ControlClient.connect(server.path) as viewer:
        assert (await viewer.snapshot()).state is JobState.RUNNING

    first_reader, _ = idle[0]
    goodbye = await read_goodbye(first_reader)  # the oldest goes first
    assert goodbye["error"] == "closed: idle while a new client needed the place (32 at most)"
    assert server.evicted == 1
    for _, writer in idle:
        writer.close()


async def test_at_the_cap_with_every_client_active_a_new_one_reads_why_it_is_refused(
    serve: Callable[..., ControlServer],
) -> None:
    server = await serve(max_clients=2)  # type: ignore[misc]
    async with (
        await ControlClient.connect(server.path) as first,
        await ControlClient.connect(server.path) as second,
    ):
        await asyncio.gather(first.snapshot(), second.snapshot())
        third = await ControlClient.connect(server.path)
        with pytest.raises(ControlError) as refused:
            await third.snapshot()
        await third.close()

        assert not isinstance(refused.value, NoJobRunning)  # not "connection lost"
        assert str(refused.value) == (
            "too many clients: 2 are connected and all active (the most this job serves); "
            "close one and try again"
        )
        assert (await first.snapshot()).state is JobState.RUNNING  # the two are untouched

    async with await ControlClient.connect(server.path) as later:
        await until(lambda: server.client_count <= 1, "the two to leave")
        assert (await later.snapshot()).state is JobState.RUNNING


# --------------------------------------------------------------------------
# A headless run as a real process


@contextmanager
def headless_run(folder: Path, *flags: str) -> Iterator[tuple[Background, Path]]:
    """A job that runs for minutes, with its control socket served."""
    job = write_job(folder, records=2000, latency_s=(0.3, 0.6), concurrency=2, batch_size=5)
    sock = folder / "results.db.crawldeck" / "control.sock"
    with in_background("run", job, "--headless", "--interval", "60", *flags, cwd=folder) as run:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not sock.exists():
            assert run.proc.poll() is None, run.stderr
            assert time.monotonic() < deadline, "no control socket"
            time.sleep(0.05)
        yield run, sock


def status(sock: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command("status", sock),
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def idle_connections(sock: Path, count: int) -> list[socket.socket]:
    connections = []
    for _ in range(count):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock))
        connections.append(conn)
    return connections


def goodbye_of(conn: socket.socket) -> str:
    """What the server said before hanging up on an idle connection."""
    conn.settimeout(RUN_TIMEOUT_S)
    received = b""
    while chunk := conn.recv(4096):
        received += chunk
    conn.close()
    return str(json.loads(received)["error"])


def test_idle_connections_to_a_headless_run_are_dropped_and_status_gets_in(
    tmp_path: Path,
) -> None:
    with headless_run(tmp_path, "--set", "engine.control_idle_timeout_s=2") as (run, sock):
        idle = idle_connections(sock, 32)
        # Until the idle ones go, a newcomer is refused in a line it can read.
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while (seen := status(sock, tmp_path)).returncode != 0:
            assert seen.stderr.startswith("crawldeck: too many clients: 32 are connected"), (
                seen.stderr
            )
            assert time.monotonic() < deadline, "status never got in"
            time.sleep(0.2)
        goodbyes = {goodbye_of(conn) for conn in idle}
        assert run.proc.poll() is None, run.stderr

    assert seen.stdout.startswith("[running]"), seen.stdout
    assert goodbyes == {"closed: no request for 2s"}
    assert_no_traceback(run.stderr)


def test_with_the_default_timeout_a_newcomer_at_the_cap_takes_an_idle_ones_place(
    tmp_path: Path,
) -> None:
    with headless_run(tmp_path) as (run, sock):
        idle = idle_connections(sock, 32)
        time.sleep(6.0)  # longer than any viewer waits between asks, well short of 30 s

        seen = status(sock, tmp_path)

        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.startswith("[running]"), seen.stdout
        assert goodbye_of(idle[0]) == (
            "closed: idle while a new client needed the place (32 at most)"
        )
        for conn in idle[1:]:
            conn.close()
        assert run.proc.poll() is None, run.stderr


def test_an_idle_timeout_shorter_than_a_viewers_polling_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(MINIMAL + "\n[engine]\ncontrol_idle_timeout_s = 0.5\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value) == (
        f"{path}:{line_of(path, 'control_idle_timeout_s')}: engine.control_idle_timeout_s: "
        "must be at least 2 (got 0.5)"
    )
    path.write_text(MINIMAL + "\n[engine]\ncontrol_idle_timeout_s = 2\n", encoding="utf-8")
    assert load_config(path).engine.control_idle_timeout_s == 2.0
