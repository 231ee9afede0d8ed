"""`crawldeck attach` keeps its place on a control socket that drops idle clients.

The headless run drops clients silent for 2 s (the shortest it allows); an
attached dashboard watches for several times that, then still steers the
job, while a connection that never asks anything is dropped beside it.  The
set-up is `tests/tui/test_attach.py`'s: a real headless process, the real
`run_attach`, only the terminal replaced by `run_test()`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from engine.control.client import ControlClient
from engine.control.server import socket_path_for_store
from tests.engine.test_cli import assert_no_traceback, cli_env, command, write_job
from tests.tui.test_attach import (
    JOB_NAME,
    HeadlessRun,
    PilotTerminals,
    leave,
    stop_with_sigint,
    until_remote,
    until_shown,
    wait_until_served,
)
from tui.app import CrawldeckApp
from tui.cli import run_attach
from tui.remote_source import RemoteSource

IDLE_TIMEOUT_S = 2.0
WATCH_S = 3 * IDLE_TIMEOUT_S


@pytest.fixture
async def strict_run(tmp_path: Path) -> AsyncIterator[HeadlessRun]:
    """A long headless job whose control socket drops clients idle for 2 s."""
    job = write_job(tmp_path, records=2000, latency_s=(0.3, 0.6), concurrency=2, batch_size=5)
    stderr_path = tmp_path / "stderr.txt"
    with (tmp_path / "stdout.txt").open("wb") as stdout, stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *command("run", job, "--headless", "--interval", "60", "--set",
                     f"engine.control_idle_timeout_s={IDLE_TIMEOUT_S}"),
            cwd=tmp_path,
            env=cli_env(),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
    run = HeadlessRun(proc, tmp_path, socket_path_for_store(tmp_path / "results.db"), stderr_path)
    try:
        await wait_until_served(run)
        yield run
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def test_an_attached_dashboard_outlasts_the_idle_timeout_and_still_steers(
    strict_run: HeadlessRun,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    silent_reader, silent_writer = await asyncio.open_unix_connection(str(strict_run.socket))
    silent: dict[str, object] = {}

    async def watch_then_steer(pilot: Pilot[Any], app: CrawldeckApp) -> None:
        assert isinstance(app.source, RemoteSource)
        await until_shown(pilot, app, JOB_NAME, "RUNNING")
        # The silent connection beside it is dropped meanwhile, told why.
        line = await asyncio.wait_for(silent_reader.readline(), timeout=WATCH_S)
        silent.update(json.loads(line))
        watched_until = time.monotonic() + WATCH_S
        while time.monotonic() < watched_until:
            await pilot.pause(0.1)
        assert app.source.connected and app.source.last_error == ""

        await pilot.press("space")
        await until_shown(pilot, app, "PAUSED")
        await pilot.press("space")
        await until_shown(pilot, app, "RUNNING")
        await leave(pilot, app)

    PilotTerminals(monkeypatch, watch_then_steer)

    assert await run_attach(strict_run.socket) == 0

    assert silent == {"ok": False, "error": "closed: no request for 2s"}
    assert "crawldeck:" not in capsys.readouterr().err  # the viewer never lost its connection
    silent_writer.close()
    async with await ControlClient.connect(strict_run.socket) as observer:
        await until_remote(observer, lambda snap: snap.state.value == "running")
    assert await stop_with_sigint(strict_run) == 1  # drained before the end
    assert_no_traceback(strict_run.stderr)
