"""`crawldeck attach` on a real headless run: it shows the job, steers it, and leaves it running.

Each test starts `crawldeck run --headless` as a subprocess on a job slow
enough to outlast the test, then runs `tui.cli.run_attach` against its
control socket.  Only the terminal is replaced: the dashboard that
`run_attach` builds runs under `App.run_test()` and a script presses its
keys.  What the keys did is checked in the other process, through a separate
control client, and the run is finally stopped as a user would (SIGINT:
drain) and judged by its exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from engine.control.client import ControlClient, NoJobRunning
from engine.control.server import socket_path_for_store
from engine.observe.snapshot import JobState, Snapshot
from tests.engine.test_cli import (
    assert_no_traceback,
    cli_env,
    command,
    count_rows,
    summary_counts,
    write_job,
)
from tui.app import CrawldeckApp
from tui.cli import run_attach
from tui.remote_source import RemoteSource

JOB_NAME = "cli-test"  # the name `write_job` gives its job
WAIT_S = 20.0  # a hang guard only; every condition normally holds within a second or two
STEP_S = 0.05
SCREEN_SIZE = (160, 48)

Script = Callable[[Pilot[Any], CrawldeckApp], Awaitable[None]]


@dataclass
class HeadlessRun:
    """`crawldeck run --headless` in its own process group, its output in files."""

    proc: asyncio.subprocess.Process
    folder: Path
    socket: Path
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8")

    @property
    def db(self) -> Path:
        return self.folder / "results.db"


async def wait_until_served(run: HeadlessRun) -> None:
    """Until the run answers on its control socket and has stored its first results.

    Nothing announces the socket to another process, so its existence is polled.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        assert run.proc.returncode is None, f"the run ended early: {run.stderr}"
        assert time.monotonic() < deadline, f"no control socket at {run.socket}: {run.stderr}"
        if run.socket.exists():
            try:
                async with await ControlClient.connect(run.socket, timeout_s=1.0) as client:
                    snap = await client.snapshot()
                if snap.state is JobState.RUNNING and snap.counts.done > 0:
                    return
            except NoJobRunning:  # bound, but not listening yet
                pass
        await asyncio.sleep(STEP_S)


@pytest.fixture
async def headless_run(tmp_path: Path) -> AsyncIterator[HeadlessRun]:
    """A job of 2000 records at 2 requests in flight: a minute of work, so it outlasts the test.

    Not more: with about 3000 chunks still unread, the engine's reader waits on
    a full queue, and a drain then never ends (reported; not this test's subject).
    """
    job = write_job(tmp_path, records=2000, latency_s=(0.3, 0.6), concurrency=2, batch_size=5)
    socket = socket_path_for_store(tmp_path / "results.db")
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *command("run", job, "--headless", "--interval", "1"),
            cwd=tmp_path,
            env=cli_env(),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    run = HeadlessRun(proc, tmp_path, socket, stderr_path)
    try:
        await wait_until_served(run)
        yield run
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the test failed: take its simulator too
            await proc.wait()


@pytest.fixture
async def observer(headless_run: HeadlessRun) -> AsyncIterator[ControlClient]:
    """A control client of its own, to see what the viewers did to the other process."""
    async with await ControlClient.connect(headless_run.socket) as client:
        yield client


class PilotTerminals:
    """Stands in for the terminals `crawldeck attach` draws on.

    Every dashboard `run_attach` builds is run headless under `run_test()`
    and driven by the next script (first come, first served), instead of
    taking over a real terminal; everything else in `run_attach` is real.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *scripts: Script) -> None:
        self._scripts = deque(scripts)
        self.apps: list[CrawldeckApp] = []
        terminals = self

        async def run_async(app: CrawldeckApp, **_: Any) -> JobState | None:
            return await terminals._play(app)

        monkeypatch.setattr(CrawldeckApp, "run_async", run_async)

    async def _play(self, app: CrawldeckApp) -> JobState | None:
        assert self._scripts, "more dashboards were opened than scripts given"
        script = self._scripts.popleft()
        self.apps.append(app)
        async with app.run_test(size=SCREEN_SIZE) as pilot:
            await script(pilot, app)
        return app.return_value


def job_status(app: CrawldeckApp) -> str:
    """The dashboard's status line as text (job, state, preset, concurrency)."""
    return str(app.query_one("#job-status").render())


async def until_shown(pilot: Pilot[Any], app: CrawldeckApp, *words: str) -> None:
    """Until the status line shows every word (it follows the remote snapshots)."""
    deadline = time.monotonic() + WAIT_S
    while not all(word in job_status(app) for word in words):
        assert time.monotonic() < deadline, f"{words} never shown; last: {job_status(app)!r}"
        await pilot.pause(STEP_S)


async def until_remote(client: ControlClient, condition: Callable[[Snapshot], bool]) -> Snapshot:
    """Until the headless process's own snapshot meets the condition."""
    deadline = time.monotonic() + WAIT_S
    while not condition(snap := await client.snapshot()):
        assert time.monotonic() < deadline, (
            f"the job never got there: state {snap.state}, concurrency {snap.concurrency}, "
            f"done {snap.counts.done}"
        )
        await asyncio.sleep(STEP_S)
    return snap


async def leave(pilot: Pilot[Any], app: CrawldeckApp) -> None:
    """Press q: an attached dashboard leaves at once, without asking to stop the job."""
    await pilot.press("q")
    deadline = time.monotonic() + WAIT_S
    while app.is_running:
        assert time.monotonic() < deadline, f"q did not leave; on screen: {app.screen!r}"
        await pilot.pause(STEP_S)
    assert app.return_value is JobState.RUNNING  # detached from a job that still runs


async def stop_with_sigint(run: HeadlessRun) -> int:
    os.kill(run.proc.pid, signal.SIGINT)
    return await asyncio.wait_for(run.proc.wait(), timeout=WAIT_S)


def paused(snap: Snapshot) -> bool:
    return snap.state is JobState.PAUSED


def running(snap: Snapshot) -> bool:
    return snap.state is JobState.RUNNING


async def test_attach_shows_and_steers_the_headless_job_and_q_leaves_it_running(
    headless_run: HeadlessRun,
    observer: ControlClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def steer_then_leave(pilot: Pilot[Any], app: CrawldeckApp) -> None:
        assert isinstance(app.source, RemoteSource)
        await until_shown(pilot, app, JOB_NAME, "RUNNING")

        await pilot.press("space")
        await until_remote(observer, paused)
        await until_shown(pilot, app, "PAUSED")

        await pilot.press("space")
        await until_remote(observer, running)
        await until_shown(pilot, app, "RUNNING")

        before = (await observer.snapshot()).concurrency
        await pilot.press("plus")
        await until_remote(observer, lambda snap: snap.concurrency == before + 1)
        await until_shown(pilot, app, f"/{before + 1}")

        await leave(pilot, app)

    terminals = PilotTerminals(monkeypatch, steer_then_leave)

    assert await run_attach(headless_run.socket) == 0

    assert len(terminals.apps) == 1
    assert "crawldeck:" not in capsys.readouterr().err  # no lost connection, no refused control
    # Still running after the viewer left, and still making progress.
    left_at = await until_remote(observer, running)
    await until_remote(observer, lambda snap: snap.counts.done > left_at.counts.done)
    assert headless_run.proc.returncode is None

    exit_code = await stop_with_sigint(headless_run)

    stderr = headless_run.stderr
    assert exit_code == 1, stderr  # drained before every chunk was done
    assert "draining" in stderr
    assert_no_traceback(stderr)
    done, failed, _ = summary_counts(stderr)
    assert done == count_rows(headless_run.db) > left_at.counts.done
    assert failed == 0
    assert not headless_run.socket.exists()  # the run removed its control socket


async def test_two_attached_viewers_see_each_others_controls_and_both_leave(
    headless_run: HeadlessRun,
    observer: ControlClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first viewer must see its pause before the second one undoes it.
    first_saw_pause = asyncio.Event()

    async def pause_then_see_resumed(pilot: Pilot[Any], app: CrawldeckApp) -> None:
        await until_shown(pilot, app, JOB_NAME, "RUNNING")
        await pilot.press("space")
        await until_shown(pilot, app, "PAUSED")
        first_saw_pause.set()
        await until_shown(pilot, app, "RUNNING")  # the other viewer resumed it
        await leave(pilot, app)

    async def see_paused_then_resume(pilot: Pilot[Any], app: CrawldeckApp) -> None:
        await until_shown(pilot, app, JOB_NAME)
        await until_shown(pilot, app, "PAUSED")  # the other viewer paused it
        await asyncio.wait_for(first_saw_pause.wait(), timeout=WAIT_S)
        await pilot.press("space")
        await until_shown(pilot, app, "RUNNING")
        await leave(pilot, app)

    terminals = PilotTerminals(monkeypatch, pause_then_see_resumed, see_paused_then_resume)

    async with asyncio.TaskGroup() as tg:
        viewers = [tg.create_task(run_attach(headless_run.socket)) for _ in range(2)]

    assert [viewer.result() for viewer in viewers] == [0, 0]
    assert len(terminals.apps) == 2
    assert terminals.apps[0].source is not terminals.apps[1].source  # two connections
    snap = await until_remote(observer, running)
    await until_remote(observer, lambda later: later.counts.done > snap.counts.done)
    assert headless_run.proc.returncode is None
