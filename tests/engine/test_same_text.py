"""The same text under two sources is paid for once, and exported under each.

Real simulator on loopback (which counts the chunk texts it receives), real
openai client, real SQLite in tmp_path, `export_results` as `crawldeck export`
runs it.
"""

from __future__ import annotations

import io
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.engine import Engine
from engine.observe.events import Event, EventKind
from engine.observe.snapshot import JobState
from engine.pipeline.records import chunk_id
from engine.store.export import export_results
from engine.store.sqlite_store import SCHEMA_VERSION
from tests.engine.conftest import job_config, sim_keys, stored

KEYS = [("k1", 60_000, 100_000_000)]


def distinct_line(n: int) -> str:
    return f"record {n}: " + " ".join(f"w{(n * 7 + j) % 97}x{n}" for j in range(25))


def lines_with_repeats(distinct: int, repeats: int) -> list[str]:
    """`distinct` different lines, then `repeats` of them again in other places.

    Each repeat sits right after a line of its own (so some repeats arrive
    while their text is in flight) or far from its first place (answered
    by then): both ways a text is met again.
    """
    lines = [distinct_line(n) for n in range(distinct)]
    for r in range(repeats):
        original = (r * 3) % distinct
        at = original + 1 + r if r % 2 == 0 else len(lines)
        lines.insert(min(at, len(lines)), distinct_line(original))
    return lines


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def exported(db: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    export_results(db, out, "jsonl", include_failures=True)
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_repeated_text_is_sent_once_and_exported_under_every_source(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), latency_s=(0.02, 0.06))
    lines = lines_with_repeats(distinct=80, repeats=20)  # 20 % of the chunks repeat a text
    config, secrets = job_config(tmp_path, write_lines(tmp_path / "in.txt", lines), sim.base_url)
    # One chunk a request, so requests sent and texts sent are the same count.
    config = replace(config, preset=replace(config.preset, batch_size=1))

    engine = Engine(config, secrets)
    state = await engine.run()

    assert state is JobState.DONE
    # Requests sent = distinct texts.  Only a hedge at the job's tail (a second
    # request for a slow one, `Dispatcher._hedge_tail`, cancelled when its twin
    # answers — before or after it reaches the simulator) repeats a text.
    assert engine.stats.requests == 80  # requests that came back
    assert sim.stats.distinct_texts_received == 80
    assert 80 <= sim.stats.chunks_received == sim.stats.admitted <= 80 + engine.stats.hedged
    rows = exported(Path(config.job.store))
    assert len(rows) == 100  # results exported = all chunks
    assert all(row["status"] == "ok" for row in rows)
    assert {row["source"] for row in rows} == {f"in.txt#L{n}" for n in range(1, 101)}
    by_source = {row["source"]: row for row in rows}
    for n, line in enumerate(lines, start=1):
        row = by_source[f"in.txt#L{n}"]
        assert row["chunk_id"] == chunk_id(f"in.txt#L{n}", line)
        assert row["result"]["id"] == row["chunk_id"]  # its own id, not the first one's
    summaries: dict[str, set[str]] = {}
    for n, line in enumerate(lines, start=1):
        summaries.setdefault(line, set()).add(by_source[f"in.txt#L{n}"]["result"]["summary"])
    assert all(len(found) == 1 for found in summaries.values())  # a copy is the same answer
    copies = [row for row in rows if row["cost"] == 0 and row["input_tokens"] == 0]
    assert len(copies) == 20
    counts = engine.snapshot().counts
    assert (counts.done, counts.cached, counts.failed, counts.finished) == (80, 20, 0, 100)
    assert "80 done, 0 failed, 0 skipped, 20 cached" in engine.summary_line()


async def test_a_rerun_copies_stored_answers_and_a_new_prompt_version_sends_again(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS))
    first = [distinct_line(n) for n in range(30)]
    config, secrets = job_config(tmp_path, write_lines(tmp_path / "a.txt", first), sim.base_url)
    first_run = Engine(config, secrets)
    await first_run.run()
    assert first_run.stats.requests == 6  # 30 texts in batches of 5

    # The same texts under new sources, and ten new ones: only the new ten are sent.
    second = [distinct_line(n) for n in range(40)]
    again = replace(
        config, job=replace(config.job, input=str(write_lines(tmp_path / "b.txt", second)))
    )
    engine = Engine(again, secrets)
    assert await engine.run() is JobState.DONE
    assert engine.stats.requests == 2
    assert sim.stats.distinct_texts_received == 40
    counts = engine.snapshot().counts
    assert (counts.done, counts.cached) == (10, 30)
    assert len(stored(Path(config.job.store))[0]) == 70  # every chunk under its own source

    # A changed prompt is a new prompt version: nothing stored answers it yet.
    bumped = replace(again, prompt=replace(again.prompt, version="2"))
    engine = Engine(bumped, secrets)
    assert await engine.run() is JobState.DONE
    assert engine.stats.requests == 8
    assert (engine.snapshot().counts.done, engine.snapshot().counts.cached) == (40, 0)


# What crawldeck wrote before answers were filed by text: store schema 3.
SCHEMA_3 = """
CREATE TABLE results (
    chunk_id TEXT NOT NULL, prompt_version TEXT NOT NULL, model TEXT NOT NULL,
    source TEXT NOT NULL, seq INT NOT NULL, text TEXT NOT NULL, result_json TEXT NOT NULL,
    provider TEXT NOT NULL, key_alias TEXT NOT NULL, input_tokens INT NOT NULL,
    output_tokens INT NOT NULL, latency_ms REAL NOT NULL, cost REAL NOT NULL, run_id INT,
    created_at REAL NOT NULL, PRIMARY KEY (chunk_id, prompt_version, model)
);
CREATE TABLE failures (
    chunk_id TEXT NOT NULL, prompt_version TEXT NOT NULL, model TEXT NOT NULL,
    source TEXT NOT NULL, seq INT NOT NULL, text TEXT NOT NULL, reason TEXT NOT NULL,
    attempts INT NOT NULL, run_id INT, created_at REAL NOT NULL,
    PRIMARY KEY (chunk_id, prompt_version, model)
);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY, job_name TEXT NOT NULL, started_at REAL NOT NULL,
    ended_at REAL, settings_json TEXT NOT NULL, outcome TEXT, summary_json TEXT
);
CREATE TABLE events (
    run_id INT, ts REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL,
    data_json TEXT NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, ts);
CREATE TABLE pages (
    url TEXT NOT NULL, target TEXT NOT NULL, host TEXT NOT NULL, depth INT NOT NULL,
    outcome TEXT NOT NULL, status INT, final_url TEXT NOT NULL, redirects INT NOT NULL,
    bytes INT NOT NULL, elapsed_ms REAL NOT NULL, error TEXT NOT NULL, title TEXT NOT NULL,
    text TEXT, run_id INT, created_at REAL NOT NULL, PRIMARY KEY (target, url)
);
CREATE TABLE drift_baselines (
    baseline_id INTEGER PRIMARY KEY, run_id INT, created_at REAL NOT NULL,
    saved INT NOT NULL DEFAULT 0, baseline_json TEXT NOT NULL
);
PRAGMA user_version = 3;
"""


def old_store(db: Path, answered: list[str]) -> None:
    """A schema-3 store holding an answer for each of `answered`, under source old.txt."""
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA_3)
        for n, text in enumerate(answered, start=1):
            cid = chunk_id(f"old.txt#L{n}", text)
            answer = json.dumps({"id": cid, "summary": f"old answer {n}"})
            conn.execute(
                "INSERT INTO results VALUES (?, '1', 'gpt-4o-mini', ?, 0, ?, ?, 'sim', 'k1',"
                " 10, 5, 12.5, 0.001, 1, 0)",
                (cid, f"old.txt#L{n}", text, answer),
            )


async def test_a_store_from_before_answers_by_text_opens_and_its_answers_serve(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS))
    old = [distinct_line(n) for n in range(12)]
    lines = [distinct_line(n) for n in range(20)]  # the twelve again, and eight new
    config, secrets = job_config(tmp_path, write_lines(tmp_path / "new.txt", lines), sim.base_url)
    old_store(Path(config.job.store), old)

    engine = Engine(config, secrets)
    assert await engine.run() is JobState.DONE

    assert engine.stats.requests == 2  # the eight new texts, in batches of 5
    assert sim.stats.distinct_texts_received == 8
    counts = engine.snapshot().counts
    assert (counts.done, counts.cached) == (8, 12)
    rows = {row["source"]: row for row in exported(Path(config.job.store))}
    assert len(rows) == 32  # the old file's twelve, and all twenty under new.txt
    for n in range(1, 13):
        row = rows[f"new.txt#L{n}"]
        assert row["result"] == {"id": row["chunk_id"], "summary": f"old answer {n}"}
    with sqlite3.connect(config.job.store) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_when_the_first_fails_the_chunks_waiting_on_its_text_are_sent_themselves(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), fault_5xx=1.0, latency_s=(0.05, 0.05))
    # One text under five sources: one is sent, four wait for its answer.
    lines = [distinct_line(7)] * 5
    config, secrets = job_config(tmp_path, write_lines(tmp_path / "in.txt", lines), sim.base_url)
    config = replace(config, preset=replace(config.preset, max_retries=1))
    engine = Engine(config, secrets)

    def heal_after_first_failure(event: Event) -> None:
        if event.kind is EventKind.CHUNK_FAILED:
            sim.set_faults(fault_5xx=0.0)  # the waiting four are sent to a healthy provider

    engine.events.subscribe(heal_after_first_failure)
    state = await engine.run()

    results, failures = stored(Path(config.job.store))
    assert state is JobState.FINISHED_WITH_FAILURES
    assert len(failures) == 1 and "server_error" in failures[0][1]
    assert len(results) == 4
    assert {failures[0][0], *results} == {
        chunk_id(f"in.txt#L{n}", distinct_line(7)) for n in range(1, 6)
    }
    # The first twice (one retry), then the four (a tail hedge may add a request).
    assert sim.stats.chunks_received >= 2 + 4
    counts = engine.snapshot().counts
    assert (counts.done, counts.failed, counts.cached) == (4, 1, 0)
    told = [e.message for e in engine.events.recent() if e.data.get("kind") == "same_text"]
    assert told == ["4 chunk(s) that waited for the same text are sent themselves"]


async def test_when_every_answer_fails_each_duplicate_ends_failed_with_its_reason(
    tmp_path: Path, simulator
) -> None:
    sim = await simulator(keys=sim_keys(KEYS), fault_5xx=1.0)
    lines = [distinct_line(1), distinct_line(2)] * 3
    config, secrets = job_config(tmp_path, write_lines(tmp_path / "in.txt", lines), sim.base_url)
    config = replace(config, preset=replace(config.preset, max_retries=1))

    assert await Engine(config, secrets).run() is JobState.FINISHED_WITH_FAILURES

    results, failures = stored(Path(config.job.store))
    assert results == []
    assert len({cid for cid, _ in failures}) == 6  # none lost
    assert all("server_error" in reason for _, reason in failures)
