"""Submitted Batch API batches, kept in the store so a restarted run resumes them.

A batch is recorded when its input file is uploaded, before the provider is
asked to create it, and again with its id once it is: a run that dies in
between finds the batch by its input file (`BatchClient.find`) instead of
submitting it twice.  The record holds what its answers need to become
rows — each request's chunks (id, source, seq, text) and attempts — so a
resumed batch is read without the input, and the chunks of a batch still
open are not sent again.  `state` is the engine's: `open` until its answers
are stored (`settled`) or it is given up and its chunks sent again
(`abandoned`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiosqlite

from engine.pipeline.records import Chunk

OPEN, SETTLED, ABANDONED = "open", "settled", "abandoned"

SCHEMA = """
CREATE TABLE IF NOT EXISTS provider_batches (
    input_file_id TEXT PRIMARY KEY,
    batch_id TEXT,
    key_id TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    state TEXT NOT NULL,
    provider_state TEXT NOT NULL,
    chunks INT NOT NULL,
    requests_json TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    deadline_at REAL NOT NULL,
    run_id INT
)"""


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One submitted batch: where it is, and the chunks of each of its requests."""

    input_file_id: str
    batch_id: str | None
    key_id: str
    prompt_version: str
    requests: dict[str, tuple[int, tuple[Chunk, ...]]]  # custom_id -> (attempt, chunks)
    submitted_at: float  # wall clock
    deadline_at: float  # wall clock: given up past it
    run_id: int
    state: str = OPEN
    provider_state: str = "uploaded"

    @property
    def chunks(self) -> int:
        return sum(len(chunks) for _, chunks in self.requests.values())


def _requests_json(record: BatchRecord) -> str:
    plain = {
        custom_id: [attempt, [[c.id, c.source, c.seq, c.text, c.est_tokens] for c in chunks]]
        for custom_id, (attempt, chunks) in record.requests.items()
    }
    return json.dumps(plain, ensure_ascii=False, separators=(",", ":"))


def _requests(text: str) -> dict[str, tuple[int, tuple[Chunk, ...]]]:
    plain: dict[str, Any] = json.loads(text)
    return {
        custom_id: (
            int(attempt),
            tuple(
                Chunk(str(cid), str(source), int(seq), str(body), int(tokens))
                for cid, source, seq, body, tokens in chunks
            ),
        )
        for custom_id, (attempt, chunks) in plain.items()
    }


async def write_record(conn: aiosqlite.Connection, record: BatchRecord) -> None:
    """Insert or replace `record` (committed at once: the connection autocommits)."""
    await conn.execute(
        "INSERT OR REPLACE INTO provider_batches (input_file_id, batch_id, key_id,"
        " prompt_version, state, provider_state, chunks, requests_json, submitted_at,"
        " deadline_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.input_file_id,
            record.batch_id,
            record.key_id,
            record.prompt_version,
            record.state,
            record.provider_state,
            record.chunks,
            _requests_json(record),
            record.submitted_at,
            record.deadline_at,
            record.run_id,
        ),
    )


async def set_state(
    conn: aiosqlite.Connection,
    input_file_id: str,
    *,
    state: str | None = None,
    batch_id: str | None = None,
    provider_state: str | None = None,
) -> None:
    """Change a record's state, batch id or the provider's last word on it."""
    await conn.execute(
        "UPDATE provider_batches SET state = COALESCE(?, state),"
        " batch_id = COALESCE(?, batch_id), provider_state = COALESCE(?, provider_state)"
        " WHERE input_file_id = ?",
        (state, batch_id, provider_state, input_file_id),
    )


async def open_records(conn: aiosqlite.Connection) -> list[BatchRecord]:
    """Every batch not yet settled or abandoned, oldest first."""
    rows = await conn.execute_fetchall(
        "SELECT input_file_id, batch_id, key_id, prompt_version, requests_json,"
        " submitted_at, deadline_at, run_id, state, provider_state FROM provider_batches"
        " WHERE state = ? ORDER BY submitted_at",
        (OPEN,),
    )
    return [
        BatchRecord(
            input_file_id=str(file_id),
            batch_id=None if batch_id is None else str(batch_id),
            key_id=str(key_id),
            prompt_version=str(version),
            requests=_requests(str(requests)),
            submitted_at=float(submitted),
            deadline_at=float(deadline),
            run_id=int(run_id or 0),
            state=str(state),
            provider_state=str(provider_state),
        )
        for (
            file_id,
            batch_id,
            key_id,
            version,
            requests,
            submitted,
            deadline,
            run_id,
            state,
            provider_state,
        ) in rows
    ]
