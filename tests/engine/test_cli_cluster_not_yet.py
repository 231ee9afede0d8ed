"""A job file with `[cluster]` is refused by `crawldeck run` until joining a cluster is built.

Running it alone in each process would spend every key's limits once per
process: the refusal names the file, the line and the table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_cluster_job_is_refused_in_one_line_naming_where(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[job]\nname = "j"\ninput = "in.txt"\n\n'
        '[[providers]]\nname = "sim"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
        '[[providers.keys]]\nenv = "K"\n\n'
        '[cluster]\nredis = "redis://127.0.0.1:6379/0"\n',
        encoding="utf-8",
    )
    (tmp_path / "in.txt").write_text("one record\n", encoding="utf-8")

    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", "run", str(job), "--headless"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"{job}:12: cluster: joining a cluster of workers is not built into `crawldeck run` yet; "
        "remove the table to run the job in this one process"
    ]
    assert not (tmp_path / "j.db").exists()
