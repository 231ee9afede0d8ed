"""The durable store: what is committed, when, and what survives a crash."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.observe.events import Event, EventKind
from engine.store.sqlite_store import SCHEMA_VERSION, Committed, FailureRow, ResultRow, Store
from engine.store.store_error import StoreError

REPO_ROOT = Path(__file__).resolve().parents[3]


def result_row(
    i: int, *, prompt_version: str = "1", model: str = "m", run_id: int = 1
) -> ResultRow:
    """The i-th chunk's result; the same i always gives the same row."""
    return ResultRow(
        chunk_id=f"c{i:06d}",
        prompt_version=prompt_version,
        model=model,
        source=f"doc{i // 10}.txt",
        seq=i % 10,
        text=f"text of chunk {i}",
        result_json=json.dumps({"summary": f"chunk {i}"}),
        provider="sim",
        key_alias="key-a",
        input_tokens=100 + i,
        output_tokens=20,
        latency_ms=12.5,
        cost=0.001,
        run_id=run_id,
    )


def failure_row(
    i: int,
    reason: str = "timeout",
    attempts: int = 3,
    *,
    prompt_version: str = "1",
    model: str = "m",
) -> FailureRow:
    """The i-th chunk's failure, keyed like `result_row(i)`."""
    return FailureRow(
        chunk_id=f"c{i:06d}",
        prompt_version=prompt_version,
        model=model,
        source=f"doc{i // 10}.txt",
        seq=i % 10,
        text=f"text of chunk {i}",
        reason=reason,
        attempts=attempts,
        run_id=1,
    )


def query(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Read through a separate connection: sees only what is committed."""
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store" / "crawl.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[Store]:
    """A store with its writer running, closed cleanly after the test."""
    store = await Store.open(db, batch_rows=50, batch_ms=5)
    writer = asyncio.create_task(store.run_writer())
    yield store
    await store.close()
    await writer


# -- opening -------------------------------------------------------------------


async def test_open_creates_the_directory_and_a_wal_database_with_the_schema(db: Path) -> None:
    store = await Store.open(db)
    await store.close()

    assert db.exists()
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {name for (name,) in query(db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"results", "failures", "runs", "events"} <= tables


async def test_reopening_keeps_what_was_written(db: Path) -> None:
    async with await Store.open(db) as store:
        await store.put_result(result_row(1))
    async with await Store.open(db) as store:
        assert await store.counts() == {"results": 1, "failures": 0}


async def test_a_store_from_a_newer_schema_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer crawldeck") as refused:
        await Store.open(db)
    assert str(refused.value).startswith(f"{db}: ")


async def test_the_schema_has_no_column_for_a_secret_only_the_key_alias(db: Path) -> None:
    async with await Store.open(db):
        pass
    columns = {
        str(column)
        for table in ("results", "failures", "runs", "events")
        for (_, column, *_rest) in query(db, f"PRAGMA table_info({table})")
    }
    assert {c for c in columns if "key" in c or "secret" in c} == {"key_alias"}


# -- results and failures ------------------------------------------------------


async def test_flush_returns_once_everything_put_before_it_is_committed(
    store: Store, db: Path
) -> None:
    for i in range(1000):
        await store.put_result(result_row(i))
    await store.flush()

    assert query(db, "SELECT COUNT(*) FROM results") == [(1000,)]
    assert store.rows_committed == 1000
    assert store.backlog == 0


async def test_a_flush_without_a_writer_cancelled_mid_write_leaves_no_transaction_open(
    db: Path,
) -> None:
    """A collector stopped while its flush commits: the transaction ends (committed), and
    the next flush on the same store does not find one still open."""
    store = await Store.open(db, batch_rows=50)
    try:
        for i in range(40):
            await store.put_result(result_row(i))
        flushing = asyncio.create_task(store.flush())
        await asyncio.sleep(0)  # it has sent its BEGIN and waits on SQLite's thread
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing

        await store.put_result(result_row(40))
        await store.flush()
    finally:
        await store.close()

    assert query(db, "SELECT COUNT(*) FROM results") == [(41,)]


async def test_done_ids_names_the_chunks_with_a_result_for_that_prompt_and_model(
    store: Store,
) -> None:
    await store.put_result(result_row(1))
    await store.put_result(result_row(2, prompt_version="2"))
    await store.put_result(result_row(3, model="other"))
    await store.put_failure(failure_row(4))
    await store.flush()

    ids = [f"c{i:06d}" for i in range(6)]
    assert await store.done_ids(ids, "1", "m") == {"c000001"}
    assert await store.done_ids(ids, "2", "m") == {"c000002"}
    assert await store.done_ids([], "1", "m") == set()


async def test_done_ids_answers_for_more_ids_than_one_query_may_bind(store: Store) -> None:
    for i in range(0, 3000, 2):
        await store.put_result(result_row(i))
    await store.flush()

    done = await store.done_ids([f"c{i:06d}" for i in range(3000)], "1", "m")

    assert done == {f"c{i:06d}" for i in range(0, 3000, 2)}


async def test_a_chunk_never_gets_a_second_result_the_first_one_stays(
    store: Store, db: Path
) -> None:
    first = result_row(7)
    await store.put_result(first)
    await store.put_result(result_row(7, run_id=2))  # same batch
    await store.flush()
    await store.put_result(result_row(7, run_id=3))  # a later batch
    await store.flush()

    assert query(db, "SELECT run_id FROM results WHERE chunk_id = 'c000007'") == [(1,)]


async def test_a_failure_keeps_the_latest_reason(store: Store, db: Path) -> None:
    await store.put_failure(failure_row(1, reason="timeout", attempts=3))
    await store.flush()
    await store.put_failure(failure_row(1, reason="malformed json", attempts=5))
    await store.flush()

    assert query(db, "SELECT reason, attempts FROM failures") == [("malformed json", 5)]


async def test_a_result_written_later_removes_the_chunks_failure(store: Store, db: Path) -> None:
    await store.put_failure(failure_row(1))
    await store.put_failure(failure_row(2))
    await store.flush()
    await store.put_result(result_row(1))
    await store.flush()

    assert query(db, "SELECT chunk_id FROM failures") == [("c000002",)]
    assert await store.counts() == {"results": 1, "failures": 1}


async def test_a_failure_for_a_chunk_that_is_done_is_not_recorded(store: Store) -> None:
    await store.put_result(result_row(1))
    await store.put_failure(failure_row(1))  # same transaction, after the result
    await store.put_result(result_row(2))
    await store.flush()
    await store.put_failure(failure_row(2))  # a later transaction
    await store.flush()

    assert await store.counts() == {"results": 2, "failures": 0}


async def test_a_result_from_another_model_removes_the_chunks_failure(
    store: Store, db: Path
) -> None:
    # A job with two models: the chunk failed on one and was answered by the other.
    await store.put_failure(failure_row(1, model="model-a"))
    await store.put_failure(failure_row(2, model="model-a", prompt_version="2"))
    await store.flush()
    await store.put_result(result_row(1, model="model-b"))
    await store.put_result(result_row(2, model="model-b"))  # prompt version 1: not chunk 2's
    await store.flush()

    assert query(db, "SELECT chunk_id, prompt_version FROM failures") == [("c000002", "2")]


async def test_a_failure_for_a_chunk_another_model_answered_is_not_recorded(
    store: Store,
) -> None:
    await store.put_result(result_row(1, model="model-b"))
    await store.flush()
    await store.put_failure(failure_row(1, model="model-a"))
    await store.flush()

    assert await store.counts() == {"results": 1, "failures": 0}


async def test_a_chunk_keeps_one_failure_the_latest_whichever_model_it_was(
    store: Store, db: Path
) -> None:
    await store.put_failure(failure_row(1, reason="timeout", model="model-a"))
    await store.flush()
    await store.put_failure(failure_row(1, reason="server error", model="model-b"))
    await store.flush()

    assert query(db, "SELECT model, reason FROM failures") == [("model-b", "server error")]


async def test_counts_can_be_limited_to_one_prompt_version(store: Store) -> None:
    await store.put_result(result_row(1, prompt_version="1"))
    await store.put_result(result_row(2, prompt_version="2"))
    await store.put_failure(failure_row(3))
    await store.flush()

    assert await store.counts() == {"results": 2, "failures": 1}
    assert await store.counts("2") == {"results": 1, "failures": 0}


# -- runs and events -----------------------------------------------------------


async def test_runs_are_recorded_at_once_with_their_settings_and_outcome(
    store: Store, db: Path
) -> None:
    run_id = await store.begin_run("demo", {"preset": "conservative", "path": Path("/x")})
    assert query(db, "SELECT job_name, ended_at FROM runs WHERE run_id = ?", run_id) == [
        ("demo", None)
    ]

    await store.end_run(run_id, "finished", {"results": 10})

    [(settings, outcome, summary)] = query(
        db, "SELECT settings_json, outcome, summary_json FROM runs WHERE run_id = ?", run_id
    )
    assert json.loads(str(settings)) == {"preset": "conservative", "path": "/x"}
    assert outcome == "finished"
    assert json.loads(str(summary)) == {"results": 10}
    assert await store.begin_run("demo", {}) == run_id + 1


async def test_events_are_stored_with_their_run_kind_and_data(store: Store, db: Path) -> None:
    event = Event(EventKind.RATE_LIMITED, "key-a hit 429", {"key": "key-a", "retry_s": 2.0})
    await store.put_event(3, event)
    await store.flush()

    [(run_id, ts, kind, message, data)] = query(
        db, "SELECT run_id, ts, kind, message, data_json FROM events"
    )
    assert (run_id, ts, kind, message) == (3, event.ts, "rate_limited", "key-a hit 429")
    assert json.loads(str(data)) == {"key": "key-a", "retry_s": 2.0}


# -- the writer ----------------------------------------------------------------


async def test_a_full_batch_commits_without_waiting_for_the_timer(db: Path) -> None:
    commits: list[int] = []
    six_committed = asyncio.Event()

    def on_commit(committed: Committed) -> None:
        commits.append(committed.rows)
        if sum(commits) >= 6:
            six_committed.set()

    store = await Store.open(db, batch_rows=3, batch_ms=3_600_000, on_commit=on_commit)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(store.run_writer())
        for i in range(7):
            await store.put_result(result_row(i))
        await asyncio.wait_for(six_committed.wait(), timeout=30)  # a guard, not a measurement
        assert commits == [3, 3]
        await store.close()
    assert commits == [3, 3, 1]


async def test_a_partial_batch_commits_when_the_timer_runs_out(db: Path) -> None:
    committed = asyncio.Event()
    store = await Store.open(db, batch_rows=1000, batch_ms=10, on_commit=lambda _: committed.set())
    async with asyncio.TaskGroup() as tg:
        tg.create_task(store.run_writer())
        await store.put_result(result_row(1))
        await asyncio.wait_for(committed.wait(), timeout=30)
        assert query(db, "SELECT COUNT(*) FROM results") == [(1,)]
        await store.close()


async def test_the_writer_returns_after_close_writer_with_everything_committed(
    db: Path,
) -> None:
    store = await Store.open(db, batch_rows=10, batch_ms=3_600_000)
    writer = asyncio.create_task(store.run_writer())
    for i in range(25):
        await store.put_result(result_row(i))
    await store.close_writer()
    await writer

    assert query(db, "SELECT COUNT(*) FROM results") == [(25,)]
    with pytest.raises(RuntimeError, match="closed"):
        await store.put_result(result_row(99))
    await store.close()


async def test_a_cancelled_writer_commits_what_it_holds_and_reraises(db: Path) -> None:
    store = await Store.open(db, batch_rows=10, batch_ms=3_600_000)
    writer = asyncio.create_task(store.run_writer())
    for i in range(25):
        await store.put_result(result_row(i))
    await asyncio.sleep(0)  # let the writer start collecting
    writer.cancel()

    with pytest.raises(asyncio.CancelledError):
        await writer
    assert query(db, "SELECT COUNT(*) FROM results") == [(25,)]
    await store.close()


async def test_without_a_writer_flush_and_close_write_the_queue_themselves(db: Path) -> None:
    store = await Store.open(db, batch_rows=10, queue_rows=10)
    for i in range(35):  # more than the queue holds: a full queue is written inline
        await store.put_result(result_row(i))
    await store.flush()
    assert query(db, "SELECT COUNT(*) FROM results") == [(35,)]

    await store.put_failure(failure_row(99))
    await store.close()
    assert query(db, "SELECT COUNT(*) FROM failures") == [(1,)]


async def test_a_writer_first_scheduled_after_close_returns_at_once(db: Path) -> None:
    store = await Store.open(db)
    writer = asyncio.create_task(store.run_writer())
    await store.put_result(result_row(1))
    await store.close()  # the writer task has not run yet

    await asyncio.wait_for(writer, timeout=30)
    assert query(db, "SELECT COUNT(*) FROM results") == [(1,)]


# -- crash safety --------------------------------------------------------------

# The child writes chunk after chunk (a failure first for every tenth) and
# prints the running total after each commit, until it is killed.
CHILD_WRITER = """
import asyncio, sys
from engine.store.sqlite_store import Store
from tests.engine.store.test_store import failure_row, result_row

async def main():
    store = await Store.open(sys.argv[1], batch_rows=40, batch_ms=2, on_commit=lambda rows: print(
        store.rows_committed, flush=True))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(store.run_writer())
        i = 0
        while True:
            if i % 10 == 0:
                await store.put_failure(failure_row(i))
            await store.put_result(result_row(i))
            i += 1
            if i % 40 == 0:
                await asyncio.sleep(0)

asyncio.run(main())
"""


async def test_a_kill_9_mid_write_leaves_a_consistent_store_that_resumes_exactly(
    db: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD_WRITER, str(db), env=env, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    reported = 0
    try:
        while reported < 2000:  # dozens of transactions in, while it keeps writing
            line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
            assert line, "the writer child exited early"
            reported = int(line)
    finally:
        child.send_signal(signal.SIGKILL)  # also when the loop above failed: no orphan writer
        await child.wait()

    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    [(survived,)] = query(db, "SELECT COUNT(*) FROM results")
    assert isinstance(survived, int)
    # Commits land in order, so what survived is a prefix of the chunks...
    assert query(db, "SELECT COUNT(*) FROM results WHERE chunk_id >= ?", f"c{survived:06d}") == [
        (0,)
    ]
    # ...and it holds every commit the child reported (a result, plus a failure per tenth).
    assert survived + survived // 10 + 1 >= reported

    # Resume: put everything again, including chunks the child never reached.
    total = survived + 500
    async with await Store.open(db, batch_rows=200) as store, asyncio.TaskGroup() as tg:
        tg.create_task(store.run_writer())
        for i in range(total):
            if i % 10 == 0:
                await store.put_failure(failure_row(i))
            await store.put_result(result_row(i))
        await store.close_writer()

    assert query(db, "SELECT COUNT(*), COUNT(DISTINCT chunk_id) FROM results") == [(total, total)]
    assert query(db, "SELECT COUNT(*) FROM failures") == [(0,)]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
