"""A newcomer's first commands, run as real subprocesses: what they see.

Output piped into a reader that stops early (`| head -1`) ends quietly, as
POSIX tools do; `--version` tells what is installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from tests.engine.test_cli import (
    RUN_TIMEOUT_S,
    assert_no_traceback,
    cli_env,
    command,
    count_rows,
    crawldeck,
    stored_ids,
    summary_counts,
    write_job,
)

CLOSED_PIPE_EXIT = 128 + signal.SIGPIPE  # what a shell reports for a tool that met a closed pipe


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A job run to its end once: 400 chunks stored in results.db beside it."""
    folder = tmp_path_factory.mktemp("finished")
    job = write_job(folder, records=400, latency_s=(0.01, 0.03), concurrency=8, batch_size=10)
    run = crawldeck("run", job, "--headless", cwd=folder)
    assert run.returncode == 0, run.stderr
    assert count_rows(folder / "results.db") == 400
    return job


# --------------------------------------------------------------------------
# A reader that stops early


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The write end of a real pipe whose reader has already gone: every write meets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


def run_into(closed_pipe: int, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        cwd=cwd,
        env=cli_env(),
        stdout=closed_pipe,
        stderr=subprocess.PIPE,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_export_piped_into_head_ends_quietly_with_the_closed_pipe_status(
    finished_job: Path,
) -> None:
    folder = finished_job.parent
    export = subprocess.Popen(
        command("export", finished_job),
        cwd=folder,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = subprocess.Popen(["head", "-1"], stdin=export.stdout, stdout=subprocess.PIPE)
    assert export.stdout is not None and export.stderr is not None
    export.stdout.close()  # head alone reads the pipe now, as in a shell
    first_line, _ = head.communicate(timeout=RUN_TIMEOUT_S)
    stderr = export.stderr.read().decode()
    export.wait(timeout=RUN_TIMEOUT_S)

    assert first_line.startswith(b'{"chunk_id": ')
    assert first_line.count(b"\n") == 1
    # 400 rows are far more than a pipe holds, so export met the closed pipe.
    assert export.returncode == CLOSED_PIPE_EXIT
    assert stderr == ""


@pytest.mark.parametrize(
    "args",
    [("export",), ("export", "--format", "csv"), ("--version",)],
    ids=["export-jsonl", "export-csv", "version"],
)
def test_writing_to_a_closed_pipe_exits_quietly(
    finished_job: Path, closed_pipe: int, args: tuple[str, ...]
) -> None:
    argv: tuple[str | Path, ...] = (*args, finished_job) if args[0] == "export" else args

    run = run_into(closed_pipe, *argv, cwd=finished_job.parent)

    assert run.returncode == CLOSED_PIPE_EXIT
    assert run.stderr == ""


def test_help_into_a_closed_pipe_is_quiet(closed_pipe: int, tmp_path: Path) -> None:
    run = run_into(closed_pipe, "--help", cwd=tmp_path)

    assert run.stderr == ""
    # argparse swallows a failed write of its own help when stdout is unbuffered
    # (PYTHONUNBUFFERED) and exits 0; buffered, the write fails at our flush: 141.
    assert run.returncode in (0, CLOSED_PIPE_EXIT)


def test_a_headless_run_whose_status_reader_went_away_drains_and_ends_quietly(
    tmp_path: Path, closed_pipe: int
) -> None:
    job = write_job(tmp_path, records=200, latency_s=(0.3, 0.6), concurrency=2, batch_size=5)

    run = run_into(closed_pipe, "run", job, "--headless", "--interval", "0.2", cwd=tmp_path)

    assert run.returncode == CLOSED_PIPE_EXIT
    assert_no_traceback(run.stderr)
    assert "crawldeck: stdout was closed: draining" in run.stderr
    # What was in flight was finished and stored, not cut off; a rerun does the rest.
    done, failed, _ = summary_counts(run.stderr)
    results, failures = stored_ids(tmp_path / "results.db")
    assert (done, failed) == (len(results), 0) and failures == []
    assert 0 < done < 200


# --------------------------------------------------------------------------
# --version


def test_version_prints_the_installed_packages_version() -> None:
    run = subprocess.run(
        command("--version"), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout == f"crawldeck {metadata.version('crawldeck')}\n"
    assert run.stderr == ""
