"""Reading a TOML file for checking: its values, and the line every key is on."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.config_problem import ConfigError, ConfigProblem, format_key
from engine.config.toml_source import LineIndex, Locator, read_toml

TEXT = """\
# a comment = not a key
name = "x"
[colors]
primary = "#fff"
"odd.key" = 1

[[providers]]
name = "a"
notes = \"\"\"
[not.a.table]
fake = 1
\"\"\"
[[providers.keys]]
env = "A_1"
[[providers.keys]]
env = "A_2"
sizes = [
  1,
  2,
]
[[providers]]
name = "b"
tags.kind = "dotted"
"""


def test_each_key_and_table_header_is_found_at_its_line() -> None:
    lines = LineIndex(TEXT)

    assert lines.line_of(("name",)) == 2
    assert lines.line_of(("colors",)) == 3
    assert lines.line_of(("colors", "primary")) == 4
    assert lines.line_of(("colors", "odd.key")) == 5  # a quoted key with a dot in it


def test_arrays_of_tables_are_numbered_by_occurrence_under_their_parent() -> None:
    lines = LineIndex(TEXT)

    assert lines.line_of(("providers", 0)) == 7
    assert lines.line_of(("providers", 0, "keys", 0, "env")) == 14
    assert lines.line_of(("providers", 0, "keys", 1, "env")) == 16
    assert lines.line_of(("providers", 1, "name")) == 22
    assert lines.line_of(("providers", 1, "tags", "kind")) == 23  # a dotted key


def test_multi_line_strings_and_arrays_hide_what_looks_like_keys_inside_them() -> None:
    lines = LineIndex(TEXT)

    assert lines.line_of(("providers", 0, "notes")) == 9
    assert lines.line_of(("not", "a", "table")) is None
    assert lines.line_of(("providers", 0, "keys", 1, "sizes")) == 17
    # The line after the array's end is a header again, not part of the array.
    assert lines.line_of(("providers", 1)) == 21


def test_a_missing_key_points_at_its_nearest_enclosing_table() -> None:
    lines = LineIndex(TEXT)

    assert lines.line_of(("colors", "secondary")) == 3
    assert lines.line_of(("providers", 0, "keys", 1, "alias")) == 15
    assert lines.line_of(("nowhere",)) is None


def test_a_locator_names_the_file_the_line_and_the_key() -> None:
    locator = Locator("theme.toml", TEXT)

    problem = locator.problem(("colors", "odd.key"), "unknown colour")

    assert problem == ConfigProblem("theme.toml", 5, 'colors."odd.key"', "unknown colour")
    assert str(problem) == 'theme.toml:5: colors."odd.key": unknown colour'
    # Values that came from no text (a form, a request) have no line to give.
    assert str(Locator("preset form").problem(("batch_size",), "too big")) == (
        "preset form: batch_size: too big"
    )


def test_reading_a_file_keeps_its_values_text_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(TEXT, encoding="utf-8")

    source = read_toml(path)

    assert source.data["providers"][1]["tags"] == {"kind": "dotted"}
    assert source.text == TEXT
    assert source.file == str(path)
    assert source.locator.problem(("colors", "primary"), "m").line == 4
    # Named otherwise when the caller says so (a theme by its file name alone).
    assert read_toml(path, file="t.toml").locator.problem(("name",), "m").file == "t.toml"


def test_a_syntax_error_is_one_problem_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('name = "x"\n\ncolour = \n', encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        read_toml(path)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.key) == (str(path), 3, "")
    assert problem.message.startswith("invalid TOML: ")
    assert "(at line" not in problem.message  # the place is the line, not repeated text

    with pytest.raises(ConfigError, match=r"^t\.toml:3: not valid TOML: "):
        read_toml(path, file="t.toml", invalid="not valid TOML")


def test_a_missing_or_unreadable_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        read_toml(tmp_path / "nope.toml")
    assert str(missing.value) == f"{tmp_path / 'nope.toml'}: file not found"

    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError, match=r"binary\.toml: cannot read the file: .*utf-8"):
        read_toml(binary)


def test_one_error_carries_every_problem_one_line_each() -> None:
    problems = [
        ConfigProblem("job.toml", 3, "job.input", "is required"),
        ConfigProblem("--set", None, "preset.batch_size", "must be from 1 to 1000 (got 0)"),
        ConfigProblem("", None, "drift.min_window", "must be at least 20 (got 5)"),
    ]

    error = ConfigError(problems)

    assert isinstance(error, ValueError)
    assert str(error).splitlines() == [
        "job.toml:3: job.input: is required",
        "--set: preset.batch_size: must be from 1 to 1000 (got 0)",
        "drift.min_window: must be at least 20 (got 5)",  # built in code: no file
    ]
    assert error.keys == ("job.input", "preset.batch_size", "drift.min_window")


def test_keys_are_written_as_toml_would_write_them() -> None:
    assert format_key(("providers", 0, "keys", 1, "env")) == "providers[0].keys[1].env"
    assert format_key(("keymap", "crawldeck.drain")) == 'keymap."crawldeck.drain"'
    assert format_key(()) == ""
