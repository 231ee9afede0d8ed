"""Themes load from TOML files, the choice persists, and key remaps come from settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.config_problem import ConfigError
from tests.tui.test_dashboard import fixed_app
from tui import user_settings
from tui.screens.keys import KeysScreen
from tui.themes import DEFAULT_THEME, SHIPPED_DIR, load_theme_file, load_themes

SHIPPED = ("crawldeck-dark", "crawldeck-high-contrast", "crawldeck-light")


def test_the_shipped_themes_load_and_are_registered() -> None:
    loaded = load_themes([SHIPPED_DIR])
    assert loaded.problems == ()
    assert tuple(t.name for t in loaded.themes) == SHIPPED
    app = fixed_app()
    for name in SHIPPED:
        assert name in app.available_themes
    assert app.theme == DEFAULT_THEME


def test_theme_files_ship_in_the_package() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text(encoding="utf-8")
    assert 'themes = ["*.tcss", "*.toml"]' in pyproject
    assert {p.stem for p in SHIPPED_DIR.glob("*.toml")} >= set(SHIPPED)


async def test_cycling_the_theme_writes_the_settings_file(isolated_config_dir: Path) -> None:
    settings = isolated_config_dir / "settings.toml"
    isolated_config_dir.mkdir()
    settings.write_text("# my settings\n[keymap]  # remaps\n", encoding="utf-8")
    app = fixed_app()
    async with app.run_test() as pilot:
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert app.theme == "crawldeck-high-contrast"
    text = settings.read_text(encoding="utf-8")
    assert 'theme = "crawldeck-high-contrast"' in text
    assert "# my settings" in text and "# remaps" in text  # comments survive

    again = fixed_app()
    async with again.run_test():
        assert again.theme == "crawldeck-high-contrast"


async def test_a_palette_theme_switch_persists_too(isolated_config_dir: Path) -> None:
    app = fixed_app()
    async with app.run_test() as pilot:
        app.theme = "crawldeck-light"  # what the palette's theme picker does
        await pilot.pause()
    assert user_settings.load_settings().theme == "crawldeck-light"
    assert fixed_app().theme == "crawldeck-light"


async def test_starting_does_not_write_settings(isolated_config_dir: Path) -> None:
    async with fixed_app().run_test() as pilot:
        await pilot.pause()
    assert not (isolated_config_dir / "settings.toml").exists()


def test_a_bad_theme_file_is_skipped_with_a_one_line_message(isolated_config_dir: Path) -> None:
    themes_dir = isolated_config_dir / "themes"
    themes_dir.mkdir(parents=True)
    (themes_dir / "broken.toml").write_text(
        'name = "crawldeck-broken"\n[colors]\nprimary = "not-a-colour"\n', encoding="utf-8"
    )
    (isolated_config_dir / "settings.toml").write_text(
        'theme = "crawldeck-broken"\n', encoding="utf-8"
    )
    app = fixed_app()
    assert app.theme == DEFAULT_THEME
    problems = app.startup_problems
    assert any("broken.toml" in p and "primary" in p for p in problems)
    assert any("'crawldeck-broken' not found" in p for p in problems)
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('name = "x"\ncolour = 1\n[colors]\nprimary = "#fff"\n', "unknown key(s) colour"),
        ('name = "x"\n[colors]\nsecondary = "#fff"\n', "primary is required"),
        ('name = "x"\n[colors]\nprimary = "#fff"\nglow = "#000"\n', "unknown colour(s) glow"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_theme_validation(tmp_path: Path, text: str, complaint: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"t\.toml") as info:
        load_theme_file(path)
    assert complaint in str(info.value)


async def test_keymap_from_settings_remaps_a_binding(isolated_config_dir: Path) -> None:
    isolated_config_dir.mkdir()
    (isolated_config_dir / "settings.toml").write_text(
        '[keymap]\n"crawldeck.keys" = "x"\n', encoding="utf-8"
    )
    app = fixed_app()
    async with app.run_test() as pilot:
        await pilot.press("k")
        await pilot.pause()
        assert app.screen is app.dashboard  # k no longer opens the keys view
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, KeysScreen)


def test_unknown_settings_are_refused_with_a_message(isolated_config_dir: Path) -> None:
    isolated_config_dir.mkdir()
    (isolated_config_dir / "settings.toml").write_text('colour = "red"\n', encoding="utf-8")
    app = fixed_app()
    assert app.theme == DEFAULT_THEME
    assert any("unknown key(s) colour" in p for p in app.startup_problems)


def test_config_dir_follows_xdg_and_the_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(user_settings.CONFIG_DIR_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert user_settings.settings_path() == tmp_path / "crawldeck" / "settings.toml"
    monkeypatch.setenv(user_settings.CONFIG_DIR_ENV, str(tmp_path / "elsewhere"))
    assert user_settings.settings_path() == tmp_path / "elsewhere" / "settings.toml"


def test_every_problem_in_a_theme_file_names_its_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        'name = "x"\ndark = "yes"\n[colors]\nprimary = "#fff"\nsecondary = "nope"\n',
        encoding="utf-8",
    )

    with pytest.raises(ConfigError) as info:
        load_theme_file(path)

    assert str(info.value).splitlines() == [
        "t.toml:2: dark: expected true or false, got a string",
        "t.toml:5: colors.secondary: 'nope' is not a colour",
    ]


def test_a_bad_settings_value_names_its_line_and_key(isolated_config_dir: Path) -> None:
    isolated_config_dir.mkdir()
    (isolated_config_dir / "settings.toml").write_text(
        '# mine\n[keymap]\n"crawldeck.keys" = ""\n', encoding="utf-8"
    )

    with pytest.raises(user_settings.SettingsError) as info:
        user_settings.load_settings()

    assert str(info.value) == (
        f'{isolated_config_dir / "settings.toml"}:3: keymap."crawldeck.keys": '
        'must name the keys to bind, like "x" or "ctrl+d"'
    )
