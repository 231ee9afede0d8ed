"""Pay once for the same text: a duplicate-text input through `crawldeck run` and `export`.

    python -m tests.benchmarks.same_text [--share 0.2] [--latency 0.05,0.3]

The input is the bundled sample transcripts plus a `mirror/` folder holding
copies of the first of them — the same text under other sources — until
about `--share` of all chunks repeat a text.  A simulator process serves the
job (`python -m engine.simulation.simulator`), `crawldeck run --headless`
runs it and `crawldeck export` writes its results; the simulator's own
counters (`/_sim/stats`) say what it received.  Printed: the input's chunks
and distinct texts (read with the engine's reader and chunker), the chunk
texts the simulator received and how many were distinct, the requests, the
results exported and under how many sources — then the same for a rerun with
a new prompt version, which must send every distinct text again.

Requests: one per batch of distinct texts; a hedge at the job's tail (a
second request for a slow batch, cancelled when its twin answers) may add
a few, and is the only way a text reaches the simulator twice.  The tail
is the last `--concurrency` requests in flight, so the default is low: at
the aggressive preset's concurrency this short job is nearly all tail.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config.settings import JobSettings
from engine.pipeline.chunking import chunk_document
from engine.pipeline.inputs import iter_documents
from engine.pipeline.records import text_key

SAMPLE = Path(__file__).resolve().parents[2] / "engine" / "sample" / "transcripts"
KEY_VARIABLE = "CRAWLDECK_SAME_TEXT_KEY"
CHUNK_TOKENS, OVERLAP_TOKENS = 400, 40


@dataclass(frozen=True)
class Census:
    chunks: int
    distinct_texts: int


def census(input_dir: Path) -> Census:
    """The input's chunks and distinct texts, as the engine reads and cuts them."""
    job = JobSettings(
        name="census",
        input=str(input_dir),
        input_format="documents",
        store="unused.db",
        chunk_tokens=CHUNK_TOKENS,
        chunk_overlap_tokens=OVERLAP_TOKENS,
    )
    keys = [
        text_key(chunk.text)
        for doc in iter_documents(job)
        for chunk in chunk_document(doc, CHUNK_TOKENS, OVERLAP_TOKENS)
    ]
    return Census(len(keys), len(set(keys)))


def build_input(folder: Path, share: float) -> Census:
    """The sample transcripts, then mirrored copies of the first until `share` repeat."""
    shutil.copytree(SAMPLE, folder)
    originals = sorted(p for p in folder.iterdir() if p.is_file())
    mirror = folder / "mirror"
    mirror.mkdir()
    found = census(folder)
    for original in originals:
        repeated = found.chunks - found.distinct_texts
        if repeated >= share * found.chunks:
            break
        shutil.copy(original, mirror / original.name)
        found = census(folder)
    return found


def write_job(path: Path, input_dir: Path, base_url: str, version: str) -> None:
    path.write_text(
        f"""[job]
name = "same-text"
input = "{input_dir}"
input_format = "documents"
store = "{path.parent / "same-text.db"}"
chunk_tokens = {CHUNK_TOKENS}
chunk_overlap_tokens = {OVERLAP_TOKENS}
preset = "aggressive"

[prompt]
version = "{version}"

[[providers]]
name = "sim"
base_url = "{base_url}"
model = "gpt-4o-mini"
price_input_per_m = 0.15
price_output_per_m = 0.60

[[providers.keys]]
env = "{KEY_VARIABLE}"
alias = "bench"
rpm = 6000
tpm = 10000000
""",
        encoding="utf-8",
    )


def crawldeck(*args: str) -> str:
    """Run the installed CLI; its stdout (stderr passed through)."""
    env = {**os.environ, KEY_VARIABLE: "sk-same-text-bench-0000"}
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"crawldeck {' '.join(args)} exited {done.returncode}")
    return done.stdout + done.stderr


def simulator_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_sim/stats") as answer:
        stats: dict[str, Any] = json.load(answer)
    return stats


def exported(job: Path, out: Path) -> tuple[int, int, int]:
    """(rows, distinct sources, distinct chunk ids) of `crawldeck export`."""
    crawldeck("export", str(job), "-o", str(out))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    ids_match = all(row["result"]["id"] == row["chunk_id"] for row in rows)
    if not ids_match:
        raise SystemExit("an exported result names another chunk's id")
    return len(rows), len({row["source"] for row in rows}), len({row["chunk_id"] for row in rows})


def summary_line(output: str) -> str:
    lines = [line for line in output.splitlines() if " done, " in line]
    return lines[-1] if lines else "(no summary line)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--share", type=float, default=0.2, help="chunks that repeat a text")
    parser.add_argument("--latency", default="0.05,0.3", metavar="LOW,HIGH")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="requests in flight: the job's tail (where hedges go) is this many requests",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        found = build_input(work / "input", args.share)
        repeated = found.chunks - found.distinct_texts
        print(
            f"input: {found.chunks} chunks, {found.distinct_texts} distinct texts, "
            f"{repeated} repeat a text ({repeated / found.chunks:.1%})"
        )
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.simulation.simulator",
                "--default-limits",
                "6000:10000000",
                "--latency",
                args.latency,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sim.stdout is not None
            announced = sim.stdout.readline().strip()
            base_url = announced.removeprefix("listening on ")
            job = work / "job.toml"
            before: dict[str, Any] = {"chunks_received": 0, "admitted": 0}
            for version in ("1", "2"):
                write_job(job, work / "input", base_url, version)
                line = summary_line(
                    crawldeck(
                        "run",
                        str(job),
                        "--headless",
                        "--interval",
                        "60",
                        "--set",
                        f"preset.concurrency={args.concurrency}",
                    )
                )
                stats = simulator_stats(base_url)
                rows, sources, ids = exported(job, work / f"v{version}.jsonl")
                print(f"\nprompt version {version}: {line}")
                print(
                    f"  simulator: {stats['chunks_received'] - before['chunks_received']} chunk "
                    f"texts received in {stats['admitted'] - before['admitted']} requests; "
                    f"{stats['distinct_texts_received']} distinct texts received in all"
                )
                print(
                    f"  export: {rows} results in the store, {sources} sources, {ids} chunk ids "
                    f"(each result names its own chunk id)"
                )
                before = stats
        finally:
            sim.terminate()
            sim.wait(timeout=10)


if __name__ == "__main__":
    main()
