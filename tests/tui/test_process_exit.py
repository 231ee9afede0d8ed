"""The `crawldeck` command ends its process without a last collection of its heap."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from importlib.metadata import entry_points

from tui.process_exit import ending_process


def test_the_entry_point_returns_what_main_returns_and_leaves_the_heap_frozen() -> None:
    def main(argv: Sequence[str] | None) -> int:
        assert argv is None  # the process's own arguments, as a console script gives them
        return 3

    before = gc.get_freeze_count()
    try:
        assert ending_process(main)() == 3
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()  # this process goes on: let the collector have them back


def test_the_heap_is_frozen_even_when_main_raises() -> None:
    def main(argv: Sequence[str] | None) -> int:
        raise SystemExit(2)

    try:
        try:
            ending_process(main)()
        except SystemExit as exit_:
            assert exit_.code == 2
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_installed_command_runs_through_it() -> None:
    from tui.cli import entry

    (command,) = [e for e in entry_points(group="console_scripts") if e.name == "crawldeck"]
    assert command.load() is entry
