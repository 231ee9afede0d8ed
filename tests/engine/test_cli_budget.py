"""`crawldeck run` with a budget, as a user sees it: one line, exit 1, a rerun that finishes.

Real subprocesses against the bundled simulator, real SQLite files.
"""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

from tests.engine.test_cli import assert_no_traceback, crawldeck, summary_counts, write_job

RECORDS = 200


def run_spent(db: Path) -> list[float]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT summary_json FROM runs ORDER BY run_id").fetchall()
    return [float(json.loads(summary)["spent_usd"]) for (summary,) in rows]


def test_a_budget_below_the_jobs_cost_ends_it_with_one_line_and_a_higher_one_finishes_it(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=RECORDS, latency_s=(0.01, 0.02), concurrency=8)
    db = tmp_path / "results.db"

    capped = crawldeck("run", job, "--headless", "--set", "job.budget_usd=0.005", cwd=tmp_path)

    assert capped.returncode == 1, capped.stderr
    assert_no_traceback(capped.stdout, capped.stderr)
    (line,) = [line for line in capped.stderr.splitlines() if "budget reached" in line]
    found = re.fullmatch(
        r"crawldeck: budget reached: \$(\d+\.\d{4}) of \$0\.0050 spent \(\$0\.0000 by earlier "
        rf"runs\); (\d+) chunks not started — raise \[job\] budget_usd in {re.escape(str(job))} "
        r"and run again to continue",
        line,
    )
    assert found, line
    done, failed, _ = summary_counts(capped.stderr)
    assert failed == 0 and 0 < done < RECORDS
    assert int(found.group(2)) == RECORDS - done
    assert float(found.group(1)) <= 0.005
    assert run_spent(db)[0] <= 0.005

    finished = crawldeck("run", job, "--headless", "--set", "job.budget_usd=1", cwd=tmp_path)

    assert finished.returncode == 0, finished.stderr
    assert "budget reached" not in finished.stderr
    assert summary_counts(finished.stderr) == (RECORDS - done, 0, done)
    with closing(sqlite3.connect(db)) as conn:
        (results,) = conn.execute("SELECT COUNT(DISTINCT chunk_id) FROM results").fetchone()
    assert results == RECORDS
    assert sum(run_spent(db)) <= 1
