"""`--help`, `--version` and `status` start without the engine's heavy libraries.

The engine pulls in httpx2, numpy, aiosqlite and, for crawls, trafilatura
(openai, river and scipy it no longer needs at all: `test_engine_imports`);
the dashboard pulls in Textual.  Together they cost
seconds at start-up, which a command that only prints text or asks a running
job for one snapshot must not pay.  Which modules a command imports is
deterministic where its time is not, so this checks the modules, in fresh
interpreters, with `-X importtime` (which lists deferred imports too).  The
time itself is measured side by side by `python -m tests.benchmarks.cli_start_up`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.engine.test_cli import (
    RUN_TIMEOUT_S,
    Background,
    cli_env,
    in_background,
    write_job,
)

# Top-level packages that only commands running a job (or showing the
# dashboard) need.
HEAVY = (
    "openai",
    "httpx2",
    "numpy",
    "river",
    "scipy",
    "aiosqlite",
    "aiohttp",
    "trafilatura",
    "lxml",
    "selectolax",
    "psutil",
    "prometheus_client",
    "textual",
    "engine.engine",
)


def imported_modules(
    *args: str | Path, cwd: Path
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI in a fresh interpreter; what it printed, and every module it imported."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "tui.cli", *(str(a) for a in args)],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    modules = {
        line.rsplit("|", 1)[-1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:")
    }
    return run, modules


def heavy_among(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def wait_for_socket(socket: Path, run: Background) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not socket.exists():
        assert run.proc.poll() is None, f"the job ended before serving its socket: {run.stderr}"
        assert time.monotonic() < deadline, f"no control socket at {socket}"
        time.sleep(0.05)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_none_of_the_heavy_libraries(flag: str, tmp_path: Path) -> None:
    run, modules = imported_modules(flag, cwd=tmp_path)

    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(("usage: crawldeck", "crawldeck "))
    assert "engine.control.client" in modules  # not vacuous: the CLI's own imports were listed
    assert heavy_among(modules) == []


def test_status_of_a_running_headless_job_imports_none_of_the_heavy_libraries(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=200, latency_s=(0.5, 1.0), concurrency=2, batch_size=5)
    with in_background("run", job, "--headless", cwd=tmp_path) as job_run:
        wait_for_socket(tmp_path / "results.db.crawldeck" / "control.sock", job_run)

        run, modules = imported_modules("status", job, cwd=tmp_path)

        os.killpg(job_run.proc.pid, signal.SIGINT)
        job_run.wait()
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("[running] "), run.stdout  # it did reach the running job
    assert "engine.control.client" in modules
    assert heavy_among(modules) == []
