"""Exporting a store's results to JSONL and CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from engine.store.export import export_results
from engine.store.sqlite_store import Store
from tests.engine.store.test_store import failure_row, result_row


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """A store with three results and one failure."""
    path = tmp_path / "crawl.db"
    async with await Store.open(path) as store:
        for i in range(3):
            await store.put_result(result_row(i))
        await store.put_failure(failure_row(9, reason="malformed json", attempts=5))
    return path


def test_jsonl_has_one_object_per_result_with_the_result_parsed(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "results.jsonl"

    written = export_results(db, out, "jsonl")

    lines = out.read_text(encoding="utf-8").splitlines()
    assert written == len(lines) == 3
    first = json.loads(lines[0])
    assert first == {
        "chunk_id": "c000000",
        "source": "doc0.txt",
        "seq": 0,
        "prompt_version": "1",
        "model": "m",
        "status": "ok",
        "result": {"summary": "chunk 0"},
        "input_tokens": 100,
        "output_tokens": 20,
        "latency_ms": 12.5,
        "cost": 0.001,
        "provider": "sim",
        "key_alias": "key-a",
    }


def test_failures_are_left_out_unless_asked_for_then_come_with_their_reason(db: Path) -> None:
    out = io.StringIO()

    written = export_results(db, out, "jsonl", include_failures=True)

    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert written == 4
    assert [r["status"] for r in records] == ["ok", "ok", "ok", "failed"]
    failed = records[-1]
    assert (failed["chunk_id"], failed["reason"], failed["attempts"]) == (
        "c000009",
        "malformed json",
        5,
    )
    assert failed["result"] is None


def test_csv_flattens_the_same_fields_with_the_result_as_a_json_string(
    db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.csv"

    written = export_results(db, out, "csv", include_failures=True)

    with out.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert written == len(rows) == 4
    assert json.loads(rows[0]["result"]) == {"summary": "chunk 0"}
    assert (rows[0]["status"], rows[0]["key_alias"], rows[0]["input_tokens"]) == (
        "ok",
        "key-a",
        "100",
    )
    assert (rows[3]["status"], rows[3]["reason"], rows[3]["result"]) == (
        "failed",
        "malformed json",
        "",
    )


async def test_exporting_while_the_store_is_open_sees_what_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    async with await Store.open(path) as store:
        await store.put_result(result_row(1))
        await store.flush()

        assert export_results(path, io.StringIO(), "jsonl") == 1


def test_a_missing_store_is_an_error_not_a_new_empty_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(FileNotFoundError):
        export_results(missing, io.StringIO(), "jsonl")
    assert not missing.exists()
