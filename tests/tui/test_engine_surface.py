"""The command line and the dashboard reach the engine through `engine.api` only.

Read from the source, not from `sys.modules`: every import statement in
`tui/`, those inside functions included (the CLI defers its heavy ones), is
checked.  `engine.api` itself stays cheap to import.  (That `tui/` has no
import cycle is `tests/test_import_cycles.py`'s business.)
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import engine.api
import tui
from tests.engine.test_cli_imports import HEAVY

TUI = Path(tui.__file__).parent
PUBLIC = "engine.api"


def imported_names(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in `tree`; `from a import b` gives `a` and `a.b`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: a relative import"
            base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def tui_modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(TUI.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in sorted(TUI.rglob("*.py"))
    }


def imports_of(path: Path) -> list[tuple[int, str]]:
    return list(imported_names(ast.parse(path.read_text(encoding="utf-8"), str(path))))


def test_tui_imports_nothing_of_the_engine_but_its_public_module() -> None:
    modules = tui_modules()
    internal = [
        f"{path.relative_to(TUI.parent)}:{line}: {name}"
        for path in modules.values()
        for line, name in imports_of(path)
        if (name == "engine" or name.startswith("engine."))
        and name != PUBLIC
        and not name.startswith(PUBLIC + ".")
    ]
    users = {
        path.name
        for path in modules.values()
        if any(name == PUBLIC for _, name in imports_of(path))
    }

    assert internal == []
    # Not vacuous: the walk saw the command line, the app and the widgets use it.
    assert {"cli.py", "app.py", "remote_source.py", "job_status.py"} <= users


def test_what_tui_takes_from_the_public_module_is_there() -> None:
    taken = {
        name.removeprefix(PUBLIC + ".")
        for path in tui_modules().values()
        for _, name in imports_of(path)
        if name.startswith(PUBLIC + ".")
    }

    assert taken <= set(engine.api.__all__)
    assert {"Engine", "Snapshot", "JobControls"} <= taken


def test_the_public_module_is_cheap_to_import_and_every_name_resolves() -> None:
    code = f"""
        import sys
        import engine.api
        heavy = {HEAVY!r}
        loaded = sorted(
            m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy)
        )
        assert loaded == [], f"importing engine.api loaded {{loaded[:8]}}"
        for name in engine.api.__all__:
            getattr(engine.api, name)
        assert "engine.engine" in sys.modules  # the lazy names were really loaded
        print(len(engine.api.__all__))
    """
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout) == len(engine.api.__all__)
