"""Store trouble: one `StoreError` line naming the file, and nothing stored is lost.

Real files in `tmp_path`: text and random bytes where a store should be,
someone else's SQLite database, a damaged store, a write lock held by another
process, and a store capped with `max_pages`, which makes SQLite answer as a
full disk does (SQLITE_FULL).  The writer failing must not hang anyone, and
only what it committed is reported as committed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

import engine.store.sqlite_store
from engine.store.run_lease import RunLease, is_alive
from engine.store.sqlite_store import INTERRUPTED, Committed, Store
from engine.store.store_error import StoreError
from tests.engine.store.test_store import REPO_ROOT, failure_row, query, result_row
from tests.engine.store.write_lock import write_lock_held

HANG_GUARD_S = 30.0  # only guards against a hang; everything here ends in well under a second


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results.db"


@pytest.fixture
def short_busy_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give up on another process's lock after 0.3 s instead of 10 s."""
    monkeypatch.setattr(engine.store.sqlite_store, "BUSY_TIMEOUT_MS", 300)


def assert_one_line_about(error: StoreError, db: Path, *words: str) -> None:
    line = str(error)
    assert "\n" not in line
    assert line.startswith(f"{db}: "), line
    for word in words:
        assert word in line, line


async def store_with_results(db: Path, count: int) -> None:
    """A real store holding `count` results."""
    async with await Store.open(db) as store:
        for i in range(count):
            await store.put_result(result_row(i))


# -- files that are not a store ------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"these are my notes, not a database\n" * 40, os.urandom(16384)],
    ids=["text", "random-bytes"],
)
async def test_a_file_that_is_not_sqlite_is_refused_and_left_as_it_was(
    db: Path, content: bytes
) -> None:
    db.write_bytes(content)

    with pytest.raises(StoreError) as refused:
        await Store.open(db)

    assert_one_line_about(refused.value, db, "not a SQLite database")
    assert db.read_bytes() == content


async def test_someone_elses_sqlite_database_is_refused_untouched(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE people (name TEXT)")
        conn.execute("INSERT INTO people VALUES ('ann')")
        conn.commit()
    before = db.read_bytes()

    with pytest.raises(StoreError) as refused:
        await Store.open(db)

    assert_one_line_about(refused.value, db, "not a crawldeck store", "people")
    assert db.read_bytes() == before  # no tables added, not even switched to WAL
    assert query(db, "PRAGMA journal_mode") == [("delete",)]


async def test_a_table_of_our_name_without_our_columns_is_refused(db: Path) -> None:
    await store_with_results(db, 1)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("ALTER TABLE results DROP COLUMN result_json")
        conn.commit()

    with pytest.raises(StoreError) as refused:
        await Store.open(db)

    assert_one_line_about(refused.value, db, "table results has no column result_json")


async def test_a_damaged_store_is_refused_and_says_so(db: Path) -> None:
    await store_with_results(db, 50)
    with db.open("r+b") as raw:  # overwrite the schema on page 1, past the 100-byte header
        raw.seek(100)
        raw.write(b"\xff" * 3000)

    with pytest.raises(StoreError) as refused:
        await Store.open(db)

    assert_one_line_about(refused.value, db, "damaged")


# -- another process holds the write lock ---------------------------------------


async def test_a_lock_held_by_another_process_shows_at_the_probe(
    db: Path, short_busy_wait: None
) -> None:
    await store_with_results(db, 10)

    with write_lock_held(db), pytest.raises(StoreError) as refused:
        await Store.probe(db)

    assert_one_line_about(refused.value, db, "locked by another process", "job.store=")
    assert query(db, "SELECT COUNT(*) FROM results") == [(10,)]
    await Store.probe(db)  # free again: the probe left nothing behind


async def test_the_writer_failing_on_a_lock_fails_every_later_put_at_once(
    db: Path, short_busy_wait: None
) -> None:
    committed: list[Committed] = []
    store = await Store.open(db, batch_rows=10, batch_ms=5, on_commit=committed.append)
    writer = asyncio.create_task(store.run_writer())
    for i in range(30):
        await store.put_result(result_row(i))
    await store.flush()

    with write_lock_held(db):
        # The queue holds 40 rows: the puts past it wait on the writer, then fail.
        async with asyncio.timeout(HANG_GUARD_S):
            with pytest.raises(StoreError) as failed:
                for i in range(30, 200):
                    await store.put_result(result_row(i))
            with pytest.raises(StoreError):
                await writer
            with pytest.raises(StoreError):
                await store.put_failure(failure_row(500))
            with pytest.raises(StoreError):
                await store.flush()
            await store.close()

    assert_one_line_about(failed.value, db, "locked by another process")
    assert store.failure is failed.value
    stored = query(db, "SELECT COUNT(*) FROM results")[0][0]
    assert stored == sum(c.results for c in committed) == 30


# -- a full disk ------------------------------------------------------------------


async def test_a_full_disk_fails_the_writer_and_keeps_every_committed_row(db: Path) -> None:
    await store_with_results(db, 20)
    [(pages,)] = query(db, "PRAGMA page_count")
    assert isinstance(pages, int)
    committed: list[Committed] = []
    # A few pages of room: SQLite then answers SQLITE_FULL, as on a full disk.
    store = await Store.open(
        db, batch_rows=20, batch_ms=5, on_commit=committed.append, max_pages=pages + 8
    )
    writer = asyncio.create_task(store.run_writer())

    async with asyncio.timeout(HANG_GUARD_S):
        with pytest.raises(StoreError) as failed:
            for i in range(20, 5000):
                await store.put_result(result_row(i))
        with pytest.raises(StoreError):
            await writer
        await store.close()

    assert_one_line_about(failed.value, db, "disk full", "kept")
    stored = query(db, "SELECT COUNT(*) FROM results")[0][0]
    assert stored == 20 + sum(c.results for c in committed)
    assert stored > 20, "the cap left no room at all: the test proves nothing"
    assert {chunk for (chunk,) in query(db, "SELECT chunk_id FROM results")} >= {
        f"c{i:06d}" for i in range(20)
    }


# -- what is counted -----------------------------------------------------------------


async def test_on_commit_counts_results_and_failures_that_took_not_those_handed_over(
    db: Path,
) -> None:
    committed: list[Committed] = []
    async with await Store.open(db, on_commit=committed.append) as store:
        await store.put_result(result_row(1))
        await store.put_result(result_row(1, run_id=2))  # a second result: ignored
        await store.put_failure(failure_row(1))  # the chunk is done: not recorded
        await store.put_failure(failure_row(2))
        await store.flush()

    assert sum(c.results for c in committed) == 1
    assert sum(c.failures for c in committed) == 1


# -- runs a dead process left open --------------------------------------------------


def runs(db: Path) -> list[tuple[object, ...]]:
    return query(db, "SELECT run_id, outcome, summary_json FROM runs ORDER BY run_id")


# Begins a run, commits 7 results and a failure in it, says so, and waits to be killed.
CHILD_RUN = """
import asyncio, dataclasses, sys
from engine.store.sqlite_store import Store
from tests.engine.store.test_store import failure_row, result_row

async def main():
    store = await Store.open(sys.argv[1])
    run_id = await store.begin_run("job", {})
    for i in range(7):
        await store.put_result(result_row(i, run_id=run_id))
    await store.put_failure(dataclasses.replace(failure_row(100), run_id=run_id))
    await store.flush()
    print(run_id, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_run_killed_with_sigkill_is_marked_interrupted_with_what_it_committed(
    db: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD_RUN, str(db), env=env, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=HANG_GUARD_S)
        assert line, "the child ended before it committed"
        dead = int(line)
        async with await Store.open(db) as store:
            await store.begin_run("beside", {})  # the child is alive: its run is left alone
        assert [outcome for _, outcome, _ in runs(db)] == [None, None]
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()

    async with await Store.open(db) as store:
        await store.begin_run("job", {})

    (first_id, outcome, summary), *_, (_, last_outcome, _) = runs(db)
    assert (first_id, outcome) == (dead, INTERRUPTED)
    assert json.loads(str(summary))["done"] == 7
    assert json.loads(str(summary))["failed"] == 1
    assert last_outcome is None  # the new run is running
    assert query(db, "SELECT COUNT(*) FROM results") == [(7,)]


async def test_a_run_alive_beside_a_new_one_is_not_taken_for_dead(db: Path) -> None:
    async with await Store.open(db) as alive, await Store.open(db) as newcomer:
        await alive.begin_run("first", {})
        await newcomer.begin_run("second", {})

        assert [outcome for _, outcome, _ in runs(db)] == [None, None]


def test_a_lease_is_seen_from_another_open_file_and_gone_once_released(tmp_path: Path) -> None:
    lease = RunLease.take(tmp_path / "state", 3)
    assert is_alive(tmp_path / "state", 3)
    lease.release()
    assert not is_alive(tmp_path / "state", 3)
    assert not (tmp_path / "state").exists()


@pytest.fixture(autouse=True)
def _no_leftover_files(tmp_path: Path) -> Iterator[None]:
    yield
    leftovers = list(tmp_path.glob("*.crawldeck/run-*.lock"))
    assert leftovers == [], leftovers
