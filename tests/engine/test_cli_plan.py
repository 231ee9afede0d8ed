"""`crawldeck plan`, run as a real subprocess: figures without a request, JSON, bad files.

A plan sends nothing: the bundled simulator is never started and the store
is never created.  Its figures are checked against the run that follows
(requests and chunks) and its errors against `crawldeck run`'s.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tests.engine.test_cli import SUMMARY, crawldeck, write_job

RECORDS = 42
BATCH = 5


def stored_requests(db: Path) -> int:
    """Requests whose answers the store holds: the rows of one share its run, key and latency.

    (The simulator and the run's closing line also count the second requests
    the engine sends for slow batches at a job's tail.)
    """
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as conn:
        sql = "SELECT COUNT(*) FROM (SELECT DISTINCT run_id, key_alias, latency_ms FROM results)"
        return int(conn.execute(sql).fetchone()[0])


def test_plan_prints_the_work_and_json_gives_the_same_figures(tmp_path: Path) -> None:
    job = write_job(tmp_path, records=RECORDS, batch_size=BATCH)

    table = crawldeck("plan", job, cwd=tmp_path)
    as_json = crawldeck("plan", job, "--json", cwd=tmp_path)

    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    plan = json.loads(as_json.stdout)
    assert plan["input"]["chunks"] == RECORDS
    assert plan["requests"] == 9  # 42 chunks, 5 a request
    assert plan["time"]["binds"] == "concurrency"  # 8 in flight, limits far above the job
    # The bundled simulator's answers are a function of the input: counted, not guessed.
    assert plan["tokens"]["output_source"] == "the simulator's answers to this input"
    assert plan["cost_usd"]["batch"] == pytest.approx(plan["cost_usd"]["online"] / 2, abs=1e-6)
    assert {k["alias"] for k in plan["keys"]} == {"main"}
    assert [m["like"] for m in plan["one_more_key"]] == ["main"]
    for line in ("requests", "cost online", "cost in batch mode", "Binds: concurrency"):
        assert line in table.stdout
    assert not (tmp_path / "results.db").exists()  # nothing was sent, nothing stored

    run = crawldeck("run", job, "--headless", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    match = SUMMARY.search(run.stdout + run.stderr)
    assert match is not None and int(match[1]) == RECORDS
    assert stored_requests(tmp_path / "results.db") == plan["requests"]
    with closing(sqlite3.connect(tmp_path / "results.db")) as conn:
        (answered,) = conn.execute("SELECT SUM(output_tokens) FROM results").fetchone()
    assert abs(plan["tokens"]["output"] - answered) <= 0.05 * answered

    after = json.loads(crawldeck("plan", job, "--json", cwd=tmp_path).stdout)
    assert (after["input"]["already_done"], after["requests"]) == (RECORDS, 0)
    assert after["tokens"]["output_source"] == f"stored results ({RECORDS} chunks)"


def test_a_bad_job_file_gets_the_same_one_line_error_as_run(tmp_path: Path) -> None:
    job = write_job(tmp_path, more="[presets.fast]\nconcurency = 3\n")

    planned = crawldeck("plan", job, cwd=tmp_path)
    ran = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert planned.returncode == ran.returncode == 2
    assert planned.stderr == ran.stderr
    assert "concurency: unknown key (did you mean 'concurrency'?)" in planned.stderr


def test_a_missing_input_gets_the_same_one_line_error_as_run(tmp_path: Path) -> None:
    job = write_job(tmp_path, input_name="nowhere.txt")

    planned = crawldeck("plan", job, cwd=tmp_path)
    ran = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert planned.returncode == ran.returncode == 2
    assert planned.stderr == ran.stderr != ""
    assert len(planned.stderr.splitlines()) == 1
