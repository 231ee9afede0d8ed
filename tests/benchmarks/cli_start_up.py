"""How long the light commands take to start, next to a bare interpreter.

    python -m tests.benchmarks.cli_start_up [--rounds R]

Times, as wall clock around each process, side by side in one run:

- `python -c pass` — the interpreter alone, the floor every command pays;
- `crawldeck --help` and `crawldeck --version`;
- `crawldeck status JOB.toml` against a headless job running in the
  background (the bundled simulator with slow answers keeps it running);
- `python -c "import engine.engine"` — for reference, what the command line
  used to import before any command ran.

The commands run interleaved, one of each per round (R rounds, default 9),
so a busy moment on this shared machine falls on all of them alike.  Prints
each command's median and its difference from `python -c pass`.  The goal
(under 0.4 s for `--help`, `--version` and `status`) is printed next to the
figures, never asserted: which heavy modules those commands avoid is
asserted, deterministically, by `tests/engine/test_cli_imports.py`.

The environment is used as it is: with PYTHONDONTWRITEBYTECODE set (as on
the project's helper machines) every module is compiled on each start, which
the figures include; the line above the table says which it was, and the
load average at the start (the helpers share two cores: under a load of 5
every figure, the floor included, is about three times its quiet value).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

GOAL_S = 0.4
LIGHT = ("--help", "--version", "status")
START_TIMEOUT_S = 120.0  # a hang guard for the background job only

JOB = """\
[job]
name = "start-up-benchmark"
input = "records.txt"
input_format = "text"
store = "results.db"
chunk_overlap_tokens = 0
preset = "slow"

[[providers]]
name = "sim"
base_url = "http://127.0.0.1:0/v1"
model = "gpt-4o-mini"

[[providers.keys]]
env = "CRAWLDECK_START_UP_BENCHMARK_KEY"

[presets.slow]
concurrency = 2
batch_size = 5
request_timeout_s = 600.0
adaptive_concurrency = false

[simulator]
autostart = true
latency_s = [300.0, 600.0]
"""


def crawldeck() -> list[str]:
    """The installed console script if there is one (what users type), else `-m tui.cli`."""
    script = Path(sys.executable).with_name("crawldeck")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tui.cli"]


@contextmanager
def running_job(folder: Path) -> Iterator[Path]:
    """A headless job that keeps running until the block ends; yields its job file."""
    job = folder / "job.toml"
    job.write_text(JOB, encoding="utf-8")
    (folder / "records.txt").write_text(
        "".join(f"record {i}: some words to send\n" for i in range(200)), encoding="utf-8"
    )
    socket = folder / "results.db.crawldeck" / "control.sock"
    with (folder / "job.log").open("wb") as log:
        proc = subprocess.Popen(
            [*crawldeck(), "run", str(job), "--headless"],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # Another process's socket file has no event to wait on: look for it.
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (folder / "job.log").read_text(encoding="utf-8", errors="replace")
                raise RuntimeError(f"the background job never served its socket:\n{log_text}")
            time.sleep(0.1)
        yield job
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its answers are minutes away; nothing to keep
        proc.wait()


def timed(argv: Sequence[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - start


def main(rounds: int) -> int:
    bytecode = "off (compiled on every start)" if sys.dont_write_bytecode else "on"
    with tempfile.TemporaryDirectory(prefix="crawldeck-start-up-") as tmp:
        folder = Path(tmp)
        with running_job(folder) as job:
            commands: dict[str, list[str]] = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "crawldeck --help": [*crawldeck(), "--help"],
                "crawldeck --version": [*crawldeck(), "--version"],
                "crawldeck status": [*crawldeck(), "status", str(job)],
                "import engine.engine": [sys.executable, "-c", "import engine.engine"],
            }
            for argv in commands.values():  # once each, untimed: disk caches warm alike
                timed(argv, folder)
            times: dict[str, list[float]] = {name: [] for name in commands}
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(
                f"{rounds} rounds, interleaved; bytecode cache {bytecode}; "
                f"load average {load} on {os.cpu_count()} cores",
                flush=True,
            )
            for _ in range(rounds):
                for name, argv in commands.items():
                    times[name].append(timed(argv, folder))
    floor = statistics.median(times["python -c pass"])
    print(f"{'command':22} {'median s':>9} {'min s':>7} {'max s':>7} {'- python -c pass':>17}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{name:22} {median:9.3f} {min(samples):7.3f} {max(samples):7.3f} "
            f"{median - floor:+17.3f}"
        )
    for name in (f"crawldeck {command}" for command in LIGHT):
        median = statistics.median(times[name])
        verdict = "under" if median < GOAL_S else "OVER"
        print(f"{name}: median {median:.3f} s, {verdict} the {GOAL_S} s goal")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9, help="timed runs of each command")
    sys.exit(main(max(1, parser.parse_args().rounds)))
