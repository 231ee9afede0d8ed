"""The live dashboard: every widget mounted once, fed each new snapshot.

Controls call the job's `JobControls` and show a fresh snapshot at once; the
screen never keeps its own copy of an engine setting, and steps a setting
(`adjust_concurrency(+1)`) rather than computing a new value from what it
last showed.  The app's poll feeds it between key presses; quitting is the
app's business, asked for with a message.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

from textual import events
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.clock import Clock
from textual.containers import Container, Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import ProgressBar

from engine.api import Adjustment, ConfigError, JobControls, JobState, Preset, Snapshot
from tui import user_settings
from tui.actions import ACTIONS, bindings
from tui.screens.concurrency_prompt import ConcurrencyPrompt
from tui.screens.preset_editor import PresetEdit, PresetEditor
from tui.screens.preset_picker import PresetChoice, PresetPicker
from tui.widgets.batch_panel import BatchPanel
from tui.widgets.crawl_panel import CrawlPanel
from tui.widgets.drift_panel import DriftPanel
from tui.widgets.event_log import EventLog
from tui.widgets.fitting_footer import FittingFooter
from tui.widgets.headline_figures import HeadlineFigures
from tui.widgets.job_status import JobStatus
from tui.widgets.key_usage_table import KeyUsageTable
from tui.widgets.latency_sparkline import LatencySparkline
from tui.widgets.memory_gauge import MemoryGauge
from tui.widgets.queue_depths_bar import QueueDepthsBar
from tui.widgets.throughput_sparkline import ThroughputSparkline
from tui.widgets.workers_panel import WorkersPanel


class SnapshotDisplay(Protocol):
    """A widget that shows its part of a snapshot, redrawing only on change."""

    def show(self, snap: Snapshot) -> None: ...


ACTIVE_STATES = frozenset(
    {
        JobState.STARTING,
        JobState.RUNNING,
        JobState.PAUSED,
        JobState.DRAINING,
        JobState.STOPPING,
    }
)
# Controls that only make sense while the engine still takes new work.
_STEERING = frozenset(a.action for a in ACTIONS if a.action != "request_quit")
_STEERABLE_STATES = frozenset({JobState.STARTING, JobState.RUNNING, JobState.PAUSED})
_CRAWL_ONLY = frozenset({"fetch_up", "fetch_down"})
FETCH_STEP = 8
PRESET_TOGGLE = {"conservative": "aggressive", "aggressive": "conservative"}


# Below these sizes panels collapse, least needed first: drift charts shrink to
# a line per metric (worst first), then sparklines, queues and drift go.  Wide
# screens put the event log beside the keys and drift charts; only there, and
# tall, do the charts grow, so the log always keeps its rows.
TALL_ROWS = 36
MEDIUM_ROWS = 30  # below: sparklines and queues go, so drift keeps a line per metric
SHORT_ROWS = 24  # below: drift goes too
WIDE_COLUMNS = 150
FULL_FOOTER_COLUMNS = 130


class DashboardScreen(Screen[None]):
    """One job's figures, charts, keys and log, and the keys that steer it."""

    class QuitRequested(Message):
        """The user asked to quit; the app decides how (ask first, stop, or detach)."""

    BINDINGS: ClassVar[list[BindingType]] = bindings(ACTIONS)
    # Textual declares these without ClassVar on Screen, so they can't be annotated here.
    HORIZONTAL_BREAKPOINTS = [  # noqa: RUF012
        (0, "-narrow"),
        (WIDE_COLUMNS, "-wide"),
    ]
    VERTICAL_BREAKPOINTS = [  # noqa: RUF012
        (0, "-tiny"),
        (SHORT_ROWS, "-short"),
        (MEDIUM_ROWS, "-medium"),
        (TALL_ROWS, "-tall"),
    ]

    def __init__(self, source: JobControls, clock: Clock | None = None) -> None:
        super().__init__()
        self.source = source
        self._clock = clock
        self._state: JobState | None = None  # only to enable/disable the controls
        self._crawling = False  # only to show the fetch controls
        self._progress: tuple[int | None, int] | None = None
        self.ready = False  # set once the widgets are mounted
        self._displays: list[SnapshotDisplay] = []
        self._progress_bar: ProgressBar | None = None

    def compose(self) -> ComposeResult:
        yield JobStatus(id="job-status")
        yield HeadlineFigures(id="headline")
        yield ProgressBar(id="progress", show_eta=False, clock=self._clock)
        with Horizontal(id="sparklines"):
            yield ThroughputSparkline(id="throughput")
            yield LatencySparkline(id="latency")
        yield MemoryGauge(id="memory")
        yield QueueDepthsBar(id="queues")
        yield CrawlPanel(id="crawl")
        yield BatchPanel(id="batch")
        yield WorkersPanel(id="workers")
        with Container(id="lower"):
            with Vertical(id="lower-left"):
                yield KeyUsageTable(id="keys")
                yield DriftPanel(id="drift")
            yield EventLog(id="events")
        yield FittingFooter()

    def on_mount(self) -> None:
        self.query_one(EventLog).border_title = "events"
        self.query_one(DriftPanel).border_title = "drift"
        # Looked up once: the poll reaches them directly, even while the app shuts down.
        self._displays = [
            self.query_one(JobStatus),
            self.query_one(HeadlineFigures),
            self.query_one(ThroughputSparkline),
            self.query_one(LatencySparkline),
            self.query_one(MemoryGauge),
            self.query_one(QueueDepthsBar),
            self.query_one(CrawlPanel),
            self.query_one(BatchPanel),
            self.query_one(WorkersPanel),
            self.query_one(KeyUsageTable),
            self.query_one(DriftPanel),
            self.query_one(EventLog),
        ]
        self._progress_bar = self.query_one(ProgressBar)
        self.ready = True
        self.pull()

    def on_resize(self, event: events.Resize) -> None:
        self.query_one(FittingFooter).compact = event.size.width < FULL_FOOTER_COLUMNS

    # ------------------------------------------------------------ display
    def pull(self) -> None:
        """Show a fresh snapshot now, if this screen is on top (a dialog may be)."""
        if self.ready and self.is_active:
            self.show(self.source.snapshot())

    def show(self, snap: Snapshot) -> None:
        """Hand the snapshot to every widget; each redraws only what changed."""
        for widget in self._displays:
            widget.show(snap)
        progress = (snap.counts.total, snap.counts.finished)
        if progress != self._progress and self._progress_bar is not None:
            self._progress = progress
            self._progress_bar.update(total=progress[0], progress=progress[1])
        crawling = snap.crawl is not None
        if snap.state is not self._state or crawling != self._crawling:
            self._state, self._crawling = snap.state, crawling
            self.refresh_bindings()

    # ------------------------------------------------------------ controls
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in _CRAWL_ONLY and not self._crawling:
            return False  # hidden: a document job has no fetch stage
        if action in _STEERING and self._state not in _STEERABLE_STATES:
            return None  # shown, but disabled: the job no longer takes steering
        return True

    def _steerable(self) -> bool:
        # Read afresh: a dialog may have been open while the job ended.
        return self.source.snapshot().state in _STEERABLE_STATES

    def _after_control(self) -> None:
        self.pull()

    def _say_if_bounded(self, title: str, step: Adjustment | None) -> None:
        # None: a job in another process answers later, in its event log.
        if step is not None and step.at_bound:
            self.notify(step.bound_message, title=title, severity="warning")

    def action_toggle_pause(self) -> None:
        state = self.source.snapshot().state
        if state is JobState.PAUSED:
            self.source.resume()
        elif state is JobState.RUNNING:
            self.source.pause()
        self._after_control()

    def action_concurrency_up(self) -> None:
        self._say_if_bounded("Concurrency", self.source.adjust_concurrency(+1))
        self._after_control()

    def action_concurrency_down(self) -> None:
        self._say_if_bounded("Concurrency", self.source.adjust_concurrency(-1))
        self._after_control()

    def action_set_concurrency(self) -> None:
        def chosen(value: int | None) -> None:
            if value is not None and self._steerable():
                self.source.set_concurrency(value)
            self._after_control()

        self.app.push_screen(ConcurrencyPrompt(self.source.snapshot().concurrency), chosen)

    def action_fetch_up(self) -> None:
        self._change_fetch_concurrency(+FETCH_STEP)

    def action_fetch_down(self) -> None:
        self._change_fetch_concurrency(-FETCH_STEP)

    def _change_fetch_concurrency(self, delta: int) -> None:
        try:
            step = self.source.adjust_fetch_concurrency(delta)
        except ValueError as exc:  # a job that does not crawl
            self.notify(str(exc), title="Fetch concurrency", severity="error")
        else:
            self._say_if_bounded("Fetch concurrency", step)
        self._after_control()

    def action_toggle_preset(self) -> None:
        self._apply_preset(PRESET_TOGGLE.get(self.source.snapshot().preset.name, "conservative"))

    def _apply_preset(self, preset: PresetChoice) -> bool:
        try:
            self.source.apply_preset(preset)
        except (KeyError, ConfigError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            self.notify(str(message), title="Preset not applied", severity="error")
            return False
        finally:
            self._after_control()
        return True

    def action_pick_preset(self) -> None:
        snap = self.source.snapshot()
        names = snap.preset_names or tuple(PRESET_TOGGLE)

        def chosen(choice: PresetChoice | None) -> None:
            if choice is not None and self._steerable():
                self._apply_preset(choice)

        picker = PresetPicker(names, snap.preset.name, user_settings.user_presets_dir())
        self.app.push_screen(picker, chosen)

    def action_edit_preset(self) -> None:
        current: Preset = self.source.snapshot().preset

        def edited(edit: PresetEdit | None) -> None:
            if edit is None:
                return
            if edit.saved_to is not None:
                self.notify(f"Saved to {edit.saved_to}", title=f"Preset {edit.preset.name}")
            if self._steerable():
                self._apply_preset(edit.preset)

        self.app.push_screen(PresetEditor(current, user_settings.user_presets_dir()), edited)

    def action_drain(self) -> None:
        self.source.drain()
        self.notify("Finishing what is in flight, then stopping.", title="Draining")
        self._after_control()

    def action_request_quit(self) -> None:
        self.post_message(self.QuitRequested())
