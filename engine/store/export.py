"""Stream a store's results (and optionally its failures) to JSONL or CSV.

A CLI command, so plain `sqlite3` is enough.  Rows are read with a cursor
and written one at a time: a store with millions of results never sits in
memory.  The store is opened read-only, so exporting during a run is safe
(WAL lets a reader work beside the writer) and a wrong path is an error
rather than a new empty database.  A file that is not a crawldeck store (not
SQLite, someone else's SQLite, damaged) is a `StoreError`: one line.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Literal, TextIO

from engine.store.sqlite_store import schema_of, schema_problem
from engine.store.store_error import store_error

ExportFormat = Literal["jsonl", "csv"]
_NAME_A_STORE = "export reads a crawldeck store: name a job file or its results database"

# The order of CSV columns, and of keys in each JSON object.
COLUMNS: tuple[str, ...] = (
    "chunk_id",
    "source",
    "seq",
    "prompt_version",
    "model",
    "status",
    "result",
    "reason",
    "attempts",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "cost",
    "provider",
    "key_alias",
)

# Insertion order (rowid): no sort, so the first row streams out at once.
_RESULTS = """
SELECT chunk_id, source, seq, prompt_version, model, result_json,
       input_tokens, output_tokens, latency_ms, cost, provider, key_alias
FROM results ORDER BY rowid
"""
_FAILURES = """
SELECT chunk_id, source, seq, prompt_version, model, reason, attempts
FROM failures ORDER BY rowid
"""


def export_results(
    db_path: Path,
    out: Path | TextIO,
    fmt: ExportFormat,
    include_failures: bool = False,
) -> int:
    """Write every result (then every failure, if asked) to `out`; return the rows written.

    JSONL: one object per line, `result` parsed back into JSON.  CSV: the
    same fields flattened, `result` as a JSON string.  Results have status
    "ok"; failures have status "failed", a reason and their attempts.
    """
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"unknown export format {fmt!r}: use 'jsonl' or 'csv'")
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"no store at {db_path}")
    uri = f"{db_path.resolve().as_uri()}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            problem = schema_problem(db_path, *schema_of(conn))
            if problem is not None:
                raise problem.advising(_NAME_A_STORE)
            records = _records(conn, include_failures)
            if isinstance(out, Path):
                out.parent.mkdir(parents=True, exist_ok=True)
                # newline="": the csv module writes its own line endings.
                with out.open("w", encoding="utf-8", newline="") as stream:
                    return _write(records, stream, fmt)
            return _write(records, out, fmt)
    except sqlite3.Error as exc:  # only reading the store raises these, never the output
        raise store_error(db_path, exc).advising(_NAME_A_STORE) from exc


def _records(conn: sqlite3.Connection, include_failures: bool) -> Iterator[dict[str, Any]]:
    for row in conn.execute(_RESULTS):
        (chunk_id, source, seq, prompt_version, model, result_json, *usage) = row
        input_tokens, output_tokens, latency_ms, cost, provider, key_alias = usage
        yield {
            "chunk_id": chunk_id,
            "source": source,
            "seq": seq,
            "prompt_version": prompt_version,
            "model": model,
            "status": "ok",
            "result": _parse(result_json),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "latency_ms": latency_ms,
            "cost": cost,
            "provider": provider,
            "key_alias": key_alias,
        }
    if not include_failures:
        return
    for chunk_id, source, seq, prompt_version, model, reason, attempts in conn.execute(_FAILURES):
        yield {
            "chunk_id": chunk_id,
            "source": source,
            "seq": seq,
            "prompt_version": prompt_version,
            "model": model,
            "status": "failed",
            "result": None,
            "reason": reason,
            "attempts": attempts,
        }


def _parse(result_json: str) -> Any:
    # A result the store kept but that isn't JSON is still the answer: pass it through.
    try:
        return json.loads(result_json)
    except (TypeError, ValueError):
        return result_json


def _write(records: Iterator[dict[str, Any]], stream: TextIO, fmt: ExportFormat) -> int:
    written = 0
    if fmt == "jsonl":
        for record in records:
            stream.write(json.dumps(record, ensure_ascii=False))
            stream.write("\n")
            written += 1
        return written
    writer = csv.DictWriter(stream, fieldnames=COLUMNS, restval="")
    writer.writeheader()
    for record in records:
        if record["result"] is not None:
            record["result"] = json.dumps(record["result"], ensure_ascii=False)
        writer.writerow(record)
        written += 1
    return written
