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
LINE = re.compile(
    r"crawldeck: budget reached: \$(\d+\.\d{4}) of \$(\d+\.\d{4}) spent \(\$(\d+\.\d{4}) by "
    r"earlier runs\); (\d+) chunks not started — raise \[job\] budget_usd (.+) and run again "
    r"to continue"
)


def run_spent(db: Path) -> list[float]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT summary_json FROM runs ORDER BY run_id").fetchall()
    return [float(json.loads(summary)["spent_usd"]) for (summary,) in rows]


def budget_line(stderr: str) -> re.Match[str]:
    (line,) = [line for line in stderr.splitlines() if "budget reached" in line]
    found = LINE.fullmatch(line)
    assert found, line
    return found


def test_a_budget_below_the_jobs_cost_ends_it_with_one_line_and_a_higher_one_finishes_it(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path, records=RECORDS, latency_s=(0.01, 0.02), concurrency=8)
    text = job.read_text(encoding="utf-8")
    job.write_text(text.replace('preset = "steady"\n', 'preset = "steady"\nbudget_usd = 0.002\n'))
    db = tmp_path / "results.db"

    capped = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert capped.returncode == 1, capped.stderr
    assert_no_traceback(capped.stdout, capped.stderr)
    found = budget_line(capped.stderr)
    spent, cap, earlier, not_started, where = found.groups()
    assert (cap, earlier, where) == ("0.0020", "0.0000", f"in {job}")
    done, failed, _ = summary_counts(capped.stderr)
    assert failed == 0 and 0 < done < RECORDS
    assert int(not_started) == RECORDS - done
    assert float(spent) <= 0.002 and run_spent(db)[0] <= 0.002

    # Raised on the command line: the line says so, and earlier runs' spend counts.
    more = crawldeck("run", job, "--headless", "--set", "job.budget_usd=0.004", cwd=tmp_path)

    assert more.returncode == 1, more.stderr
    _spent_more, cap, earlier, not_started, where = budget_line(more.stderr).groups()
    assert (cap, where) == ("0.0040", "with --set job.budget_usd=…")
    assert float(earlier) == float(spent)
    done_more, _, skipped = summary_counts(more.stderr)
    assert skipped == done and done_more > 0 and int(not_started) == RECORDS - done - done_more
    assert sum(run_spent(db)) <= 0.004

    finished = crawldeck("run", job, "--headless", "--set", "job.budget_usd=1", cwd=tmp_path)

    assert finished.returncode == 0, finished.stderr
    assert "budget reached" not in finished.stderr
    assert summary_counts(finished.stderr) == (RECORDS - done - done_more, 0, done + done_more)
    with closing(sqlite3.connect(db)) as conn:
        (results,) = conn.execute("SELECT COUNT(DISTINCT chunk_id) FROM results").fetchone()
    assert results == RECORDS
    assert sum(run_spent(db)) <= 1
