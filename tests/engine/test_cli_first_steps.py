"""A newcomer's first commands, run as real subprocesses: what they see, and what is kept.

Running a finished job again says why nothing happened and how to start
over; `--fresh` starts over without destroying the earlier results; output
piped into a reader that stops early (`| head -1`) ends quietly, as POSIX
tools do; `--version` tells what is installed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from engine.config.job_file import load_config
from tests.engine.test_cli import (
    RUN_TIMEOUT_S,
    assert_no_traceback,
    cli_env,
    command,
    count_rows,
    crawldeck,
    in_background,
    stored_ids,
    summary_counts,
    wait_for_rows,
    write_job,
)
from tui.cli import load_demo_config

REPO = Path(__file__).resolve().parents[2]
CLOSED_PIPE_EXIT = 128 + signal.SIGPIPE  # what a shell reports for a tool that met a closed pipe
ASIDE_NAME = re.compile(r"results-\d{8}-\d{6}\.db")


def nothing_to_do_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "nothing to do" in line]


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
# The example job and the demo


def test_the_example_job_keeps_its_own_store_apart_from_the_demos(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)  # where a newcomer runs both, one after the other

    example = load_config(REPO / "config.example.toml")
    demo = load_demo_config(None, [], "crawldeck-demo.db")

    assert Path(example.job.store).parent == REPO
    assert example.job.store != demo.job.store


# --------------------------------------------------------------------------
# Running a finished job again, and starting over


def test_a_rerun_that_finds_everything_done_says_so_in_one_line_with_the_flag_to_start_over(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=40, latency_s=(0.01, 0.03))
    db = tmp_path / "results.db"
    first = crawldeck("run", job, "--headless", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert nothing_to_do_lines(first.stderr) == []  # it had work to do

    again = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert_no_traceback(again.stdout, again.stderr)
    (line,) = nothing_to_do_lines(again.stderr)
    assert "all 40 chunks were already done" in line
    assert str(db) in line
    assert "--fresh" in line
    assert summary_counts(again.stderr) == (0, 0, 40)  # and the summary is still the last line


def test_fresh_starts_over_and_keeps_the_earlier_store_under_a_timestamped_name(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=40, latency_s=(0.01, 0.03))
    db = tmp_path / "results.db"
    first = crawldeck("run", job, "--headless", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    earlier_results, _ = stored_ids(db)
    # What the state folder holds (the crawl demo's site list, say) goes with the store.
    (tmp_path / "results.db.crawldeck").mkdir(exist_ok=True)
    (tmp_path / "results.db.crawldeck" / "note.txt").write_text("kept\n", encoding="utf-8")

    fresh = crawldeck("run", job, "--headless", "--fresh", cwd=tmp_path)

    assert fresh.returncode == 0, fresh.stderr
    assert_no_traceback(fresh.stdout, fresh.stderr)
    (aside,) = [p for p in tmp_path.iterdir() if ASIDE_NAME.fullmatch(p.name)]
    said = [line for line in fresh.stderr.splitlines() if "--fresh" in line]
    assert said == [
        f"crawldeck: --fresh: the earlier results are kept in {aside}; starting over in {db}"
    ]
    assert summary_counts(fresh.stderr) == (40, 0, 0)  # every chunk sent again
    assert sorted(stored_ids(db)[0]) == sorted(earlier_results)
    assert sorted(stored_ids(aside)[0]) == sorted(earlier_results)  # nothing destroyed
    kept_folder = aside.with_name(aside.name + ".crawldeck")
    assert (kept_folder / "note.txt").read_text(encoding="utf-8") == "kept\n"
    # The store set aside is a whole database: export reads it like any other.
    exported = crawldeck("export", aside, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == 40


def test_fresh_on_a_job_that_never_ran_just_runs(tmp_path: Path) -> None:
    job = write_job(tmp_path, records=10, latency_s=(0.01, 0.03))

    run = crawldeck("run", job, "--headless", "--fresh", cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    assert f"--fresh: nothing stored yet at {tmp_path / 'results.db'}" in run.stderr
    assert [p.name for p in tmp_path.iterdir() if ASIDE_NAME.fullmatch(p.name)] == []
    assert summary_counts(run.stderr) == (10, 0, 0)


def test_fresh_refuses_while_a_job_is_running_on_the_store_and_moves_nothing(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=200, latency_s=(0.5, 1.0), concurrency=2, batch_size=5)
    db = tmp_path / "results.db"
    running = tmp_path / "running"
    running.mkdir()
    with in_background("run", job, "--headless", cwd=running) as run:
        wait_for_rows(db, 5, run)

        fresh = crawldeck("run", job, "--headless", "--fresh", cwd=tmp_path)

        assert fresh.returncode == 2
        assert_no_traceback(fresh.stdout, fresh.stderr)
        lines = fresh.stderr.strip().splitlines()
        assert len(lines) == 1, fresh.stderr
        assert lines[0].startswith(f"crawldeck: --fresh: {db} is open in another process")
        assert run.proc.poll() is None  # the running job goes on, its store where it was
        assert [p.name for p in tmp_path.iterdir() if ASIDE_NAME.fullmatch(p.name)] == []
        os.killpg(run.proc.pid, signal.SIGINT)
        run.wait()
    done, failed, _ = summary_counts(run.stderr)
    assert (done, failed) == (count_rows(db), 0)


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
