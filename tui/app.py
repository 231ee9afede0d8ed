"""The crawldeck dashboard: a Textual app over a live engine.

The app pulls a snapshot on a timer (4 Hz by default) and hands it to the
dashboard; key presses call engine controls.  Given a real `Engine`, the app
also runs it as a worker in its own event loop; given any other source (a
fake in tests) it only displays and steers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.clock import Clock
from textual.screen import Screen
from textual.timer import Timer
from textual.worker import Worker, WorkerState

import themes
from engine.engine import Engine
from engine.snapshot import JobState
from tui.actions import ACTIONS
from tui.engine_source import EngineSource
from tui.screens.confirm_quit import ConfirmQuitScreen
from tui.screens.dashboard import ACTIVE_STATES, DashboardScreen

THEME_PATH = Path(themes.__file__).parent / "crawldeck.tcss"
_ENGINE_GROUP = "engine"


class CrawldeckApp(App[JobState | None]):
    """Shows one job's snapshots and steers its engine.

    `refresh_hz` is how often a snapshot is pulled (0: only on start and
    after a control, for tests).  `clock` is handed to time-driven widgets so
    tests can freeze them.  The app's return value is the job's last state.
    """

    CSS_PATH = THEME_PATH
    TITLE = "crawldeck"

    def __init__(
        self,
        source: EngineSource | Engine,
        *,
        refresh_hz: float = 4.0,
        clock: Clock | None = None,
        run_engine: bool | None = None,
    ) -> None:
        super().__init__()
        if refresh_hz < 0:
            raise ValueError(f"refresh_hz must be >= 0, got {refresh_hz}")
        self.source: EngineSource = source
        self.refresh_hz = refresh_hz
        self._clock = clock
        self._engine = source if isinstance(source, Engine) else None
        self._run_engine = self._engine is not None if run_engine is None else run_engine
        self._quit_when_finished = False
        self._poll: Timer | None = None
        self.dashboard = DashboardScreen(source, clock=clock)

    def get_default_screen(self) -> Screen[None]:
        return self.dashboard

    def on_mount(self) -> None:
        if self.refresh_hz > 0:
            self._poll = self.set_interval(
                1.0 / self.refresh_hz, self.refresh_snapshot, name="snapshot-poll"
            )
        if self._run_engine and self._engine is not None:
            self.run_engine(self._engine)

    def on_unmount(self) -> None:
        if self._poll is not None:
            self._poll.stop()

    # ------------------------------------------------------------ the engine
    @work(exclusive=True, group=_ENGINE_GROUP, exit_on_error=False)
    async def run_engine(self, engine: Engine) -> JobState:
        return await engine.run()

    @property
    def engine_running(self) -> bool:
        return any(w.group == _ENGINE_GROUP and not w.is_finished for w in self.workers)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != _ENGINE_GROUP or not event.worker.is_finished:
            return
        self.refresh_snapshot()
        if event.state is WorkerState.SUCCESS:
            state = event.worker.result
            self.notify(f"Job ended: {state}.", title="Finished", timeout=10)
        elif event.state is WorkerState.ERROR:
            reason = getattr(self._engine, "failure_reason", "") or str(event.worker.error)
            self.notify(reason, title="The engine stopped", severity="error", timeout=30)
        if self._quit_when_finished:
            self.exit(self.source.snapshot().state)

    def refresh_snapshot(self) -> None:
        """Pull one snapshot and show it (skipped while a dialog covers the dashboard)."""
        if self.screen is not self.dashboard or not self.dashboard.ready:
            return
        self.dashboard.show(self.source.snapshot())

    # ------------------------------------------------------------ quitting
    async def action_quit(self) -> None:
        self.request_quit()

    def request_quit(self) -> None:
        """Quit at once when the job is over; otherwise ask, then stop it first."""
        if isinstance(self.screen, ConfirmQuitScreen):
            return
        if self.source.snapshot().state in ACTIVE_STATES:
            self.push_screen(ConfirmQuitScreen(), self._on_quit_answer)
        else:
            self.exit(self.source.snapshot().state)

    def _on_quit_answer(self, quit_now: bool | None) -> None:
        if not quit_now:
            return
        self.source.stop()
        if self.engine_running:
            self._quit_when_finished = True  # the worker's end exits the app
            self.notify("Stopping the job…", title="Quitting")
        else:
            self.exit(self.source.snapshot().state)

    # ------------------------------------------------------------ palette
    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if not isinstance(screen, DashboardScreen):
            return
        for action in ACTIONS:
            if action.action == "request_quit":
                continue  # the built-in Quit command already asks first
            if screen.check_action(action.action, ()) is True:
                yield SystemCommand(
                    action.description, action.help, getattr(screen, f"action_{action.action}")
                )
