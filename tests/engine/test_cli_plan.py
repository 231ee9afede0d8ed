"""`crawldeck plan`, run as a real subprocess: figures without a request, JSON, bad files.

A plan sends nothing: the bundled simulator is never started and the store
is never created.  Its figures are checked against the run that follows
(requests and chunks) and its errors against `crawldeck run`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.engine.test_cli import SUMMARY, crawldeck, write_job

RECORDS = 42
BATCH = 5


def test_plan_prints_the_work_and_json_gives_the_same_figures(tmp_path: Path) -> None:
    job = write_job(tmp_path, records=RECORDS, batch_size=BATCH)

    table = crawldeck("plan", job, cwd=tmp_path)
    as_json = crawldeck("plan", job, "--json", cwd=tmp_path)

    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    plan = json.loads(as_json.stdout)
    assert plan["input"]["chunks"] == RECORDS
    assert plan["requests"] == 9  # 42 chunks, 5 a request
    assert plan["time"]["binds"] == "concurrency"  # 8 in flight, limits far above the job
    assert plan["tokens"]["output_source"] == "default (150 a chunk)"
    assert plan["cost_usd"]["batch"] == plan["cost_usd"]["online"] / 2
    assert {k["alias"] for k in plan["keys"]} == {"main"}
    assert [m["like"] for m in plan["one_more_key"]] == ["main"]
    for line in ("requests", "cost online", "cost in batch mode", "Binds: concurrency"):
        assert line in table.stdout
    assert not (tmp_path / "results.db").exists()  # nothing was sent, nothing stored

    run = crawldeck("run", job, "--headless", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    match = SUMMARY.search(run.stdout + run.stderr)
    assert match is not None and int(match[1]) == RECORDS
    assert f" {plan['requests']} requests " in run.stdout + run.stderr

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
