"""Exact concurrency, the preset picker and the preset editor steer the real engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import Button, Input, Label, OptionList

from engine.config.presets import load_preset_file, save_preset
from engine.config.settings import BUILTIN_PRESETS, Preset
from engine.engine import Engine
from engine.observe.events import EventKind
from engine.observe.snapshot import JobState
from tests.tui.conftest import FixedSource, every_drift_metric
from tests.tui.test_dashboard import finish, fixed_app, start, wait_until
from tui.app import CrawldeckApp
from tui.screens.concurrency_prompt import ConcurrencyPrompt
from tui.screens.preset_editor import PresetEditor
from tui.screens.preset_picker import PresetPicker
from tui.widgets.drift_panel import DriftPanel
from tui.widgets.event_log import EventLog


def events_of(engine: Engine, kind: EventKind) -> list[str]:
    return [e.message for e in engine.snapshot().events if e.kind is kind]


async def set_input(app: CrawldeckApp, selector: str, text: str) -> None:
    field = app.screen.query_one(selector, Input)
    field.value = text
    field.cursor_position = len(text)


# ---------------------------------------------------------------- exact concurrency
async def test_c_sets_an_exact_concurrency_and_refuses_nonsense(slow_engine: Engine) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)

        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConcurrencyPrompt)
        await pilot.press("backspace", "0", "enter")  # the current value starts selected
        await pilot.pause()
        assert isinstance(app.screen, ConcurrencyPrompt), "0 is refused; the prompt stays"
        assert "whole number" in str(app.screen.query_one("#concurrency-error", Label).render())

        await set_input(app, "#concurrency-value", "")
        await pilot.press("1", "3", "enter")
        await wait_until(pilot, lambda: app.screen is app.dashboard)
        assert slow_engine.snapshot().concurrency == 13
        assert any("→ 13" in m for m in events_of(slow_engine, EventKind.CONCURRENCY_CHANGED))
        await wait_until(pilot, lambda: "/13" in str(app.query_one("#job-status").render()))

        await pilot.press("c")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.dashboard
        assert slow_engine.snapshot().concurrency == 13
        await finish(pilot, app, slow_engine)


# ---------------------------------------------------------------- the preset picker
async def test_o_picks_a_named_preset(slow_engine: Engine) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        await pilot.press("o")
        await pilot.pause()
        assert isinstance(app.screen, PresetPicker)
        options = app.screen.query_one(OptionList)
        prompts = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert prompts == ["aggressive  (in use)", "conservative"]

        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: app.screen is app.dashboard)
        snap = slow_engine.snapshot()
        assert snap.preset.name == "conservative"
        assert snap.concurrency == BUILTIN_PRESETS["conservative"].concurrency
        assert events_of(slow_engine, EventKind.PRESET_CHANGED)
        await finish(pilot, app, slow_engine)


async def test_o_applies_a_preset_file_and_a_bad_file_changes_nothing(
    slow_engine: Engine, isolated_config_dir: Path, tmp_path: Path
) -> None:
    presets = isolated_config_dir / "presets"
    presets.mkdir(parents=True)
    save_preset(Preset(name="overnight", concurrency=3, batch_size=2), presets / "overnight.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nconcurrency = 0\nbatch_sise = 4\n', encoding="utf-8")

    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        await pilot.press("o")
        await pilot.pause()
        assert isinstance(app.screen, PresetPicker)

        # A bad file typed as a path: its problems, each with file, line and key.
        await set_input(app, "#preset-path", str(bad))
        app.screen.query_one("#preset-path", Input).focus()
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, PresetPicker)
        problems = str(app.screen.query_one("#preset-problems", Label).render())
        assert f"{bad}:2: concurrency: must be from 1 to 4096" in problems
        assert f"{bad}:3: batch_sise" in problems
        assert slow_engine.snapshot().preset.name == "aggressive"

        # The saved file is listed after the job's own presets.
        options = app.screen.query_one(OptionList)
        options.focus()
        await pilot.press("end", "enter")
        await wait_until(pilot, lambda: app.screen is app.dashboard)
        snap = slow_engine.snapshot()
        assert (snap.preset.name, snap.concurrency, snap.preset.batch_size) == ("overnight", 3, 2)
        await finish(pilot, app, slow_engine)


# ---------------------------------------------------------------- the preset editor
async def test_e_edits_the_preset_checks_it_and_saves_a_file_that_loads(
    slow_engine: Engine, isolated_config_dir: Path
) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        await pilot.press("e")
        await pilot.pause()
        editor = app.screen
        assert isinstance(editor, PresetEditor)
        before = slow_engine.snapshot().preset

        # An invalid form is shown as such and cannot be applied.
        await set_input(app, "#field-memory_soft_mb", "4096")
        await set_input(app, "#field-batch_size", "many")
        await pilot.pause()
        problems = str(editor.query_one("#preset-form-problems", Label).render())
        assert "preset form: batch_size: expected an integer" in problems
        assert "memory_soft_mb: must be below memory_hard_mb" in problems
        assert editor.query_one("#field-batch_size", Input).has_class("-invalid")
        await pilot.press("ctrl+a")
        await pilot.pause()
        assert app.screen is editor
        assert slow_engine.snapshot().preset == before

        # Fixed, renamed and saved: the engine runs it and the file loads back the same.
        await set_input(app, "#field-memory_soft_mb", "1024")
        await set_input(app, "#field-batch_size", "3")
        await set_input(app, "#field-concurrency", "7")
        await set_input(app, "#field-name", "night shift")
        await pilot.pause()
        assert editor.query_one("#preset-save-path", Input).value == str(
            isolated_config_dir / "presets" / "night-shift.toml"
        )
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is app.dashboard)

        snap = slow_engine.snapshot()
        assert (snap.preset.name, snap.concurrency, snap.preset.batch_size) == ("night shift", 7, 3)
        saved = load_preset_file(isolated_config_dir / "presets" / "night-shift.toml")
        assert saved == snap.preset
        assert any("night shift" in m for m in events_of(slow_engine, EventKind.PRESET_CHANGED))
        await finish(pilot, app, slow_engine)


async def test_ctrl_a_applies_the_form_while_the_cursor_is_in_a_field(slow_engine: Engine) -> None:
    # An input binds ctrl+a to "home"; the editor's Apply must win, or it never runs.
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        assert slow_engine.snapshot().concurrency == 4
        await pilot.press("e")
        await pilot.pause()
        editor = app.screen
        assert isinstance(editor, PresetEditor)
        field = editor.query_one("#field-concurrency", Input)
        assert field.has_focus
        assert str(editor.query_one("#apply", Button).label) == "Apply (^a)"

        await pilot.press("end", "backspace", "9")
        assert field.has_focus and field.value == "9"
        await pilot.press("ctrl+a")
        await wait_until(pilot, lambda: app.screen is app.dashboard)

        snap = slow_engine.snapshot()
        assert (snap.preset.concurrency, snap.concurrency) == (9, 9)
        assert events_of(slow_engine, EventKind.PRESET_CHANGED)
        await finish(pilot, app, slow_engine)


async def test_the_editor_keys_follow_the_keymap_and_the_buttons_say_so(
    isolated_config_dir: Path,
) -> None:
    isolated_config_dir.mkdir()
    (isolated_config_dir / "settings.toml").write_text(
        '[keymap]\n"crawldeck.apply_preset" = "ctrl+y"\n', encoding="utf-8"
    )
    app = fixed_app()
    source = app.source
    assert isinstance(source, FixedSource)
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.startup_problems == []  # a known binding id, not refused
        await pilot.press("e")
        await pilot.pause()
        editor = app.screen
        assert isinstance(editor, PresetEditor)
        assert str(editor.query_one("#apply", Button).label) == "Apply (^y)"
        await pilot.press("ctrl+y")
        await wait_until(pilot, lambda: app.screen is app.dashboard)
        assert [name for name, _ in source.calls] == ["apply_preset"]


async def test_dialogs_do_not_steer_a_job_that_ended_while_they_were_open(
    slow_engine: Engine,
) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        await pilot.press("c")
        await pilot.pause()
        slow_engine.stop()
        await wait_until(pilot, lambda: not app.engine_running)
        await set_input(app, "#concurrency-value", "30")
        await pilot.press("enter")
        await pilot.pause()
        assert slow_engine.snapshot().state is JobState.STOPPED
        assert slow_engine.snapshot().concurrency != 30


# ---------------------------------------------------------------- layout
async def test_panels_collapse_in_order_as_the_terminal_shrinks() -> None:
    every = every_drift_metric()
    app = fixed_app(drift=every)
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        keys, log, drift = (
            app.query_one("#keys"),
            app.query_one("#events"),
            app.query_one(DriftPanel),
        )
        assert log.region.x > keys.region.right - 1, "wide: the log sits beside the keys"
        assert drift.region.height >= 2 * len(every), "wide and tall: the charts grow"

        await pilot.resize_terminal(80, 30)
        await pilot.pause()
        assert app.query_one("#sparklines").display and app.query_one("#queues").display
        assert drift.region.height == 1 + len(every), "medium: a line per metric"
        assert log.region.y > keys.region.y, "narrow: stacked"

        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert not app.query_one("#sparklines").display, "short: sparklines go first"
        assert not app.query_one("#queues").display, "then the queues"
        assert drift.display and drift.region.height == 10, "so drift keeps nine lines"
        drawn = str(drift.render())
        # Ten metrics in nine lines: the worst keep theirs (tripped, then warning, then ok).
        assert sum(metric.label in drawn for metric in every) == 9
        assert drawn.index("refusals/empty") < drawn.index("items") < drawn.index("output tokens")
        assert log.region.height >= 3 and log.region.bottom <= app.screen.region.bottom - 1

        await pilot.resize_terminal(80, 20)
        await pilot.pause()
        assert not drift.display, "tiny: drift goes last"
        assert keys.display and log.display


@pytest.mark.parametrize("size", [(120, 40), (150, 24), (200, 60)])
async def test_the_event_log_is_on_screen_from_120x40_up(size: tuple[int, int]) -> None:
    app = fixed_app(drift=every_drift_metric())
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        log = app.query_one(EventLog)
        footer_top = app.screen.region.bottom - 1
        assert log.region.height >= 3 and log.region.bottom <= footer_top
        assert len(log.lines) == 6


# ---------------------------------------------------------------- how they look
@pytest.fixture
def shown_config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """A config dir path that reads the same on every machine (it is shown, never written)."""
    monkeypatch.setenv("CRAWLDECK_CONFIG_DIR", "/home/operator/.config/crawldeck")


def _press(*keys: str) -> Callable[..., object]:
    async def run_before(pilot: object) -> None:
        await pilot.press(*keys)  # type: ignore[attr-defined]
        # A blinking cursor is drawn or not depending on when the picture is taken.
        for field in pilot.app.screen.query(Input):  # type: ignore[attr-defined]
            field.cursor_blink = False
        await pilot.pause()  # type: ignore[attr-defined]

    return run_before


def test_dashboard_at_200x60(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(), terminal_size=(200, 60))


def test_dashboard_with_every_drift_metric_at_80x24(snap_compare: Callable[..., bool]) -> None:
    # A line per metric for all every, the log below, and a footer that ends in `^p more`.
    app = fixed_app(drift=every_drift_metric())
    assert snap_compare(app, terminal_size=(80, 24))


def test_dashboard_with_every_drift_metric_at_120x40(snap_compare: Callable[..., bool]) -> None:
    # Narrow but tall: a line per metric, and the event log below them.
    app = fixed_app(drift=every_drift_metric())
    assert snap_compare(app, terminal_size=(120, 40))


def test_a_paused_job_at_80x24(snap_compare: Callable[..., bool]) -> None:
    # What the engine sends while paused: no ETA, so the state stands in its place.
    app = fixed_app(state=JobState.PAUSED, eta_s=None, eta_low_s=None, eta_high_s=None)
    assert snap_compare(app, terminal_size=(80, 24))


def test_dashboard_without_a_drift_monitor_at_80x24(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(drift=()), terminal_size=(80, 24))


def test_concurrency_prompt_at_80x24(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=_press("c"))


@pytest.mark.usefixtures("shown_config_dir")
def test_preset_picker_at_80x24(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=_press("o"))


@pytest.mark.usefixtures("shown_config_dir")
def test_preset_picker_at_160x48(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(), terminal_size=(160, 48), run_before=_press("o"))


@pytest.mark.usefixtures("shown_config_dir")
def test_preset_editor_at_80x24(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(), terminal_size=(80, 24), run_before=_press("e"))


@pytest.mark.usefixtures("shown_config_dir")
def test_preset_editor_at_160x48(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(fixed_app(), terminal_size=(160, 48), run_before=_press("e"))
