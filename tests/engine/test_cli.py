"""The `crawldeck` command line, run as real subprocesses against the bundled simulator.

Each test writes a job file into its own directory, runs `python -m tui.cli`
as a user would and judges it by what a user sees: the exit code, stderr,
stdout and the SQLite store.  Waits follow the run (rows in the store, the
process ending) with generous timeouts that only guard against a hang.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.engine.conftest import write_records

KEY_ENV = "CRAWLDECK_CLI_TEST_KEY"
MARKER_ENV = "CRAWLDECK_CLI_TEST_RUN"  # inherited by the simulator: finds our leftovers
RUN_TIMEOUT_S = 120.0  # a hang guard only; runs here take a few seconds
SIMULATOR_BASE_URL = "http://127.0.0.1:0/v1"  # the placeholder the bundled simulator serves
SUMMARY = re.compile(r"(\d+) done, (\d+) failed, (\d+) skipped")


def write_job(
    folder: Path,
    *,
    records: int = 400,
    latency_s: tuple[float, float] = (0.2, 0.6),
    concurrency: int = 8,
    batch_size: int = 5,
    max_retries: int = 3,
    fault_5xx: float = 0.0,
    fault_429: float = 0.0,
    base_url: str = SIMULATOR_BASE_URL,
    input_name: str = "records.txt",
    more: str = "",
) -> Path:
    """A job over `records` text records, shaped like config.example.toml."""
    folder.mkdir(parents=True, exist_ok=True)
    write_records(folder / "records.txt", records)
    job = folder / "job.toml"
    job.write_text(
        f"""\
[job]
name = "cli-test"
input = "{input_name}"
input_format = "text"
store = "results.db"
chunk_tokens = 400
chunk_overlap_tokens = 0
preset = "steady"

[[providers]]
name = "sim"
base_url = "{base_url}"
model = "gpt-4o-mini"
price_input_per_m = 0.15
price_output_per_m = 0.60

[[providers.keys]]
env = "{KEY_ENV}"
alias = "main"
rpm = 100000
tpm = 100000000

[presets.steady]
concurrency = {concurrency}
batch_size = {batch_size}
max_retries = {max_retries}
backoff_base_s = 0.05
backoff_max_s = 0.2
request_timeout_s = 15.0
adaptive_concurrency = false

[simulator]
autostart = true
latency_s = [{latency_s[0]}, {latency_s[1]}]
seconds_per_output_token = 0.0
fault_5xx = {fault_5xx}
fault_429 = {fault_429}
{more}""",
        encoding="utf-8",
    )
    return job


def cli_env(marker: str = "") -> dict[str, str]:
    """The test's environment without the key variable, so the simulator's secrets apply."""
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, MARKER_ENV)}
    if marker:
        env[MARKER_ENV] = marker
    return env


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "tui.cli", *(str(a) for a in args)]


def crawldeck(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end and capture what it printed."""
    return subprocess.run(
        command(*args),
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        start_new_session=True,
    )


@dataclass
class Background:
    """A CLI run in the background; its output goes to files, so no pipe fills up."""

    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8")

    def wait(self) -> int:
        return self.proc.wait(timeout=RUN_TIMEOUT_S)


@contextmanager
def in_background(*args: str | Path, cwd: Path, marker: str = "") -> Iterator[Background]:
    """Start the CLI in its own process group; whatever is left is killed at the end."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            command(*args),
            cwd=cwd,
            env=cli_env(marker),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        yield Background(proc, out, err)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def count_rows(db: Path, table: str = "results") -> int:
    """Rows in a table of the store, read-only; 0 while the store isn't there yet."""
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.DatabaseError:  # not created yet, or mid-checkpoint
        return 0


def wait_for_rows(db: Path, at_least: int, run: Background) -> int:
    """Block until the store holds `at_least` results while the run is still going."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while (found := count_rows(db)) < at_least:
        assert run.proc.poll() is None, (
            f"the run ended (exit {run.proc.returncode}) with {found} results, "
            f"before {at_least}: {run.stderr}"
        )
        assert time.monotonic() < deadline, f"only {found} results after {RUN_TIMEOUT_S}s"
        time.sleep(0.05)
    return found


def simulators_of(pid: int) -> list[psutil.Process]:
    """The bundled simulators a run process has started."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "engine.simulation.simulator" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_for_simulator(run: Background) -> psutil.Process:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (found := simulators_of(run.proc.pid)):
        assert run.proc.poll() is None, f"the run ended before its simulator was seen: {run.stderr}"
        assert time.monotonic() < deadline, "no simulator started"
        time.sleep(0.02)
    assert len(found) == 1, found
    return found[0]


def processes_with_marker(marker: str) -> list[psutil.Process]:
    """Live processes whose environment carries this test's marker."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER_ENV) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def summary_counts(stderr: str) -> tuple[int, int, int]:
    """(done, failed, skipped) from the summary line the run printed last."""
    lines = stderr.strip().splitlines()
    assert lines, "no summary line on stderr"
    found = SUMMARY.search(lines[-1])
    assert found, f"the last stderr line is not a summary: {lines[-1]!r}"
    done, failed, skipped = (int(g) for g in found.groups())
    return done, failed, skipped


def stored_ids(db: Path) -> tuple[list[str], list[tuple[str, str]]]:
    with closing(sqlite3.connect(db)) as conn:
        results = [row[0] for row in conn.execute("SELECT chunk_id FROM results")]
        failures = [(r[0], r[1]) for r in conn.execute("SELECT chunk_id, reason FROM failures")]
    return results, failures


def assert_no_traceback(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output, output


# --------------------------------------------------------------------------
# Resuming


def test_a_run_killed_with_sigkill_resumes_and_stores_every_chunk_exactly_once(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=400, latency_s=(0.2, 0.6), concurrency=8, batch_size=5)
    db = tmp_path / "results.db"
    args = ("run", job, "--headless", "--interval", "0.5")

    with in_background(*args, cwd=tmp_path) as first:
        simulator = wait_for_simulator(first)
        stored_before_kill = wait_for_rows(db, 60, first)
        os.killpg(first.proc.pid, signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
    try:
        # The simulator runs in a session of its own; it notices its parent died.
        simulator.wait(timeout=30)
    except psutil.TimeoutExpired:
        simulator.kill()
        pytest.fail("the simulator outlived the run that was killed with SIGKILL")

    second = crawldeck(*args, cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    results, failures = stored_ids(db)
    assert len(results) == len(set(results)) == 400
    assert failures == []
    done, failed, skipped = summary_counts(second.stderr)
    assert skipped >= stored_before_kill > 0
    assert (done, failed) == (400 - skipped, 0)
    # The killed run's row is marked interrupted, with what it had committed;
    # each row's done is exactly that run's results in the store.
    with closing(sqlite3.connect(db)) as conn:
        runs = conn.execute("SELECT run_id, outcome, summary_json FROM runs ORDER BY run_id")
        (killed, killed_outcome, killed_summary), (rerun, rerun_outcome, rerun_summary) = runs
        per_run = dict(conn.execute("SELECT run_id, COUNT(*) FROM results GROUP BY run_id"))
    assert (killed_outcome, rerun_outcome) == ("interrupted", "done")
    assert json.loads(killed_summary)["done"] == per_run[killed] == skipped
    assert json.loads(rerun_summary)["done"] == per_run[rerun] == done


# --------------------------------------------------------------------------
# Exit codes and messages


def test_a_missing_input_file_is_one_clear_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    job = write_job(tmp_path, input_name="no-such-file.txt")

    run = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert run.returncode != 0
    assert_no_traceback(run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "not found" in lines[0]
    assert "no-such-file.txt" in lines[0]


def test_an_unknown_preset_key_exits_2_with_one_line_naming_file_line_key_and_a_guess(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path)
    text = job.read_text(encoding="utf-8").replace("concurrency = 8", "concurency = 4")
    job.write_text(text, encoding="utf-8")
    line = text.splitlines().index("concurency = 4") + 1

    run = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert run.returncode == 2
    assert_no_traceback(run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"{job}:{line}: ")
    assert "presets.steady.concurency" in lines[0]
    assert "did you mean 'concurrency'" in lines[0]
    assert not (tmp_path / "results.db").exists()


def test_a_real_provider_whose_key_variable_is_unset_exits_2_naming_the_variable(
    tmp_path: Path,
) -> None:
    # Port 9 is never contacted: the run must stop before sending anything.
    job = write_job(tmp_path, base_url="http://127.0.0.1:9/v1")

    run = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert run.returncode == 2
    assert_no_traceback(run.stdout, run.stderr)
    assert KEY_ENV in run.stderr
    assert "not set" in run.stderr


def test_a_provider_that_always_fails_exits_1_and_stores_every_failure_with_its_reason(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=60, latency_s=(0.01, 0.03), fault_5xx=1.0, max_retries=1)

    run = crawldeck("run", job, "--headless", "--interval", "0.5", cwd=tmp_path)

    assert run.returncode == 1, run.stderr
    assert_no_traceback(run.stdout, run.stderr)
    results, failures = stored_ids(tmp_path / "results.db")
    assert results == []
    assert len({chunk for chunk, _ in failures}) == len(failures) == 60
    assert all(reason.startswith("server_error: HTTP 5") for _, reason in failures), failures[0]
    assert summary_counts(run.stderr) == (0, 60, 0)


def test_a_provider_that_answers_429_forever_ends_nonzero_with_one_line_saying_why(
    tmp_path: Path,
) -> None:
    bounds = "[rate_limit_waits]\nkey_streak = 3\nkey_escalations = 1\nkey_escalation_s = 0.1\n"
    job = write_job(tmp_path, records=30, latency_s=(0.01, 0.02), fault_429=1.0, more=bounds)

    run = crawldeck("run", job, "--headless", "--interval", "0.5", cwd=tmp_path)

    assert run.returncode == 1, run.stderr
    assert_no_traceback(run.stdout, run.stderr)
    why, summary = run.stderr.strip().splitlines()
    assert why.startswith("crawldeck: no API key can serve any more (sim/main: rate limited: 429")
    assert summary_counts(summary) == (0, 30, 0)
    assert "[failed]" in run.stdout.strip().splitlines()[-1]
    exported = crawldeck("export", job, "--failures", cwd=tmp_path)
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(rows) == 30
    assert all(row["status"] == "failed" for row in rows)
    assert all(row["reason"].startswith("no usable key: sim/main: rate limited") for row in rows)


def test_a_memory_limit_below_the_process_floor_exits_2_naming_file_line_and_key(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path)
    text = job.read_text(encoding="utf-8").replace(
        "adaptive_concurrency = false", "adaptive_concurrency = false\nmemory_soft_mb = 100"
    )
    job.write_text(text, encoding="utf-8")
    line = text.splitlines().index("memory_soft_mb = 100") + 1

    run = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert run.returncode == 2
    assert_no_traceback(run.stdout, run.stderr)
    (only,) = run.stderr.strip().splitlines()
    assert only.startswith(
        f"{job}:{line}: presets.steady.memory_soft_mb: 100 MB is below this process's own floor of "
    )
    assert not (tmp_path / "results.db").exists()


# --------------------------------------------------------------------------
# Stopping with Ctrl-C


def run_until_some_results_then_interrupt(tmp_path: Path, *, whole_group: bool) -> Background:
    job = write_job(tmp_path, records=200, latency_s=(0.5, 1.0), concurrency=4, batch_size=5)
    with in_background("run", job, "--headless", "--interval", "0.5", cwd=tmp_path) as run:
        wait_for_rows(tmp_path / "results.db", 10, run)
        if whole_group:
            os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            os.kill(run.proc.pid, signal.SIGINT)
        run.wait()
    return run


def assert_drained_then_resumable(tmp_path: Path, run: Background) -> None:
    """The interrupted run stored exactly what it counted; a rerun finishes the rest."""
    assert run.proc.returncode not in (0, None), "stopped early, so not everything is done"
    assert "draining" in run.stderr
    assert_no_traceback(run.stdout, run.stderr)
    db = tmp_path / "results.db"
    results, failures = stored_ids(db)
    assert len(results) == len(set(results))
    assert failures == []
    done, failed, _ = summary_counts(run.stderr)
    assert (done, failed) == (len(results), 0)
    assert 0 < done < 200
    with closing(sqlite3.connect(db)) as conn:
        retries = conn.execute("SELECT count(*) FROM events WHERE kind = 'retry'").fetchone()[0]
    assert retries == 0, "a request in flight was cut off instead of finishing"

    rerun = crawldeck(
        "run",
        tmp_path / "job.toml",
        "--headless",
        "--set",
        "simulator.latency_s=[0.01, 0.05]",
        cwd=tmp_path,
    )

    assert rerun.returncode == 0, rerun.stderr
    results, failures = stored_ids(db)
    assert len(results) == len(set(results)) == 200
    assert failures == []
    assert summary_counts(rerun.stderr) == (200 - done, 0, done)


def test_one_sigint_drains_what_is_in_flight_exits_nonzero_and_a_rerun_finishes(
    tmp_path: Path,
) -> None:
    run = run_until_some_results_then_interrupt(tmp_path, whole_group=False)

    assert_drained_then_resumable(tmp_path, run)


def test_ctrl_c_in_a_terminal_reaches_the_whole_group_and_still_drains_in_flight_work(
    tmp_path: Path,
) -> None:
    run = run_until_some_results_then_interrupt(tmp_path, whole_group=True)

    assert_drained_then_resumable(tmp_path, run)


# --------------------------------------------------------------------------
# A finished run: its JSON status lines, its export, and no simulator left behind


@dataclass(frozen=True)
class FinishedRun:
    folder: Path
    job: Path
    returncode: int
    stdout: str
    stderr: str
    simulator: psutil.Process
    marker: str

    @property
    def db(self) -> Path:
        return self.folder / "results.db"


@pytest.fixture(scope="module")
def finished_json_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    folder = tmp_path_factory.mktemp("finished")
    job = write_job(folder, records=200, latency_s=(0.05, 0.15), concurrency=8, batch_size=5)
    marker = uuid.uuid4().hex
    args = ("run", job, "--headless", "--json", "--interval", "0.2")
    with in_background(*args, cwd=folder, marker=marker) as run:
        simulator = wait_for_simulator(run)
        returncode = run.wait()
    return FinishedRun(folder, job, returncode, run.stdout, run.stderr, simulator, marker)


def test_json_status_lines_all_parse_and_carry_counts(finished_json_run: FinishedRun) -> None:
    run = finished_json_run
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines, "no status lines"

    parsed = [json.loads(line) for line in lines]
    assert all(record["type"] in ("status", "event") for record in parsed)
    records = [record for record in parsed if record["type"] == "status"]
    assert records, "no status lines"
    wanted = {"done", "failed", "skipped", "total"}
    assert all(wanted <= set(record["counts"]) for record in records)
    final = records[-1]
    assert final["state"] == "done"
    assert final["counts"]["done"] == 200


def test_with_json_the_summary_line_goes_to_stderr_not_stdout(
    finished_json_run: FinishedRun,
) -> None:
    run = finished_json_run

    assert summary_counts(run.stderr) == (200, 0, 0)
    assert not SUMMARY.search(run.stdout)


def test_export_jsonl_writes_one_row_per_result_with_its_chunk_id_and_result(
    finished_json_run: FinishedRun,
) -> None:
    run = finished_json_run
    out = run.folder / "out.jsonl"

    export = crawldeck("export", run.job, "--format", "jsonl", "-o", out, cwd=run.folder)

    assert export.returncode == 0, export.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == count_rows(run.db) == 200
    assert all(row["chunk_id"] and row["result"] for row in rows)
    results, _ = stored_ids(run.db)
    assert sorted(row["chunk_id"] for row in rows) == sorted(results)


def test_export_csv_writes_a_header_and_one_row_per_result(
    finished_json_run: FinishedRun,
) -> None:
    run = finished_json_run
    out = run.folder / "out.csv"

    export = crawldeck("export", run.job, "--format", "csv", "-o", out, cwd=run.folder)

    assert export.returncode == 0, export.stderr
    with out.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == count_rows(run.db) == 200
    assert all(row["chunk_id"] and json.loads(row["result"]) for row in rows)


def test_the_simulator_does_not_outlive_a_finished_run(finished_json_run: FinishedRun) -> None:
    run = finished_json_run

    assert not run.simulator.is_running()
    leftovers: Sequence[psutil.Process] = processes_with_marker(run.marker)
    assert leftovers == [], [p.cmdline() for p in leftovers]
