"""Store trouble seen from the command line: one line, a non-zero exit, and the truth.

`crawldeck run` and `export` are real subprocesses, as in test_cli.py, and
the trouble is real: text and random bytes where the store should be,
someone else's SQLite file, a write lock held by another process (before the
run and in the middle of it), a file-size limit the kernel enforces
(RLIMIT_FSIZE: SQLite's writes past it fail as on a full disk), and a store
file without write permission.  Each checks that stderr names the file in
exactly one line, that nothing already stored was lost, and that what the
run reported as done is what the store holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import sqlite3
import stat
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from tests.engine.conftest import write_records
from tests.engine.store.test_store_trouble import store_with_results
from tests.engine.store.write_lock import write_lock_held
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


def the_line_about(db: Path, stderr: str) -> str:
    """The one stderr line that names the store (there must be exactly one)."""
    lines = [line for line in stderr.splitlines() if str(db.name) in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("crawldeck: "), lines[0]
    return lines[0]


def assert_refused_in_one_line(
    run: subprocess.CompletedProcess[str], db: Path, *words: str
) -> None:
    assert run.returncode == 2, run.stderr
    assert_no_traceback(run.stdout, run.stderr)
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    line = the_line_about(db, run.stderr)
    for word in words:
        assert word in line, line


def runs_of(db: Path) -> list[tuple[int, str | None, dict[str, object] | None]]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT run_id, outcome, summary_json FROM runs ORDER BY run_id")
        return [(rid, outcome, json.loads(s) if s else None) for rid, outcome, s in rows]


def results_of_run(db: Path, run_id: int) -> int:
    with closing(sqlite3.connect(db)) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM results WHERE run_id = ?", (run_id,)
        ).fetchone()
        return int(count)


# -- files that are not a crawldeck store -----------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"name,age\nann,41\n" * 200, os.urandom(16384)],
    ids=["text", "random-bytes"],
)
def test_a_store_that_is_not_sqlite_is_one_line_for_run_and_export_and_left_as_it_was(
    tmp_path: Path, content: bytes
) -> None:
    job = write_job(tmp_path, records=20)
    db = tmp_path / "results.db"
    db.write_bytes(content)

    run = crawldeck("run", job, "--headless", cwd=tmp_path)
    export = crawldeck("export", db, cwd=tmp_path)

    assert_refused_in_one_line(run, db, "not a SQLite database", "job.store=")
    assert_refused_in_one_line(export, db, "not a SQLite database")
    assert export.stdout == ""
    assert db.read_bytes() == content


def test_someone_elses_sqlite_file_is_one_line_for_run_and_export_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=20)
    db = tmp_path / "results.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE invoices (number INTEGER, total REAL)")
        conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
        conn.commit()
    before = db.read_bytes()

    run = crawldeck("run", job, "--headless", cwd=tmp_path)
    export = crawldeck("export", job, cwd=tmp_path)

    assert_refused_in_one_line(run, db, "not a crawldeck store", "invoices")
    assert_refused_in_one_line(export, db, "not a crawldeck store", "invoices")
    assert db.read_bytes() == before


# -- a write lock held by another process ---------------------------------------------


def test_a_store_locked_by_another_process_at_start_is_one_line_and_loses_nothing(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=20)
    db = tmp_path / "results.db"
    asyncio.run(store_with_results(db, 25))

    with write_lock_held(db):
        run = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert_refused_in_one_line(run, db, "locked by another process", "job.store=")
    assert count_rows(db) == 25
    assert runs_of(db) == []  # refused before a run was recorded


def test_a_lock_taken_mid_run_fails_the_run_promptly_reporting_only_what_was_committed(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=400, latency_s=(0.2, 0.5), concurrency=8, batch_size=5)
    db = tmp_path / "results.db"
    args = ("run", job, "--headless", "--interval", "0.5")

    with in_background(*args, cwd=tmp_path) as run:
        before_lock = wait_for_rows(db, 60, run)
        with write_lock_held(db):
            # The writer waits out SQLite's busy timeout (10 s), then the job ends.
            returncode = run.wait()
        stdout, stderr = run.stdout, run.stderr

    assert returncode == 1, stderr
    assert_no_traceback(stdout, stderr)
    assert "locked by another process" in the_line_about(db, stderr)
    committed = count_rows(db)
    assert before_lock <= committed < 400  # nothing stored was lost, and it did stop
    done, failed, _ = summary_counts(stderr)
    assert (done, failed) == (committed, 0), "the summary counted rows the store never got"
    status = [line for line in stdout.splitlines() if line.startswith("[")]
    assert status and status[-1].startswith(f"[failed] {committed}/400"), status[-1:]
    assert not any(line.startswith("[done]") for line in status)
    # The lock was still held when the run tried to record its end: the row is open...
    [(first, outcome, _)] = runs_of(db)
    assert outcome is None

    rerun = crawldeck(*args, cwd=tmp_path)

    # ...and the next start marks it interrupted, with what it had committed.
    assert rerun.returncode == 0, rerun.stderr
    (_, outcome, summary), (_, rerun_outcome, _) = runs_of(db)
    assert (outcome, rerun_outcome) == ("interrupted", "done")
    assert summary is not None and summary["done"] == results_of_run(db, first) == committed
    results, failures = stored_ids(db)
    assert len(results) == len(set(results)) == 400
    assert failures == []


# -- a full disk ------------------------------------------------------------------------


def test_a_disk_that_fills_mid_run_fails_the_run_in_one_line_and_keeps_what_was_stored(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=100, latency_s=(0.01, 0.03), concurrency=8, batch_size=5)
    db = tmp_path / "results.db"
    args = ("run", job, "--headless", "--interval", "0.5")
    first = crawldeck(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    write_records(tmp_path / "records.txt", 1000)  # the same 100 records, and 900 more
    # The kernel refuses to grow any file of the run past this (EFBIG): the store
    # file has room for a few transactions more, its WAL for a few dozen.
    limit = db.stat().st_size + 256 * 1024

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run(
        command(*args),
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        start_new_session=True,
        preexec_fn=limit_file_size,
    )

    assert full.returncode == 1, full.stderr
    assert_no_traceback(full.stdout, full.stderr)
    assert "disk" in the_line_about(db, full.stderr)
    assert results_of_run(db, 1) == 100  # the first run's results are all there
    committed = results_of_run(db, 2)
    assert 0 < committed < 900
    done, _, skipped = summary_counts(full.stderr)
    assert (done, skipped) == (committed, 100)
    (_, _, _), (_, outcome, summary) = runs_of(db)
    assert outcome in ("failed", None)  # recorded if the disk let it, or left open
    if summary is not None:
        assert summary["done"] == committed

    rerun = crawldeck(*args, cwd=tmp_path)

    assert rerun.returncode == 0, rerun.stderr
    assert count_rows(db) == 1000
    (_, _, _), (_, outcome, summary), _ = runs_of(db)
    assert outcome in ("failed", "interrupted")
    assert summary is not None and summary["done"] == committed


# -- a store that cannot be written --------------------------------------------------------


def test_a_read_only_store_is_one_line_and_loses_nothing(tmp_path: Path) -> None:
    job = write_job(tmp_path, records=20)
    db = tmp_path / "results.db"
    asyncio.run(store_with_results(db, 25))
    db.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    argv = command("run", job, "--headless")
    if os.geteuid() == 0:
        # Root writes through file modes (CAP_DAC_OVERRIDE): run without that power,
        # so the mode binds as it does for everyone else.
        setpriv = shutil.which("setpriv")
        assert setpriv, "running as root, the read-only test needs util-linux's setpriv"
        argv = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", *argv]

    run = subprocess.run(
        argv,
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        start_new_session=True,
    )

    assert_refused_in_one_line(run, db, "read-only", "job.store=")
    assert count_rows(db) == 25
