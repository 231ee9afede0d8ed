"""Checking tables of typed fields: unknown keys, wrong types, rules, and values that refuse
themselves, each reported at its key's line and all of them at once."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from engine.config.config_problem import ConfigError
from engine.config.table_check import (
    TableChecker,
    WrongType,
    apply_rules,
    at_least_one,
    read_typed_text,
    refuse,
)
from engine.config.toml_source import Locator, TomlSource, read_toml


@dataclass(frozen=True, slots=True)
class Window:
    """A settings value that checks itself, as `CrawlSettings` and `DriftSettings` do."""

    title: str = "main"
    width: int = 80
    height: int = 24
    mode: Literal["tiled", "floating"] = "tiled"
    opacity: float | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        findings = apply_rules(self, (("width", at_least_one, "must be at least 1"),))
        if not findings and self.height > self.width:
            findings.append(("height", f"must not exceed width {self.width}"))
        refuse("window", findings)


def source(tmp_path: Path, text: str) -> TomlSource:
    path = tmp_path / "window.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return read_toml(path, file="window.toml")


def checked(tmp_path: Path, text: str) -> tuple[Window, list[str]]:
    toml = source(tmp_path, text)
    checker = TableChecker(toml.locator)
    window, _ = checker.settings(
        Window(), checker.table(toml.data["window"], ("window",)), ("window",)
    )
    return window, [str(problem) for problem in checker.problems]


def test_a_dataclass_table_is_read_field_by_field_over_the_defaults(tmp_path: Path) -> None:
    window, problems = checked(
        tmp_path,
        """\
        [window]
        width = 120
        mode = "floating"
        opacity = 1
        tags = ["a", "b"]
        """,
    )

    assert problems == []
    assert window == Window(width=120, mode="floating", opacity=1.0, tags=("a", "b"))
    assert isinstance(window.opacity, float)  # an integer is a fine number


def test_an_unknown_key_is_refused_at_its_line_with_a_guess(tmp_path: Path) -> None:
    _, problems = checked(tmp_path, "[window]\nwidht = 100\nflavour = 'x'\n")

    assert problems == [
        "window.toml:2: window.widht: unknown key (did you mean 'width'?)",
        "window.toml:3: window.flavour: unknown key "
        "(known keys: title, width, height, mode, opacity, tags)",
    ]


def test_every_wrong_type_is_named_and_the_rest_of_the_table_still_read(tmp_path: Path) -> None:
    window, problems = checked(
        tmp_path,
        """\
        [window]
        title = 3
        width = 90.5
        height = 20
        mode = "stacked"
        tags = [1]
        """,
    )

    assert problems == [
        "window.toml:2: window.title: expected a string, got an integer",
        "window.toml:3: window.width: expected an integer, got a number",
        "window.toml:5: window.mode: must be one of 'tiled', 'floating' (got 'stacked')",
        "window.toml:6: window.tags: every item: expected a string, got an integer",
    ]
    assert window == Window(height=20)


def test_a_value_that_refuses_itself_is_reported_at_the_fields_at_fault(tmp_path: Path) -> None:
    window, problems = checked(tmp_path, "[window]\ntitle = 'big'\nwidth = 0\n")

    assert problems == ["window.toml:3: window.width: must be at least 1 (got 0)"]
    # The field at fault keeps its default, so later checks still have a value.
    assert window == Window(title="big")

    # Built in code, the same rule says which table it belongs to.
    with pytest.raises(ConfigError, match=r"^window\.width: must be at least 1 \(got 0\)$"):
        Window(width=0)


def test_a_rule_across_fields_blames_the_field_it_names(tmp_path: Path) -> None:
    window, problems = checked(tmp_path, "[window]\nwidth = 40\nheight = 50\n")

    assert problems == ["window.toml:3: window.height: must not exceed width 40"]
    assert window == Window(width=40)


def test_fields_may_be_listed_with_readers_of_their_own(tmp_path: Path) -> None:
    toml = source(tmp_path, 'name = ""\ndark = "yes"\nsize = 3\n')
    checker = TableChecker(toml.locator)

    def non_empty(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise WrongType("must be a non-empty string")
        return value

    values = checker.values(toml.data, (), {"name": non_empty, "dark": bool, "size": int})

    assert values == {"size": 3}
    assert [str(p) for p in checker.problems] == [
        "window.toml:1: name: must be a non-empty string",
        "window.toml:2: dark: expected true or false, got a string",
    ]


def test_unknown_keys_may_be_named_together_in_one_line(tmp_path: Path) -> None:
    toml = source(
        tmp_path, '[colors]\nprimary = "#fff"\nglow = 1\nshine = 2\n[other]\nprimry = 1\n'
    )
    checker = TableChecker(toml.locator)

    checker.values(toml.data["colors"], ("colors",), {"primary": str}, unknown_together="colour")
    checker.values(toml.data["other"], ("other",), {"primary": str}, unknown_together="key")

    assert [str(p) for p in checker.problems] == [
        "window.toml:3: colors: unknown colour(s) glow, shine",
        "window.toml:6: other: unknown key(s) primry (did you mean 'primary'?)",
    ]


def test_text_typed_by_hand_takes_the_type_its_field_wants() -> None:
    checker = TableChecker(Locator("--set"))
    table = {"title": read_typed_text("2"), "width": read_typed_text("100")}

    window, _ = checker.settings(Window(), table, ())

    assert (window.title, window.width) == ("2", 100)
    assert checker.problems == []
    assert read_typed_text(" night shift ").value == "night shift"  # not TOML: kept as typed


def test_a_table_where_a_value_should_be_is_a_problem_and_an_empty_table() -> None:
    checker = TableChecker(Locator("job.toml"))

    assert checker.table(3, ("window",)) == {}
    assert [str(p) for p in checker.problems] == [
        "job.toml: window: expected a table, got an integer"
    ]


def test_raising_gives_every_problem_at_once() -> None:
    checker = TableChecker(Locator("job.toml"))
    checker.raise_problems()  # nothing yet: nothing raised

    checker.add(("a",), "first")
    checker.report(("t",), [("b", "second"), ("c", "third")])
    with pytest.raises(ConfigError) as caught:
        checker.raise_problems()

    assert caught.value.keys == ("a", "t.b", "t.c")
    assert str(caught.value).splitlines() == [
        "job.toml: a: first",
        "job.toml: t.b: second",
        "job.toml: t.c: third",
    ]


def test_rules_leave_unset_optional_values_alone() -> None:
    assert apply_rules(Window(), (("opacity", lambda value: value <= 1, "at most 1"),)) == []
    assert apply_rules(
        Window(opacity=2.0), (("opacity", lambda value: value <= 1, "must be at most 1"),)
    ) == [("opacity", "must be at most 1 (got 2.0)")]
