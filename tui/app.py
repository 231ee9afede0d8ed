"""The crawldeck dashboard: a Textual app over a live engine.

The app pulls a snapshot on a timer (4 Hz by default) and hands it to the
screen on show; key presses call the job's `JobControls`.  Given a job it
can run (`RunnableJob`: the engine), the app also runs it as a worker in its
own event loop; given any other source (a job in another process, a fixed
snapshot in tests) it only displays and steers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.clock import Clock
from textual.screen import Screen
from textual.theme import Theme
from textual.timer import Timer
from textual.worker import Worker, WorkerState

import themes
from engine.api import JobControls, JobState, RunnableJob
from tui import user_settings
from tui.actions import ACTIONS, BINDING_IDS
from tui.engine_source import store_path_of
from tui.screens.confirm_quit import ConfirmQuitScreen
from tui.screens.dashboard import ACTIVE_STATES, DashboardScreen
from tui.screens.event_log import EventLogScreen
from tui.screens.keys import KeysScreen
from tui.screens.results import ResultsScreen
from tui.themes import DEFAULT_THEME, SHIPPED_DIR, load_themes

THEME_PATH = Path(themes.__file__).parent / "crawldeck.tcss"
_ENGINE_GROUP = "engine"


class CrawldeckApp(App[JobState | None]):
    """Shows one job's snapshots and steers its engine.

    `refresh_hz` is how often a snapshot is pulled (0: only on start and
    after a control, for tests).  `clock` is handed to time-driven widgets so
    tests can freeze them.  The app's return value is the job's last state.
    `store_path` is the job's SQLite store for the results browser (default:
    the source's own, if it has one).

    Themes come from the shipped theme files plus the user's; the chosen
    theme and any key remaps come from the user settings file, and a theme
    change is written back to it.  Problems with those files are shown once
    the app starts, and never stop it.
    """

    CSS_PATH = THEME_PATH
    TITLE = "crawldeck"

    def __init__(
        self,
        source: JobControls,
        *,
        refresh_hz: float = 4.0,
        clock: Clock | None = None,
        run_engine: bool | None = None,
        store_path: Path | None = None,
    ) -> None:
        super().__init__()
        if refresh_hz < 0:
            raise ValueError(f"refresh_hz must be >= 0, got {refresh_hz}")
        self.source = source
        self.refresh_hz = refresh_hz
        self._clock = clock
        self._engine = source if isinstance(source, RunnableJob) else None
        self._run_engine = self._engine is not None if run_engine is None else run_engine
        self._quit_when_finished = False
        self._poll: Timer | None = None
        self.dashboard = DashboardScreen(source, clock=clock)
        self.store_path = store_path if store_path is not None else store_path_of(source)
        self.startup_problems: list[str] = []
        self.crawldeck_themes: tuple[str, ...] = ()
        self._load_look_and_keys()

    def _load_look_and_keys(self) -> None:
        loaded = load_themes([SHIPPED_DIR, user_settings.user_themes_dir()])
        self.startup_problems.extend(loaded.problems)
        for theme in loaded.themes:
            self.register_theme(theme)
        self.crawldeck_themes = tuple(
            t.name for t in loaded.themes if t.name.startswith("crawldeck")
        )
        try:
            settings = user_settings.load_settings()
        except user_settings.SettingsError as exc:
            self.startup_problems.append(f"Settings ignored: {exc}")
            settings = user_settings.UserSettings()
        self._saved_theme = settings.theme
        wanted = settings.theme or DEFAULT_THEME
        if wanted not in self.available_themes:
            self.startup_problems.append(f"Theme {wanted!r} not found; using {DEFAULT_THEME}.")
            wanted = DEFAULT_THEME
        if wanted not in self.available_themes:  # the shipped file itself is broken
            wanted = "textual-dark"
        self.theme = wanted
        unknown = sorted(set(settings.keymap) - BINDING_IDS)
        if unknown:
            self.startup_problems.append(
                f"Keymap ignores unknown binding id(s): {', '.join(unknown)}"
            )
        self.set_keymap({k: v for k, v in settings.keymap.items() if k in BINDING_IDS})

    def get_default_screen(self) -> Screen[None]:
        return self.dashboard

    def on_mount(self) -> None:
        for problem in self.startup_problems:
            self.notify(problem, title="Settings", severity="warning", timeout=15)
        self.theme_changed_signal.subscribe(self, self._remember_theme)
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
    async def run_engine(self, engine: RunnableJob) -> JobState:
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
        """Pull one snapshot and show it on the visible screen, if that shows snapshots.

        Nothing is drawn for screens underneath: the dashboard catches up when
        it is on top again.
        """
        if not self.screen_stack:
            return  # the app is closing: the poll may fire once more after the last screen
        screen = self.screen
        if screen is self.dashboard:
            self.dashboard.pull()
        elif isinstance(screen, KeysScreen | EventLogScreen) and screen.is_mounted:
            screen.show(self.source.snapshot())

    def _push_view(self, screen: Screen[None]) -> None:
        self.push_screen(screen, lambda _: self.refresh_snapshot())

    # ------------------------------------------------------------ views
    def action_show_keys(self) -> None:
        self._push_view(KeysScreen())
        self.call_after_refresh(self.refresh_snapshot)

    def action_show_results(self) -> None:
        self._push_view(ResultsScreen(self.store_path))

    def action_show_event_log(self) -> None:
        self._push_view(EventLogScreen())
        self.call_after_refresh(self.refresh_snapshot)

    # ------------------------------------------------------------ themes
    def action_cycle_theme(self) -> None:
        names = self.crawldeck_themes or (DEFAULT_THEME,)
        index = names.index(self.theme) + 1 if self.theme in names else 0
        self.theme = names[index % len(names)]
        self.notify(f"Theme: {self.theme}", timeout=3)

    def _remember_theme(self, theme: Theme) -> None:
        if theme.name == self._saved_theme:
            return  # also skips the start-up theme: only a user's choice is written
        try:
            user_settings.save_theme(theme.name)
            self._saved_theme = theme.name
        except (OSError, user_settings.SettingsError) as exc:
            self.notify(str(exc), title="Theme not saved", severity="warning")

    # ------------------------------------------------------------ quitting
    async def action_quit(self) -> None:
        self.request_quit()

    def on_dashboard_screen_quit_requested(self, _: DashboardScreen.QuitRequested) -> None:
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
            if action.action.startswith("app."):
                name = action.action.removeprefix("app.")
                yield SystemCommand(
                    action.description, action.help, getattr(self, f"action_{name}")
                )
            elif screen.check_action(action.action, ()) is True:
                yield SystemCommand(
                    action.description, action.help, getattr(screen, f"action_{action.action}")
                )
