"""The dashboard's steering stays within the engine's bounds (`engine.config.setting_bounds`).

The dialogs check what is typed against the same bounds the job file and the
control socket use, and the step keys stop at the edge instead of asking the
engine for what it would refuse.
"""

from __future__ import annotations

from dataclasses import replace

from textual.widgets import Input, Label

from engine.config.setting_bounds import CONCURRENCY, FETCH_CONCURRENCY
from engine.engine import Engine
from tests.tui.conftest import FixedSource, fixed_crawl_snapshot
from tests.tui.test_dashboard import FrozenClock, finish, start, wait_until
from tests.tui.test_steering_dialogs import set_input
from tui.app import CrawldeckApp
from tui.screens.concurrency_prompt import ConcurrencyPrompt
from tui.screens.preset_editor import PresetEditor


async def test_the_exact_concurrency_dialog_refuses_one_past_the_bound(
    slow_engine: Engine,
) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        await pilot.press("c")
        await pilot.pause()

        await set_input(app, "#concurrency-value", str(CONCURRENCY.high + 1))
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ConcurrencyPrompt), "past the bound: the prompt stays"
        hint = str(app.screen.query_one("#concurrency-error", Label).render())
        assert hint == f"Enter a whole number from 1 to {CONCURRENCY.high}."
        assert slow_engine.snapshot().concurrency == 4

        await set_input(app, "#concurrency-value", str(CONCURRENCY.high))
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is app.dashboard)
        assert slow_engine.snapshot().concurrency == CONCURRENCY.high
        await finish(pilot, app, slow_engine)


async def test_plus_at_the_bound_leaves_the_engine_there_and_says_so(slow_engine: Engine) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        # Paused: at the bound the job would otherwise finish at once, and the
        # adaptive controller only moves the limit of a running job.
        slow_engine.pause()
        slow_engine.set_concurrency(CONCURRENCY.high)

        await pilot.press("plus")
        await pilot.pause()

        assert slow_engine.snapshot().concurrency == CONCURRENCY.high
        assert [n.message for n in app._notifications] == [f"{CONCURRENCY.high} is the most"]
        assert app.engine_running
        await finish(pilot, app, slow_engine)


async def test_the_preset_editor_refuses_values_past_the_bounds(slow_engine: Engine) -> None:
    app = CrawldeckApp(slow_engine, refresh_hz=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await start(pilot, slow_engine)
        await pilot.press("e")
        await pilot.pause()
        editor = app.screen
        assert isinstance(editor, PresetEditor)
        before = slow_engine.snapshot().preset

        await set_input(app, "#field-concurrency", "1000000000000000000000")
        await set_input(app, "#field-batch_size", "1001")
        await pilot.pause()
        problems = str(editor.query_one("#preset-form-problems", Label).render())
        assert problems.splitlines() == [
            "preset form: concurrency: must be from 1 to 4096 (got 1000000000000000000000)",
            "preset form: batch_size: must be from 1 to 1000 (got 1001)",
        ]
        assert editor.query_one("#field-concurrency", Input).has_class("-invalid")

        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is editor
        assert slow_engine.snapshot().preset == before
        await finish(pilot, app, slow_engine)


async def test_fetch_plus_stops_at_the_bound() -> None:
    fixed = fixed_crawl_snapshot()
    assert fixed.crawl is not None
    near = replace(fixed.crawl, fetch_concurrency=FETCH_CONCURRENCY.high - 3)
    source = FixedSource(replace(fixed, crawl=near))
    app = CrawldeckApp(source, refresh_hz=0, clock=FrozenClock())
    async with app.run_test() as pilot:
        await pilot.press("right_square_bracket")
        await pilot.pause()

    assert source.calls == [("set_fetch_concurrency", FETCH_CONCURRENCY.high)]
