"""The engine and the headless command line never load Textual, nor what a job doesn't use.

Checked in fresh interpreters: a static look at the imports would miss a
deferred `import textual` inside a function, and this test process may have
imported Textual already for other tests.  A documents job with the drift
monitor on (the default) needs neither the SDK (calls go over aiohttp), nor
river and scipy (the monitor's Page-Hinkley is its own), nor the crawl
stack: together they were seconds of start-up CPU before the first request.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import engine
from tests.engine.conftest import write_records

TIMEOUT_S = 120.0  # a hang guard only

_LOADED_TEXTUAL = """
loaded = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
assert not loaded, f"textual was imported: {loaded[:5]}"
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + _LOADED_TEXTUAL],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_every_engine_module_imports_without_loading_textual() -> None:
    run = run_python(
        """
        import importlib, pkgutil, sys
        import engine
        names = [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.")]
        for name in names:
            importlib.import_module(name)
        print("\\n".join(names))
        """
    )

    assert run.returncode == 0, run.stderr
    imported = set(run.stdout.split())
    # Not vacuous: the walk found the pipeline, the store and the simulator.
    assert {
        "engine.engine",
        "engine.store.sqlite_store",
        "engine.simulation.simulator",
        "engine.observe.headless_reporter",
    } <= (imported)
    package = Path(engine.__path__[0])
    assert {f"engine.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"} <= imported


def test_importing_the_command_line_does_not_load_textual() -> None:
    run = run_python(
        """
        import sys
        import tui.cli
        assert callable(tui.cli.main)
        """
    )

    assert run.returncode == 0, run.stderr


# What a documents job never needs, by top-level package.
NOT_FOR_A_DOCUMENTS_JOB = (
    "textual",
    "openai",
    "river",
    "scipy",
    "trafilatura",
    "lxml",
    "pebble",
    "selectolax",
)


def test_a_headless_documents_run_loads_neither_textual_nor_what_it_does_not_use(
    tmp_path: Path,
) -> None:
    write_records(tmp_path / "records.txt", 20)
    job = tmp_path / "job.toml"
    job.write_text(
        """\
[job]
name = "headless-imports"
input = "records.txt"
input_format = "text"
store = "results.db"
chunk_overlap_tokens = 0

[[providers]]
name = "sim"
base_url = "http://127.0.0.1:0/v1"
model = "gpt-4o-mini"

[[providers.keys]]
env = "CRAWLDECK_IMPORTS_TEST_KEY"

[simulator]
autostart = true
latency_s = [0.01, 0.02]
""",
        encoding="utf-8",
    )

    # -X importtime lists every module the process imports, deferred ones too.
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tui.cli", "run", str(job), "--headless"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )

    assert run.returncode == 0, run.stderr[-2000:]
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:")
    ]
    assert "engine.engine" in imported  # not vacuous: the run's imports were listed
    assert "engine.drift.monitor" in imported  # the drift monitor was on
    assert "aiohttp" in imported  # the provider calls' transport
    assert sorted({m.split(".")[0] for m in imported} & set(NOT_FOR_A_DOCUMENTS_JOB)) == []
