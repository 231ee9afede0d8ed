"""The durable store: results, failures, runs and events in one SQLite file.

One connection and one writer task.  Callers enqueue rows on a bounded
queue (they only wait when it is full, which is the store's backpressure);
the writer commits them in transactions of `batch_rows` rows or every
`batch_ms`, whichever comes first.  A result row is the only "done" marker:
a chunk that was in flight when the process died has no row and is simply
redone, and WAL keeps the file consistent through a kill -9.

At a prompt version a chunk's failure never stands beside a result, from
whichever model (a job may have several): a result removes the chunk's
failure, a failure for a chunk with a result is not recorded, and a chunk
has one failure at most — the latest, under the model that last tried it.

Every answered result is also filed under its text's key (`answered_texts`:
text key + prompt version + model → the chunk whose row holds the answer),
so a chunk with the same text under another source — in this run or a later
one — can be given a copy of that result without a request
(`answers_for`).  A copy (`ResultRow.copied_from`) is a result row like any
other, under its own chunk id and source, and is counted apart (`Committed.cached`).

Trouble with the file (locked by another process, full, read-only, not a
crawldeck store, damaged) is raised as `StoreError`, one line naming the
file and what to do.  Once the writer fails, every later write raises that
same error at once, so no caller waits on a queue nobody empties.  What the
writer committed is reported through `on_commit`; only that counts as done.

No API key ever reaches the store: rows carry the key's alias only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from engine.observe.events import Event
from engine.pipeline.records import text_key
from engine.store import batch_records
from engine.store.batch_records import BatchRecord
from engine.store.run_lease import RunLease, is_alive
from engine.store.state_folder import state_folder_for_store
from engine.store.store_error import ANOTHER_STORE, StoreError, foreign, store_error

# 2: crawled pages; 3: drift baselines; 4: answers by text; 5: submitted provider batches
SCHEMA_VERSION = 5
# SQLite's historical limit on bound parameters is 999; stay well under it.
MAX_QUERY_PARAMS = 500
BUSY_TIMEOUT_MS = 10_000
# The `runs` outcome of a run whose process died without recording its end.
INTERRUPTED = "interrupted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    chunk_id TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    model TEXT NOT NULL,
    source TEXT NOT NULL,
    seq INT NOT NULL,
    text TEXT NOT NULL,
    result_json TEXT NOT NULL,
    provider TEXT NOT NULL,
    key_alias TEXT NOT NULL,
    input_tokens INT NOT NULL,
    output_tokens INT NOT NULL,
    latency_ms REAL NOT NULL,
    cost REAL NOT NULL,
    run_id INT,
    created_at REAL NOT NULL,
    PRIMARY KEY (chunk_id, prompt_version, model)
);
CREATE TABLE IF NOT EXISTS failures (
    chunk_id TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    model TEXT NOT NULL,
    source TEXT NOT NULL,
    seq INT NOT NULL,
    text TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INT NOT NULL,
    run_id INT,
    created_at REAL NOT NULL,
    PRIMARY KEY (chunk_id, prompt_version, model)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    job_name TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    settings_json TEXT NOT NULL,
    outcome TEXT,
    summary_json TEXT
);
CREATE TABLE IF NOT EXISTS events (
    run_id INT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, ts);
CREATE TABLE IF NOT EXISTS pages (
    url TEXT NOT NULL,
    target TEXT NOT NULL,
    host TEXT NOT NULL,
    depth INT NOT NULL,
    outcome TEXT NOT NULL,
    status INT,
    final_url TEXT NOT NULL,
    redirects INT NOT NULL,
    bytes INT NOT NULL,
    elapsed_ms REAL NOT NULL,
    error TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT,
    run_id INT,
    created_at REAL NOT NULL,
    PRIMARY KEY (target, url)
);
-- Where the answer to a text is: one chunk's row per text, prompt version and model.
CREATE TABLE IF NOT EXISTS answered_texts (
    text_key TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    model TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    PRIMARY KEY (text_key, prompt_version, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS drift_baselines (
    baseline_id INTEGER PRIMARY KEY,
    run_id INT,
    created_at REAL NOT NULL,
    saved INT NOT NULL DEFAULT 0,
    baseline_json TEXT NOT NULL
);
"""
_SCHEMA += batch_records.SCHEMA + ";\n"

_INSERT_RESULT = """
INSERT OR IGNORE INTO results (
    chunk_id, prompt_version, model, source, seq, text, result_json, provider,
    key_alias, input_tokens, output_tokens, latency_ms, cost, run_id, created_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# The first answer to a text stays its answer: later ones (a rerun's, a cluster's) add nothing.
_FILE_ANSWERED_TEXT = """
INSERT OR IGNORE INTO answered_texts (text_key, prompt_version, model, chunk_id)
VALUES (?, ?, ?, ?)
"""
# An answer to each text, joined to the row that holds it.  Parameters: the prompt
# version, then the models (`{models}` placeholders), then the text keys (`{keys}`).
_ANSWERS_FOR_TEXTS = """
SELECT a.text_key, r.chunk_id, r.model, r.provider, r.result_json
FROM answered_texts AS a
JOIN results AS r
  ON r.chunk_id = a.chunk_id AND r.prompt_version = a.prompt_version AND r.model = a.model
WHERE a.prompt_version = ? AND a.model IN ({models}) AND a.text_key IN ({keys})
"""
_DELETE_FAILURE = "DELETE FROM failures WHERE chunk_id = ? AND prompt_version = ?"
# The chunk's failure under another model gives way to the one being recorded.
_DELETE_OTHER_FAILURE = (
    "DELETE FROM failures WHERE chunk_id = ?1 AND prompt_version = ?2 AND model <> ?3"
)
# A failure for a chunk that already has a result (any model's) is stale news: never record it.
_UPSERT_FAILURE = """
INSERT INTO failures (
    chunk_id, prompt_version, model, source, seq, text, reason, attempts, run_id, created_at
)
SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10
WHERE NOT EXISTS (
    SELECT 1 FROM results WHERE chunk_id = ?1 AND prompt_version = ?2
)
ON CONFLICT (chunk_id, prompt_version, model) DO UPDATE SET
    source = excluded.source, seq = excluded.seq, text = excluded.text,
    reason = excluded.reason, attempts = excluded.attempts,
    run_id = excluded.run_id, created_at = excluded.created_at
"""
# A page fetched again (a rerun retrying a timeout) replaces what was known of it.
_UPSERT_PAGE = """
INSERT OR REPLACE INTO pages (
    url, target, host, depth, outcome, status, final_url, redirects, bytes, elapsed_ms,
    error, title, text, run_id, created_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_EVENT = "INSERT INTO events (run_id, ts, kind, message, data_json) VALUES (?, ?, ?, ?, ?)"
# A run's results and failures still in the store, and when it last committed anything.
_WHAT_A_RUN_COMMITTED = """
SELECT (SELECT COUNT(*) FROM results WHERE run_id = ?1),
       (SELECT COUNT(*) FROM failures WHERE run_id = ?1),
       (SELECT MAX(t) FROM (
            SELECT MAX(created_at) AS t FROM results WHERE run_id = ?1
            UNION ALL SELECT MAX(created_at) FROM failures WHERE run_id = ?1
            UNION ALL SELECT MAX(ts) FROM events WHERE run_id = ?1))
"""


@dataclass(frozen=True, slots=True)
class ResultRow:
    """A chunk's answer: the row that marks it done for its prompt version and model."""

    chunk_id: str
    prompt_version: str
    model: str
    source: str
    seq: int
    text: str
    result_json: str
    provider: str
    key_alias: str
    input_tokens: int
    output_tokens: int
    latency_ms: float
    cost: float
    run_id: int
    # Set on a copy of another chunk's answer to the same text (that chunk's id):
    # no request was made for this chunk, and its text is not filed as answered again.
    copied_from: str = ""
    # `text_key(text)` when the caller has it already (else worked out on writing).
    text_key: str = ""


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A committed answer to a text: the row that holds it (see `Store.answers_for`)."""

    chunk_id: str
    model: str
    provider: str
    result_json: str


@dataclass(frozen=True, slots=True)
class FailureRow:
    """A chunk that gave up after its retries, under the model that last tried it;
    removed by a later result from any model."""

    chunk_id: str
    prompt_version: str
    model: str
    source: str
    seq: int
    text: str
    reason: str
    attempts: int
    run_id: int


@dataclass(frozen=True, slots=True)
class PageRow:
    """One crawled page's outcome, and its extracted text when it has some.

    `target` is the target (root URL) the page was reached from; `text` is
    kept so a rerun feeds the pipeline again without fetching the page again.
    """

    url: str
    target: str
    host: str
    depth: int
    outcome: str
    status: int | None
    final_url: str
    redirects: int
    bytes: int
    elapsed_ms: float
    error: str
    title: str
    text: str | None
    run_id: int


@dataclass(frozen=True, slots=True)
class StoredPage:
    """What a rerun needs to know about a page crawled before."""

    url: str
    depth: int
    outcome: str
    title: str
    text: str | None


@dataclass(frozen=True, slots=True)
class Committed:
    """What one transaction put in the store.

    `results` counts answered result rows that took (not a second result for
    a chunk that has one); `cached` the copies of another chunk's answer that
    took (`ResultRow.copied_from`); `failures` the failures recorded (not one
    for a chunk that is done).  `rows` is every row of the transaction, events
    and pages too.
    """

    rows: int
    results: int
    failures: int
    cached: int = 0


@dataclass(frozen=True, slots=True)
class _ResultRows:
    """One transaction's result rows: answered ones, copies, and where texts were answered."""

    answered: list[tuple[Any, ...]]
    copies: list[tuple[Any, ...]]
    texts: list[tuple[str, str, str, str]]
    keys: list[tuple[str, str]]  # (chunk id, prompt version) of every result: failures go


@dataclass(frozen=True, slots=True)
class _EventRow:
    run_id: int
    event: Event


@dataclass(frozen=True, slots=True)
class _FlushMarker:
    """Travels through the queue; resolved once everything before it is committed."""

    done: asyncio.Future[None]


class _CloseMarker:
    """Tells the writer to commit what is queued and return."""


_CLOSE = _CloseMarker()

_Item = ResultRow | FailureRow | PageRow | _EventRow | _FlushMarker | _CloseMarker


def _to_json(value: Mapping[str, Any]) -> str:
    # `default=str` keeps an odd value (a Path, an enum) from losing the whole row.
    return json.dumps(dict(value), default=str, ensure_ascii=False)


def _batched(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Store:
    """Results, failures, runs and events in one SQLite file (see the module docstring).

    Run `run_writer()` as a task; without one, `flush()` and `close()` write
    the queue themselves, which suits short-lived users such as tests.
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        batch_rows: int,
        batch_ms: int,
        queue_rows: int,
        on_commit: Callable[[Committed], None] | None = None,
        *,
        path: Path,
    ) -> None:
        if batch_rows < 1 or batch_ms < 0 or queue_rows < 1:
            raise ValueError("batch_rows and queue_rows must be >= 1 and batch_ms >= 0")
        self._conn = conn
        self.path = path
        self._batch_rows = batch_rows
        self._batch_s = batch_ms / 1000
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_rows)
        # Transactions and reads take turns on the one connection, so a read
        # or a run row never lands inside the writer's open transaction.
        self._lock = asyncio.Lock()
        self._batch: list[_Item] = []  # being collected; kept here so a cancel loses nothing
        self._inflight: asyncio.Task[None] | None = None
        self._writer_active = False
        self._writer_done = asyncio.Event()
        self._writer_done.set()
        self._accepting = True
        self._closed = False
        self._on_commit = on_commit
        self._rows_committed = 0
        self._failure: StoreError | None = None  # the writer's, once it could not commit
        self._lease: RunLease | None = None

    @classmethod
    async def open(
        cls,
        path: str | Path,
        batch_rows: int = 500,
        batch_ms: int = 200,
        queue_rows: int | None = None,
        on_commit: Callable[[Committed], None] | None = None,
        *,
        max_pages: int | None = None,
    ) -> Store:
        """Open (or create) the store at `path`; `StoreError` if it cannot serve as one.

        `queue_rows` bounds the queue (default 4 * batch_rows); `on_commit` is
        told what each committed transaction held.  `max_pages` caps the file
        at that many pages: past it SQLite answers exactly as on a full disk.
        A SQLite file that is not a crawldeck store is refused untouched.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, nothing implicit.
            conn = await aiosqlite.connect(path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise store_error(path, exc) from exc
        try:
            await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # Before anything is written: a foreign file must be left as it was.
            problem = schema_problem(path, *await _read_schema(conn))
            if problem is not None:
                raise problem
            if max_pages is not None:
                await conn.execute(f"PRAGMA max_page_count={int(max_pages)}")
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await _migrate(conn)
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error, OSError):
                await conn.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise store_error(path, exc) from exc
            raise
        return cls(conn, batch_rows, batch_ms, queue_rows or 4 * batch_rows, on_commit, path=path)

    @classmethod
    async def probe(cls, path: str | Path) -> None:
        """Raise `StoreError` unless the store at `path` can be opened and written now.

        Writes nothing that stays: it takes the write lock (so a lock held by
        another process shows here, after the usual wait) and rewrites the
        schema version inside a transaction it rolls back.
        """
        store = await cls.open(path)
        try:
            async with store._turn() as conn:
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    await conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                finally:
                    if conn.in_transaction:  # SQLite may have rolled back itself
                        await conn.execute("ROLLBACK")
        finally:
            await store.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def backlog(self) -> int:
        """Rows (and markers) waiting for the writer."""
        return self._queue.qsize()

    @property
    def most_uncommitted(self) -> int:
        """The most rows handed to the store and not yet committed: its queue and one batch.

        A row followed by more puts than this is committed (or the writer failed).
        """
        return self._queue.maxsize + self._batch_rows

    @property
    def rows_committed(self) -> int:
        """Rows committed since the store was opened (ignored duplicates included)."""
        return self._rows_committed

    @property
    def failure(self) -> StoreError | None:
        """Why the writer stopped committing (None while it can)."""
        return self._failure

    # -- writing -------------------------------------------------------------

    async def put_result(self, row: ResultRow) -> None:
        """Enqueue a result; waits only while the queue is full."""
        await self._put(row)

    async def put_failure(self, row: FailureRow) -> None:
        """Enqueue a failure (the latest reason wins; a result for the chunk removes it)."""
        await self._put(row)

    async def put_page(self, row: PageRow) -> None:
        await self._put(row)

    async def put_event(self, run_id: int, event: Event) -> None:
        """Enqueue an event for the run's log."""
        await self._put(_EventRow(run_id, event))

    async def flush(self) -> None:
        """Return once everything enqueued before this call is committed."""
        if self._failure is not None:
            raise self._failure
        if self._writer_active and self._accepting:
            marker = _FlushMarker(asyncio.get_running_loop().create_future())
            await self._queue.put(marker)
            await marker.done
            return
        await self._writer_done.wait()
        await self._write_queue_inline()

    async def run_writer(self) -> None:
        """The writer: commit queued rows in batches until `close_writer()`.

        Returns once the close request and everything queued before it are
        committed.  If cancelled, it commits what it holds and re-raises.
        """
        if self._writer_active:
            raise RuntimeError("the store already has a writer")
        if self._closed:
            return  # created before close() but first scheduled after it: nothing left to do
        self._writer_active = True
        self._writer_done.clear()
        try:
            while True:
                closing = await self._collect_batch()
                batch, self._batch = self._batch, []
                await self._commit_shielded(batch)
                if closing:
                    # Rows whose put was waiting on a full queue when close came.
                    await self._commit_shielded(self._take_queued())
                    return
        except asyncio.CancelledError:
            batch, self._batch = self._batch + self._take_queued(), []
            await self._commit_shielded(batch)
            raise
        except BaseException as exc:
            # Dropped, not committed: those chunks have no row and are redone
            # next run.  Emptying the queue also frees anyone waiting to put.
            self._fail_flushes([*self._batch, *self._take_queued()], exc)
            self._batch = []
            raise
        finally:
            self._writer_active = False
            self._writer_done.set()

    async def close_writer(self) -> None:
        """Ask the writer to commit everything queued and return; later puts are refused."""
        if not self._accepting:
            return
        self._accepting = False
        if self._failure is not None:
            return  # the writer is gone and nothing queued can be written
        # Queued even with no writer yet: a writer task created but not yet
        # started must still see it.  Without a writer, close() skips it.
        await self._enqueue(_CLOSE)

    async def close(self) -> None:
        """Commit everything queued, wait for the writer, and close the connection.

        After the writer failed, what is still queued is dropped (it was never
        committed, so it is redone next run) and the connection is closed.
        """
        if self._closed:
            return
        try:
            await self.close_writer()
            await self._writer_done.wait()
            if self._inflight is not None and not self._inflight.done():
                await self._inflight  # a write a cancelled writer left running
            # From here on a writer that has not started yet returns at once.
            self._closed = True
            if self._failure is None:
                await self._write_queue_inline()
        finally:
            self._closed = True
            self._release_lease()
            try:
                await self._conn.close()
            except (sqlite3.Error, OSError) as exc:
                if self._failure is None:
                    raise store_error(self.path, exc) from exc

    # -- runs ----------------------------------------------------------------

    async def begin_run(self, job_name: str, settings: Mapping[str, Any]) -> int:
        """Record a run's start now (not through the queue) and return its id.

        Runs whose process died without recording their end (kill -9, a power
        cut) are first marked `interrupted`, with what they had committed.
        The new run holds a lease (see `engine.store.run_lease`) until `end_run` or
        `close`, so a run starting beside it never takes it for dead.
        """
        folder = state_folder_for_store(self.path)
        async with self._turn() as conn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await self._mark_interrupted(conn, folder)
                cursor = await conn.execute(
                    "INSERT INTO runs (job_name, started_at, settings_json) VALUES (?, ?, ?)",
                    (job_name, time.time(), _to_json(settings)),
                )
                run_id = cursor.lastrowid
                await cursor.close()
                if run_id is None:
                    raise RuntimeError("SQLite did not return a run id")
                # Taken before the row is visible to anyone (see `is_alive`).
                try:
                    self._lease = RunLease.take(folder, run_id)
                except OSError as exc:
                    # Without a lease the run still runs; a run started beside
                    # it may mark it interrupted, and its own end corrects that.
                    print(f"crawldeck: {folder}: no run lease: {exc}", file=sys.stderr)
                await conn.execute("COMMIT")
            except BaseException:
                self._release_lease()
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
        return run_id

    async def end_run(
        self,
        run_id: int,
        outcome: str,
        summary: Mapping[str, Any],
        *,
        busy_timeout_ms: int | None = None,
    ) -> None:
        """Record how a run ended, now; `busy_timeout_ms` shortens the wait for the lock."""
        async with self._turn() as conn:
            if busy_timeout_ms is not None:
                await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            await conn.execute(
                "UPDATE runs SET ended_at = ?, outcome = ?, summary_json = ? WHERE run_id = ?",
                (time.time(), outcome, _to_json(summary), run_id),
            )
        self._release_lease()

    async def _mark_interrupted(self, conn: aiosqlite.Connection, folder: Path) -> None:
        """Give every dead run without an outcome `interrupted` and its committed counts."""
        open_runs = await conn.execute_fetchall(
            "SELECT run_id, started_at FROM runs WHERE outcome IS NULL"
        )
        for run_id, started_at in open_runs:
            if is_alive(folder, run_id):
                continue
            (done, failed, last), *_ = await conn.execute_fetchall(_WHAT_A_RUN_COMMITTED, (run_id,))
            summary = {
                "done": int(done),
                "failed": int(failed),
                "fatal": "the process ended without recording its end (killed?); "
                "done and failed are what it committed",
            }
            await conn.execute(
                "UPDATE runs SET ended_at = ?, outcome = ?, summary_json = ? WHERE run_id = ?",
                (last if last is not None else started_at, INTERRUPTED, _to_json(summary), run_id),
            )

    def _release_lease(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    # -- reading -------------------------------------------------------------

    async def done_ids(self, chunk_ids: Sequence[str], prompt_version: str, model: str) -> set[str]:
        """Which of `chunk_ids` have a committed result for this prompt version and model."""
        done: set[str] = set()
        ids_per_query = MAX_QUERY_PARAMS - 2  # two parameters name the prompt version and model
        async with self._turn() as conn:
            for part in _batched(list(chunk_ids), ids_per_query):
                placeholders = ",".join("?" * len(part))
                rows = await conn.execute_fetchall(
                    "SELECT chunk_id FROM results WHERE prompt_version = ? AND model = ?"
                    f" AND chunk_id IN ({placeholders})",
                    (prompt_version, model, *part),
                )
                done.update(row[0] for row in rows)
        return done

    async def answers_for(
        self, text_keys: Iterable[str], prompt_version: str, models: Sequence[str]
    ) -> dict[str, StoredAnswer]:
        """A committed answer to each of `text_keys` that has one, at this prompt version
        from one of `models` (the first of them, in their order, when several have)."""
        keys, wanted = sorted(set(text_keys)), list(dict.fromkeys(models))
        found: dict[str, StoredAnswer] = {}
        if not keys or not wanted:
            return found
        rank = {model: i for i, model in enumerate(wanted)}
        per_query = MAX_QUERY_PARAMS - 1 - len(wanted)
        models_in = ",".join("?" * len(wanted))
        async with self._turn() as conn:
            for part in _batched(keys, per_query):
                query = _ANSWERS_FOR_TEXTS.format(models=models_in, keys=",".join("?" * len(part)))
                rows = await conn.execute_fetchall(query, (prompt_version, *wanted, *part))
                for key, chunk_id, model, provider, result_json in rows:
                    known = found.get(key)
                    if known is None or rank[model] < rank[known.model]:
                        found[key] = StoredAnswer(chunk_id, model, provider, result_json)
        return found

    async def pages_of(self, targets: Sequence[str]) -> dict[str, list[StoredPage]]:
        """The committed pages of each of `targets` (absent: never crawled), root first."""
        found: dict[str, list[StoredPage]] = {}
        async with self._turn() as conn:
            for part in _batched(list(targets), MAX_QUERY_PARAMS):
                placeholders = ",".join("?" * len(part))
                rows = await conn.execute_fetchall(
                    "SELECT target, url, depth, outcome, title, text FROM pages"
                    f" WHERE target IN ({placeholders}) ORDER BY target, depth, rowid",
                    tuple(part),
                )
                for target, url, depth, outcome, title, text in rows:
                    found.setdefault(target, []).append(
                        StoredPage(url, int(depth), outcome, title, text)
                    )
        return found

    async def add_baseline(self, run_id: int, baseline_json: str) -> int:
        """Keep a baseline a run learned; returns its id.  Written at once, not batched."""
        async with self._turn() as conn:
            cursor = await conn.execute(
                "INSERT INTO drift_baselines (run_id, created_at, baseline_json) VALUES (?, ?, ?)",
                (run_id, time.time(), baseline_json),
            )
            baseline_id = int(cursor.lastrowid or 0)
            await cursor.close()
        return baseline_id

    async def save_baseline(self, baseline_id: int | None = None) -> int | None:
        """Make one baseline (default: the newest) the job's saved baseline; its id, or None."""
        async with self._turn() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT baseline_id FROM drift_baselines"
                    + (" WHERE baseline_id = ?" if baseline_id is not None else "")
                    + " ORDER BY baseline_id DESC LIMIT 1",
                    (baseline_id,) if baseline_id is not None else (),
                )
            )
            if not rows:
                return None
            chosen = int(rows[0][0])
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.execute("UPDATE drift_baselines SET saved = 0 WHERE saved = 1")
                await conn.execute(
                    "UPDATE drift_baselines SET saved = 1 WHERE baseline_id = ?", (chosen,)
                )
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
        return chosen

    async def clear_saved_baseline(self) -> None:
        """Runs learn their own baseline again."""
        async with self._turn() as conn:
            await conn.execute("UPDATE drift_baselines SET saved = 0 WHERE saved = 1")

    async def baselines(self) -> list[tuple[int, int | None, float, bool, str]]:
        """(id, run id, created at, saved, JSON) of every kept baseline, newest first."""
        async with self._turn() as conn:
            rows = await conn.execute_fetchall(
                "SELECT baseline_id, run_id, created_at, saved, baseline_json"
                " FROM drift_baselines ORDER BY baseline_id DESC"
            )
        return [(int(a), b, float(c), bool(d), str(e)) for a, b, c, d, e in rows]

    async def saved_baseline(self) -> str | None:
        """The saved baseline's JSON, or None when runs learn their own."""
        async with self._turn() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT baseline_json FROM drift_baselines WHERE saved = 1"
                )
            )
        return str(rows[0][0]) if rows else None

    async def record_batch(self, record: BatchRecord) -> None:
        """Keep a submitted batch (`batch_records`); written at once, not batched."""
        async with self._turn() as conn:
            await batch_records.write_record(conn, record)

    async def update_batch(
        self,
        input_file_id: str,
        *,
        state: str | None = None,
        batch_id: str | None = None,
        provider_state: str | None = None,
    ) -> None:
        """Change a kept batch's state, id or the provider's last word on it; at once."""
        async with self._turn() as conn:
            await batch_records.set_state(
                conn, input_file_id, state=state, batch_id=batch_id, provider_state=provider_state
            )

    async def open_batches(self) -> list[BatchRecord]:
        """The kept batches neither settled nor abandoned, oldest first."""
        async with self._turn() as conn:
            return await batch_records.open_records(conn)

    async def page_outcomes(self) -> dict[str, int]:
        """Committed pages by outcome."""
        async with self._turn() as conn:
            rows = await conn.execute_fetchall(
                "SELECT outcome, COUNT(*) FROM pages GROUP BY outcome"
            )
        return {str(outcome): int(count) for outcome, count in rows}

    async def run_spends(self, excluding: int) -> list[tuple[str | None, float]]:
        """(summary JSON or None, cost of its stored results) of every run but `excluding`."""
        async with self._turn() as conn:
            rows = await conn.execute_fetchall(
                "SELECT runs.summary_json, COALESCE(SUM(results.cost), 0.0) FROM runs"
                " LEFT JOIN results ON results.run_id = runs.run_id"
                " WHERE runs.run_id <> ? GROUP BY runs.run_id",
                (excluding,),
            )
        return [(summary, float(cost)) for summary, cost in rows]

    async def counts(self, prompt_version: str | None = None) -> dict[str, int]:
        """Committed results and failures, for one prompt version or all of them."""
        where, params = (
            ("WHERE prompt_version = ?", (prompt_version,))
            if prompt_version is not None
            else ("", ())
        )
        counts: dict[str, int] = {}
        async with self._turn() as conn:
            for table in ("results", "failures"):
                rows = list(
                    await conn.execute_fetchall(f"SELECT COUNT(*) FROM {table} {where}", params)
                )
                counts[table] = int(rows[0][0])
        return counts

    # -- internals -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection between the writer's transactions, SQLite's errors as `StoreError`."""
        async with self._lock:
            try:
                yield self._conn
            except (sqlite3.Error, OSError) as exc:
                raise store_error(self.path, exc) from exc

    async def _put(self, item: _Item) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._accepting:
            raise RuntimeError("the store is closed for writing")
        await self._enqueue(item)

    async def _enqueue(self, item: _Item) -> None:
        if self._queue.full() and not self._writer_active:
            await self._write_queue_inline()  # nobody else will make room
        await self._queue.put(item)

    async def _collect_batch(self) -> bool:
        """Fill `self._batch` up to batch_rows rows or batch_ms; True when close was asked."""
        loop = asyncio.get_running_loop()
        item = await self._queue.get()
        self._batch.append(item)
        if isinstance(item, _CloseMarker | _FlushMarker):
            return isinstance(item, _CloseMarker)
        deadline = loop.time() + self._batch_s
        rows = 1
        while rows < self._batch_rows:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    break
            self._batch.append(item)
            if isinstance(item, _CloseMarker):
                return True
            if isinstance(item, _FlushMarker):
                break  # someone is waiting: commit now
            rows += 1
        return False

    async def _commit_shielded(self, batch: list[_Item]) -> None:
        # A cancel must not cut a transaction in half — its BEGIN would stay open on
        # the connection and the next write's fail: the write runs on as its own
        # task, and a cancelled caller (the writer, or a collector mid-flush) waits
        # for it, then goes on with the cancel — or with the write's own failure.
        # A second cancel leaves it running: `close()` waits for it.
        write = self._inflight = asyncio.ensure_future(self._write(batch))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait([write])
            self._inflight = None
            if not write.cancelled() and (failed := write.exception()) is not None:
                raise failed from None
            raise
        self._inflight = None

    def _take_queued(self) -> list[_Item]:
        items: list[_Item] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return items

    async def _write_queue_inline(self) -> None:
        items = self._take_queued()
        for start in range(0, len(items), self._batch_rows):
            try:
                await self._commit_shielded(items[start : start + self._batch_rows])
            except BaseException as exc:
                # What was taken and not written is dropped (redone next run); a
                # flush waiting on it must not wait for ever.
                self._fail_flushes(items[start + self._batch_rows :], exc)
                raise

    async def _write(self, batch: list[_Item]) -> None:
        """Commit one batch in one transaction, then release the flushes it carries."""
        now = time.time()
        results: list[tuple[Any, ...]] = []
        copies: list[tuple[Any, ...]] = []
        answered_texts: list[tuple[str, str, str, str]] = []
        result_keys: list[tuple[str, str]] = []
        failure_keys: list[tuple[str, str, str]] = []
        failures: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        pages: list[tuple[Any, ...]] = []
        flushes: list[_FlushMarker] = []
        for item in batch:
            if isinstance(item, ResultRow):
                if not item.copied_from:
                    answered_texts.append(
                        (
                            item.text_key or text_key(item.text),
                            item.prompt_version,
                            item.model,
                            item.chunk_id,
                        )
                    )
                (copies if item.copied_from else results).append(
                    (
                        item.chunk_id,
                        item.prompt_version,
                        item.model,
                        item.source,
                        item.seq,
                        item.text,
                        item.result_json,
                        item.provider,
                        item.key_alias,
                        item.input_tokens,
                        item.output_tokens,
                        item.latency_ms,
                        item.cost,
                        item.run_id,
                        now,
                    )
                )
                result_keys.append((item.chunk_id, item.prompt_version))
            elif isinstance(item, FailureRow):
                failures.append(
                    (
                        item.chunk_id,
                        item.prompt_version,
                        item.model,
                        item.source,
                        item.seq,
                        item.text,
                        item.reason,
                        item.attempts,
                        item.run_id,
                        now,
                    )
                )
                failure_keys.append((item.chunk_id, item.prompt_version, item.model))
            elif isinstance(item, PageRow):
                pages.append(
                    (
                        item.url,
                        item.target,
                        item.host,
                        item.depth,
                        item.outcome,
                        item.status,
                        item.final_url,
                        item.redirects,
                        item.bytes,
                        item.elapsed_ms,
                        item.error,
                        item.title,
                        item.text,
                        item.run_id,
                        now,
                    )
                )
            elif isinstance(item, _EventRow):
                event = item.event
                events.append(
                    (item.run_id, event.ts, str(event.kind), event.message, _to_json(event.data))
                )
            elif isinstance(item, _FlushMarker):
                flushes.append(item)
        rows = len(results) + len(copies) + len(failures) + len(events) + len(pages)
        taken = (0, 0, 0)
        try:
            if rows:
                async with self._lock:
                    taken = await self._commit(
                        _ResultRows(results, copies, answered_texts, result_keys),
                        failures,
                        failure_keys,
                        events,
                        pages,
                    )
        except (sqlite3.Error, OSError) as exc:
            self._failure = store_error(self.path, exc)
            self._fail_flushes(flushes, self._failure)
            raise self._failure from exc
        except BaseException as exc:
            self._fail_flushes(flushes, exc)
            raise
        if rows:
            self._rows_committed += rows
            if self._on_commit is not None:
                try:
                    self._on_commit(Committed(rows, *taken))
                except Exception as exc:  # an observer's bug must not stop the writer
                    print(f"crawldeck: store on_commit failed: {exc!r}", file=sys.stderr)
        for flush in flushes:
            if not flush.done.done():
                flush.done.set_result(None)

    async def _commit(
        self,
        results: _ResultRows,
        failures: list[tuple[Any, ...]],
        failure_keys: list[tuple[str, str, str]],
        events: list[tuple[Any, ...]],
        pages: list[tuple[Any, ...]],
    ) -> tuple[int, int, int]:
        """Commit the rows in one transaction; (results, failures, copies) that took."""
        conn = self._conn
        results_taken = failures_taken = copies_taken = 0
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Results first: the failure upsert then skips chunks that are done,
            # whatever order the two arrived in within this batch.
            # rowcount: rows changed, so a second result for a chunk is not counted.
            if results.answered:
                answered = await conn.executemany(_INSERT_RESULT, results.answered)
                results_taken = answered.rowcount
                await conn.executemany(_FILE_ANSWERED_TEXT, results.texts)
            if results.copies:
                copies_taken = (await conn.executemany(_INSERT_RESULT, results.copies)).rowcount
            if results.keys:
                await conn.executemany(_DELETE_FAILURE, results.keys)
            if failures:
                await conn.executemany(_DELETE_OTHER_FAILURE, failure_keys)
                failures_taken = (await conn.executemany(_UPSERT_FAILURE, failures)).rowcount
            if events:
                await conn.executemany(_INSERT_EVENT, events)
            if pages:
                await conn.executemany(_UPSERT_PAGE, pages)
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
        return results_taken, failures_taken, copies_taken

    @staticmethod
    def _fail_flushes(items: Sequence[_Item], exc: BaseException) -> None:
        for item in items:
            if isinstance(item, _FlushMarker) and not item.done.done():
                if isinstance(exc, asyncio.CancelledError):
                    item.done.cancel()
                else:
                    item.done.set_exception(exc)


def schema_problem(
    path: str | Path, user_version: int, tables: Mapping[str, AbstractSet[str]]
) -> StoreError | None:
    """Why the SQLite database at `path` cannot be a crawldeck store (None: it can).

    `tables` maps each table in the file to its columns.  A file written by a
    newer crawldeck, one that holds tables but was never a crawldeck store,
    and one whose tables of our names lack our columns are all refused.
    """
    if user_version > SCHEMA_VERSION:
        return StoreError(
            path,
            f"written by a newer crawldeck (store schema {user_version}; "
            f"this one knows up to {SCHEMA_VERSION})",
            f"run it with that crawldeck, or {ANOTHER_STORE}",
        )
    ours = _our_columns()
    if user_version == 0:
        theirs = sorted(name for name in tables if name not in ours)
        if theirs:
            shown = ", ".join(theirs[:4]) + (", …" if len(theirs) > 4 else "")
            return foreign(path, f"its tables: {shown}")
    for name, columns in sorted(tables.items()):
        missing = sorted(ours.get(name, frozenset()) - columns)
        if missing:
            return foreign(path, f"its table {name} has no column {missing[0]}")
    return None


def schema_of(conn: sqlite3.Connection) -> tuple[int, dict[str, set[str]]]:
    """A SQLite file's schema version and each table's columns, read without writing."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    tables: dict[str, set[str]] = {}
    for (name,) in conn.execute(_TABLES).fetchall():
        columns = conn.execute(f"PRAGMA table_info({_quoted(name)})").fetchall()
        tables[str(name)] = {str(column[1]) for column in columns}
    return int(version), tables


@functools.cache
def _our_columns() -> dict[str, frozenset[str]]:
    """Each table of the current schema and its columns, read from the schema itself."""
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.executescript(_SCHEMA)
        _, tables = schema_of(conn)
    return {name: frozenset(columns) for name, columns in tables.items()}


_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _read_schema(conn: aiosqlite.Connection) -> tuple[int, dict[str, set[str]]]:
    """`schema_of`, through aiosqlite."""
    (version,), *_ = await conn.execute_fetchall("PRAGMA user_version")
    tables: dict[str, set[str]] = {}
    for (name,) in await conn.execute_fetchall(_TABLES):
        columns = await conn.execute_fetchall(f"PRAGMA table_info({_quoted(name)})")
        tables[str(name)] = {str(column[1]) for column in columns}
    return int(version), tables


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Create the schema if missing (`schema_problem` has vouched for the file)."""
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    version = int(rows[0][0])
    if version < SCHEMA_VERSION:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    await conn.execute(statement)
            if version < _ANSWERS_BY_TEXT:
                await _file_answered_texts(conn)
            await conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise


_ANSWERS_BY_TEXT = 4  # the schema version that files answers by text


async def _file_answered_texts(conn: aiosqlite.Connection) -> None:
    """File the answers a store kept before schema 4 under their texts' keys.

    Within the migration's transaction: the texts are keyed by the same
    function the writer uses, so a rerun copies what an earlier version answered.
    """
    await conn.create_function("crawldeck_text_key", 1, text_key, deterministic=True)
    await conn.execute(
        "INSERT OR IGNORE INTO answered_texts (text_key, prompt_version, model, chunk_id)"
        " SELECT crawldeck_text_key(text), prompt_version, model, chunk_id FROM results"
        " ORDER BY rowid"
    )
