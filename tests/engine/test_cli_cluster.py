"""What `crawldeck run` refuses for a job file with `[cluster]`, in one line, before anything runs.

(Workers sharing a job for real: `tests/engine/cluster/test_workers_share_a_job.py`.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def write_job(folder: Path, *, redis_url: str, more: str = "") -> Path:
    job = folder / "job.toml"
    job.write_text(
        '[job]\nname = "j"\ninput = "in.txt"\n\n'
        '[[providers]]\nname = "sim"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
        '[[providers.keys]]\nenv = "K"\n\n'
        f'[cluster]\nredis = "{redis_url}"\noutage_limit_s = 1\n{more}',
        encoding="utf-8",
    )
    (folder / "in.txt").write_text("one record\n", encoding="utf-8")
    return job


def crawldeck(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"K": "sk-unused", "PATH": "/usr/bin:/bin"},
    )


def test_fresh_is_refused_for_a_shared_job(tmp_path: Path) -> None:
    job = write_job(tmp_path, redis_url="redis://127.0.0.1:6379/0")

    done = crawldeck("run", job, "--headless", "--fresh")

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "crawldeck: --fresh: a job shared through Redis is not started over from one worker "
        "(the others may be on it): give every worker a new [cluster] prefix and job.store "
        "instead, e.g. --set cluster.prefix=NAME --set job.store=NEW.db"
    ]


def test_a_worker_whose_redis_is_not_there_ends_in_one_line_within_the_outage_limit(
    tmp_path: Path,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    job = write_job(tmp_path, redis_url=url)
    started = time.monotonic()

    done = crawldeck("run", job, "--headless")

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"crawldeck: Redis at {url} did not answer for 1 s ([cluster] outage_limit_s): "
    )
    assert time.monotonic() - started < 30
    assert not (tmp_path / "j.db").exists(), "nothing ran"


def test_a_worker_without_the_input_and_nobody_reading_it_ends_in_one_line_naming_it(
    tmp_path: Path,
) -> None:
    """A shared job's input that is not on this machine is no error by itself (another
    worker may have it); with no worker reading it, the run ends failed, saying so."""
    with RedisServer(tmp_path / "redis") as server:
        job = write_job(tmp_path, redis_url=server.url, more="visibility_timeout_s = 1\n")
        (tmp_path / "in.txt").unlink()

        done = crawldeck("run", job, "--headless")

    assert done.returncode != 0
    assert (
        f"input {tmp_path / 'in.txt'} is not on this machine, and no worker that has it "
        "enqueued it within 1s"
    ) in done.stderr
