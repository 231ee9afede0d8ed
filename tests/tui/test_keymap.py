"""Every screen's bindings come from the one registry, so the user's keymap reaches them all."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

from textual.binding import Binding
from textual.screen import Screen

import tui.screens
from tests.tui.conftest import FixedSource
from tests.tui.test_dashboard import fixed_app, wait_until
from tui.actions import ACTIONS_BY_ID, BINDING_IDS, SCREEN_ACTIONS
from tui.app import CrawldeckApp
from tui.screens.concurrency_prompt import ConcurrencyPrompt
from tui.screens.confirm_quit import ConfirmQuitScreen


def our_screens() -> list[type[Screen[object]]]:
    """Every screen class defined in `tui.screens`."""
    found: list[type[Screen[object]]] = []
    for info in pkgutil.iter_modules(tui.screens.__path__, "tui.screens."):
        module = importlib.import_module(info.name)
        found += [
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, Screen) and cls.__module__ == module.__name__
        ]
    return found


def test_every_binding_of_every_screen_is_a_registry_entry() -> None:
    screens = our_screens()
    owners: list[type] = [*screens, CrawldeckApp]
    unregistered = []
    for screen in owners:
        for binding in vars(screen).get("BINDINGS", ()):
            assert isinstance(binding, Binding), f"{screen.__name__}: {binding!r}"
            entry = ACTIONS_BY_ID.get(binding.id or "")
            if entry is None or (entry.keys, entry.action) != (binding.key, binding.action):
                unregistered.append(f"{screen.__name__}: {binding.key} → {binding.action}")

    assert unregistered == []
    # Not vacuous: the dialogs were found, and every registry group is used.
    assert {"ConfirmQuitScreen", "ConcurrencyPrompt", "PresetPicker", "PresetEditor"} <= {
        s.__name__ for s in screens
    }
    assert len(BINDING_IDS) == sum(len(actions) for actions in SCREEN_ACTIONS.values())


async def test_a_keymap_remaps_the_quit_questions_answer(isolated_config_dir: Path) -> None:
    isolated_config_dir.mkdir()
    (isolated_config_dir / "settings.toml").write_text(
        '[keymap]\n"crawldeck.confirm_quit" = "j"\n', encoding="utf-8"
    )
    app = fixed_app()  # a running job: quitting asks first
    source = app.source
    assert isinstance(source, FixedSource)
    async with app.run_test() as pilot:
        assert app.startup_problems == []  # a known binding id, not refused
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuitScreen)

        await pilot.press("y")  # the default key no longer answers
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuitScreen)
        assert source.calls == []

        await pilot.press("j")
        await wait_until(pilot, lambda: not app.is_running)
    assert source.calls == [("stop", None)]


async def test_a_keymap_remaps_the_prompts_cancel(isolated_config_dir: Path) -> None:
    isolated_config_dir.mkdir()
    (isolated_config_dir / "settings.toml").write_text(
        '[keymap]\n"crawldeck.cancel_prompt" = "ctrl+g"\n', encoding="utf-8"
    )
    app = fixed_app()
    async with app.run_test() as pilot:
        assert app.startup_problems == []
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ConcurrencyPrompt)

        await pilot.press("ctrl+g")
        await wait_until(pilot, lambda: app.screen is app.dashboard)
    source = app.source
    assert isinstance(source, FixedSource) and source.calls == []
