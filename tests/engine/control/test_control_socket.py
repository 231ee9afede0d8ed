"""The control socket of a running job: a real engine on the simulator, real Unix sockets.

Waits follow the engine (its state, the socket file) with bounded deadlines
that only guard against a hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from engine.control.client import ControlClient, ControlError, NoJobRunning
from engine.control.server import ControlServer, ControlServerError, socket_path_for_store
from engine.engine import Engine
from engine.observe.snapshot import JobState
from engine.simulation.simulator import ProviderSimulator
from tests.engine.conftest import job_config, sim_keys, write_records
from tests.engine.test_cli import RUN_TIMEOUT_S, cli_env, command, in_background, write_job
from tui.remote_source import RemoteSource

KEYS = (("a", 6000, 10_000_000),)
HANG_GUARD_S = 20.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until `condition` holds; fail after a hang guard."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@dataclass
class RunningJob:
    engine: Engine
    server: ControlServer
    run: asyncio.Task[JobState]

    @property
    def path(self) -> Path:
        return self.server.path


@pytest.fixture
async def running_job(
    tmp_path: Path, simulator: Callable[..., ProviderSimulator]
) -> AsyncIterator[RunningJob]:
    """A slow job (it runs for minutes unless stopped) with its control socket served."""
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.3, 0.5))  # type: ignore[misc]
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 2000), sim.base_url, KEYS
    )
    config = replace(
        config, preset=replace(config.preset, concurrency=2, adaptive_concurrency=False)
    )
    engine = Engine(config, secrets)
    server = ControlServer(engine, socket_path_for_store(config.job.store), min_interval_s=0.0)
    await server.bind()
    serving = asyncio.create_task(server.serve())
    run = asyncio.create_task(engine.run())
    await until(lambda: engine.snapshot().state is JobState.RUNNING, "the job to run")
    try:
        yield RunningJob(engine, server, run)
    finally:
        engine.stop()
        await asyncio.wait_for(run, HANG_GUARD_S)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def test_the_socket_is_0600_in_a_0700_state_folder_next_to_the_store(
    running_job: RunningJob, tmp_path: Path
) -> None:
    path = running_job.path

    assert path == tmp_path / "results.db.crawldeck" / "control.sock"
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


async def test_controls_over_the_socket_change_the_engine(running_job: RunningJob) -> None:
    engine = running_job.engine
    async with await ControlClient.connect(running_job.path) as client:
        await client.control("pause")
        assert engine.snapshot().state is JobState.PAUSED
        await client.control("resume")
        assert engine.snapshot().state is JobState.RUNNING
        await client.control("set_concurrency", value=5)
        assert engine.snapshot().concurrency == 5
        await client.control("apply_preset", preset="conservative")
        assert engine.snapshot().preset.name == "conservative"

        # A whole preset (from a viewer's file or editor) is checked again here.
        edited = {**dataclasses.asdict(engine.snapshot().preset), "name": "mine", "batch_size": 3}
        await client.control("apply_preset", preset=edited)
        assert (engine.snapshot().preset.name, engine.snapshot().preset.batch_size) == ("mine", 3)

        remote = await client.snapshot()
        assert remote.preset == engine.snapshot().preset
        assert remote.preset_names == ("aggressive", "conservative")
        assert remote.job_name == "test-job"
        assert remote.state is JobState.RUNNING


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"op": "exec", "code": "1"}, "unknown op"),
        ({"op": "__init__"}, "unknown op"),
        ({"op": "set_concurrency", "value": "9"}, "integer"),
        ({"op": "set_concurrency", "value": True}, "integer"),
        ({"op": "set_concurrency", "value": 0}, "from 1 to 4096"),
        ({"op": "set_concurrency", "value": 10**21}, r"from 1 to 4096 \(got 10{21}\)"),
        ({"op": "set_concurrency", "value": 1e21}, "integer value from 1 to 4096"),
        ({"op": "set_fetch_concurrency", "value": 4}, "does not crawl"),
        ({"op": "set_fetch_concurrency", "value": 0}, "from 1 to 4096"),
        ({"op": "set_fetch_concurrency", "value": 4097}, "from 1 to 4096"),
        ({"op": "apply_preset", "preset": "/etc/passwd.toml"}, "name"),
        ({"op": "apply_preset", "preset": "no-such-preset"}, "unknown preset"),
        ({"op": "apply_preset", "preset": {"concurrency": 0}}, "concurrency: must be from 1 to"),
        ({"op": "apply_preset", "preset": {"concurrency": 10**21}}, "concurrency: must be from"),
        ({"op": "apply_preset", "preset": {"batch_size": 1001}}, "batch_size: must be from 1 to"),
        ({"op": "apply_preset", "preset": {"name": "x", "shell": "rm"}}, "shell"),
        (
            {"op": "apply_preset", "preset": {"memory_soft_mb": 60, "memory_hard_mb": 90}},
            "memory_soft_mb: 60 MB is below this process's own floor",
        ),
    ],
)
async def test_a_bad_request_gets_one_error_line_and_changes_nothing(
    running_job: RunningJob, request_: dict[str, object], error: str
) -> None:
    before = running_job.engine.snapshot()
    async with await ControlClient.connect(running_job.path) as client:
        with pytest.raises(ControlError, match=error) as raised:
            await client.request(request_)
        assert "\n" not in str(raised.value)
        # The connection is still good after an error.
        assert (await client.snapshot()).job_name == "test-job"
    after = running_job.engine.snapshot()
    assert (after.state, after.concurrency, after.preset) == (
        before.state,
        before.concurrency,
        before.preset,
    )


async def test_a_line_that_is_not_json_gets_an_error_not_a_hangup(running_job: RunningJob) -> None:
    reader, writer = await asyncio.open_unix_connection(str(running_job.path))
    writer.write(b"pause\n")
    answer = json.loads(await asyncio.wait_for(reader.readline(), HANG_GUARD_S))
    writer.close()

    assert answer == {"ok": False, "error": "not a JSON line"}
    assert running_job.engine.snapshot().state is JobState.RUNNING


async def test_two_viewers_share_one_encoded_snapshot(running_job: RunningJob) -> None:
    server = ControlServer(running_job.engine, running_job.path.with_name("shared.sock"))
    server.min_interval_s = 3600.0  # one encoding for the whole test
    await server.bind()
    serving = asyncio.create_task(server.serve())
    try:
        async with (
            await ControlClient.connect(server.path) as first,
            await ControlClient.connect(server.path) as second,
        ):
            a, b = await asyncio.gather(first.snapshot(), second.snapshot())
            again = await first.snapshot()
        assert a == b == again
        assert server.encodes == 1
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    assert not server.path.exists()


async def test_a_client_that_never_reads_is_dropped_and_others_still_served(
    running_job: RunningJob,
) -> None:
    server = running_job.server
    server.write_timeout_s = 0.2
    _unread, writer = await asyncio.open_unix_connection(str(running_job.path))
    writer.write(b'{"op":"snapshot"}\n' * 20_000)  # megabytes of answers nobody reads

    await until(lambda: server.client_count == 1, "the reader to be served")
    await until(lambda: server.client_count == 0, "the reader to be dropped")
    async with await ControlClient.connect(running_job.path) as client:
        assert (await client.snapshot()).state is JobState.RUNNING
    writer.close()
    assert running_job.engine.snapshot().state is JobState.RUNNING


async def test_a_stale_socket_is_replaced_and_a_live_one_is_refused(
    running_job: RunningJob, tmp_path: Path
) -> None:
    stale = tmp_path / "old.db.crawldeck" / "control.sock"
    stale.parent.mkdir()
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))  # bound, never listening, never unlinked: a killed run's
    leftover.close()

    server = ControlServer(running_job.engine, stale)
    await server.bind()
    server.close()
    assert not stale.exists()

    with pytest.raises(ControlServerError, match="another crawldeck run"):
        await ControlServer(running_job.engine, running_job.path).bind()
    assert running_job.path.exists()


async def test_the_snapshot_over_the_socket_is_the_engines(
    tmp_path: Path, simulator: Callable[..., ProviderSimulator]
) -> None:
    sim = await simulator(keys=sim_keys(KEYS))  # type: ignore[misc]
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 30), sim.base_url, KEYS
    )
    engine = Engine(config, secrets)
    assert await engine.run() is JobState.DONE  # a finished job's snapshot holds still
    server = ControlServer(engine, socket_path_for_store(config.job.store))
    await server.bind()
    serving = asyncio.create_task(server.serve())
    try:
        async with await ControlClient.connect(server.path) as client:
            remote = await client.snapshot()
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)

    local = engine.snapshot()
    assert remote.events and remote.keys and remote.counts.done == 30
    assert replace(remote, taken_at=0.0, elapsed_s=0.0) == replace(
        local, taken_at=0.0, elapsed_s=0.0
    )
    assert not server.path.exists()


async def test_a_client_that_finds_the_socket_before_serving_starts_is_answered(
    tmp_path: Path, simulator: Callable[..., ProviderSimulator]
) -> None:
    # The CLI binds the socket early (to find another run) and serves once the
    # engine is up: a client in between must not be told that no job runs.
    sim = await simulator(keys=sim_keys(KEYS))  # type: ignore[misc]
    config, secrets = job_config(
        tmp_path, write_records(tmp_path / "in.txt", 30), sim.base_url, KEYS
    )
    engine = Engine(config, secrets)
    assert await engine.run() is JobState.DONE
    server = ControlServer(engine, socket_path_for_store(config.job.store))
    await server.bind()

    connecting = asyncio.create_task(ControlClient.connect(server.path))
    await asyncio.sleep(0.2)  # the client is there before the server serves
    serving = asyncio.create_task(server.serve())
    try:
        async with await connecting as client:
            remote = await client.snapshot()
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)

    assert remote.counts.done == 30


async def test_nothing_listening_is_no_job_running(tmp_path: Path) -> None:
    with pytest.raises(NoJobRunning, match="no crawldeck job"):
        await ControlClient.connect(tmp_path / "control.sock")


async def test_a_remote_source_shows_the_job_steers_it_and_closing_leaves_it_running(
    running_job: RunningJob,
) -> None:
    source = RemoteSource(running_job.path, refresh_s=0.05)
    await source.start()
    try:
        assert source.snapshot().state is JobState.RUNNING
        assert source.store_path == running_job.path.parent.parent / "results.db"

        source.pause()
        source.set_concurrency(4)
        source.apply_preset("no-such-preset")
        await source.settled()
        assert running_job.engine.snapshot().state is JobState.PAUSED
        assert running_job.engine.snapshot().concurrency == 4
        await source.wait_for_poll()
        assert source.snapshot().state is JobState.PAUSED
        assert "refused" in source.last_error
        assert source.snapshot().events[-1].message.startswith("apply_preset refused")
    finally:
        await source.close()
    assert running_job.engine.snapshot().state is JobState.PAUSED  # detached, not stopped
    assert not running_job.run.done()


# --------------------------------------------------------------------------
# The command line: run --headless serves it, status reads it


def test_status_reads_a_headless_run_and_says_so_when_none_runs(tmp_path: Path) -> None:
    # Long enough (~2 min) to outlast three `status` runs on a loaded machine;
    # the test drains it as soon as they are done.
    job = write_job(tmp_path, records=3000, latency_s=(0.3, 0.6), concurrency=2, batch_size=5)
    sock = tmp_path / "results.db.crawldeck" / "control.sock"

    def status(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command("status", job, *flags),
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )

    with in_background("run", job, "--headless", "--interval", "30", cwd=tmp_path) as run:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not sock.exists():
            assert run.proc.poll() is None, run.stderr
            assert time.monotonic() < deadline, "no control socket"
            time.sleep(0.02)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600

        line = status()
        while "[starting]" in line.stdout and time.monotonic() < deadline:
            line = status()
        as_json = status("--json")
        by_socket = subprocess.run(
            command("status", sock), cwd=tmp_path, env=cli_env(), capture_output=True, text=True
        )

        os.kill(run.proc.pid, 2)  # SIGINT: drain
        run.wait()

    assert line.returncode == 0, line.stderr
    assert line.stdout.startswith("[running]"), line.stdout
    assert line.stdout.count("\n") == 1
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    assert record["type"] == "status"
    assert record["job_name"] == "cli-test"
    assert by_socket.returncode == 0, by_socket.stderr
    assert not sock.exists()

    after = status()
    assert after.returncode == 2
    assert after.stdout == ""
    assert len(after.stderr.strip().splitlines()) == 1
    assert "no crawldeck job is running" in after.stderr
