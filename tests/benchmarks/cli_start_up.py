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
each command's median wall time, its difference from `python -c pass`, and
its median CPU time (user + system: less swayed by other processes' load).  The goal
(under 0.4 s for `--help`, `--version` and `status`) is printed next to the
figures, never asserted: which heavy modules those commands avoid is
asserted, deterministically, by `tests/engine/test_cli_imports.py`.

Each command runs in two environments, interleaved too: "as is" (this
shell's; with PYTHONDONTWRITEBYTECODE set, as on the project's helper
machines, every module, openai's included, is compiled from source on each
start) and "cached" (bytecode kept, in a temporary folder, as a user's
install keeps it after the first run).  The first line gives the load
average: the machines are shared, and under a load of 5 on 2 cores every
figure, the floor included, is two to three times its quiet value.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
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


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of `argv` to its end."""
    cpu, start = children_cpu_s(), time.perf_counter()
    subprocess.run(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True
    )
    return time.perf_counter() - start, children_cpu_s() - cpu


def environments(folder: Path) -> dict[str, dict[str, str]]:
    """This shell's environment, and the same with a bytecode cache in `folder`."""
    as_is = dict(os.environ)
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")  # never into the source tree
    return {"as is": as_is, "cached": cached}


def main(rounds: int) -> int:
    with tempfile.TemporaryDirectory(prefix="crawldeck-start-up-") as tmp:
        folder = Path(tmp)
        envs = environments(folder)
        with running_job(folder) as job:
            commands: dict[str, list[str]] = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "crawldeck --help": [*crawldeck(), "--help"],
                "crawldeck --version": [*crawldeck(), "--version"],
                "crawldeck status": [*crawldeck(), "status", str(job)],
                "import engine.engine": [sys.executable, "-c", "import engine.engine"],
            }
            runs = [(name, env) for name in commands for env in envs]
            for name, env in runs:  # once each, untimed: fills the cache, warms the disk
                timed(commands[name], folder, envs[env])
            times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
            cpu: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            as_is = "off" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
            print(
                f"{rounds} rounds, interleaved; load average {load} on {os.cpu_count()} cores; "
                f"bytecode cache 'as is' {as_is}, 'cached' on",
                flush=True,
            )
            for _ in range(rounds):
                for name, env in runs:
                    wall, used = timed(commands[name], folder, envs[env])
                    times[name, env].append(wall)
                    cpu[name, env].append(used)
    medians = {run: statistics.median(samples) for run, samples in times.items()}
    head = "".join(f" | {env:>6}: wall {'min':>6} {'- pass':>7} {'cpu':>6}" for env in envs)
    print(f"{'medians, seconds':22}{head}")
    for name in commands:
        cells = ""
        for env in envs:
            median, floor = medians[name, env], medians["python -c pass", env]
            cells += (
                f" | {median:12.3f} {min(times[name, env]):6.3f} {median - floor:+7.3f} "
                f"{statistics.median(cpu[name, env]):6.3f}"
            )
        print(f"{name:22}{cells}")
    for name in (f"crawldeck {command}" for command in LIGHT):
        verdicts = ", ".join(
            f"{env} {medians[name, env]:.3f} s "
            f"({'under' if medians[name, env] < GOAL_S else 'OVER'})"
            for env in envs
        )
        print(f"{name}: median {verdicts} against the {GOAL_S} s goal")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9, help="timed runs of each command")
    sys.exit(main(max(1, parser.parse_args().rounds)))
