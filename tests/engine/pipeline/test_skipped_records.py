"""Input records that are skipped are counted, shown and decide the exit status.

A skipped record (not readable as its format, binary, or without text) is
not a chunk: it is counted apart from the chunks "skipped" because an earlier
run did them.  The engine runs on the real simulator with real SQLite
stores; the command line runs as a real subprocess.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

from engine.config.settings import CrawlSettings
from engine.engine import Engine
from engine.observe.exit_status import RECORDS_SKIPPED, job_exit_status
from engine.observe.headless_reporter import snapshot_record, status_line
from engine.observe.snapshot import Counts, JobState
from engine.observe.snapshot_codec import decode_snapshot, encode_snapshot
from engine.simulation.simulator import ProviderSimulator
from tests.engine.conftest import job_config, sim_keys
from tests.engine.test_cli import (
    RUN_TIMEOUT_S,
    assert_no_traceback,
    cli_env,
    command,
    crawldeck,
    in_background,
    summary_counts,
    write_job,
)

KEYS = (("k1", 60_000, 100_000_000),)
BAD_LINES = [
    "not json at all",
    '{"body": "no text key"}',
    '{"text": ""}',
    '{"text": null}',
    json.dumps({"text": "".join(chr(c) for c in range(1, 9)) * 8}),  # control characters
]


def mixed_jsonl(path: Path, good: int) -> Path:
    """`good` readable records, with every kind of skipped record among them."""
    lines = [json.dumps({"text": f"record {i}: " + "words " * 20}) for i in range(good)]
    for offset, bad in enumerate(BAD_LINES):
        lines.insert(1 + offset * 3, bad)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def runs_rows(db: Path) -> list[tuple[str, dict[str, object]]]:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT outcome, summary_json FROM runs ORDER BY run_id").fetchall()
    return [(outcome, json.loads(summary)) for outcome, summary in rows]


async def test_skipped_records_are_counted_apart_from_chunks_done_before(
    tmp_path: Path, simulator: Callable[..., ProviderSimulator]
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.01, 0.02))  # type: ignore[misc]
    config, secrets = job_config(
        tmp_path, mixed_jsonl(tmp_path / "in.jsonl", 20), sim.base_url, KEYS
    )
    config = replace(config, job=replace(config.job, input_format="jsonl"))

    first = Engine(config, secrets)
    assert await first.run() is JobState.DONE
    again = Engine(config, secrets)
    assert await again.run() is JobState.DONE

    counts = first.snapshot().counts
    assert (counts.done, counts.skipped, counts.records_skipped) == (20, 0, len(BAD_LINES))
    rerun = again.snapshot().counts
    assert (rerun.done, rerun.skipped, rerun.records_skipped) == (0, 20, len(BAD_LINES))

    snap = first.snapshot()
    warnings = [e.message for e in snap.events if e.message.startswith("skipped input record")]
    assert len(warnings) == len(BAD_LINES)
    assert (
        warnings[0]
        == "skipped input record: in.jsonl:2: not JSON (Expecting value: line 1 column 1)"
    )
    assert "5 input records skipped" in first.summary_line()
    assert "input records skipped 5)" in status_line(snap)
    assert snapshot_record(snap)["counts"]["records_skipped"] == 5  # status --json
    assert decode_snapshot(encode_snapshot(snap)).counts == counts  # the control socket
    assert [summary["records_skipped"] for _, summary in runs_rows(Path(config.job.store))] == [
        5,
        5,
    ]
    assert job_exit_status(JobState.DONE, counts) == RECORDS_SKIPPED


async def test_a_job_whose_every_record_is_skipped_fails_with_one_line_saying_so(
    tmp_path: Path, simulator: Callable[..., ProviderSimulator]
) -> None:
    sim = await simulator(keys=sim_keys(KEYS))  # type: ignore[misc]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(BAD_LINES) + "\n", encoding="utf-8")
    config, secrets = job_config(tmp_path, path, sim.base_url, KEYS)
    config = replace(config, job=replace(config.job, input_format="jsonl"))
    engine = Engine(config, secrets)

    assert await engine.run() is JobState.FAILED

    assert engine.failure_reason.startswith("input: every record was skipped (5), nothing was sent")
    assert "\n" not in engine.failure_reason
    assert engine.snapshot().counts.records_skipped == 5
    assert runs_rows(Path(config.job.store))[0][0] == "failed"
    assert sim.stats.requests == 0


async def test_a_crawl_whose_every_target_line_is_skipped_fails(
    tmp_path: Path, simulator: Callable[..., ProviderSimulator]
) -> None:
    sim = await simulator(keys=sim_keys(KEYS))  # type: ignore[misc]
    targets = tmp_path / "domains.txt"
    targets.write_text("# a comment is no target\nnot a domain!\nftp://files.test/\n")
    config, secrets = job_config(tmp_path, tmp_path / "unused.txt", sim.base_url, KEYS)
    config = replace(
        config,
        job=replace(config.job, input=""),
        crawl=CrawlSettings(targets=str(targets), contact="ops@example.com", extract_workers=1),
    )
    engine = Engine(config, secrets)

    assert await engine.run() is JobState.FAILED

    assert engine.snapshot().counts.records_skipped == 2
    assert "every record was skipped (2)" in engine.failure_reason


def test_the_exit_status_tells_done_from_done_with_records_skipped() -> None:
    assert job_exit_status(JobState.DONE, Counts(done=3)) == 0
    assert job_exit_status(JobState.DONE, Counts(done=3, records_skipped=1)) == 3
    assert job_exit_status(JobState.DONE, Counts(skipped=3)) == 0  # done before: still clean
    for state in (JobState.FINISHED_WITH_FAILURES, JobState.STOPPED, JobState.FAILED, None):
        assert job_exit_status(state, Counts(done=3, records_skipped=1)) == 1


# --------------------------------------------------------------------------
# The command line


def jsonl_job(folder: Path, lines: list[str], **job: object) -> Path:
    """A CLI job (see test_cli.write_job) over a JSONL file of these lines."""
    path = write_job(folder, input_name="in.jsonl", **job)  # type: ignore[arg-type]
    (folder / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.write_text(
        path.read_text().replace('input_format = "text"', 'input_format = "jsonl"'),
        encoding="utf-8",
    )
    return path


def test_the_cli_exits_3_when_done_with_records_skipped_and_1_when_all_were(
    tmp_path: Path,
) -> None:
    good = [json.dumps({"text": f"record {i}: " + "words " * 20}) for i in range(10)]
    some = jsonl_job(tmp_path / "some", [*good[:5], *BAD_LINES, *good[5:]])
    every = jsonl_job(tmp_path / "every", BAD_LINES)

    done = crawldeck("run", some, "--headless", "--interval", "60", cwd=some.parent)
    failed = crawldeck("run", every, "--headless", "--interval", "60", cwd=every.parent)

    assert done.returncode == 3, done.stderr
    assert summary_counts(done.stderr) == (10, 0, 0)
    assert "5 input records skipped" in done.stderr.strip().splitlines()[-1]
    assert "input records skipped 5)" in done.stdout.strip().splitlines()[-1]
    assert "in.jsonl:6: not JSON" in done.stdout  # each one is in the headless output too

    assert failed.returncode == 1, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert lines[0] == (
        "crawldeck: input: every record was skipped (5), nothing was sent; "
        "the event log names each with its file, line and why"
    )
    assert len(lines) == 2  # that line and the summary
    assert_no_traceback(done.stdout, done.stderr, failed.stdout, failed.stderr)


def test_a_binary_input_file_is_refused_in_one_line_before_anything_runs(tmp_path: Path) -> None:
    job = jsonl_job(tmp_path, [])
    (tmp_path / "in.jsonl").write_bytes(random.Random(3).randbytes(100_000))

    run = crawldeck("run", job, "--headless", cwd=tmp_path)

    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr == (
        f"crawldeck: {tmp_path / 'in.jsonl'}: not text: NUL bytes in its first 8 KiB "
        "(a binary file, or UTF-16)\n"
    )
    assert not (tmp_path / "results.db").exists()


def test_status_json_of_a_running_job_carries_its_skipped_records(tmp_path: Path) -> None:
    good = [json.dumps({"text": f"record {i}: " + "words " * 20}) for i in range(300)]
    job = jsonl_job(
        tmp_path, [*BAD_LINES, *good], latency_s=(0.3, 0.6), concurrency=2, batch_size=5
    )
    sock = tmp_path / "results.db.crawldeck" / "control.sock"

    with in_background("run", job, "--headless", "--interval", "60", cwd=tmp_path) as run:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        record: dict[str, object] = {}
        while record.get("records_skipped") != len(BAD_LINES):
            assert run.proc.poll() is None, run.stderr
            assert time.monotonic() < deadline, f"status never counted them: {record}"
            if sock.exists():
                status = subprocess.run(
                    command("status", job, "--json"),
                    cwd=tmp_path,
                    env=cli_env(),
                    capture_output=True,
                    text=True,
                    timeout=RUN_TIMEOUT_S,
                )
                if status.returncode == 0:
                    record = json.loads(status.stdout)["counts"]
            time.sleep(0.1)
        os.kill(run.proc.pid, signal.SIGINT)  # drain: stopped early, so exit 1
        assert run.wait() == 1

    assert record["skipped"] == 0  # the other "skipped": chunks done before
